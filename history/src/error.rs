//! The one error type of the history crate. Every variant names what was
//! being done (and to which file or table) besides the underlying cause, so
//! a log line or CLI message is enough to act on.

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
    /// The history root cannot be expressed as a table URL.
    #[error("history path {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
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
}

impl HistoryError {
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
