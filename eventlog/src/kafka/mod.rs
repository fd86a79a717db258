//! The distributed event log: topics of an Apache Kafka cluster (or any
//! broker speaking its protocol), through librdkafka.
//!
//! It owns the wire format of otwatch's records in Kafka, the layout of the
//! topics, and the rules that keep the delivery contract of the crate
//! (acked means durable; every (agent, seq) exactly once downstream) with
//! any number of stateless collectors writing and consumer groups reading.
//!
//! # Topics
//!
//! | topic (default name) | partitions | cleanup | holds |
//! |---|---|---|---|
//! | `otwatch-events`    | `partitions` | delete  | controller events, one record per appended batch |
//! | `otwatch-alerts`    | `partitions` | delete  | alerts |
//! | `otwatch-control`   | 1            | delete  | SOC decisions: a hash chain, so one total order |
//! | `otwatch-producers` | `partitions` | compact | each producer's high-water mark, keyed by producer |
//!
//! Topics missing at start are created with these settings (and the
//! configured replication factor and retention); a broker that refuses gives
//! [`LogError::TopicCreation`] naming the topic. Existing topics are used
//! as they are: their partition count is read from the cluster's metadata.
//!
//! # Records on the wire
//!
//! One [`Record`] is one Arrow IPC stream holding its one batch (schema
//! message, batch, end marker: readable without any other context). A
//! stream longer than `max_record_bytes` (default 900 000, below the
//! broker's default `message.max.bytes` of 1 MiB with room for headers) is
//! cut into consecutive chunks, one Kafka message each, all sent to the
//! same partition in order. Every message carries headers (values ASCII):
//!
//! | header | value |
//! |---|---|
//! | `otwatch-format` | record format version, `1`; a consumer reports and skips versions it does not know |
//! | `otwatch-writer` | the writing process's random id (16 hex digits) |
//! | `otwatch-record` | the writer's record number (decimal): with the writer, names the record a chunk belongs to |
//! | `otwatch-chunk`  | `index/count`, from `0/1` |
//! | `otwatch-producer` | the record's [`ProducerMark`] producer (`site/agent`), when it has one |
//! | `otwatch-last-seq` | the mark's `last_seq` (decimal), when it has one |
//!
//! The message key is the partitioning key (below). A record's offset, as
//! [`Delivery::offset`] reports it, is the offset of its last chunk in its
//! partition. Chunks of records of different writers may interleave in a
//! partition; a consumer reassembles by (writer, record). A writer's chunks
//! of one record are contiguous among its own messages (one idempotent
//! producer keeps order within a partition), so when a writer's next record
//! begins while an earlier one is incomplete, the earlier one was abandoned
//! (its `append` failed and was never acked): it is reported and dropped.
//!
//! # Partitioning
//!
//! By site: the key is the site (the part of the producer mark before `/`,
//! or the `site` column of the batch's first row), and the partition is
//! `crc32c(key) mod partitions`, computed here rather than by the client's
//! partitioner so that every writer agrees whatever its client library. A
//! site's events therefore all land in one partition, in order: one
//! detector instance owns all of a site's state, and an agent's events are
//! ordered within their partition. The control topic has one partition.
//!
//! # Acked means durable
//!
//! The producer is idempotent with `acks=all`. [`EventLog::append`] returns
//! only after the delivery reports of every chunk of every record have
//! confirmed it; the collector acks an agent only then.
//!
//! # Exactly once downstream, without transactions
//!
//! An agent that reconnects to another collector resends what was not
//! acked, so a partition may hold an (agent, seq) twice. Consumers drop
//! what they already hold: per partition, per producer, the highest
//! `last_seq` delivered (the high-water mark). A later record of that
//! producer loses its rows with `seq` at or below the mark, and is dropped
//! whole when nothing new is left. The marks are part of the consumer's
//! [`Checkpoint`], which the consumer keeps with its own output (history
//! files, detector checkpoint) and hands back to
//! [`EventLog::consumer_from`]; a consumer that resumes from the group's
//! committed offsets alone ([`EventLog::consumer`]) starts with no marks,
//! which is right for topics without producer marks (alerts, control).
//!
//! # Producer high-water marks for collectors
//!
//! After the events of an `append` are confirmed, the log writes each
//! producer's new mark to the compacted producers topic: key
//! `<topic>/<producer>`, value the decimal `last_seq`, partition
//! `crc32c(key) mod partitions`. Written after the events, a mark is never
//! ahead of them; a crash in between leaves it behind, which only makes
//! the agent resend what consumers then drop. Any collector answers
//! [`EventLog::producer_seq`] by reading that partition's end offset and
//! following the topic (from its start, in a background task of each
//! [`KafkaLog`]) up to it, so every mark written before the question is in
//! the answer: an agent whose `data_dir` was wiped learns, from any
//! collector, the sequence the log already holds.

#[cfg(test)]
mod tests;

use crate::{
    ipc, Checkpoint, Consumer, Delivery, EventLog, LogError, ProducerMark, Record, Result, Topic,
};
use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, UInt64Array};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Version of the record format described in the module docs.
const FORMAT: &str = "1";
const H_FORMAT: &str = "otwatch-format";
const H_WRITER: &str = "otwatch-writer";
const H_RECORD: &str = "otwatch-record";
const H_CHUNK: &str = "otwatch-chunk";
const H_PRODUCER: &str = "otwatch-producer";
const H_LAST_SEQ: &str = "otwatch-last-seq";

/// An incomplete record is given up once its partition has moved this many
/// messages past its first chunk (its writer died between chunks).
const ABANDON_AFTER: u64 = 100_000;

/// How to reach the cluster and lay out the topics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaLogConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topic of controller events.
    pub events_topic: String,
    /// Topic of alerts.
    pub alerts_topic: String,
    /// Topic of SOC decisions (always one partition: it is a hash chain).
    pub control_topic: String,
    /// Compacted topic of each producer's high-water mark.
    pub producers_topic: String,
    /// Partitions of the events, alerts and producers topics when otwatch
    /// creates them; the unit of parallelism of detectors and history
    /// writers (see the README on sizing).
    pub partitions: i32,
    /// Replication factor of topics otwatch creates; unset: the broker's
    /// `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Client id the brokers see (logs, quotas).
    pub client_id: String,
    /// Largest message otwatch writes; longer records are chunked. Must stay
    /// below the broker's `message.max.bytes` with room for headers.
    pub max_record_bytes: usize,
    /// How long a produce, a metadata request or a commit may take before
    /// it fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long the group waits for a member that stopped answering (a
    /// killed detector) before its partitions move to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `retention.ms` of the events, alerts and control topics otwatch
    /// creates; unset: the broker's default. Existing topics keep theirs.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Connection security (`security.protocol` and its settings).
    pub security: KafkaSecurity,
}

impl Default for KafkaLogConfig {
    fn default() -> Self {
        KafkaLogConfig {
            brokers: Vec::new(),
            events_topic: "otwatch-events".into(),
            alerts_topic: "otwatch-alerts".into(),
            control_topic: "otwatch-control".into(),
            producers_topic: "otwatch-producers".into(),
            partitions: 12,
            replication_factor: None,
            client_id: "otwatch".into(),
            max_record_bytes: 900_000,
            timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            retention: None,
            security: KafkaSecurity::default(),
        }
    }
}

impl KafkaLogConfig {
    /// Checks the values the log cannot work with, naming the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return Err("brokers: give at least one broker as host:port".into());
        }
        let names = [
            ("events_topic", &self.events_topic),
            ("alerts_topic", &self.alerts_topic),
            ("control_topic", &self.control_topic),
            ("producers_topic", &self.producers_topic),
        ];
        for (option, name) in names {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if name.is_empty() || name.len() > 249 || !name.chars().all(legal) {
                return Err(format!(
                    "{option}: {name:?} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        let distinct: BTreeSet<&String> = names.iter().map(|(_, n)| *n).collect();
        if distinct.len() != names.len() {
            return Err("events_topic, alerts_topic, control_topic and producers_topic must be four different topics".into());
        }
        if self.partitions < 1 {
            return Err("partitions: must be at least 1".into());
        }
        if matches!(self.replication_factor, Some(r) if r < 1) {
            return Err(
                "replication_factor: must be at least 1 (or unset for the broker's default)".into(),
            );
        }
        if self.client_id.is_empty() {
            return Err("client_id: must not be empty".into());
        }
        if !(1024..=64 << 20).contains(&self.max_record_bytes) {
            return Err("max_record_bytes: must be between 1024 and 64 MiB".into());
        }
        if self.timeout < Duration::from_secs(1) {
            return Err("timeout: must be at least 1s".into());
        }
        // Brokers refuse shorter sessions (group.min.session.timeout.ms).
        if self.session_timeout < Duration::from_secs(6) {
            return Err("session_timeout: must be at least 6s".into());
        }
        self.security.validate()
    }

    fn topic(&self, topic: Topic) -> &str {
        match topic {
            Topic::Events => &self.events_topic,
            Topic::Alerts => &self.alerts_topic,
            Topic::Control => &self.control_topic,
        }
    }

    /// The settings every client of the log shares.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id);
        self.security.apply(&mut c);
        c
    }
}

/// Connection security. Secrets are resolved by the caller (from files or
/// the environment) before they get here, never written in configuration.
#[derive(Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Option<String>,
    /// CA bundle (PEM) that signs the brokers' certificates.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for brokers that authenticate clients by TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    pub key_file: Option<std::path::PathBuf>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password, already read from its file or variable.
    #[serde(skip)]
    pub sasl_password: Option<String>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl KafkaSecurity {
    fn validate(&self) -> std::result::Result<(), String> {
        let protocol = self.protocol.as_deref().unwrap_or("plaintext");
        let (tls, sasl) = match protocol {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(format!(
                "security.protocol: {other:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
            ))
            }
        };
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()) {
            return Err(format!(
                "security: ca_file, cert_file and key_file need protocol ssl or sasl_ssl (not {protocol})"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("security: cert_file and key_file go together".into());
        }
        if sasl {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                other => {
                    return Err(format!(
                    "security.sasl_mechanism: {other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                ))
                }
            }
            if self.sasl_username.is_none() {
                return Err(format!(
                    "security.sasl_username is required with protocol {protocol}"
                ));
            }
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            return Err(format!(
                "security: SASL settings need protocol sasl_plaintext or sasl_ssl (not {protocol})"
            ));
        }
        Ok(())
    }

    fn apply(&self, c: &mut ClientConfig) {
        if let Some(p) = &self.protocol {
            c.set("security.protocol", p);
        }
        let path = |p: &std::path::PathBuf| p.display().to_string();
        if let Some(p) = &self.ca_file {
            c.set("ssl.ca.location", path(p));
        }
        if let Some(p) = &self.cert_file {
            c.set("ssl.certificate.location", path(p));
        }
        if let Some(p) = &self.key_file {
            c.set("ssl.key.location", path(p));
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanisms", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p);
        }
    }
}

fn kafka_err(action: impl Into<String>) -> impl FnOnce(KafkaError) -> LogError {
    let action = action.into();
    move |e| LogError::Kafka {
        action,
        reason: e.to_string(),
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Kafka {
            action: "a metadata request".into(),
            reason: e.to_string(),
        })?
}

fn partition_of(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions
}

/// The partitioning key of a record: its site (see the module docs).
fn site_key(record: &Record) -> String {
    if let Some(mark) = &record.producer {
        let site = mark.producer.split('/').next().unwrap_or_default();
        return site.to_string();
    }
    let batch = &record.batch;
    let Some(column) = batch.column_by_name("site") else {
        return String::new();
    };
    if batch.num_rows() == 0 {
        return String::new();
    }
    let column = match arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8) {
        Ok(c) => c,
        Err(_) => return String::new(),
    };
    let strings = column.as_any().downcast_ref::<StringArray>();
    match strings {
        Some(s) if s.is_valid(0) => s.value(0).to_string(),
        _ => String::new(),
    }
}

fn mark_key(topic: Topic, producer: &str) -> String {
    format!("{}/{producer}", topic.name())
}

/// A random id for this process's records (no two writers share one).
fn writer_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// Partition counts of the log's topics, read from the cluster.
#[derive(Debug, Clone)]
struct Layout {
    events: u32,
    alerts: u32,
    control: u32,
    producers: u32,
}

impl Layout {
    fn partitions(&self, topic: Topic) -> u32 {
        match topic {
            Topic::Events => self.events,
            Topic::Alerts => self.alerts,
            Topic::Control => self.control,
        }
    }
}

/// A librdkafka mock cluster (one broker) holding the log's topics of the
/// default [`KafkaLogConfig`]: `events`, `alerts` and the producers' marks
/// with 3 partitions, `control` with 1. For tests: the mock cannot create
/// topics through the admin API.
#[doc(hidden)]
pub fn mock_cluster(
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock cluster starts");
    let c = KafkaLogConfig::default();
    for (topic, partitions) in [
        (&c.events_topic, 3),
        (&c.alerts_topic, 3),
        (&c.control_topic, 1),
        (&c.producers_topic, 3),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .expect("the mock cluster creates a topic");
    }
    cluster
}

/// The partitions a group member holds now.
type Assignment = Mutex<BTreeSet<u32>>;

/// The event log on Kafka. See the module docs.
pub struct KafkaLog {
    config: KafkaLogConfig,
    producer: FutureProducer,
    layout: Layout,
    writer: String,
    next_record: AtomicU64,
    /// Per topic and partition, the end offsets this process has seen.
    ends: Arc<Mutex<HashMap<(Topic, u32), u64>>>,
    marks: Arc<Marks>,
    tail: tokio::task::JoinHandle<()>,
    /// The assignments of this process's group consumers, for readiness.
    members: Mutex<Vec<(String, std::sync::Weak<Assignment>)>>,
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("layout", &self.layout)
            .finish()
    }
}

impl KafkaLog {
    /// Connects, creates the topics that are missing and starts following
    /// the producers topic. Must run inside a Tokio runtime.
    pub async fn open(config: KafkaLogConfig) -> Result<Self> {
        config.validate().map_err(|reason| LogError::Kafka {
            action: "configuration".into(),
            reason,
        })?;
        let layout = ensure_topics(&config).await?;
        let producer: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", config.timeout.as_millis().to_string())
            .set(
                "message.max.bytes",
                (config.max_record_bytes + (64 << 10)).to_string(),
            )
            .create()
            .map_err(kafka_err("creating the producer"))?;
        let marks = Arc::new(Marks::new(layout.producers));
        let follower: StreamConsumer = config
            .client()
            .set("group.id", format!("{}-marks", config.client_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka_err("creating the producers-topic reader"))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..layout.producers {
            tpl.add_partition_offset(&config.producers_topic, p as i32, Offset::Beginning)
                .map_err(kafka_err("assigning the producers topic"))?;
        }
        follower
            .assign(&tpl)
            .map_err(kafka_err("assigning the producers topic"))?;
        let tail = tokio::spawn(follow_marks(follower, marks.clone()));
        tracing::info!(brokers = %config.brokers.join(","), ?layout, "Kafka event log open");
        Ok(KafkaLog {
            producer,
            layout,
            writer: writer_id(),
            next_record: AtomicU64::new(0),
            ends: Arc::default(),
            marks,
            tail,
            members: Mutex::default(),
            config,
        })
    }

    /// Topics (by their names in the cluster) of this process's consumer
    /// group members that hold no partition yet: the group is still
    /// rebalancing, or has more members than the topic has partitions.
    pub fn unassigned(&self) -> Vec<String> {
        let mut members = self.members.lock().unwrap();
        members.retain(|(_, m)| m.strong_count() > 0);
        members
            .iter()
            .filter(|(_, m)| m.upgrade().is_some_and(|m| m.lock().unwrap().is_empty()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Partitions of `topic`.
    pub fn partitions(&self, topic: Topic) -> u32 {
        self.layout.partitions(topic)
    }

    /// Whether the brokers answer a metadata request within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> Result<()> {
        let producer = self.producer.clone();
        blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(kafka_err("reaching the brokers"))
        })
        .await
    }

    /// Queues one message; waits while librdkafka's queue is full.
    async fn send(&self, record: FutureRecord<'_, str, [u8]>) -> Result<DeliveryFuture> {
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(kafka_err("producing")(e)),
            }
        }
    }

    async fn confirmed(delivery: DeliveryFuture) -> Result<(u32, u64)> {
        match delivery.await {
            Ok(Ok(d)) => Ok((d.partition as u32, d.offset as u64)),
            Ok(Err((e, _))) => Err(kafka_err("delivery")(e)),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Writes the producers' new marks to the producers topic.
    async fn write_marks(&self, topic: Topic, marks: BTreeMap<String, u64>) -> Result<()> {
        let mut pending = Vec::with_capacity(marks.len());
        for (producer, seq) in &marks {
            let key = mark_key(topic, producer);
            let value = seq.to_string();
            let partition = partition_of(key.as_bytes(), self.layout.producers);
            let record = FutureRecord::to(&self.config.producers_topic)
                .partition(partition as i32)
                .key(key.as_str())
                .payload(value.as_bytes());
            pending.push(self.send(record).await?);
        }
        for delivery in pending {
            Self::confirmed(delivery).await?;
        }
        Ok(())
    }
}

/// Reads the layout, creating the topics that are missing.
async fn ensure_topics(config: &KafkaLogConfig) -> Result<Layout> {
    let admin: AdminClient<DefaultClientContext> = config
        .client()
        .create()
        .map_err(kafka_err("creating the admin client"))?;
    let admin = Arc::new(admin);
    let wanted = [
        (config.events_topic.clone(), config.partitions, "delete"),
        (config.alerts_topic.clone(), config.partitions, "delete"),
        (config.control_topic.clone(), 1, "delete"),
        (config.producers_topic.clone(), config.partitions, "compact"),
    ];
    let existing = partition_counts(&admin, config.timeout).await?;
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(name, _, _)| !existing.contains_key(name))
        .collect();
    if !missing.is_empty() {
        // -1: the broker's default.replication.factor.
        let replication = config.replication_factor.unwrap_or(-1);
        let retention = config.retention.map(|r| r.as_millis().to_string());
        let topics: Vec<NewTopic> = missing
            .iter()
            .map(|(name, partitions, cleanup)| {
                let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
                    .set("cleanup.policy", cleanup);
                match (&retention, *cleanup) {
                    (Some(ms), "delete") => topic.set("retention.ms", ms),
                    _ => topic,
                }
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(config.timeout))
            .request_timeout(Some(config.timeout));
        let refused = |name: &str, partitions: i32, reason: String| LogError::TopicCreation {
            topic: name.to_string(),
            partitions,
            reason,
        };
        let results = admin.create_topics(&topics, &options).await.map_err(|e| {
            let (name, partitions, _) = missing[0];
            refused(name, *partitions, e.to_string())
        })?;
        for result in results {
            if let Err((name, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    let partitions = missing
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .map_or(0, |(_, p, _)| *p);
                    return Err(refused(&name, partitions, code.to_string()));
                }
            }
        }
        for (name, _, _) in &missing {
            tracing::info!(topic = %name, "created Kafka topic");
        }
    }
    // New topics take a moment to show in every broker's metadata.
    let deadline = tokio::time::Instant::now() + config.timeout;
    loop {
        let counts = partition_counts(&admin, config.timeout).await?;
        let get = |name: &String| counts.get(name).copied();
        match (
            get(&config.events_topic),
            get(&config.alerts_topic),
            get(&config.control_topic),
            get(&config.producers_topic),
        ) {
            (Some(events), Some(alerts), Some(control), Some(producers)) => {
                if control != 1 {
                    tracing::warn!(topic = %config.control_topic, partitions = control, "the control topic has several partitions; otwatch writes and reads only partition 0");
                }
                return Ok(Layout {
                    events,
                    alerts,
                    control: 1,
                    producers,
                });
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(LogError::Kafka {
                    action: "waiting for the topics".into(),
                    reason: "created topics did not appear in the cluster's metadata".into(),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Partition count of every topic of the cluster.
async fn partition_counts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
) -> Result<HashMap<String, u32>> {
    let admin = admin.clone();
    blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map_err(kafka_err("reading the cluster's metadata"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len() as u32))
            .collect())
    })
    .await
}

/// The producers' marks as far as the follower has read.
struct Marks {
    state: Mutex<MarksState>,
    /// Bumped whenever the follower moves.
    moved: watch::Sender<u64>,
}

struct MarksState {
    seqs: HashMap<String, u64>,
    /// Next offset to read, per partition.
    next: Vec<u64>,
}

impl Marks {
    fn new(partitions: u32) -> Self {
        Marks {
            state: Mutex::new(MarksState {
                seqs: HashMap::new(),
                next: vec![0; partitions as usize],
            }),
            moved: watch::channel(0).0,
        }
    }

    fn take(&self, partition: u32, offset: u64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let mut state = self.state.lock().unwrap();
        if let Some(next) = state.next.get_mut(partition as usize) {
            *next = (*next).max(offset + 1);
        }
        let seq = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (key.and_then(|k| std::str::from_utf8(k).ok()), seq) {
            // The highest wins: a stale writer's late mark never lowers it.
            (Some(key), Some(seq)) => {
                let held = state.seqs.entry(key.to_string()).or_insert(seq);
                *held = (*held).max(seq);
            }
            _ => tracing::warn!(partition, offset, "unreadable producer mark; skipped"),
        }
        drop(state);
        self.moved.send_modify(|n| *n += 1);
    }
}

async fn follow_marks(consumer: StreamConsumer, marks: Arc<Marks>) {
    loop {
        match consumer.recv().await {
            Ok(m) => marks.take(
                m.partition() as u32,
                m.offset() as u64,
                m.key(),
                m.payload(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reading the producers topic failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[async_trait::async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<u64>> {
        let name = self.config.topic(topic);
        let partitions = self.layout.partitions(topic);
        let mut pending = Vec::with_capacity(records.len());
        let mut new_marks: BTreeMap<String, u64> = BTreeMap::new();
        for record in &records {
            let key = site_key(record);
            let partition = match topic {
                Topic::Control => 0,
                _ => partition_of(key.as_bytes(), partitions),
            };
            let ipc = ipc::encode(&record.batch)?;
            let chunks: Vec<&[u8]> = ipc.chunks(self.config.max_record_bytes).collect();
            let number = self.next_record.fetch_add(1, Ordering::Relaxed).to_string();
            let last_seq = record.producer.as_ref().map(|m| m.last_seq.to_string());
            if let Some(mark) = &record.producer {
                let held = new_marks.entry(mark.producer.clone()).or_default();
                *held = (*held).max(mark.last_seq);
            }
            let mut deliveries = Vec::with_capacity(chunks.len());
            for (index, chunk) in chunks.iter().enumerate() {
                let position = format!("{index}/{}", chunks.len());
                let mut headers = OwnedHeaders::new_with_capacity(6)
                    .insert(header(H_FORMAT, FORMAT))
                    .insert(header(H_WRITER, &self.writer))
                    .insert(header(H_RECORD, &number))
                    .insert(header(H_CHUNK, &position));
                if let (Some(mark), Some(seq)) = (&record.producer, &last_seq) {
                    headers = headers
                        .insert(header(H_PRODUCER, &mark.producer))
                        .insert(header(H_LAST_SEQ, seq));
                }
                let message = FutureRecord::to(name)
                    .partition(partition as i32)
                    .key(key.as_str())
                    .payload(*chunk)
                    .headers(headers);
                deliveries.push(self.send(message).await?);
            }
            pending.push(deliveries);
        }
        let mut offsets = Vec::with_capacity(pending.len());
        for deliveries in pending {
            let mut last = None;
            for delivery in deliveries {
                last = Some(Self::confirmed(delivery).await?);
            }
            let (partition, offset) = last.expect("a record has at least one chunk");
            let mut ends = self.ends.lock().unwrap();
            let end = ends.entry((topic, partition)).or_default();
            *end = (*end).max(offset + 1);
            offsets.push(offset);
        }
        if !new_marks.is_empty() {
            self.write_marks(topic, new_marks).await?;
        }
        Ok(offsets)
    }

    async fn producer_seq(&self, topic: Topic, producer: &str) -> Result<Option<u64>> {
        let key = mark_key(topic, producer);
        let partition = partition_of(key.as_bytes(), self.layout.producers);
        let producer_client = self.producer.clone();
        let name = self.config.producers_topic.clone();
        let timeout = self.config.timeout;
        let (_, high) = blocking(move || {
            producer_client
                .client()
                .fetch_watermarks(&name, partition as i32, timeout)
                .map_err(kafka_err("reading the producers topic's end"))
        })
        .await?;
        let high = high.max(0) as u64;
        let mut moved = self.marks.moved.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let state = self.marks.state.lock().unwrap();
                if state.next[partition as usize] >= high {
                    return Ok(state.seqs.get(&key).copied());
                }
            }
            match tokio::time::timeout_at(deadline, moved.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_) => {
                    return Err(LogError::Kafka {
                        action: "reading the producers topic".into(),
                        reason: format!(
                            "partition {partition} not read up to offset {high} within {timeout:?}"
                        ),
                    })
                }
            }
        }
    }

    fn end_offset(&self, topic: Topic) -> u64 {
        let ends = self.ends.lock().unwrap();
        ends.iter()
            .filter(|((t, _), _)| *t == topic)
            .map(|(_, end)| *end)
            .sum()
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn Consumer>> {
        self.consumer_from(topic, group, &Checkpoint::default())
            .await
    }

    /// One-partition topics only (the control topic): `offset` is an offset
    /// of partition 0. The consumer reads that partition whole, outside the
    /// group's assignment (every instance reads every record), and commits to
    /// `group`.
    async fn consumer_at(
        &self,
        topic: Topic,
        group: &str,
        offset: u64,
    ) -> Result<Box<dyn Consumer>> {
        if self.layout.partitions(topic) != 1 {
            return Err(LogError::Unsupported(
                "a single offset on a topic with several partitions (use consumer_from)",
            ));
        }
        let checkpoint = Checkpoint {
            offsets: BTreeMap::from([(0, offset)]),
            producers: BTreeMap::new(),
        };
        let consumer = KafkaConsumer::open(self, topic, group, &checkpoint, false)?;
        Ok(Box::new(consumer))
    }

    async fn consumer_from(
        &self,
        topic: Topic,
        group: &str,
        checkpoint: &Checkpoint,
    ) -> Result<Box<dyn Consumer>> {
        let consumer = KafkaConsumer::open(self, topic, group, checkpoint, true)?;
        self.members.lock().unwrap().push((
            format!("{} (group {group})", consumer.name),
            Arc::downgrade(&consumer.assigned),
        ));
        Ok(Box::new(consumer))
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// Positions the group's partitions from the checkpoint when they are
/// assigned.
struct GroupContext {
    topic: String,
    start: BTreeMap<u32, u64>,
    assigned: Arc<Assignment>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = self.assigned.lock().unwrap();
                for mut elem in tpl.elements_for_topic(&self.topic) {
                    let partition = elem.partition() as u32;
                    if let Some(&offset) = self.start.get(&partition) {
                        if let Err(e) = elem.set_offset(Offset::Offset(offset as i64)) {
                            tracing::error!(partition, error = %e, "cannot position an assigned partition");
                        }
                    }
                    assigned.insert(partition);
                }
                tracing::info!(topic = %self.topic, partitions = ?assigned, "partitions assigned");
                if let Err(e) = base_consumer.assign(tpl) {
                    tracing::error!(error = %e, "cannot take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.assigned.lock().unwrap().clear();
                tracing::info!(topic = %self.topic, "partitions revoked");
                if let Err(e) = base_consumer.unassign() {
                    tracing::error!(error = %e, "cannot give up the revoked partitions");
                }
            }
            other => tracing::error!(error = ?other, "consumer group rebalance failed"),
        }
    }
}

/// A record whose chunks are still arriving.
struct Partial {
    first_offset: u64,
    chunks: Vec<Option<Vec<u8>>>,
    missing: usize,
}

/// Headers of one message.
struct Chunk<'a> {
    writer: &'a str,
    record: u64,
    index: usize,
    count: usize,
    mark: Option<ProducerMark>,
}

fn parse_headers<'m>(m: &'m BorrowedMessage<'_>) -> std::result::Result<Chunk<'m>, String> {
    let headers = m.headers().ok_or("no headers")?;
    let mut get = BTreeMap::new();
    for h in headers.iter() {
        if let Some(v) = h.value {
            get.insert(
                h.key,
                std::str::from_utf8(v).map_err(|_| "header not UTF-8")?,
            );
        }
    }
    match get.get(H_FORMAT) {
        Some(&FORMAT) => {}
        Some(other) => return Err(format!("record format {other} is unknown here")),
        None => return Err("no otwatch-format header: not an otwatch record".into()),
    }
    let number = |key: &str| -> std::result::Result<u64, String> {
        get.get(key)
            .ok_or(format!("no {key} header"))?
            .parse()
            .map_err(|_| format!("bad {key} header"))
    };
    let (index, count) = get
        .get(H_CHUNK)
        .and_then(|c| c.split_once('/'))
        .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
        .filter(|&(i, n): &(usize, usize)| i < n)
        .ok_or("bad otwatch-chunk header")?;
    let mark = match get.get(H_PRODUCER) {
        Some(p) => Some(ProducerMark {
            producer: p.to_string(),
            last_seq: number(H_LAST_SEQ)?,
        }),
        None => None,
    };
    Ok(Chunk {
        writer: get.get(H_WRITER).ok_or("no otwatch-writer header")?,
        record: number(H_RECORD)?,
        index,
        count,
        mark,
    })
}

/// A consumer of one topic. See the module docs for reassembly and the
/// dropping of records held twice.
pub struct KafkaConsumer {
    topic: Topic,
    name: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    assigned: Arc<Assignment>,
    /// Whether it is a group member (else it reads partition 0 whole).
    grouped: bool,
    /// Next offset to fetch, per partition.
    fetched: BTreeMap<u32, u64>,
    pending: BTreeMap<u32, BTreeMap<(String, u64), Partial>>,
    marks: BTreeMap<u32, BTreeMap<String, u64>>,
    ends: Arc<Mutex<HashMap<(Topic, u32), u64>>>,
    timeout: Duration,
    duplicates: u64,
}

impl KafkaConsumer {
    fn open(
        log: &KafkaLog,
        topic: Topic,
        group: &str,
        checkpoint: &Checkpoint,
        grouped: bool,
    ) -> Result<Self> {
        let name = log.config.topic(topic).to_string();
        let assigned = Arc::new(Mutex::new(BTreeSet::new()));
        let context = GroupContext {
            topic: name.clone(),
            start: checkpoint.offsets.clone(),
            assigned: assigned.clone(),
        };
        let consumer: StreamConsumer<GroupContext> = log
            .config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set(
                "session.timeout.ms",
                log.config.session_timeout.as_millis().to_string(),
            )
            // Kafka's ratio: three heartbeats per session timeout.
            .set(
                "heartbeat.interval.ms",
                (log.config.session_timeout.as_millis() / 3).to_string(),
            )
            .create_with_context(context)
            .map_err(kafka_err(format!("creating a consumer of {name}")))?;
        if grouped {
            consumer
                .subscribe(&[&name])
                .map_err(kafka_err(format!("subscribing to {name}")))?;
        } else {
            let offset = checkpoint.offsets.get(&0).copied().unwrap_or(0);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&name, 0, Offset::Offset(offset as i64))
                .map_err(kafka_err(format!("assigning {name}")))?;
            consumer
                .assign(&tpl)
                .map_err(kafka_err(format!("assigning {name}")))?;
            assigned.lock().unwrap().insert(0);
        }
        Ok(KafkaConsumer {
            topic,
            name,
            consumer: Arc::new(consumer),
            assigned,
            grouped,
            fetched: checkpoint.offsets.clone(),
            pending: BTreeMap::new(),
            marks: checkpoint.producers.clone(),
            ends: log.ends.clone(),
            timeout: log.config.timeout,
            duplicates: 0,
        })
    }

    /// Partitions this consumer holds now.
    pub fn assigned(&self) -> BTreeSet<u32> {
        self.assigned.lock().unwrap().clone()
    }

    /// Records (or rows) dropped because this consumer already held them.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Where it is safe to resume `partition`: past what was delivered, but
    /// not past the first chunk of a record still being assembled.
    fn resume_at(&self, partition: u32) -> Option<u64> {
        let fetched = self.fetched.get(&partition).copied()?;
        let pending = self
            .pending
            .get(&partition)
            .and_then(|p| p.values().map(|r| r.first_offset).min());
        Some(pending.map_or(fetched, |first| first.min(fetched)))
    }

    /// Takes one message; a completed record is appended to `out`.
    fn take(&mut self, m: &BorrowedMessage<'_>, out: &mut Vec<Delivery>) {
        let partition = m.partition() as u32;
        let offset = m.offset() as u64;
        self.fetched.insert(partition, offset + 1);
        {
            let mut ends = self.ends.lock().unwrap();
            let end = ends.entry((self.topic, partition)).or_default();
            *end = (*end).max(offset + 1);
        }
        let span = tracing::debug_span!("kafka record", topic = %self.name, partition, offset);
        let _in = span.enter();
        let chunk = match parse_headers(m) {
            Ok(c) => c,
            Err(reason) => {
                tracing::error!(%reason, "unreadable message; skipped");
                return;
            }
        };
        let payload = m.payload().unwrap_or_default();
        let ipc = if chunk.count == 1 {
            payload.to_vec()
        } else {
            let pending = self.pending.entry(partition).or_default();
            // The writer's earlier records still incomplete were abandoned,
            // and so are records whose writer went away long ago.
            pending.retain(|(writer, record), partial| {
                let abandoned = (writer == chunk.writer && *record < chunk.record)
                    || offset.saturating_sub(partial.first_offset) > ABANDON_AFTER;
                if abandoned {
                    tracing::warn!(
                        writer,
                        record,
                        first_offset = partial.first_offset,
                        "incomplete chunked record abandoned by its writer; dropped"
                    );
                }
                !abandoned
            });
            let key = (chunk.writer.to_string(), chunk.record);
            let partial = pending.entry(key.clone()).or_insert_with(|| Partial {
                first_offset: offset,
                chunks: vec![None; chunk.count],
                missing: chunk.count,
            });
            if partial.chunks.len() != chunk.count {
                tracing::error!("chunk count differs between chunks of one record; skipped");
                return;
            }
            if partial.chunks[chunk.index].is_none() {
                partial.chunks[chunk.index] = Some(payload.to_vec());
                partial.missing -= 1;
            }
            if partial.missing > 0 {
                return;
            }
            let partial = pending.remove(&key).expect("just seen");
            partial.chunks.into_iter().flatten().flatten().collect()
        };
        let batch = match ipc::decode(&ipc) {
            Ok(b) => b,
            Err(reason) => {
                tracing::error!(%reason, "record is not an Arrow IPC stream; skipped");
                return;
            }
        };
        let batch = match &chunk.mark {
            Some(mark) => match self.drop_held(partition, mark, batch) {
                Some(b) => b,
                None => return,
            },
            None => batch,
        };
        out.push(Delivery {
            partition,
            offset,
            batch,
            producer: chunk.mark,
        });
    }

    /// `batch` without the rows this consumer already holds, or `None` when
    /// nothing new is left; moves the producer's mark.
    fn drop_held(
        &mut self,
        partition: u32,
        mark: &ProducerMark,
        batch: RecordBatch,
    ) -> Option<RecordBatch> {
        let marks = self.marks.entry(partition).or_default();
        let held = marks.get(&mark.producer).copied();
        marks.insert(mark.producer.clone(), held.unwrap_or(0).max(mark.last_seq));
        let Some(held) = held else {
            return Some(batch);
        };
        let seqs = batch
            .column_by_name("seq")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
        let fresh = match seqs {
            Some(seqs) => {
                let keep: BooleanArray = seqs
                    .iter()
                    .map(|s| Some(s.is_none_or(|s| s > held)))
                    .collect();
                let before = batch.num_rows();
                let kept = match arrow::compute::filter_record_batch(&batch, &keep) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot filter held rows; record kept whole");
                        batch
                    }
                };
                self.duplicates += (before - kept.num_rows()) as u64;
                kept
            }
            None => batch,
        };
        if fresh.num_rows() == 0 && mark.last_seq <= held {
            tracing::debug!(producer = %mark.producer, last_seq = mark.last_seq, held, "record already held; dropped");
            return None;
        }
        Some(fresh)
    }

    /// Forgets the positions of partitions no longer assigned: another
    /// member owns them now. (Their producer marks are kept: harmless, and
    /// right again should a partition come back.)
    fn forget_revoked(&mut self) {
        if !self.grouped {
            return;
        }
        let assigned = self.assigned.lock().unwrap().clone();
        // Between a revocation and the next assignment nothing is assigned:
        // keep the positions until the group has settled.
        if assigned.is_empty() {
            return;
        }
        self.pending.retain(|p, _| assigned.contains(p));
        self.fetched.retain(|p, _| assigned.contains(p));
    }
}

#[async_trait::async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let consumer = self.consumer.clone();
        while out.len() < max {
            // Once something is in hand, take only what is there already.
            let until = if out.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now()
            };
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => self.take(&m, &mut out),
                Ok(Err(e)) => {
                    if out.is_empty() {
                        return Err(kafka_err(format!("reading {}", self.name))(e));
                    }
                    tracing::warn!(topic = %self.name, error = %e, "reading failed; returning what was read");
                    break;
                }
            }
        }
        self.forget_revoked();
        Ok(out)
    }

    async fn commit(&mut self, next_offset: u64) -> Result<()> {
        if next_offset != self.position() {
            return Err(LogError::Unsupported(
                "committing an offset other than the position on a partitioned topic (use commit_checkpoint)",
            ));
        }
        let checkpoint = self.checkpoint();
        self.commit_checkpoint(&checkpoint).await
    }

    /// Not available on a partitioned topic: reported, the position is kept.
    fn seek(&mut self, offset: u64) {
        tracing::error!(
            topic = %self.name,
            offset,
            "seek to a single offset is not supported by the Kafka event log; position kept"
        );
    }

    fn position(&self) -> u64 {
        self.fetched.keys().filter_map(|&p| self.resume_at(p)).sum()
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            offsets: self
                .fetched
                .keys()
                .filter_map(|&p| Some((p, self.resume_at(p)?)))
                .collect(),
            producers: self.marks.clone(),
        }
    }

    async fn commit_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let assigned = self.assigned();
        let mut tpl = TopicPartitionList::new();
        for (&partition, &offset) in &checkpoint.offsets {
            // A partition that moved to another member is its to commit.
            if assigned.contains(&partition) {
                tpl.add_partition_offset(
                    &self.name,
                    partition as i32,
                    Offset::Offset(offset as i64),
                )
                .map_err(kafka_err("committing"))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let name = self.name.clone();
        let timeout = self.timeout;
        let committed = blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(kafka_err(format!("committing offsets of {name}")))
        });
        tokio::time::timeout(timeout, committed)
            .await
            .map_err(|_| LogError::Kafka {
                action: format!("committing offsets of {}", self.name),
                reason: format!("no answer within {timeout:?}"),
            })?
    }
}
