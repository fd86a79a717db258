//! The history writer component: consumes one topic of the event log into
//! its Parquet table (see `otwatch-history`).
//!
//! It flushes every `flush_interval` or `flush_rows`, whichever comes first.
//! The table's committed offset is the truth (it is written with the files),
//! so a restart resumes exactly where the last flush ended; the offset is
//! also committed to the log's consumer group `history-<table>` after each
//! flush, so the log knows what it may delete.
//!
//! A failing disk (full, read-only, I/O errors) is retried: the writer is
//! reopened, which runs the table's crash recovery (files of an uncommitted
//! flush are removed), and the records since the last commit are read again
//! from the log. The component shows `retrying` with the cause until a flush
//! succeeds again, then `running`; nothing is skipped and nothing is written
//! twice.
//!
//! Beside the flushes, a maintenance task keeps the table small and fast
//! (see `otwatch_history::compact` and `otwatch_history::retention`): every
//! `history.compaction.interval` it drops the partitions older than
//! `history.retention`, removes the files compactions replaced once their
//! grace period is over, and compacts the closed hours that have small
//! files, one hour at a time, oldest first. The heavy part of a compaction
//! (reading, sorting and writing) runs beside the flushes; only the swap,
//! and the retention's index update, take the writer between two flushes.
//! A failed compaction is logged and counted and that hour is tried again
//! ten intervals later; it never stops the flushes. The task is stopped and
//! awaited before the writer is reopened, so recovery never runs under a
//! compaction in progress (it removes what an unfinished one wrote).

use crate::config::HistoryConfig;
use crate::health::Backoff;
use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_eventlog::{EventLog, LogError, Topic};
use otwatch_history::{Compactor, HistoryError, Table, TableWriter};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The writer, shared by the flushes and the maintenance task's swaps.
type SharedWriter = Arc<Mutex<TableWriter>>;

/// What the maintenance of the history tables did since start, for
/// `/metrics` (summed over the tables).
#[derive(Debug, Default)]
pub struct MaintenanceCounters {
    /// Partitions compacted (swaps done).
    pub compactions: AtomicU64,
    /// Small files merged away.
    pub files_merged: AtomicU64,
    /// Files compactions wrote.
    pub files_written: AtomicU64,
    /// Bytes compactions wrote.
    pub bytes_written: AtomicU64,
    /// Compactions (or retention passes) that failed; retried later.
    pub failures: AtomicU64,
    /// Replaced files removed after their grace period.
    pub files_removed: AtomicU64,
    /// Partitions dropped by retention.
    pub partitions_dropped: AtomicU64,
    /// Closed hours waiting for compaction at the last look, per table.
    pub backlog: Mutex<HashMap<&'static str, u64>>,
}

impl MaintenanceCounters {
    /// Closed hours waiting for compaction, all tables.
    pub fn backlog(&self) -> u64 {
        self.backlog.lock().expect("not poisoned").values().sum()
    }
}

/// Records read from the log per poll, at most.
const RECORDS_PER_POLL: usize = 512;

/// The consumer group of a table's writer.
pub fn group(table: Table) -> String {
    format!("history-{}", table.name())
}

/// What the component needs.
pub struct HistoryComponent {
    pub log: Arc<dyn EventLog>,
    /// The history root (`<data_dir>/history`).
    pub root: PathBuf,
    pub table: Table,
    pub config: HistoryConfig,
    /// Rows written since start, for `/metrics`.
    pub rows_written: Arc<AtomicU64>,
    /// Records skipped because they do not fit the table, for `/metrics`.
    pub records_skipped: Arc<AtomicU64>,
    /// What compaction and retention did, for `/metrics`.
    pub maintenance: Arc<MaintenanceCounters>,
}

/// Why one round of the writer ended.
enum Interrupted {
    /// Told to stop, everything flushed.
    Stopped,
    /// A failure that may pass; reopen and try again.
    Transient(String),
}

/// Failures of the disk (full, read-only, I/O errors) may pass: the writer
/// is reopened and tries again. Anything else is a bug or damage that needs
/// an operator, and fails the component.
fn transient_history(e: &HistoryError) -> bool {
    e.io_kind().is_some() || matches!(e, HistoryError::Poisoned { .. })
}

fn transient_log(e: &LogError) -> bool {
    matches!(e, LogError::Io { .. } | LogError::Fs(_))
}

/// The topic of the log a history table is written from.
pub fn source_topic(table: Table) -> Topic {
    match table {
        Table::Events => Topic::Events,
        Table::Alerts => Topic::Alerts,
        Table::Audit => Topic::Control,
    }
}

impl HistoryComponent {
    pub async fn run(self, mut ctx: Context) -> anyhow::Result<()> {
        let topic = source_topic(self.table);
        let mut backoff = Backoff::default();
        loop {
            match self.round(topic, &mut ctx, &mut backoff).await? {
                Interrupted::Stopped => return Ok(()),
                Interrupted::Transient(error) => {
                    ctx.reporter.retrying(&error);
                    if ctx.pause(backoff.next_pause()).await {
                        // Stopping while the disk fails: what was not
                        // flushed is read again from the log next time.
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Opens the writer and consumes until told to stop or a transient
    /// failure; fatal errors (a bug, a corrupt commit file) are returned.
    async fn round(
        &self,
        topic: Topic,
        ctx: &mut Context,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Interrupted> {
        let table = self.table;
        let opened = {
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || TableWriter::open(&root, table)).await?
        };
        let writer = match opened {
            Ok(writer) => writer,
            Err(e) if transient_history(&e) => {
                return Ok(Interrupted::Transient(format!(
                    "cannot open the {table} history: {e}"
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open the {table} history")),
        };
        let writer: SharedWriter = Arc::new(Mutex::new(writer));
        let (stop_maintenance, maintenance_stop) = watch::channel(false);
        let maintenance = tokio::spawn(maintain(
            self.root.clone(),
            table,
            self.config.clone(),
            Arc::clone(&writer),
            Arc::clone(&self.maintenance),
            maintenance_stop,
        ));
        let consumed = self.consume(topic, ctx, backoff, &writer).await;
        // Recovery (when the writer is opened again) must not run under a
        // compaction in progress.
        stop_maintenance.send_replace(true);
        if let Err(e) = maintenance.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        consumed
    }

    /// Consumes the log into the table until told to stop or a transient
    /// failure.
    async fn consume(
        &self,
        topic: Topic,
        ctx: &mut Context,
        backoff: &mut Backoff,
        writer: &SharedWriter,
    ) -> anyhow::Result<Interrupted> {
        let table = self.table;
        let next_offset = lock(writer).next_offset();
        // The table's committed offset is where reading resumes; if the log
        // ends before it, the log continues numbering there.
        let mut consumer = self
            .log
            .consumer_at(topic, &group(table), next_offset)
            .await
            .context("cannot open a consumer of the event log")?;
        ctx.reporter.set_position(next_offset);
        ctx.reporter.opened();
        let mut pending = Vec::new();
        let mut rows = 0usize;
        let mut first_at: Option<Instant> = None;
        loop {
            let stopping = ctx.stopping();
            let wait = match first_at {
                _ if stopping => Duration::ZERO,
                None => Duration::from_millis(250),
                Some(t) => self
                    .config
                    .flush_interval
                    .saturating_sub(t.elapsed())
                    .max(Duration::from_millis(5)),
            };
            let got = match consumer.poll(RECORDS_PER_POLL, wait).await {
                Ok(got) => got,
                Err(e) if transient_log(&e) => {
                    return Ok(Interrupted::Transient(format!(
                        "cannot read the event log: {e}"
                    )))
                }
                Err(e) => return Err(e).context("cannot read the event log"),
            };
            let drained = got.is_empty();
            for d in got {
                // A record that does not fit the table (written by something
                // else than the collector or the detector) is set aside with
                // an error; stopping on it would stop the history for good.
                if let Err(e) = lock(writer).accepts(&d.batch) {
                    self.records_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table = table.name(), offset = d.offset, error = %e, "a record of the event log does not fit the table: skipped");
                    continue;
                }
                rows += d.batch.num_rows();
                pending.push(d.batch);
                first_at.get_or_insert_with(Instant::now);
            }
            let due = first_at.is_some_and(|t| t.elapsed() >= self.config.flush_interval)
                || rows >= self.config.flush_rows
                || (stopping && drained);
            if due && !pending.is_empty() {
                let next = consumer.position();
                let batches = std::mem::take(&mut pending);
                let shared = Arc::clone(writer);
                let result =
                    tokio::task::spawn_blocking(move || lock(&shared).write(&batches, next))
                        .await?;
                let stats = match result {
                    Ok(stats) => stats,
                    Err(e) if transient_history(&e) => {
                        return Ok(Interrupted::Transient(format!(
                            "writing the {table} history failed: {e}"
                        )))
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("writing the {table} history failed"))
                    }
                };
                self.rows_written
                    .fetch_add(stats.rows as u64, Ordering::Relaxed);
                tracing::debug!(
                    table = table.name(),
                    rows = stats.rows,
                    files = stats.files,
                    next,
                    "history flushed"
                );
                // The table's own commit is the truth; this one only tells the
                // log what it may delete, so a failure here is not fatal.
                if let Err(e) = consumer.commit(next).await {
                    tracing::warn!(table = table.name(), error = %e, "cannot record the history's offset in the event log; retention waits");
                }
                ctx.reporter.set_position(next);
                ctx.reporter.running();
                backoff.reset();
                rows = 0;
                first_at = None;
            } else if pending.is_empty() {
                ctx.reporter.set_position(consumer.position());
                ctx.reporter.running();
            }
            if stopping && drained && pending.is_empty() {
                return Ok(Interrupted::Stopped);
            }
        }
    }
}

/// The writer, for one operation. A panic while it was held already fails
/// the component, so a poisoned lock only passes that on.
fn lock(writer: &SharedWriter) -> std::sync::MutexGuard<'_, TableWriter> {
    writer
        .lock()
        .expect("the history writer's lock is poisoned")
}

/// The maintenance task of one table: retention, removal of replaced files
/// after their grace period, compaction of closed hours (see the module
/// documentation). Returns when `stop` turns true.
async fn maintain(
    root: PathBuf,
    table: Table,
    config: HistoryConfig,
    writer: SharedWriter,
    counters: Arc<MaintenanceCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let compaction = config.compaction.clone();
    if !compaction.enabled && config.retention.is_none() {
        return;
    }
    let name = table.name();
    let compactor = Arc::new(Compactor::new(&root, table, compaction.clone()));
    // Hours whose compaction failed, and when to try them again.
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    loop {
        if let Some(retention) = config.retention {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            let w = Arc::clone(&writer);
            match tokio::task::spawn_blocking(move || lock(&w).drop_partitions_before(cutoff)).await
            {
                Ok(Ok(dropped)) => {
                    counters
                        .partitions_dropped
                        .fetch_add(dropped.len() as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table = name, error = %e, "dropping partitions older than history.retention failed; tried again at the next interval");
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        if compaction.enabled {
            let c = Arc::clone(&compactor);
            match tokio::task::spawn_blocking(move || c.collect(Instant::now())).await {
                Ok(Ok(n)) => {
                    counters
                        .files_removed
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table = name, error = %e, "removing the files compactions replaced failed; tried again at the next interval");
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
            let c = Arc::clone(&compactor);
            let candidates = match tokio::task::spawn_blocking(move || {
                c.candidates(chrono::Utc::now())
            })
            .await
            {
                Ok(Ok(candidates)) => candidates,
                Ok(Err(e)) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table = name, error = %e, "looking for hours to compact failed; tried again at the next interval");
                    Vec::new()
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            let now = Instant::now();
            failed.retain(|_, until| *until > now);
            let due: Vec<String> = candidates
                .into_iter()
                .filter(|p| !failed.contains_key(p))
                .collect();
            set_backlog(&counters, name, due.len());
            for (i, partition) in due.iter().enumerate() {
                if stopped(&stop) {
                    return;
                }
                let started = Instant::now();
                let outcome = tokio::select! {
                    outcome = compact_one(&compactor, &writer, partition) => outcome,
                    // What it wrote is removed by the recovery that follows.
                    _ = stop.wait_for(|s| *s) => return,
                };
                match outcome {
                    Ok(Some(done)) => {
                        counters.compactions.fetch_add(1, Ordering::Relaxed);
                        counters
                            .files_merged
                            .fetch_add(done.files_replaced() as u64, Ordering::Relaxed);
                        counters
                            .files_written
                            .fetch_add(done.files_written() as u64, Ordering::Relaxed);
                        counters
                            .bytes_written
                            .fetch_add(done.bytes_written(), Ordering::Relaxed);
                        tracing::info!(
                            table = name,
                            partition,
                            files_before = done.files_replaced(),
                            files_after = done.files_written(),
                            rows = done.rows(),
                            bytes_before = done.bytes_replaced(),
                            bytes_after = done.bytes_written(),
                            ms = started.elapsed().as_millis() as u64,
                            left = due.len() - i - 1,
                            "compacted a closed hour"
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                        failed.insert(partition.clone(), Instant::now() + compaction.interval * 10);
                        tracing::error!(table = name, partition, error = %e, "compacting a closed hour failed; its files stay as they are, tried again later");
                    }
                }
                set_backlog(&counters, name, due.len() - i - 1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(compaction.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Compacts one hour: merges beside the flushes, then swaps between two.
async fn compact_one(
    compactor: &Compactor,
    writer: &SharedWriter,
    partition: &str,
) -> Result<Option<otwatch_history::Prepared>, HistoryError> {
    let Some(prepared) = compactor.prepare(partition).await? else {
        return Ok(None);
    };
    let w = Arc::clone(writer);
    let p = prepared.clone();
    match tokio::task::spawn_blocking(move || lock(&w).commit_compaction(&p)).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ HistoryError::Compaction { .. })) => {
            // Refused before anything changed: the new files go again.
            compactor.abandon(&prepared)?;
            return Err(e);
        }
        // The disk failed during the swap: the writer refuses to write
        // until it is reopened, and its recovery tells from the manifest
        // whether the swap happened.
        Ok(Err(e)) => return Err(e),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    compactor.swapped(&prepared);
    Ok(Some(prepared))
}

fn set_backlog(counters: &MaintenanceCounters, table: &'static str, n: usize) {
    counters
        .backlog
        .lock()
        .expect("not poisoned")
        .insert(table, n as u64);
}
