//! The embedded event log: Arrow IPC records in append-only segment files on
//! local disk, fsync'd with group commit.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/<topic>/<base offset, 20 digits>.seg      segments, in offset order
//! <dir>/<topic>/consumers/<group>.offset          committed offset of a group (decimal text)
//!
//! record  := len: u32 LE | crc: u32 LE | payload (len bytes)
//! payload := hlen: u32 LE | header (hlen bytes, JSON {"producer":..,"rows":..})
//!            | Arrow IPC stream (schema, dictionaries, one batch, end marker)
//! ```
//! `crc` is CRC32C of the payload.
//!
//! # Invariants
//!
//! - Offsets are dense: the record at position `k` of a segment whose name is
//!   `base` has offset `base + k`; the next segment's base is one past the
//!   previous segment's last offset.
//! - A record is acknowledged (its `append` returns) and visible to consumers
//!   only after the segment holding it has been fsync'd.
//! - A crash can leave at most a torn suffix in the newest segment. Opening the
//!   log verifies every record of the newest segment and truncates it at the
//!   first short or CRC-failing record; that suffix was never acknowledged.
//!   Older segments were fsync'd before the log rolled past them; opening only
//!   walks their record headers (a broken frame there fails the open, naming
//!   the file). Every read verifies the record's CRC, so corruption anywhere
//!   surfaces as an error naming the file and offset, never as wrong data.
//! - Group commit: one writer thread takes every append request queued while
//!   it was busy, writes them, fsyncs each touched segment once, then answers
//!   them all. Throughput grows with concurrency instead of being capped at one
//!   fsync per batch. Encoding to IPC happens in the caller, in parallel.

use crate::{Consumer, Delivery, EventLog, LogError, ProducerMark, Record, Result, Topic};
use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
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

#[derive(serde::Serialize, serde::Deserialize)]
struct RecordHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    producer: Option<ProducerMark>,
    rows: u32,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: usize,
    pos: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
}

#[derive(Debug, Default)]
struct TopicState {
    segments: Vec<Segment>,
    /// Location of every record from `start_offset` on.
    index: Vec<Loc>,
    start_offset: u64,
    producers: HashMap<String, u64>,
}

impl TopicState {
    fn end_offset(&self) -> u64 {
        self.start_offset + self.index.len() as u64
    }
}

struct Shared {
    dir: PathBuf,
    topics: HashMap<Topic, RwLock<TopicState>>,
    ends: HashMap<Topic, watch::Sender<u64>>,
}

struct AppendRequest {
    topic: Topic,
    payloads: Vec<(Vec<u8>, Option<ProducerMark>)>,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// The embedded event log. Cheap to share behind an `Arc`.
pub struct LocalLog {
    shared: Arc<Shared>,
    writer: mpsc::Sender<AppendRequest>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    Ok(otwatch_fs::sync_dir(dir)?)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Encodes one record payload: header and Arrow IPC stream.
fn encode_payload(record: &Record) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&RecordHeader {
        producer: record.producer.clone(),
        rows: record.batch.num_rows() as u32,
    })
    .expect("header serializes");
    let mut payload = Vec::with_capacity(4 + header.len() + 1024);
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    let mut writer = StreamWriter::try_new(&mut payload, record.batch.schema_ref())?;
    writer.write(&record.batch)?;
    writer.finish()?;
    drop(writer);
    Ok(payload)
}

fn decode_header(payload: &[u8]) -> std::result::Result<(RecordHeader, usize), String> {
    if payload.len() < 4 {
        return Err("payload shorter than its header length".into());
    }
    let hlen = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    let header = payload
        .get(4..4 + hlen)
        .ok_or("header longer than the payload")?;
    let header: RecordHeader =
        serde_json::from_slice(header).map_err(|e| format!("bad record header: {e}"))?;
    Ok((header, 4 + hlen))
}

fn decode_payload(payload: &[u8]) -> std::result::Result<(RecordBatch, RecordHeader), String> {
    let (header, body) = decode_header(payload)?;
    let mut reader = StreamReader::try_new(&payload[body..], None).map_err(|e| e.to_string())?;
    let batch = reader
        .next()
        .ok_or("no record batch in the record")?
        .map_err(|e| e.to_string())?;
    Ok((batch, header))
}

/// Outcome of reading one record frame.
enum Frame {
    Record {
        len: u32,
        payload: Vec<u8>,
    },
    /// Clean end of file.
    End,
    /// A short or CRC-failing record: a torn write (or corruption).
    Bad(String),
}

fn read_frame(file: &mut File, verify: bool, path: &Path) -> Result<Frame> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = file.read(&mut head[got..]).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < 8 {
        return Ok(Frame::Bad("short record header".into()));
    }
    let len = u32::from_le_bytes(head[..4].try_into().unwrap());
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
    let mut payload = vec![0u8; len as usize];
    if let Err(e) = file.read_exact(&mut payload) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(Frame::Bad("short record payload".into()))
        } else {
            Err(io_err(path)(e))
        };
    }
    if verify && crc32c::crc32c(&payload) != crc {
        return Ok(Frame::Bad("CRC mismatch".into()));
    }
    Ok(Frame::Record { len, payload })
}

/// Walks a segment, returning its record locations and producer marks.
/// The newest segment is verified and truncated at a torn tail.
fn scan_segment(
    state: &mut TopicState,
    segment_no: usize,
    path: &Path,
    newest: bool,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(newest)
        .open(path)
        .map_err(io_err(path))?;
    let mut pos = 0u64;
    loop {
        match read_frame(&mut file, newest, path)? {
            Frame::End => break,
            Frame::Record { len, payload } => {
                let (header, _) = decode_header(&payload).map_err(|reason| LogError::Corrupt {
                    path: path.display().to_string(),
                    offset: state.end_offset(),
                    reason,
                })?;
                if let Some(mark) = header.producer {
                    let seq = state.producers.entry(mark.producer).or_default();
                    *seq = (*seq).max(mark.last_seq);
                }
                state.index.push(Loc {
                    segment: segment_no,
                    pos,
                    len,
                });
                pos += 8 + len as u64;
            }
            Frame::Bad(reason) if newest => {
                let total = file.metadata().map_err(io_err(path))?.len();
                tracing::warn!(
                    path = %path.display(),
                    cut_bytes = total - pos,
                    %reason,
                    "cutting a torn record off the end of the event log (it was never acknowledged)"
                );
                file.set_len(pos).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                break;
            }
            Frame::Bad(reason) => {
                return Err(LogError::Corrupt {
                    path: path.display().to_string(),
                    offset: state.end_offset(),
                    reason,
                })
            }
        }
    }
    Ok(())
}

fn open_topic(dir: &Path) -> Result<TopicState> {
    fs::create_dir_all(dir.join("consumers")).map_err(io_err(dir))?;
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut state = TopicState {
        start_offset: bases.first().copied().unwrap_or(0),
        ..Default::default()
    };
    for (i, &base) in bases.iter().enumerate() {
        if base != state.end_offset() {
            return Err(LogError::Corrupt {
                path: segment_path(dir, base).display().to_string(),
                offset: state.end_offset(),
                reason: format!(
                    "segment starts at offset {base} but the previous one ends at {}",
                    state.end_offset()
                ),
            });
        }
        let path = segment_path(dir, base);
        scan_segment(&mut state, i, &path, i + 1 == bases.len())?;
        state.segments.push(Segment { path });
    }
    Ok(state)
}

impl LocalLog {
    /// Opens (creating) the log in `dir`, recovering from a crash as described
    /// in the module docs.
    pub fn open(dir: impl AsRef<Path>, config: LocalLogConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let mut topics = HashMap::new();
        let mut ends = HashMap::new();
        let mut actives = HashMap::new();
        for topic in Topic::ALL {
            let tdir = dir.join(topic.name());
            let state = open_topic(&tdir)?;
            let end = state.end_offset();
            let active = match state.segments.last() {
                Some(seg) => {
                    let file = OpenOptions::new()
                        .append(true)
                        .open(&seg.path)
                        .map_err(io_err(&seg.path))?;
                    let len = file.metadata().map_err(io_err(&seg.path))?.len();
                    Some(ActiveSegment { file, len })
                }
                None => None,
            };
            tracing::info!(
                topic = topic.name(),
                segments = state.segments.len(),
                records = state.index.len(),
                producers = state.producers.len(),
                "event log topic opened"
            );
            actives.insert(topic, (tdir, active));
            ends.insert(topic, watch::channel(end).0);
            topics.insert(topic, RwLock::new(state));
        }
        fsync_dir(&dir)?;
        let shared = Arc::new(Shared { dir, topics, ends });
        let (tx, rx) = mpsc::channel(1024);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || writer_loop(writer_shared, actives, rx, config))
            .map_err(io_err(&shared.dir))?;
        Ok(LocalLog { shared, writer: tx })
    }

    /// Directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

struct ActiveSegment {
    file: File,
    len: u64,
}

fn writer_loop(
    shared: Arc<Shared>,
    mut actives: HashMap<Topic, (PathBuf, Option<ActiveSegment>)>,
    mut rx: mpsc::Receiver<AppendRequest>,
    config: LocalLogConfig,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut requests = vec![first];
        while requests.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let outcome = write_group(&shared, &mut actives, &requests, &config);
        match outcome {
            Ok(offsets) => {
                for (req, offs) in requests.into_iter().zip(offsets) {
                    let _ = req.reply.send(Ok(offs));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event log append failed; the batches were not acknowledged");
                let msg = e.to_string();
                for req in requests {
                    let _ = req.reply.send(Err(LogError::Io {
                        path: shared.dir.display().to_string(),
                        source: std::io::Error::other(msg.clone()),
                    }));
                }
            }
        }
    }
}

/// Writes a group of requests, fsyncs, then publishes them. On error every
/// touched segment is cut back to its length before the group, so nothing
/// unacknowledged stays in the log.
fn write_group(
    shared: &Shared,
    actives: &mut HashMap<Topic, (PathBuf, Option<ActiveSegment>)>,
    requests: &[AppendRequest],
    config: &LocalLogConfig,
) -> Result<Vec<Vec<u64>>> {
    // Per topic: the new index entries and segments, applied only after fsync.
    struct Pending {
        next_offset: u64,
        segments_before: usize,
        new_segments: Vec<Segment>,
        locs: Vec<Loc>,
        marks: Vec<ProducerMark>,
        start_len: Option<u64>,
        dirty: bool,
    }
    let mut pending: HashMap<Topic, Pending> = HashMap::new();
    let mut results = Vec::with_capacity(requests.len());
    let result = (|| -> Result<()> {
        for req in requests {
            let (tdir, active) = actives.get_mut(&req.topic).expect("topic exists");
            let p = pending.entry(req.topic).or_insert_with(|| {
                let state = shared.topics[&req.topic].read().unwrap();
                Pending {
                    next_offset: state.end_offset(),
                    segments_before: state.segments.len(),
                    new_segments: Vec::new(),
                    locs: Vec::new(),
                    marks: Vec::new(),
                    start_len: active.as_ref().map(|a| a.len),
                    dirty: false,
                }
            });
            let mut offsets = Vec::with_capacity(req.payloads.len());
            for (payload, mark) in &req.payloads {
                let roll = match active {
                    None => true,
                    Some(a) => a.len >= config.segment_bytes && a.len > 0,
                };
                if roll {
                    if let Some(old) = active.take() {
                        old.file.sync_data().map_err(io_err(tdir))?;
                    }
                    let path = segment_path(tdir, p.next_offset);
                    let file = OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    fsync_dir(tdir)?;
                    p.new_segments.push(Segment { path });
                    *active = Some(ActiveSegment { file, len: 0 });
                }
                let seg = active.as_mut().expect("active segment");
                let mut frame = Vec::with_capacity(8);
                frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
                seg.file.write_all(&frame).map_err(io_err(tdir))?;
                seg.file.write_all(payload).map_err(io_err(tdir))?;
                p.locs.push(Loc {
                    segment: p.segments_before + p.new_segments.len() - 1,
                    pos: seg.len,
                    len: payload.len() as u32,
                });
                seg.len += 8 + payload.len() as u64;
                p.dirty = true;
                if let Some(mark) = mark {
                    p.marks.push(mark.clone());
                }
                offsets.push(p.next_offset);
                p.next_offset += 1;
            }
            results.push(offsets);
        }
        for (topic, p) in &pending {
            if p.dirty {
                let (tdir, active) = &actives[topic];
                if let Some(a) = active {
                    a.file.sync_data().map_err(io_err(tdir))?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Cut back what this group wrote to the segment that was active
        // before it; segments the group created are removed.
        for (topic, p) in &pending {
            let (tdir, active) = actives.get_mut(topic).expect("topic exists");
            for seg in &p.new_segments {
                let _ = fs::remove_file(&seg.path);
            }
            *active = None;
            let state = shared.topics[topic].read().unwrap();
            if let (Some(seg), Some(len)) = (state.segments.last(), p.start_len) {
                if let Ok(file) = OpenOptions::new().append(true).open(&seg.path) {
                    let _ = file.set_len(len);
                    let _ = file.sync_data();
                    *active = Some(ActiveSegment { file, len });
                }
            }
            let _ = fsync_dir(tdir);
        }
        return Err(e);
    }
    for (topic, p) in pending {
        let mut state = shared.topics[&topic].write().unwrap();
        state.segments.extend(p.new_segments);
        state.index.extend(p.locs);
        for mark in p.marks {
            let seq = state.producers.entry(mark.producer).or_default();
            *seq = (*seq).max(mark.last_seq);
        }
        let end = state.end_offset();
        drop(state);
        shared.ends[&topic].send_replace(end);
    }
    Ok(results)
}

#[async_trait::async_trait]
impl EventLog for LocalLog {
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<u64>> {
        let payloads = records
            .iter()
            .map(|r| Ok((encode_payload(r)?, r.producer.clone())))
            .collect::<Result<Vec<_>>>()?;
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(AppendRequest {
                topic,
                payloads,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    fn producer_seq(&self, topic: Topic, producer: &str) -> Option<u64> {
        self.shared.topics[&topic]
            .read()
            .unwrap()
            .producers
            .get(producer)
            .copied()
    }

    fn end_offset(&self, topic: Topic) -> u64 {
        *self.shared.ends[&topic].borrow()
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn Consumer>> {
        let path = self
            .shared
            .dir
            .join(topic.name())
            .join("consumers")
            .join(format!("{group}.offset"));
        let position = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| LogError::Corrupt {
                path: path.display().to_string(),
                offset: 0,
                reason: format!("committed offset is not a number: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared.topics[&topic].read().unwrap().start_offset
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(Box::new(LocalConsumer {
            shared: self.shared.clone(),
            topic,
            end: self.shared.ends[&topic].subscribe(),
            commit_path: path,
            position,
        }))
    }
}

struct LocalConsumer {
    shared: Arc<Shared>,
    topic: Topic,
    end: watch::Receiver<u64>,
    commit_path: PathBuf,
    position: u64,
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
        if end <= self.position {
            return Ok(Vec::new());
        }
        let (locs, paths) = {
            let state = self.shared.topics[&self.topic].read().unwrap();
            if self.position < state.start_offset {
                return Err(LogError::OffsetGone {
                    topic: self.topic.name(),
                    offset: self.position,
                    oldest: state.start_offset,
                });
            }
            let from = (self.position - state.start_offset) as usize;
            let to = ((end - state.start_offset) as usize).min(from + max.max(1));
            let locs: Vec<Loc> = state.index[from..to].to_vec();
            let paths: Vec<PathBuf> = state.segments.iter().map(|s| s.path.clone()).collect();
            (locs, paths)
        };
        let first = self.position;
        let deliveries = tokio::task::spawn_blocking(move || read_records(first, &locs, &paths))
            .await
            .map_err(|_| LogError::Closed)??;
        self.position += deliveries.len() as u64;
        Ok(deliveries)
    }

    async fn commit(&mut self, next_offset: u64) -> Result<()> {
        let path = self.commit_path.clone();
        tokio::task::spawn_blocking(move || write_offset_file(&path, next_offset))
            .await
            .map_err(|_| LogError::Closed)?
    }

    fn seek(&mut self, offset: u64) {
        self.position = offset;
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

fn read_records(first: u64, locs: &[Loc], paths: &[PathBuf]) -> Result<Vec<Delivery>> {
    let mut out = Vec::with_capacity(locs.len());
    let mut open: Option<(usize, File)> = None;
    for (i, loc) in locs.iter().enumerate() {
        let path = &paths[loc.segment];
        if open.as_ref().map(|(s, _)| *s) != Some(loc.segment) {
            open = Some((loc.segment, File::open(path).map_err(io_err(path))?));
        }
        let file = &mut open.as_mut().unwrap().1;
        file.seek(SeekFrom::Start(loc.pos)).map_err(io_err(path))?;
        let offset = first + i as u64;
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.display().to_string(),
            offset,
            reason,
        };
        let payload = match read_frame(file, true, path)? {
            Frame::Record { len, payload } if len == loc.len => payload,
            Frame::Record { .. } => return Err(corrupt("record length changed".into())),
            Frame::End => return Err(corrupt("record missing".into())),
            Frame::Bad(reason) => return Err(corrupt(reason)),
        };
        let (batch, header) = decode_payload(&payload).map_err(corrupt)?;
        out.push(Delivery {
            offset,
            batch,
            producer: header.producer,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(first: i64, rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let n: Vec<i64> = (first..first + rows as i64).collect();
        let s: Vec<String> = n.iter().map(|v| format!("row {v}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(n)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    fn record(first: i64, rows: usize, producer: &str, last_seq: u64) -> Record {
        Record {
            batch: batch(first, rows),
            producer: Some(ProducerMark {
                producer: producer.into(),
                last_seq,
            }),
        }
    }

    fn first_value(d: &Delivery) -> i64 {
        d.batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    }

    #[tokio::test]
    async fn append_reopen_and_consume_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalLogConfig {
            segment_bytes: 2048,
            ..Default::default()
        };
        {
            let log = LocalLog::open(dir.path(), config.clone()).unwrap();
            for i in 0..20u64 {
                let offs = log
                    .append(
                        Topic::Events,
                        vec![record(i as i64 * 10, 10, "a/1", (i + 1) * 10)],
                    )
                    .await
                    .unwrap();
                assert_eq!(offs, vec![i]);
            }
            assert_eq!(log.end_offset(Topic::Events), 20);
            assert_eq!(log.end_offset(Topic::Alerts), 0);
        }
        let segments = fs::read_dir(dir.path().join("events"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count();
        assert!(segments > 1, "small segment size must roll segments");

        let log = LocalLog::open(dir.path(), config).unwrap();
        assert_eq!(log.end_offset(Topic::Events), 20);
        assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(200));
        assert_eq!(log.producer_seq(Topic::Events, "b/2"), None);

        let mut c = log.consumer(Topic::Events, "g").await.unwrap();
        assert_eq!(c.position(), 0);
        c.seek(7);
        let got = c.poll(5, Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            got.iter().map(|d| d.offset).collect::<Vec<_>>(),
            vec![7, 8, 9, 10, 11]
        );
        assert_eq!(first_value(&got[0]), 70);
        assert_eq!(got[0].producer.as_ref().unwrap().last_seq, 80);
        c.commit(12).await.unwrap();
        drop(c);

        // A new consumer of the group resumes at the committed offset, and
        // sees appends made after it started waiting.
        let mut c = log.consumer(Topic::Events, "g").await.unwrap();
        assert_eq!(c.position(), 12);
        let rest = c.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(rest.len(), 8);
        assert!(c
            .poll(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty());
        let log = Arc::new(log);
        let appender = log.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            appender
                .append(Topic::Events, vec![record(1000, 3, "a/1", 203)])
                .await
                .unwrap()
        });
        let woke = c.poll(10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(woke.len(), 1);
        assert_eq!(woke[0].offset, 20);
        assert_eq!(task.await.unwrap(), vec![20]);
    }

    #[tokio::test]
    async fn concurrent_appends_get_dense_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap());
        let mut tasks = Vec::new();
        for p in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut offs = Vec::new();
                for i in 0..25u64 {
                    offs.extend(
                        log.append(Topic::Events, vec![record(0, 4, &format!("p{p}"), i + 1)])
                            .await
                            .unwrap(),
                    );
                }
                offs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        for p in 0..8 {
            assert_eq!(log.producer_seq(Topic::Events, &format!("p{p}")), Some(25));
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
            for i in 0..5 {
                log.append(Topic::Events, vec![record(i, 2, "a/1", i as u64 + 1)])
                    .await
                    .unwrap();
            }
        }
        let seg = segment_path(&dir.path().join("events"), 0);
        let full = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of writing the last record.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(full - 17).unwrap();
        drop(f);
        let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
        assert_eq!(log.end_offset(Topic::Events), 4);
        assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(4));
        // Appending continues right after the cut.
        assert_eq!(
            log.append(Topic::Events, vec![record(9, 1, "a/1", 5)])
                .await
                .unwrap(),
            vec![4]
        );
        let mut c = log.consumer(Topic::Events, "x").await.unwrap();
        let all = c.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(first_value(&all[4]), 9);
    }

    #[tokio::test]
    async fn a_flipped_bit_in_the_newest_segment_is_cut_in_an_older_one_reported() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalLogConfig {
            segment_bytes: 1,
            ..Default::default()
        };
        {
            let log = LocalLog::open(dir.path(), config.clone()).unwrap();
            for i in 0..3 {
                log.append(Topic::Events, vec![record(i, 2, "a/1", i as u64 + 1)])
                    .await
                    .unwrap();
            }
        }
        let flip = |base: u64| {
            let seg = segment_path(&dir.path().join("events"), base);
            let mut bytes = fs::read(&seg).unwrap();
            let n = bytes.len();
            bytes[n - 10] ^= 0x40;
            fs::write(&seg, bytes).unwrap();
        };
        flip(2);
        let log = LocalLog::open(dir.path(), config.clone()).unwrap();
        assert_eq!(log.end_offset(Topic::Events), 2);
        drop(log);
        // Sealed segments are not rescanned on open; a reader verifies every
        // record's CRC and names the file.
        flip(0);
        let log = LocalLog::open(dir.path(), config).unwrap();
        let mut c = log.consumer(Topic::Events, "x").await.unwrap();
        let err = c.poll(10, Duration::from_millis(10)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("00000000000000000000.seg") && text.contains("CRC"),
            "{text}"
        );
    }
}
