//! The `file` source: follows a file of JSON lines, one event per line, so
//! any system can feed the agent and recorded data can be replayed.
//!
//! Exactly once from file to queue: before a chunk of lines is written to the
//! queue, and under the queue's lock, the source durably records a checkpoint
//! `{before, after, last_seq}`: the byte offsets around the chunk and the
//! sequence number its last event gets. Queue appends are all-or-nothing, so
//! on restart `queue last seq >= last_seq` means the chunk made it (resume at
//! `after`), otherwise it did not (resume at `before`). A line is only read
//! once it ends with a newline. A file that shrinks or is replaced (another
//! inode) is read again from its start, and that is logged.

use super::SourceMetrics;
use crate::config::FileSourceConfig;
use crate::handle::QueueHandle;
use crate::queue::QueueError;
use otwatch_proto::limits::Limits;
use otwatch_proto::JsonEvent;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    inode: u64,
    before: u64,
    after: u64,
    /// Line number of the first line at `before` (1-based), for error messages.
    line_before: u64,
    line_after: u64,
    last_seq: u64,
}

impl Checkpoint {
    fn path_for(state_dir: &Path, source: &Path) -> PathBuf {
        // One checkpoint per followed file, named after a hash of its path.
        let hash = crc32c::crc32c(source.as_os_str().as_encoded_bytes());
        state_dir.join(format!("file-{hash:08x}.checkpoint"))
    }

    fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn store(&self, path: &Path) -> Result<(), otwatch_fs::FsError> {
        otwatch_fs::write_atomic(
            path,
            serde_json::to_string(self).expect("serializes").as_bytes(),
        )
    }
}

/// Where reading resumes: (inode, byte offset, line number).
fn resume_point(cp: &Checkpoint, queue_last_seq: u64) -> (u64, u64, u64) {
    if queue_last_seq >= cp.last_seq {
        (cp.inode, cp.after, cp.line_after)
    } else {
        (cp.inode, cp.before, cp.line_before)
    }
}

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
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let cp_path = Checkpoint::path_for(&state_dir, &config.path);
    let (mut inode, mut offset, mut line) = match Checkpoint::load(&cp_path)? {
        Some(cp) => resume_point(&cp, seq_at_open),
        None => (0, 0, 1),
    };
    let span = tracing::info_span!("file_source", path = %config.path.display());
    let _enter = span.enter();
    tracing::info!(offset, line, "following file");
    let mut missing_logged = false;
    while !*shutdown.borrow() {
        let chunk = {
            let path = config.path.clone();
            let max = config.max_lines_per_read;
            tokio::task::spawn_blocking(move || read_chunk(&path, inode, offset, line, max))
                .await
                .expect("read task")
        };
        match chunk {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !missing_logged {
                    tracing::warn!("file does not exist yet; waiting for it");
                    missing_logged = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read file; retrying"),
            Ok(chunk) => {
                missing_logged = false;
                if chunk.restarted {
                    tracing::warn!(
                        "file was truncated or replaced; reading it again from the start"
                    );
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
                if chunk.end_offset != chunk.start_offset || chunk.restarted {
                    let n = events.len() as u64;
                    let cp = Checkpoint {
                        inode: chunk.inode,
                        before: chunk.start_offset,
                        after: chunk.end_offset,
                        line_before: chunk.start_line,
                        line_after: chunk.end_line,
                        last_seq: 0,
                    };
                    let cp_file = cp_path.clone();
                    let hook: crate::handle::BeforeWrite = Arc::new(move |_first, last| {
                        Checkpoint {
                            last_seq: last,
                            ..cp
                        }
                        .store(&cp_file)
                        .map_err(QueueError::from)
                    });
                    if events.is_empty() {
                        // Only bad lines: move past them (nothing to queue).
                        let last = queue.last_seq();
                        hook(last, last).map_err(|e| e.to_string())?;
                    } else {
                        queue
                            .append_with(events, Some(hook))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    metrics.events.fetch_add(n, Ordering::Relaxed);
                    (inode, offset, line) = (chunk.inode, chunk.end_offset, chunk.end_line);
                    if chunk.more {
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    Ok(())
}

struct Chunk {
    inode: u64,
    start_offset: u64,
    end_offset: u64,
    start_line: u64,
    end_line: u64,
    /// (line number, text) of each complete line.
    lines: Vec<(u64, String)>,
    restarted: bool,
    /// The chunk stopped at `max` lines; more may be waiting.
    more: bool,
}

fn read_chunk(
    path: &Path,
    inode: u64,
    offset: u64,
    line: u64,
    max: usize,
) -> std::io::Result<Chunk> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let (mut offset, mut line, mut restarted) = (offset, line, false);
    if (inode != 0 && meta.ino() != inode) || meta.len() < offset {
        (offset, line, restarted) = (0, 1, true);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut chunk = Chunk {
        inode: meta.ino(),
        start_offset: offset,
        end_offset: offset,
        start_line: line,
        end_line: line,
        lines: Vec::new(),
        restarted,
        more: false,
    };
    let mut buf = Vec::new();
    while chunk.lines.len() < max {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break; // end of file, or a line still being written
        }
        chunk.end_offset += n as u64;
        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
        if !text.is_empty() {
            chunk.lines.push((line, text));
        }
        line += 1;
        chunk.end_line = line;
    }
    chunk.more = chunk.lines.len() >= max;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point_depends_on_whether_the_chunk_reached_the_queue() {
        let cp = Checkpoint {
            inode: 9,
            before: 100,
            after: 250,
            line_before: 3,
            line_after: 8,
            last_seq: 40,
        };
        assert_eq!(resume_point(&cp, 40), (9, 250, 8));
        assert_eq!(resume_point(&cp, 35), (9, 100, 3));
    }

    #[test]
    fn only_complete_lines_are_read_and_truncation_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, "a\nb\nc").unwrap();
        let c = read_chunk(&path, 0, 0, 1, 100).unwrap();
        assert_eq!(c.lines, vec![(1, "a".to_string()), (2, "b".to_string())]);
        assert_eq!(c.end_offset, 4);
        let c2 = read_chunk(&path, c.inode, 100, 3, 100).unwrap();
        assert!(c2.restarted);
        let c3 = read_chunk(&path, c.inode, 0, 1, 1).unwrap();
        assert!(c3.more);
        assert_eq!(c3.lines.len(), 1);
    }
}
