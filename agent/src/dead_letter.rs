//! The dead-letter file: events the collector refused, set aside so that an
//! operator can see why, fix them and replay them, instead of the agent
//! resending them forever or dropping them unseen.
//!
//! # On-disk format
//!
//! `<data_dir>/dead-letter.jsonl`, created at the first refusal, one JSON
//! object per line, oldest first:
//!
//! ```json
//! {"seq":1234,"reason":"ts 1763780000000000000 ns is 7300 s old, above the limit max_past_secs = 3600","refused_at":"2025-11-24T09:22:00Z","event":{"asset":"line1/press-01","kind":"CYCLE","name":"cycle","ts_ns":1763780000000000000,"value":11950.0}}
//! ```
//!
//! - `seq`: the sequence number the event was sent with (the one the
//!   collector's log line names);
//! - `reason`: the collector's reason, naming the broken limit;
//! - `refused_at`: when the agent received the refusal (RFC 3339, UTC);
//! - `event`: the event in the `file` source's line format, so that
//!   `jq -c .event dead-letter.jsonl`, once fixed, can be fed to a `file`
//!   source; replayed events get new sequence numbers.
//!
//! # Promises
//!
//! - A refused event is written here and fsync'd before the queue is
//!   trimmed past it (the sender calls [`DeadLetter::append`] before it
//!   acks the queue). Lines are written whole: a write or fsync that fails
//!   is cut back, and a torn last line left by a crash is cut off when the
//!   file is opened (its event was not trimmed yet, so it is sent again,
//!   refused again, and written again).
//! - A crash after the fsync and before the trim writes the event a second
//!   time after the restart: an event appears here at least once.
//! - The file never grows beyond `dead_letter_max_bytes`. Refusals that do
//!   not fit (or cannot be written at all) are still counted and logged with
//!   their sequence number and reason, never silently dropped; the log says
//!   that the file is full. Moving the file away (or emptying it) makes room
//!   again after a restart of the agent.

use otwatch_proto::{ControllerEvent, JsonEvent};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file's name under `data_dir`.
pub const FILE_NAME: &str = "dead-letter.jsonl";

/// One line of the dead-letter file (see the module doc).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterEntry {
    /// Sequence number the event was sent with.
    pub seq: u64,
    /// Why the collector refused it.
    pub reason: String,
    /// When the refusal arrived (RFC 3339, UTC).
    pub refused_at: String,
    /// The event, in the `file` source's line format.
    pub event: JsonEvent,
}

impl DeadLetterEntry {
    /// The entry for `event` (its `seq` as sent), refused for `reason` now.
    pub fn new(seq: u64, reason: &str, event: &ControllerEvent) -> Self {
        DeadLetterEntry {
            seq,
            reason: reason.to_string(),
            refused_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            event: JsonEvent::from_event(event),
        }
    }
}

/// Why the dead-letter file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter file {path}: {source}")]
pub struct DeadLetterError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// What became of one entry given to [`DeadLetter::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written and fsync'd.
    Stored,
    /// Not written: the file would have grown beyond its bound.
    Full,
    /// Not written: the write or fsync failed (the reason).
    Failed(String),
}

/// The dead-letter file, opened lazily at the first entry.
pub struct DeadLetter {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    /// Bytes in the file (whole lines only).
    bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DeadLetterError + '_ {
    move |source| DeadLetterError {
        path: path.display().to_string(),
        source,
    }
}

impl DeadLetter {
    /// Opens the dead-letter file of `data_dir` (if it exists), cutting off a
    /// torn last line. At most `max_bytes` are kept.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Self, DeadLetterError> {
        let path = data_dir.join(FILE_NAME);
        let mut dead_letter = DeadLetter {
            path,
            max_bytes,
            file: None,
            bytes: 0,
        };
        let path = dead_letter.path.clone();
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dead_letter),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let whole = Self::whole_lines_len(&mut file, len).map_err(io_err(&path))?;
        if whole < len {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = len - whole,
                "cutting a torn last line off the dead-letter file (its event was not trimmed from the queue and is sent again)"
            );
            file.set_len(whole)
                .and_then(|_| file.sync_all())
                .map_err(io_err(&path))?;
        }
        dead_letter.bytes = whole;
        Ok(dead_letter)
    }

    /// Length of the file up to and including its last newline.
    fn whole_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
        let mut end = len;
        let mut buf = vec![0u8; 64 * 1024];
        while end > 0 {
            let start = end.saturating_sub(buf.len() as u64);
            let chunk = &mut buf[..(end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(chunk)?;
            if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        Ok(0)
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bound on [`bytes`](Self::bytes).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends the entries that fit, each as one line, and fsyncs them
    /// before returning; says for each entry what became of it.
    pub fn append(&mut self, entries: &[DeadLetterEntry]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut buf = Vec::new();
        let before = self.bytes;
        for entry in entries {
            let mut line = serde_json::to_vec(entry).expect("a dead-letter entry serializes");
            line.push(b'\n');
            if self.bytes + (buf.len() + line.len()) as u64 > self.max_bytes {
                outcomes.push(Outcome::Full);
                continue;
            }
            buf.extend_from_slice(&line);
            outcomes.push(Outcome::Stored);
        }
        if buf.is_empty() {
            return outcomes;
        }
        if let Err(e) = self.write_durably(&buf) {
            // Whole lines only: cut back what part of this write landed.
            if let Some(f) = &self.file {
                let _ = f.set_len(before);
            }
            let reason = e.to_string();
            for o in &mut outcomes {
                if *o == Outcome::Stored {
                    *o = Outcome::Failed(reason.clone());
                }
            }
            return outcomes;
        }
        self.bytes += buf.len() as u64;
        outcomes
    }

    fn write_durably(&mut self, buf: &[u8]) -> Result<(), DeadLetterError> {
        if self.file.is_none() {
            let path = self.path.clone();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // The new directory entry must survive a crash with the lines.
            otwatch_fs::sync_dir(otwatch_fs::parent_of(&path)).map_err(|e| DeadLetterError {
                path: path.display().to_string(),
                source: e.into(),
            })?;
            self.file = Some(file);
        }
        let path = self.path.clone();
        let file = self.file.as_mut().expect("opened above");
        file.write_all(buf)
            .and_then(|_| file.sync_data())
            .map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otwatch_proto::EventKind;

    fn event(value: f64) -> ControllerEvent {
        ControllerEvent {
            seq: 7,
            ts_ns: 1_700_000_000_000_000_000,
            asset: "line1/press-01".into(),
            kind: EventKind::Cycle as i32,
            name: "cycle".into(),
            value: Some(value),
            ..Default::default()
        }
    }

    fn lines(dir: &Path) -> Vec<DeadLetterEntry> {
        std::fs::read_to_string(dir.join(FILE_NAME))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn entries_are_lines_the_file_source_can_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut dl = DeadLetter::open(dir.path(), 1 << 20).unwrap();
        assert!(
            !dir.path().join(FILE_NAME).exists(),
            "created before any refusal"
        );
        let entry = DeadLetterEntry::new(12, "too old", &event(1.5));
        assert_eq!(
            dl.append(std::slice::from_ref(&entry)),
            vec![Outcome::Stored]
        );
        let got = lines(dir.path());
        assert_eq!(got, vec![entry]);
        let replayed = got[0].event.clone().into_event().unwrap();
        assert_eq!(replayed.value, Some(1.5));
        assert_eq!(replayed.asset, "line1/press-01");
    }

    #[test]
    fn the_file_is_bounded_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let entry = DeadLetterEntry::new(1, "too old", &event(1.0));
        let line_len = serde_json::to_vec(&entry).unwrap().len() as u64 + 1;
        let mut dl = DeadLetter::open(dir.path(), 2 * line_len + 10).unwrap();
        let outcomes = dl.append(&[entry.clone(), entry.clone(), entry.clone()]);
        assert_eq!(
            outcomes,
            vec![Outcome::Stored, Outcome::Stored, Outcome::Full]
        );
        assert_eq!(dl.append(std::slice::from_ref(&entry)), vec![Outcome::Full]);
        assert_eq!(dl.bytes(), 2 * line_len);
        drop(dl);

        // A crash in the middle of a line: opening keeps the whole lines.
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"rea").unwrap();
        drop(f);
        let dl = DeadLetter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(dl.bytes(), 2 * line_len);
        assert_eq!(lines(dir.path()).len(), 2);

        // A bound of 0 keeps nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut dl = DeadLetter::open(dir.path(), 0).unwrap();
        assert_eq!(dl.append(&[entry]), vec![Outcome::Full]);
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
