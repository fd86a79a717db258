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

use crate::config::HistoryConfig;
use crate::health::Backoff;
use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_eventlog::{EventLog, LogError, Topic};
use otwatch_history::{HistoryError, Table, TableWriter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

impl HistoryComponent {
    pub async fn run(self, mut ctx: Context) -> anyhow::Result<()> {
        let topic = match self.table {
            Table::Events => Topic::Events,
            Table::Alerts => Topic::Alerts,
            Table::Audit => Topic::Control,
        };
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
        let mut writer = match opened {
            Ok(writer) => writer,
            Err(e) if transient_history(&e) => {
                return Ok(Interrupted::Transient(format!(
                    "cannot open the {table} history: {e}"
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open the {table} history")),
        };
        // The table's committed offset is where reading resumes; if the log
        // ends before it, the log continues numbering there.
        let mut consumer = self
            .log
            .consumer_at(topic, &group(table), writer.next_offset())
            .await
            .context("cannot open a consumer of the event log")?;
        ctx.reporter.set_position(writer.next_offset());
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
                if let Err(e) = writer.accepts(&d.batch) {
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
                let (w, result) = tokio::task::spawn_blocking(move || {
                    let r = writer.write(&batches, next);
                    (writer, r)
                })
                .await?;
                writer = w;
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
