//! The otwatch history: the `events` and `alerts` tables as Parquet files on
//! disk, the writer that fills them from the event log, SQL over them, and
//! the tools that check them.
//!
//! - [`writer`]: [`TableWriter`] turns record batches into Parquet files
//!   partitioned by UTC date, hour and site, lists them in per-partition
//!   manifests, and commits the event-log offset it reached together with
//!   the files, so that after any crash the committed files hold exactly
//!   the rows of the committed offsets. The on-disk layout and its recovery
//!   invariant are documented there; the manifest formats in [`manifest`].
//! - [`compact`]: [`Compactor`] merges the small files of closed hours into
//!   large files sorted by site, asset and `ts`, swapped in atomically by
//!   [`TableWriter::commit_compaction`]; replaced files stay for a grace
//!   period for the queries that listed them.
//! - [`retention`]: [`TableWriter::drop_partitions_before`] drops whole
//!   partitions older than the retention, crash-safe.
//! - [`sql`]: DataFusion sessions with both tables registered over their
//!   committed files only, under a memory limit ([`SqlConfig`]);
//!   [`query_stream`] streams a result, [`query`] collects one. A query
//!   that needs a committed file that is missing or damaged fails with an
//!   [`IntegrityError`] naming it. Scans read only the partitions and
//!   files their `date`, `hour`, `ts` and `site` filters can need (the
//!   crate's `scan` module).
//! - [`integrity`]: [`check`] compares the disk with the manifests,
//!   [`forget_missing`] records acknowledged losses, [`repair`] runs
//!   recovery thoroughly.
//! - [`format`](mod@format): query results as a text table, CSV or JSON lines,
//!   whole or batch by batch.
//!
//! The files are plain Parquet with hive-style `date=`/`hour=` directories:
//! DuckDB, pyarrow and polars read them without otwatch (a reader that
//! globs `*.parquet` also reads files no manifest lists; `_manifest` in each
//! partition says which are committed).

pub mod compact;
mod error;
pub mod format;
pub mod integrity;
pub mod manifest;
pub mod retention;
mod scan;
pub mod sql;
mod store;
mod table;
pub mod writer;

pub use compact::{CompactionConfig, Compactor, Prepared};
pub use error::{HistoryError, IntegrityError};
pub use format::{format_batches, BatchWriter, OutputFormat};
pub use integrity::{
    check, forget_missing, repair, CheckReport, ForgetReport, TableCheck, TableRepair,
};
pub use manifest::{LossReason, LostRecord};
pub use sql::{
    query, query_stream, query_with, read_only, session, session_with, QueryStream, SqlConfig,
};
pub use table::Table;
pub use writer::{Recovery, TableWriter, WriteStats};
