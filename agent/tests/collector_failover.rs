//! An agent given several collectors (`collector.urls`) moves to the next
//! one when its collector cannot be reached or goes away, and each event
//! still reaches the collectors exactly once between them.

mod common;

use common::{append_lines, line, now_ns, wait_until, TestCollector};
use otwatch_agent::config::AgentConfig;
use otwatch_agent::Agent;
use otwatch_collector::CollectorConfig;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_passed_over_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let now = now_ns();
    append_lines(
        &events,
        &(0..10).map(|i| line(now, i as f64)).collect::<Vec<_>>(),
    );
    // The first address has nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let first = TestCollector::start(&dir.path().join("c1"), CollectorConfig::default(), None);
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n\
         [collector]\nurl = {dead_url:?}\nurls = [{live:?}]\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n\
         batch_max_delay = \"0ms\"\nconnect_timeout = \"1s\"\n\
         [[sources]]\ntype = \"file\"\npath = {events:?}\npoll_interval = \"20ms\"\n",
        data = dir.path().join("agent").display().to_string(),
        live = first.url(),
        events = events.display().to_string(),
    );
    let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();
    wait_until("the events reach the second collector", async || {
        first.stored().await.len() == 10
    })
    .await;

    // That collector goes away; a third takes over at the first address.
    let dead_addr = dead_url.trim_start_matches("http://").parse().unwrap();
    drop(first);
    let second = TestCollector::start(
        &dir.path().join("c2"),
        CollectorConfig::default(),
        Some(dead_addr),
    );
    append_lines(
        &events,
        &(10..15).map(|i| line(now, i as f64)).collect::<Vec<_>>(),
    );
    wait_until(
        "the next events reach the collector now at the first address",
        async || second.stored().await.len() >= 5,
    )
    .await;
    let seqs: Vec<u64> = second.stored().await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        seqs,
        vec![11, 12, 13, 14, 15],
        "only what was unacked is sent again"
    );
    agent.stop(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn every_address_is_checked_by_name() {
    let text = "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n\
                [collector]\nurl = \"http://127.0.0.1:4317\"\nurls = [\"http://127.0.0.1:4318\", \"http://10.0.0.9:4317\"]\n\
                [[sources]]\ntype = \"file\"\npath = \"/tmp/e.jsonl\"\n";
    let err = AgentConfig::parse(text, "agent.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("collector.urls[1]") && err.contains("cleartext"),
        "{err}"
    );
}
