//! Writing a history table: Parquet files partitioned by time and site,
//! listed in per-partition manifests, and committed atomically together
//! with the event-log offset they reach.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/<table>/                      table: events | alerts
//!   _writer/LOCK                       held by the one writer of the table
//!   _committed                         {"next_offset":N}, the log offset the next write continues from
//!   _committed.tmp                     only while a commit is in flight
//!   _partitions                        the committed partitions (see crate::manifest)
//!   _lost                              losses an operator acknowledged (see crate::manifest)
//!   date=YYYY-MM-DD/                   UTC date of `ts`
//!     hour=H/                          UTC hour of `ts`, 0..=23, not zero padded
//!       _manifest                      the committed files of this partition (see crate::manifest)
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
//! - Files are LZ4 (raw) Parquet with the table's Arrow schema embedded (see
//!   `FLUSH_COMPRESSION`; compaction rewrites them as zstd), rows of
//!   one file share date, hour and site; within a file of a batch that spanned
//!   several partitions rows are ordered by `ts`. Row groups and pages carry
//!   min/max statistics, so `ts` ranges prune inside files as `date`/`hour`
//!   prune directories.
//! - `hour` is not zero padded because DataFusion derives the directory
//!   prefix it lists for `hour = 7` from the literal's text: with `hour=07`
//!   such a query would silently find nothing.
//! - The files of a table are the files its manifests list, not the files
//!   its directories hold: queries read only those, so a stray `*.parquet`
//!   is ignored, and a listed file that is gone is noticed.
//!
//! # Recovery invariant
//!
//! A flush that starts at committed offset `C` names all its files with `C`
//! and tags every manifest and index line it appends with `C`. It makes all
//! of it durable — each file written to a temporary name, fsync'd and
//! renamed; the lines for its files appended to each partition's
//! `_manifest` and fsync'd; the partition directories fsync'd (renames and
//! new manifests); the lines for partitions it creates appended to
//! `_partitions` and fsync'd — and only then replaces `_committed` with its
//! new offset `N > C` (temporary file, fsync, rename, fsync of the table
//! directory). A flush that carries rows must advance the offset, so no two
//! committed flushes share an offset. Hence at any moment:
//!
//! > a data file or manifest line whose offset is below `next_offset` in
//! > `_committed` belongs to a committed flush; one whose offset is at or
//! > above it belongs to a flush whose commit never happened.
//!
//! Lines are appended in flush order, so a flush's lines are always the
//! tail of each file it appended to; a crash before the commit leaves that
//! tail (perhaps with a last line cut short), a crash after it leaves it
//! complete and durable. Readers therefore take the lines before the first
//! one at or above `next_offset` and never see a flush before its commit
//! (see [`crate::manifest`]).
//!
//! [`TableWriter::open`] (and [`TableWriter::recover`]) deletes the data
//! files of an uncommitted flush (and any temporary file) and cuts the
//! manifests and the index back to their committed lines, fsyncing what it
//! changed, before the writer writes again. This matters beyond tidiness:
//! the next flush starts from the same `C`, so a leftover line tagged `C`
//! would pass as committed once that flush commits. The cut needs no free
//! space (a truncation, not a rewrite), so recovery also works on a full
//! disk. It reads only the end of each manifest, since only the end can
//! hold a flush's tail. The consumer then re-reads the log from
//! `next_offset`.
//!
//! One writer per table, enforced by an exclusive lock on `_writer/LOCK`:
//! two writers on the same directory would break the invariant. (A
//! directory starting with `_`, because pyarrow reads every file of a
//! table directory whose name does not start with `_` or `.`.)
//!
//! # Tables that need more than a cut
//!
//! - A table written before manifests existed (`_committed` but no
//!   `_partitions`) is indexed when a writer opens it: each partition's
//!   manifest is rebuilt from its committed files (offset below
//!   `next_offset`, row count from the footer), then the index is written.
//!   Both are atomic replaces and the index comes last, so a crash midway
//!   just means indexing again.
//! - A committed partition whose manifest is gone gets one rebuilt from the
//!   files present, and the rebuild is recorded in `_lost`: files that went
//!   missing with it can no longer be named.
//! - A missing `_committed` beside committed data is never taken for a new
//!   table (that would delete every file as uncommitted): the writer refuses
//!   to open and says so.

use crate::error::IntegrityError;
use crate::manifest::{
    self, FileEntry, LossReason, Lost, LostRecord, PartitionEntry, MANIFEST_FILE, PARTITIONS_FILE,
};
use crate::{compact, retention};
use crate::{HistoryError, Table};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast, lexsort_to_indices, partition, take, take_record_batch, SortColumn};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampNanosecondType};
use chrono::{DateTime, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
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
const PARTITIONS_TMP: &str = "_partitions.tmp";
/// The directory of the writer's lock file.
const LOCK_DIR: &str = "_writer";
const TMP_SUFFIX: &str = ".tmp";
const PARQUET_SUFFIX: &str = ".parquet";
const OFFSET_DIGITS: usize = 20;
const MAX_SITE_CHARS: usize = 64;
const NS_PER_HOUR: i64 = 3_600_000_000_000;
/// Flush files are LZ4 (raw block format, which every current Parquet
/// reader knows). They are read by every query until compaction merges
/// them into zstd files, and a history not yet compacted is thousands of
/// small files: the Parquet reader creates a new zstd context for every
/// column chunk it opens, which cost a sixth of the CPU of a query over
/// such files, where LZ4 needs no context at all.
const FLUSH_COMPRESSION: Compression = Compression::LZ4_RAW;

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

/// What recovery found and did when a writer opened (or recovered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The committed offset recovery found.
    pub next_offset: u64,
    /// Data and temporary files of a flush that was never committed, removed.
    pub removed_files: usize,
    /// Manifests (and the index) cut back to their committed lines.
    pub truncated: Vec<PathBuf>,
    /// Manifests of partitions no committed flush created, removed.
    pub removed_manifests: usize,
    /// Committed partitions whose manifest was gone (or, with a thorough
    /// recovery, corrupt) and was rebuilt from the files present; each
    /// rebuild is recorded in `_lost`.
    pub rebuilt: Vec<String>,
    /// Committed partitions whose directory is gone: queries that read them
    /// fail until they are restored or the loss is acknowledged.
    pub missing_partitions: Vec<String>,
    /// The table had no manifests (written by an older otwatch) and was
    /// indexed now.
    pub indexed: bool,
    /// Compactions stopped before their swap, whose new files were removed.
    pub compactions_rolled_back: usize,
    /// Compactions swapped whose replaced files wait for the grace period
    /// (removed by [`crate::Compactor::collect`]).
    pub compactions_awaiting_removal: usize,
    /// Partitions whose drop by retention was decided before a crash and
    /// was finished now.
    pub partitions_dropped: usize,
}

impl Recovery {
    /// Whether recovery changed anything on disk.
    pub fn changed(&self) -> bool {
        self.removed_files > 0
            || !self.truncated.is_empty()
            || self.removed_manifests > 0
            || !self.rebuilt.is_empty()
            || self.indexed
            || self.compactions_rolled_back > 0
            || self.partitions_dropped > 0
    }
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
    /// The committed partitions (`date=…/hour=…`): a flush appends an index
    /// line for any other partition it writes into.
    partitions: BTreeSet<String>,
    props: WriterProperties,
    /// Set when a write failed after it started touching the disk: files
    /// and manifest lines of that flush may remain, and only recovery may
    /// decide what to keep.
    poisoned: bool,
    recovery: Recovery,
    _lock: otwatch_fs::DirLock,
}

impl TableWriter {
    /// Opens (creating) `<root>/<table>/`, taking its writer lock, and
    /// recovers after a crash: files and manifest lines of a flush whose
    /// offset was never committed are deleted, lost manifests rebuilt and a
    /// table from before manifests indexed (see the module documentation).
    /// Fails with [`HistoryError::Locked`] while another writer holds it.
    pub fn open(root: &Path, table: Table) -> Result<Self, HistoryError> {
        Self::open_with(root, table, false)
    }

    /// [`TableWriter::open`], then a full read of every manifest: corrupt
    /// ones are rebuilt from the files present (recorded in `_lost`). For
    /// `otwatch history repair`; slower on a large table.
    pub fn open_thorough(root: &Path, table: Table) -> Result<Self, HistoryError> {
        Self::open_with(root, table, true)
    }

    fn open_with(root: &Path, table: Table, thorough: bool) -> Result<Self, HistoryError> {
        let dir = root.join(table.name());
        create_dirs(&dir)?;
        let lock = otwatch_fs::DirLock::acquire(&dir.join(LOCK_DIR)).map_err(|e| match e {
            otwatch_fs::LockError::Held { holder, .. } => HistoryError::Locked {
                table: table.name(),
                dir: dir.clone(),
                holder,
            },
            otwatch_fs::LockError::Io(e) => e.into(),
        })?;
        let props = WriterProperties::builder()
            .set_compression(FLUSH_COMPRESSION)
            .build();
        let mut writer = TableWriter {
            table,
            schema: table.schema(),
            dir,
            next_offset: 0,
            partitions: BTreeSet::new(),
            props,
            poisoned: true,
            recovery: Recovery::default(),
            _lock: lock,
        };
        writer.recover_with(thorough)?;
        Ok(writer)
    }

    /// Runs recovery again in place (the lock stays held), as
    /// [`TableWriter::open`] does, and clears the refusal to write after a
    /// failed write. After [`HistoryError::is_storage_full`], wait for space,
    /// call this, and write again from [`TableWriter::next_offset`]: the
    /// table then holds exactly the committed rows.
    pub fn recover(&mut self) -> Result<&Recovery, HistoryError> {
        self.recover_with(false)
    }

    fn recover_with(&mut self, thorough: bool) -> Result<&Recovery, HistoryError> {
        self.poisoned = true;
        let (partitions, recovery) = recover(&self.dir, self.table, thorough)?;
        log_recovery(self.table, &recovery);
        self.next_offset = recovery.next_offset;
        self.partitions = partitions;
        self.recovery = recovery;
        self.poisoned = false;
        Ok(&self.recovery)
    }

    /// What the last recovery (at open, or [`TableWriter::recover`]) did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
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
    /// (LZ4), partitioned by date and hour of `ts` and by site, lists the
    /// files in the partition manifests, then commits `next_offset`
    /// atomically (tmp+fsync+rename, fsync dir). Exactly-once: after any
    /// crash, the committed files hold exactly the rows of the committed
    /// offsets.
    ///
    /// `next_offset` may equal the current offset only when the batches hold
    /// no rows (then nothing happens); it must never go backwards. After an
    /// error from the disk the writer refuses further writes until
    /// [`TableWriter::recover`] runs (or it is reopened).
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
                // spares `check` strays that recovery would remove anyway
                // (best effort; recovery is the guarantee, and it also cuts
                // any manifest line this flush appended).
                for w in &written {
                    let _ = fs::remove_file(&w.path);
                }
                return Err(e);
            }
        };
        let new_partitions = match self.list_files(&written) {
            Ok(new) => new,
            Err(e) => {
                // The lines may be on disk: leave everything to recovery,
                // which decides by the commit file alone.
                self.poisoned = true;
                return Err(e);
            }
        };
        if let Err(e) = write_commit(&self.dir, next_offset) {
            // The new commit may or may not have reached the disk, so the
            // files and lines must stay: recovery keeps or removes them
            // according to the commit file it finds.
            self.poisoned = true;
            return Err(e);
        }
        self.next_offset = next_offset;
        self.partitions.extend(new_partitions);
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

    /// Swaps the files a compaction merged in for the files they replace
    /// (step 3 of [`crate::compact`]): the partition's manifest is replaced
    /// atomically by its committed lines without the replaced files and
    /// with the new ones. Runs between flushes (it needs the writer), so
    /// nothing appends to the manifest meanwhile. Refuses, changing
    /// nothing, when the manifest no longer lists every replaced file or
    /// the compaction's record is not there. After a failure of the disk
    /// the writer refuses to write until recovered (recovery tells from
    /// the manifest whether the swap happened).
    pub fn commit_compaction(&mut self, prepared: &compact::Prepared) -> Result<(), HistoryError> {
        let table = self.table.name();
        if self.poisoned {
            return Err(HistoryError::Poisoned { table });
        }
        let conflict = |detail: String| HistoryError::Compaction {
            partition: prepared.partition.clone(),
            detail,
        };
        if !self.partitions.contains(&prepared.partition) {
            return Err(conflict("the partition is not committed".into()));
        }
        let pdir = self.dir.join(&prepared.partition);
        match compact::read_intent(&pdir)? {
            Some(intent) if intent.stamp == prepared.stamp => {}
            _ => return Err(conflict("its record (_compaction) is not there".into())),
        }
        let path = pdir.join(MANIFEST_FILE);
        let Some(prefix) = manifest::read_prefix::<FileEntry>(&path, self.next_offset)? else {
            return Err(conflict("the partition has no manifest".into()));
        };
        let listed: BTreeSet<&str> = prefix.entries.iter().map(|e| e.file.as_str()).collect();
        if let Some(gone) = prepared
            .replaced
            .iter()
            .find(|f| !listed.contains(f.file.as_str()))
        {
            return Err(conflict(format!(
                "the manifest no longer lists {}",
                gone.file
            )));
        }
        let replaced: BTreeSet<&str> = prepared.replaced.iter().map(|f| f.file.as_str()).collect();
        let mut entries: Vec<FileEntry> = prefix
            .entries
            .iter()
            .filter(|e| !replaced.contains(e.file.as_str()))
            .cloned()
            .collect();
        entries.extend(prepared.written.iter().cloned());
        if let Err(e) = compact::write_small(&path, &manifest::lines(&entries)) {
            self.poisoned = true;
            return Err(e);
        }
        tracing::debug!(
            table,
            partition = prepared.partition,
            "compaction swapped in"
        );
        Ok(())
    }

    /// Drops every committed partition whose hour ended at or before
    /// `cutoff` (see [`crate::retention`]): the decision is recorded, the
    /// partitions leave the index (from then on no query lists them), then
    /// their directories are deleted. Returns the partitions dropped. After
    /// a failure the writer refuses to write until recovered, which
    /// finishes the drop.
    pub fn drop_partitions_before(
        &mut self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, HistoryError> {
        let table = self.table.name();
        if self.poisoned {
            return Err(HistoryError::Poisoned { table });
        }
        let cutoff = cutoff.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let doomed: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| retention::partition_end(p).is_some_and(|end| end <= cutoff))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Ok(doomed);
        }
        if let Err(e) = retention::drop_partitions(&self.dir, &doomed) {
            self.poisoned = true;
            return Err(e);
        }
        for p in &doomed {
            self.partitions.remove(p);
        }
        Ok(doomed)
    }

    /// Lists the flush's files durably in the manifests and the index, all
    /// tagged with the flush's starting offset (see the recovery invariant):
    /// manifest lines (fsync'd), then the partition directories (the data
    /// file renames and any new manifest), then index lines for partitions
    /// no committed flush has written yet (fsync'd). Returns those
    /// partitions.
    fn list_files(&self, written: &[Written]) -> Result<Vec<String>, HistoryError> {
        let mut by_partition: BTreeMap<&str, Vec<FileEntry>> = BTreeMap::new();
        for w in written {
            by_partition
                .entry(w.partition.as_str())
                .or_default()
                .push(w.entry.clone());
        }
        let mut new = Vec::new();
        for (partition, entries) in &by_partition {
            let dir = self.dir.join(partition);
            let manifest = dir.join(MANIFEST_FILE);
            let known = self.partitions.contains(*partition);
            if known && !manifest.exists() {
                // Someone removed the manifest of a committed partition:
                // appending to a new one would hide its older files, so it
                // is rebuilt from them first (and the rebuild recorded).
                rebuild_manifest(&self.dir, partition, self.next_offset, Vec::new())?;
                tracing::error!(
                    table = self.table.name(),
                    partition,
                    "the manifest of a committed partition was missing; rebuilt it from the files present"
                );
            }
            manifest::append(&manifest, &manifest::lines(entries), !known)?;
            sync_dir(&dir)?;
            if !known {
                new.push(PartitionEntry {
                    offset: self.next_offset,
                    partition: (*partition).to_owned(),
                });
            }
        }
        if !new.is_empty() {
            // Never created here: a missing index means the table must be
            // indexed again by recovery, not started afresh.
            manifest::append(
                &self.dir.join(PARTITIONS_FILE),
                &manifest::lines(&new),
                false,
            )?;
        }
        Ok(new.into_iter().map(|e| e.partition).collect())
    }

    /// Checks every batch against the table schema and rebinds it to the
    /// canonical schema object (cheap: columns are shared), so schema
    /// metadata on incoming batches never leaks into files.
    /// Whether `batch` can be written to this table (its schema matches and
    /// its non-null columns hold no nulls), without writing it. Lets a
    /// consumer set aside one foreign record instead of failing a flush.
    pub fn accepts(&self, batch: &RecordBatch) -> Result<(), HistoryError> {
        self.conform(std::slice::from_ref(batch)).map(|_| ())
    }

    fn conform(&self, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, HistoryError> {
        let table = self.table.name();
        let mut out = Vec::with_capacity(batches.len());
        for (index, batch) in batches.iter().enumerate() {
            let conformed = {
                let expected = self.schema.fields();
                let actual = batch.schema();
                // A record an older otwatch wrote lacks the columns added
                // since; those always come last and are nullable, so they
                // are filled with nulls (read as their defaults).
                let older = actual.fields().len() < expected.len()
                    && expected[actual.fields().len()..]
                        .iter()
                        .all(|f| f.is_nullable());
                if actual.fields().len() != expected.len() && !older {
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
                let mut columns = batch.columns().to_vec();
                for field in &expected[columns.len()..] {
                    columns.push(arrow::array::new_null_array(
                        field.data_type(),
                        batch.num_rows(),
                    ));
                }
                // Also rejects nulls in non-nullable columns.
                RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    columns,
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

    /// Writes one file per partition, each fsync'd and renamed into place
    /// (the directories are fsync'd by [`TableWriter::list_files`]).
    /// `written` collects the files as they appear, for the manifests and
    /// for cleanup.
    fn write_files(
        &self,
        parts: &BTreeMap<(i64, String), Vec<RecordBatch>>,
        written: &mut Vec<Written>,
    ) -> Result<WriteStats, HistoryError> {
        let mut stats = WriteStats::default();
        for (n, ((hour, site), batches)) in parts.iter().enumerate() {
            let partition = partition_name(*hour);
            let dir = self.dir.join(&partition);
            create_dirs(&dir)?;
            let name = file_name(site, self.next_offset, n);
            let bytes = write_parquet(&dir, &name, &self.schema, batches, &self.props)?;
            let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            let (ts_min, ts_max) = ts_range(batches, &self.schema);
            written.push(Written {
                path: dir.join(&name),
                partition,
                entry: FileEntry {
                    offset: self.next_offset,
                    file: name,
                    rows: rows as u64,
                    bytes,
                    site: Some(site.clone()),
                    ts_min,
                    ts_max,
                },
            });
            stats.rows += rows;
            stats.files += 1;
            stats.bytes += bytes;
        }
        Ok(stats)
    }
}

/// A data file a flush has put in place.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    partition: String,
    entry: FileEntry,
}

/// The smallest and largest `ts` of `batches` (`None` when they hold no
/// rows), for the manifest line of the file they make.
pub(crate) fn ts_range(batches: &[RecordBatch], schema: &SchemaRef) -> (Option<i64>, Option<i64>) {
    let ts_idx = schema.index_of("ts").expect("every table has ts");
    let mut range: (Option<i64>, Option<i64>) = (None, None);
    for batch in batches {
        let ts = batch
            .column(ts_idx)
            .as_primitive::<TimestampNanosecondType>();
        if let (Some(lo), Some(hi)) = (arrow::compute::min(ts), arrow::compute::max(ts)) {
            range.0 = Some(range.0.map_or(lo, |m| m.min(lo)));
            range.1 = Some(range.1.map_or(hi, |m| m.max(hi)));
        }
    }
    range
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

/// `date=YYYY-MM-DD/hour=H` of an hour bucket: the partition's directory
/// relative to the table, and its name in manifests (always with `/`).
fn partition_name(hour_bucket: i64) -> String {
    let start = DateTime::from_timestamp(hour_bucket * 3600, 0)
        .expect("every i64 nanosecond timestamp is within chrono's range");
    format!(
        "{DATE_COLUMN}={}/{HOUR_COLUMN}={}",
        start.format("%Y-%m-%d"),
        start.hour()
    )
}

/// `<site>-<offset, 20 digits>-<n>.parquet`.
pub(crate) fn file_name(site: &str, offset: u64, n: usize) -> String {
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
pub(crate) fn flush_offset(name: &str) -> Option<u64> {
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
) -> Result<u64, HistoryError> {
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let result = (|| {
        let file = File::create(&tmp).map_err(HistoryError::io("creating", &tmp))?;
        let io_error = Arc::new(std::sync::Mutex::new(None));
        let file = NoteIoError {
            file,
            first: Arc::clone(&io_error),
        };
        // The Parquet writer reports a failed write as text; the I/O error
        // behind it is kept so a full disk stays recognisable.
        let parquet = |source| match io_error.lock().expect("not poisoned").take() {
            Some(io) => HistoryError::Io {
                action: "writing",
                path: tmp.clone(),
                source: io,
            },
            None => HistoryError::Parquet {
                path: tmp.clone(),
                source,
            },
        };
        let mut writer =
            ArrowWriter::try_new(file, Arc::clone(schema), Some(props.clone())).map_err(parquet)?;
        for batch in batches {
            writer.write(batch).map_err(parquet)?;
        }
        let file = writer.into_inner().map_err(parquet)?.file;
        file.sync_all().map_err(HistoryError::io("syncing", &tmp))?;
        let bytes = file
            .metadata()
            .map_err(HistoryError::io("reading size of", &tmp))?
            .len();
        fs::rename(&tmp, &path).map_err(HistoryError::io("renaming into place", &path))?;
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A file that keeps the first I/O error written through it.
struct NoteIoError {
    file: File,
    first: Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl NoteIoError {
    fn note<T>(&self, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result {
            let mut first = self.first.lock().expect("not poisoned");
            if first.is_none() {
                *first = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        result
    }
}

impl std::io::Write for NoteIoError {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.file.write(buf);
        self.note(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.file.flush();
        self.note(result)
    }
}

/// Reads the committed offset: `None` when there is no commit file (a new
/// table, or one whose commit file is lost: callers tell them apart). Has
/// no side effects, so readers use it too.
pub(crate) fn read_commit(dir: &Path) -> Result<Option<u64>, HistoryError> {
    let path = dir.join(COMMIT_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    let commit: Commit = serde_json::from_slice(&text)
        .map_err(|source| HistoryError::CorruptCommit { path, source })?;
    Ok(Some(commit.next_offset))
}

/// Replaces the commit file atomically and durably.
fn write_commit(dir: &Path, next_offset: u64) -> Result<(), HistoryError> {
    let mut text = serde_json::to_vec(&Commit { next_offset }).expect("a u64 serializes");
    text.push(b'\n');
    Ok(otwatch_fs::write_atomic(&dir.join(COMMIT_FILE), &text)?)
}

/// Brings `dir` back to exactly its committed state (see the module
/// documentation) and returns the committed partitions with a report.
fn recover(
    dir: &Path,
    table: Table,
    thorough: bool,
) -> Result<(BTreeSet<String>, Recovery), HistoryError> {
    let mut report = Recovery::default();
    // Leftover temporaries of atomic replaces never took effect.
    for tmp in [COMMIT_TMP, PARTITIONS_TMP] {
        let tmp = dir.join(tmp);
        match fs::remove_file(&tmp) {
            Ok(()) => sync_dir(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HistoryError::io("removing", &tmp)(e)),
        }
    }
    let index = dir.join(PARTITIONS_FILE);
    let next_offset = match read_commit(dir)? {
        Some(n) => n,
        None => {
            start_table(dir, &index, &mut report)?;
            return Ok((BTreeSet::new(), report));
        }
    };
    report.next_offset = next_offset;
    // A drop by retention that was decided finishes first: its partitions
    // leave the index, then the disk.
    report.partitions_dropped = retention::recover(dir)?;
    remove_uncommitted_files(dir, next_offset, &mut report)?;

    let prefix = match fs::read(&index) {
        Ok(text) => {
            if let Some(cut) = uncommitted_start(&text, next_offset) {
                manifest::truncate(&index, cut)?;
                report.truncated.push(index.clone());
            }
            match manifest::committed_prefix::<PartitionEntry>(&index, &text, next_offset) {
                Ok(prefix) => Some(prefix.entries),
                Err(e) => {
                    tracing::error!(table = table.name(), error = %e, "the partition index is corrupt; indexing the table again");
                    None
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(HistoryError::io("reading", &index)(e)),
    };
    let Some(entries) = prefix else {
        let partitions = index_table(dir, next_offset)?;
        report.indexed = true;
        return Ok((partitions, report));
    };
    let partitions: BTreeSet<String> = entries.into_iter().map(|e| e.partition).collect();

    // Manifests of committed partitions: cut a flush's tail, rebuild a lost
    // one. Manifests elsewhere belong to partitions no committed flush
    // created: cut, and removed when nothing committed is left.
    let lost = Lost::from_records(&manifest::read_lost(dir)?.0);
    for partition in &partitions {
        let pdir = dir.join(partition);
        if !pdir.is_dir() {
            if !lost.partitions.contains(partition) {
                report.missing_partitions.push(partition.clone());
            }
            continue;
        }
        let path = pdir.join(MANIFEST_FILE);
        if !path.exists() {
            rebuild_manifest(dir, partition, next_offset, Vec::new())?;
            report.rebuilt.push(partition.clone());
            continue;
        }
        if !thorough && manifest::tail_is_committed(&path, next_offset)? {
            continue;
        }
        let text = fs::read(&path).map_err(HistoryError::io("reading", &path))?;
        if let Some(cut) = uncommitted_start(&text, next_offset) {
            manifest::truncate(&path, cut)?;
            report.truncated.push(path.clone());
        }
        if thorough {
            if let Err(e) = manifest::committed_prefix::<FileEntry>(&path, &text, next_offset) {
                tracing::error!(table = table.name(), error = %e, "rebuilding a corrupt manifest");
                rebuild_manifest(dir, partition, next_offset, valid_lines(&text, next_offset))?;
                report.rebuilt.push(partition.clone());
            }
        }
    }
    // Compactions: the committed manifest says whether each swapped; the
    // new files of one that did not are removed.
    for partition in &partitions {
        let pdir = dir.join(partition);
        if !pdir.join(compact::INTENT_FILE).exists() {
            continue;
        }
        let listed = manifest::read_prefix::<FileEntry>(&pdir.join(MANIFEST_FILE), next_offset)?
            .map(|p| p.entries)
            .unwrap_or_default();
        match compact::recover_partition(&pdir, &listed)? {
            compact::Resolved::RolledBack => report.compactions_rolled_back += 1,
            compact::Resolved::Swapped => report.compactions_awaiting_removal += 1,
            compact::Resolved::None => {}
        }
    }
    for date in partition_subdirs(dir, DATE_COLUMN)? {
        for hour in partition_subdirs(&date, HOUR_COLUMN)? {
            let Some(partition) = relative_partition(dir, &hour) else {
                continue;
            };
            let path = hour.join(MANIFEST_FILE);
            if partitions.contains(&partition) || !path.exists() {
                continue;
            }
            let text = fs::read(&path).map_err(HistoryError::io("reading", &path))?;
            let cut = uncommitted_start(&text, next_offset).unwrap_or(text.len() as u64);
            if cut == 0 {
                fs::remove_file(&path).map_err(HistoryError::io("removing", &path))?;
                sync_dir(&hour)?;
                report.removed_manifests += 1;
            } else {
                if cut < text.len() as u64 {
                    manifest::truncate(&path, cut)?;
                    report.truncated.push(path.clone());
                }
                tracing::warn!(
                    table = table.name(),
                    manifest = %path.display(),
                    "a manifest lists committed files but its partition is not in the index; `otwatch history check` reports them as not committed"
                );
            }
        }
    }
    Ok((partitions, report))
}

/// A table without a commit file: new, or one whose commit file was lost.
/// Only the first is started afresh (its data files, if any, are the first
/// flush's, never committed); the second would lose every file, so it is
/// refused.
fn start_table(dir: &Path, index: &Path, report: &mut Recovery) -> Result<(), HistoryError> {
    let listed = fs::metadata(index).map(|m| m.len() > 0);
    match listed {
        Ok(true) => {
            return Err(IntegrityError::CommitMissing {
                path: dir.join(COMMIT_FILE),
                detail: format!("{} lists partitions", index.display()),
            }
            .into())
        }
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HistoryError::io("inspecting", index)(e)),
    }
    // A file named with a non-zero offset was written after a commit.
    for (path, offset) in data_files(dir)? {
        if offset > 0 {
            return Err(IntegrityError::CommitMissing {
                path: dir.join(COMMIT_FILE),
                detail: format!(
                    "{} was written after offset {offset} was committed",
                    path.display()
                ),
            }
            .into());
        }
    }
    remove_uncommitted_files(dir, 0, report)?;
    for date in partition_subdirs(dir, DATE_COLUMN)? {
        for hour in partition_subdirs(&date, HOUR_COLUMN)? {
            let path = hour.join(MANIFEST_FILE);
            if path.exists() {
                fs::remove_file(&path).map_err(HistoryError::io("removing", &path))?;
                sync_dir(&hour)?;
                report.removed_manifests += 1;
            }
        }
    }
    // The index first: a crash before the commit file leaves an empty
    // index and no commit, which is again a new table.
    otwatch_fs::write_atomic(index, b"")?;
    write_commit(dir, 0)
}

/// Indexes a table that has no (readable) partition index: rebuilds the
/// manifest of every partition directory holding committed files, then
/// writes the index, all by atomic replace and the index last, so that a
/// crash midway only means indexing again. Returns the partitions.
fn index_table(dir: &Path, next_offset: u64) -> Result<BTreeSet<String>, HistoryError> {
    let mut entries = Vec::new();
    for date in partition_subdirs(dir, DATE_COLUMN)? {
        for hour in partition_subdirs(&date, HOUR_COLUMN)? {
            let Some(partition) = relative_partition(dir, &hour) else {
                continue;
            };
            let path = hour.join(MANIFEST_FILE);
            let keep = match fs::read(&path) {
                Ok(text) => valid_lines(&text, next_offset),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(HistoryError::io("reading", &path)(e)),
            };
            let files = rebuild_manifest_quietly(dir, &partition, next_offset, keep, false)?;
            if let Some(offset) = files.iter().map(|f| f.offset).min() {
                entries.push(PartitionEntry { offset, partition });
            }
        }
    }
    entries.sort_by(|a, b| (a.offset, &a.partition).cmp(&(b.offset, &b.partition)));
    otwatch_fs::write_atomic(&dir.join(PARTITIONS_FILE), &manifest::lines(&entries))?;
    tracing::info!(
        dir = %dir.display(),
        partitions = entries.len(),
        "indexed the history table's committed files"
    );
    Ok(entries.into_iter().map(|e| e.partition).collect())
}

/// Rebuilds a committed partition's manifest from `keep` (the entries that
/// survive from the old one) and the committed data files present that it
/// does not list, and records the rebuild in `_lost`: whatever went missing
/// with the old manifest can no longer be named.
fn rebuild_manifest(
    dir: &Path,
    partition: &str,
    next_offset: u64,
    keep: Vec<FileEntry>,
) -> Result<(), HistoryError> {
    let files = rebuild_manifest_quietly(dir, partition, next_offset, keep, true)?;
    let record = LostRecord::new(LossReason::ManifestRebuilt, partition);
    tracing::warn!(
        dir = %dir.display(),
        partition,
        files = files.len(),
        "rebuilt a partition manifest from the files present"
    );
    manifest::append_lost(dir, &[record])
}

/// Writes the manifest of `partition` listing `keep` and every committed
/// data file present that `keep` does not name (row count from its
/// footer). A file whose footer cannot be read is left out and recorded in
/// `_lost` as unreadable. An empty manifest is written only with
/// `write_empty` (a committed partition needs one; a directory that holds
/// nothing committed does not). Returns the entries.
fn rebuild_manifest_quietly(
    dir: &Path,
    partition: &str,
    next_offset: u64,
    keep: Vec<FileEntry>,
    write_empty: bool,
) -> Result<Vec<FileEntry>, HistoryError> {
    let pdir = dir.join(partition);
    // A compaction in flight holds two sets of the same rows: keep one.
    let removed = compact::settle_for_rebuild(&pdir)?;
    let mut entries = keep;
    entries.retain(|e| !removed.contains(&e.file));
    let known: BTreeSet<String> = entries.iter().map(|e| e.file.clone()).collect();
    let mut unreadable = Vec::new();
    for entry in fs::read_dir(&pdir).map_err(HistoryError::io("listing", &pdir))? {
        let entry = entry.map_err(HistoryError::io("listing", &pdir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let offset = match (flush_offset(name), compact::parse_name(name)) {
            (Some(offset), _) | (None, Some((offset, _))) => offset,
            (None, None) => continue,
        };
        if offset >= next_offset || known.contains(name) || !manifest::is_data_file_name(name) {
            continue;
        }
        let path = entry.path();
        match footer_rows(&path) {
            Ok((rows, bytes)) => entries.push(FileEntry {
                offset,
                file: name.to_owned(),
                rows,
                bytes,
                site: None,
                ts_min: None,
                ts_max: None,
            }),
            Err(reason) => {
                tracing::error!(path = %path.display(), reason, "a committed file is unreadable; it is left out of the table");
                let mut record = LostRecord::new(LossReason::Unreadable, partition);
                record.file = Some(name.to_owned());
                record.offset = Some(offset);
                unreadable.push(record);
            }
        }
    }
    entries.sort_by(|a, b| (a.offset, &a.file).cmp(&(b.offset, &b.file)));
    if write_empty || !entries.is_empty() {
        otwatch_fs::write_atomic(&pdir.join(MANIFEST_FILE), &manifest::lines(&entries))?;
    }
    manifest::append_lost(dir, &unreadable)?;
    Ok(entries)
}

/// Row count and size of a Parquet file, from its footer.
pub(crate) fn footer_rows(path: &Path) -> Result<(u64, u64), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| e.to_string())?;
    let rows = u64::try_from(meta.file_metadata().num_rows())
        .map_err(|_| "negative row count in the footer".to_owned())?;
    Ok((rows, bytes))
}

/// Where the uncommitted tail of a manifest or index starts: at the first
/// complete line that is an entry tagged at or above `next_offset`, or at a
/// last line without its `\n`. `None` when there is no tail. Lines that are
/// not entries are not a tail (a flush only appends entries): they stay,
/// and readers report them as corruption.
fn uncommitted_start(text: &[u8], next_offset: u64) -> Option<u64> {
    #[derive(Deserialize)]
    struct Tag {
        offset: u64,
    }
    let mut pos = 0;
    while let Some(end) = text[pos..].iter().position(|&b| b == b'\n') {
        if serde_json::from_slice::<Tag>(&text[pos..pos + end])
            .is_ok_and(|t| t.offset >= next_offset)
        {
            return Some(pos as u64);
        }
        pos += end + 1;
    }
    (pos < text.len()).then_some(pos as u64)
}

/// The valid committed entries of a (possibly corrupt) manifest.
fn valid_lines(text: &[u8], next_offset: u64) -> Vec<FileEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<FileEntry>(line).ok())
        .filter(|e| e.offset < next_offset && manifest::is_data_file_name(&e.file))
        .collect()
}

/// Deletes temporary files and the data files of uncommitted flushes under
/// `date=*/hour=*/`, and fsyncs each directory it changed so that a deleted
/// file cannot come back after a crash and pass as committed once the offset
/// moves past it.
fn remove_uncommitted_files(
    dir: &Path,
    next_offset: u64,
    report: &mut Recovery,
) -> Result<(), HistoryError> {
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
                    report.removed_files += 1;
                    changed = true;
                }
            }
            if changed {
                sync_dir(&hour)?;
            }
        }
    }
    Ok(())
}

/// Every data file (by name) under `date=*/hour=*/` with its flush offset.
fn data_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, HistoryError> {
    let mut out = Vec::new();
    for date in partition_subdirs(dir, DATE_COLUMN)? {
        for hour in partition_subdirs(&date, HOUR_COLUMN)? {
            for entry in fs::read_dir(&hour).map_err(HistoryError::io("listing", &hour))? {
                let entry = entry.map_err(HistoryError::io("listing", &hour))?;
                if let Some(offset) = entry.file_name().to_str().and_then(flush_offset) {
                    out.push((entry.path(), offset));
                }
            }
        }
    }
    Ok(out)
}

/// `date=…/hour=…` of a partition directory under `dir`, if it is one the
/// writer could have made.
pub(crate) fn relative_partition(dir: &Path, hour_dir: &Path) -> Option<String> {
    let rel = hour_dir.strip_prefix(dir).ok()?;
    let name = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?
        .join("/");
    manifest::is_partition_name(&name).then_some(name)
}

fn log_recovery(table: Table, r: &Recovery) {
    let table = table.name();
    if r.removed_files > 0 || !r.truncated.is_empty() || r.removed_manifests > 0 {
        tracing::warn!(
            table,
            next_offset = r.next_offset,
            removed_files = r.removed_files,
            truncated = r.truncated.len(),
            removed_manifests = r.removed_manifests,
            "removed what a flush that was never committed left"
        );
    }
    for partition in &r.rebuilt {
        tracing::error!(
            table,
            partition,
            "rebuilt a lost or corrupt manifest from the files present (recorded in _lost)"
        );
    }
    for partition in &r.missing_partitions {
        tracing::error!(table, partition, "a committed partition's directory is missing; queries that read it fail until it is restored or `otwatch history repair --forget-missing` records the loss");
    }
    tracing::debug!(table, next_offset = r.next_offset, "history table open");
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
        assert_eq!(partition_name(bucket), "date=2023-11-14/hour=22");
        assert_eq!(partition_name(0), "date=1970-01-01/hour=0");
        assert_eq!(partition_name(-1), "date=1969-12-31/hour=23");
        for b in [bucket, 0, -1, 7] {
            assert!(crate::manifest::is_partition_name(&partition_name(b)));
        }
    }
}
