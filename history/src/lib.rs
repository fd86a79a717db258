//! The otwatch history: the `events` and `alerts` tables as Parquet files on
//! disk, the writer that fills them from the event log, and SQL over them.
//!
//! - [`writer`]: [`TableWriter`] turns record batches into zstd Parquet files
//!   partitioned by UTC date, hour and site, and commits the event-log offset
//!   it reached together with the files, so that after any crash the files
//!   hold exactly the rows of the committed offsets. The on-disk layout and
//!   its recovery invariant are documented there.
//! - [`sql`]: a DataFusion [`SessionContext`](datafusion::prelude::SessionContext)
//!   with both tables registered, re-listing files on every scan so new data
//!   is queryable as soon as it is committed, and [`query`] for one-shot SQL.
//! - [`format`](mod@format): query results as a text table, CSV or JSON lines.
//!
//! The files are plain Parquet with hive-style `date=`/`hour=` directories:
//! DuckDB, pyarrow and polars read them without otwatch.

mod error;
pub mod format;
pub mod sql;
mod table;
pub mod writer;

pub use error::HistoryError;
pub use format::{format_batches, OutputFormat};
pub use sql::{query, read_only, session};
pub use table::Table;
pub use writer::{TableWriter, WriteStats};
