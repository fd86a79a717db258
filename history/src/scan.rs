//! A history table as DataFusion sees it: a [`TableProvider`] that lists
//! the committed files of one scan itself, reading only the manifests and
//! files the query can need.
//!
//! A scan narrows what it reads in three steps, each from what is already
//! known, before any Parquet file is opened:
//!
//! 1. **Partitions**, from the partition index alone: filters on the
//!    partition columns `date` and `hour` are evaluated exactly on each
//!    committed partition's values (so DataFusion does not filter those
//!    rows again), and a bound on `ts` (`ts >= …`, `ts < …`, `ts BETWEEN …`,
//!    `ts = …`) keeps only the hours it overlaps: every row of
//!    `date=D/hour=H` has its `ts` in that hour. Only the manifests of the
//!    partitions kept are read.
//! 2. **Files**, from their manifest lines: `site = '…'` or `site IN (…)`
//!    keeps the files of those sites, and the `ts` bound keeps the files
//!    whose `ts_min..ts_max` overlaps it (see [`crate::manifest`]; lines
//!    without these fields are always kept).
//! 3. **Row groups and pages**, by DataFusion's Parquet reader from the
//!    files' statistics, with the filters pushed into the decoder.
//!    Compacted files are sorted by site, asset and `ts` (see
//!    [`crate::compact`]), so their statistics are narrow. Only files of at
//!    least [`PAGE_INDEX_MIN_BYTES`] have their page index read: a smaller
//!    file holds about one page per column, so its page index cannot skip
//!    what its row-group statistics do not, and reading it is one more read
//!    and decode per file. Flush files are that small, and a history not yet
//!    compacted is thousands of them (the scan is then a union of two file
//!    scans, one per setting).
//!
//! Steps 1 and 2 only ever drop what the filters exclude for certain: a
//! filter this module does not understand keeps everything, and DataFusion
//! still applies every filter other than the exact partition ones to the
//! rows read.
//!
//! The listing itself is the committed-files store's (see [`crate::store`]):
//! one read of `_committed`, the index and the selected manifests per scan.

use crate::manifest::FileEntry;
use crate::store::{CommittedObject, CommittedStore, Select};
use crate::writer::{DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table};
use arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchemaBuilder;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path as StorePath;
use std::collections::BTreeSet;
use std::sync::Arc;

const NS_PER_HOUR: i64 = 3_600_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Files at least this large have their page index read; see the module
/// documentation. Parquet's default page is 1 MiB, and a history file has
/// a dozen columns.
pub(crate) const PAGE_INDEX_MIN_BYTES: u64 = 4 << 20;

/// One table of the history for DataFusion; see the module documentation.
#[derive(Debug)]
pub(crate) struct HistoryTable {
    table: Table,
    /// The file columns, then `date` and `hour`.
    schema: SchemaRef,
    store: CommittedStore,
    /// How files of at least `page_index_min_bytes` are read.
    format: Arc<ParquetFormat>,
    /// How smaller files are read: the same without the page index.
    small_format: Arc<ParquetFormat>,
    /// [`PAGE_INDEX_MIN_BYTES`]; other values in tests only.
    page_index_min_bytes: u64,
}

/// The Parquet reading options of a scan. The format carries its own
/// options; session-level settings do not reach a table's scan.
fn parquet_format(page_index: bool) -> ParquetFormat {
    let mut parquet = TableParquetOptions::default();
    // Filters are evaluated while decoding (late materialization), and
    // row groups (and pages, with the page index) are skipped by their
    // statistics.
    parquet.global.pushdown_filters = true;
    parquet.global.reorder_filters = true;
    parquet.global.pruning = true;
    parquet.global.enable_page_index = page_index;
    ParquetFormat::default().with_options(parquet)
}

impl HistoryTable {
    pub fn new(table: Table, store: CommittedStore) -> Self {
        let mut fields: Vec<Field> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(partition_fields().iter().map(|f| f.as_ref().clone()));
        HistoryTable {
            table,
            schema: Arc::new(Schema::new(fields)),
            store,
            format: Arc::new(parquet_format(true)),
            small_format: Arc::new(parquet_format(false)),
            page_index_min_bytes: PAGE_INDEX_MIN_BYTES,
        }
    }
}

/// The partition columns, as the scan appends them to the file columns.
fn partition_fields() -> Vec<Arc<Field>> {
    vec![
        Arc::new(Field::new(DATE_COLUMN, DataType::Date32, false)),
        Arc::new(Field::new(HOUR_COLUMN, DataType::Int32, false)),
    ]
}

fn is_partition_filter(expr: &Expr) -> bool {
    expr_applicable_for_cols(&[DATE_COLUMN, HOUR_COLUMN], expr)
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on the partition columns alone are applied exactly to the
        // partitions; every other filter is used for pruning only and
        // applied to the rows by DataFusion.
        Ok(filters
            .iter()
            .map(|f| {
                if is_partition_filter(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (on_partitions, on_rows): (Vec<Expr>, Vec<Expr>) =
            filters.iter().cloned().partition(is_partition_filter);
        let partition_schema = Arc::new(Schema::new(partition_fields()));
        let partition_predicate = match conjunction(on_partitions) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(Arc::clone(&partition_schema))?;
                Some(state.create_physical_expr(expr, &df_schema)?)
            }
            None => None,
        };
        let select = Pruning {
            partition_schema,
            partition_predicate,
            bounds: Bounds::from_filters(&on_rows),
        };
        let store = self.store.clone();
        let objects = tokio::task::spawn_blocking(move || store.objects(&select))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| match e {
                // Unwrapped, so that the query functions find it in the chain.
                HistoryError::Integrity(problem) => DataFusionError::External(Box::new(problem)),
                other => DataFusionError::External(Box::new(other)),
            })?;
        let file_schema = self.table.schema();
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        if objects.is_empty() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let (large, small): (Vec<CommittedObject>, Vec<CommittedObject>) = objects
            .into_iter()
            .partition(|o| o.meta.size >= self.page_index_min_bytes);
        let mut plans = Vec::new();
        for (objects, format) in [(large, &self.format), (small, &self.small_format)] {
            if objects.is_empty() {
                continue;
            }
            let files = objects
                .into_iter()
                .map(partitioned_file)
                .collect::<Result<Vec<_>>>()?;
            let target = state.config().target_partitions().max(1);
            let groups = FileGroup::new(files).split_files(target);
            let table_schema = TableSchemaBuilder::from(&file_schema)
                .with_table_partition_cols(partition_fields())
                .build();
            let source = format.file_source(table_schema);
            let url = ObjectStoreUrl::parse(CommittedStore::url(self.table))?;
            let config = FileScanConfigBuilder::new(url, source)
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            plans.push(format.create_physical_plan(state, config).await?);
        }
        // One input is returned as it is.
        UnionExec::try_new(plans)
    }
}

/// A listed object as DataFusion reads it, with its partition values. The
/// reader takes each file's schema from its footer, not from the table:
/// files an older otwatch wrote lack the columns added since, and are
/// adapted to the table's schema (the missing columns read as nulls).
fn partitioned_file(object: CommittedObject) -> Result<PartitionedFile> {
    let (date, hour) = partition_values(&object.partition).ok_or_else(|| {
        DataFusionError::Internal(format!("bad partition name {:?}", object.partition))
    })?;
    let file = PartitionedFile::new_from_meta(object.meta).with_partition_values(vec![
        ScalarValue::Date32(Some(date)),
        ScalarValue::Int32(Some(hour)),
    ]);
    Ok(file)
}

/// Days since the epoch and hour of `date=YYYY-MM-DD/hour=H`.
fn partition_values(partition: &str) -> Option<(i32, i32)> {
    let (date, hour) = partition.split_once('/')?;
    let date = date.strip_prefix(DATE_COLUMN)?.strip_prefix('=')?;
    let hour: i32 = hour
        .strip_prefix(HOUR_COLUMN)?
        .strip_prefix('=')?
        .parse()
        .ok()?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let days = date
        .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    Some((i32::try_from(days).ok()?, hour))
}

/// The first instant (ns) of a partition's hour.
fn partition_start(date: i32, hour: i32) -> i64 {
    (i64::from(date) * SECONDS_PER_DAY + i64::from(hour) * 3600).saturating_mul(1_000_000_000)
}

/// The scan's [`Select`]: partitions by their values and the `ts` bound,
/// files by site and `ts` range.
struct Pruning {
    partition_schema: SchemaRef,
    partition_predicate: Option<Arc<dyn PhysicalExpr>>,
    bounds: Bounds,
}

impl Select for Pruning {
    fn partitions(&self, partitions: &[&str]) -> Vec<bool> {
        let values: Vec<Option<(i32, i32)>> =
            partitions.iter().map(|p| partition_values(p)).collect();
        let mut keep: Vec<bool> = values
            .iter()
            .map(|v| match v {
                // A name the index should not hold: kept, so the listing
                // reports it.
                None => true,
                Some((date, hour)) => {
                    let start = partition_start(*date, *hour);
                    self.bounds
                        .overlaps(start, start.saturating_add(NS_PER_HOUR - 1))
                }
            })
            .collect();
        if let Some(predicate) = &self.partition_predicate {
            match self.evaluate(predicate, &values) {
                Some(matches) => {
                    for (k, m) in keep.iter_mut().zip(matches) {
                        *k &= m;
                    }
                }
                None => tracing::debug!("partition filter not evaluated; reading every partition"),
            }
        }
        keep
    }

    fn file(&self, _location: &StorePath, entry: &FileEntry) -> bool {
        if let (Some(sites), Some(site)) = (&self.bounds.sites, &entry.site) {
            if !sites.contains(site) {
                return false;
            }
        }
        match (entry.ts_min, entry.ts_max) {
            (Some(lo), Some(hi)) => self.bounds.overlaps(lo, hi),
            _ => true,
        }
    }

    fn placeholder(&self, _location: &StorePath) -> bool {
        true
    }
}

impl Pruning {
    /// The predicate's answer for each partition (a name that is not a
    /// partition's passes); `None` if it could not be evaluated.
    fn evaluate(
        &self,
        predicate: &Arc<dyn PhysicalExpr>,
        values: &[Option<(i32, i32)>],
    ) -> Option<Vec<bool>> {
        let dates: Date32Array = values.iter().map(|v| Some(v.map_or(0, |v| v.0))).collect();
        let hours: Int32Array = values.iter().map(|v| Some(v.map_or(0, |v| v.1))).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&self.partition_schema),
            vec![Arc::new(dates) as ArrayRef, Arc::new(hours) as ArrayRef],
        )
        .ok()?;
        let result = predicate
            .evaluate(&batch)
            .ok()?
            .into_array(batch.num_rows())
            .ok()?;
        let matches = result.as_boolean_opt()?;
        Some(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| v.is_none() || (matches.is_valid(i) && matches.value(i)))
                .collect(),
        )
    }
}

/// What the filters say for certain about the rows a query can return:
/// an inclusive range of `ts` and a set of sites. Conservative: a filter
/// not understood leaves the bounds open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Smallest `ts` (ns) a row can have.
    pub ts_min: Option<i64>,
    /// Largest `ts` (ns) a row can have.
    pub ts_max: Option<i64>,
    /// The only sites rows can have.
    pub sites: Option<BTreeSet<String>>,
}

impl Bounds {
    /// The bounds of the conjunction of `filters`.
    pub fn from_filters(filters: &[Expr]) -> Bounds {
        let mut bounds = Bounds::default();
        for filter in filters {
            for part in split_conjunction(filter) {
                bounds.add(part);
            }
        }
        bounds
    }

    /// Whether the inclusive range `lo..=hi` of `ts` can hold rows.
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.ts_min.is_none_or(|min| hi >= min) && self.ts_max.is_none_or(|max| lo <= max)
    }

    fn at_least(&mut self, ns: i64) {
        self.ts_min = Some(self.ts_min.map_or(ns, |m| m.max(ns)));
    }

    fn at_most(&mut self, ns: i64) {
        self.ts_max = Some(self.ts_max.map_or(ns, |m| m.min(ns)));
    }

    fn only_sites(&mut self, sites: BTreeSet<String>) {
        self.sites = Some(match self.sites.take() {
            Some(known) => known.intersection(&sites).cloned().collect(),
            None => sites,
        });
    }

    fn add(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = match (column_name(left), column_name(right)) {
                    (Some(c), None) => (c, *op, right.as_ref()),
                    (None, Some(c)) => match op.swap() {
                        Some(op) => (c, op, left.as_ref()),
                        None => return,
                    },
                    _ => return,
                };
                match column {
                    "ts" => {
                        let Some(t) = timestamp_ns(value) else { return };
                        match op {
                            Operator::Eq => {
                                self.at_least(t);
                                self.at_most(t);
                            }
                            Operator::GtEq => self.at_least(t),
                            Operator::Gt => self.at_least(t.saturating_add(1)),
                            Operator::LtEq => self.at_most(t),
                            Operator::Lt => self.at_most(t.saturating_sub(1)),
                            _ => {}
                        }
                    }
                    "site" if op == Operator::Eq => {
                        if let Some(site) = string_value(value) {
                            self.only_sites(BTreeSet::from([site]));
                        }
                    }
                    _ => {}
                }
            }
            Expr::Between(between)
                if !between.negated && column_name(&between.expr) == Some("ts") =>
            {
                if let Some(lo) = timestamp_ns(&between.low) {
                    self.at_least(lo);
                }
                if let Some(hi) = timestamp_ns(&between.high) {
                    self.at_most(hi);
                }
            }
            Expr::InList(list) if !list.negated && column_name(&list.expr) == Some("site") => {
                let sites: Option<BTreeSet<String>> = list.list.iter().map(string_value).collect();
                if let Some(sites) = sites {
                    self.only_sites(sites);
                }
            }
            _ => {}
        }
    }
}

/// The name of a plain column reference, seen through casts that keep its
/// values (a dictionary column cast to its value type, a timestamp cast to
/// another time zone of the same unit).
fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(cast) => match (cast.expr.as_ref(), cast.field.data_type()) {
            (Expr::Column(c), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                if c.name == "site" =>
            {
                Some("site")
            }
            (Expr::Column(c), DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, _))
                if c.name == "ts" =>
            {
                Some("ts")
            }
            _ => None,
        },
        _ => None,
    }
}

/// A timestamp literal in nanoseconds, `None` for anything else (and for
/// values that do not fit, which then prune nothing).
fn timestamp_ns(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

/// A string literal (possibly dictionary-wrapped), `None` for anything else.
fn string_value(expr: &Expr) -> Option<String> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    fn of(value: &ScalarValue) -> Option<String> {
        match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
            ScalarValue::Dictionary(_, inner) => of(inner),
            _ => None,
        }
    }
    of(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit, SessionContext};

    /// The answers of `queries` over the history at `root`, its `events`
    /// table read with its files split at `page_index_min_bytes`, and
    /// whether the plans hold a union of two file scans.
    async fn answers(
        root: &std::path::Path,
        page_index_min_bytes: u64,
        queries: &[&str],
    ) -> (Vec<String>, bool) {
        let ctx = SessionContext::new();
        let store = CommittedStore::new(root, Table::Events);
        let url = ObjectStoreUrl::parse(CommittedStore::url(Table::Events)).unwrap();
        ctx.register_object_store(url.as_ref(), Arc::new(store.clone()));
        let mut table = HistoryTable::new(Table::Events, store);
        table.page_index_min_bytes = page_index_min_bytes;
        ctx.register_table("events", Arc::new(table)).unwrap();
        let mut out = Vec::new();
        let mut union = false;
        for sql in queries {
            let frame = ctx.sql(sql).await.unwrap();
            let plan = frame.clone().create_physical_plan().await.unwrap();
            union |= datafusion::physical_plan::displayable(plan.as_ref())
                .indent(false)
                .to_string()
                .contains("UnionExec");
            let batches = frame.collect().await.unwrap();
            out.push(
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        (out, union)
    }

    #[tokio::test]
    async fn files_read_with_and_without_the_page_index_answer_alike() {
        use otwatch_proto::arrow::events_to_batch;
        use otwatch_proto::{ControllerEvent, EventKind};
        let dir = tempfile::tempdir().unwrap();
        // 2024-05-01T10:00:00Z.
        let t10: i64 = 1_714_557_600_000_000_000;
        let batch = |site: &str, first: u64, n: u64| {
            let events: Vec<ControllerEvent> = (0..n)
                .map(|i| ControllerEvent {
                    seq: first + i,
                    ts_ns: t10 + (first + i) as i64 * 1_000_000_000,
                    asset: format!("line1/press-0{}", i % 3),
                    kind: if i % 4 == 0 {
                        EventKind::Cycle
                    } else {
                        EventKind::Sample
                    } as i32,
                    name: "cycle".into(),
                    value: Some((first + i) as f64),
                    ..Default::default()
                })
                .collect();
            events_to_batch(site, "gw-1", &events, t10).unwrap()
        };
        let mut writer = crate::TableWriter::open(dir.path(), Table::Events).unwrap();
        // One large flush of plant-a, then small ones of every site.
        writer.write(&[batch("plant-a", 0, 5000)], 1).unwrap();
        for (i, site) in ["plant-a", "plant-b", "plant-c"].iter().enumerate() {
            let first = 5000 + 100 * i as u64;
            writer
                .write(&[batch(site, first, 40)], 2 + i as u64)
                .unwrap();
        }
        drop(writer);
        let sizes: Vec<u64> = walk_parquet(dir.path());
        let (smallest, largest) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
        assert!(smallest < largest, "file sizes {sizes:?}");
        let queries = [
            "SELECT site, kind, count(*) AS n FROM events GROUP BY site, kind ORDER BY site, kind",
            "SELECT site, asset, count(*), avg(value) FROM events WHERE kind = 'CYCLE' GROUP BY site, asset ORDER BY site, asset",
            "SELECT seq, value FROM events WHERE site = 'plant-a' AND seq BETWEEN 4990 AND 5010 ORDER BY seq",
            "SELECT count(*) FROM events WHERE ts >= TIMESTAMP '2024-05-01T10:30:00Z'",
        ];
        let (split, union) = answers(dir.path(), largest, &queries).await;
        assert!(union, "the large file and the small ones are two scans");
        let (together, union) = answers(dir.path(), 0, &queries).await;
        assert!(!union, "every file read with the page index is one scan");
        assert_eq!(split, together);
        assert!(
            split[0].contains("| plant-a | CYCLE  | 1260 |"),
            "{}",
            split[0]
        );
    }

    fn walk_parquet(dir: &std::path::Path) -> Vec<u64> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk_parquet(&path));
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(entry.metadata().unwrap().len());
            }
        }
        out
    }

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn ts_comparisons_bound_the_range() {
        let b = Bounds::from_filters(&[col("ts").gt_eq(ts(10)).and(col("ts").lt(ts(20)))]);
        assert_eq!((b.ts_min, b.ts_max), (Some(10), Some(19)));
        let b = Bounds::from_filters(&[ts(10).lt(col("ts")), col("ts").between(ts(0), ts(30))]);
        assert_eq!((b.ts_min, b.ts_max), (Some(11), Some(30)));
        assert!(b.overlaps(30, 40) && !b.overlaps(31, 40) && !b.overlaps(0, 10));
        let b = Bounds::from_filters(&[col("ts").eq(ts(5))]);
        assert_eq!((b.ts_min, b.ts_max), (Some(5), Some(5)));
    }

    #[test]
    fn filters_not_understood_leave_the_bounds_open() {
        let b = Bounds::from_filters(&[
            col("ts").gt(ts(10)).or(col("ts").lt(ts(0))),
            col("ts").not_eq(ts(3)),
            col("seq").gt(lit(5u64)),
            col("site").not_eq(lit("a")),
            col("ts").not_between(ts(0), ts(9)),
        ]);
        assert_eq!(b, Bounds::default());
    }

    #[test]
    fn site_equalities_and_lists_name_the_sites() {
        let b = Bounds::from_filters(&[col("site").eq(lit("a"))]);
        assert_eq!(b.sites, Some(BTreeSet::from(["a".to_owned()])));
        let b = Bounds::from_filters(&[
            col("site").in_list(vec![lit("a"), lit("b")], false),
            col("site").eq(lit(ScalarValue::Dictionary(
                Box::new(DataType::Int32),
                Box::new(ScalarValue::from("b")),
            ))),
        ]);
        assert_eq!(b.sites, Some(BTreeSet::from(["b".to_owned()])));
    }

    #[test]
    fn partition_names_give_their_values_and_start() {
        assert_eq!(partition_values("date=1970-01-02/hour=3"), Some((1, 3)));
        assert_eq!(partition_start(1, 3), (86_400 + 3 * 3600) * 1_000_000_000);
        assert_eq!(partition_values("date=1970-01-02"), None);
    }
}
