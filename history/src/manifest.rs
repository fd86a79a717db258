//! Which files of a table are committed: the partition index, one manifest
//! per partition, and the record of acknowledged losses. The writer appends
//! to the first two with every flush (see [`crate::writer`] for when, and
//! why a crash at any moment leaves them right); readers, `check` and
//! `forget_missing` read them through this module, so every reader applies
//! the same rule for what is committed.
//!
//! # Formats
//!
//! All three are JSON lines: one object per line, every line ending in
//! `\n`, appended and never edited in place (recovery only cuts a tail).
//!
//! ```text
//! <table>/_partitions                  the partition index
//!   {"offset":C,"partition":"date=2024-05-01/hour=10"}
//! <table>/date=…/hour=…/_manifest      the files of one partition
//!   {"offset":C,"file":"plant-a-00000000000000000042-0.parquet","rows":60,"bytes":12345,
//!    "site":"plant-a","ts_min":1714557600000000000,"ts_max":1714561140000000000}
//! <table>/_lost                        losses an operator acknowledged
//!   {"at":"2024-05-02T08:00:00Z","reason":"missing_file","partition":"date=…/hour=10",
//!    "file":"plant-a-…-0.parquet","offset":42,"rows":60,"bytes":12345}
//! ```
//!
//! - `offset` is the committed offset the flush that appended the line
//!   started from (the same number as in the file names of that flush).
//!   A partition's line is appended by the first flush that writes into
//!   it; a file's line by the flush that wrote the file.
//! - `rows` and `bytes` are the file's row count and size when committed;
//!   a file of another size is damaged, and a lost file's rows are known.
//! - `site` (the `site` value every row of the file holds) and `ts_min` /
//!   `ts_max` (the smallest and largest `ts`, nanoseconds since the epoch,
//!   UTC) let a scan skip files without opening them (see [`crate::scan`]).
//!   Lines written before otwatch recorded them have none: such a file is
//!   never skipped on their account.
//! - A file line may name a file that compaction wrote
//!   (`<site>-<offset>-c<stamp>-<n>.parquet`, see [`crate::compact`]); its
//!   `offset` is the largest offset of the files it replaced, so the
//!   committed-prefix rule below treats it like any committed line.
//! - `_lost` has a `reason`: `missing_file` and `missing_partition` (an
//!   operator ran `forget_missing`), `manifest_rebuilt` (a partition's
//!   manifest was gone or corrupt and was rebuilt from the files present,
//!   so files missing at that moment can no longer be named) and
//!   `unreadable` (a file the writer could not read when it indexed a table
//!   from before manifests). `file`, `offset`, `rows` and `bytes` are there
//!   when known. A record only stops queries from requiring a file or
//!   partition: if it comes back (restored from a backup), it is read again.
//!
//! # What is committed
//!
//! With `next_offset` from `_committed` read **first**, the committed lines
//! of `_partitions` and of a `_manifest` are the complete lines before the
//! first line whose `offset` is at or above `next_offset`. Lines are
//! appended in flush order and a flush's lines are durable before its
//! commit, so what follows the committed lines can only belong to a flush
//! in progress (or one that crashed, whose lines the writer cuts when it
//! opens): readers stop there, including at a last line without its `\n`.
//! A complete line before that point that is not a valid entry is
//! corruption, never the normal state of a crash, and is reported as
//! [`IntegrityError::CorruptManifest`] rather than skipped.

use crate::error::IntegrityError;
use crate::writer::{COMMIT_FILE, DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The partition index of a table.
pub const PARTITIONS_FILE: &str = "_partitions";
/// The manifest in each partition directory.
pub const MANIFEST_FILE: &str = "_manifest";
/// The record of acknowledged losses of a table.
pub const LOST_FILE: &str = "_lost";

/// A line of `_partitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionEntry {
    pub offset: u64,
    /// `date=YYYY-MM-DD/hour=H`.
    pub partition: String,
}

/// A line of a `_manifest`: one committed data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub offset: u64,
    /// The file name within the partition directory.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// The site of every row of the file, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The smallest `ts` in the file (ns since the epoch), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_min: Option<i64>,
    /// The largest `ts` in the file (ns since the epoch), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_max: Option<i64>,
}

/// Why a loss was recorded in `_lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReason {
    /// A committed file was missing; an operator acknowledged it.
    MissingFile,
    /// A committed partition had no manifest and no directory; an operator
    /// acknowledged it.
    MissingPartition,
    /// A partition's manifest was gone or corrupt and was rebuilt from the
    /// files present: files missing at that moment cannot be named.
    ManifestRebuilt,
    /// A file of a table from before manifests could not be read when the
    /// table was indexed; it is not part of the table.
    Unreadable,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::MissingFile => "missing file",
            LossReason::MissingPartition => "missing partition",
            LossReason::ManifestRebuilt => "manifest rebuilt",
            LossReason::Unreadable => "unreadable file",
        })
    }
}

/// A line of `_lost`: one acknowledged loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRecord {
    /// When it was recorded, RFC 3339 UTC.
    pub at: String,
    pub reason: LossReason,
    /// `date=YYYY-MM-DD/hour=H`.
    pub partition: String,
    /// The file name within the partition, for a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The offset of the flush that committed the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Rows lost, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes lost, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl LostRecord {
    pub(crate) fn new(reason: LossReason, partition: &str) -> Self {
        LostRecord {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason,
            partition: partition.to_owned(),
            file: None,
            offset: None,
            rows: None,
            bytes: None,
        }
    }

    pub(crate) fn for_file(reason: LossReason, partition: &str, entry: &FileEntry) -> Self {
        LostRecord {
            file: Some(entry.file.clone()),
            offset: Some(entry.offset),
            rows: Some(entry.rows),
            bytes: Some(entry.bytes),
            ..LostRecord::new(reason, partition)
        }
    }
}

/// Lines of the two committed-prefix files.
pub(crate) trait Tagged: DeserializeOwned {
    fn offset(&self) -> u64;
    /// Why the entry is not acceptable (a path that leaves the table, a
    /// malformed partition), if it is not.
    fn invalid(&self) -> Option<String>;
}

impl Tagged for PartitionEntry {
    fn offset(&self) -> u64 {
        self.offset
    }
    fn invalid(&self) -> Option<String> {
        (!is_partition_name(&self.partition)).then(|| {
            format!(
                "{:?} is not a date=YYYY-MM-DD/hour=H partition",
                self.partition
            )
        })
    }
}

impl Tagged for FileEntry {
    fn offset(&self) -> u64 {
        self.offset
    }
    fn invalid(&self) -> Option<String> {
        (!is_data_file_name(&self.file))
            .then(|| format!("{:?} is not a Parquet file name", self.file))
    }
}

/// The committed part of a `_partitions` or `_manifest` file.
#[derive(Debug)]
pub(crate) struct Prefix<T> {
    /// The committed entries, in file order.
    pub entries: Vec<T>,
}

/// Splits `text` (the contents of `path`) into its committed lines and the
/// uncommitted tail; see the module documentation for the rule.
pub(crate) fn committed_prefix<T: Tagged>(
    path: &Path,
    text: &[u8],
    next_offset: u64,
) -> Result<Prefix<T>, IntegrityError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let mut line = 0;
    while let Some(end) = text[pos..].iter().position(|&b| b == b'\n') {
        line += 1;
        let corrupt = |detail: String| IntegrityError::CorruptManifest {
            path: path.to_path_buf(),
            line,
            detail,
        };
        let entry: T = serde_json::from_slice(&text[pos..pos + end])
            .map_err(|e| corrupt(format!("not an entry: {e}")))?;
        if let Some(why) = entry.invalid() {
            return Err(corrupt(why));
        }
        if entry.offset() >= next_offset {
            break;
        }
        entries.push(entry);
        pos += end + 1;
    }
    Ok(Prefix { entries })
}

/// Reads the committed part of `path`; `None` when the file does not exist.
pub(crate) fn read_prefix<T: Tagged>(
    path: &Path,
    next_offset: u64,
) -> Result<Option<Prefix<T>>, HistoryError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HistoryError::io("reading", path)(e)),
    };
    Ok(Some(committed_prefix(path, &text, next_offset)?))
}

/// Whether a manifest ends exactly after its committed lines, judged from
/// its last line only (a flush appends at the end, so only the end can
/// hold an uncommitted tail). Lets the writer's recovery read a few
/// kilobytes per partition instead of every manifest whole.
pub(crate) fn tail_is_committed(path: &Path, next_offset: u64) -> Result<bool, HistoryError> {
    const TAIL: u64 = 4096;
    let mut file = File::open(path).map_err(HistoryError::io("opening", path))?;
    let len = file
        .metadata()
        .map_err(HistoryError::io("inspecting", path))?
        .len();
    if len == 0 {
        return Ok(true);
    }
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))
        .and_then(|_| {
            let mut buf = Vec::with_capacity((len - start) as usize);
            file.read_to_end(&mut buf).map(|_| buf)
        })
        .map_err(HistoryError::io("reading", path))
        .map(|buf| {
            let Some(body) = buf.strip_suffix(b"\n") else {
                return false;
            };
            let last = match body.iter().rposition(|&b| b == b'\n') {
                Some(i) => &body[i + 1..],
                // The whole tail is one line: unless it starts the file, it
                // may be cut off; let the full read decide.
                None if start > 0 => return false,
                None => body,
            };
            serde_json::from_slice::<serde_json::Value>(last)
                .ok()
                .and_then(|v| v.get("offset").and_then(serde_json::Value::as_u64))
                .is_some_and(|offset| offset < next_offset)
        })
}

/// Appends `lines` (each ending in `\n`) to `path` in one write and fsyncs
/// the file. With `create`, a missing file is created; the caller fsyncs
/// the directory then. Returns whether the file was created.
pub(crate) fn append(path: &Path, lines: &[u8], create: bool) -> Result<bool, HistoryError> {
    let mut file = match OpenOptions::new().append(true).open(path) {
        Ok(file) => (file, false),
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => (
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(HistoryError::io("creating", path))?,
            true,
        ),
        Err(e) => return Err(HistoryError::io("opening", path)(e)),
    };
    file.0
        .write_all(lines)
        .map_err(HistoryError::io("appending to", path))?;
    file.0
        .sync_all()
        .map_err(HistoryError::io("syncing", path))?;
    Ok(file.1)
}

/// Cuts `path` to its first `len` bytes, durably. Needs no free space,
/// unlike a rewrite, so recovery works on a full disk.
pub(crate) fn truncate(path: &Path, len: u64) -> Result<(), HistoryError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(HistoryError::io("opening", path))?;
    file.set_len(len)
        .map_err(HistoryError::io("truncating", path))?;
    file.sync_all().map_err(HistoryError::io("syncing", path))
}

/// One JSON line per item.
pub(crate) fn lines<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item).expect("entries serialize");
        out.push(b'\n');
    }
    out
}

/// Appends loss records to `<dir>/_lost`. Safe beside a running writer and
/// another caller: every append is one `O_APPEND` write, and a last line
/// left without its `\n` by a crash is closed first so it cannot swallow
/// the new record.
pub(crate) fn append_lost(dir: &Path, records: &[LostRecord]) -> Result<(), HistoryError> {
    if records.is_empty() {
        return Ok(());
    }
    let path = dir.join(LOST_FILE);
    let mut text = Vec::new();
    match fs::read(&path) {
        Ok(old) if !old.is_empty() && !old.ends_with(b"\n") => text.push(b'\n'),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    }
    text.extend(lines(records));
    if append(&path, &text, true)? {
        otwatch_fs::sync_dir(dir)?;
    }
    Ok(())
}

/// The acknowledged losses of a table, and how many lines of `_lost` could
/// not be read (a record lost that way only makes a query fail again on
/// the same loss, which is the safe direction).
pub(crate) fn read_lost(dir: &Path) -> Result<(Vec<LostRecord>, usize), HistoryError> {
    let path = dir.join(LOST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let bytes = fs::read(&path).map_err(HistoryError::io("reading", &path))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    let mut records = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<LostRecord>(line) {
            Ok(r)
                if is_partition_name(&r.partition)
                    && r.file.as_deref().is_none_or(is_data_file_name) =>
            {
                records.push(r)
            }
            _ => bad += 1,
        }
    }
    Ok((records, bad))
}

/// What a reader needs to know about a table before it looks at any
/// partition: the committed offset, the committed partitions and the
/// acknowledged losses.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// `<root>/<table>`.
    pub dir: PathBuf,
    pub next_offset: u64,
    /// Committed partitions, `date=…/hour=…`.
    pub partitions: BTreeSet<String>,
    pub lost: Lost,
}

/// Acknowledged losses, for lookups.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lost {
    pub files: HashSet<(String, String)>,
    pub partitions: HashSet<String>,
}

impl Lost {
    pub fn from_records(records: &[LostRecord]) -> Self {
        let mut lost = Lost::default();
        for r in records {
            match (&r.reason, &r.file) {
                (LossReason::MissingPartition, _) => {
                    lost.partitions.insert(r.partition.clone());
                }
                (_, Some(file)) => {
                    lost.files.insert((r.partition.clone(), file.clone()));
                }
                _ => {}
            }
        }
        lost
    }

    pub fn has_file(&self, partition: &str, file: &str) -> bool {
        self.files
            .contains(&(partition.to_owned(), file.to_owned()))
    }
}

/// Reads the committed state of `<root>/<table>` in the order the rule
/// needs (`_committed` first). `None` for a table that was never written.
pub(crate) fn read_committed(root: &Path, table: Table) -> Result<Option<Committed>, HistoryError> {
    let dir = root.join(table.name());
    let next_offset = crate::writer::read_commit(&dir)?;
    let index = dir.join(PARTITIONS_FILE);
    let Some(next_offset) = next_offset else {
        return match fs::metadata(&index) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HistoryError::io("inspecting", &index)(e)),
            // A fresh table has an empty index and no commit yet; an index
            // with lines means flushes were committed.
            Ok(meta) if meta.len() == 0 => Ok(None),
            Ok(_) => Err(IntegrityError::CommitMissing {
                path: dir.join(COMMIT_FILE),
                detail: format!("{} lists partitions", index.display()),
            }
            .into()),
        };
    };
    let Some(prefix) = read_prefix::<PartitionEntry>(&index, next_offset)? else {
        return Err(IntegrityError::NotIndexed {
            table: table.name(),
            dir,
        }
        .into());
    };
    let (records, _) = read_lost(&dir)?;
    Ok(Some(Committed {
        next_offset,
        partitions: prefix.entries.into_iter().map(|e| e.partition).collect(),
        lost: Lost::from_records(&records),
        dir,
    }))
}

/// `date=YYYY-MM-DD/hour=H` as the writer spells it (hour 0..=23, not zero
/// padded), and nothing else: manifests name paths, so a tampered line must
/// not lead a reader out of the table.
pub(crate) fn is_partition_name(s: &str) -> bool {
    let Some((date, hour)) = s.split_once('/') else {
        return false;
    };
    let date_ok = date
        .strip_prefix(DATE_COLUMN)
        .and_then(|d| d.strip_prefix('='))
        .and_then(|d| {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .ok()
                .map(|p| (d, p))
        })
        .is_some_and(|(d, p)| p.format("%Y-%m-%d").to_string() == d);
    let hour_ok = hour
        .strip_prefix(HOUR_COLUMN)
        .and_then(|h| h.strip_prefix('='))
        .and_then(|h| h.parse::<u32>().ok().map(|n| (h, n)))
        .is_some_and(|(h, n)| n < 24 && n.to_string() == h);
    date_ok && hour_ok
}

/// A plain `*.parquet` name of one path component that no reader hides.
pub(crate) fn is_data_file_name(s: &str) -> bool {
    s.len() > ".parquet".len()
        && s.ends_with(".parquet")
        && !s.starts_with(['.', '_'])
        && !s.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str, next: u64) -> Result<Prefix<FileEntry>, IntegrityError> {
        committed_prefix(Path::new("m"), text.as_bytes(), next)
    }

    const A: &str = r#"{"offset":1,"file":"a-1-0.parquet","rows":2,"bytes":3}"#;
    const B: &str = r#"{"offset":5,"file":"a-5-0.parquet","rows":2,"bytes":3}"#;

    #[test]
    fn the_committed_prefix_stops_at_the_first_uncommitted_line() {
        let text = format!("{A}\n{B}\n");
        assert_eq!(prefix(&text, 5).unwrap().entries.len(), 1);
        assert_eq!(prefix(&text, 6).unwrap().entries.len(), 2);
        // A line cut off by a crash or still being written.
        let torn = format!("{A}\n{}", &B[..10]);
        assert_eq!(prefix(&torn, 99).unwrap().entries.len(), 1);
        // Garbage after the first uncommitted line is that flush's tail.
        assert_eq!(
            prefix(&format!("{A}\n{B}\nxx\n"), 5).unwrap().entries.len(),
            1
        );
    }

    #[test]
    fn a_bad_line_among_committed_ones_is_corruption() {
        let err = prefix(&format!("{A}\nnot json\n{B}\n"), 9).unwrap_err();
        assert!(
            matches!(err, IntegrityError::CorruptManifest { line: 2, .. }),
            "{err}"
        );
        let escape = r#"{"offset":1,"file":"../../etc/x.parquet","rows":1,"bytes":1}"#;
        let err = prefix(&format!("{escape}\n"), 9).unwrap_err();
        assert!(err.to_string().contains("not a Parquet file name"), "{err}");
    }

    #[test]
    fn partition_names_are_exactly_the_writers() {
        assert!(is_partition_name("date=2024-05-01/hour=7"));
        assert!(is_partition_name("date=2024-05-01/hour=23"));
        assert!(!is_partition_name("date=2024-05-01/hour=07"));
        assert!(!is_partition_name("date=2024-05-01/hour=24"));
        assert!(!is_partition_name("date=2024-5-1/hour=7"));
        assert!(!is_partition_name("date=2024-05-01/hour=7/.."));
        assert!(!is_partition_name("../date=2024-05-01/hour=7"));
    }

    #[test]
    fn the_tail_check_reads_only_the_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        assert!(tail_is_committed(&path, 6).unwrap());
        assert!(!tail_is_committed(&path, 5).unwrap());
        fs::write(&path, format!("{A}\n{}", &B[..9])).unwrap();
        assert!(!tail_is_committed(&path, 99).unwrap());
        fs::write(&path, "").unwrap();
        assert!(tail_is_committed(&path, 0).unwrap());
    }
}
