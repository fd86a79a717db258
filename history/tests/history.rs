//! Writes history tables to a temporary directory and reads them back with
//! SQL, with the Parquet reader directly, and after simulated crashes.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use common::*;
use otwatch_history::{
    format_batches, query, session, HistoryError, OutputFormat, Table, TableWriter,
};
use otwatch_proto::arrow::{alerts_to_batch, batch_to_alerts, events_schema};
use otwatch_proto::Alert;
use std::fs;
use std::path::PathBuf;

#[tokio::test]
async fn events_are_partitioned_and_queryable() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.next_offset(), 0);
    let stats = writer.write(&sample_batches(), 3).unwrap();
    assert_eq!(stats.rows, 115);
    assert_eq!(stats.files, 4, "(hour 10, 11) x (plant-a, plant-b)");
    assert!(stats.bytes > 0);
    assert_eq!(writer.next_offset(), 3);

    let files = parquet_files(&root.join("events"));
    assert_eq!(
        files,
        [
            "date=2024-05-01/hour=10/plant-a-00000000000000000000-0.parquet",
            "date=2024-05-01/hour=10/plant-b-00000000000000000000-1.parquet",
            "date=2024-05-01/hour=11/plant-a-00000000000000000000-2.parquet",
            "date=2024-05-01/hour=11/plant-b-00000000000000000000-3.parquet",
        ]
    );
    let sizes: u64 = files
        .iter()
        .map(|f| fs::metadata(root.join("events").join(f)).unwrap().len())
        .sum();
    assert_eq!(sizes, stats.bytes);

    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 115);

    let by_site = query(
        root,
        "SELECT site, count(*) AS n FROM events GROUP BY site ORDER BY site",
    )
    .await
    .unwrap();
    let text = format_batches(&by_site, OutputFormat::Csv).unwrap();
    assert_eq!(text, "site,n\nplant-a,95\nplant-b,20\n");

    let sql = "SELECT count(*) FROM events WHERE date = '2024-05-01' AND hour = 10";
    assert_eq!(count_of(root, sql).await, 70);
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 11").await,
        45
    );
    let sql = "SELECT count(*) FROM events WHERE hour = 11 AND site = 'plant-a'";
    assert_eq!(count_of(root, sql).await, 35);
    assert_eq!(
        count_of(
            root,
            "SELECT count(*) FROM events WHERE date = '2024-05-02'"
        )
        .await,
        0
    );
    assert_eq!(
        count_of(
            root,
            "SELECT count(*) FROM events WHERE date >= '2024-05-01'"
        )
        .await,
        115
    );

    // 10:30 <= ts < 11:15: plant A 10:30..11:14 (45), plant B 10:50..11:09 (20).
    let sql = "SELECT count(*) FROM events \
               WHERE ts >= '2024-05-01T10:30:00Z' AND ts < '2024-05-01T11:15:00Z'";
    assert_eq!(count_of(root, sql).await, 65);

    // Rows come back with their values, the file columns as written, and the
    // partition columns last.
    let rows = query(
        root,
        "SELECT * FROM events WHERE site = 'plant-b' AND hour = 11 ORDER BY seq LIMIT 1",
    )
    .await
    .unwrap();
    let row = rows.iter().find(|b| b.num_rows() > 0).unwrap();
    let schema = row.schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "site", "agent", "seq", "ts", "received", "asset", "kind", "name", "value", "text",
            "attrs", "date", "hour"
        ]
    );
    assert_eq!(
        schema.field_with_name("site").unwrap().data_type(),
        &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    );
    assert_eq!(
        schema.field_with_name("date").unwrap().data_type(),
        &DataType::Date32
    );
    assert_eq!(
        schema.field_with_name("hour").unwrap().data_type(),
        &DataType::Int32
    );
    let json = format_batches(&rows, OutputFormat::Json).unwrap();
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(value["seq"], 11);
    assert_eq!(value["site"], "plant-b");
    assert_eq!(value["ts"], "2024-05-01T11:00:00Z");
    assert_eq!(value["date"], "2024-05-01");
    assert_eq!(value["hour"], 11);
    assert_eq!(value["attrs"]["unit"], "ms");
}

#[tokio::test]
async fn partition_and_ts_filters_prune() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&sample_batches(), 3).unwrap();
    let ctx = session(root).await.unwrap();

    // Partition filters: only the two hour-10 files are scanned.
    let plan = explain(
        &ctx,
        "SELECT seq FROM events WHERE date = '2024-05-01' AND hour = 10",
    )
    .await;
    assert!(plan.contains("hour=10/plant-a"), "{plan}");
    assert!(!plan.contains("hour=11/"), "{plan}");

    // Only plant A's hour-11 file holds rows from 11:20 on (plant B's ends at
    // 11:09): the hour-10 partition is left out by the ts bound, plant B's
    // hour-11 file by the ts range its manifest line records, so the scan
    // lists one file.
    let sql = "EXPLAIN ANALYZE SELECT seq FROM events WHERE ts >= '2024-05-01T11:20:00Z'";
    let plan = explain_text(&ctx.sql(sql).await.unwrap().collect().await.unwrap());
    assert!(
        plan.contains("file_groups={1 group: [[date=2024-05-01/hour=11/plant-a-"),
        "{plan}"
    );
    let pruned = metric(&plan, "files_ranges_pruned_statistics");
    assert!(
        pruned.contains("1 total") && pruned.contains("1 matched"),
        "{plan}"
    );
    let rows = ctx
        .sql("SELECT seq FROM events WHERE ts >= '2024-05-01T11:20:00Z'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 15);
}

#[tokio::test]
async fn single_digit_hours_match_integer_literals() {
    // DataFusion lists `hour=7/` for `hour = 7`: the directory must be spelled
    // that way, or the query finds nothing.
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer
        .write(&[events("plant-a", 1, T10 - 3 * 60 * MINUTE, 12)], 1)
        .unwrap();
    assert!(root.join("events/date=2024-05-01/hour=7").is_dir());
    let sql = "SELECT count(*) FROM events WHERE date = '2024-05-01' AND hour = 7";
    assert_eq!(count_of(root, sql).await, 12);
    let sql = "SELECT count(*) FROM events WHERE hour BETWEEN 6 AND 8";
    assert_eq!(count_of(root, sql).await, 12);
}

async fn explain(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = ctx
        .sql(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    explain_text(&batches)
}

fn explain_text(batches: &[RecordBatch]) -> String {
    format_batches(batches, OutputFormat::Table).unwrap()
}

/// The text of metric `name=...` in an EXPLAIN ANALYZE output, up to the
/// next comma or bracket.
fn metric<'a>(plan: &'a str, name: &str) -> &'a str {
    let start = plan
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {plan}"));
    let rest = &plan[start..];
    &rest[..rest.find([',', ']']).unwrap_or(rest.len())]
}

#[tokio::test]
async fn alerts_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let alerts = vec![
        sample_alert("a1", T10 + 5 * MINUTE, "plant-a", "T0836"),
        sample_alert("a2", T10 + 65 * MINUTE, "plant-b", ""),
        sample_alert("a3", T10 + 70 * MINUTE, "plant-a", "T0858"),
    ];
    let mut writer = TableWriter::open(root, Table::Alerts).unwrap();
    let stats = writer
        .write(&[alerts_to_batch(&alerts).unwrap()], 1)
        .unwrap();
    assert_eq!((stats.rows, stats.files), (3, 3));

    let columns = Table::Alerts
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect::<Vec<_>>()
        .join(", ");
    let batches = query(root, &format!("SELECT {columns} FROM alerts ORDER BY id"))
        .await
        .unwrap();
    let back: Vec<Alert> = batches
        .iter()
        .flat_map(|b| batch_to_alerts(b).unwrap())
        .collect();
    assert_eq!(back, alerts);
    let sql = "SELECT count(*) FROM alerts WHERE hour = 11 AND technique IS NOT NULL";
    assert_eq!(count_of(root, sql).await, 1);
    // Events were never written: the table is still there, empty.
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 0);
}

#[tokio::test]
async fn empty_tables_are_queryable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing at all under the root yet.
    let root = dir.path().join("not-created");
    assert_eq!(count_of(&root, "SELECT count(*) FROM events").await, 0);
    assert_eq!(count_of(&root, "SELECT count(*) FROM alerts").await, 0);
    let rows = query(&root, "SELECT * FROM events WHERE hour = 3")
        .await
        .unwrap();
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

    // Directories and commit file present, no data files.
    TableWriter::open(&root, Table::Events)
        .unwrap()
        .write(&[], 4)
        .unwrap();
    assert!(root.join("events/_committed").is_file());
    assert_eq!(count_of(&root, "SELECT count(*) FROM events").await, 0);
    let sql = "SELECT site, count(*) FROM events GROUP BY site";
    let rows = query(&root, sql).await.unwrap();
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[tokio::test]
async fn a_held_session_sees_new_flushes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let ctx = session(root).await.unwrap();
    let n = |ctx: datafusion::prelude::SessionContext| async move {
        count(
            &ctx.sql("SELECT count(*) FROM events")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap(),
        )
    };
    assert_eq!(n(ctx.clone()).await, 0);
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[events("plant-a", 1, T10, 10)], 1).unwrap();
    assert_eq!(n(ctx.clone()).await, 10);
    writer
        .write(&[events("plant-a", 11, T10 + 10 * MINUTE, 5)], 2)
        .unwrap();
    assert_eq!(n(ctx).await, 15);
}

#[test]
fn reopen_resumes_from_the_committed_offset() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    {
        let mut writer = TableWriter::open(root, Table::Events).unwrap();
        writer.write(&[events("plant-a", 1, T10, 10)], 7).unwrap();
        // An advance over log records without rows (nothing for this table).
        assert_eq!(writer.write(&[], 9).unwrap().files, 0);
        assert_eq!(writer.next_offset(), 9);
    }
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.next_offset(), 9);
    assert_eq!(
        fs::read_to_string(root.join("events/_committed"))
            .unwrap()
            .trim(),
        r#"{"next_offset":9}"#
    );
    // Alerts are committed independently.
    assert_eq!(
        TableWriter::open(root, Table::Alerts)
            .unwrap()
            .next_offset(),
        0
    );

    let err = writer
        .write(&[events("plant-a", 11, T10, 1)], 8)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HistoryError::OffsetBehind {
                committed: 9,
                requested: 8,
                ..
            }
        ),
        "{err}"
    );
    let err = writer
        .write(&[events("plant-a", 11, T10, 1)], 9)
        .unwrap_err();
    assert!(
        matches!(err, HistoryError::OffsetNotAdvanced { .. }),
        "{err}"
    );
    // Neither touched the disk or the writer.
    writer.write(&[events("plant-a", 11, T10, 1)], 10).unwrap();
    assert_eq!(parquet_files(&root.join("events")).len(), 2);
}

#[test]
fn batches_of_another_schema_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::open(root.path(), Table::Alerts).unwrap();
    let err = writer
        .write(&[events("plant-a", 1, T10, 3)], 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HistoryError::Schema {
                table: "alerts",
                index: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("alerts schema"), "{err}");
    assert_eq!(writer.next_offset(), 0);
}

#[tokio::test]
async fn recovery_removes_exactly_the_uncommitted_flush() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let table = root.join("events");
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[events("plant-a", 1, T10, 90)], 5).unwrap();
    let committed_files = parquet_files(&table);
    let committed = fs::read(table.join("_committed")).unwrap();

    // A second flush reaches the disk, then the process dies before its
    // commit file is renamed over: put the old commit back and leave the
    // in-flight temporaries a crash would leave.
    writer
        .write(&[events("plant-b", 1, T10 + 30 * MINUTE, 60)], 8)
        .unwrap();
    drop(writer);
    fs::write(table.join("_committed"), &committed).unwrap();
    fs::write(table.join("_committed.tmp"), br#"{"next_offset":8}"#).unwrap();
    let hour11 = table.join("date=2024-05-01/hour=11");
    fs::write(
        hour11.join(".plant-b-00000000000000000005-9.parquet.tmp"),
        b"partial",
    )
    .unwrap();
    let uncommitted: Vec<PathBuf> = parquet_files(&table)
        .into_iter()
        .filter(|f| !committed_files.contains(f))
        .map(|f| table.join(f))
        .collect();
    assert_eq!(uncommitted.len(), 2, "plant-b in hours 10 and 11");
    assert!(uncommitted
        .iter()
        .all(|f| f.display().to_string().contains("-00000000000000000005-")));
    // Readers go by the manifests and the commit: the uncommitted flush's
    // files and manifest lines are on disk, yet not counted.
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 90);

    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.next_offset(), 5);
    assert_eq!(parquet_files(&table), committed_files);
    assert!(!table.join("_committed.tmp").exists());
    assert!(!hour11
        .join(".plant-b-00000000000000000005-9.parquet.tmp")
        .exists());
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 90);

    // The consumer re-reads offsets 5..8 and writes them again: every row
    // exactly once.
    writer
        .write(&[events("plant-b", 1, T10 + 30 * MINUTE, 60)], 8)
        .unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 150);
    let sql = "SELECT count(*) FROM (SELECT DISTINCT site, agent, seq FROM events)";
    assert_eq!(count_of(root, sql).await, 150);
    drop(writer);
    // Recovery of a clean table removes nothing.
    assert_eq!(
        TableWriter::open(root, Table::Events)
            .unwrap()
            .next_offset(),
        8
    );
    assert_eq!(parquet_files(&table).len(), 4);
}

#[test]
fn a_failed_flush_is_undone_and_the_writer_must_be_reopened() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let table = root.join("events");
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    // 23:30..00:29 spans two dates; a plain file where the second date's
    // directory belongs makes the flush fail after its first file.
    let batch = events("plant-a", 1, T10 + 13 * 60 * MINUTE + 30 * MINUTE, 60);
    fs::write(table.join("date=2024-05-02"), b"in the way").unwrap();
    let err = writer.write(std::slice::from_ref(&batch), 1).unwrap_err();
    assert!(matches!(err, HistoryError::Io { .. }), "{err}");
    assert!(err.to_string().contains("date=2024-05-02"), "{err}");
    assert_eq!(
        parquet_files(&table),
        Vec::<String>::new(),
        "first file removed"
    );
    assert_eq!(writer.next_offset(), 0);
    let err = writer.write(std::slice::from_ref(&batch), 1).unwrap_err();
    assert!(matches!(err, HistoryError::Poisoned { .. }), "{err}");
    // The poisoned writer still holds the table: no second writer.
    let err = TableWriter::open(root, Table::Events).unwrap_err();
    assert!(matches!(err, HistoryError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another writer"),
        "{err}"
    );

    fs::remove_file(table.join("date=2024-05-02")).unwrap();
    writer.recover().unwrap();
    assert_eq!(writer.next_offset(), 0);
    assert_eq!(
        writer.write(std::slice::from_ref(&batch), 1).unwrap().files,
        2
    );
    drop(writer);
    // Reopening works as well once the writer is gone.
    let writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.next_offset(), 1);
}

#[test]
fn files_are_plain_parquet_with_the_table_schema() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let root = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::open(root.path(), Table::Events).unwrap();
    writer.write(&[events("plant-a", 1, T10, 30)], 1).unwrap();
    let files = parquet_files(&root.path().join("events"));
    assert_eq!(files.len(), 1);
    let file = fs::File::open(root.path().join("events").join(&files[0])).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let meta = builder.metadata().clone();
    assert_eq!(builder.schema().fields(), events_schema().fields());
    let column = meta.row_group(0).column(0);
    // Flush files are LZ4 (raw); compaction rewrites them as zstd.
    assert_eq!(column.compression(), parquet::basic::Compression::LZ4_RAW);
    assert!(
        meta.row_group(0).column(3).statistics().is_some(),
        "ts has statistics"
    );
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 30);
    assert_eq!(batches[0].column(0).as_any_dictionary().values().len(), 1);
}

#[test]
fn output_formats() {
    use arrow::array::{
        Int64Array, MapBuilder, StringArray, StringBuilder, TimestampNanosecondArray,
    };
    use std::sync::Arc;
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    attrs.keys().append_value("peer");
    attrs.values().append_value("10.0.0.5");
    attrs.append(true).unwrap();
    attrs.append(false).unwrap();
    let batch = RecordBatch::try_from_iter([
        (
            "name",
            Arc::new(StringArray::from(vec![Some("a, \"b\""), None])) as _,
        ),
        ("n", Arc::new(Int64Array::from(vec![1, 2])) as _),
        (
            "ts",
            Arc::new(TimestampNanosecondArray::from(vec![T10, T10 + MINUTE]).with_timezone("UTC"))
                as _,
        ),
        ("attrs", Arc::new(attrs.finish()) as _),
    ])
    .unwrap();
    let batches = [batch.slice(0, 1), batch.slice(1, 1)];

    let table = format_batches(&batches, OutputFormat::Table).unwrap();
    assert!(table.contains("| name"), "{table}");
    assert!(table.contains("| a, \"b\" |"), "{table}");
    assert!(table.contains("2024-05-01T10:01:00Z"), "{table}");
    assert_eq!(table.lines().count(), 6, "{table}");

    let csv = format_batches(&batches, OutputFormat::Csv).unwrap();
    assert_eq!(
        csv,
        "name,n,ts,attrs\n\
         \"a, \"\"b\"\"\",1,2024-05-01T10:00:00Z,\"{\"\"peer\"\":\"\"10.0.0.5\"\"}\"\n\
         ,2,2024-05-01T10:01:00Z,\n"
    );

    let json = format_batches(&batches, OutputFormat::Json).unwrap();
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"name": "a, \"b\"", "n": 1, "ts": "2024-05-01T10:00:00Z", "attrs": {"peer": "10.0.0.5"}}),
            serde_json::json!({"name": null, "n": 2, "ts": "2024-05-01T10:01:00Z", "attrs": null}),
        ]
    );
}

#[tokio::test]
async fn bad_queries_name_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let cases = [
        ("SELECT nope FROM events", "nope"),
        ("SELECT * FROM evnts", "evnts"),
        ("SELEC 1", "SELEC"),
        (
            "COPY (SELECT 1) TO '/tmp/otwatch-history-copy.csv'",
            "DML not supported",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc'",
            "DDL not supported",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "Statement not supported",
        ),
    ];
    for (sql, needle) in cases {
        let err = query(root, sql).await.unwrap_err();
        assert!(matches!(err, HistoryError::Query { .. }), "{sql}: {err:?}");
        let text = err.to_string();
        assert!(text.starts_with("query failed: "), "{sql}: {text}");
        assert!(text.contains(needle), "{sql}: {text}");
    }
}

#[test]
fn files_read_in_pyarrow_and_duckdb() {
    // Looked up at run time: a binary built in another checkout sharing the
    // target directory must not read that checkout's files.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let script = manifest_dir.join("../tests/history_pyarrow.py");
    if !otwatch_testkit::python_has(&["pyarrow", "duckdb"]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::open(root.path(), Table::Events).unwrap();
    writer.write(&sample_batches(), 3).unwrap();
    let alerts = [sample_alert("a1", T10, "plant-a", "T0836")];
    TableWriter::open(root.path(), Table::Alerts)
        .unwrap()
        .write(&[alerts_to_batch(&alerts).unwrap()], 1)
        .unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "events_pyarrow_rows": 115,
            "events_pyarrow_hour_11": 45,
            "events_pyarrow_site_type": "dictionary<values=string, indices=int32, ordered=0>",
            "events_duckdb_rows": 115,
            "events_duckdb_by_site": {"plant-a": 95, "plant-b": 20},
            "events_duckdb_hour_10": 70,
            "events_duckdb_attrs_unit": "ms",
            "alerts_pyarrow_rows": 1,
            "alerts_duckdb_rows": 1,
        })
    );
}
