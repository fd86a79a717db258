//! A collector that lost events it had acked (its data was wiped, or its
//! log lost a damaged tail) greets the agent with a lower sequence number
//! than the agent's queue had acked. Those events are gone from the queue:
//! the agent logs the loss with its range, counts it, and goes on
//! delivering what comes next.

mod common;

use common::{agent_toml, append_lines, line, now_ns, wait_until, TestCollector};
use otwatch_agent::config::AgentConfig;
use otwatch_agent::Agent;
use otwatch_collector::CollectorConfig;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_behind_the_acked_mark_is_counted_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let now = now_ns();
    append_lines(
        &events,
        &(0..10).map(|i| line(now, i as f64)).collect::<Vec<_>>(),
    );

    let first = TestCollector::start(&dir.path().join("c1"), CollectorConfig::default(), None);
    let addr = first.addr;
    let text = agent_toml(&dir.path().join("agent"), &events, &first.url(), "");
    let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();
    wait_until("the first ten events are acked", async || {
        agent.metrics.snapshot().acked_seq == 10
    })
    .await;

    // The collector dies and comes back on the same port with an empty log.
    drop(first);
    let second = TestCollector::start(
        &dir.path().join("c2"),
        CollectorConfig::default(),
        Some(addr),
    );
    wait_until(
        "the agent counts the ten events the collector lost",
        async || agent.metrics.snapshot().lost_at_collector == 10,
    )
    .await;

    // Nothing new was queued when it reconnected; new events still arrive.
    append_lines(
        &events,
        &(10..15).map(|i| line(now, i as f64)).collect::<Vec<_>>(),
    );
    wait_until("the next five events reach the new collector", async || {
        second.stored().await.len() == 5
    })
    .await;
    let seqs: Vec<u64> = second.stored().await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, vec![11, 12, 13, 14, 15]);
    let counts = agent.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(counts.lost_at_collector, 10);
    assert_eq!(counts.acked_seq, 15);
}
