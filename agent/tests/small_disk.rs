//! An agent whose `data_dir` sits on a filesystem smaller than one queue
//! segment (a 4 MiB tmpfs, with the default 8 MiB segments and 512 MiB
//! queue bound) keeps delivering as long as the collector acks: acked space
//! is given back even though it is all in the newest segment.
//!
//! Needs permission to mount a tmpfs (root, as in the project's test
//! machines); elsewhere it says so and passes without running. The queue's
//! unit tests cover the same path with a simulated full disk everywhere.

mod common;

use common::{agent_toml, append_lines, now_ns, TestCollector};
use otwatch_agent::config::AgentConfig;
use otwatch_agent::Agent;
use otwatch_collector::CollectorConfig;
use otwatch_testkit::Tmpfs;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_smaller_than_a_segment_keeps_delivering() {
    // The agent's log lines show with the failure, if there is one.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("small"), "4m") else {
        return;
    };
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let events = dir.path().join("events.jsonl");
    // About 270 bytes per event in the queue: 48,000 events are three
    // times what the filesystem holds, and a file source's read (5000
    // lines) still fits in it.
    let text = "x".repeat(200);
    let now = now_ns();
    let total = 48_000u64;
    let lines: Vec<String> = (0..total)
        .map(|i| {
            format!(
                r#"{{"asset":"line1/plc-01","kind":"LOG","name":"log","ts_ns":{now},"value":{i},"text":"{text}"}}"#
            )
        })
        .collect();
    append_lines(&events, &lines);
    let data_dir = tmpfs.path().join("agent");
    let config = agent_toml(&data_dir, &events, &collector.url(), "");
    let agent = Agent::start(AgentConfig::parse(&config, "test").unwrap()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored = collector.stored().await.len() as u64;
        if stored == total {
            break;
        }
        let c = agent.metrics.snapshot();
        assert!(
            Instant::now() < deadline,
            "delivery stalled: {stored} of {total} events stored; agent: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = agent.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(counts.events_taken, total);
    assert_eq!(counts.acked_seq, total);
    assert_eq!((counts.dropped, counts.quarantined), (0, 0));
    let seqs: Vec<u64> = collector
        .stored()
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
}
