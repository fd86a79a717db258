//! The agent's disk queue: every event a source hands over is numbered with
//! the agent's next sequence number and made durable here before the source
//! is told "taken"; events leave the queue only when the collector has acked
//! them durably.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/<first seq, 20 digits>.q     segments, in sequence order
//! <dir>/acked                         highest acked seq (decimal text), replaced atomically
//! <dir>/quarantine/                   copies of damaged segments, for inspection
//!
//! record := len: u32 LE | crc: u32 LE (CRC32C of body) | body: protobuf ControllerEvent
//! ```
//!
//! The top bit of `len` marks the last record of one `append` call: appends
//! are all-or-nothing, so a source's checkpoint can say exactly which of its
//! reads made it into the queue.
//!
//! # Invariants
//!
//! - Sequence numbers are strictly increasing across segments: the k-th
//!   record of segment `<first>` has seq `first + k`, and the next segment
//!   starts one past the previous one's last record (or later, after damage
//!   was quarantined).
//! - The newest segment is never deleted, so the next sequence number is
//!   always recoverable from it (its name plus its record count), and
//!   sequence numbers survive restarts even when everything was acked.
//! - An append is *durable* once fsync'd: at once with `fsync = "always"`,
//!   at the next [`DiskQueue::sync`] with `fsync = "group"` (the handle runs
//!   one every `group_commit_interval` and makes appenders wait for it).
//!   Sources are told "taken" and the sender reads an event only once it is
//!   durable, so a crash can only lose appends nobody was told about.
//! - A crash may leave a torn append at the end of the newest segment; opening
//!   the queue cuts it back to the last complete append (that append was never
//!   reported as taken) and keeps everything before it.
//! - Damage anywhere else (a sealed segment that does not read back whole,
//!   e.g. after a disk error) never stops the agent: the segment's readable
//!   prefix is kept, the original file is copied to `quarantine/` for
//!   inspection, and the events lost are counted (`quarantined`) and logged
//!   as an error with their sequence range. Later segments carry on after the
//!   gap; the collector accepts sequence numbers that skip.
//! - A failed fsync (or a failed write that cannot be cut back) stops the
//!   queue for appends: after such a failure the kernel may already have
//!   dropped the unwritten pages, and a later fsync that succeeds would
//!   claim them durable. Every later append and sync returns
//!   [`QueueError::Stopped`]; the agent exits so that it is restarted, and
//!   opening the queue again keeps exactly what reached the disk. Reads go
//!   on, so what is durable can still be sent. A write that fails cleanly
//!   (disk full) is cut back and may simply be retried.
//! - A segment is deleted only once every record in it is acked (`acked` is
//!   written first, so a crash between the two leaves a deletable segment,
//!   never a gap), or when `when_full = "drop_oldest"` sacrifices it, which is
//!   counted and logged.
//! - A full disk never stalls the queue for good while acks come in. Acked
//!   space is reclaimed a segment at a time and the newest segment stays, so
//!   on a filesystem smaller than a segment the acked events of the active
//!   segment would hold the space forever: when a write fails for lack of
//!   space and the active segment is wholly acked, the queue starts a new
//!   segment, deletes the old one and writes again. When even the ack mark
//!   cannot be written for lack of space, wholly acked segments are deleted
//!   first and the mark written after: a crash in between leaves a mark
//!   behind the oldest segment, which only means events the collector holds
//!   are not resent (reading starts at the oldest segment), never a gap in
//!   what is unacked.
//! - [`DiskQueue::open`] warns when `max_bytes` is more than the filesystem
//!   can give it: the disk would then fill before the bound is reached.

use otwatch_proto::ControllerEvent;
use prost::Message;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the queue does when it holds `max_bytes` and a source has more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The source waits until acks free space (no event is lost; sources that
    /// cannot wait, such as a live sensor, fall behind).
    #[default]
    Block,
    /// The oldest unacked segment is deleted to make room; every event in it
    /// is counted as dropped and logged.
    DropOldest,
}

/// When appends are fsync'd (the `fsync` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every append is fsync'd before it returns. Sources already hand over
    /// whole chunks (a tick of the simulator, up to `max_lines_per_read`
    /// lines of a file), so this is one fsync per chunk, not per event.
    #[default]
    Always,
    /// Group commit: appends are written at once and fsync'd together every
    /// `group_commit_interval`; each append still returns only once its
    /// group is durable. Fewer fsyncs when many sources append small chunks,
    /// at the cost of up to one interval of latency per append.
    Group,
}

/// Queue settings (the `[queue]` config section).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Upper bound of the queue on disk, in bytes.
    pub max_bytes: u64,
    /// What to do when `max_bytes` is reached: "block" or "drop_oldest".
    pub when_full: WhenFull,
    /// Size at which a segment is closed and a new one started, in bytes.
    /// Acked space is reclaimed a segment at a time.
    pub segment_bytes: u64,
    /// "always" (default: each append fsync'd before the source is told it
    /// was taken) or "group" (appends fsync'd together every
    /// `group_commit_interval`, still before the source is told).
    pub fsync: FsyncPolicy,
    /// Longest wait for a group commit with `fsync = "group"`.
    #[serde(with = "humantime_serde")]
    pub group_commit_interval: std::time::Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_bytes: 512 * 1024 * 1024,
            when_full: WhenFull::Block,
            segment_bytes: 8 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            group_commit_interval: std::time::Duration::from_millis(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("queue segment {path} is corrupt at seq {seq}: {reason}")]
    Corrupt {
        path: String,
        seq: u64,
        reason: String,
    },
    #[error("queue is full ({bytes} of max_bytes = {max} bytes) and when_full = \"block\"")]
    Full { bytes: u64, max: u64 },
    #[error("queue {0}")]
    Fs(#[from] otwatch_fs::FsError),
    #[error("queue stopped taking events after a disk failure ({reason}); restart the agent: opening the queue keeps exactly what reached the disk")]
    Stopped { reason: String },
}

impl QueueError {
    /// True when the filesystem is full (or the user's quota is): the
    /// write was cut back cleanly and may succeed once space is freed.
    pub fn is_out_of_space(&self) -> bool {
        let kind = match self {
            QueueError::Io { source, .. } => source.kind(),
            QueueError::Fs(e) => e.kind(),
            _ => return false,
        };
        matches!(
            kind,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Counters of the queue, shared with metrics and logs.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    pub appended: AtomicU64,
    pub acked_seq: AtomicU64,
    /// Events dropped by `when_full = "drop_oldest"`.
    pub dropped: AtomicU64,
    /// Events lost to damaged segments (see the module documentation).
    pub quarantined: AtomicU64,
    pub bytes: AtomicU64,
    /// fsyncs of queue data.
    pub fsyncs: AtomicU64,
    /// Highest durable sequence number.
    pub durable_seq: AtomicU64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    /// One past the last seq in it.
    end: u64,
    path: PathBuf,
    bytes: u64,
}

/// The queue. Not internally synchronized: the agent wraps it in a mutex and
/// keeps each call short.
pub struct DiskQueue {
    dir: PathBuf,
    config: QueueConfig,
    segments: VecDeque<Segment>,
    active: File,
    acked: u64,
    /// One past the last durable (fsync'd) sequence number.
    durable_end: u64,
    metrics: Arc<QueueMetrics>,
    /// Where the last `read` stopped: (segment first seq, byte position, seq
    /// at that position). The sender reads forward in batches, so this turns
    /// each read into a seek instead of a rescan of the segment.
    cursor: Cell<Option<(u64, u64, u64)>>,
    /// Why appends stopped (see the module doc), once they have.
    stopped: Option<String>,
    /// The ack mark on disk is behind `acked` (the disk was full); logged
    /// once until a write of the mark succeeds.
    mark_behind: bool,
    /// Makes the next fsync fail, to test the stop.
    #[cfg(test)]
    pub(crate) fail_next_sync: bool,
    /// Simulates a filesystem of this many bytes: segment writes beyond it
    /// fail with `StorageFull`, and so does the ack mark once less than a
    /// page is left.
    #[cfg(test)]
    pub(crate) disk_capacity: Option<u64>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.q"))
}

fn fsync_dir(dir: &Path) -> Result<(), QueueError> {
    Ok(otwatch_fs::sync_dir(dir)?)
}

/// What [`read_record`] found at the reader's position.
enum ReadRecord {
    /// A whole record: its body and whether it ends an append.
    Record(Vec<u8>, bool),
    /// The clean end of the segment.
    End,
    /// A torn or corrupt record, with the reason.
    Bad(String),
}

/// Largest record body a segment may hold. A length word above it is
/// corruption, not a reason to allocate gigabytes.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Reads one record.
fn read_record(reader: &mut impl Read) -> std::io::Result<ReadRecord> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = reader.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Ok(ReadRecord::End);
    }
    if got < 8 {
        return Ok(ReadRecord::Bad("short record header".into()));
    }
    let word = u32::from_le_bytes(head[..4].try_into().unwrap());
    let (len, end) = ((word & !END_BIT) as usize, word & END_BIT != 0);
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
    if len > MAX_RECORD_BYTES {
        return Ok(ReadRecord::Bad(format!(
            "record length {len} above the {MAX_RECORD_BYTES} byte maximum"
        )));
    }
    // The buffer grows with the bytes actually read, so a corrupt length
    // word at the end of a short file costs what the file holds, not `len`.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    reader.by_ref().take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Ok(ReadRecord::Bad("short record body".into()));
    }
    if crc32c::crc32c(&body) != crc {
        return Ok(ReadRecord::Bad("CRC mismatch".into()));
    }
    Ok(ReadRecord::Record(body, end))
}

/// Marks the last record of an append in the length word.
const END_BIT: u32 = 1 << 31;

/// Highest sequence number the queue accepts from disk (a million events a
/// second would take 290,000 years to reach it). Anything above it, like seq
/// 0, is corruption: numbering on from there would overflow or reuse seq 0.
const MAX_SEQ: u64 = i64::MAX as u64;

impl DiskQueue {
    /// Opens (creating) the queue in `dir`, recovering after a crash.
    pub fn open(dir: impl AsRef<Path>, config: QueueConfig) -> Result<Self, QueueError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let acked_path = dir.join("acked");
        let acked: u64 = match fs::read_to_string(&acked_path) {
            Ok(t) => t.trim().parse().unwrap_or_else(|e| {
                // Forgetting acks only means resending: the collector drops
                // what it already holds.
                tracing::error!(path = %acked_path.display(), error = %e, "unreadable ack mark; resending everything queued");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&acked_path)(e)),
        };
        // acked + 1 numbers the next segment when all is acked.
        if acked >= MAX_SEQ {
            return Err(QueueError::Corrupt {
                path: acked_path.display().to_string(),
                seq: acked,
                reason: format!("acked seq not below the maximum {MAX_SEQ}"),
            });
        }
        let mut firsts: Vec<u64> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let first = name.to_str()?.strip_suffix(".q")?.parse().ok()?;
                // Only names the queue writes: "5.q" or "+5.q" would be a
                // second segment for seq 5, on the same path.
                (segment_path(&dir, first).file_name()? == name).then_some(first)
            })
            .collect();
        firsts.sort_unstable();
        if firsts.is_empty() {
            firsts.push(acked + 1);
            File::create(segment_path(&dir, acked + 1)).map_err(io_err(&dir))?;
            fsync_dir(&dir)?;
        }
        let metrics = Arc::new(QueueMetrics::default());
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(&dir, first);
            if first == 0 || first > MAX_SEQ {
                return Err(QueueError::Corrupt {
                    path: path.display().to_string(),
                    seq: first,
                    reason: format!("first seq outside 1..={MAX_SEQ}"),
                });
            }
            let next_first = firsts.get(i + 1).copied();
            let (count, valid_len, total) = Self::scan(&path)?;
            if let Some(prev) = segments.back() {
                if prev.end > first {
                    // Overlapping names cannot come from this queue: keep the
                    // older segment, set the newer one aside.
                    Self::quarantine(
                        &dir,
                        &path,
                        &metrics,
                        first,
                        first + count,
                        "overlaps the previous segment",
                    )?;
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    continue;
                }
                if prev.end < first {
                    tracing::error!(
                        first_missing = prev.end,
                        last_missing = first - 1,
                        "queue segments are missing events (a segment file was removed or damaged); carrying on after the gap"
                    );
                }
            }
            if valid_len < total {
                match next_first {
                    None => {
                        tracing::warn!(
                            path = %path.display(),
                            cut_bytes = total - valid_len,
                            "cutting a torn append off the end of the queue (it was never reported taken)"
                        );
                    }
                    Some(next) => {
                        let reason = "damaged record in a sealed segment";
                        Self::quarantine(&dir, &path, &metrics, first + count, next, reason)?;
                    }
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid_len)
                    .and_then(|_| f.sync_all())
                    .map_err(io_err(&path))?;
            }
            segments.push_back(Segment {
                first,
                end: first + count,
                path,
                bytes: valid_len,
            });
        }
        if segments.back().unwrap().end <= acked {
            // Everything queued is acked and the numbering fell behind the
            // acked seq (the segments lost their tail, or are an older
            // copy). New events must number above it: the collector drops
            // sequence numbers it already holds as duplicates. Old segments
            // go first, so a crash midway leaves no gap.
            tracing::warn!(
                acked,
                next_seq = segments.back().unwrap().end,
                "queue numbering is behind the acked seq: continuing after it"
            );
            for seg in segments.drain(..) {
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
            let path = segment_path(&dir, acked + 1);
            File::create(&path).map_err(io_err(&path))?;
            fsync_dir(&dir)?;
            segments.push_back(Segment {
                first: acked + 1,
                end: acked + 1,
                path,
                bytes: 0,
            });
        }
        let active_path = segments.back().unwrap().path.clone();
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io_err(&active_path))?;
        // What survived a process crash may still sit in the page cache.
        active.sync_data().map_err(io_err(&active_path))?;
        metrics.acked_seq.store(acked, Ordering::Relaxed);
        let durable_end = segments.back().unwrap().end;
        metrics
            .durable_seq
            .store(durable_end - 1, Ordering::Relaxed);
        let mut queue = DiskQueue {
            dir,
            config,
            segments,
            active,
            acked,
            durable_end,
            metrics,
            cursor: Cell::new(None),
            stopped: None,
            mark_behind: false,
            #[cfg(test)]
            fail_next_sync: false,
            #[cfg(test)]
            disk_capacity: None,
        };
        queue.update_bytes();
        // Segments fully acked before a crash cut the deletion short.
        queue.reclaim()?;
        queue.warn_if_disk_too_small();
        tracing::info!(
            dir = %queue.dir.display(),
            next_seq = queue.next_seq(),
            unacked = queue.unacked(),
            "queue opened"
        );
        Ok(queue)
    }

    /// Warns when the filesystem cannot hold `max_bytes` of queue: what is
    /// free plus what the queue already holds.
    fn warn_if_disk_too_small(&self) {
        let Ok(st) = rustix::fs::statvfs(&self.dir) else {
            return;
        };
        let available = st.f_bavail.saturating_mul(st.f_frsize) + self.bytes();
        if available < self.config.max_bytes {
            tracing::warn!(
                dir = %self.dir.display(),
                max_bytes = self.config.max_bytes,
                available,
                "queue.max_bytes is more than the filesystem of data_dir can hold: the disk will fill \
                 before the queue does, and sources then wait until acks free space; lower \
                 queue.max_bytes to what the disk can spare"
            );
        }
    }

    /// Copies a damaged segment to `quarantine/` and accounts for the events
    /// `lost_from..lost_end` it can no longer give back.
    fn quarantine(
        dir: &Path,
        path: &Path,
        metrics: &QueueMetrics,
        lost_from: u64,
        lost_end: u64,
        reason: &str,
    ) -> Result<(), QueueError> {
        let qdir = dir.join("quarantine");
        fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        let name = path.file_name().expect("segment file name");
        let mut target = qdir.join(name);
        let mut n = 1;
        while target.exists() {
            target = qdir.join(format!("{}.{n}", name.to_string_lossy()));
            n += 1;
        }
        fs::copy(path, &target).map_err(io_err(&target))?;
        fsync_dir(&qdir)?;
        let lost = lost_end.saturating_sub(lost_from);
        metrics.quarantined.fetch_add(lost, Ordering::Relaxed);
        tracing::error!(
            segment = %path.display(),
            copy = %target.display(),
            first_lost_seq = lost_from,
            lost,
            reason,
            "queue segment damaged: kept what reads back, quarantined a copy, events lost"
        );
        Ok(())
    }

    /// Counts valid records of a segment: (records, valid bytes, file bytes).
    fn scan(path: &Path) -> Result<(u64, u64, u64), QueueError> {
        let file = File::open(path).map_err(io_err(path))?;
        let total = file.metadata().map_err(io_err(path))?.len();
        let mut reader = BufReader::new(file);
        // Only complete appends count: (records, bytes) up to the last end mark.
        let (mut count, mut pos) = (0u64, 0u64);
        let (mut committed_count, mut committed_pos) = (0u64, 0u64);
        while let ReadRecord::Record(body, end) = read_record(&mut reader).map_err(io_err(path))? {
            count += 1;
            pos += 8 + body.len() as u64;
            if end {
                (committed_count, committed_pos) = (count, pos);
            }
        }
        Ok((committed_count, committed_pos, total))
    }

    pub fn metrics(&self) -> Arc<QueueMetrics> {
        self.metrics.clone()
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.segments.back().unwrap().end
    }

    /// Highest acked sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest durable (fsync'd) sequence number: what sources may be told
    /// is taken and what the sender may read.
    pub fn durable_seq(&self) -> u64 {
        self.durable_end - 1
    }

    /// Stops appends for good after a disk failure; returns the error to give.
    fn stop(&mut self, error: QueueError) -> QueueError {
        let reason = error.to_string();
        tracing::error!(error = %reason, "queue stopped taking events; restart the agent");
        self.stopped = Some(reason.clone());
        QueueError::Stopped { reason }
    }

    fn check_running(&self) -> Result<(), QueueError> {
        match &self.stopped {
            Some(reason) => Err(QueueError::Stopped {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes every append so far durable; returns [`durable_seq`](Self::durable_seq).
    pub fn sync(&mut self) -> Result<u64, QueueError> {
        self.check_running()?;
        let end = self.next_seq();
        if self.durable_end < end {
            let path = self.segments.back().unwrap().path.clone();
            #[cfg(test)]
            if std::mem::take(&mut self.fail_next_sync) {
                let error = std::io::Error::other("injected fsync failure");
                return Err(self.stop(io_err(&path)(error)));
            }
            if let Err(e) = self.active.sync_data() {
                return Err(self.stop(io_err(&path)(e)));
            }
            self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.durable_end = end;
            self.metrics.durable_seq.store(end - 1, Ordering::Relaxed);
        }
        Ok(self.durable_seq())
    }

    /// Events in the queue not yet acked.
    pub fn unacked(&self) -> u64 {
        self.next_seq() - 1 - self.acked.min(self.next_seq() - 1)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn update_bytes(&self) {
        self.metrics.bytes.store(self.bytes(), Ordering::Relaxed);
    }

    /// Numbers the events (setting `seq`), writes and fsyncs them. Returns
    /// the last sequence number given. With `when_full = "block"` a full
    /// queue returns [`QueueError::Full`] without writing: the caller waits
    /// for acks and retries.
    pub fn append(&mut self, events: &mut [ControllerEvent]) -> Result<u64, QueueError> {
        self.append_with(events, |_, _| Ok(()))
    }

    /// Like [`append`](Self::append), and calls `before_write(first_seq,
    /// last_seq)` once the numbers are known and before anything is written,
    /// so a source can durably note which sequence numbers its read will get
    /// (again, with the same numbers, if the write is retried after freeing
    /// space on a full disk).
    pub fn append_with(
        &mut self,
        events: &mut [ControllerEvent],
        mut before_write: impl FnMut(u64, u64) -> Result<(), QueueError>,
    ) -> Result<u64, QueueError> {
        self.check_running()?;
        if events.is_empty() {
            return Ok(self.next_seq() - 1);
        }
        if self.segments.back().unwrap().bytes >= self.config.segment_bytes {
            // The roll after the last append failed; nothing is written yet.
            self.roll()?;
        }
        let mut buf = Vec::with_capacity(events.len() * 96);
        let mut next = self.next_seq();
        let count = events.len();
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = next;
            next += 1;
            let body = e.encode_to_vec();
            let end = if i + 1 == count { END_BIT } else { 0 };
            buf.extend_from_slice(&(body.len() as u32 | end).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        let incoming = buf.len() as u64;
        while self.bytes() + incoming > self.config.max_bytes {
            match self.config.when_full {
                WhenFull::Block => {
                    // Undo the numbering: nothing was taken.
                    let first = self.next_seq();
                    for (i, e) in events.iter_mut().enumerate() {
                        e.seq = first + i as u64;
                    }
                    return Err(QueueError::Full {
                        bytes: self.bytes(),
                        max: self.config.max_bytes,
                    });
                }
                WhenFull::DropOldest => {
                    if self.segments.len() < 2 {
                        self.roll()?;
                        if self.segments.len() < 2 {
                            break;
                        }
                    }
                    self.drop_oldest()?;
                }
            }
        }
        // The source's note and the write, once more after freeing the
        // space of a wholly acked active segment (see the module doc).
        let mut freed = false;
        loop {
            let written =
                before_write(next - count as u64, next - 1).and_then(|()| self.write_active(&buf));
            match written {
                Ok(()) => break,
                Err(e) if e.is_out_of_space() && !freed && self.free_acked_active()? => {
                    tracing::info!(
                        "disk full: started a new queue segment to free the acked one; writing again"
                    );
                    freed = true;
                }
                Err(e) => return Err(e),
            }
        }
        let seg = self.segments.back_mut().unwrap();
        seg.end = next;
        seg.bytes += incoming;
        let full = seg.bytes >= self.config.segment_bytes;
        if self.config.fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        self.metrics
            .appended
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if full {
            // The append itself is written (and with fsync = "always",
            // durable): a failure to start the next segment is not its
            // failure. The next append tries again, or finds the queue stopped.
            if let Err(e) = self.roll() {
                tracing::warn!(error = %e, "cannot start a new queue segment; the next append retries");
            }
        }
        self.update_bytes();
        Ok(next - 1)
    }

    /// Appends `buf` to the active segment. A failed write is cut back to
    /// the segment's last whole append, so that it may simply be retried;
    /// if even that fails, the segment's end is unknown and the queue stops.
    fn write_active(&mut self, buf: &[u8]) -> Result<(), QueueError> {
        let (active_path, before) = {
            let seg = self.segments.back().unwrap();
            (seg.path.clone(), seg.bytes)
        };
        #[cfg(test)]
        if self
            .disk_capacity
            .is_some_and(|cap| self.bytes() + buf.len() as u64 > cap)
        {
            let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(io_err(&active_path)(e));
        }
        if let Err(e) = self.active.write_all(buf) {
            if let Err(cut) = self.active.set_len(before) {
                tracing::error!(error = %e, "queue write failed");
                return Err(self.stop(io_err(&active_path)(cut)));
            }
            return Err(io_err(&active_path)(e));
        }
        Ok(())
    }

    /// After a write failed for lack of space: when the active segment holds
    /// only acked events, starts a new segment and deletes the old one.
    /// Returns whether space was freed.
    fn free_acked_active(&mut self) -> Result<bool, QueueError> {
        let seg = self.segments.back().unwrap();
        if seg.bytes == 0 || seg.end > self.acked + 1 {
            return Ok(false);
        }
        let before = self.bytes();
        self.roll()?;
        self.reclaim()?;
        Ok(self.bytes() < before)
    }

    fn roll(&mut self) -> Result<(), QueueError> {
        let first = self.next_seq();
        if self.segments.back().unwrap().first == first {
            return Ok(()); // the active segment is still empty
        }
        // The segment being sealed must be durable before the next one
        // exists: a group commit syncs only the active file.
        self.sync()?;
        let path = segment_path(&self.dir, first);
        let active = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // A new segment whose directory entry may not be durable would let
        // a crash lose the sequence numbers given out in it: stop instead.
        if let Err(e) = fsync_dir(&self.dir) {
            return Err(self.stop(e));
        }
        self.active = active;
        self.segments.push_back(Segment {
            first,
            end: first,
            path,
            bytes: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<(), QueueError> {
        let seg = self.segments.pop_front().expect("a sealed segment");
        let lost = seg.end.saturating_sub(seg.first.max(self.acked + 1));
        // The mark moves first, so a crash before the deletion leaves a
        // segment that opening reclaims, never a gap.
        if self.acked < seg.end - 1 {
            self.set_acked(seg.end - 1)?;
        }
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        self.metrics.dropped.fetch_add(lost, Ordering::Relaxed);
        tracing::warn!(
            first_seq = seg.first,
            last_seq = seg.end - 1,
            dropped = lost,
            "queue full: dropped the oldest unacknowledged events (when_full = \"drop_oldest\")"
        );
        self.update_bytes();
        Ok(())
    }

    fn set_acked(&mut self, seq: u64) -> Result<(), QueueError> {
        #[cfg(test)]
        if self
            .disk_capacity
            .is_some_and(|cap| self.bytes() + 4096 > cap)
        {
            let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(
                otwatch_fs::FsError::with("writing", &self.dir.join("acked.tmp"))(e).into(),
            );
        }
        otwatch_fs::write_atomic(&self.dir.join("acked"), format!("{seq}\n").as_bytes())?;
        self.mark_behind = false;
        self.acked = seq;
        self.metrics.acked_seq.store(seq, Ordering::Relaxed);
        Ok(())
    }

    /// Records that the collector holds everything up to `seq` durably and
    /// deletes the segments that are wholly acked.
    pub fn ack(&mut self, seq: u64) -> Result<(), QueueError> {
        let seq = seq.min(self.next_seq() - 1);
        if seq <= self.acked {
            return Ok(());
        }
        match self.set_acked(seq) {
            Ok(()) => {}
            Err(e) if e.is_out_of_space() => {
                // No room for the mark: delete what it frees first, then
                // write it (see the module doc for why this order is safe
                // here). A mark still unwritten only means resending.
                self.acked = seq;
                self.metrics.acked_seq.store(seq, Ordering::Relaxed);
                self.reclaim()?;
                if let Err(e) = self.set_acked(seq) {
                    if !self.mark_behind {
                        tracing::warn!(error = %e, acked = seq, "disk full: the ack mark on disk is behind; after a restart acked events may be sent again");
                    }
                    self.mark_behind = true;
                }
            }
            Err(e) => return Err(e),
        }
        self.reclaim()
    }

    fn reclaim(&mut self) -> Result<(), QueueError> {
        while self.segments.len() > 1 && self.segments[0].end <= self.acked + 1 {
            let seg = self.segments.pop_front().unwrap();
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        self.update_bytes();
        Ok(())
    }

    /// Reads up to `max` durable events starting at sequence `from` (events
    /// below the oldest kept one are skipped: they were acked or dropped).
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<ControllerEvent>, QueueError> {
        let mut out = Vec::new();
        let from = from.max(self.acked + 1);
        let max = max.min(self.durable_end.saturating_sub(from) as usize);
        for seg in &self.segments {
            if seg.end <= from || out.len() >= max {
                continue;
            }
            let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
            let (mut seq, mut pos) = (seg.first, 0u64);
            if let Some((first, at, at_seq)) = self.cursor.get() {
                if first == seg.first && at_seq <= from {
                    (seq, pos) = (at_seq, at);
                    file.seek(SeekFrom::Start(at)).map_err(io_err(&seg.path))?;
                }
            }
            let mut reader = BufReader::with_capacity(256 * 1024, file);
            while seq < seg.end && out.len() < max {
                let body = match read_record(&mut reader).map_err(io_err(&seg.path))? {
                    ReadRecord::Record(body, _) => body,
                    ReadRecord::End => break,
                    ReadRecord::Bad(reason) => {
                        return Err(QueueError::Corrupt {
                            path: seg.path.display().to_string(),
                            seq,
                            reason,
                        })
                    }
                };
                if seq >= from {
                    let mut event = ControllerEvent::decode(body.as_slice()).map_err(|e| {
                        QueueError::Corrupt {
                            path: seg.path.display().to_string(),
                            seq,
                            reason: e.to_string(),
                        }
                    })?;
                    // The record's position is its seq, as for next_seq,
                    // acks and trimming; the copy in the body only echoes it.
                    event.seq = seq;
                    out.push(event);
                }
                seq += 1;
                pos += 8 + body.len() as u64;
            }
            self.cursor.set(Some((seg.first, pos, seq)));
        }
        Ok(out)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otwatch_proto::EventKind;

    fn events(n: usize) -> Vec<ControllerEvent> {
        (0..n)
            .map(|i| ControllerEvent {
                ts_ns: 1_700_000_000_000_000_000 + i as i64,
                asset: "a".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(i as f64),
                ..Default::default()
            })
            .collect()
    }

    fn small() -> QueueConfig {
        QueueConfig {
            max_bytes: 1 << 20,
            when_full: WhenFull::Block,
            segment_bytes: 512,
            ..QueueConfig::default()
        }
    }

    #[test]
    fn sequence_numbers_survive_restarts_and_full_acks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = DiskQueue::open(dir.path(), small()).unwrap();
            assert_eq!(q.next_seq(), 1);
            let mut ev = events(30);
            assert_eq!(q.append(&mut ev).unwrap(), 30);
            assert_eq!(ev[29].seq, 30);
            q.ack(30).unwrap();
            assert_eq!(q.unacked(), 0);
        }
        let mut q = DiskQueue::open(dir.path(), small()).unwrap();
        assert_eq!(q.next_seq(), 31);
        let mut ev = events(5);
        assert_eq!(q.append(&mut ev).unwrap(), 35);
        assert_eq!(
            q.read(0, 100)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![31, 32, 33, 34, 35]
        );
    }

    #[test]
    fn reads_resume_from_any_seq_and_acks_reclaim_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = DiskQueue::open(dir.path(), small()).unwrap();
        for _ in 0..10 {
            q.append(&mut events(10)).unwrap();
        }
        assert!(q.segment_count() > 3);
        let got = q.read(40, 10).unwrap();
        assert_eq!(got.first().unwrap().seq, 40);
        assert_eq!(got.len(), 10);
        let before = q.segment_count();
        q.ack(60).unwrap();
        assert!(q.segment_count() < before);
        assert_eq!(q.read(1, 1000).unwrap().first().unwrap().seq, 61);
        assert_eq!(q.unacked(), 40);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let mut q = DiskQueue::open(dir.path(), QueueConfig::default()).unwrap();
            q.append(&mut events(5)).unwrap();
            q.append(&mut events(5)).unwrap();
            path = q.segments.back().unwrap().path.clone();
        }
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        // The torn append (seq 6..=10) is cut whole; the one before it stays.
        let mut q = DiskQueue::open(dir.path(), QueueConfig::default()).unwrap();
        assert_eq!(q.next_seq(), 6);
        assert_eq!(q.read(1, 100).unwrap().len(), 5);
        q.append(&mut events(1)).unwrap();
        assert_eq!(q.read(1, 100).unwrap().last().unwrap().seq, 6);
    }

    #[test]
    fn an_acked_seq_beyond_the_queue_moves_the_numbering_past_it() {
        let dir = tempfile::tempdir().unwrap();
        DiskQueue::open(dir.path(), small())
            .unwrap()
            .append(&mut events(5))
            .unwrap();
        // The segments end at seq 5 but the collector holds up to 8.
        fs::write(dir.path().join("acked"), "8\n").unwrap();
        let mut q = DiskQueue::open(dir.path(), small()).unwrap();
        assert_eq!(q.next_seq(), 9);
        assert_eq!(q.unacked(), 0);
        assert_eq!(q.append(&mut events(1)).unwrap(), 9);
        drop(q);
        let q = DiskQueue::open(dir.path(), small()).unwrap();
        let seqs: Vec<u64> = q.read(0, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![9]);
    }

    #[test]
    fn sequence_numbers_out_of_range_on_disk_are_refused() {
        let corrupt = |dir: &Path| match DiskQueue::open(dir, small()) {
            Err(QueueError::Corrupt { reason, .. }) => reason,
            Err(e) => panic!("{e}"),
            Ok(q) => panic!("opened with next seq {}", q.next_seq()),
        };
        // An acked seq the next segment could not be numbered after, with
        // no segment or with segments behind it.
        for acked in [u64::MAX, MAX_SEQ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("acked"), format!("{acked}\n")).unwrap();
            assert!(corrupt(dir.path()).starts_with("acked seq not below the maximum"));
            File::create(segment_path(dir.path(), 1)).unwrap();
            assert!(corrupt(dir.path()).starts_with("acked seq not below the maximum"));
        }

        // A segment numbered from 0, or from where one record overflows.
        for first in [0, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            let real = tempfile::tempdir().unwrap();
            DiskQueue::open(real.path(), small())
                .unwrap()
                .append(&mut events(1))
                .unwrap();
            fs::copy(
                segment_path(real.path(), 1),
                segment_path(dir.path(), first),
            )
            .unwrap();
            assert!(corrupt(dir.path()).starts_with("first seq outside"));
        }
    }

    #[test]
    fn reads_number_events_by_their_position() {
        let dir = tempfile::tempdir().unwrap();
        DiskQueue::open(dir.path(), small())
            .unwrap()
            .append(&mut events(3))
            .unwrap();
        // The same records, in a segment that starts at seq 11: their
        // bodies still say 1, 2, 3.
        fs::rename(segment_path(dir.path(), 1), segment_path(dir.path(), 11)).unwrap();
        let q = DiskQueue::open(dir.path(), small()).unwrap();
        assert_eq!(q.next_seq(), 14);
        let seqs: Vec<u64> = q.read(0, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![11, 12, 13]);
        assert_eq!(q.read(12, 1).unwrap()[0].seq, 12);
    }

    #[test]
    fn only_segment_names_the_queue_writes_count() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            segment_bytes: 1,
            ..small()
        };
        {
            // 1..=3 in a segment rolled and reclaimed; 4.q is the empty active one.
            let mut q = DiskQueue::open(dir.path(), config.clone()).unwrap();
            q.append(&mut events(3)).unwrap();
            q.ack(3).unwrap();
        }
        for alias in ["4.q", "+4.q", "004.q"] {
            fs::write(dir.path().join(alias), b"").unwrap();
        }
        let mut q = DiskQueue::open(dir.path(), config.clone()).unwrap();
        assert_eq!(q.segment_count(), 1);
        assert_eq!(q.append(&mut events(1)).unwrap(), 4);
        drop(q);
        let q = DiskQueue::open(dir.path(), config).unwrap();
        let seqs: Vec<u64> = q.read(0, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4]);
        assert!(dir.path().join("4.q").exists());
    }

    #[test]
    fn a_failed_fsync_stops_appends_and_reopening_keeps_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = DiskQueue::open(dir.path(), small()).unwrap();
        q.append(&mut events(10)).unwrap();
        q.fail_next_sync = true;
        let err = q.append(&mut events(5)).unwrap_err();
        assert!(matches!(err, QueueError::Stopped { .. }), "{err}");
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        // Nothing is ever taken again, even though the next fsync would work.
        for _ in 0..3 {
            let err = q.append(&mut events(1)).unwrap_err();
            assert!(matches!(err, QueueError::Stopped { .. }), "{err}");
            assert!(matches!(q.sync(), Err(QueueError::Stopped { .. })));
        }
        // What was durable can still be read and sent.
        assert_eq!(q.durable_seq(), 10);
        assert_eq!(q.read(1, 100).unwrap().len(), 10);
        drop(q);

        // A restart keeps what reached the disk (here: the failed append
        // too) and numbers on after it.
        let mut q = DiskQueue::open(dir.path(), small()).unwrap();
        assert_eq!(q.durable_seq(), 15);
        assert_eq!(q.append(&mut events(1)).unwrap(), 16);
    }

    #[test]
    fn a_full_queue_blocks_or_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            max_bytes: 2000,
            when_full: WhenFull::Block,
            segment_bytes: 400,
            ..QueueConfig::default()
        };
        let mut q = DiskQueue::open(dir.path(), config.clone()).unwrap();
        let mut taken = 0;
        loop {
            match q.append(&mut events(5)) {
                Ok(_) => taken += 5,
                Err(QueueError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(q.bytes() <= 2000);
        assert_eq!(q.next_seq(), taken + 1);
        q.ack(taken).unwrap();
        q.append(&mut events(5)).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut q = DiskQueue::open(
            dir.path(),
            QueueConfig {
                when_full: WhenFull::DropOldest,
                ..config
            },
        )
        .unwrap();
        for _ in 0..100 {
            q.append(&mut events(5)).unwrap();
            assert!(q.bytes() <= 2000);
        }
        let dropped = q.metrics().dropped.load(Ordering::Relaxed);
        assert!(dropped > 0);
        let kept = q.read(0, 10_000).unwrap();
        assert_eq!(kept.len() as u64 + dropped, 500);
        assert_eq!(kept.last().unwrap().seq, 500);
    }

    #[test]
    fn a_damaged_sealed_segment_is_quarantined_and_the_rest_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = DiskQueue::open(dir.path(), small()).unwrap();
            for _ in 0..6 {
                q.append(&mut events(5)).unwrap();
            }
            assert!(q.segment_count() >= 3);
        }
        // Flip a byte in the middle of the oldest segment.
        let oldest = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&oldest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&oldest, &bytes).unwrap();

        let q = DiskQueue::open(dir.path(), small()).unwrap();
        let lost = q.metrics().quarantined.load(Ordering::Relaxed);
        assert!(lost > 0);
        let kept = q.read(0, 1000).unwrap();
        assert_eq!(kept.len() as u64 + lost, 30);
        assert_eq!(kept.last().unwrap().seq, 30);
        assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
            1
        );
        // Opening again finds nothing new to quarantine.
        drop(q);
        let q = DiskQueue::open(dir.path(), small()).unwrap();
        assert_eq!(q.metrics().quarantined.load(Ordering::Relaxed), 0);
        assert_eq!(q.read(0, 1000).unwrap().len(), kept.len());
    }

    #[test]
    fn a_disk_smaller_than_a_segment_frees_acked_space_and_keeps_taking() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            ..small()
        };
        let mut q = DiskQueue::open(dir.path(), config.clone()).unwrap();
        // A filesystem far smaller than one segment.
        q.disk_capacity = Some(20_000);
        let mut last = 0;
        for round in 0..5 {
            loop {
                match q.append(&mut events(10)) {
                    Ok(seq) => last = seq,
                    Err(e) if e.is_out_of_space() => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(q.segment_count(), 1, "round {round}");
            // Nothing acked: nothing can be freed.
            let err = q.append(&mut events(10)).unwrap_err();
            assert!(err.is_out_of_space(), "{err}");
            assert_eq!(q.next_seq(), last + 1);
            // Everything acked (the mark itself finds no room at first):
            // the next append frees the acked segment and is taken.
            q.ack(last).unwrap();
            assert_eq!(q.acked(), last);
            assert_eq!(q.append(&mut events(10)).unwrap(), last + 10);
            last += 10;
            assert!(q.bytes() < 20_000);
        }
        assert_eq!(q.read(0, 100).unwrap().len(), 10);
        // Reopened, the numbering goes on and only the unacked events remain.
        drop(q);
        let mut q = DiskQueue::open(dir.path(), config).unwrap();
        assert_eq!(q.next_seq(), last + 1);
        let seqs: Vec<u64> = q.read(0, 100).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (last - 9..=last).collect::<Vec<_>>());
        q.ack(last).unwrap();
        assert_eq!(q.unacked(), 0);
    }

    #[test]
    fn group_commit_reads_only_what_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            fsync: FsyncPolicy::Group,
            ..small()
        };
        let mut q = DiskQueue::open(dir.path(), config).unwrap();
        q.append(&mut events(3)).unwrap();
        assert_eq!(q.durable_seq(), 0);
        assert!(q.read(0, 10).unwrap().is_empty());
        assert_eq!(q.sync().unwrap(), 3);
        assert_eq!(q.read(0, 10).unwrap().len(), 3);
    }

    /// Property test: the queue against a model (a map of the unacked events
    /// by seq, the next seq and the ack mark), through appends, acks, clean
    /// reopens and crashes: an append torn at a random byte, and a crash
    /// between writing the ack mark and deleting acked segments.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            Append(usize),
            Ack(f64),
            Reopen,
            TornAppend(usize, f64),
            AckThenCrash(f64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1usize..12).prop_map(Op::Append),
                2 => (0.0f64..=1.0).prop_map(Op::Ack),
                1 => Just(Op::Reopen),
                1 => ((1usize..12), (0.0f64..1.0)).prop_map(|(n, f)| Op::TornAppend(n, f)),
                1 => (0.0f64..=1.0).prop_map(Op::AckThenCrash),
            ]
        }

        struct Model {
            next: u64,
            acked: u64,
            events: BTreeMap<u64, f64>,
            counter: f64,
        }

        impl Model {
            fn batch(&mut self, n: usize) -> Vec<ControllerEvent> {
                let mut out = events(n);
                for e in &mut out {
                    self.counter += 1.0;
                    e.value = Some(self.counter);
                }
                out
            }

            fn ack_target(&self, frac: f64) -> u64 {
                self.acked + ((self.next - 1 - self.acked) as f64 * frac) as u64
            }

            fn ack(&mut self, seq: u64) {
                self.acked = self.acked.max(seq);
                self.events = self.events.split_off(&(self.acked + 1));
            }
        }

        fn check(q: &DiskQueue, m: &Model) -> Result<(), TestCaseError> {
            prop_assert_eq!(q.next_seq(), m.next);
            prop_assert_eq!(q.acked(), m.acked);
            let got: Vec<(u64, f64)> = q
                .read(0, usize::MAX)
                .unwrap()
                .iter()
                .map(|e| (e.seq, e.value.unwrap()))
                .collect();
            let want: Vec<(u64, f64)> = m.events.iter().map(|(&s, &v)| (s, v)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(q.metrics().quarantined.load(Ordering::Relaxed), 0);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn queue_matches_its_model_through_crashes(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let config = QueueConfig { segment_bytes: 700, ..small() };
                let mut q = DiskQueue::open(dir.path(), config.clone()).unwrap();
                let mut m = Model { next: 1, acked: 0, events: BTreeMap::new(), counter: 0.0 };
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            let mut batch = m.batch(n);
                            let last = q.append(&mut batch).unwrap();
                            for e in &batch {
                                m.events.insert(e.seq, e.value.unwrap());
                            }
                            m.next += n as u64;
                            prop_assert_eq!(last, m.next - 1);
                        }
                        Op::Ack(frac) => {
                            let seq = m.ack_target(frac);
                            q.ack(seq).unwrap();
                            m.ack(seq);
                        }
                        Op::Reopen => {
                            drop(q);
                            q = DiskQueue::open(dir.path(), config.clone()).unwrap();
                        }
                        Op::TornAppend(n, frac) => {
                            // The write dies part-way: only a prefix of its
                            // bytes reaches the file and nothing after it runs.
                            let (path, before) = {
                                let seg = q.segments.back().unwrap();
                                (seg.path.clone(), seg.bytes)
                            };
                            let segments = q.segment_count();
                            let mut batch = m.batch(n);
                            q.append(&mut batch).unwrap();
                            if q.segment_count() > segments {
                                fs::remove_file(&q.segments.back().unwrap().path).unwrap();
                            }
                            let after = fs::metadata(&path).unwrap().len();
                            let keep = before + ((after - before) as f64 * frac) as u64;
                            drop(q);
                            OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
                            q = DiskQueue::open(dir.path(), config.clone()).unwrap();
                        }
                        Op::AckThenCrash(frac) => {
                            let seq = m.ack_target(frac);
                            if seq > q.acked() {
                                q.set_acked(seq).unwrap();
                            }
                            m.ack(seq);
                            drop(q);
                            q = DiskQueue::open(dir.path(), config.clone()).unwrap();
                        }
                    }
                    check(&q, &m)?;
                }
            }
        }
    }
}
