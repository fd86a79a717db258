//! Writing a history table: Parquet files partitioned by time and site,
//! committed atomically together with the event-log offset they reach.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/<table>/                      table: events | alerts
//!   _committed                         {"next_offset":N}, the log offset the next write continues from
//!   _committed.tmp                     only while a commit is in flight
//!   date=YYYY-MM-DD/                   UTC date of `ts`
//!     hour=H/                          UTC hour of `ts`, 0..=23, not zero padded
//!       <site>-<offset>-<n>.parquet    one file per (date, hour, site) per flush
//!       .<site>-<offset>-<n>.parquet.tmp   only while that file is being written
//! ```
//!
//! - `<site>` is the site id reduced to `[A-Za-z0-9_-]` (other characters
//!   become `_`, at most 64 characters, always starting with a letter or
//!   digit so that no reader treats the file as hidden). It only keeps names
//!   readable and distinct; the `site` column inside the file is the truth.
//! - `<offset>` is the committed offset the flush started from, as 20 decimal
//!   digits; `<n>` numbers the files of one flush.
//! - Files are zstd Parquet with the table's Arrow schema embedded, rows of
//!   one file share date, hour and site; within a file of a batch that spanned
//!   several partitions rows are ordered by `ts`. Row groups and pages carry
//!   min/max statistics, so `ts` ranges prune inside files as `date`/`hour`
//!   prune directories.
//! - `hour` is not zero padded because DataFusion derives the directory
//!   prefix it lists for `hour = 7` from the literal's text: with `hour=07`
//!   such a query would silently find nothing.
//!
//! # Recovery invariant
//!
//! A flush that starts at committed offset `C` names all its files with `C`,
//! makes every one of them durable (written to a temporary name, fsync'd,
//! renamed, directory fsync'd) and only then replaces `_committed` with its
//! new offset `N > C` (temporary file, fsync, rename, fsync of the table
//! directory). A flush that carries rows must advance the offset, so no two
//! committed flushes share an offset. Hence at any moment:
//!
//! > a data file whose offset is below `next_offset` in `_committed` belongs to
//! > a committed flush; a file whose offset is at or above it belongs to a
//! > flush whose commit never happened.
//!
//! [`TableWriter::open`] deletes the latter (and any temporary file) and
//! fsyncs the directories before it returns, so the files on disk hold
//! exactly the rows of offsets below `next_offset`; the consumer re-reads
//! the log from there. Readers listing the directories while a flush is in
//! progress may see its files shortly before the commit.
//!
//! One writer per table: two writers on the same directory would break the
//! invariant.

use crate::{HistoryError, Table};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, lexsort_to_indices, partition, take, take_record_batch, SortColumn};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampNanosecondType};
use chrono::{DateTime, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the commit file in a table directory.
pub const COMMIT_FILE: &str = "_committed";
/// Name of the hive partition column holding the UTC date of `ts`.
pub const DATE_COLUMN: &str = "date";
/// Name of the hive partition column holding the UTC hour (0..=23) of `ts`.
pub const HOUR_COLUMN: &str = "hour";

const COMMIT_TMP: &str = "_committed.tmp";
const TMP_SUFFIX: &str = ".tmp";
const PARQUET_SUFFIX: &str = ".parquet";
const OFFSET_DIGITS: usize = 20;
const MAX_SITE_CHARS: usize = 64;
const NS_PER_HOUR: i64 = 3_600_000_000_000;
/// zstd level 3: the library default, a good ratio at a cost well below
/// the rate at which the log produces data.
const ZSTD_LEVEL: i32 = 3;

/// What one [`TableWriter::write`] put on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows written.
    pub rows: usize,
    /// Parquet files created.
    pub files: usize,
    /// Total size of the files created.
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Commit {
    next_offset: u64,
}

/// Writes one table of the history; see the module documentation for the
/// layout and the crash-recovery invariant.
#[derive(Debug)]
pub struct TableWriter {
    table: Table,
    schema: SchemaRef,
    dir: PathBuf,
    next_offset: u64,
    props: WriterProperties,
    /// Set when a write failed after it started touching the disk: files of
    /// that flush may remain, and only the recovery in [`TableWriter::open`]
    /// may decide what to keep.
    poisoned: bool,
}

impl TableWriter {
    /// Opens (creating) `<root>/<table>/`. Recovers after a crash: files
    /// written by a flush whose offset was never committed are deleted.
    pub fn open(root: &Path, table: Table) -> Result<Self, HistoryError> {
        let dir = root.join(table.name());
        create_dirs(&dir)?;
        let next_offset = read_commit(&dir)?;
        let removed = recover(&dir, next_offset)?;
        if removed > 0 {
            tracing::warn!(
                table = table.name(),
                next_offset,
                removed,
                "removed files of a flush that was never committed"
            );
        }
        tracing::debug!(table = table.name(), next_offset, dir = %dir.display(), "history table open");
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(ZSTD_LEVEL).expect("zstd level 3 is valid"),
            ))
            .build();
        Ok(TableWriter {
            table,
            schema: table.schema(),
            dir,
            next_offset,
            props,
            poisoned: false,
        })
    }

    /// The table this writer writes.
    pub fn table(&self) -> Table {
        self.table
    }

    /// The table directory, `<root>/<table>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The event-log offset the next write continues from (0 for a new
    /// table). The caller (a log consumer) resumes from here.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Writes the batches (all with the table's schema) durably as Parquet
    /// (zstd), partitioned by date and hour of `ts` and by site; then commits
    /// `next_offset` atomically (tmp+fsync+rename, fsync dir). Exactly-once:
    /// after any crash, the files on disk hold exactly the rows of the
    /// committed offsets.
    ///
    /// `next_offset` may equal the current offset only when the batches hold
    /// no rows (then nothing happens); it must never go backwards. After an
    /// error from the disk the writer refuses further writes until it is
    /// reopened, which runs recovery.
    pub fn write(
        &mut self,
        batches: &[RecordBatch],
        next_offset: u64,
    ) -> Result<WriteStats, HistoryError> {
        let table = self.table.name();
        if self.poisoned {
            return Err(HistoryError::Poisoned { table });
        }
        if next_offset < self.next_offset {
            return Err(HistoryError::OffsetBehind {
                table,
                committed: self.next_offset,
                requested: next_offset,
            });
        }
        let batches = self.conform(batches)?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 0 && next_offset == self.next_offset {
            return Err(HistoryError::OffsetNotAdvanced {
                table,
                offset: next_offset,
                rows,
            });
        }
        if next_offset == self.next_offset {
            return Ok(WriteStats::default());
        }
        let parts = self.partition(&batches)?;

        let mut written = Vec::with_capacity(parts.len());
        let stats = match self.write_files(&parts, &mut written) {
            Ok(stats) => stats,
            Err(e) => {
                self.poisoned = true;
                // Nothing of this flush is committed: removing its files
                // spares readers rows that recovery would remove anyway
                // (best effort; recovery on reopen is the guarantee).
                for path in &written {
                    let _ = fs::remove_file(path);
                }
                return Err(e);
            }
        };
        if let Err(e) = write_commit(&self.dir, next_offset) {
            // The new commit may or may not have reached the disk, so the
            // files must stay: recovery on reopen keeps or removes them
            // according to the commit file it finds.
            self.poisoned = true;
            return Err(e);
        }
        self.next_offset = next_offset;
        tracing::debug!(
            table,
            next_offset,
            rows = stats.rows,
            files = stats.files,
            bytes = stats.bytes,
            "history flush committed"
        );
        Ok(stats)
    }

    /// Checks every batch against the table schema and rebinds it to the
    /// canonical schema object (cheap: columns are shared), so schema
    /// metadata on incoming batches never leaks into files.
    fn conform(&self, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, HistoryError> {
        let table = self.table.name();
        let mut out = Vec::with_capacity(batches.len());
        for (index, batch) in batches.iter().enumerate() {
            let conformed = {
                let expected = self.schema.fields();
                let actual = batch.schema();
                if actual.fields().len() != expected.len() {
                    return Err(HistoryError::Schema {
                        table,
                        index,
                        detail: format!(
                            "{} columns, expected {}",
                            actual.fields().len(),
                            expected.len()
                        ),
                    });
                }
                for (a, e) in actual.fields().iter().zip(expected.iter()) {
                    if a.name() != e.name() || a.data_type() != e.data_type() {
                        return Err(HistoryError::Schema {
                            table,
                            index,
                            detail: format!(
                                "column {} of type {} where {} of type {} was expected",
                                a.name(),
                                a.data_type(),
                                e.name(),
                                e.data_type()
                            ),
                        });
                    }
                }
                // Also rejects nulls in non-nullable columns.
                RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    batch.columns().to_vec(),
                    &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
                )
                .map_err(|e| HistoryError::Schema {
                    table,
                    index,
                    detail: e.to_string(),
                })?
            };
            if conformed.num_rows() > 0 {
                out.push(conformed);
            }
        }
        Ok(out)
    }

    /// Groups the rows of all batches by (hour of `ts`, site). Each batch is
    /// split with kernels: a batch that already belongs to one partition (the
    /// usual case: one agent, one hour) is kept whole; otherwise it is sorted
    /// once by (hour, site, ts), taken, and sliced at the partition
    /// boundaries. Slices share the taken buffers; no row is copied twice.
    fn partition(
        &self,
        batches: &[RecordBatch],
    ) -> Result<BTreeMap<(i64, String), Vec<RecordBatch>>, HistoryError> {
        let ts_idx = self.schema.index_of("ts").expect("both tables have ts");
        let site_idx = self.schema.index_of("site").expect("both tables have site");
        let mut parts: BTreeMap<(i64, String), Vec<RecordBatch>> = BTreeMap::new();
        for batch in batches {
            let table = self.table;
            // The context is formatted only if a kernel fails.
            let fail = |what: &'static str| {
                move |source| HistoryError::Arrow {
                    context: format!("partitioning {table} batch: {what}"),
                    source,
                }
            };
            let hours = hour_buckets(batch.column(ts_idx));
            let site = Arc::clone(batch.column(site_idx));
            let ranges = partition(&[Arc::clone(&hours), Arc::clone(&site)])
                .map_err(fail("finding partitions"))?;
            let (batch, hours, site, ranges) = if ranges.len() <= 1 {
                (batch.clone(), hours, site, ranges.ranges())
            } else {
                let order = lexsort_to_indices(
                    &[
                        SortColumn {
                            values: Arc::clone(&hours),
                            options: None,
                        },
                        SortColumn {
                            values: site,
                            options: None,
                        },
                        SortColumn {
                            values: Arc::clone(batch.column(ts_idx)),
                            options: None,
                        },
                    ],
                    None,
                )
                .map_err(fail("sorting"))?;
                let sorted = take_record_batch(batch, &order).map_err(fail("taking rows"))?;
                let hours = take(hours.as_ref(), &order, None).map_err(fail("taking hours"))?;
                let site = Arc::clone(sorted.column(site_idx));
                let ranges = partition(&[Arc::clone(&hours), Arc::clone(&site)])
                    .map_err(fail("finding partitions"))?
                    .ranges();
                (sorted, hours, site, ranges)
            };
            let hours = hours.as_primitive::<Int64Type>();
            for range in ranges {
                let site_name =
                    string_at(site.as_ref(), range.start).map_err(fail("reading site"))?;
                parts
                    .entry((hours.value(range.start), site_name))
                    .or_default()
                    .push(batch.slice(range.start, range.len()));
            }
        }
        Ok(parts)
    }

    /// Writes one file per partition and makes them durable, renames
    /// included. `written` collects final file paths as they appear, for
    /// cleanup.
    fn write_files(
        &self,
        parts: &BTreeMap<(i64, String), Vec<RecordBatch>>,
        written: &mut Vec<PathBuf>,
    ) -> Result<WriteStats, HistoryError> {
        let mut stats = WriteStats::default();
        let mut dirs = BTreeSet::new();
        for (n, ((hour, site), batches)) in parts.iter().enumerate() {
            let dir = self.dir.join(partition_dir(*hour));
            create_dirs(&dir)?;
            let name = file_name(site, self.next_offset, n);
            let bytes = write_parquet(&dir, &name, &self.schema, batches, &self.props, written)?;
            stats.rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            stats.files += 1;
            stats.bytes += bytes;
            dirs.insert(dir);
        }
        // The renames must be durable before the commit can point past them.
        for dir in &dirs {
            sync_dir(dir)?;
        }
        Ok(stats)
    }
}

/// The hour bucket (hours since the epoch, floored) of every timestamp.
fn hour_buckets(ts: &ArrayRef) -> ArrayRef {
    let ts = ts.as_primitive::<TimestampNanosecondType>();
    // div_euclid floors, so instants before 1970 land in the right hour.
    Arc::new(ts.unary::<_, Int64Type>(|v| v.div_euclid(NS_PER_HOUR)))
}

/// The string value of row `i` of a `Utf8` or dictionary-of-`Utf8` column.
fn string_at(array: &dyn Array, i: usize) -> Result<String, arrow::error::ArrowError> {
    let one = cast(&array.slice(i, 1), &DataType::Utf8)?;
    Ok(one.as_string::<i32>().value(0).to_owned())
}

/// `date=YYYY-MM-DD/hour=H` of an hour bucket.
fn partition_dir(hour_bucket: i64) -> PathBuf {
    let start = DateTime::from_timestamp(hour_bucket * 3600, 0)
        .expect("every i64 nanosecond timestamp is within chrono's range");
    PathBuf::from(format!("{DATE_COLUMN}={}", start.format("%Y-%m-%d")))
        .join(format!("{HOUR_COLUMN}={}", start.hour()))
}

/// `<site>-<offset, 20 digits>-<n>.parquet`.
fn file_name(site: &str, offset: u64, n: usize) -> String {
    format!(
        "{}-{offset:0width$}-{n}{PARQUET_SUFFIX}",
        sanitize_site(site),
        width = OFFSET_DIGITS
    )
}

/// Reduces a site id to characters every filesystem and object store
/// accepts, starting with an alphanumeric so no reader hides the file
/// (pyarrow skips names starting with `_` or `.`).
fn sanitize_site(site: &str) -> String {
    let mut out: String = site
        .chars()
        .take(MAX_SITE_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert_str(0, "site");
    }
    out
}

/// The flush offset in a data file name, if the name is one.
fn flush_offset(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(PARQUET_SUFFIX)?;
    let (rest, n) = stem.rsplit_once('-')?;
    let (_site, offset) = rest.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(n) || offset.len() != OFFSET_DIGITS || !digits(offset) {
        return None;
    }
    offset.parse().ok()
}

/// Writes `batches` to `<dir>/<name>` through a temporary file; returns the
/// file size. The file is fsync'd before the rename; the caller fsyncs `dir`.
fn write_parquet(
    dir: &Path,
    name: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    props: &WriterProperties,
    written: &mut Vec<PathBuf>,
) -> Result<u64, HistoryError> {
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let result = (|| {
        let file = File::create(&tmp).map_err(HistoryError::io("creating", &tmp))?;
        let parquet = |source| HistoryError::Parquet {
            path: tmp.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, Arc::clone(schema), Some(props.clone())).map_err(parquet)?;
        for batch in batches {
            writer.write(batch).map_err(parquet)?;
        }
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(HistoryError::io("syncing", &tmp))?;
        let bytes = file
            .metadata()
            .map_err(HistoryError::io("reading size of", &tmp))?
            .len();
        fs::rename(&tmp, &path).map_err(HistoryError::io("renaming into place", &path))?;
        Ok(bytes)
    })();
    match result {
        Ok(bytes) => {
            written.push(path);
            Ok(bytes)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads the committed offset; a table without a commit file starts at 0.
/// A leftover temporary commit is discarded: its rename never happened.
fn read_commit(dir: &Path) -> Result<u64, HistoryError> {
    let tmp = dir.join(COMMIT_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HistoryError::io("removing", &tmp)(e)),
    }
    let path = dir.join(COMMIT_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    let commit: Commit = serde_json::from_slice(&text)
        .map_err(|source| HistoryError::CorruptCommit { path, source })?;
    Ok(commit.next_offset)
}

/// Replaces the commit file atomically and durably.
fn write_commit(dir: &Path, next_offset: u64) -> Result<(), HistoryError> {
    let mut text = serde_json::to_vec(&Commit { next_offset }).expect("a u64 serializes");
    text.push(b'\n');
    Ok(otwatch_fs::write_atomic(&dir.join(COMMIT_FILE), &text)?)
}

/// Deletes temporary files and the files of uncommitted flushes under
/// `date=*/hour=*/`, and fsyncs each directory it changed so that a deleted
/// file cannot come back after a crash and pass as committed once the offset
/// moves past it. Returns how many files it removed.
fn recover(dir: &Path, next_offset: u64) -> Result<usize, HistoryError> {
    let mut removed = 0;
    for date in partition_subdirs(dir, DATE_COLUMN)? {
        for hour in partition_subdirs(&date, HOUR_COLUMN)? {
            let mut changed = false;
            for entry in fs::read_dir(&hour).map_err(HistoryError::io("listing", &hour))? {
                let entry = entry.map_err(HistoryError::io("listing", &hour))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stale = name.ends_with(TMP_SUFFIX)
                    || flush_offset(name).is_some_and(|offset| offset >= next_offset);
                if stale {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(HistoryError::io("removing", &path))?;
                    tracing::debug!(path = %path.display(), "removed uncommitted file");
                    removed += 1;
                    changed = true;
                }
            }
            if changed {
                sync_dir(&hour)?;
            }
        }
    }
    Ok(removed)
}

/// The subdirectories of `dir` named `<column>=...`.
fn partition_subdirs(dir: &Path, column: &str) -> Result<Vec<PathBuf>, HistoryError> {
    let prefix = format!("{column}=");
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(HistoryError::io("listing", dir))? {
        let entry = entry.map_err(HistoryError::io("listing", dir))?;
        let is_dir = entry
            .file_type()
            .map_err(HistoryError::io("inspecting", &entry.path()))?
            .is_dir();
        if is_dir
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Creates `path` and any missing ancestors durably.
fn create_dirs(path: &Path) -> Result<(), HistoryError> {
    Ok(otwatch_fs::create_dir_all_durable(path)?)
}

fn sync_dir(dir: &Path) -> Result<(), HistoryError> {
    Ok(otwatch_fs::sync_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_their_offset() {
        let name = file_name("plant-a", 42, 3);
        assert_eq!(name, "plant-a-00000000000000000042-3.parquet");
        assert_eq!(flush_offset(&name), Some(42));
        assert_eq!(flush_offset(&file_name("", u64::MAX, 0)), Some(u64::MAX));
        assert_eq!(flush_offset("notes.parquet"), None);
        assert_eq!(flush_offset("a-42-1.parquet"), None);
        assert_eq!(flush_offset("a-00000000000000000042-1.parquet.tmp"), None);
    }

    #[test]
    fn site_names_are_safe_and_visible() {
        assert_eq!(sanitize_site("plant-a_1"), "plant-a_1");
        assert_eq!(sanitize_site("../etc/passwd"), "site___etc_passwd");
        assert_eq!(sanitize_site("_x"), "site_x");
        assert_eq!(sanitize_site(""), "site");
        assert_eq!(sanitize_site("Überlingen"), "site_berlingen");
        assert_eq!(sanitize_site(&"x".repeat(100)).len(), MAX_SITE_CHARS);
    }

    #[test]
    fn partition_dirs_use_utc_date_and_unpadded_hour() {
        // 2023-11-14T22:13:20Z
        let bucket = 1_700_000_000_000_000_000_i64.div_euclid(NS_PER_HOUR);
        assert_eq!(
            partition_dir(bucket),
            PathBuf::from("date=2023-11-14/hour=22")
        );
        assert_eq!(partition_dir(0), PathBuf::from("date=1970-01-01/hour=0"));
        assert_eq!(partition_dir(-1), PathBuf::from("date=1969-12-31/hour=23"));
    }
}
