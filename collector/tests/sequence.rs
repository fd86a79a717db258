//! Sequence numbers that would put an agent's high-water mark out of reach
//! (past `i64::MAX`, or further above it than `limits.max_seq_gap`) are
//! refused, and the agent's identity stays usable.

mod common;

use common::{batch, channel, open, open_log, stored, Server};
use otwatch_collector::CollectorConfig;
use otwatch_proto::limits::Limits;
use std::sync::atomic::Ordering;
use tonic::Code;

#[tokio::test]
async fn a_sequence_number_past_i64_max_is_refused_and_the_agent_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_log(dir.path()), CollectorConfig::default()).await;

    let mut s = open(channel(&server, None, None).await.unwrap())
        .await
        .unwrap();
    let status = s.send(batch([1, u64::MAX])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "event 1: seq 18446744073709551615 is above the largest sequence number an agent may use (9223372036854775807)"
    );
    assert_eq!(server.metrics.batches_invalid.load(Ordering::Relaxed), 1);

    // Nothing of it was stored: the agent's next events are not duplicates.
    let mut s = open(channel(&server, None, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(s.held, 0);
    assert_eq!(s.send(batch(1..=10)).await.unwrap().durable_seq, 10);
    let rows = stored(&server.log).await;
    assert_eq!(rows.len(), 10);
}

#[tokio::test]
async fn a_jump_above_max_seq_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = CollectorConfig {
        limits: Limits {
            max_events_per_batch: 100,
            max_seq_gap: 1000,
            ..Limits::default()
        },
        ..CollectorConfig::default()
    };
    let server = Server::start(open_log(dir.path()), config).await;
    let mut s = open(channel(&server, None, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(s.send(batch(1..=10)).await.unwrap().durable_seq, 10);

    let status = s.send(batch([11, 10 + 1001])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "event 1: seq 1011 is 1001 above the highest sequence number held for this agent (10), above the limit max_seq_gap = 1000"
    );

    // A gap within the limit (events the agent's queue dropped) is taken.
    let mut s = open(channel(&server, None, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(s.held, 10);
    assert_eq!(s.send(batch([500, 1010])).await.unwrap().durable_seq, 1010);
    let seqs: Vec<u64> = stored(&server.log)
        .await
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(seqs, (1..=10).chain([500, 1010]).collect::<Vec<_>>());
}
