//! The detector component over a real local event log: the alert
//! lifecycle's decisions in log order, and their survival of a restart
//! from the checkpoint.

use super::*;
use crate::admin::alerts::Suppression;
use crate::health::Health;
use crate::outputs::alert_json;
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use otwatch_proto::arrow::{batch_to_alerts, control_to_batch, state, GENESIS_HASH};
use otwatch_proto::{ControllerEvent, EventKind};
use tokio::sync::watch;

const MASTER: &str = "10.0.0.5";
/// Three hours ago, on the minute.
fn base_ns() -> i64 {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    (now / 60_000_000_000 - 180) * 60_000_000_000
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _queries: mpsc::Sender<Query>,
}

fn start(log: &Arc<LocalLog>, dir: &Path) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let (queries_tx, queries) = mpsc::channel(4);
    let component = DetectorComponent {
        log: log.clone(),
        dir: dir.join("detector"),
        history: dir.join("history"),
        config: DetectorConfig {
            learn: Duration::from_secs(600),
            ..DetectorConfig::default()
        },
        alerts_raised: Arc::default(),
        queries,
    };
    let ctx = Context {
        reporter: Health::default().register("detector", Some(Topic::Events)),
        stop: stop_rx,
    };
    Running {
        stop,
        task: tokio::spawn(component.run(ctx)),
        _queries: queries_tx,
    }
}

async fn finish(running: Running) {
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
}

/// ACCESS events of one asset: (seconds after `base`, operation) from the
/// master.
async fn send(
    log: &LocalLog,
    site: &str,
    asset: &str,
    seq: &mut u64,
    base: i64,
    events: &[(i64, &str)],
) {
    let events: Vec<ControllerEvent> = events
        .iter()
        .map(|&(at, op)| {
            *seq += 1;
            ControllerEvent {
                seq: *seq,
                ts_ns: base + at * 1_000_000_000,
                asset: asset.into(),
                kind: EventKind::Access as i32,
                name: op.into(),
                attrs: [("peer".to_string(), MASTER.to_string())].into(),
                ..Default::default()
            }
        })
        .collect();
    otwatch_testkit::append_events(log, site, "gw-1", &events, base).await;
}

/// Twelve minutes of polls (ten of learning).
fn polls() -> Vec<(i64, &'static str)> {
    (0..=72)
        .map(|i| (i * 10, "read_holding_registers"))
        .collect()
}

/// The suppressions the detector's checkpoint under `dir` keeps.
fn checkpointed_suppressions(dir: &Path) -> Vec<Suppression> {
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("detector/checkpoint.json")).unwrap())
            .unwrap();
    serde_json::from_value(checkpoint["suppressions"].clone()).unwrap()
}

/// Appends control records, chained.
async fn decide(log: &LocalLog, prev: &mut String, records: Vec<ControlRecord>) {
    for r in records {
        let r = r.seal(prev);
        *prev = r.hash.clone();
        let batch = control_to_batch(std::slice::from_ref(&r)).unwrap();
        log.append(
            Topic::Control,
            vec![Record {
                batch,
                producer: None,
            }],
        )
        .await
        .unwrap();
    }
}

fn record(
    id: &str,
    ts_ns: i64,
    command: &str,
    site: &str,
    alert_id: Option<&str>,
    args: serde_json::Value,
) -> ControlRecord {
    ControlRecord {
        id: id.into(),
        ts_ns,
        user: "alice".into(),
        host: "soc-1".into(),
        command: command.into(),
        site: site.into(),
        asset: String::new(),
        alert_id: alert_id.map(str::to_string),
        args: args.to_string(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// The `access` alerts of the alerts topic (the writes this test makes;
/// the cadence model may add silence alerts), once there are at least `n`.
async fn alerts_once(log: &LocalLog, n: usize) -> Vec<Alert> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut consumer = log.consumer_at(Topic::Alerts, "test", 0).await.unwrap();
        let mut all = Vec::new();
        loop {
            let got = consumer.poll(256, Duration::ZERO).await.unwrap();
            if got.is_empty() {
                break;
            }
            for d in got {
                all.extend(
                    batch_to_alerts(&d.batch)
                        .unwrap()
                        .into_iter()
                        .filter(|a| a.detector == "access"),
                );
            }
        }
        if all.len() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} alerts within 60 s: {all:?}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn acks_update_the_same_alert_and_suppressions_mark_matching_alerts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LocalLog::open(dir.path().join("log"), LocalLogConfig::default()).unwrap());
    let base = base_ns();
    let mut chain = GENESIS_HASH.to_string();
    let (mut seq_a, mut seq_b) = (0, 0);

    // plant-b is suppressed for the 15 minutes of event time from `base`.
    decide(
        &log,
        &mut chain,
        vec![record(
            "ctl-1",
            base,
            "alert.suppress",
            "plant-b",
            None,
            serde_json::json!({"detector": null, "for_secs": 900, "reason": "commissioning"}),
        )],
    )
    .await;
    // Both sites learn their masters' polls; then the master writes to
    // plant-a's PLC and to plant-b's first PLC, which it never did.
    let mut polls_and_write = polls();
    polls_and_write.push((730, "write_single_register"));
    send(
        &log,
        "plant-a",
        "plc-01",
        &mut seq_a,
        base,
        &polls_and_write,
    )
    .await;
    send(
        &log,
        "plant-b",
        "plc-01",
        &mut seq_b,
        base,
        &polls_and_write,
    )
    .await;
    send(&log, "plant-b", "plc-02", &mut seq_b, base, &polls()).await;
    send(&log, "plant-b", "plc-03", &mut seq_b, base, &polls()).await;

    let running = start(&log, dir.path());
    let first = alerts_once(&log, 2).await;
    finish(running).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let a = first.iter().find(|x| x.site == "plant-a").unwrap().clone();
    let b1 = first.iter().find(|x| x.site == "plant-b").unwrap();
    assert_eq!(a.state, state::OPEN);
    assert_eq!((a.state_by.as_str(), a.state_at_ns), ("", 0));
    assert_eq!(b1.state, state::SUPPRESSED);
    assert_eq!(b1.state_by, "alice");
    assert_eq!(b1.comment, "commissioning");
    let kept = checkpointed_suppressions(dir.path());
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].site.as_str(), kept[0].until_ns),
        ("plant-b", base + 900_000_000_000)
    );

    // After a restart: the SOC acks plant-a's alert, and the master writes
    // to plant-b's other PLCs, inside the window and after it.
    let ack_ts = base + 2_000_000_000_000;
    decide(
        &log,
        &mut chain,
        vec![record(
            "ctl-2",
            ack_ts,
            "alert.ack",
            "plant-a",
            Some(&a.id),
            serde_json::json!({"comment": "on it", "alert": alert_json(&a)}),
        )],
    )
    .await;
    // The polls go on until the write, so that nothing but the write is new.
    let polls_until = |end: i64| -> Vec<(i64, &'static str)> {
        (73..end / 10)
            .map(|i| (i * 10, "read_holding_registers"))
            .chain([(end, "write_single_register")])
            .collect()
    };
    send(
        &log,
        "plant-b",
        "plc-02",
        &mut seq_b,
        base,
        &polls_until(800),
    )
    .await;
    send(
        &log,
        "plant-b",
        "plc-03",
        &mut seq_b,
        base,
        &polls_until(1000),
    )
    .await;
    let running = start(&log, dir.path());
    let all = alerts_once(&log, 5).await;
    finish(running).await;
    assert_eq!(all.len(), 5, "{all:?}");
    // The decision comes first (it is applied before the events polled
    // after it): one update, the same alert in its new state.
    assert_eq!(
        all[2],
        Alert {
            state: state::ACKED.into(),
            state_by: "alice".into(),
            state_at_ns: ack_ts,
            comment: "on it".into(),
            ..a.clone()
        }
    );
    let b2 = all.iter().find(|x| x.asset == "plc-02").unwrap();
    let b3 = all.iter().find(|x| x.asset == "plc-03").unwrap();
    assert_eq!(
        b2.state,
        state::SUPPRESSED,
        "inside the window, after the restart"
    );
    assert_eq!(b3.state, state::OPEN, "after the window: {b3:?}");
    assert_eq!(all.iter().filter(|x| x.id == a.id).count(), 2);
}

#[tokio::test]
async fn a_lifted_suppression_ends_at_the_lift() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LocalLog::open(dir.path().join("log"), LocalLogConfig::default()).unwrap());
    let base = base_ns();
    let mut chain = GENESIS_HASH.to_string();
    let mut seq = 0;
    // plant-b is suppressed for 15 minutes of event time from `base`, and
    // the suppression is lifted 13 minutes in.
    let lift_ts = base + 780_000_000_000;
    decide(
        &log,
        &mut chain,
        vec![
            record(
                "ctl-1",
                base,
                "alert.suppress",
                "plant-b",
                None,
                serde_json::json!({"detector": null, "for_secs": 900, "reason": "commissioning"}),
            ),
            record(
                "ctl-2",
                lift_ts,
                "alert.unsuppress",
                "plant-b",
                None,
                serde_json::json!({"suppression": "ctl-1", "reason": "done early"}),
            ),
        ],
    )
    .await;
    // Both PLCs learn the master's polls; the master then writes to the
    // first before the lift and to the second after it.
    let mut before = polls();
    before.push((730, "write_single_register"));
    send(&log, "plant-b", "plc-01", &mut seq, base, &before).await;
    let mut after = polls();
    after.extend((73..80).map(|i| (i * 10, "read_holding_registers")));
    after.push((800, "write_single_register"));
    send(&log, "plant-b", "plc-02", &mut seq, base, &after).await;

    let running = start(&log, dir.path());
    let all = alerts_once(&log, 2).await;
    finish(running).await;
    let first = all.iter().find(|x| x.asset == "plc-01").unwrap();
    let second = all.iter().find(|x| x.asset == "plc-02").unwrap();
    assert_eq!(first.state, state::SUPPRESSED, "before the lift: {first:?}");
    assert_eq!(second.state, state::OPEN, "after the lift: {second:?}");
    let kept = checkpointed_suppressions(dir.path());
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].until_ns, lift_ts, "the window ends at the lift");
}
