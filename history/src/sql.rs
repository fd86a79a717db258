//! SQL over the history with DataFusion.
//!
//! [`session`] registers `events` and `alerts` as listing tables over the
//! committed Parquet files of each table (see [`crate::writer`] for the
//! layout), each with two hive partition columns after the file columns:
//!
//! - `date` (`Date32`): the UTC date of `ts`, so `WHERE date = '2024-05-01'`
//!   or `date >= current_date - 7` read only the matching directories;
//! - `hour` (`Int32`, 0..=23): the UTC hour of `ts`.
//!
//! `ts` predicates prune too, within files: row groups and pages carry
//! min/max statistics and filters are pushed into the Parquet decoder.
//!
//! The table schemas are fixed (not inferred), so empty or not yet created
//! tables are queryable and return no rows. Files are listed on every scan,
//! never cached, so a long-lived context sees each flush as soon as it is
//! committed, and never before.
//!
//! # Which files a query reads
//!
//! Only committed ones: the tables are served by an object store that lists
//! the files of the manifests, not of the directories (see
//! [`crate::store`]). A stray `*.parquet` in a table directory is ignored
//! (and reported by [`crate::check`]).
//!
//! A committed file that is missing or damaged makes every query that would
//! read it **fail**, with an [`IntegrityError`] naming the file and how to
//! proceed (restore it, or acknowledge the loss with
//! [`crate::forget_missing`]). We fail rather than answer with a warning
//! because an answer travels without its warnings: through the Postgres
//! wire into Grafana, through `--format csv` into a script, a count is just
//! a number, and a number that is silently too small is the one outcome an
//! analyst cannot detect. Queries whose `date`/`hour` filters exclude the
//! damaged partition still run, so the rest of the history stays usable
//! until the operator decides.

use crate::error::IntegrityError;
use crate::store::{CommittedStore, ListedFile};
use crate::writer::{DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table};
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::Path;
use std::sync::Arc;

/// A DataFusion `SessionContext` with `events` and `alerts` registered over
/// the committed files under `<root>`; see the module documentation.
pub async fn session(root: &Path) -> Result<SessionContext, HistoryError> {
    Ok(Session::new(root)?.ctx)
}

/// A context and the stores behind its tables, kept to explain failures.
struct Session {
    ctx: SessionContext,
    stores: Vec<CommittedStore>,
}

impl Session {
    fn new(root: &Path) -> Result<Session, HistoryError> {
        let session_err = |context: &str| {
            let context = context.to_owned();
            move |source| HistoryError::Session { context, source }
        };
        let mut session_config = SessionConfig::new().with_information_schema(true);
        let parquet = &mut session_config.options_mut().execution.parquet;
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;
        // The default list-files cache never expires: a context kept open by
        // a server would not see files written after its first scan.
        let runtime = RuntimeEnvBuilder::new()
            .with_object_list_cache_limit(0)
            .build_arc()
            .map_err(session_err("creating the query runtime"))?;
        let ctx = SessionContext::new_with_config_rt(session_config, runtime);
        let mut stores = Vec::new();
        for table in Table::ALL {
            let store = CommittedStore::new(root, table);
            let url = ObjectStoreUrl::parse(CommittedStore::url(table))
                .map_err(session_err("naming the table store"))?;
            ctx.register_object_store(url.as_ref(), Arc::new(store.clone()));
            let provider = listing_table(table)?;
            ctx.register_table(table.name(), Arc::new(provider))
                .map_err(session_err(&format!("registering table {table}")))?;
            stores.push(store);
        }
        Ok(Session { ctx, stores })
    }

    /// Turns a DataFusion error into the most specific history error: an
    /// integrity problem raised by the store, or a damaged file found by
    /// inspecting the files the query listed (DataFusion's own Parquet
    /// errors do not name the file).
    async fn explain(&self, e: DataFusionError) -> HistoryError {
        if let Some(problem) = integrity_problem(&e) {
            return problem.into();
        }
        if reads_files(&e) {
            let files: Vec<ListedFile> = self
                .stores
                .iter()
                .flat_map(CommittedStore::listed_files)
                .collect();
            let found = tokio::task::spawn_blocking(move || first_damaged(files))
                .await
                .ok()
                .flatten();
            if let Some(problem) = found {
                tracing::debug!(error = %e, "query failed on a damaged file");
                return problem.into();
            }
        }
        HistoryError::Query { source: e }
    }
}

/// Runs one read-only SQL statement (see [`read_only`]) over the history at
/// `root` and collects the result.
pub async fn query(root: &Path, sql: &str) -> Result<Vec<RecordBatch>, HistoryError> {
    let session = Session::new(root)?;
    let result = async {
        session
            .ctx
            .sql_with_options(sql, read_only())
            .await?
            .collect()
            .await
    };
    match result.await {
        Ok(batches) => Ok(batches),
        Err(e) => Err(session.explain(e).await),
    }
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

fn listing_table(table: Table) -> Result<ListingTable, HistoryError> {
    let session_err = |context: String| move |source| HistoryError::Session { context, source };
    let url = ListingTableUrl::parse(CommittedStore::url(table))
        .map_err(session_err(format!("table URL of {table}")))?;

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

/// Every error in the chain of `e`, outermost first.
fn chain(e: &DataFusionError) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
}

/// The integrity problem the store raised, if it is behind `e`.
fn integrity_problem(e: &DataFusionError) -> Option<IntegrityError> {
    chain(e).find_map(|e| e.downcast_ref::<IntegrityError>().cloned())
}

/// Whether `e` could come from reading a file: a Parquet, storage or I/O
/// error (not, say, a cast that failed on a value).
fn reads_files(e: &DataFusionError) -> bool {
    use arrow::error::ArrowError;
    chain(e).any(|e| {
        e.is::<parquet::errors::ParquetError>()
            || e.is::<object_store::Error>()
            || e.is::<std::io::Error>()
            || matches!(
                e.downcast_ref::<ArrowError>(),
                Some(ArrowError::ParquetError(_) | ArrowError::IoError(..))
            )
            || matches!(
                e.downcast_ref::<DataFusionError>(),
                Some(DataFusionError::ParquetError(_))
            )
    })
}

/// Most bytes the diagnosis of one failed query decodes in full.
const DIAGNOSIS_DECODE_BYTES: u64 = 256 << 20;

/// The first listed file that is not as committed: first by footer (cheap,
/// every file), then by decoding every page, as long as the files decoded
/// stay within [`DIAGNOSIS_DECODE_BYTES`] (beyond, `otwatch history check
/// --full` finds it).
fn first_damaged(mut files: Vec<ListedFile>) -> Option<IntegrityError> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.retain(|f| f.path.exists()); // a missing file is the store's to report
    let damaged = |f: &ListedFile, full: bool| {
        crate::integrity::inspect(&f.path, f.rows, f.bytes, full)
            .err()
            .map(|reason| IntegrityError::Damaged {
                table: f.table.name(),
                path: f.path.clone(),
                reason,
            })
    };
    if let Some(found) = files.iter().find_map(|f| damaged(f, false)) {
        return Some(found);
    }
    let mut budget = DIAGNOSIS_DECODE_BYTES;
    files.iter().find_map(|f| {
        budget = budget.checked_sub(f.bytes)?;
        damaged(f, true)
    })
}
