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
//!   highest sequence it holds ([`EventLog::producer_seq`]); the collector
//!   dedupes with it. The lookup is asynchronous and fallible because a
//!   distributed log answers it over the network;
//! - a topic has one or more partitions ([`Delivery::partition`]); offsets
//!   are per partition. The local log has one partition, `0`, per topic;
//! - consumers read from an offset and commit the offset they will resume
//!   from. Consumers whose state lives elsewhere (the history writer commits
//!   its offset with its Parquet files, the detector with its checkpoint)
//!   open at that position with [`EventLog::consumer_at`] (one partition) or
//!   [`EventLog::consumer_from`] (a [`Checkpoint`]: every partition, and
//!   the producers' high-water marks a distributed log needs to drop records
//!   written twice), and commit too, so that the log knows what it may
//!   delete;
//! - damaged records are reported and skipped, never read as wrong data and
//!   never a reason to stop; offsets never go back.

mod ipc;
pub mod kafka;
mod local;

pub use kafka::{KafkaLog, KafkaLogConfig, KafkaSecurity};
pub use local::{DamageCounts, LocalLog, LocalLogConfig};

use arrow::array::RecordBatch;
use std::collections::BTreeMap;
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
    /// Partition of the topic the record is in (always 0 in the local log).
    pub partition: u32,
    /// Offset of the record within its partition.
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
    #[error("Kafka {action} failed: {reason}")]
    Kafka { action: String, reason: String },
    #[error("Kafka topic {topic} does not exist and the broker refused to create it: {reason} (create it, with {partitions} partitions, or let otwatch's user create topics)")]
    TopicCreation {
        topic: String,
        partitions: i32,
        reason: String,
    },
    #[error("{0} is not supported by this event log")]
    Unsupported(&'static str),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// A durable, ordered log of record batches. See the crate docs.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends records to `topic` in order and returns their offsets once they
    /// are durable. Concurrent callers are committed together (group commit).
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<u64>>;

    /// Highest sequence number durably held for `producer` in `topic`:
    /// every mark appended (and acknowledged) before the call, by any
    /// writer of the log, is taken into account.
    async fn producer_seq(&self, topic: Topic, producer: &str) -> Result<Option<u64>>;

    /// The offset the next appended record of `topic` will get; for a log
    /// with several partitions, the sum over partitions of the ends this
    /// process knows of (a measure of progress for lag, not an offset).
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

    /// A consumer of `topic` in group `group` resuming from `checkpoint`
    /// (as returned by [`Consumer::checkpoint`] and kept with the
    /// consumer's own state). Partitions the checkpoint does not name start
    /// at the group's committed offset (or the start of the log). The local
    /// log has one partition and never holds a record twice, so its default
    /// is [`EventLog::consumer_at`] at partition 0's offset.
    async fn consumer_from(
        &self,
        topic: Topic,
        group: &str,
        checkpoint: &Checkpoint,
    ) -> Result<Box<dyn Consumer>> {
        match checkpoint.offsets.get(&0) {
            Some(&offset) => self.consumer_at(topic, group, offset).await,
            None => self.consumer(topic, group).await,
        }
    }
}

/// Where a consumer stands, per partition, and what it already holds: the
/// state a consumer keeps with its own output (files, model checkpoint) so
/// that it resumes exactly where that output ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Next offset to read, per partition.
    #[serde(default)]
    pub offsets: BTreeMap<u32, u64>,
    /// Per partition, per producer, the highest sequence already delivered:
    /// a record a producer wrote twice (an agent resending through another
    /// collector) is dropped, because a producer's records all land in one
    /// partition, in order.
    #[serde(default)]
    pub producers: BTreeMap<u32, BTreeMap<String, u64>>,
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

    /// The offset the next `poll` starts from; for a consumer of several
    /// partitions, the sum of their next offsets (a measure of progress).
    fn position(&self) -> u64;

    /// Where this consumer stands: every partition it reads and what it
    /// already holds. The default is for one-partition logs.
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            offsets: BTreeMap::from([(0, self.position())]),
            producers: BTreeMap::new(),
        }
    }

    /// Durably records `checkpoint`'s offsets as where this group resumes.
    async fn commit_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        match checkpoint.offsets.get(&0) {
            Some(&offset) => self.commit(offset).await,
            None => Ok(()),
        }
    }
}
