//! The sender: streams the queue to the collector and trims it on acks.
//!
//! One gRPC stream per connection. The collector's first message says what it
//! already holds; after any reconnect the sender resends what its queue holds
//! beyond its own ack mark (the collector drops what it already has), so every
//! event is answered by the ack of a batch that carried it. At most `max_in_flight` batches are unacked at a time: a slow
//! collector slows the sender, and the queue absorbs the difference.
//! Failures reconnect with exponential backoff and full jitter, so a fleet of
//! agents does not stampede a collector that comes back.
//!
//! # Sequence offset
//!
//! On the wire an event's sequence number is its queue sequence number plus
//! an offset kept in `<data_dir>/seq_offset` (decimal text, replaced
//! atomically; absent means 0). It is normally 0. When the collector already
//! holds higher sequence numbers for this agent than the queue ever gave out
//! (its `data_dir` was wiped, or restored from an old copy), the offset is
//! raised so that the first unacked event goes out right after what the
//! collector holds: the collector would otherwise drop every new event as a
//! duplicate until the queue caught up. The offset is written before
//! anything is sent with it; if the file is lost, the next greeting finds
//! the same gap and computes the same offset again.
//!
//! # Refused events
//!
//! An ack may list events the collector refused (an event that aged past
//! the collector's `max_past_secs` during an outage, say) with the reason.
//! Before the queue is trimmed past them they are written, fsync'd, to the
//! dead-letter file ([`crate::dead_letter`]), counted (`refused`) and logged
//! as warnings with seq and reason. An ack trims the queue only as far as
//! the batch it answers, even when it names a higher seq (a resent batch is
//! answered with what the collector holds), so that the acks of later
//! batches still find their refused events in the queue.
//!
//! # A collector that holds less than it acked
//!
//! The opposite gap: the greeting names a lower sequence number than the
//! queue's ack mark (the collector's data was wiped, or its log lost a
//! damaged tail). The events in between were trimmed from the queue when
//! they were acked and cannot be sent again: the sender logs the range as an
//! error, counts it (`lost_at_collector`, once per gap, not at every
//! reconnect) and resumes after the ack mark, so new events flow at once.
//!
//! # What the collector learns besides events
//!
//! Each stream opens with the agent's version ([`AGENT_VERSION`], in the
//! `x-otwatch-agent-version` header), and each batch carries the queue's
//! backlog when it was built (`queue_backlog`: events not yet acknowledged,
//! the batch's own included), so that the collector's fleet status shows
//! which version runs where and how far each agent is behind.

use crate::config::{Compression, SenderConfig};
use crate::dead_letter::{DeadLetter, DeadLetterEntry, Outcome};
use crate::handle::QueueHandle;
use otwatch_proto::v1::ingest_client::IngestClient;
use otwatch_proto::EventBatch;
use prost::Message;
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;
use tonic::transport::Endpoint;

use otwatch_proto::identity::{AGENT_HEADER, AGENT_VERSION_HEADER, SITE_HEADER};

/// This agent's version, sent to the collector in [`AGENT_VERSION_HEADER`]
/// when a stream opens (the collector shows it on its fleet status).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Counters of the sender.
#[derive(Debug, Default)]
pub struct SenderMetrics {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub batches_sent: AtomicU64,
    pub events_sent: AtomicU64,
    pub duplicates_reported: AtomicU64,
    /// Events the collector had acked and no longer holds (it greeted with a
    /// lower sequence number than the queue's ack mark): they had already
    /// left the queue and cannot be resent. Each gap is logged as an error.
    pub lost_at_collector: AtomicU64,
    /// Events the collector refused (each logged with its seq and reason).
    pub refused: AtomicU64,
    /// Refused events that could not be kept in the dead-letter file (it
    /// was full, or could not be written); also in `refused`.
    pub refused_unstored: AtomicU64,
    /// Bytes in the dead-letter file (a gauge).
    pub dead_letter_bytes: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("collector refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("collector closed the stream")]
    Closed,
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// An error with its causes, `outer: inner: innermost`, so a log line says
/// "connection refused" or "invalid peer certificate", not only "transport error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

pub struct Sender {
    pub config: SenderConfig,
    pub site: String,
    pub agent: String,
    /// Largest encoded batch, from the agent's limits.
    pub max_message_bytes: usize,
    pub queue: QueueHandle,
    pub metrics: Arc<SenderMetrics>,
    /// The `seq_offset` file (see the module doc).
    pub seq_offset_path: std::path::PathBuf,
    /// Where refused events are set aside before the queue is trimmed.
    pub dead_letter: Arc<std::sync::Mutex<DeadLetter>>,
}

/// Refused events logged one by one per ack; the rest of an ack's
/// refusals are summed up in one line (all of them are in the dead-letter
/// file and the counters).
const REFUSALS_LOGGED_PER_ACK: usize = 10;

/// The persisted offset between queue and wire sequence numbers.
fn load_offset(path: &std::path::Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), content = %text.trim(), "seq_offset is not a number; using 0 (the next greeting corrects it)");
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read seq_offset; using 0 (the next greeting corrects it)");
            0
        }
    }
}

impl Sender {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.config.reconnect_min;
        let mut offset = load_offset(&self.seq_offset_path);
        let mut reported_gap = None;
        let addresses: Vec<String> = self
            .config
            .addresses()
            .into_iter()
            .map(String::from)
            .collect();
        // Which collector to try next, and how many failed in a row: the
        // next collector is tried at once, the backoff starts once every
        // one of them failed.
        let (mut current, mut failed_in_row) = (0usize, 0usize);
        while !*shutdown.borrow() {
            let started = Instant::now();
            let url = &addresses[current];
            let outcome = self
                .session(url, &mut shutdown, &mut offset, &mut reported_gap)
                .await;
            self.metrics.connected.store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    // A connection that worked for a while resets the backoff.
                    if started.elapsed() > self.config.reconnect_max {
                        backoff = self.config.reconnect_min;
                        failed_in_row = 0;
                    }
                    failed_in_row += 1;
                    current = (current + 1) % addresses.len();
                    if failed_in_row < addresses.len() {
                        tracing::warn!(%url, error = %error_chain(&e), next = %addresses[current], "connection to collector lost; trying the next one");
                        continue;
                    }
                    failed_in_row = 0;
                    let wait = rand::rng().random_range(backoff / 2..=backoff);
                    tracing::warn!(%url, error = %error_chain(&e), retry_in = ?wait, unacked = self.queue.last_seq() - self.queue.acked(), "connection to collector lost");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.config.reconnect_max);
                }
            }
        }
    }

    /// One connection: greeting, then batches and acks until it breaks or
    /// `shutdown` turns true. `reported_gap` is the last collector loss
    /// already counted (see [`Sender::account_collector_loss`]).
    async fn session(
        &self,
        url: &str,
        shutdown: &mut watch::Receiver<bool>,
        offset: &mut u64,
        reported_gap: &mut Option<(u64, u64)>,
    ) -> Result<(), SessionError> {
        let cfg = &self.config;
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| SessionError::Config(format!("collector url {url:?}: {e}")))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        if let Some(tls) = &cfg.tls {
            let tls = crate::tls::client_config(tls, url).map_err(SessionError::Config)?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| SessionError::Config(format!("collector.tls: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| SessionError::Connect {
                url: url.to_string(),
                source,
            })?;
        // An ack may list a refusal (seq and a reason of under 200 bytes)
        // for every event of its batch.
        let max_ack_bytes = (1 << 20) + cfg.batch_max_events * 512;
        let mut client = IngestClient::new(channel).max_decoding_message_size(max_ack_bytes);
        client = match cfg.compression {
            Compression::Zstd => client.send_compressed(CompressionEncoding::Zstd),
            Compression::Gzip => client.send_compressed(CompressionEncoding::Gzip),
            Compression::None => client,
        };
        let (tx, rx) = mpsc::channel::<EventBatch>(cfg.max_in_flight);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for (key, value) in [
            (SITE_HEADER, self.site.as_str()),
            (AGENT_HEADER, self.agent.as_str()),
            (AGENT_VERSION_HEADER, AGENT_VERSION),
        ] {
            request.metadata_mut().insert(
                key,
                value
                    .parse()
                    .map_err(|_| SessionError::Config(format!("{key} {value:?} is not ASCII")))?,
            );
        }
        let mut acks = client.stream(request).await?.into_inner();
        let greeting = acks.message().await?.ok_or(SessionError::Closed)?;
        let last = self.queue.last_seq();
        if greeting.durable_seq > last + *offset {
            let acked = self.queue.acked();
            let raised = greeting.durable_seq - acked;
            tracing::warn!(
                collector_holds = greeting.durable_seq,
                queue_last_seq = last,
                old_offset = *offset,
                new_offset = raised,
                "the collector already holds higher sequence numbers for this agent than its queue gave out \
                 (data_dir was reset or restored from an old copy): unsent events are renumbered to follow \
                 what the collector holds, so none is dropped; events sent before an old copy was taken \
                 may be stored twice"
            );
            otwatch_fs::write_atomic(&self.seq_offset_path, format!("{raised}\n").as_bytes())
                .map_err(crate::queue::QueueError::from)?;
            *offset = raised;
        }
        let offset = *offset;
        // The collector's marks in queue numbering. Below the offset means the
        // collector lost data (its log was wiped).
        let local = |wire: u64| wire.saturating_sub(offset);
        let held = local(greeting.durable_seq);
        self.account_collector_loss(greeting.durable_seq, held, offset, reported_gap);
        // The greeting trims nothing: what the queue holds beyond its ack
        // mark is sent again even if the collector holds it, so that each
        // event is answered by a batch ack, which lists refused events. An
        // ack lost with a broken connection would otherwise take its
        // refusals with it. The collector drops the resent events as
        // duplicates (and lists the refused ones again).
        let mut next = self.queue.acked() + 1;
        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
        self.metrics.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            %url,
            durable_seq = greeting.durable_seq,
            seq_offset = offset,
            resend = self.queue.last_seq().saturating_sub(next - 1),
            "connected to collector"
        );
        let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
        let mut appended = self.queue.subscribe_appends();
        loop {
            tokio::select! {
                ack = acks.message() => {
                    let ack = ack?.ok_or(SessionError::Closed)?;
                    // Each ack answers for the oldest batch in flight. A
                    // resent batch's ack may name a higher seq (what the
                    // collector holds), but the queue is trimmed only as
                    // far as this batch: the later batches' acks still
                    // have to list their refused events.
                    let mut acked = local(ack.durable_seq);
                    if let Some(&(last, n)) = in_flight.front() {
                        acked = acked.min(last);
                        if last <= acked {
                            in_flight.pop_front();
                            self.metrics.events_sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    if !ack.refused.is_empty() {
                        self.set_aside(&ack.refused, offset).await?;
                    }
                    self.queue.ack(acked).await?;
                    self.metrics.duplicates_reported.fetch_add(ack.duplicates as u64, Ordering::Relaxed);
                }
                batch = self.next_batch(next, offset, &mut appended), if in_flight.len() < cfg.max_in_flight => {
                    let (batch, last) = batch?;
                    let n = batch.events.len();
                    tx.send(batch).await.map_err(|_| SessionError::Closed)?;
                    self.metrics.batches_sent.fetch_add(1, Ordering::Relaxed);
                    in_flight.push_back((last, n));
                    next = last + 1;
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Writes the events the collector refused to the dead-letter file
    /// (fsync'd) before the queue is trimmed past them, counts and logs
    /// them. Refusals that cannot be kept are counted and logged too; they
    /// never stop delivery.
    async fn set_aside(
        &self,
        refused: &[otwatch_proto::v1::Refused],
        offset: u64,
    ) -> Result<(), SessionError> {
        let m = &self.metrics;
        m.refused.fetch_add(refused.len() as u64, Ordering::Relaxed);
        // Refused events come from batches in flight, so they are still in
        // the queue; read their span once.
        let local: Vec<u64> = refused
            .iter()
            .map(|r| r.seq.saturating_sub(offset))
            .collect();
        let (lo, hi) = (
            local.iter().copied().min().unwrap_or(0),
            local.iter().copied().max().unwrap_or(0),
        );
        let queued = self
            .queue
            .read(lo.max(1), (hi.saturating_sub(lo) + 1) as usize)
            .await?;
        let mut entries = Vec::with_capacity(refused.len());
        let mut missing = Vec::new();
        for (r, &seq) in refused.iter().zip(&local) {
            match queued.binary_search_by_key(&seq, |e| e.seq) {
                Ok(i) if seq > 0 => {
                    entries.push((r, DeadLetterEntry::new(r.seq, &r.reason, &queued[i])));
                }
                _ => missing.push(r),
            }
        }
        let dead_letter = self.dead_letter.clone();
        let lines: Vec<DeadLetterEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
        let (outcomes, bytes, path) = tokio::task::spawn_blocking(move || {
            let mut dl = dead_letter.lock().unwrap();
            let outcomes = dl.append(&lines);
            (outcomes, dl.bytes(), dl.path().display().to_string())
        })
        .await
        .expect("dead-letter task panicked");
        m.dead_letter_bytes.store(bytes, Ordering::Relaxed);

        let mut logged = 0;
        let mut unstored = missing.len() as u64;
        let mut full = 0u64;
        for ((r, _), outcome) in entries.iter().zip(&outcomes) {
            let stored = match outcome {
                Outcome::Stored => "dead-letter file",
                Outcome::Full => {
                    full += 1;
                    unstored += 1;
                    "not kept: the dead-letter file is full"
                }
                Outcome::Failed(error) => {
                    unstored += 1;
                    tracing::error!(seq = r.seq, %error, path, "cannot write a refused event to the dead-letter file; it is counted and not kept");
                    "not kept: the dead-letter file cannot be written"
                }
            };
            if logged < REFUSALS_LOGGED_PER_ACK {
                tracing::warn!(seq = r.seq, reason = %r.reason, kept_in = stored, "the collector refused an event");
                logged += 1;
            }
        }
        for r in &missing {
            tracing::error!(
                seq = r.seq,
                reason = %r.reason,
                "the collector refused an event that is no longer in the queue (dropped meanwhile); it is counted and not kept"
            );
        }
        if refused.len() > logged + missing.len() {
            tracing::warn!(
                more = refused.len() - logged - missing.len(),
                first_seq = refused[0].seq,
                last_seq = refused[refused.len() - 1].seq,
                "the collector refused more events of this batch; each is in the dead-letter file (unless it is full) and counted"
            );
        }
        if full > 0 {
            tracing::error!(
                path,
                not_kept = full,
                max_bytes = self.dead_letter_max_bytes(),
                "the dead-letter file is full: refused events are counted and logged but not kept; \
                 move the file away and restart the agent to keep them again"
            );
        }
        m.refused_unstored.fetch_add(unstored, Ordering::Relaxed);
        Ok(())
    }

    fn dead_letter_max_bytes(&self) -> u64 {
        self.dead_letter.lock().map(|d| d.max_bytes()).unwrap_or(0)
    }

    /// Counts and logs, once per gap, the events the collector acked and no
    /// longer holds: its greeting (`wire_held`, `held` in queue numbering)
    /// is below the queue's ack mark. Those events were trimmed from the
    /// queue when they were acked; nothing can send them again.
    fn account_collector_loss(
        &self,
        wire_held: u64,
        held: u64,
        offset: u64,
        reported_gap: &mut Option<(u64, u64)>,
    ) {
        let acked = self.queue.acked();
        if held >= acked || *reported_gap == Some((wire_held, acked)) {
            // No gap, or this one was counted at an earlier reconnect (the
            // collector's mark moves only once something new is sent).
            return;
        }
        *reported_gap = Some((wire_held, acked));
        let lost = acked - held;
        self.metrics
            .lost_at_collector
            .fetch_add(lost, Ordering::Relaxed);
        tracing::error!(
            collector_holds = wire_held,
            first_lost_seq = wire_held + 1,
            last_lost_seq = acked + offset,
            lost,
            "the collector no longer holds events it had acknowledged (its data was wiped or \
             its log lost a damaged tail); they left this agent's queue when they were \
             acknowledged and cannot be sent again: events lost"
        );
    }

    /// Waits for events at `next` or later and returns the next batch: full
    /// (`batch_max_events`) or as much as arrived within `batch_max_delay`,
    /// numbered for the wire (queue seq + `offset`), with the queue seq of
    /// its last event. Never empty.
    async fn next_batch(
        &self,
        next: u64,
        offset: u64,
        appended: &mut watch::Receiver<u64>,
    ) -> Result<(EventBatch, u64), SessionError> {
        let cfg = &self.config;
        // Events below the ack mark have left the queue (acked, or dropped
        // by `drop_oldest` meanwhile): the batch starts after it.
        let from = next.max(self.queue.acked() + 1);
        appended
            .wait_for(|&last| last >= from)
            .await
            .map_err(|_| SessionError::Closed)?;
        let full = from + cfg.batch_max_events as u64 - 1;
        if *appended.borrow() < full {
            let _ =
                tokio::time::timeout(cfg.batch_max_delay, appended.wait_for(|&l| l >= full)).await;
        }
        let mut events = self.queue.read(from, cfg.batch_max_events).await?;
        if events.is_empty() {
            // Durable events from `from` on were announced but none reads
            // back: end the session (it reconnects after a backoff) rather
            // than send an empty batch or spin.
            return Err(SessionError::Queue(crate::queue::QueueError::Corrupt {
                path: "queue".into(),
                seq: from,
                reason: format!(
                    "no event reads back from seq {from} though the queue's last seq is {}",
                    self.queue.last_seq()
                ),
            }));
        }
        // Keep the encoded batch well under the collector's message limit.
        let budget = self.max_message_bytes / 2;
        let mut size = 0;
        let keep = events
            .iter()
            .position(|e| {
                size += e.encoded_len() + 4;
                size > budget
            })
            .unwrap_or(events.len())
            .max(1);
        events.truncate(keep);
        // Not empty: at least one event is kept.
        let last = events[events.len() - 1].seq;
        for e in &mut events {
            // The batch carries the identity once.
            e.site.clear();
            e.agent.clear();
            e.seq += offset;
        }
        let batch = EventBatch {
            site: self.site.clone(),
            agent: self.agent.clone(),
            events,
            queue_backlog: self.backlog(),
        };
        Ok((batch, last))
    }

    /// Events in the queue not yet acknowledged by the collector.
    fn backlog(&self) -> u64 {
        self.queue.last_seq().saturating_sub(self.queue.acked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::DiskQueue;
    use otwatch_proto::{ControllerEvent, EventKind};

    fn events(n: usize) -> Vec<ControllerEvent> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        (0..n)
            .map(|i| ControllerEvent {
                ts_ns: now + i as i64,
                asset: "line1/press-01".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(1000.0),
                ..Default::default()
            })
            .collect()
    }

    /// A sender of `plant-a`/`gw-1` over a queue in `dir` holding `n`
    /// events, sending to `url`.
    async fn sender(dir: &std::path::Path, n: usize, url: String) -> Sender {
        let queue =
            QueueHandle::new(DiskQueue::open(dir.join("queue"), Default::default()).unwrap());
        queue.append(events(n)).await.unwrap();
        queue
            .subscribe_appends()
            .wait_for(|&last| last >= n as u64)
            .await
            .unwrap();
        Sender {
            config: SenderConfig {
                url,
                batch_max_events: 2,
                batch_max_delay: Duration::from_millis(1),
                reconnect_min: Duration::from_millis(10),
                reconnect_max: Duration::from_millis(100),
                ..Default::default()
            },
            site: "plant-a".into(),
            agent: "gw-1".into(),
            max_message_bytes: 1 << 20,
            queue,
            metrics: Arc::default(),
            seq_offset_path: dir.join("seq_offset"),
            dead_letter: Arc::new(std::sync::Mutex::new(
                DeadLetter::open(dir, 1 << 20).unwrap(),
            )),
        }
    }

    #[tokio::test]
    async fn each_batch_carries_the_backlog_of_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let sender = sender(dir.path(), 5, "http://127.0.0.1:9".into()).await;
        let mut appended = sender.queue.subscribe_appends();
        let (batch, last) = sender.next_batch(1, 0, &mut appended).await.unwrap();
        assert_eq!((batch.events.len(), last), (2, 2));
        // Everything not yet acknowledged, this batch's events included.
        assert_eq!(batch.queue_backlog, 5);
        sender.queue.ack(2).await.unwrap();
        let (batch, last) = sender.next_batch(3, 0, &mut appended).await.unwrap();
        assert_eq!((batch.events.len(), last), (2, 4));
        assert_eq!(batch.queue_backlog, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_collector_learns_the_version_and_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            otwatch_eventlog::LocalLog::open(dir.path().join("log"), Default::default()).unwrap(),
        );
        let collector = otwatch_collector::Collector::new(log, Default::default()).unwrap();
        let metrics = collector.metrics();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(collector.serve(listener, None, std::future::pending()));

        // Two events: one batch, sent with both unacknowledged.
        let sender = sender(&dir.path().join("agent"), 2, url).await;
        let queue = sender.queue.clone();
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(sender.run(stopped));
        tokio::time::timeout(Duration::from_secs(30), queue.wait_acked(2))
            .await
            .expect("the events were not acknowledged");
        let status = metrics.agents.get("plant-a", "gw-1").unwrap();
        assert!(status.connected);
        assert_eq!(status.version.as_deref(), Some(AGENT_VERSION));
        assert_eq!(status.queue_backlog, Some(2));
        assert!(status.last_batch_ns.is_some());

        stop.send_replace(true);
        running.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.agents.get("plant-a", "gw-1").unwrap().connected {
            assert!(
                Instant::now() < deadline,
                "still connected after the agent stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
