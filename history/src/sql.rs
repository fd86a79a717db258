//! SQL over the history with DataFusion.
//!
//! [`session`] registers the tables (`events`, `alerts`) over the
//! committed Parquet files of each (see [`crate::writer`] for the layout),
//! each with two hive partition columns after the file columns:
//!
//! - `date` (`Date32`): the UTC date of `ts`, so `WHERE date = '2024-05-01'`
//!   or `date >= current_date - 7` read only the matching directories;
//! - `hour` (`Int32`, 0..=23): the UTC hour of `ts`.
//!
//! `ts` ranges prune partitions as `date` and `hour` do, `site` prunes
//! files, and within files row groups and pages are skipped by their
//! min/max statistics, with filters pushed into the Parquet decoder (see
//! [`crate::scan`]).
//!
//! The table schemas are fixed (not inferred), so empty or not yet created
//! tables are queryable and return no rows. Files are listed on every scan,
//! never cached, so a long-lived context sees each flush as soon as it is
//! committed, and never before.
//!
//! # Which files a query reads
//!
//! Only committed ones: the tables are served by an object store that lists
//! the files of the manifests, not of the directories (the crate's `store`
//! module). A stray `*.parquet` in a table directory is ignored
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
//!
//! # Memory
//!
//! Each query runs under a memory pool of [`SqlConfig::memory_limit`]:
//! sorts, aggregations and joins reserve what they hold; those that can
//! spill write to disk beyond it, and a query that still needs more fails
//! with [`HistoryError::MemoryLimit`] naming the limit. Results are produced
//! as a stream ([`query_stream`]), so a front end prints them batch by batch
//! and never holds the whole result; [`SqlConfig::max_rows`] caps the rows a
//! query returns and [`QueryStream::truncated`] says when it cut. [`query`]
//! collects the result for callers that want batches, and refuses a result
//! larger than the memory limit.

use crate::error::{human_bytes, IntegrityError};
use crate::scan::HistoryTable;
use crate::store::{CommittedStore, ListedFile};
use crate::{HistoryError, Table};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::EmptyRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Limits of SQL over the history: `otwatch sql` options, and the settings
/// of any long-lived SQL front end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Memory one query may hold in its operators (hash tables of joins and
    /// aggregations, sort buffers, join build sides), in bytes. Sorts,
    /// aggregations and joins that can spill go to disk beyond it; a query
    /// that still needs more fails with an error naming this limit. Results
    /// are streamed and not counted, except by [`query`], which collects
    /// them and refuses a result larger than this. Default: 1 GiB.
    pub memory_limit: u64,
    /// Most rows a query returns; the rest are not computed, and the result
    /// says that it was cut ([`QueryStream::truncated`]). Default: none
    /// (every row).
    pub max_rows: Option<u64>,
    /// Directory for spill files. Default: the system's temporary
    /// directory (`TMPDIR`).
    pub spill_dir: Option<PathBuf>,
    /// Most disk the spill files of one query may use, in bytes; beyond it
    /// the query fails. Default: 16 GiB.
    pub max_spill_bytes: u64,
}

/// 1 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
const DEFAULT_MAX_SPILL_BYTES: u64 = 16 << 30;
/// DataFusion reserves this much per sort for merging spilled runs; less
/// when the whole limit is small, so a small limit still sorts by spilling.
const SORT_MERGE_RESERVATION: u64 = 10 << 20;

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_rows: None,
            spill_dir: None,
            max_spill_bytes: DEFAULT_MAX_SPILL_BYTES,
        }
    }
}

impl SqlConfig {
    /// Refuses values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.memory_limit == 0 {
            return Err(HistoryError::Config {
                key: "memory_limit",
                detail: "must be more than 0 bytes".into(),
            });
        }
        if usize::try_from(self.memory_limit).is_err() {
            return Err(HistoryError::Config {
                key: "memory_limit",
                detail: format!(
                    "{} bytes is more than this machine can address",
                    self.memory_limit
                ),
            });
        }
        if self.max_rows == Some(0) {
            return Err(HistoryError::Config {
                key: "max_rows",
                detail: "must be at least 1 (leave it out for no cap)".into(),
            });
        }
        if self.max_spill_bytes == 0 {
            return Err(HistoryError::Config {
                key: "max_spill_bytes",
                detail: "must be more than 0 bytes".into(),
            });
        }
        Ok(())
    }
}

/// A DataFusion `SessionContext` with `events` and `alerts` registered over
/// `<root>` with the default [`SqlConfig`]; see the module documentation.
pub async fn session(root: &Path) -> Result<SessionContext, HistoryError> {
    Ok(Session::new(root, &SqlConfig::default())?.ctx)
}

/// [`session`] with the given limits (memory pool, spill directory).
/// `max_rows` is not applied here: it belongs to [`query_stream`].
pub async fn session_with(root: &Path, config: &SqlConfig) -> Result<SessionContext, HistoryError> {
    Ok(Session::new(root, config)?.ctx)
}

/// A context and the stores behind its tables, kept to explain failures.
struct Session {
    ctx: SessionContext,
    stores: Vec<CommittedStore>,
    memory_limit: u64,
}

impl Session {
    fn new(root: &Path, config: &SqlConfig) -> Result<Session, HistoryError> {
        config.validate()?;
        let session_err = |context: &str| {
            let context = context.to_owned();
            move |source| HistoryError::Session { context, source }
        };
        let limit = usize::try_from(config.memory_limit).expect("validated");
        let mut session_config = SessionConfig::new().with_information_schema(true);
        let options = session_config.options_mut();
        options.execution.parquet.pushdown_filters = true;
        options.execution.parquet.reorder_filters = true;
        options.execution.sort_spill_reservation_bytes =
            (SORT_MERGE_RESERVATION as usize).min(limit / 16);
        let disk = DiskManagerBuilder::default()
            .with_mode(match &config.spill_dir {
                Some(dir) => DiskManagerMode::Directories(vec![dir.clone()]),
                None => DiskManagerMode::OsTmpDirectory,
            })
            .with_max_temp_directory_size(config.max_spill_bytes);
        // A fair pool shares the limit among the operators that can spill,
        // so one sort cannot starve another into failing; the tracking
        // wrapper names the largest consumers when a query hits the limit.
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(3).expect("3 is not zero"),
        );
        // The default list-files cache never expires: a context kept open by
        // a server would not see files written after its first scan.
        let runtime = RuntimeEnvBuilder::new()
            .with_object_list_cache_limit(0)
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(disk)
            .build_arc()
            .map_err(session_err("creating the query runtime"))?;
        let ctx = SessionContext::new_with_config_rt(session_config, runtime);
        let mut stores = Vec::new();
        for table in Table::ALL {
            let store = CommittedStore::new(root, table);
            let url = ObjectStoreUrl::parse(CommittedStore::url(table))
                .map_err(session_err("naming the table store"))?;
            ctx.register_object_store(url.as_ref(), Arc::new(store.clone()));
            let provider = HistoryTable::new(table, store.clone());
            ctx.register_table(table.name(), Arc::new(provider))
                .map_err(session_err(&format!("registering table {table}")))?;
            stores.push(store);
        }
        Ok(Session {
            ctx,
            stores,
            memory_limit: config.memory_limit,
        })
    }

    /// Plans `sql` (read-only) and starts it, with `max_rows` applied.
    async fn start(
        &self,
        sql: &str,
        max_rows: Option<u64>,
    ) -> Result<SendableRecordBatchStream, HistoryError> {
        let started = async {
            let mut frame = self.ctx.sql_with_options(sql, read_only()).await?;
            if let Some(n) = max_rows {
                // One row more than the cap tells whether the cap cut.
                let fetch = usize::try_from(n.saturating_add(1)).unwrap_or(usize::MAX);
                frame = frame.limit(0, Some(fetch))?;
            }
            frame.execute_stream().await
        };
        match started.await {
            Ok(stream) => Ok(stream),
            Err(e) => Err(self.explain(e).await),
        }
    }

    /// Turns a DataFusion error into the most specific history error: an
    /// integrity problem raised by the store, the memory limit, or a
    /// damaged file found by reading the footers of the files the query
    /// listed (DataFusion's own Parquet errors do not name the file).
    async fn explain(&self, e: DataFusionError) -> HistoryError {
        if let Some(problem) = integrity_problem(&e) {
            return problem.into();
        }
        if let Some(detail) = resources_exhausted(&e) {
            return HistoryError::MemoryLimit {
                limit: self.memory_limit,
                detail,
            };
        }
        if reads_files(&e) {
            // DataFusion reports a failed read of a file's footer as text,
            // losing the store's error: ask the stores again about what the
            // query listed, the file the message names first.
            let text = e.to_string();
            let stores = self.stores.clone();
            let listed = tokio::task::spawn_blocking(move || {
                stores.iter().find_map(|s| s.listed_problem(&text))
            })
            .await
            .ok()
            .flatten();
            if let Some(problem) = listed {
                return problem.into();
            }
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
/// `root` with the default limits and collects the result.
pub async fn query(root: &Path, sql: &str) -> Result<Vec<RecordBatch>, HistoryError> {
    query_with(root, sql, &SqlConfig::default()).await
}

/// [`query`] with the given limits. The collected result counts against
/// `memory_limit`: a larger one fails with [`HistoryError::MemoryLimit`]
/// (use [`query_stream`] to print it batch by batch). A `max_rows` cap
/// cuts silently here; [`query_stream`] says when it cut.
pub async fn query_with(
    root: &Path,
    sql: &str,
    config: &SqlConfig,
) -> Result<Vec<RecordBatch>, HistoryError> {
    let mut stream = query_stream(root, sql, config).await?;
    let mut out = Vec::new();
    let mut held = 0u64;
    while let Some(batch) = stream.next_batch().await {
        let batch = batch?;
        held += batch.get_array_memory_size() as u64;
        if held > config.memory_limit {
            return Err(HistoryError::MemoryLimit {
                limit: config.memory_limit,
                detail: format!(
                    "the collected result reached {} after {} rows",
                    human_bytes(held),
                    out.iter().map(RecordBatch::num_rows).sum::<usize>() + batch.num_rows()
                ),
            });
        }
        out.push(batch);
    }
    Ok(out)
}

/// Starts one read-only SQL statement over the history at `root` and
/// returns its result as a stream of batches, capped at
/// `config.max_rows`. Planning errors come back here, execution errors from
/// [`QueryStream::next_batch`].
pub async fn query_stream(
    root: &Path,
    sql: &str,
    config: &SqlConfig,
) -> Result<QueryStream, HistoryError> {
    let session = Session::new(root, config)?;
    let stream = session.start(sql, config.max_rows).await?;
    Ok(QueryStream {
        schema: stream.schema(),
        stream,
        remaining: config.max_rows,
        truncated: false,
        done: false,
        session,
    })
}

/// The result of [`query_stream`], batch by batch.
pub struct QueryStream {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    /// Rows still allowed under `max_rows`.
    remaining: Option<u64>,
    truncated: bool,
    done: bool,
    session: Session,
}

impl QueryStream {
    /// The schema of every batch.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The next non-empty batch, an error (after which the stream ends), or
    /// `None` at the end.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch, HistoryError>> {
        while !self.done {
            match self.stream.next().await {
                None => self.finish(),
                Some(Err(e)) => {
                    self.finish();
                    return Some(Err(self.session.explain(e).await));
                }
                Some(Ok(batch)) => {
                    let rows = batch.num_rows() as u64;
                    let Some(remaining) = self.remaining else {
                        if rows > 0 {
                            return Some(Ok(batch));
                        }
                        continue;
                    };
                    if rows <= remaining {
                        self.remaining = Some(remaining - rows);
                        if rows > 0 {
                            return Some(Ok(batch));
                        }
                        continue;
                    }
                    self.truncated = true;
                    self.finish();
                    if remaining > 0 {
                        return Some(Ok(batch.slice(0, remaining as usize)));
                    }
                }
            }
        }
        None
    }

    /// True once the result was cut at `max_rows` (more rows existed).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Ends the stream and drops the running plan, which stops its work.
    fn finish(&mut self) {
        self.done = true;
        self.stream = Box::pin(EmptyRecordBatchStream::new(Arc::clone(&self.schema)));
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

/// The message of a memory-pool refusal, if it is behind `e`.
fn resources_exhausted(e: &DataFusionError) -> Option<String> {
    chain(e).find_map(|e| {
        let df = e
            .downcast_ref::<DataFusionError>()
            .or_else(|| e.downcast_ref::<Arc<DataFusionError>>().map(Arc::as_ref))?;
        match df {
            DataFusionError::ResourcesExhausted(msg) => Some(first_line(msg)),
            _ => None,
        }
    })
}

fn first_line(msg: &str) -> String {
    let msg = msg.trim();
    // The tracking pool's message lists the top consumers, then the error.
    match msg.rsplit_once("Error: ") {
        Some((_, last)) => last.lines().next().unwrap_or(last).to_owned(),
        None => msg.lines().next().unwrap_or(msg).to_owned(),
    }
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
