//! The `alerts` table across the addition of the lifecycle columns
//! (`state`, `state_by`, `state_at`, `comment`): a history whose older
//! files lack them reads together with newer files, the missing columns as
//! nulls, and the latest state of each alert can be taken over both.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use common::{parquet_files, sample_alert, T10};
use otwatch_history::{query, Table, TableWriter};
use otwatch_proto::arrow::{alerts_to_batch, state};
use otwatch_proto::Alert;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use std::fs;
use std::path::Path;

/// Rewrites every Parquet file of the alerts table with only the first 17
/// columns, as an otwatch before the lifecycle columns wrote them, and puts
/// the new sizes in the manifests.
fn rewrite_as_before_states(table_dir: &Path) {
    for file in parquet_files(table_dir) {
        let path = table_dir.join(&file);
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader
            .map(|b| b.unwrap().project(&(0..17).collect::<Vec<_>>()).unwrap())
            .collect();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, batches[0].schema(), None).unwrap();
        for b in &batches {
            writer.write(b).unwrap();
        }
        writer.close().unwrap();
        fs::write(&path, &bytes).unwrap();
        let manifest = path.parent().unwrap().join("_manifest");
        let name = path.file_name().unwrap().to_str().unwrap();
        let lines: Vec<String> = fs::read_to_string(&manifest)
            .unwrap()
            .lines()
            .map(|line| {
                let mut entry: serde_json::Value = serde_json::from_str(line).unwrap();
                if entry["file"] == name {
                    entry["bytes"] = bytes.len().into();
                }
                entry.to_string()
            })
            .collect();
        fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    }
}

#[tokio::test]
async fn older_files_without_states_read_beside_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let raised = sample_alert("00000000000000a1", T10, "plant-a", "T0836");
    let other = sample_alert("00000000000000b2", T10 + 1, "plant-a", "");
    {
        let mut writer = TableWriter::open(root, Table::Alerts).unwrap();
        writer
            .write(&[alerts_to_batch(&[raised.clone(), other]).unwrap()], 1)
            .unwrap();
    }
    rewrite_as_before_states(&root.join("alerts"));
    let old_columns = {
        let file = parquet_files(&root.join("alerts")).remove(0);
        let f = fs::File::open(root.join("alerts").join(file)).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .schema()
            .fields()
            .len()
    };
    assert_eq!(old_columns, 17);
    // The new release acks the first alert.
    let acked = Alert {
        state: state::ACKED.into(),
        state_by: "alice".into(),
        state_at_ns: T10 + 3_600_000_000_000,
        comment: "on it".into(),
        ..raised.clone()
    };
    {
        let mut writer = TableWriter::open(root, Table::Alerts).unwrap();
        writer
            .write(&[alerts_to_batch(&[acked]).unwrap()], 2)
            .unwrap();
    }
    assert_eq!(parquet_files(&root.join("alerts")).len(), 2);

    let rows = query(
        root,
        "SELECT id, coalesce(state, 'open') AS state, state_by, comment FROM (\
           SELECT *, row_number() OVER (PARTITION BY id ORDER BY coalesce(state_at, ts) DESC) AS latest FROM alerts) \
         WHERE latest = 1 ORDER BY id",
    )
    .await
    .unwrap();
    let rows: Vec<(String, String, Option<String>, Option<String>)> = rows
        .iter()
        .flat_map(|b| {
            let s = |i: usize| {
                let c =
                    arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap();
                let c = c.as_string::<i32>().clone();
                (0..b.num_rows())
                    .map(|r| c.is_valid(r).then(|| c.value(r).to_string()))
                    .collect::<Vec<_>>()
            };
            let (id, st, by, comment) = (s(0), s(1), s(2), s(3));
            (0..b.num_rows())
                .map(|r| {
                    (
                        id[r].clone().unwrap(),
                        st[r].clone().unwrap(),
                        by[r].clone(),
                        comment[r].clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "00000000000000a1".into(),
                "acked".into(),
                Some("alice".into()),
                Some("on it".into())
            ),
            ("00000000000000b2".into(), "open".into(), None, None),
        ]
    );
}

/// A record of the alerts topic written by an older otwatch (17 columns,
/// before the lifecycle columns) is still written to the history after an
/// upgrade, its state columns null, instead of being skipped.
#[tokio::test]
async fn the_writer_takes_records_in_the_older_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let raised = sample_alert("00000000000000c3", T10, "plant-a", "T0836");
    let batch = alerts_to_batch(&[raised]).unwrap();
    let older = batch.project(&(0..17).collect::<Vec<_>>()).unwrap();
    {
        let mut writer = TableWriter::open(root, Table::Alerts).unwrap();
        writer.write(&[older], 1).unwrap();
    }
    let rows = query(
        root,
        "SELECT id, coalesce(state, 'open') AS state, state_by IS NULL AS no_by FROM alerts",
    )
    .await
    .unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let b = &rows[0];
    let text = |i: usize| {
        let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap();
        c.as_string::<i32>().value(0).to_string()
    };
    assert_eq!(text(0), "00000000000000c3");
    assert_eq!(text(1), "open");
    assert_eq!(text(2), "true");
}
