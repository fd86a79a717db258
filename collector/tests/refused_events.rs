//! Per-event refusals over a real gRPC stream: an event that breaks a limit
//! of its own is refused alone and listed in the ack, the rest of its batch
//! is stored, the log's high-water mark covers refused events (also after a
//! restart), a resend lists them again, and a batch that is wrong as a
//! whole is still refused with a status.

use otwatch_collector::{Backfill, Collector, CollectorConfig, CollectorMetrics};
use otwatch_eventlog::{LocalLog, LocalLogConfig, Topic};
use otwatch_proto::identity::{AGENT_HEADER, SITE_HEADER};
use otwatch_proto::limits::Limits;
use otwatch_proto::v1::ingest_client::IngestClient;
use otwatch_proto::{Ack, ControllerEvent, EventBatch, EventKind};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

const NS: i64 = 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

struct Running {
    addr: SocketAddr,
    log: Arc<LocalLog>,
    metrics: Arc<CollectorMetrics>,
    collector: Collector,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A collector whose events may be at most an hour old.
async fn start(dir: &Path) -> Running {
    let config = CollectorConfig {
        limits: Limits {
            max_past_secs: 3600,
            ..Limits::default()
        },
        ..CollectorConfig::default()
    };
    let log = Arc::new(LocalLog::open(dir, LocalLogConfig::default()).unwrap());
    let collector = Collector::new(log.clone(), config).unwrap();
    let metrics = collector.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let served = tokio::spawn(collector.clone().serve(listener, None, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        log,
        metrics,
        collector,
        stop,
        served,
    }
}

struct Stream {
    tx: mpsc::Sender<EventBatch>,
    acks: tonic::Streaming<Ack>,
}

async fn open(addr: SocketAddr) -> (Stream, Ack) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(SITE_HEADER, "plant-a".parse().unwrap());
    request
        .metadata_mut()
        .insert(AGENT_HEADER, "gw-1".parse().unwrap());
    let mut acks = IngestClient::new(channel)
        .stream(request)
        .await
        .unwrap()
        .into_inner();
    let greeting = acks.message().await.unwrap().unwrap();
    (Stream { tx, acks }, greeting)
}

impl Stream {
    async fn send(&mut self, batch: EventBatch) -> Result<Ack, tonic::Status> {
        self.tx.send(batch).await.unwrap();
        match self.acks.message().await {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => panic!("stream closed without a status"),
            Err(status) => Err(status),
        }
    }
}

/// A batch of CYCLE events stamped now, except the seqs in `old`, stamped
/// two hours ago (past the collector's one-hour limit).
fn batch(seqs: std::ops::RangeInclusive<u64>, old: &[u64]) -> EventBatch {
    let now = now_ns();
    EventBatch {
        site: "plant-a".into(),
        agent: "gw-1".into(),
        events: seqs
            .map(|seq| ControllerEvent {
                seq,
                ts_ns: if old.contains(&seq) {
                    now - 7200 * NS
                } else {
                    now
                },
                asset: "line1/press-01".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(seq as f64),
                ..Default::default()
            })
            .collect(),
        queue_backlog: 0,
    }
}

fn refused_seqs(ack: &Ack) -> Vec<u64> {
    ack.refused.iter().map(|r| r.seq).collect()
}

async fn stored_seqs(log: &LocalLog) -> Vec<u64> {
    otwatch_testkit::log_events(log)
        .await
        .iter()
        .map(|e| e.seq)
        .collect()
}

#[tokio::test]
async fn an_event_that_breaks_a_limit_is_refused_alone_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let (mut s, greeting) = open(c.addr).await;
    assert_eq!(greeting.durable_seq, 0);

    // One stale event in the middle: the others are stored.
    let ack = s.send(batch(1..=5, &[3])).await.unwrap();
    assert_eq!(ack.durable_seq, 5);
    assert_eq!(refused_seqs(&ack), vec![3]);
    let reason = &ack.refused[0].reason;
    assert!(
        reason.contains("above the limit max_past_secs = 3600"),
        "{reason}"
    );
    assert!(!reason.starts_with("event "), "{reason}");
    assert_eq!(stored_seqs(&c.log).await, vec![1, 2, 4, 5]);

    // The last events refused, then a whole batch refused: the ack still
    // answers for the batch's last seq, and so does the log's mark.
    let ack = s.send(batch(6..=8, &[7, 8])).await.unwrap();
    assert_eq!((ack.durable_seq, refused_seqs(&ack)), (8, vec![7, 8]));
    let ack = s.send(batch(9..=10, &[9, 10])).await.unwrap();
    assert_eq!((ack.durable_seq, refused_seqs(&ack)), (10, vec![9, 10]));
    assert_eq!(c.log.producer_seq(Topic::Events, "plant-a/gw-1"), Some(10));
    assert_eq!(stored_seqs(&c.log).await, vec![1, 2, 4, 5, 6]);

    // A resend (the ack was lost) lists the refused events again, stores
    // nothing twice and counts no new refusal.
    let ack = s.send(batch(4..=10, &[7, 8, 9, 10])).await.unwrap();
    assert_eq!(ack.durable_seq, 10);
    assert_eq!(ack.duplicates, 7);
    assert_eq!(refused_seqs(&ack), vec![7, 8, 9, 10]);

    let counts = c.metrics.snapshot();
    assert_eq!(counts.events_refused, 5);
    assert_eq!(counts.events_stored, 5);
    assert_eq!(counts.batches_invalid, 0);

    // A batch that is wrong as a whole is still refused with a status.
    let mut bad = batch(11..=12, &[]);
    bad.events[1].seq = 11;
    let status = s.send(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not above the previous"),
        "{}",
        status.message()
    );

    // After a restart the log still answers for every refused event.
    drop(s);
    let _ = c.stop.send(());
    c.served.await.unwrap().unwrap();
    drop(c.log);
    let c = start(dir.path()).await;
    let (_s, greeting) = open(c.addr).await;
    assert_eq!(greeting.durable_seq, 10);
    assert_eq!(stored_seqs(&c.log).await, vec![1, 2, 4, 5, 6]);
}

#[tokio::test]
async fn a_backfill_allowance_lets_one_agent_send_older_events_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let (mut s, _) = open(c.addr).await;

    // Without an allowance the two-hour-old event is refused.
    let ack = s.send(batch(1..=2, &[2])).await.unwrap();
    assert_eq!(refused_seqs(&ack), vec![2]);

    // Allowed back to three hours ago, for this agent: taken.
    let now = now_ns();
    c.collector.allow_backfill(
        "plant-a",
        "gw-1",
        Backfill {
            oldest_ns: now - 3 * 3600 * NS,
            until_ns: now + 3600 * NS,
        },
    );
    let ack = s.send(batch(3..=4, &[4])).await.unwrap();
    assert!(ack.refused.is_empty(), "{:?}", ack.refused);

    // Not older than the allowance's oldest time, and other limits stay.
    let mut older = batch(5..=5, &[]);
    older.events[0].ts_ns = now - 4 * 3600 * NS;
    let ack = s.send(older).await.unwrap();
    assert_eq!(refused_seqs(&ack), vec![5]);

    // Another agent of the site has no allowance.
    c.collector.allow_backfill(
        "plant-a",
        "gw-2",
        Backfill {
            oldest_ns: 0,
            until_ns: now - NS,
        },
    );
    // An allowance that has ended no longer holds (a new one replaces it).
    c.collector.allow_backfill(
        "plant-a",
        "gw-1",
        Backfill {
            oldest_ns: now - 3 * 3600 * NS,
            until_ns: now_ns() - 1,
        },
    );
    let ack = s.send(batch(6..=6, &[6])).await.unwrap();
    assert_eq!(refused_seqs(&ack), vec![6]);
    assert_eq!(stored_seqs(&c.log).await, vec![1, 3, 4]);
}
