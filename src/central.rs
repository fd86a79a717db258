//! The central service in one process: the gRPC collector, the embedded event
//! log, the history writers (events and alerts to Parquet), the detector and
//! the alert sinks. `otwatch serve` runs it for real agents, `otwatch demo`
//! adds simulated sites.
//!
//! Everything downstream of the collector reads the event log and nothing
//! else, so each consumer resumes on its own after a restart: the history
//! writers from the offset committed with their Parquet files, the detector
//! from the offset stored with its checkpoint.

use crate::config::ServerConfig;
use crate::sinks::AlertSinks;
use anyhow::Context;
use otwatch_collector::{Collector, CollectorMetrics};
use otwatch_detector::Detector;
use otwatch_eventlog::{EventLog, LocalLog, Record, Topic};
use otwatch_history::{Table, TableWriter};
use otwatch_proto::Alert;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How far each consumer of the log has got.
#[derive(Debug, Default)]
pub struct Progress {
    /// Next events-log offset the events history will write.
    pub events_history: AtomicU64,
    /// Next alerts-log offset the alerts history will write.
    pub alerts_history: AtomicU64,
    /// Next events-log offset the detector will read.
    pub detector: AtomicU64,
    /// Alerts raised since start.
    pub alerts_raised: AtomicU64,
    /// Rows written to Parquet since start (events table).
    pub events_written: AtomicU64,
}

/// The running central service.
pub struct Central {
    pub log: Arc<LocalLog>,
    pub collector: Arc<CollectorMetrics>,
    pub addr: SocketAddr,
    pub progress: Arc<Progress>,
    pub data_dir: PathBuf,
    alerts: broadcast::Sender<Alert>,
    stop_server: watch::Sender<bool>,
    stop_pipeline: watch::Sender<bool>,
    server: JoinHandle<anyhow::Result<()>>,
    pipeline: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Where the Parquet history of a data directory lives.
pub fn history_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("history")
}

impl Central {
    /// Opens the data directory and starts every component.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Central> {
        config.check_transport()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let log = Arc::new(
            LocalLog::open(data_dir.join("log"), config.log.clone())
                .context("cannot open the event log")?,
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls = match &config.collector.tls {
            Some(tls) => Some(
                tls.acceptor()
                    .context("cannot set up TLS on the ingest port")?,
            ),
            None => None,
        };
        let secure = tls.is_some();
        let collector = Collector::new(log.clone(), config.collector.clone())?;
        let collector_metrics = collector.metrics();
        let (stop_server, server_stop) = watch::channel(false);
        let server = tokio::spawn(async move {
            let mut stop = server_stop;
            collector
                .serve(listener, tls, async move {
                    let _ = stop.wait_for(|&s| s).await;
                })
                .await
                .context("ingest server failed")
        });
        if secure {
            tracing::info!(%addr, data_dir = %data_dir.display(), "collector listening (TLS, client certificates required)");
        } else {
            tracing::warn!(%addr, data_dir = %data_dir.display(), "collector listening WITHOUT TLS on loopback (--insecure-loopback): agents are trusted by the names they give");
        }

        let progress = Arc::new(Progress::default());
        let (alerts, _) = broadcast::channel(1024);
        let (stop_pipeline, pipeline_stop) = watch::channel(false);
        let sinks = AlertSinks::open(&config.alerts, &data_dir)?;
        let history = history_dir(&data_dir);
        let mut pipeline = Vec::new();
        for (table, topic) in [
            (Table::Events, Topic::Events),
            (Table::Alerts, Topic::Alerts),
        ] {
            pipeline.push(tokio::spawn(history_loop(
                log.clone(),
                history.clone(),
                table,
                topic,
                config.history.clone(),
                progress.clone(),
                pipeline_stop.clone(),
            )));
        }
        pipeline.push(tokio::spawn(detector_loop(
            log.clone(),
            data_dir.join("detector"),
            config.detector.clone(),
            progress.clone(),
            sinks,
            alerts.clone(),
            pipeline_stop,
        )));
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            let (collector, progress, log) =
                (collector_metrics.clone(), progress.clone(), log.clone());
            tokio::spawn(otwatch_metrics::serve(
                listener,
                move || crate::metrics::render(&collector, &progress, log.as_ref()),
                stop_server.subscribe(),
            ));
        }
        Ok(Central {
            log,
            collector: collector_metrics,
            addr,
            progress,
            data_dir,
            alerts,
            stop_server,
            stop_pipeline,
            server,
            pipeline,
        })
    }

    /// Alerts as they are raised.
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Alert> {
        self.alerts.subscribe()
    }

    /// True once the detector and both history writers have consumed
    /// everything in the log.
    pub fn caught_up(&self) -> bool {
        let p = &self.progress;
        let events = self.log.end_offset(Topic::Events);
        p.detector.load(Ordering::Acquire) >= events
            && p.events_history.load(Ordering::Acquire) >= events
            && p.alerts_history.load(Ordering::Acquire) >= self.log.end_offset(Topic::Alerts)
    }

    /// Waits until [`caught_up`](Self::caught_up) holds, up to `timeout`.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.caught_up() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.caught_up()
    }

    /// Stops ingest, lets the detector and history writers finish what is in
    /// the log (up to `drain`), then stops them.
    pub async fn stop(mut self, drain: Duration) -> anyhow::Result<()> {
        self.stop_server.send_replace(true);
        let server = (&mut self.server).await;
        if !self.wait_caught_up(drain).await {
            tracing::warn!("stopping before the history and detector caught up; they resume from the log at the next start");
        }
        self.stop_pipeline.send_replace(true);
        let mut first_error = None;
        for task in self.pipeline {
            if let Err(e) = task.await.context("task panicked").and_then(|r| r) {
                tracing::error!(error = %format!("{e:#}"), "component failed");
                first_error.get_or_insert(e);
            }
        }
        server.context("server task panicked")??;
        first_error.map_or(Ok(()), Err)
    }
}

/// Consumes one topic into its Parquet table, flushing every
/// `flush_interval` or `flush_rows`, whichever comes first. The offset is
/// committed with the files (see otwatch-history), so a restart resumes
/// exactly where the last flush ended.
async fn history_loop(
    log: Arc<LocalLog>,
    root: PathBuf,
    table: Table,
    topic: Topic,
    config: crate::config::HistoryConfig,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let slot = match table {
        Table::Events => &progress.events_history,
        Table::Alerts => &progress.alerts_history,
    };
    let mut writer = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || TableWriter::open(&root, table))
            .await?
            .with_context(|| format!("cannot open the {} history", table.name()))?
    };
    let mut consumer = log.consumer(topic, "history").await?;
    consumer.seek(writer.next_offset());
    slot.store(writer.next_offset(), Ordering::Release);
    let mut pending = Vec::new();
    let mut rows = 0usize;
    let mut first_at: Option<Instant> = None;
    loop {
        let stopping = *stop.borrow();
        let wait = match first_at {
            _ if stopping => Duration::ZERO,
            None => Duration::from_millis(250),
            Some(t) => config
                .flush_interval
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(5)),
        };
        let got = consumer.poll(512, wait).await?;
        let drained = got.is_empty();
        for d in got {
            rows += d.batch.num_rows();
            pending.push(d.batch);
            first_at.get_or_insert_with(Instant::now);
        }
        let due = first_at.is_some_and(|t| t.elapsed() >= config.flush_interval)
            || rows >= config.flush_rows
            || (stopping && drained);
        if due && !pending.is_empty() {
            let next = consumer.position();
            let batches = std::mem::take(&mut pending);
            let (w, result) = tokio::task::spawn_blocking(move || {
                let r = writer.write(&batches, next);
                (writer, r)
            })
            .await?;
            writer = w;
            let stats =
                result.with_context(|| format!("writing the {} history failed", table.name()))?;
            if table == Table::Events {
                progress
                    .events_written
                    .fetch_add(stats.rows as u64, Ordering::Relaxed);
            }
            tracing::debug!(
                table = table.name(),
                rows = stats.rows,
                files = stats.files,
                next,
                "history flushed"
            );
            slot.store(next, Ordering::Release);
            rows = 0;
            first_at = None;
        } else if pending.is_empty() {
            slot.store(consumer.position(), Ordering::Release);
        }
        if stopping && drained && pending.is_empty() {
            return Ok(());
        }
    }
}

/// The detector's checkpoint file: its learned state and the next
/// events-log offset to process, written atomically together.
#[derive(serde::Deserialize)]
struct Checkpoint {
    offset: u64,
    detector: Detector,
}

#[derive(serde::Serialize)]
struct CheckpointRef<'a> {
    offset: u64,
    detector: &'a Detector,
}

/// How often the detector's state is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Feeds the events topic to the detector, batch by batch; appends alerts to
/// the alerts topic and hands them to the sinks. Alerts are at least once: a
/// crash between raising an alert and the next checkpoint raises it again
/// after the restart, with the same id.
async fn detector_loop(
    log: Arc<LocalLog>,
    dir: PathBuf,
    config: otwatch_detector::DetectorConfig,
    progress: Arc<Progress>,
    mut sinks: AlertSinks,
    live: broadcast::Sender<Alert>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("checkpoint.json");
    let (mut detector, offset) = match std::fs::read(&path) {
        Ok(bytes) => {
            let cp: Checkpoint = serde_json::from_slice(&bytes)
                .with_context(|| format!("detector checkpoint {} is unreadable", path.display()))?;
            tracing::info!(offset = cp.offset, "detector resumed from its checkpoint");
            (cp.detector, cp.offset)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Detector::new(config), 0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut consumer = log.consumer(Topic::Events, "detector").await?;
    consumer.seek(offset);
    progress.detector.store(offset, Ordering::Release);
    let mut saved_at = Instant::now();
    let mut saved_offset = offset;
    loop {
        let stopping = *stop.borrow();
        let wait = if stopping {
            Duration::ZERO
        } else {
            Duration::from_millis(250)
        };
        let got = consumer.poll(256, wait).await?;
        let drained = got.is_empty();
        let mut raised = Vec::new();
        for d in &got {
            match detector.process(&d.batch) {
                Ok(alerts) => raised.extend(alerts),
                Err(e) => {
                    tracing::error!(offset = d.offset, error = %e, "detector could not process a batch; skipped")
                }
            }
        }
        if !raised.is_empty() {
            let batch = otwatch_proto::arrow::alerts_to_batch(&raised)?;
            log.append(
                Topic::Alerts,
                vec![Record {
                    batch,
                    producer: None,
                }],
            )
            .await
            .context("cannot append alerts to the event log")?;
            progress
                .alerts_raised
                .fetch_add(raised.len() as u64, Ordering::Relaxed);
            for alert in raised {
                sinks.emit(&alert);
                let _ = live.send(alert);
            }
        }
        let position = consumer.position();
        if position != saved_offset && (saved_at.elapsed() >= CHECKPOINT_EVERY || stopping) {
            save_checkpoint(&path, position, &detector)?;
            saved_offset = position;
            saved_at = Instant::now();
        }
        progress.detector.store(position, Ordering::Release);
        if stopping && drained {
            if position != saved_offset {
                save_checkpoint(&path, position, &detector)?;
            }
            return Ok(());
        }
    }
}

fn save_checkpoint(path: &Path, offset: u64, detector: &Detector) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(&CheckpointRef { offset, detector })?;
    otwatch_fs::write_atomic(path, &bytes).context("cannot write the detector checkpoint")
}
