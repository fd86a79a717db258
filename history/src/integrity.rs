//! Checking the history against what was committed, and acknowledging
//! losses: the library side of `otwatch history check` and
//! `otwatch history repair`.
//!
//! - [`check`] compares every table with its manifests: committed files
//!   that are missing, damaged (wrong size, unreadable footer, row count
//!   other than committed; with `full`, any page that does not decode),
//!   committed partitions without a manifest, and data files that no
//!   committed manifest lists (ignored by queries). It only reads.
//! - [`forget_missing`] records every committed file (and partition) that
//!   is gone in the table's `_lost`, with its rows and bytes, so queries run
//!   again without it. It changes nothing else and is safe while the writer
//!   runs. The loss stays visible in [`check`]'s report.
//! - [`repair`] runs the writer's recovery thoroughly (cuts what a crashed
//!   flush left, indexes a table from before manifests, rebuilds lost or
//!   corrupt manifests from the files present) when no writer is running,
//!   and, when asked, [`forget_missing`].

use crate::error::{human_bytes, IntegrityError};
use crate::manifest::{self, FileEntry, LossReason, LostRecord, MANIFEST_FILE};
use crate::writer::{self, Recovery, DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table, TableWriter};
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// What [`check`] found in the whole history.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// One entry per table.
    pub tables: Vec<TableCheck>,
}

impl CheckReport {
    /// True when every query can read everything committed: nothing
    /// missing, damaged or unindexed. Files that are not committed do not
    /// count (queries ignore them).
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableCheck::is_clean)
    }
}

/// What [`check`] found in one table.
#[derive(Debug, Clone)]
pub struct TableCheck {
    pub table: Table,
    /// The committed log offset; `None` for a table never written.
    pub next_offset: Option<u64>,
    /// Committed partitions.
    pub partitions: usize,
    /// Committed files present and sound, their rows and bytes.
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Committed files that are gone (and not acknowledged).
    pub missing: Vec<FileProblem>,
    /// Committed files that are there but not as committed.
    pub damaged: Vec<FileProblem>,
    /// Committed partitions without a manifest (and perhaps without a
    /// directory).
    pub without_manifest: Vec<PathBuf>,
    /// Data files no committed manifest lists: queries ignore them. Files
    /// of a flush in progress are not counted, nor those a compaction
    /// holds.
    pub not_committed: Vec<PathBuf>,
    /// Files a compaction holds outside the manifests: files it replaced,
    /// removed after the grace period, and the new files of one not yet
    /// swapped in. Queries read exactly one of the two sets.
    pub compaction_held: Vec<PathBuf>,
    /// Losses acknowledged so far.
    pub lost: Vec<LostRecord>,
    /// Problems that stop queries of the whole table or a partition: a
    /// corrupt manifest or index, a missing commit file, a table not yet
    /// indexed.
    pub problems: Vec<IntegrityError>,
}

impl TableCheck {
    fn new(table: Table) -> Self {
        TableCheck {
            table,
            next_offset: None,
            partitions: 0,
            files: 0,
            rows: 0,
            bytes: 0,
            missing: Vec::new(),
            damaged: Vec::new(),
            without_manifest: Vec::new(),
            not_committed: Vec::new(),
            compaction_held: Vec::new(),
            lost: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// See [`CheckReport::is_clean`].
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.damaged.is_empty()
            && self.without_manifest.is_empty()
            && self.problems.is_empty()
    }
}

/// One committed file that is missing or damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub path: PathBuf,
    /// Rows and bytes when committed.
    pub rows: u64,
    pub bytes: u64,
    /// What is wrong with it (for a damaged file).
    pub reason: String,
}

/// Checks every table under `root` against its manifests; with `full`, also
/// decodes every row of every committed file (reads the whole history).
/// Read-only; fails only when the disk cannot be read.
pub fn check(root: &Path, full: bool) -> Result<CheckReport, HistoryError> {
    let mut report = CheckReport::default();
    for table in Table::ALL {
        report.tables.push(check_table(root, table, full)?);
    }
    Ok(report)
}

fn check_table(root: &Path, table: Table, full: bool) -> Result<TableCheck, HistoryError> {
    let mut out = TableCheck::new(table);
    let dir = root.join(table.name());
    let (lost, _) = manifest::read_lost(&dir)?;
    out.lost = lost;
    let committed = match manifest::read_committed(root, table) {
        Ok(c) => c,
        Err(HistoryError::Integrity(e)) => {
            out.problems.push(e);
            None
        }
        Err(e) => return Err(e),
    };
    // Committed file names per partition, to find the others on disk.
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    if let Some(committed) = &committed {
        out.next_offset = Some(committed.next_offset);
        out.partitions = committed.partitions.len();
        for partition in &committed.partitions {
            let pdir = dir.join(partition);
            let path = pdir.join(MANIFEST_FILE);
            let entries = match manifest::read_prefix::<FileEntry>(&path, committed.next_offset) {
                Ok(Some(prefix)) => prefix.entries,
                Ok(None) => {
                    if !committed.lost.partitions.contains(partition) {
                        out.without_manifest.push(pdir);
                    }
                    continue;
                }
                Err(HistoryError::Integrity(e)) => {
                    out.problems.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for entry in entries {
                listed.insert((partition.clone(), entry.file.clone()));
                let path = pdir.join(&entry.file);
                if !path.exists() {
                    if !committed.lost.has_file(partition, &entry.file) {
                        out.missing.push(problem(path, &entry, String::new()));
                    }
                    continue;
                }
                match inspect(&path, entry.rows, entry.bytes, full) {
                    Ok(()) => {
                        out.files += 1;
                        out.rows += entry.rows;
                        out.bytes += entry.bytes;
                    }
                    Err(reason) => out.damaged.push(problem(path, &entry, reason)),
                }
            }
        }
    }
    if dir.is_dir() {
        let next = committed.as_ref().map_or(0, |c| c.next_offset);
        for date in subdirs(&dir, DATE_COLUMN)? {
            for hour in subdirs(&date, HOUR_COLUMN)? {
                let partition = writer::relative_partition(&dir, &hour);
                let held = crate::compact::held_files(&hour);
                for entry in fs::read_dir(&hour).map_err(HistoryError::io("listing", &hour))? {
                    let entry = entry.map_err(HistoryError::io("listing", &hour))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".parquet") {
                        continue;
                    }
                    let committed_here = partition
                        .as_ref()
                        .is_some_and(|p| listed.contains(&(p.clone(), name.clone())));
                    // A flush in progress (or one recovery will remove).
                    let in_flight = writer::flush_offset(&name).is_some_and(|o| o >= next);
                    if committed_here || in_flight {
                        continue;
                    }
                    if held.contains(&name) {
                        out.compaction_held.push(entry.path());
                    } else {
                        out.not_committed.push(entry.path());
                    }
                }
            }
        }
    }
    Ok(out)
}

fn problem(path: PathBuf, entry: &FileEntry, reason: String) -> FileProblem {
    FileProblem {
        path,
        rows: entry.rows,
        bytes: entry.bytes,
        reason,
    }
}

/// Why a present committed file of `rows` rows and `bytes` bytes is not as
/// committed, if it is not: its size, its footer, its row count, and with
/// `full` every page.
pub(crate) fn inspect(path: &Path, rows: u64, bytes: u64, full: bool) -> Result<(), String> {
    let (found_rows, found_bytes) =
        writer::footer_rows(path).map_err(|e| match fs::metadata(path) {
            Ok(m) if m.len() != bytes => format!("{} bytes on disk, {bytes} committed", m.len()),
            _ => format!("unreadable footer: {e}"),
        })?;
    if found_bytes != bytes {
        return Err(format!("{found_bytes} bytes on disk, {bytes} committed"));
    }
    if found_rows != rows {
        return Err(format!("{found_rows} rows in its footer, {rows} committed"));
    }
    if full {
        let decoded = decode_all(path).map_err(|e| format!("does not decode: {e}"))?;
        if decoded != rows {
            return Err(format!("{decoded} rows decoded, {rows} committed"));
        }
    }
    Ok(())
}

/// Decodes every row of a Parquet file; returns how many there were.
fn decode_all(path: &Path) -> Result<u64, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for batch in reader {
        rows += batch.map_err(|e| e.to_string())?.num_rows() as u64;
    }
    Ok(rows)
}

fn subdirs(dir: &Path, column: &str) -> Result<Vec<PathBuf>, HistoryError> {
    let prefix = format!("{column}=");
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(HistoryError::io("listing", dir))? {
        let entry = entry.map_err(HistoryError::io("listing", dir))?;
        let name = entry.file_name();
        if entry.path().is_dir() && name.to_str().is_some_and(|n| n.starts_with(&prefix)) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// What [`forget_missing`] recorded.
#[derive(Debug, Clone)]
pub struct ForgetReport {
    pub table: Table,
    /// The records appended to `_lost`.
    pub recorded: Vec<LostRecord>,
    /// Rows of the forgotten files (of the files whose rows are known).
    pub rows: u64,
    /// Whether whole partitions were forgotten, whose rows are not known.
    pub rows_unknown: bool,
    /// Committed partitions whose manifest is gone but whose directory is
    /// there: not forgotten (their files are present); [`repair`] rebuilds
    /// the manifest from them.
    pub needs_rebuild: Vec<String>,
}

/// Records every committed file of `table` that is missing, and every
/// committed partition whose directory is gone, in `<table>/_lost` (what,
/// how many rows and bytes, when), so that queries stop failing on them.
/// Safe while the writer runs; files restored later are read again.
pub fn forget_missing(root: &Path, table: Table) -> Result<ForgetReport, HistoryError> {
    let mut report = ForgetReport {
        table,
        recorded: Vec::new(),
        rows: 0,
        rows_unknown: false,
        needs_rebuild: Vec::new(),
    };
    let Some(committed) = manifest::read_committed(root, table)? else {
        return Ok(report);
    };
    for partition in &committed.partitions {
        let pdir = committed.dir.join(partition);
        let entries =
            manifest::read_prefix::<FileEntry>(&pdir.join(MANIFEST_FILE), committed.next_offset)?;
        let Some(entries) = entries else {
            if committed.lost.partitions.contains(partition) {
                continue;
            }
            if pdir.is_dir() {
                report.needs_rebuild.push(partition.clone());
            } else {
                report.rows_unknown = true;
                report
                    .recorded
                    .push(LostRecord::new(LossReason::MissingPartition, partition));
            }
            continue;
        };
        for entry in entries.entries {
            if committed.lost.has_file(partition, &entry.file) || pdir.join(&entry.file).exists() {
                continue;
            }
            report.rows += entry.rows;
            report.recorded.push(LostRecord::for_file(
                LossReason::MissingFile,
                partition,
                &entry,
            ));
        }
    }
    manifest::append_lost(&committed.dir, &report.recorded)?;
    for r in &report.recorded {
        tracing::warn!(
            table = table.name(),
            partition = r.partition,
            file = r.file.as_deref().unwrap_or("(whole partition)"),
            rows = r.rows,
            "recorded a committed loss"
        );
    }
    Ok(report)
}

/// What [`repair`] did to one table.
#[derive(Debug, Clone)]
pub struct TableRepair {
    pub table: Table,
    /// What recovery did; `None` when a running writer holds the table (it
    /// recovers when it starts; stop it and repair again for a rebuild).
    pub recovery: Option<Recovery>,
    /// Why recovery could not run, when it could not.
    pub error: Option<String>,
    /// What [`forget_missing`] recorded, when asked for.
    pub forgot: Option<ForgetReport>,
}

/// Repairs every table under `root`: runs the writer's recovery thoroughly
/// (unless a writer holds the table), then, with `forget`, records what is
/// still missing with [`forget_missing`].
pub fn repair(root: &Path, forget: bool) -> Result<Vec<TableRepair>, HistoryError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let mut r = TableRepair {
            table,
            recovery: None,
            error: None,
            forgot: None,
        };
        match TableWriter::open_thorough(root, table) {
            Ok(writer) => r.recovery = Some(writer.recovery().clone()),
            Err(e @ HistoryError::Locked { .. }) => r.error = Some(e.to_string()),
            Err(HistoryError::Integrity(e)) => r.error = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        if forget {
            match forget_missing(root, table) {
                Ok(report) => r.forgot = Some(report),
                Err(HistoryError::Integrity(e)) => {
                    r.error.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        out.push(r);
    }
    Ok(out)
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            write!(f, "{t}")?;
        }
        if !self.is_clean() {
            writeln!(
                f,
                "queries that read a missing or damaged file fail until it is restored from a backup, \
                 or its loss is recorded with `otwatch history repair --forget-missing` \
                 (move a damaged file out of the history directory first)"
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for TableCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_clean() { "ok" } else { "PROBLEMS" };
        match self.next_offset {
            Some(offset) => writeln!(
                f,
                "{}: {state}: {} files, {} rows, {} in {} partitions (committed log offset {offset})",
                self.table,
                self.files,
                self.rows,
                human_bytes(self.bytes),
                self.partitions
            )?,
            None => writeln!(f, "{}: {state}: nothing committed", self.table)?,
        }
        for p in &self.problems {
            writeln!(f, "  error: {p}")?;
        }
        for m in &self.missing {
            writeln!(
                f,
                "  missing: {} ({} rows, {})",
                m.path.display(),
                m.rows,
                human_bytes(m.bytes)
            )?;
        }
        for d in &self.damaged {
            writeln!(
                f,
                "  damaged: {} ({}; {} rows committed)",
                d.path.display(),
                d.reason,
                d.rows
            )?;
        }
        for p in &self.without_manifest {
            let what = if p.is_dir() {
                ""
            } else {
                " (directory gone too)"
            };
            writeln!(f, "  no manifest: {}{what}", p.display())?;
        }
        for p in &self.not_committed {
            writeln!(f, "  not committed (ignored by queries): {}", p.display())?;
        }
        if !self.compaction_held.is_empty() {
            writeln!(
                f,
                "  {} file(s) held by compaction outside the manifests (replaced files wait for the grace period; queries read one set)",
                self.compaction_held.len()
            )?;
        }
        for l in &self.lost {
            writeln!(
                f,
                "  lost (recorded {}): {}: {}{}{}",
                l.at,
                l.reason,
                l.partition,
                l.file
                    .as_deref()
                    .map(|n| format!("/{n}"))
                    .unwrap_or_default(),
                l.rows.map(|r| format!(", {r} rows")).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}
