//! The alert lifecycle end to end, through `otwatch serve` and the CLI: an
//! alert is acked with `otwatch alerts ack`, its new state is in SQL
//! (`otwatch alerts list`) and goes out through the `jsonl` output as an
//! update of the same id; a suppressed site's next alert is stored
//! `suppressed` and not sent, while other sites' alerts still are; every
//! decision is in the `audit` table and `otwatch audit verify` holds.

mod common;

use common::{now_ns, open_greeted, run_otwatch, start_serve, stop_serve, Stream};
use otwatch_proto::{ControllerEvent, EventBatch, EventKind};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MASTER: &str = "10.0.0.5";

/// The service's configuration: a short learning window, quick flushes,
/// alerts written to `data/alerts.jsonl`.
const CONFIG: &str = "[detector]\nlearn = \"10m\"\n\n[history]\nflush_interval = \"1s\"\n\n[[outputs]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Agent {
    stream: Stream,
    site: &'static str,
    agent: &'static str,
    seq: u64,
}

impl Agent {
    /// ACCESS events from `peer`: (asset, time in ns, operation).
    async fn send(&mut self, events: &[(&str, i64, &str)]) {
        let events = events
            .iter()
            .map(|&(asset, ts_ns, op)| {
                self.seq += 1;
                ControllerEvent {
                    seq: self.seq,
                    ts_ns,
                    asset: asset.into(),
                    kind: EventKind::Access as i32,
                    name: op.into(),
                    attrs: [("peer".to_string(), MASTER.to_string())].into(),
                    ..Default::default()
                }
            })
            .collect();
        let ack = self
            .stream
            .send(EventBatch {
                site: self.site.into(),
                agent: self.agent.into(),
                events,
                queue_backlog: 0,
            })
            .await
            .unwrap();
        assert_eq!(ack.durable_seq, self.seq, "{ack:?}");
    }

    /// Twelve minutes of the master's polls from `base` (ten of learning).
    async fn learn(&mut self, asset: &str, base: i64) {
        let polls: Vec<(&str, i64, &str)> = (0..=72)
            .map(|i| (asset, base + i * 10_000_000_000, "read_holding_registers"))
            .collect();
        self.send(&polls).await;
    }
}

/// `otwatch alerts list --format json` with `args`, one object per alert.
fn list(data: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["alerts", "list", "--format", "json"];
    all.extend_from_slice(args);
    let out = run_otwatch(&all, data);
    assert!(out.status.success(), "alerts list: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn suppressions(data: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["alerts", "suppressions", "--format", "json"];
    all.extend_from_slice(args);
    let out = run_otwatch(&all, data);
    assert!(
        out.status.success(),
        "alerts suppressions: {}",
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `f` until it gives `Some`, for at most 60 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines of the jsonl output.
fn sent(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn ack_and_suppress_act_through_serve_reach_sql_and_the_outputs_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let me = me.trim();
    // Three hours ago, on the minute.
    let base = (now_ns() / 60_000_000_000 - 180) * 60_000_000_000;
    let sec = 1_000_000_000;
    let mut a = Agent {
        stream: open_greeted(channel.clone(), "plant-a", "gw-1")
            .await
            .unwrap(),
        site: "plant-a",
        agent: "gw-1",
        seq: 0,
    };
    let mut b = Agent {
        stream: open_greeted(channel, "plant-b", "gw-2").await.unwrap(),
        site: "plant-b",
        agent: "gw-2",
        seq: 0,
    };
    a.learn("line1/plc-01", base).await;
    a.learn("line1/plc-02", base).await;
    b.learn("line1/plc-01", base).await;
    // The master writes to plant-a's first PLC, which it never did.
    a.send(&[("line1/plc-01", base + 730 * sec, "write_single_register")])
        .await;
    let raised = eventually("the alert in the history", || {
        list(&data, &["--site", "plant-a"])
            .into_iter()
            .find(|r| r["detector"] == "access")
    })
    .await;
    let id = raised["id"].as_str().unwrap().to_string();
    assert_eq!(raised["state"], "open", "{raised}");
    assert_eq!(raised["asset"], "line1/plc-01");

    // Acking an alert that does not exist is refused, naming it.
    let out = run_otwatch(&["alerts", "ack", "00000000000000ff"], &data);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("00000000000000ff is not in the alerts history"),
        "{}",
        stderr(&out)
    );
    let out = run_otwatch(&["alerts", "ack", &id, "--comment", "on it"], &data);
    assert!(out.status.success(), "alerts ack: {}", stderr(&out));
    assert!(
        stdout(&out).contains("control record ctl-"),
        "{}",
        stdout(&out)
    );

    // The new state in SQL: one alert, acked, by whom, with the comment...
    let acked = eventually("the ack in the history", || {
        list(&data, &["--open"])
            .into_iter()
            .find(|r| r["id"] == id.as_str() && r["state"] == "acked")
    })
    .await;
    assert_eq!(acked["state_by"], me);
    assert_eq!(acked["comment"], "on it");
    // ...and out through the jsonl output as an update of the same id.
    let lines = eventually("the update in alerts.jsonl", || {
        let lines: Vec<_> = sent(&data)
            .into_iter()
            .filter(|l| l["id"] == id.as_str())
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["state"], "open");
    assert_eq!(lines[0]["state_by"], serde_json::Value::Null);
    assert_eq!(lines[1]["state"], "acked");
    assert_eq!(lines[1]["state_by"], me);
    assert_eq!(lines[1]["comment"], "on it");
    assert!(lines[1]["state_at"].is_string(), "{}", lines[1]);
    // Acking it again is refused; the history holds both states.
    let out = run_otwatch(&["alerts", "ack", &id], &data);
    assert!(
        !out.status.success() && stderr(&out).contains("already acked"),
        "{}",
        stderr(&out)
    );
    let out = run_otwatch(
        &[
            "sql",
            "--format",
            "csv",
            &format!("SELECT coalesce(state, 'open') AS s FROM alerts WHERE id = '{id}' ORDER BY coalesce(state_at, ts)"),
        ],
        &data,
    );
    assert_eq!(stdout(&out), "s\nopen\nacked\n", "{}", stderr(&out));

    // Suppressing needs a reason and a sensible duration.
    let out = run_otwatch(
        &[
            "alerts", "suppress", "--site", "plant-b", "--for", "0s", "--reason", "x",
        ],
        &data,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("duration is zero"),
        "{}",
        stderr(&out)
    );
    let out = run_otwatch(
        &[
            "alerts", "suppress", "--site", "plant-b", "--for", "2h", "--reason", " ",
        ],
        &data,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("reason"),
        "{}",
        stderr(&out)
    );
    let out = run_otwatch(
        &[
            "alerts",
            "suppress",
            "--site",
            "plant-b",
            "--for",
            "2h",
            "--reason",
            "die change",
        ],
        &data,
    );
    assert!(out.status.success(), "alerts suppress: {}", stderr(&out));
    // The master writes to plant-b's PLC (during the suppression), then to
    // plant-a's second PLC.
    let during = now_ns();
    b.send(&[("line1/plc-01", during, "write_single_register")])
        .await;
    a.send(&[("line1/plc-02", now_ns(), "write_single_register")])
        .await;
    // plant-a's alert is sent: the output has passed plant-b's by then
    // (it reads the alerts in log order)...
    let lines = eventually("plant-a's second alert in alerts.jsonl", || {
        let lines = sent(&data);
        lines
            .iter()
            .any(|l| l["asset"] == "line1/plc-02")
            .then_some(lines)
    })
    .await;
    // It is stored, marked suppressed, with who suppressed and why...
    let suppressed = eventually("plant-b's alert in the history", || {
        list(&data, &["--site", "plant-b"])
            .into_iter()
            .find(|r| r["detector"] == "access")
    })
    .await;
    assert_eq!(suppressed["state"], "suppressed", "{suppressed}");
    assert_eq!(suppressed["state_by"], me);
    assert_eq!(suppressed["comment"], "die change");
    // ...and was not sent. (Suppression goes by event time: plant-b's
    // silence alert, about a silence that began before the suppression,
    // is not covered.)
    let during_alerts: Vec<_> = lines
        .iter()
        .filter(|l| l["site"] == "plant-b" && l["detector"] == "access")
        .collect();
    assert!(
        during_alerts.is_empty(),
        "a suppressed alert was sent: {during_alerts:?}"
    );
    assert!(lines.iter().all(|l| l["id"] != suppressed["id"]));
    // Suppressed alerts are not open; plant-a's acked one still is.
    let open = list(&data, &["--open", "--since", "24h"]);
    assert!(open.iter().all(|r| r["id"] != suppressed["id"]), "{open:?}");
    assert!(open.iter().any(|r| r["id"] == id.as_str()), "{open:?}");

    // The suppression is listed while in force, and can be ended early.
    let in_force = suppressions(&data, &[]);
    assert_eq!(in_force.len(), 1, "{in_force:?}");
    let suppression = &in_force[0];
    assert_eq!(
        (
            &suppression["status"],
            &suppression["site"],
            &suppression["asset"],
            &suppression["reason"]
        ),
        (
            &"in force".into(),
            &"plant-b".into(),
            &"*".into(),
            &"die change".into()
        ),
        "{suppression}"
    );
    let suppression_id = suppression["id"].as_str().unwrap().to_string();
    let out = run_otwatch(
        &[
            "alerts",
            "unsuppress",
            &suppression_id,
            "--reason",
            "die change done",
        ],
        &data,
    );
    assert!(out.status.success(), "alerts unsuppress: {}", stderr(&out));
    let lifted = eventually("the lift in the audit", || {
        suppressions(&data, &["--all"])
            .into_iter()
            .find(|r| r["status"] == "lifted")
    })
    .await;
    assert_eq!(lifted["lifted_by"], me, "{lifted}");
    assert_eq!(lifted["lift_reason"], "die change done", "{lifted}");
    assert!(suppressions(&data, &[]).is_empty(), "no longer in force");
    let out = run_otwatch(
        &["alerts", "unsuppress", &suppression_id, "--reason", "again"],
        &data,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("already lifted"),
        "{}",
        stderr(&out)
    );

    // The three decisions are in the audit, and its chain holds.
    stop_serve(serve);
    let out = run_otwatch(&["audit", "verify"], &data);
    assert!(
        out.status.success() && stdout(&out).contains("3 record(s), the hash chain holds"),
        "audit verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = run_otwatch(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT \"user\", command, site, alert_id FROM audit ORDER BY ts",
        ],
        &data,
    );
    assert_eq!(
        stdout(&out),
        format!("user,command,site,alert_id\n{me},alert.ack,plant-a,{id}\n{me},alert.suppress,plant-b,\n{me},alert.unsuppress,plant-b,\n"),
        "{}",
        stderr(&out)
    );
}
