//! The event log: the durable, ordered log of Arrow record batches that sits
//! between ingest and everything downstream.
//!
//! It is the only seam between the one-machine and the many-machine
//! deployment. [`EventLog`] and [`Consumer`] are shaped after Kafka so a Kafka
//! implementation can slot in without touching the collector, the detector or
//! the history writer:
//!
//! - a log has named topics ([`Topic::Events`], [`Topic::Alerts`],
//!   [`Topic::Control`]); each record is one Arrow `RecordBatch` and gets the
//!   next offset of its topic;
//! - [`EventLog::append`] returns only once the records are durable (for the
//!   local log: written and fsync'd; for Kafka: acknowledged by all in-sync
//!   replicas), so the collector can ack agents the moment it returns;
//! - a record may carry a [`ProducerMark`] (producer id and the highest
//!   sequence number in the record), and the log recovers, per producer, the
//!   highest sequence it holds ([`EventLog::producer_seq`]), the way Kafka's
//!   idempotent producer state is recovered; the collector dedupes with it;
//! - consumers read from an offset and commit the offset they will resume
//!   from. Consumers whose state lives elsewhere (the history writer commits
//!   its offset with its Parquet files, the detector with its checkpoint)
//!   open at that position with [`EventLog::consumer_at`] and commit too,
//!   so that the log knows what it may delete;
//! - damaged records are reported and skipped, never read as wrong data and
//!   never a reason to stop; offsets never go back.

mod local;

pub use local::{DamageCounts, LocalLog, LocalLogConfig};

use arrow::array::RecordBatch;
use std::time::Duration;

/// A topic of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Controller events, `events` schema.
    Events,
    /// Alerts raised by the detector, `alerts` schema.
    Alerts,
    /// Decisions of the SOC (accept a deviation, relearn an asset, ...),
    /// `control` schema: a hash chain of records that the detector applies
    /// and the `audit` history keeps.
    Control,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Events, Topic::Alerts, Topic::Control];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Events => "events",
            Topic::Alerts => "alerts",
            Topic::Control => "control",
        }
    }
}

/// Which producer wrote a record, and the highest sequence number the
/// record answers for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerMark {
    /// Producer id; the collector uses `site/agent`.
    pub producer: String,
    /// Highest producer sequence number the record answers for: its rows'
    /// highest, or higher when the producer's later events were refused (a
    /// record may then carry no rows and only this mark).
    pub last_seq: u64,
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct Record {
    pub batch: RecordBatch,
    pub producer: Option<ProducerMark>,
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub offset: u64,
    pub batch: RecordBatch,
    pub producer: Option<ProducerMark>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event log {0}")]
    Fs(#[from] otwatch_fs::FsError),
    #[error("event log record at {path} offset {offset} is unreadable: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("arrow encoding failed: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("offset {offset} of topic {topic} is beyond the end of the log ({end}): records this consumer had read are gone; open it with consumer_at so that the log continues numbering after it")]
    OffsetBeyondEnd {
        topic: &'static str,
        offset: u64,
        end: u64,
    },
    #[error("offset {offset} of topic {topic} is no longer in the log (oldest is {oldest})")]
    OffsetGone {
        topic: &'static str,
        offset: u64,
        oldest: u64,
    },
    #[error("the event log has shut down")]
    Closed,
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// A durable, ordered log of record batches. See the crate docs.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends records to `topic` in order and returns their offsets once they
    /// are durable. Concurrent callers are committed together (group commit).
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<u64>>;

    /// Highest sequence number durably held for `producer` in `topic`.
    fn producer_seq(&self, topic: Topic, producer: &str) -> Option<u64>;

    /// The offset the next appended record of `topic` will get.
    fn end_offset(&self, topic: Topic) -> u64;

    /// A consumer of `topic` in consumer group `group`, positioned at the
    /// group's committed offset (or the start of the log).
    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn Consumer>>;

    /// A consumer of `topic` in group `group` positioned at `offset`, for
    /// consumers that keep their position with their own state (the history
    /// with its files, the detector with its checkpoint). If the log ends
    /// before `offset`, records this consumer already processed are gone:
    /// the log reports it and continues numbering at `offset`, so that
    /// nothing appended later is skipped.
    async fn consumer_at(
        &self,
        topic: Topic,
        group: &str,
        offset: u64,
    ) -> Result<Box<dyn Consumer>>;
}

/// Reads one topic in order.
#[async_trait::async_trait]
pub trait Consumer: Send {
    /// Up to `max` records from the current position, waiting up to `wait`
    /// for new ones when none is available. An empty result means the wait ran
    /// out. Advances the position past what it returns.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Durably records `next_offset` as where this group resumes.
    async fn commit(&mut self, next_offset: u64) -> Result<()>;

    /// Moves the position to `offset`.
    fn seek(&mut self, offset: u64);

    /// The offset the next `poll` starts from.
    fn position(&self) -> u64;
}
