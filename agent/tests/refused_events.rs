//! An event the agent accepted but the collector refuses (here: it aged
//! past the collector's `max_past_secs`) no longer blocks the events around
//! it: they are delivered, the refused one is set aside in
//! `data_dir/dead-letter.jsonl` with the reason, counted, and can be
//! replayed through a `file` source once fixed.

mod common;

use common::{agent_toml, append_lines, line, now_ns, wait_until, TestCollector};
use otwatch_agent::config::AgentConfig;
use otwatch_agent::dead_letter::DeadLetterEntry;
use otwatch_agent::Agent;
use otwatch_collector::CollectorConfig;
use otwatch_proto::limits::Limits;
use otwatch_proto::JsonEvent;
use std::time::Duration;

const NS: i64 = 1_000_000_000;

/// A collector that refuses events more than an hour old (the agent keeps
/// its default of 90 days, as an agent does whose queue outlived an outage).
fn strict_collector(dir: &std::path::Path) -> TestCollector {
    let config = CollectorConfig {
        limits: Limits {
            max_past_secs: 3600,
            ..Limits::default()
        },
        ..CollectorConfig::default()
    };
    TestCollector::start(dir, config, None)
}

fn dead_letters(data_dir: &std::path::Path) -> Vec<DeadLetterEntry> {
    match std::fs::read_to_string(data_dir.join("dead-letter.jsonl")) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_set_aside_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let collector = strict_collector(&dir.path().join("collector"));
    let events = dir.path().join("events.jsonl");
    let data_dir = dir.path().join("agent");
    let now = now_ns();
    let stale = line(now - 2 * 3600 * NS, 2.0);
    append_lines(&events, &[line(now, 1.0), stale.clone(), line(now, 3.0)]);
    let text = agent_toml(&data_dir, &events, &collector.url(), "");
    let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();

    wait_until("the events around the stale one are stored", async || {
        collector.stored().await.len() == 2
    })
    .await;
    wait_until("the queue is acked past the refused event", async || {
        agent.metrics.snapshot().acked_seq == 3
    })
    .await;
    let seqs: Vec<u64> = collector
        .stored()
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, vec![1, 3]);

    let kept = dead_letters(&data_dir);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].seq, 2);
    assert!(
        kept[0]
            .reason
            .contains("above the limit max_past_secs = 3600"),
        "{}",
        kept[0].reason
    );
    humantime::parse_rfc3339(&kept[0].refused_at).unwrap();
    let original: JsonEvent = serde_json::from_str(&stale).unwrap();
    assert_eq!(kept[0].event, original);

    let counts = agent.metrics.snapshot();
    assert_eq!((counts.refused, counts.refused_unstored), (1, 0));
    assert!(counts.dead_letter_bytes > 0);
    let exposition = otwatch_agent::metrics::render(&counts, "plant-a", "gw-1");
    assert!(
        exposition.contains("otwatch_agent_refused_total{"),
        "{exposition}"
    );

    // The operator fixes the timestamp and replays the event: it arrives
    // under a new sequence number.
    let mut fixed = kept[0].event.clone();
    fixed.ts_ns = now_ns();
    append_lines(&events, &[serde_json::to_string(&fixed).unwrap()]);
    wait_until("the replayed event is stored", async || {
        collector.stored().await.len() == 3
    })
    .await;
    let stored = otwatch_testkit::log_events(collector.log.as_ref()).await;
    assert_eq!((stored[2].seq, stored[2].value), (4, Some(2.0)));
    agent.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_bound_the_dead_letter_file_keeps_nothing_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let collector = strict_collector(&dir.path().join("collector"));
    let events = dir.path().join("events.jsonl");
    let data_dir = dir.path().join("agent");
    let now = now_ns();
    let old = now - 2 * 3600 * NS;
    // A whole batch of stale events, then a good one.
    append_lines(&events, &[line(old, 1.0), line(old, 2.0)]);
    let text = agent_toml(
        &data_dir,
        &events,
        &collector.url(),
        "dead_letter_max_bytes = 300",
    );
    let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();
    wait_until("both stale events are refused", async || {
        agent.metrics.snapshot().refused == 2
    })
    .await;
    append_lines(&events, &[line(now, 3.0)]);
    wait_until("the good event is stored", async || {
        collector.stored().await.len() == 1
    })
    .await;
    let counts = agent.stop(Duration::from_secs(5)).await.unwrap();
    // One line fits in 300 bytes, the second does not.
    assert_eq!((counts.refused, counts.refused_unstored), (2, 1));
    assert_eq!(dead_letters(&data_dir).len(), 1);
    assert!(counts.dead_letter_bytes <= 300);
    assert_eq!(counts.acked_seq, 3);
}
