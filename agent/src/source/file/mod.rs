//! The `file` source: follows a file of JSON lines, one event per line, so
//! any system can feed the agent and recorded data can be replayed. It owns
//! the reading of that file across rotations and its checkpoint in
//! `<data_dir>/sources/`; it promises that every line written to the file
//! reaches the queue exactly once and in order, rotations and restarts
//! included, except where noted under *What can be lost* (and then it says
//! so in a log line and a counter).
//!
//! # Exactly once from file to queue
//!
//! Before a chunk of lines is written to the queue, and under the queue's
//! lock, the source durably records a checkpoint `{file, before, after,
//! last_seq}`: the file the chunk was read from, the byte offsets around
//! the chunk in that file and the sequence number its last event gets.
//! Queue appends are all-or-nothing, so on restart `queue last seq >=
//! last_seq` means the chunk made it (resume at `after`), otherwise it did
//! not (resume at `before`). A chunk never spans two files, and the next
//! chunk is read only once the previous one is in the queue, so the
//! checkpoint always names the file whose offsets it holds: a rotated file
//! being drained included.
//!
//! # Which file
//!
//! A file is known by its identity, device and inode, and by its
//! fingerprint: CRC32C of its first N bytes, N = min(size, 1024), recorded
//! with N and lengthened as the file grows (the way Vector and Filebeat
//! recognise files). Files are only appended to, so the same file always
//! starts with the same N bytes; a file shorter than N, or starting with
//! other bytes, is another file, even on the same inode.
//!
//! # Rotation
//!
//! The source keeps the file it reads open, and follows that file, not its
//! name:
//!
//! - **rename and create, delete**: once the path names another file (or
//!   none), the open file is drained: read on until it is found at its end
//!   on a poll at least one `poll_interval` after the switch was seen (the
//!   writer may append a little longer before it reopens). Then the file
//!   the path named when the switch was seen (held open since) is read from
//!   its start, even if it has been rotated in turn.
//! - **copytruncate**: a file shorter than the offset read, or whose first
//!   bytes changed, was truncated: its unread tail went to the copy. The
//!   copy is the file among `rotated_paths` that starts with the same bytes
//!   (as far as both go, up to 1024) and is at least as long as the offset
//!   read (the newest, if several are); it is read from that offset to its
//!   end at once, then the truncated file from its start (through the handle
//!   held, so a second truncation meanwhile is seen too). Only an
//!   uncompressed copy can be read: with logrotate's `compress`, use
//!   `delaycompress`.
//! - **while the agent was stopped**: the checkpointed file is looked for at
//!   the path, then among `rotated_paths` (renamed: same identity and
//!   fingerprint; copied: same fingerprint), read from the checkpoint to its
//!   end, and then the path's file from its start.
//!
//! Each switch is logged at info with the old and new identity and the lines
//! drained.
//!
//! # Lines
//!
//! A line is read once it ends with a newline; a last line without one is
//! still being written and waits. The exception is the last line of a
//! rotated file at the end of its drain: its writer has moved on and will
//! never complete it, so it is read as it is (usually a bad line then,
//! logged and counted as such). Leading NUL bytes of a line are dropped: a
//! writer without `O_APPEND` leaves them in a file truncated under it.
//!
//! # What can be lost (each logged as a warning)
//!
//! - copytruncate's own window: lines written between logrotate's copy and
//!   its truncation are in neither file. The source counts those it saw
//!   before the truncation in `rotation_bytes_lost`; those written after its
//!   last look cannot be seen by anyone.
//! - a truncated file with no matching copy (none among `rotated_paths`,
//!   compressed already, or a plain truncation): the unread tail, counted in
//!   `rotation_bytes_lost` from the last known size.
//! - rotations closer together than a poll: a file that is at the path
//!   only between two looks is never seen, so not read. Rotate at most every
//!   few `poll_interval`s (logrotate runs minutes apart; the tests lose
//!   nothing with rotations 0.7 s apart and a 250 ms poll).
//! - lines a writer appends to a rotated file after it was found at its end
//!   (a writer that never reopens its file: rotate it with copytruncate).
//! - at restart, a checkpointed file found nowhere: its lines beyond the
//!   checkpoint, if it had any (unknown, so not counted).
//!
//! # Checkpoint format
//!
//! `<data_dir>/sources/file-<crc32c of the path, 8 hex digits>.checkpoint`,
//! replaced atomically, one JSON object:
//!
//! ```json
//! {"inode":1234,"dev":2049,"fingerprint":{"len":1024,"crc32c":305419896},
//!  "before":40960,"after":45056,"line_before":401,"line_after":441,"last_seq":9170}
//! ```
//!
//! - `inode`, `dev`: the file `before` and `after` are offsets in;
//! - `fingerprint`: `len` bytes at its start and their CRC32C;
//! - `before`, `after`, `line_before`, `line_after`: the offsets and line
//!   numbers around the last chunk, `last_seq` its last sequence number;
//! - `drained` (only when true): the file was read to its end after the
//!   path stopped naming it, and the path named no file yet.
//!
//! Checkpoints of the first format have no `dev`, `fingerprint` or
//! `drained`: the file is then recognised by its inode alone, as it was.

mod checkpoint;
mod config;
mod follow;
#[cfg(test)]
mod tests;

pub use config::FileSourceConfig;

use super::SourceMetrics;
use crate::handle::QueueHandle;
use crate::queue::QueueError;
use checkpoint::Checkpoint;
use follow::{Chunk, Follower};
use otwatch_proto::limits::Limits;
use otwatch_proto::JsonEvent;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Runs the source until `shutdown` turns true. `seq_at_open` is the
/// queue's last sequence number when it was opened, before any source of
/// this run appended: it says whether the last checkpointed chunk made it.
pub async fn run(
    config: FileSourceConfig,
    seq_at_open: u64,
    state_dir: PathBuf,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let span = tracing::info_span!("file_source", path = %config.path.display());
    follow_file(
        config,
        seq_at_open,
        state_dir,
        limits,
        queue,
        metrics,
        shutdown,
    )
    .instrument(span)
    .await
}

async fn follow_file(
    config: FileSourceConfig,
    seq_at_open: u64,
    state_dir: PathBuf,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    otwatch_fs::create_dir_all_durable(&state_dir).map_err(|e| e.to_string())?;
    let cp_path = Checkpoint::path_for(&state_dir, &config.path);
    let checkpoint = Checkpoint::load(&cp_path)?.map(|cp| (cp, cp.resume_point(seq_at_open)));
    let mut last_error = None;
    // Finding the checkpointed file reads files: retried like any read.
    let mut follower = loop {
        let (path, patterns) = (config.path.clone(), config.rotated_patterns());
        let (max, source_metrics) = (config.max_lines_per_read, metrics.clone());
        let resumed =
            blocking(move || Follower::resume(path, patterns, max, source_metrics, checkpoint))
                .await;
        match resumed {
            Ok(follower) => break follower,
            Err(e) => log_read_error(&mut last_error, e),
        }
        if wait_a_poll(&config, &mut shutdown).await {
            return Ok(());
        }
    };
    while !*shutdown.borrow() {
        let (back, next) = blocking(move || {
            let next = follower.next();
            (follower, next)
        })
        .await;
        follower = back;
        match next {
            Ok(Some(chunk)) => {
                last_error = None;
                let more = chunk.more;
                take_chunk(chunk, &limits, &queue, &metrics, &cp_path).await?;
                if more {
                    continue;
                }
            }
            Ok(None) => last_error = None,
            Err(e) => log_read_error(&mut last_error, e),
        }
        if wait_a_poll(&config, &mut shutdown).await {
            break;
        }
        follower.poll_passed();
    }
    Ok(())
}

/// Sleeps one `poll_interval`, or less if shutdown is asked: returns
/// whether it was.
async fn wait_a_poll(config: &FileSourceConfig, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(config.poll_interval) => {}
        _ = shutdown.changed() => {}
    }
    *shutdown.borrow()
}

/// Logs a read error once, not once per poll while it lasts.
fn log_read_error(last_error: &mut Option<String>, error: std::io::Error) {
    let message = error.to_string();
    if last_error.as_ref() != Some(&message) {
        tracing::error!(error = %message, "cannot read the file; retrying every poll");
        *last_error = Some(message);
    }
}

/// Runs `f` on the blocking pool, inside the current span.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .expect("file read task panicked")
}

/// Parses a chunk's lines and hands its events to the queue, recording the
/// checkpoint under the queue's lock just before they are written.
async fn take_chunk(
    chunk: Chunk,
    limits: &Limits,
    queue: &QueueHandle,
    metrics: &SourceMetrics,
    cp_path: &std::path::Path,
) -> Result<(), String> {
    if chunk.after == chunk.before && !chunk.mark {
        return Ok(());
    }
    let now = now_ns();
    let mut events = Vec::with_capacity(chunk.lines.len());
    for (number, text) in &chunk.lines {
        let parsed = serde_json::from_str::<JsonEvent>(text)
            .map_err(|e| e.to_string())
            .and_then(JsonEvent::into_event)
            .and_then(|e| {
                limits
                    .check_event(0, &e, now)
                    .map(|_| e)
                    .map_err(|err| err.to_string().replacen("event 0: ", "", 1))
            });
        match parsed {
            Ok(event) => events.push(event),
            Err(reason) => {
                metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(line = number, %reason, "skipping a bad line");
            }
        }
    }
    let n = events.len() as u64;
    let cp = Checkpoint::of(&chunk);
    let cp_file = cp_path.to_path_buf();
    let hook: crate::handle::BeforeWrite = Arc::new(move |_first, last| {
        Checkpoint {
            last_seq: last,
            ..cp
        }
        .store(&cp_file)
        .map_err(QueueError::from)
    });
    if events.is_empty() {
        // Only bad lines, or a mark (a new file, a finished one): move the
        // checkpoint (nothing to queue). The queue's last seq is at most what it holds at the next
        // start, so a restart resumes after this point.
        let last = queue.last_seq();
        blocking(move || hook(last, last))
            .await
            .map_err(|e| e.to_string())?;
    } else {
        queue
            .append_with(events, Some(hook))
            .await
            .map_err(|e| e.to_string())?;
    }
    metrics.events.fetch_add(n, Ordering::Relaxed);
    Ok(())
}
