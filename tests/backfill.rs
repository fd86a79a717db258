//! `otwatch backfill` end to end through `otwatch serve`: an agent's events
//! older than `max_past_secs` are refused until an operator allows that
//! agent a backfill, then taken (and only that agent's), the allowance
//! holds across a restart, and it is in the audit with who asked.

mod common;

use common::{batch, now_ns, open_greeted, run_otwatch, start_serve, stop_serve};
use std::process::Output;

const SITE: &str = "plant-a";
const NS: i64 = 1_000_000_000;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A batch of `agent`'s events `seqs`, stamped `age_secs` ago.
fn old_batch(
    agent: &str,
    seqs: std::ops::RangeInclusive<u64>,
    age_secs: i64,
) -> otwatch_proto::EventBatch {
    let mut b = batch(SITE, agent, seqs);
    let ts = now_ns() - age_secs * NS;
    for (i, e) in b.events.iter_mut().enumerate() {
        e.ts_ns = ts + i as i64;
    }
    b
}

const CONFIG: &str = "[collector.limits]\nmax_past_secs = 3600\n";

#[tokio::test]
async fn a_backfill_lets_one_agent_send_its_recorded_history_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    let mut gw1 = open_greeted(channel.clone(), SITE, "gw-1").await.unwrap();
    let mut gw2 = open_greeted(channel, SITE, "gw-2").await.unwrap();

    // A day-old recording is refused: it is older than max_past_secs.
    let ack = gw1.send(old_batch("gw-1", 1..=3, 86_400)).await.unwrap();
    assert_eq!(ack.refused.len(), 3, "{ack:?}");

    // Bad requests are refused, naming the problem.
    let out = run_otwatch(
        &[
            "backfill",
            "--site",
            SITE,
            "--agent",
            "gw-1",
            "--from",
            "2099-01-01T00:00:00Z",
        ],
        &data,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("not in the past"), "{}", text(&out));
    let out = run_otwatch(
        &[
            "backfill",
            "--site",
            SITE,
            "--agent",
            "gw-1",
            "--from",
            "2026-01-01T00:00:00Z",
            "--for",
            "30days",
        ],
        &data,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("from 1 s to 7 days"), "{}", text(&out));

    // Two days back, for gw-1 only.
    let from = ((now_ns() / NS) - 2 * 86_400).to_string();
    let out = run_otwatch(
        &[
            "backfill", "--site", SITE, "--agent", "gw-1", "--from", &from, "--for", "1h",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("control record ctl-"), "{}", text(&out));

    // The collector applies it within moments (it follows the control topic).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seq = 4;
    loop {
        let ack = gw1
            .send(old_batch("gw-1", seq..=seq, 86_400))
            .await
            .unwrap();
        seq += 1;
        if ack.refused.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill never applied: {ack:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Three days old is beyond the allowance; gw-2 has none.
    let ack = gw1
        .send(old_batch("gw-1", seq..=seq, 3 * 86_400))
        .await
        .unwrap();
    assert_eq!(ack.refused.len(), 1, "{ack:?}");
    seq += 1;
    let ack = gw2.send(old_batch("gw-2", 1..=1, 86_400)).await.unwrap();
    assert_eq!(ack.refused.len(), 1, "{ack:?}");

    // After a restart the allowance still holds.
    drop((gw1, gw2));
    stop_serve(serve);
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    let mut gw1 = open_greeted(channel, SITE, "gw-1").await.unwrap();
    let ack = gw1
        .send(old_batch("gw-1", seq..=seq + 9, 86_400))
        .await
        .unwrap();
    assert!(ack.refused.is_empty(), "{ack:?}");

    // The history holds what was taken; the audit, who allowed it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The first event the allowance let through, and the ten after the restart.
    let expected = "11";
    loop {
        let out = run_otwatch(
            &[
                "sql",
                "--format",
                "csv",
                "SELECT count(*) AS n FROM events WHERE agent = 'gw-1'",
            ],
            &data,
        );
        if out.status.success()
            && String::from_utf8_lossy(&out.stdout).lines().nth(1) == Some(expected)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history: {}",
            text(&out)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stop_serve(serve);
    let out = run_otwatch(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT command, site, args FROM audit",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rows = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(rows.contains("collector.backfill,plant-a,"), "{rows}");
    assert!(rows.contains("\"\"agent\"\":\"\"gw-1\"\""), "{rows}");
    let out = run_otwatch(&["audit", "verify"], &data);
    assert!(out.status.success(), "{}", text(&out));
}
