//! The collector over a real gRPC connection on loopback: acks only after the
//! event log holds a batch, duplicates dropped, bad input refused with a
//! status that names the problem, other agents unaffected.

mod common;

use common::{batch, open_on, stored, Stream};
use otwatch_collector::{Collector, CollectorConfig};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::Code;

async fn start_collector(dir: &std::path::Path) -> (SocketAddr, Arc<LocalLog>) {
    let log = Arc::new(LocalLog::open(dir, LocalLogConfig::default()).unwrap());
    let collector = Collector::new(log.clone(), CollectorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, log)
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

    // A limit broken: INVALID_ARGUMENT naming the limit.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let mut b = batch("plant-a", "gw-1", 1..=3);
    b.events[2].asset = "x".repeat(1000);
    let status = bad.send(b).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("event 2: asset is 1000 bytes, above the limit max_id_len = 256"),
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

    // A timestamp far in the future: named limit.
    let mut bad = open(addr, Some("plant-a"), "gw-1").await.unwrap();
    bad.acks.message().await.unwrap().unwrap();
    let mut b = batch("plant-a", "gw-1", 1..=1);
    b.events[0].ts_ns += 3600 * 1_000_000_000;
    let status = bad.send(b).await.unwrap_err();
    assert!(
        status.message().contains("max_future_skew_secs"),
        "{}",
        status.message()
    );

    // The good agent was not disturbed.
    let ack = good.send(batch("plant-b", "gw-2", 11..=20)).await.unwrap();
    assert_eq!(ack.durable_seq, 20);
    let rows = stored(&log).await;
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|(p, _)| p == "plant-b/gw-2"));
}
