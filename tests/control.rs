//! The control plane end to end, through `otwatch serve` and the CLI: an
//! alert the SOC accepts stops alerting, `model relearn --from --to` learns
//! an asset again from the stored history, every decision lands in the
//! `audit` table with who asked, and `otwatch audit verify` checks its
//! hash chain; a restart keeps the decisions and continues the chain.

mod common;

use common::{now_ns, open_greeted, run_otwatch, start_serve, stop_serve, Stream};
use otwatch_detector::AssetReport;
use otwatch_proto::{ControllerEvent, EventBatch, EventKind};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The service's configuration: a short learning window, quick flushes.
const CONFIG: &str = "[detector]\nlearn = \"10m\"\n\n[history]\nflush_interval = \"1s\"\n";

const SITE: &str = "plant-a";
const ASSET: &str = "line1/plc-01";
const MASTER: &str = "10.0.0.5";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The alerts of the open access episodes of the asset, from `otwatch
/// model status` (answered by the detector after the decisions in the log).
fn open_access_alerts(data: &Path) -> Vec<String> {
    let out = run_otwatch(
        &[
            "model", "status", "--site", SITE, "--asset", ASSET, "--json",
        ],
        data,
    );
    assert!(out.status.success(), "model status: {}", stderr(&out));
    let assets: Vec<AssetReport> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(assets.len(), 1);
    assets[0]
        .models
        .iter()
        .filter(|m| m.model == "access")
        .flat_map(|m| m.open_alerts.clone())
        .collect()
}

/// Waits until the open access alerts are not `than`.
async fn open_alerts_other_than(data: &Path, than: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = open_access_alerts(data);
        if open != than {
            return open;
        }
        assert!(
            Instant::now() < deadline,
            "no change in the open access alerts within 60 s: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Plant {
    stream: Stream,
    base: i64,
    seq: u64,
}

impl Plant {
    /// One ACCESS event per (seconds after the base, peer, operation).
    async fn send(&mut self, events: &[(i64, &str, &str)]) {
        let events = events
            .iter()
            .map(|&(at, peer, op)| ControllerEvent {
                ts_ns: self.base + at * 1_000_000_000,
                asset: ASSET.into(),
                kind: EventKind::Access as i32,
                name: op.into(),
                attrs: [("peer".to_string(), peer.to_string())].into(),
                ..Default::default()
            })
            .collect();
        self.send_events(events).await;
    }

    /// Sends events, numbering them.
    async fn send_events(&mut self, mut events: Vec<ControllerEvent>) {
        for e in &mut events {
            self.seq += 1;
            e.seq = self.seq;
        }
        let ack = self
            .stream
            .send(EventBatch {
                site: SITE.into(),
                agent: "gw-1".into(),
                events,
                queue_backlog: 0,
            })
            .await
            .unwrap();
        assert_eq!(ack.durable_seq, self.seq, "{ack:?}");
    }
}

#[tokio::test]
async fn accept_and_relearn_from_history_act_through_serve_are_audited_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    // Three hours ago, on the minute, so that the interval is easy to give.
    let base = (now_ns() / 60_000_000_000 - 180) * 60_000_000_000;
    let mut plant = Plant {
        stream: open_greeted(channel, SITE, "gw-1").await.unwrap(),
        base,
        seq: 0,
    };

    // The master polls the PLC for 12 minutes (10 of learning), then
    // writes to it, which it never did: an unauthorized command message.
    let polls: Vec<(i64, &str, &str)> = (0..=72)
        .map(|i| (i * 10, MASTER, "read_holding_registers"))
        .collect();
    plant.send(&polls).await;
    plant.send(&[(730, MASTER, "write_single_register")]).await;
    let first = open_alerts_other_than(&data, &[]).await;
    assert_eq!(first.len(), 1, "{first:?}");

    // Accepting an alert the detector never raised is refused, naming it.
    let out = run_otwatch(&["model", "accept", "--alert", "0123456789abcdef"], &data);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not one the detector knows"),
        "{}",
        stderr(&out)
    );
    // The SOC accepts the write: the episode ends...
    let out = run_otwatch(&["model", "accept", "--alert", &first[0]], &data);
    assert!(out.status.success(), "model accept: {}", stderr(&out));
    assert!(
        stdout(&out).contains("control record ctl-"),
        "{}",
        stdout(&out)
    );
    assert_eq!(open_access_alerts(&data), Vec::<String>::new());
    // ...and the master writing again is normal now, while a peer never
    // seen still alerts (and is the only open alert).
    plant.send(&[(740, MASTER, "write_single_register")]).await;
    plant
        .send(&[(750, "10.0.0.66", "read_holding_registers")])
        .await;
    let second = open_alerts_other_than(&data, &[]).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);

    // Relearn the PLC from the stored history of everything so far (the
    // master's writes and the second peer included), once it is stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_otwatch(
            &["sql", "--format", "csv", "SELECT count(*) AS n FROM events"],
            &data,
        );
        if out.status.success() && stdout(&out).lines().nth(1) == Some("76") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history never held the 76 events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let from = (base / 1_000_000_000).to_string();
    let to = (base / 1_000_000_000 + 760).to_string();
    let out = run_otwatch(
        &[
            "model", "relearn", "--site", SITE, "--asset", ASSET, "--from", &from, "--to", &to,
        ],
        &data,
    );
    assert!(out.status.success(), "model relearn: {}", stderr(&out));
    // The relearned asset protects at once, with no episode open.
    assert_eq!(open_access_alerts(&data), Vec::<String>::new());
    // What the history held is normal; a third peer is not.
    plant
        .send(&[
            (770, "10.0.0.66", "read_holding_registers"),
            (771, MASTER, "write_single_register"),
            (772, MASTER, "read_holding_registers"),
        ])
        .await;
    plant.send(&[(780, "10.0.0.99", "read_coils")]).await;
    let third = open_alerts_other_than(&data, &[]).await;
    assert_eq!(third.len(), 1, "only the third peer alerts: {third:?}");
    assert!(!third.contains(&second[0]) && !third.contains(&first[0]));

    // Both decisions are in the audit, with who asked and a chain that holds.
    stop_serve(serve);
    let out = run_otwatch(&["audit", "verify"], &data);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("2 record(s), the hash chain holds"),
        "{}",
        stdout(&out)
    );
    let out = run_otwatch(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT \"user\", command, site, asset, alert_id FROM audit ORDER BY ts",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let rows: Vec<String> = stdout(&out).lines().skip(1).map(String::from).collect();
    assert_eq!(
        rows,
        vec![
            format!("{},model.accept,{SITE},{ASSET},{}", me.trim(), first[0]),
            format!("{},model.relearn,{SITE},{ASSET},", me.trim()),
        ]
    );

    // After a restart the decisions hold (from the detector's checkpoint)
    // and a new one continues the chain.
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    plant.stream = open_greeted(channel, SITE, "gw-1").await.unwrap();
    let out = run_otwatch(&["model", "accept", "--alert", &third[0]], &data);
    assert!(out.status.success(), "model accept: {}", stderr(&out));
    assert_eq!(open_access_alerts(&data), Vec::<String>::new());
    plant
        .send(&[
            (790, MASTER, "write_single_register"),
            (791, "10.0.0.99", "read_coils"),
        ])
        .await;
    plant.send(&[(800, "10.0.0.77", "read_coils")]).await;
    let fourth = open_alerts_other_than(&data, &[]).await;
    assert_eq!(fourth.len(), 1, "only the fourth peer alerts: {fourth:?}");
    assert!(!fourth.contains(&third[0]));
    stop_serve(serve);
    let out = run_otwatch(&["audit", "verify"], &data);
    assert!(
        out.status.success() && stdout(&out).contains("3 record(s), the hash chain holds"),
        "audit verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The process model's report of `asset`: (open alerts, newest event time).
fn process_status(data: &Path, asset: &str) -> (Vec<String>, Option<i64>) {
    let out = run_otwatch(
        &[
            "model", "status", "--site", SITE, "--asset", asset, "--json",
        ],
        data,
    );
    assert!(out.status.success(), "model status: {}", stderr(&out));
    let assets: Vec<AssetReport> = serde_json::from_str(&stdout(&out)).unwrap();
    let process = assets[0]
        .models
        .iter()
        .find(|m| m.model == "process")
        .unwrap_or_else(|| panic!("no process model: {:?}", assets[0]));
    (process.open_alerts.clone(), assets[0].at_ns)
}

/// Waits until the detector has seen the events up to `ts_ns`, then gives
/// the process model's open alerts.
async fn process_open_alerts_at(data: &Path, asset: &str, ts_ns: i64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (open, at) = process_status(data, asset);
        if at == Some(ts_ns) {
            return open;
        }
        assert!(
            Instant::now() < deadline,
            "the detector never reached {ts_ns}: at {at:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_held_setpoint_change_sampled_once_a_minute_stays_alerted_until_accepted() {
    const PUMP: &str = "line3/pump-01";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("otwatch.toml"),
        "[detector]\nlearn = \"2h\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (serve, channel) = start_serve(dir.path(), CONFIG).await;
    let base = (now_ns() / 60_000_000_000 - 12 * 60) * 60_000_000_000;
    let mut plant = Plant {
        stream: open_greeted(channel, SITE, "gw-1").await.unwrap(),
        base,
        seq: 0,
    };
    // A pump sampled once a minute: a flow that wanders and a pressure and
    // a motor current that follow it, with noise of their own.
    let mut noise = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = move || {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        (noise >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let mut wander = 0.0;
    let mut observations = |from: i64, n: i64, step: f64| -> Vec<ControllerEvent> {
        let mut out = Vec::new();
        for minute in from..from + n {
            wander = 0.8 * wander + 0.5 * uniform();
            let flow = 40.0 + wander + step;
            let tags = [
                ("flow_m3h", flow),
                ("pressure_bar", 2.0 + 0.05 * flow + 0.02 * uniform()),
                ("current_a", 10.0 + 0.2 * flow + 0.05 * uniform()),
            ];
            for (name, value) in tags {
                out.push(ControllerEvent {
                    ts_ns: base + minute * 60_000_000_000,
                    asset: PUMP.into(),
                    kind: EventKind::Sample as i32,
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        }
        out
    };
    let ts = |minute: i64| base + minute * 60_000_000_000;

    // Two hours of learning and one of normal operation: quiet.
    plant.send_events(observations(0, 180, 0.0)).await;
    assert_eq!(
        process_open_alerts_at(&data, PUMP, ts(179)).await,
        Vec::<String>::new()
    );
    // The setpoint moves the flow by 5 (about 6 learning standard
    // deviations) and is held for two hours: one episode, open all along.
    plant.send_events(observations(180, 60, 5.0)).await;
    let open = process_open_alerts_at(&data, PUMP, ts(239)).await;
    assert_eq!(open.len(), 1, "{open:?}");
    plant.send_events(observations(240, 60, 5.0)).await;
    assert_eq!(process_open_alerts_at(&data, PUMP, ts(299)).await, open);

    // The SOC accepts it: the episode ends and the held level is quiet.
    let out = run_otwatch(&["model", "accept", "--alert", &open[0]], &data);
    assert!(out.status.success(), "model accept: {}", stderr(&out));
    assert_eq!(process_status(&data, PUMP).0, Vec::<String>::new());
    plant.send_events(observations(300, 120, 5.0)).await;
    assert_eq!(
        process_open_alerts_at(&data, PUMP, ts(419)).await,
        Vec::<String>::new(),
        "{}",
        std::fs::read_to_string(data.join("alerts.jsonl")).unwrap_or_default()
    );
    stop_serve(serve);
}
