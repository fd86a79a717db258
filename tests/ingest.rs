//! The collector over a real gRPC connection on loopback: acks only after the
//! event log holds a batch, duplicates dropped, bad input refused with a
//! status that names the problem, other agents unaffected, connections
//! beyond the cap refused until a slot comes back, an agent whose data_dir
//! was wiped renumbered instead of dropped.

mod common;

use common::{batch, open_greeted, open_on, stored, Stream};
use otwatch_collector::{Collector, CollectorConfig, CollectorMetrics};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

async fn start_collector(dir: &std::path::Path) -> (SocketAddr, Arc<LocalLog>) {
    let (addr, log, _) = start_with(dir, CollectorConfig::default()).await;
    (addr, log)
}

/// The collector as `otwatch serve --insecure-loopback` runs it.
async fn start_with(
    dir: &std::path::Path,
    config: CollectorConfig,
) -> (SocketAddr, Arc<LocalLog>, Arc<CollectorMetrics>) {
    let log = Arc::new(LocalLog::open(dir, LocalLogConfig::default()).unwrap());
    let collector = Collector::new(log.clone(), config).unwrap();
    let metrics = collector.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(collector.serve(listener, None, std::future::pending()));
    (addr, log, metrics)
}

async fn open(addr: SocketAddr, site: Option<&str>, agent: &str) -> Result<Stream, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    open_on(channel, site, agent).await
}

#[tokio::test]
async fn acks_dedupe_and_resume_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = start_collector(dir.path()).await;

    let mut s = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    let greeting = s.acks.message().await.unwrap().unwrap();
    assert_eq!(greeting.durable_seq, 0);
    let ack = s.send(batch("plant-a", "gw-1", 1..=100)).await.unwrap();
    assert_eq!((ack.durable_seq, ack.duplicates), (100, 0));
    // A resend overlapping what is held: only the new part is stored.
    let ack = s.send(batch("plant-a", "gw-1", 50..=150)).await.unwrap();
    assert_eq!((ack.durable_seq, ack.duplicates), (150, 51));
    drop(s);

    // A new stream (the agent reconnected) is told where to resume.
    let mut s = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    assert_eq!(s.acks.message().await.unwrap().unwrap().durable_seq, 150);
    let ack = s.send(batch("plant-a", "gw-1", 140..=160)).await.unwrap();
    assert_eq!((ack.durable_seq, ack.duplicates), (160, 11));

    let rows = stored(&log).await;
    assert_eq!(rows.len(), 160);
    let distinct: HashSet<_> = rows.iter().collect();
    assert_eq!(distinct.len(), 160, "each (agent, seq) exactly once");
}

#[tokio::test]
async fn bad_input_is_refused_by_name_and_other_agents_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log) = start_collector(dir.path()).await;

    let mut good = open(addr, Some("plant-b"), "gw-2").await.unwrap();
    good.acks.message().await.unwrap().unwrap();
    good.send(batch("plant-b", "gw-2", 1..=10)).await.unwrap();

    // An event that breaks a limit of its own: refused alone, naming the
    // limit; the rest of its batch is stored.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let mut b = batch("plant-a", "gw-1", 1..=3);
    b.events[2].asset = "x".repeat(1000);
    let ack = bad.send(b).await.unwrap();
    assert_eq!(ack.durable_seq, 3);
    assert_eq!(ack.refused.len(), 1);
    assert_eq!(ack.refused[0].seq, 3);
    assert!(
        ack.refused[0]
            .reason
            .contains("asset is 1000 bytes, above the limit max_id_len = 256"),
        "{}",
        ack.refused[0].reason
    );

    // A batch broken as a whole: INVALID_ARGUMENT naming the rule.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let mut b = batch("plant-a", "gw-1", 4..=5);
    b.events[1].seq = 4;
    let status = bad.send(b).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not above the previous"),
        "{}",
        status.message()
    );

    // Another site claimed: PERMISSION_DENIED.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let status = bad
        .send(batch("plant-b", "gw-2", 11..=12))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("plant-b"), "{}", status.message());

    // No identity at all: UNAUTHENTICATED.
    let status = match open(addr, None, "gw-1").await {
        Err(status) => status,
        Ok(mut s) => s.acks.message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unauthenticated);

    // A timestamp far in the future: refused alone, naming the limit.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let mut b = batch("plant-a", "gw-1", 4..=4);
    b.events[0].ts_ns += 3600 * 1_000_000_000;
    let ack = bad.send(b).await.unwrap();
    assert!(
        ack.refused[0].reason.contains("max_future_skew_secs"),
        "{}",
        ack.refused[0].reason
    );

    // The good agent was not disturbed; of the bad one, only its good
    // events are stored.
    let ack = good.send(batch("plant-b", "gw-2", 11..=20)).await.unwrap();
    assert_eq!(ack.durable_seq, 20);
    let rows = stored(&log).await;
    assert_eq!(rows.len(), 22);
    assert_eq!(rows.iter().filter(|(p, _)| p == "plant-b/gw-2").count(), 20);
    assert_eq!(rows.iter().filter(|(p, _)| p == "plant-a/gw-1").count(), 2);
}

/// Opens a stream on a connection of its own and reads the greeting ack;
/// any failure on the way comes back as text.
async fn try_open(addr: SocketAddr, agent: &str) -> Result<Stream, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    open_greeted(channel, "plant-a", agent).await
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_until_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let config = CollectorConfig {
        max_connections: 2,
        ..Default::default()
    };
    let (addr, log, metrics) = start_with(dir.path(), config).await;

    let mut first = try_open(addr, "gw-1").await.unwrap();
    let mut second = try_open(addr, "gw-2").await.unwrap();
    let third = try_open(addr, "gw-3").await;
    assert!(third.is_err(), "a third connection was served");
    assert!(metrics.connections_refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);

    // The admitted agents are unaffected.
    first.send(batch("plant-a", "gw-1", 1..=5)).await.unwrap();
    second.send(batch("plant-a", "gw-2", 1..=5)).await.unwrap();

    // When an agent goes away its slot comes back and a waiting agent gets in.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut third = loop {
        match try_open(addr, "gw-3").await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("no slot came back after the first agent left: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    third.send(batch("plant-a", "gw-3", 1..=5)).await.unwrap();
    assert_eq!(stored(&log).await.len(), 15);
}

/// `n` JSON event lines for the file source, timestamps starting now.
fn event_lines(n: u64) -> String {
    let now = common::now_ns();
    (0..n)
        .map(|i| {
            format!(
                "{{\"asset\":\"line1/press-01\",\"kind\":\"CYCLE\",\"name\":\"cycle\",\"ts_ns\":{},\"value\":{}}}\n",
                now + i as i64 * 1_000_000,
                i
            )
        })
        .collect()
}

/// Runs an agent in this process on `data_dir`, following `file`, until the
/// collector has acked everything it read.
async fn run_agent(addr: SocketAddr, data_dir: &std::path::Path, file: &std::path::Path) {
    let config = otwatch_agent::config::AgentConfig::parse(
        &format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {:?}\n\
             [collector]\nurl = \"http://{addr}\"\nreconnect_min = \"50ms\"\n\
             [[sources]]\ntype = \"file\"\npath = {:?}\npoll_interval = \"20ms\"\n",
            data_dir.display().to_string(),
            file.display().to_string()
        ),
        "test",
    )
    .unwrap();
    let lines = std::fs::read_to_string(file).unwrap().lines().count() as u64;
    let agent = otwatch_agent::Agent::start(config).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while agent.metrics.snapshot().events_taken < lines {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not read its file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn an_agent_whose_data_dir_was_wiped_is_renumbered_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, log, metrics) =
        start_with(&dir.path().join("log"), CollectorConfig::default()).await;
    let data_dir = dir.path().join("agent");
    let first = dir.path().join("first.jsonl");
    std::fs::write(&first, event_lines(300)).unwrap();
    run_agent(addr, &data_dir, &first).await;
    assert_eq!(stored(&log).await.len(), 300);

    // The gateway is reinstalled: same identity, empty data_dir, new events.
    std::fs::remove_dir_all(&data_dir).unwrap();
    let second = dir.path().join("second.jsonl");
    std::fs::write(&second, event_lines(120)).unwrap();
    run_agent(addr, &data_dir, &second).await;

    let rows = stored(&log).await;
    let seqs: HashSet<u64> = rows.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(
        rows.len(),
        420,
        "events of the reinstalled agent were dropped"
    );
    assert_eq!(
        seqs,
        (1..=420).collect(),
        "renumbered right after what was held"
    );
    assert_eq!(metrics.events_duplicate.load(Ordering::Relaxed), 0);
    assert_eq!(
        std::fs::read_to_string(data_dir.join("seq_offset"))
            .unwrap()
            .trim(),
        "300"
    );
}
