//! The collector over the Kafka event log (librdkafka's in-process mock
//! broker): stateless collectors, an agent that moves between them, and
//! the wiped agent's recovery answered by any collector.

mod common;

use common::{batch, channel, open, Target};
use otwatch_collector::{Collector, CollectorConfig};
use otwatch_eventlog::{EventLog, KafkaLog, KafkaLogConfig, Topic};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A collector over a fresh `KafkaLog` of `brokers`, on a loopback port.
async fn collector(brokers: &str) -> (SocketAddr, Arc<KafkaLog>) {
    let log = Arc::new(
        KafkaLog::open(KafkaLogConfig {
            brokers: vec![brokers.to_string()],
            partitions: 3,
            session_timeout: Duration::from_secs(6),
            ..KafkaLogConfig::default()
        })
        .await
        .unwrap(),
    );
    let collector = Collector::new(log.clone(), CollectorConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(collector.serve(listener, None, std::future::pending()));
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moving_between_collectors_is_stored_once_and_its_mark_survives() {
    let cluster = otwatch_eventlog::kafka::mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let (first, _) = collector(&brokers).await;
    let to = |addr| Target { addr, tls: false };

    let mut s = open(channel(to(first), None, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(s.held, 0);
    assert_eq!(s.send(batch(1..=10)).await.unwrap().durable_seq, 10);

    // The agent's data_dir is wiped and it reconnects to another collector,
    // started afterwards and holding no state: it learns what the log holds.
    let (second, log) = collector(&brokers).await;
    let mut s = open(channel(to(second), None, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(s.held, 10, "any collector answers the agent's recovery");
    let ack = s.send(batch(5..=15)).await.unwrap();
    assert_eq!((ack.durable_seq, ack.duplicates), (15, 6));

    // Downstream, every (agent, seq) once.
    let mut consumer = log.consumer(Topic::Events, "history").await.unwrap();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs.len() < 15 && Instant::now() < deadline {
        for d in consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let events = otwatch_proto::arrow::batch_to_events(&d.batch).unwrap();
            seqs.extend(events.iter().map(|e| e.seq));
        }
    }
    seqs.sort();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
}
