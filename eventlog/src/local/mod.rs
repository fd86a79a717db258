//! The embedded event log: Arrow IPC records in append-only segment files on
//! local disk, fsync'd with group commit.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/<topic>/<base offset, 20 digits>.seg        segments, in offset order
//! <dir>/<topic>/<base offset, 20 digits>.producers  producer marks up to the end of that
//!                                                   (sealed) segment: JSON {"producer": last_seq}
//! <dir>/<topic>/consumers/<group>.offset            committed offset of a group (decimal text)
//! <dir>/<topic>/quarantine/<base>-<byte>.bad         copies of damaged bytes, for inspection
//! ```
//! Records are framed as described in [`frame`]; every frame carries its
//! offset.
//!
//! # Invariants
//!
//! - Offsets only grow: a segment named `base` holds records with offsets
//!   from `base` on, below the next segment's base. Within a segment
//!   offsets are consecutive except where damage swallowed records.
//! - A record is acknowledged (its `append` returns) and visible to
//!   consumers only after the segment holding it has been fsync'd.
//! - **Only a torn tail is ever cut.** A crash can leave an incomplete
//!   final write in the newest segment. Opening the log verifies every
//!   record of the newest segment; at the first bad frame it searches for
//!   an intact frame after it. If there is none, the bad bytes are the
//!   torn tail of the last write: they are copied to `quarantine/`, cut off,
//!   and reported. If there is one, the bad bytes are damage in the middle
//!   of acknowledged data: they are copied to `quarantine/`, reported with
//!   the file, the byte range and the offsets lost, and skipped; every
//!   record after them is kept with its offset.
//! - Damage in older segments is found when a record is read (every read
//!   verifies the CRC): it is handled the same way, once, and readers go
//!   on after it. Corruption never reads as wrong data and never stops a
//!   consumer.
//! - **Offsets never go back.** When a consumer group has committed an
//!   offset beyond the end of the log (the log was restored from an older
//!   copy, or its newest segment was lost), opening the log reports the gap
//!   and continues numbering from the highest committed offset, so records
//!   appended later are never below a consumer's position and never
//!   skipped. [`EventLog::consumer_at`] does the same for consumers that
//!   keep their position elsewhere (the history with its files).
//! - **Bounded.** A sealed segment is deleted once it is older than
//!   `retention` and every consumer group named with
//!   [`LocalLog::retain_for`] has committed past it. Memory per segment is
//!   a sparse index (one entry per 64 KiB of records) plus its damaged
//!   stretches; producer marks are snapshotted per sealed segment, so
//!   opening reads only the newest segment whole.
//! - Group commit: one writer thread takes every append request queued while
//!   it was busy, writes them, fsyncs each touched segment once, then answers
//!   them all. Encoding to IPC happens in the caller, in parallel.

mod frame;
#[cfg(test)]
mod tests;

use crate::{Consumer, Delivery, EventLog, LogError, ProducerMark, Record, Result, Topic};
use frame::{Body, Frame};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Settings of the embedded event log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalLogConfig {
    /// A segment is closed and a new one started once it reaches this size, in bytes.
    pub segment_bytes: u64,
    /// How long records are kept: a closed segment is deleted once all its
    /// records are older than this (by the time the segment was last
    /// written) *and* every consumer of its topic has committed past it. A
    /// consumer that is stuck therefore holds the disk, it never loses data.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for LocalLogConfig {
    fn default() -> Self {
        LocalLogConfig {
            segment_bytes: 128 * 1024 * 1024,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl LocalLogConfig {
    /// Checks the values the log cannot work with, naming the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err(format!(
                "segment_bytes = {} is below its minimum 4096",
                self.segment_bytes
            ));
        }
        if self.retention.is_zero() {
            return Err("retention must be longer than 0 (e.g. \"7d\")".into());
        }
        Ok(())
    }
}

/// Bytes of records between two entries of a segment's sparse index.
const INDEX_STRIDE: u64 = 64 * 1024;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// A stretch of a segment that does not read back, and the offsets it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    start: u64,
    end: u64,
    first_lost: u64,
    /// One past the last offset lost.
    end_lost: u64,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    /// Bytes of data readers may read (for the active segment: what has
    /// been fsync'd and published).
    len: u64,
    /// Sparse index: `(offset, byte position)` of a record every
    /// [`INDEX_STRIDE`] bytes, ascending. `None` until a reader needs it
    /// (sealed segments are not read when the log opens).
    index: Option<Arc<Vec<(u64, u64)>>>,
    holes: Vec<Hole>,
    modified: SystemTime,
}

#[derive(Debug, Default)]
struct TopicState {
    segments: Vec<Segment>,
    /// The offset the next appended record gets.
    end: u64,
    producers: HashMap<String, u64>,
    /// Committed offsets of the groups known to this process.
    committed: HashMap<String, u64>,
    /// The groups retention waits for; `None`: retention does not run.
    retained_for: Option<Vec<String>>,
}

impl TopicState {
    /// The index of the segment that holds (or would hold) `offset`.
    fn segment_for(&self, offset: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        i.checked_sub(1)
    }
}

/// Damage found and records lost since the log opened, for metrics.
#[derive(Debug, Default)]
pub struct DamageCounts {
    /// Damaged stretches found (a torn tail cut at open counts too).
    pub regions: AtomicU64,
    /// Records lost to damage (acknowledged records that no longer read).
    pub records_lost: AtomicU64,
    /// Segments deleted by retention.
    pub segments_deleted: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    topics: HashMap<Topic, RwLock<TopicState>>,
    ends: HashMap<Topic, watch::Sender<u64>>,
    damage: DamageCounts,
    config: LocalLogConfig,
}

enum Request {
    Append {
        topic: Topic,
        bodies: Vec<Body>,
        reply: oneshot::Sender<Result<Vec<u64>>>,
    },
    /// Continue numbering at `offset` (a consumer is already there).
    SkipTo {
        topic: Topic,
        offset: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The embedded event log. Cheap to share behind an `Arc`.
pub struct LocalLog {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Request>,
    retention_stop: Option<std::sync::mpsc::Sender<()>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn snapshot_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.producers"))
}

fn topic_dir(dir: &Path, topic: Topic) -> PathBuf {
    dir.join(topic.name())
}

/// Encodes a record's body (the IPC stream and its CRC) in the caller.
fn encode_body(record: &Record) -> Result<Body> {
    let ipc = crate::ipc::encode(&record.batch)?;
    Ok(Body {
        crc: crc32c::crc32c(&ipc),
        ipc,
        rows: record.batch.num_rows() as u32,
        producer: record.producer.clone(),
    })
}

fn decode_payload(payload: &[u8]) -> std::result::Result<arrow::array::RecordBatch, String> {
    let (_, body) = frame::decode_header(payload)?;
    crate::ipc::decode(&payload[body..])
}

/// Copies `file[start..end)` to `<topic dir>/quarantine/<base>-<start>.bad`
/// (once: an existing copy is kept), durably.
fn quarantine(tdir: &Path, base: u64, file: &File, start: u64, end: u64) -> Result<PathBuf> {
    let qdir = tdir.join("quarantine");
    otwatch_fs::create_dir_all_durable(&qdir)?;
    let target = qdir.join(format!("{base:020}-{start}.bad"));
    if target.exists() {
        return Ok(target);
    }
    let mut out = File::create(&target).map_err(io_err(&target))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], at)
            .map_err(io_err(&target))?;
        out.write_all(&buf[..n]).map_err(io_err(&target))?;
        at += n as u64;
    }
    out.sync_all().map_err(io_err(&target))?;
    otwatch_fs::sync_dir(&qdir)?;
    Ok(target)
}

/// What walking a segment found.
struct Walk {
    index: Vec<(u64, u64)>,
    holes: Vec<Hole>,
    /// One past the last intact record's offset (or the segment's base).
    end_offset: u64,
    marks: Vec<ProducerMark>,
    /// Where the data to cut begins, and why: bad bytes with no intact
    /// record after them, or (newest segment) damage within the last group
    /// commit, which may never have been acknowledged.
    torn: Option<(u64, String)>,
}

/// Walks a segment from its start. `newest`: verify every record and apply
/// the torn-write rule (see the module docs); otherwise only headers are
/// read (building the index of a sealed segment, whose every write was
/// fsync'd before the log rolled past it).
fn walk(file: &File, base: u64, len: u64, newest: bool) -> std::io::Result<Walk> {
    let mut w = Walk {
        index: Vec::new(),
        holes: Vec::new(),
        end_offset: base,
        marks: Vec::new(),
        torn: None,
    };
    // (position, group) of every intact frame, and where each mark was.
    let mut frames: Vec<(u64, Option<u64>)> = Vec::new();
    let mut mark_at: Vec<u64> = Vec::new();
    // The end offset before each hole, to roll back to.
    let mut end_before_hole: Vec<u64> = Vec::new();
    let mut pos = 0u64;
    let mut last_indexed: Option<u64> = None;
    loop {
        match frame::read_at(file, pos, len, newest)? {
            Frame::End => break,
            Frame::Record { size, header, .. } => {
                let offset = header.offset.unwrap_or(w.end_offset);
                if last_indexed.is_none_or(|at| pos - at >= INDEX_STRIDE) {
                    w.index.push((offset, pos));
                    last_indexed = Some(pos);
                }
                if let Some(mark) = header.producer {
                    w.marks.push(mark);
                    mark_at.push(pos);
                }
                if newest {
                    frames.push((pos, header.group));
                }
                w.end_offset = offset + 1;
                pos += size;
            }
            Frame::Bad(reason) => match frame::next_intact(file, pos, len)? {
                Some((next, header)) => {
                    let resume = header.offset.expect("next_intact returns framed offsets");
                    end_before_hole.push(w.end_offset);
                    w.holes.push(Hole {
                        start: pos,
                        end: next,
                        first_lost: w.end_offset,
                        end_lost: resume.max(w.end_offset),
                    });
                    pos = next;
                }
                None => {
                    w.torn = Some((pos, reason));
                    break;
                }
            },
        }
    }
    if newest && !w.holes.is_empty() {
        // Damage followed only by frames of the last group commit: that
        // group may never have been fsync'd, so its frames after the damage
        // cannot be told from a torn write. Cut from the earliest such hole.
        let last_group = frames.last().and_then(|&(_, g)| g);
        let cut = w.holes.iter().position(|h| {
            let after = frames
                .iter()
                .find(|&&(p, _)| p >= h.end)
                .and_then(|&(_, g)| g);
            after.is_some() && after == last_group
        });
        if let Some(i) = cut {
            let hole = w.holes[i];
            w.end_offset = end_before_hole[i];
            w.holes.truncate(i);
            w.index.retain(|&(_, p)| p < hole.start);
            let keep = mark_at.iter().filter(|&&p| p < hole.start).count();
            w.marks.truncate(keep);
            w.torn = Some((
                hole.start,
                "damage within the last write, which may not have been acknowledged".into(),
            ));
        }
    }
    Ok(w)
}

fn read_snapshot(path: &Path) -> Option<HashMap<String, u64>> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(map) => Some(map),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "producer snapshot unreadable; the segment is read instead");
            None
        }
    }
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now())
}

/// Opens one topic: lists segments, recovers the newest, loads producer
/// marks, and continues numbering past every committed offset.
fn open_topic(tdir: &Path, topic: Topic, damage: &DamageCounts) -> Result<TopicState> {
    otwatch_fs::create_dir_all_durable(&tdir.join("consumers"))?;
    let mut bases: Vec<u64> = fs::read_dir(tdir)
        .map_err(io_err(tdir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut state = TopicState::default();
    for &base in &bases {
        let path = segment_path(tdir, base);
        let len = fs::metadata(&path).map_err(io_err(&path))?.len();
        state.segments.push(Segment {
            base,
            modified: mtime(&path),
            path,
            len,
            index: None,
            holes: Vec::new(),
        });
    }
    let topic_name = topic.name();
    // The newest segment is verified record by record.
    let mut newest_marks = Vec::new();
    if let Some(seg) = state.segments.last_mut() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        let w = walk(&file, seg.base, seg.len, true).map_err(io_err(&seg.path))?;
        for hole in &w.holes {
            let copy = quarantine(tdir, seg.base, &file, hole.start, hole.end)?;
            damage.regions.fetch_add(1, Ordering::Relaxed);
            damage
                .records_lost
                .fetch_add(hole.end_lost - hole.first_lost, Ordering::Relaxed);
            tracing::error!(
                topic = topic_name,
                path = %seg.path.display(),
                bytes = %format!("{}..{}", hole.start, hole.end),
                offsets_lost = %format!("{}..{}", hole.first_lost, hole.end_lost),
                copy = %copy.display(),
                "damaged records in the middle of the event log (acknowledged data): skipped, every record after them kept"
            );
        }
        if let Some((at, reason)) = &w.torn {
            let copy = quarantine(tdir, seg.base, &file, *at, seg.len)?;
            damage.regions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                topic = topic_name,
                path = %seg.path.display(),
                at_byte = at,
                cut_bytes = seg.len - at,
                %reason,
                copy = %copy.display(),
                "cut an incomplete write off the end of the event log: a crash during a write leaves exactly this, and such a write was never acknowledged"
            );
            file.set_len(*at).map_err(io_err(&seg.path))?;
            file.sync_all().map_err(io_err(&seg.path))?;
            seg.len = *at;
        }
        seg.index = Some(Arc::new(w.index));
        seg.holes = w.holes;
        state.end = w.end_offset.max(seg.base);
        newest_marks = w.marks;
    }
    // Producer marks: the newest snapshot, then the segments after it.
    let sealed = state.segments.len().saturating_sub(1);
    let mut from = 0;
    for i in (0..sealed).rev() {
        if let Some(map) = read_snapshot(&snapshot_path(tdir, state.segments[i].base)) {
            state.producers = map;
            from = i + 1;
            break;
        }
    }
    for i in from..sealed {
        let seg = &state.segments[i];
        let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
        let w = walk(&file, seg.base, seg.len, false).map_err(io_err(&seg.path))?;
        for mark in w.marks {
            let seq = state.producers.entry(mark.producer).or_default();
            *seq = (*seq).max(mark.last_seq);
        }
    }
    for mark in newest_marks {
        let seq = state.producers.entry(mark.producer).or_default();
        *seq = (*seq).max(mark.last_seq);
    }
    // Committed offsets of every group that has one.
    let cdir = tdir.join("consumers");
    for entry in fs::read_dir(&cdir).map_err(io_err(&cdir))? {
        let entry = entry.map_err(io_err(&cdir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(group) = name.strip_suffix(".offset") else {
            continue;
        };
        let path = entry.path();
        let offset = read_offset_file(&path)?;
        state.committed.insert(group.to_string(), offset);
    }
    Ok(state)
}

fn read_offset_file(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    text.trim().parse().map_err(|e| LogError::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason: format!("committed offset is not a number: {e}"),
    })
}

/// Starts a new segment at `offset` past the end of the log, reporting the
/// offsets that are gone. The caller holds the writer role.
fn skip_to(
    tdir: &Path,
    topic: Topic,
    state: &mut TopicState,
    offset: u64,
    why: &str,
) -> Result<()> {
    if offset <= state.end {
        return Ok(());
    }
    tracing::error!(
        topic = topic.name(),
        log_end = state.end,
        continue_at = offset,
        why,
        "the event log ends before an offset a consumer already reached: the records between were lost (the log was restored from an older copy, or its newest records were damaged); numbering continues after them so that no consumer skips new records"
    );
    // An empty newest segment is replaced, not kept as an empty file.
    if let Some(last) = state.segments.last() {
        if last.len == 0 {
            fs::remove_file(&last.path).map_err(io_err(&last.path))?;
            state.segments.pop();
        }
    }
    let path = segment_path(tdir, offset);
    File::create(&path)
        .map_err(io_err(&path))?
        .sync_all()
        .map_err(io_err(&path))?;
    otwatch_fs::sync_dir(tdir)?;
    state.segments.push(Segment {
        base: offset,
        path,
        len: 0,
        index: Some(Arc::new(Vec::new())),
        holes: Vec::new(),
        modified: SystemTime::now(),
    });
    state.end = offset;
    Ok(())
}

impl LocalLog {
    /// Highest sequence number held for `producer` in `topic`, from memory:
    /// the local log's answer to [`EventLog::producer_seq`], without waiting.
    pub fn producer_seq(&self, topic: Topic, producer: &str) -> Option<u64> {
        self.shared.topics[&topic]
            .read()
            .unwrap()
            .producers
            .get(producer)
            .copied()
    }

    /// Opens (creating) the log in `dir`, recovering from a crash as described
    /// in the module docs.
    pub fn open(dir: impl AsRef<Path>, config: LocalLogConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        otwatch_fs::create_dir_all_durable(&dir)?;
        let damage = DamageCounts::default();
        let mut topics = HashMap::new();
        let mut ends = HashMap::new();
        for topic in Topic::ALL {
            let tdir = topic_dir(&dir, topic);
            let mut state = open_topic(&tdir, topic, &damage)?;
            if let Some((group, &offset)) = state.committed.iter().max_by_key(|(_, &o)| o) {
                let why = format!("consumer group {group} committed offset {offset}");
                skip_to(&tdir, topic, &mut state, offset, &why)?;
            }
            tracing::info!(
                topic = topic.name(),
                segments = state.segments.len(),
                end_offset = state.end,
                producers = state.producers.len(),
                "event log topic opened"
            );
            ends.insert(topic, watch::channel(state.end).0);
            topics.insert(topic, RwLock::new(state));
        }
        let shared = Arc::new(Shared {
            dir,
            topics,
            ends,
            damage,
            config,
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || writer_loop(writer_shared, rx))
            .map_err(io_err(&shared.dir))?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let retention_shared = shared.clone();
        std::thread::Builder::new()
            .name("eventlog-retention".into())
            .spawn(move || loop {
                match stop_rx.recv_timeout(RETENTION_EVERY) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = apply_retention(&retention_shared, SystemTime::now()) {
                            tracing::error!(error = %e, "event log retention failed; it is tried again later");
                        }
                    }
                    _ => return,
                }
            })
            .map_err(io_err(&shared.dir))?;
        Ok(LocalLog {
            shared,
            writer: tx,
            retention_stop: Some(stop_tx),
        })
    }

    /// Directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Names the consumer groups retention waits for on `topic`: a sealed
    /// segment is deleted only once each of them has committed past it (and
    /// it is older than `retention`). Until this is called for a topic,
    /// nothing of it is deleted. Groups with a committed offset that are not
    /// named do not hold the log back, and are logged once.
    pub fn retain_for(&self, topic: Topic, groups: &[String]) {
        let mut state = self.shared.topics[&topic].write().unwrap();
        for group in state.committed.keys() {
            if !groups.contains(group) {
                tracing::info!(
                    topic = topic.name(),
                    group,
                    "consumer group has a committed offset but is not used now: it does not hold back retention"
                );
            }
        }
        state.retained_for = Some(groups.to_vec());
    }

    /// Runs retention now, as if the clock said `now` (it runs every
    /// minute by itself). Returns the number of segments deleted.
    pub fn apply_retention(&self, now: SystemTime) -> Result<usize> {
        apply_retention(&self.shared, now)
    }

    /// Why the log cannot take appends now, if it cannot (its writer thread
    /// is gone).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.writer.is_closed() {
            return Err("the event log's writer thread has stopped: appends fail".into());
        }
        Ok(())
    }

    /// Damage found and records lost since the log opened.
    pub fn damage(&self) -> &DamageCounts {
        &self.shared.damage
    }

    /// Segments of `topic` now (for metrics and tests).
    pub fn segment_count(&self, topic: Topic) -> usize {
        self.shared.topics[&topic].read().unwrap().segments.len()
    }

    /// The oldest offset of `topic` the log still holds.
    pub fn start_offset(&self, topic: Topic) -> u64 {
        let state = self.shared.topics[&topic].read().unwrap();
        state.segments.first().map(|s| s.base).unwrap_or(state.end)
    }

    fn make_consumer(&self, topic: Topic, group: &str, position: u64) -> Box<dyn Consumer> {
        Box::new(LocalConsumer {
            shared: self.shared.clone(),
            topic,
            group: group.to_string(),
            end: self.shared.ends[&topic].subscribe(),
            commit_path: topic_dir(&self.shared.dir, topic)
                .join("consumers")
                .join(format!("{group}.offset")),
            position,
            cursor: None,
        })
    }
}

impl Drop for LocalLog {
    fn drop(&mut self) {
        if let Some(stop) = self.retention_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Deletes sealed segments older than the retention whose records every
/// named group has committed past.
fn apply_retention(shared: &Shared, now: SystemTime) -> Result<usize> {
    let mut deleted = 0;
    for topic in Topic::ALL {
        let tdir = topic_dir(&shared.dir, topic);
        let doomed: Vec<(u64, PathBuf)> = {
            let mut state = shared.topics[&topic].write().unwrap();
            let Some(groups) = &state.retained_for else {
                continue;
            };
            // Groups that never committed hold everything from the start.
            let floor = groups
                .iter()
                .map(|g| state.committed.get(g).copied().unwrap_or(0))
                .min()
                .unwrap_or(u64::MAX);
            let mut n = 0;
            let sealed = state.segments.len().saturating_sub(1);
            while n < sealed {
                let seg = &state.segments[n];
                let next_base = state.segments[n + 1].base;
                let old_enough = now
                    .duration_since(seg.modified)
                    .is_ok_and(|age| age >= shared.config.retention);
                if !(old_enough && next_base <= floor) {
                    break;
                }
                n += 1;
            }
            state
                .segments
                .drain(..n)
                .map(|s| (s.base, s.path))
                .collect()
        };
        for (base, path) in &doomed {
            fs::remove_file(path).map_err(io_err(path))?;
            let snapshot = snapshot_path(&tdir, *base);
            if let Err(e) = fs::remove_file(&snapshot) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_err(&snapshot)(e));
                }
            }
        }
        if !doomed.is_empty() {
            otwatch_fs::sync_dir(&tdir)?;
            tracing::info!(
                topic = topic.name(),
                segments = doomed.len(),
                "deleted segments older than the retention that every consumer has read"
            );
            deleted += doomed.len();
        }
    }
    shared
        .damage
        .segments_deleted
        .fetch_add(deleted as u64, Ordering::Relaxed);
    Ok(deleted)
}

/// The writer thread's view of the active segment of a topic.
struct Active {
    file: File,
    base: u64,
    len: u64,
    last_indexed: Option<u64>,
}

fn open_active(shared: &Shared, topic: Topic) -> Result<Option<Active>> {
    let state = shared.topics[&topic].read().unwrap();
    let Some(seg) = state.segments.last() else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .append(true)
        .open(&seg.path)
        .map_err(io_err(&seg.path))?;
    let last_indexed = seg
        .index
        .as_ref()
        .and_then(|i| i.last())
        .map(|&(_, pos)| pos);
    Ok(Some(Active {
        file,
        base: seg.base,
        len: seg.len,
        last_indexed,
    }))
}

fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
    let mut actives: HashMap<Topic, Option<Active>> = HashMap::new();
    for topic in Topic::ALL {
        match open_active(&shared, topic) {
            Ok(active) => {
                actives.insert(topic, active);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open the newest event log segment for appending");
                actives.insert(topic, None);
            }
        }
    }
    while let Some(first) = rx.blocking_recv() {
        let mut appends = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append {
                    topic,
                    bodies,
                    reply,
                } => appends.push((topic, bodies, reply)),
                Request::SkipTo {
                    topic,
                    offset,
                    reply,
                } => {
                    let tdir = topic_dir(&shared.dir, topic);
                    let result = {
                        let mut state = shared.topics[&topic].write().unwrap();
                        skip_to(&tdir, topic, &mut state, offset, "a consumer resumes there")
                    };
                    if result.is_ok() {
                        match open_active(&shared, topic) {
                            Ok(active) => {
                                actives.insert(topic, active);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot reopen the newest segment")
                            }
                        }
                        let end = shared.topics[&topic].read().unwrap().end;
                        shared.ends[&topic].send_replace(end);
                    }
                    let _ = reply.send(result);
                }
            }
            if appends.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        if appends.is_empty() {
            continue;
        }
        let outcome = write_group(&shared, &mut actives, &appends);
        match outcome {
            Ok(offsets) => {
                for ((_, _, reply), offs) in appends.into_iter().zip(offsets) {
                    let _ = reply.send(Ok(offs));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event log append failed; the batches were not acknowledged");
                let msg = e.to_string();
                for (_, _, reply) in appends {
                    let _ = reply.send(Err(LogError::Io {
                        path: shared.dir.display().to_string(),
                        source: std::io::Error::other(msg.clone()),
                    }));
                }
            }
        }
    }
}

/// One append request as the writer thread holds it.
type Append = (Topic, Vec<Body>, oneshot::Sender<Result<Vec<u64>>>);

/// Per topic, what a group wrote, applied to the shared state only after
/// the fsync.
struct Pending {
    next_offset: u64,
    /// The group commit's id in this topic: its first offset.
    group: u64,
    /// Length of the segment that was active before the group, to cut back to.
    start: Option<(u64, u64)>,
    new_segments: Vec<Segment>,
    /// Index entries per segment base.
    index: BTreeMap<u64, Vec<(u64, u64)>>,
    marks: Vec<ProducerMark>,
    /// Bases of segments sealed by this group (their producer snapshots are
    /// written after the group commits).
    sealed: Vec<u64>,
    dirty: bool,
}

/// Writes a group of appends, fsyncs, then publishes them. On error every
/// touched segment is cut back to its length before the group, so nothing
/// unacknowledged stays in the log.
fn write_group(
    shared: &Shared,
    actives: &mut HashMap<Topic, Option<Active>>,
    appends: &[Append],
) -> Result<Vec<Vec<u64>>> {
    let mut pending: HashMap<Topic, Pending> = HashMap::new();
    let mut results = Vec::with_capacity(appends.len());
    let segment_bytes = shared.config.segment_bytes;
    let result = (|| -> Result<()> {
        for (topic, bodies, _) in appends {
            let tdir = topic_dir(&shared.dir, *topic);
            let active = actives.get_mut(topic).expect("every topic has an entry");
            let p = pending.entry(*topic).or_insert_with(|| {
                let state = shared.topics[topic].read().unwrap();
                Pending {
                    next_offset: state.end,
                    group: state.end,
                    start: active.as_ref().map(|a| (a.base, a.len)),
                    new_segments: Vec::new(),
                    index: BTreeMap::new(),
                    marks: Vec::new(),
                    sealed: Vec::new(),
                    dirty: false,
                }
            });
            let mut offsets = Vec::with_capacity(bodies.len());
            for body in bodies {
                let roll = match active {
                    None => true,
                    Some(a) => a.len >= segment_bytes && a.len > 0,
                };
                if roll {
                    if let Some(old) = active.take() {
                        old.file.sync_data().map_err(io_err(&tdir))?;
                        p.sealed.push(old.base);
                    }
                    let path = segment_path(&tdir, p.next_offset);
                    let file = OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    otwatch_fs::sync_dir(&tdir)?;
                    p.new_segments.push(Segment {
                        base: p.next_offset,
                        path,
                        len: 0,
                        index: Some(Arc::new(Vec::new())),
                        holes: Vec::new(),
                        modified: SystemTime::now(),
                    });
                    *active = Some(Active {
                        file,
                        base: p.next_offset,
                        len: 0,
                        last_indexed: None,
                    });
                }
                let seg = active.as_mut().expect("active segment");
                let (head, size) = frame::frame(p.next_offset, p.group, body);
                seg.file.write_all(&head).map_err(io_err(&tdir))?;
                seg.file.write_all(&body.ipc).map_err(io_err(&tdir))?;
                if seg
                    .last_indexed
                    .is_none_or(|at| seg.len - at >= INDEX_STRIDE)
                {
                    p.index
                        .entry(seg.base)
                        .or_default()
                        .push((p.next_offset, seg.len));
                    seg.last_indexed = Some(seg.len);
                }
                seg.len += size as u64;
                p.dirty = true;
                if let Some(mark) = &body.producer {
                    p.marks.push(mark.clone());
                }
                offsets.push(p.next_offset);
                p.next_offset += 1;
            }
            results.push(offsets);
        }
        for (topic, p) in &pending {
            if p.dirty {
                if let Some(a) = &actives[topic] {
                    a.file
                        .sync_data()
                        .map_err(io_err(&topic_dir(&shared.dir, *topic)))?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Undo: the group's new segments go, the segment that was active
        // before it is cut back to where it was.
        for (topic, p) in &pending {
            let tdir = topic_dir(&shared.dir, *topic);
            let active = actives.get_mut(topic).expect("every topic has an entry");
            for seg in &p.new_segments {
                let _ = fs::remove_file(&seg.path);
            }
            *active = None;
            if let Some((base, len)) = p.start {
                let path = segment_path(&tdir, base);
                if let Ok(file) = OpenOptions::new().append(true).open(&path) {
                    let _ = file.set_len(len);
                    let _ = file.sync_data();
                    let last_indexed = shared.topics[topic]
                        .read()
                        .unwrap()
                        .segments
                        .last()
                        .and_then(|s| s.index.as_ref())
                        .and_then(|i| i.last())
                        .map(|&(_, pos)| pos);
                    *active = Some(Active {
                        file,
                        base,
                        len,
                        last_indexed,
                    });
                }
            }
            let _ = otwatch_fs::sync_dir(&tdir);
        }
        return Err(e);
    }
    for (topic, p) in pending {
        let tdir = topic_dir(&shared.dir, topic);
        let snapshots = {
            let mut state = shared.topics[&topic].write().unwrap();
            // Lengths and index entries of the segment active before.
            if let Some((base, _)) = p.start {
                let active_len = actives[&topic]
                    .as_ref()
                    .filter(|a| a.base == base)
                    .map(|a| a.len);
                if let Some(seg) = state.segments.iter_mut().rev().find(|s| s.base == base) {
                    seg.len = match active_len {
                        Some(len) => len,
                        None => fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(seg.len),
                    };
                    seg.modified = SystemTime::now();
                    if let Some(entries) = p.index.get(&base) {
                        let mut index = seg.index.as_deref().cloned().unwrap_or_default();
                        index.extend_from_slice(entries);
                        seg.index = Some(Arc::new(index));
                    }
                }
            }
            for mut seg in p.new_segments {
                seg.len = actives[&topic]
                    .as_ref()
                    .filter(|a| a.base == seg.base)
                    .map(|a| a.len)
                    .unwrap_or_else(|| fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0));
                if let Some(entries) = p.index.get(&seg.base) {
                    seg.index = Some(Arc::new(entries.clone()));
                }
                state.segments.push(seg);
            }
            for mark in p.marks {
                let seq = state.producers.entry(mark.producer).or_default();
                *seq = (*seq).max(mark.last_seq);
            }
            state.end = p.next_offset;
            let snapshots: Vec<(u64, HashMap<String, u64>)> = p
                .sealed
                .iter()
                .map(|&base| (base, state.producers.clone()))
                .collect();
            shared.ends[&topic].send_replace(state.end);
            snapshots
        };
        // The snapshot of a segment sealed in this group holds the marks up
        // to the end of the group, a superset of the segment's own: harmless,
        // since marks only grow and the next segment's records repeat them.
        for (base, map) in snapshots {
            let path = snapshot_path(&tdir, base);
            let bytes = serde_json::to_vec(&map).expect("producer marks serialize");
            if let Err(e) = otwatch_fs::write_atomic(&path, &bytes) {
                tracing::warn!(error = %e, "cannot write a producer snapshot; the segment is read at the next open instead");
            }
        }
    }
    Ok(results)
}

#[async_trait::async_trait]
impl EventLog for LocalLog {
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<u64>> {
        let bodies = records
            .iter()
            .map(encode_body)
            .collect::<Result<Vec<_>>>()?;
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Request::Append {
                topic,
                bodies,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn producer_seq(&self, topic: Topic, producer: &str) -> Result<Option<u64>> {
        Ok(LocalLog::producer_seq(self, topic, producer))
    }

    fn end_offset(&self, topic: Topic) -> u64 {
        *self.shared.ends[&topic].borrow()
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn Consumer>> {
        let position = {
            let state = self.shared.topics[&topic].read().unwrap();
            match state.committed.get(group) {
                Some(&offset) => offset,
                None => state.segments.first().map(|s| s.base).unwrap_or(state.end),
            }
        };
        Ok(self.make_consumer(topic, group, position))
    }

    async fn consumer_at(
        &self,
        topic: Topic,
        group: &str,
        offset: u64,
    ) -> Result<Box<dyn Consumer>> {
        if offset > self.end_offset(topic) {
            let (reply, rx) = oneshot::channel();
            self.writer
                .send(Request::SkipTo {
                    topic,
                    offset,
                    reply,
                })
                .await
                .map_err(|_| LogError::Closed)?;
            rx.await.map_err(|_| LogError::Closed)??;
        }
        Ok(self.make_consumer(topic, group, offset))
    }
}

/// Where a consumer's next record is, to read on without a lookup.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    base: u64,
    pos: u64,
    offset: u64,
}

struct LocalConsumer {
    shared: Arc<Shared>,
    topic: Topic,
    group: String,
    end: watch::Receiver<u64>,
    commit_path: PathBuf,
    position: u64,
    cursor: Option<Cursor>,
}

#[async_trait::async_trait]
impl Consumer for LocalConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if *self.end.borrow_and_update() <= self.position {
            let changed = tokio::time::timeout(wait, self.end.changed()).await;
            if let Ok(Err(_)) = changed {
                return Err(LogError::Closed);
            }
        }
        let end = *self.end.borrow();
        if end < self.position {
            return Err(LogError::OffsetBeyondEnd {
                topic: self.topic.name(),
                offset: self.position,
                end,
            });
        }
        if end == self.position {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let (topic, position, cursor) = (self.topic, self.position, self.cursor);
        let (deliveries, position, cursor) = tokio::task::spawn_blocking(move || {
            read_records(&shared, topic, position, end, max.max(1), cursor)
        })
        .await
        .map_err(|_| LogError::Closed)??;
        self.position = position;
        self.cursor = cursor;
        Ok(deliveries)
    }

    async fn commit(&mut self, next_offset: u64) -> Result<()> {
        let path = self.commit_path.clone();
        tokio::task::spawn_blocking(move || write_offset_file(&path, next_offset))
            .await
            .map_err(|_| LogError::Closed)??;
        self.shared.topics[&self.topic]
            .write()
            .unwrap()
            .committed
            .insert(self.group.clone(), next_offset);
        Ok(())
    }

    fn seek(&mut self, offset: u64) {
        self.position = offset;
        self.cursor = None;
    }

    fn position(&self) -> u64 {
        self.position
    }
}

/// Atomically replaces a small file holding one offset.
fn write_offset_file(path: &Path, offset: u64) -> Result<()> {
    Ok(otwatch_fs::write_atomic(
        path,
        format!("{offset}\n").as_bytes(),
    )?)
}

/// A segment as a reader sees it, copied out of the shared state.
struct SegmentView {
    index_in_state: usize,
    base: u64,
    path: PathBuf,
    len: u64,
    index: Option<Arc<Vec<(u64, u64)>>>,
    holes: Vec<Hole>,
    next_base: Option<u64>,
}

fn view(shared: &Shared, topic: Topic, position: u64) -> Result<Option<SegmentView>> {
    let state = shared.topics[&topic].read().unwrap();
    let oldest = state.segments.first().map(|s| s.base).unwrap_or(state.end);
    if position < oldest {
        return Err(LogError::OffsetGone {
            topic: topic.name(),
            offset: position,
            oldest,
        });
    }
    let Some(i) = state.segment_for(position) else {
        return Ok(None);
    };
    let seg = &state.segments[i];
    Ok(Some(SegmentView {
        index_in_state: i,
        base: seg.base,
        path: seg.path.clone(),
        len: seg.len,
        index: seg.index.clone(),
        holes: seg.holes.clone(),
        next_base: state.segments.get(i + 1).map(|s| s.base),
    }))
}

/// Reads up to `max` records from `position` (below `end`, the published
/// end), going over damage. Returns them, the new position and a cursor.
fn read_records(
    shared: &Shared,
    topic: Topic,
    mut position: u64,
    end: u64,
    max: usize,
    mut cursor: Option<Cursor>,
) -> Result<(Vec<Delivery>, u64, Option<Cursor>)> {
    let mut out = Vec::new();
    while out.len() < max && position < end {
        let Some(mut seg) = view(shared, topic, position)? else {
            break;
        };
        let file = match File::open(&seg.path) {
            Ok(file) => file,
            // Deleted by retention since the view was taken.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&seg.path)(e)),
        };
        if seg.index.is_none() {
            seg.index = Some(build_index(shared, topic, &seg, &file)?);
        }
        // Where to start, and the offset the record there has (or, for
        // records written before frames carried offsets, gets).
        let (mut pos, mut expected) = match cursor {
            Some(c) if c.base == seg.base && c.offset == position => (c.pos, c.offset),
            _ => {
                let index = seg.index.as_deref().expect("built above");
                let i = index.partition_point(|&(o, _)| o <= position);
                i.checked_sub(1)
                    .map(|i| (index[i].1, index[i].0))
                    .unwrap_or((0, seg.base))
            }
        };
        let segment_done = loop {
            if out.len() >= max {
                break false;
            }
            if let Some(hole) = seg.holes.iter().find(|h| h.start == pos) {
                pos = hole.end;
                expected = expected.max(hole.end_lost);
                position = position.max(hole.end_lost);
                continue;
            }
            match frame::read_at(&file, pos, seg.len, true).map_err(io_err(&seg.path))? {
                Frame::End => break true,
                Frame::Record {
                    size,
                    header,
                    payload,
                } => {
                    let offset = header.offset.unwrap_or(expected);
                    if offset >= end {
                        break false;
                    }
                    pos += size;
                    expected = offset + 1;
                    if offset < position {
                        continue;
                    }
                    let corrupt = |reason: String| LogError::Corrupt {
                        path: seg.path.display().to_string(),
                        offset,
                        reason,
                    };
                    let batch = decode_payload(&payload.expect("whole read")).map_err(corrupt)?;
                    out.push(Delivery {
                        partition: 0,
                        offset,
                        batch,
                        producer: header.producer,
                    });
                    position = offset + 1;
                }
                Frame::Bad(reason) => {
                    let found =
                        frame::next_intact(&file, pos, seg.len).map_err(io_err(&seg.path))?;
                    let (hole_end, end_lost) = match &found {
                        Some((next, header)) => (*next, header.offset.expect("framed")),
                        None => (seg.len, seg.next_base.unwrap_or(end)),
                    };
                    let hole = Hole {
                        start: pos,
                        end: hole_end,
                        first_lost: expected,
                        end_lost: end_lost.max(expected),
                    };
                    record_hole(shared, topic, &seg, &file, hole, &reason)?;
                    seg.holes.push(hole);
                    pos = hole_end;
                    expected = hole.end_lost;
                    position = position.max(hole.end_lost);
                    if found.is_none() {
                        break true;
                    }
                }
            }
        };
        cursor = Some(Cursor {
            base: seg.base,
            pos,
            offset: position,
        });
        if segment_done {
            match seg.next_base {
                // Records swallowed by damage at the segment's end.
                Some(next) => position = position.max(next),
                None => break,
            }
        }
    }
    Ok((out, position, cursor))
}

/// Builds (and keeps) the sparse index of a sealed segment, noting damage
/// its headers show.
fn build_index(
    shared: &Shared,
    topic: Topic,
    seg: &SegmentView,
    file: &File,
) -> Result<Arc<Vec<(u64, u64)>>> {
    let w = walk(file, seg.base, seg.len, false).map_err(io_err(&seg.path))?;
    for hole in &w.holes {
        record_hole(shared, topic, seg, file, *hole, "damaged record header")?;
    }
    if let Some((at, reason)) = &w.torn {
        let hole = Hole {
            start: *at,
            end: seg.len,
            first_lost: w.end_offset,
            end_lost: seg.next_base.unwrap_or(w.end_offset).max(w.end_offset),
        };
        record_hole(shared, topic, seg, file, hole, reason)?;
    }
    let index = Arc::new(w.index);
    let mut state = shared.topics[&topic].write().unwrap();
    if let Some(s) = state.segments.get_mut(seg.index_in_state) {
        if s.base == seg.base && s.index.is_none() {
            s.index = Some(index.clone());
        }
    }
    Ok(index)
}

/// Notes a damaged stretch of a segment (once): quarantines a copy, counts
/// and reports it.
fn record_hole(
    shared: &Shared,
    topic: Topic,
    seg: &SegmentView,
    file: &File,
    hole: Hole,
    reason: &str,
) -> Result<()> {
    {
        let mut state = shared.topics[&topic].write().unwrap();
        let Some(s) = state.segments.iter_mut().find(|s| s.base == seg.base) else {
            return Ok(());
        };
        if s.holes.iter().any(|h| h.start == hole.start) {
            return Ok(());
        }
        s.holes.push(hole);
    }
    let tdir = topic_dir(&shared.dir, topic);
    let copy = quarantine(&tdir, seg.base, file, hole.start, hole.end)?;
    shared.damage.regions.fetch_add(1, Ordering::Relaxed);
    shared
        .damage
        .records_lost
        .fetch_add(hole.end_lost - hole.first_lost, Ordering::Relaxed);
    tracing::error!(
        topic = topic.name(),
        path = %seg.path.display(),
        bytes = %format!("{}..{}", hole.start, hole.end),
        offsets_lost = %format!("{}..{}", hole.first_lost, hole.end_lost),
        %reason,
        copy = %copy.display(),
        "damaged records in the event log: skipped, every record after them kept"
    );
    Ok(())
}
