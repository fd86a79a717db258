//! The error types of the history crate. Every variant names what was
//! being done (and to which file or table) besides the underlying cause, so
//! a log line or CLI message is enough to act on.
//!
//! - [`HistoryError`]: everything writing, recovering, checking and
//!   querying can fail with.
//! - [`IntegrityError`]: the history on disk is not what was committed (a
//!   committed file or partition is missing or damaged, a manifest is
//!   corrupt). It is `Clone` because it travels through DataFusion's error
//!   chain (raised by the object store that serves committed files) and is
//!   taken out again by the query functions. Each message says how to
//!   proceed.

use datafusion::error::DataFusionError;
use std::path::{Path, PathBuf};

/// Errors of writing, recovering and querying the history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing", "renaming into place".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Encoding a Parquet file failed.
    #[error("writing Parquet file {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow kernel failed while partitioning or validating batches.
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A batch handed to a writer does not have the table's schema.
    #[error("batch {index} does not match the {table} schema: {detail}")]
    Schema {
        table: &'static str,
        index: usize,
        detail: String,
    },
    /// A write asked to move the committed offset backwards.
    #[error("{table}: next offset {requested} is behind the committed offset {committed}")]
    OffsetBehind {
        table: &'static str,
        committed: u64,
        requested: u64,
    },
    /// A write carried rows but did not advance the offset, which would make
    /// its files indistinguishable from the previous flush's on recovery.
    #[error("{table}: {rows} rows written without advancing the offset past {offset}")]
    OffsetNotAdvanced {
        table: &'static str,
        offset: u64,
        rows: usize,
    },
    /// The commit file exists but cannot be read as `{"next_offset":N}`.
    #[error("commit file {} is corrupt: {source}", path.display())]
    CorruptCommit {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An earlier write failed part-way; the writer's view of the disk can
    /// no longer be trusted until recovery runs again.
    #[error("{table}: an earlier write failed; reopen the writer to recover")]
    Poisoned { table: &'static str },
    /// Setting up the SQL session failed.
    #[error("{context}: {source}")]
    Session {
        context: String,
        #[source]
        source: DataFusionError,
    },
    /// Planning or running a query failed (bad SQL, unknown table or
    /// column, a statement that is not allowed, an execution error).
    #[error("query failed: {source}")]
    Query {
        #[source]
        source: DataFusionError,
    },
    /// Rendering query results failed.
    #[error("formatting results as {format}: {source}")]
    Format {
        format: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// An output format name that is not one of `table`, `csv`, `json`.
    #[error("unknown output format {0:?} (expected table, csv or json)")]
    UnknownFormat(String),
    /// Writing rendered results failed (a closed pipe, a full disk).
    #[error("writing results: {source}")]
    Output {
        #[source]
        source: std::io::Error,
    },
    /// Another writer holds the table (one writer per table: a second one
    /// would break the recovery invariant).
    #[error("the {table} history in {} is in use by another writer ({holder}); stop it first", dir.display())]
    Locked {
        table: &'static str,
        dir: PathBuf,
        holder: String,
    },
    /// The history on disk is not what was committed.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// A query needed more memory than `memory_limit` allows.
    #[error("query needs more memory than memory_limit = {} allows ({detail}); narrow it (WHERE on date, hour or ts; LIMIT) or raise memory_limit", human_bytes(*limit))]
    MemoryLimit { limit: u64, detail: String },
    /// A compaction found something other than what it expected (rows
    /// that do not add up, a manifest that no longer lists what it merged);
    /// nothing was swapped.
    #[error("compacting {partition}: {detail}; nothing was changed")]
    Compaction { partition: String, detail: String },
    /// A configuration value is out of range.
    #[error("{key}: {detail}")]
    Config { key: &'static str, detail: String },
}

/// The history on disk differs from what the writer committed. Queries
/// that would read an affected partition fail with one of these; the
/// message names the file or partition and how to proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// Committed data files are gone from the disk.
    #[error("{table}: committed file {} is missing (it held {rows} rows; {}): restore it from a backup, or run `otwatch history repair --forget-missing` to record the loss and query the rest; `otwatch history check` lists every problem", path.display(), missing_count(*missing_listed))]
    MissingFile {
        table: &'static str,
        /// The file that a query needed.
        path: PathBuf,
        /// Rows the file held when it was committed.
        rows: u64,
        /// How many of the files listed for the query (those under its
        /// `date`/`hour` prefix) were missing.
        missing_listed: usize,
    },
    /// A committed partition has lost its manifest (and perhaps its whole
    /// directory), so which files it held is no longer known.
    #[error("{}", partition_message(table, dir, *dir_present))]
    PartitionWithoutManifest {
        table: &'static str,
        dir: PathBuf,
        dir_present: bool,
    },
    /// A file a query listed is gone because the committed state no longer
    /// lists it: compaction merged it into a larger file and removed it
    /// after its grace period, or retention dropped its partition, while
    /// the query ran. Running the query again reads the files committed now.
    #[error("{table}: file {} was replaced by compaction or dropped by retention while this query ran (it read the history as it was when it started); run the query again", path.display())]
    Replaced { table: &'static str, path: PathBuf },
    /// A committed file is there but is not what was committed.
    #[error("{table}: file {} is damaged ({reason}): restore it from a backup, or move it out of the history directory and run `otwatch history repair --forget-missing` to record the loss", path.display())]
    Damaged {
        table: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A manifest or partition index has a line that is not a valid entry.
    #[error("manifest {} is corrupt at line {line} ({detail}): run `otwatch history repair` to rebuild it from the files present", path.display())]
    CorruptManifest {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// The commit file is gone although the table holds committed data.
    /// Without it nobody can tell which files are committed, and the log
    /// offset to resume from is unknown.
    #[error("{}: the commit file is missing but the table holds committed data ({detail}); restore it from a backup (nothing was changed)", path.display())]
    CommitMissing { path: PathBuf, detail: String },
    /// A table written before manifests existed: nothing says which of its
    /// files are committed yet.
    #[error("the {table} history in {} has no file manifests yet (written by an older otwatch): run `otwatch history repair`, or start the history writer once, to index it", dir.display())]
    NotIndexed { table: &'static str, dir: PathBuf },
}

impl HistoryError {
    /// The kind of the I/O error behind this one, if an I/O error caused it
    /// (directly, or inside a Parquet or DataFusion error).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            next = e.source();
        }
        None
    }

    /// True when the disk (or the user's quota) is full. Nothing committed
    /// is lost: the writer refuses further writes until it is recovered
    /// ([`crate::TableWriter::recover`] or reopening), which removes what
    /// the failed flush left. The caller should wait for space and retry
    /// from [`crate::TableWriter::next_offset`], rather than treat it as a
    /// bug.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        )
    }

    /// For `map_err`: the path is copied only when the error happens.
    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| HistoryError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<otwatch_fs::FsError> for HistoryError {
    fn from(e: otwatch_fs::FsError) -> Self {
        HistoryError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// `1 GiB`, `512 MiB`, `1536 KiB` or `100 bytes`: exact binary units when
/// the value is a whole number of them, else one decimal (`1.2 GiB`).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    match UNITS.iter().find(|(size, _)| n >= *size) {
        Some((size, unit)) => format!("{:.1} {unit}", n as f64 / *size as f64),
        None => format!("{n} bytes"),
    }
}

fn partition_message(table: &str, dir: &Path, dir_present: bool) -> String {
    if dir_present {
        format!(
            "{table}: committed partition {} has lost its manifest (`_manifest`): restore it from a backup, \
             or run `otwatch history repair` while `otwatch serve` is stopped to rebuild it from the files \
             present (the history writer also does so when it starts)",
            dir.display()
        )
    } else {
        format!(
            "{table}: committed partition {} is gone (its directory and manifest): restore it from a backup, \
             or run `otwatch history repair --forget-missing` to record the loss and query the rest",
            dir.display()
        )
    }
}

fn missing_count(n: usize) -> String {
    if n == 1 {
        "no other file this query lists is missing".to_owned()
    } else {
        format!("{n} of the files this query lists are missing")
    }
}
