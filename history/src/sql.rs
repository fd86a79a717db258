//! SQL over the history with DataFusion.
//!
//! [`session`] registers `events` and `alerts` as listing tables over the
//! Parquet files the writer lays out (see [`crate::writer`]), each with two
//! hive partition columns after the file columns:
//!
//! - `date` (`Date32`): the UTC date of `ts`, so `WHERE date = '2024-05-01'`
//!   or `date >= current_date - 7` list only the matching directories;
//! - `hour` (`Int32`, 0..=23): the UTC hour of `ts`.
//!
//! `ts` predicates prune too, within files: row groups and pages carry
//! min/max statistics and filters are pushed into the Parquet decoder.
//!
//! The table schemas are fixed (not inferred), so empty or not yet created
//! tables are queryable and return no rows. Files are listed on every scan,
//! never cached, so a long-lived context sees each flush as soon as it is
//! committed.

use crate::writer::{DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table};
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::Path;
use std::sync::Arc;

/// A DataFusion `SessionContext` with `events` and `alerts` registered over
/// `<root>` (listing tables over the Parquet files, with hive partition
/// columns `date` and `hour` so queries prune by time; empty tables work and
/// return 0 rows). Files are re-listed on every scan so new data is visible.
pub async fn session(root: &Path) -> Result<SessionContext, HistoryError> {
    let mut config = SessionConfig::new().with_information_schema(true);
    let parquet = &mut config.options_mut().execution.parquet;
    parquet.pushdown_filters = true;
    parquet.reorder_filters = true;
    // The default list-files cache never expires: a context kept open by a
    // server would not see files written after its first scan.
    let runtime = RuntimeEnvBuilder::new()
        .with_object_list_cache_limit(0)
        .build_arc()
        .map_err(|source| HistoryError::Session {
            context: "creating the query runtime".into(),
            source,
        })?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for table in Table::ALL {
        let provider = listing_table(root, table)?;
        ctx.register_table(table.name(), Arc::new(provider))
            .map_err(|source| HistoryError::Session {
                context: format!("registering table {table}"),
                source,
            })?;
    }
    Ok(ctx)
}

/// Runs one read-only SQL statement (see [`read_only`]) over the history at
/// `root` and collects the result.
pub async fn query(root: &Path, sql: &str) -> Result<Vec<RecordBatch>, HistoryError> {
    let ctx = session(root).await?;
    let frame = ctx
        .sql_with_options(sql, read_only())
        .await
        .map_err(|source| HistoryError::Query { source })?;
    frame
        .collect()
        .await
        .map_err(|source| HistoryError::Query { source })
}

/// The statements analysts may run: queries only. DDL (`CREATE EXTERNAL
/// TABLE`), DML (`COPY ... TO`, `INSERT`) and `SET` are refused, so a query
/// front end can neither write files nor change the session of others.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

fn listing_table(root: &Path, table: Table) -> Result<ListingTable, HistoryError> {
    let dir = root.join(table.name());
    let mut url = dir
        .to_str()
        .ok_or_else(|| HistoryError::NonUtf8Path { path: dir.clone() })?
        .to_owned();
    // A trailing separator makes DataFusion treat the path as a directory
    // even when it does not exist yet.
    if !url.ends_with(std::path::MAIN_SEPARATOR) {
        url.push(std::path::MAIN_SEPARATOR);
    }
    let session_err = |context: String| move |source| HistoryError::Session { context, source };
    let url = ListingTableUrl::parse(&url)
        .map_err(session_err(format!("table path {}", dir.display())))?;

    // The format carries its own Parquet options; session-level settings do
    // not reach a programmatically registered table.
    let mut parquet = TableParquetOptions::default();
    parquet.global.pushdown_filters = true;
    parquet.global.reorder_filters = true;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default().with_options(parquet)))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            (DATE_COLUMN.to_owned(), DataType::Date32),
            (HOUR_COLUMN.to_owned(), DataType::Int32),
        ]);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(table.schema());
    ListingTable::try_new(config).map_err(session_err(format!("creating table {table}")))
}
