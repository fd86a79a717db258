//! Helpers shared by the history's integration tests: sample events and
//! alerts, counting, and listing the files under a table.
#![allow(dead_code)] // each test binary uses its own subset

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use otwatch_history::query;
use otwatch_proto::arrow::events_to_batch;
use otwatch_proto::{Alert, ControllerEvent, EventKind, Severity};
use std::fs;
use std::path::Path;

/// 2024-05-01T10:00:00Z in nanoseconds.
pub const T10: i64 = 1_714_557_600_000_000_000;
pub const MINUTE: i64 = 60_000_000_000;

pub fn event(seq: u64, ts_ns: i64, asset: &str) -> ControllerEvent {
    ControllerEvent {
        seq,
        ts_ns,
        asset: asset.into(),
        kind: EventKind::Cycle as i32,
        name: "cycle".into(),
        value: Some(1000.0 + seq as f64),
        attrs: [("unit".to_string(), "ms".to_string())].into(),
        ..Default::default()
    }
}

/// `n` events a minute apart starting at `start`.
pub fn events(site: &str, first_seq: u64, start: i64, n: usize) -> RecordBatch {
    let events: Vec<_> = (0..n)
        .map(|i| {
            event(
                first_seq + i as u64,
                start + i as i64 * MINUTE,
                "line1/press-01",
            )
        })
        .collect();
    events_to_batch(site, "gw-1", &events, start).unwrap()
}

/// Plant A: 90 events from 10:00 to 11:29 (60 in hour 10, 30 in hour 11);
/// plant B: 20 events from 10:50 to 11:09 (10 and 10); plant A again: 5
/// events at 11:40..11:44 in a batch of one partition.
pub fn sample_batches() -> Vec<RecordBatch> {
    vec![
        events("plant-a", 1, T10, 90),
        events("plant-b", 1, T10 + 50 * MINUTE, 20),
        events("plant-a", 91, T10 + 100 * MINUTE, 5),
    ]
}

pub fn count(batches: &[RecordBatch]) -> i64 {
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

pub async fn count_of(root: &Path, sql: &str) -> i64 {
    count(&query(root, sql).await.unwrap())
}

/// All `.parquet` files under `dir`, relative to it, sorted.
pub fn parquet_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn sample_alert(id: &str, ts_ns: i64, site: &str, technique: &str) -> Alert {
    Alert {
        id: id.into(),
        ts_ns,
        site: site.into(),
        asset: "line1/press-01".into(),
        detector: "cycle".into(),
        name: "cycle".into(),
        severity: Severity::High as i32,
        score: 7.5,
        observed: 1500.0,
        expected_low: 900.0,
        expected_high: 1100.0,
        message: "cycle time drifted".into(),
        agent: "gw-1".into(),
        first_seq: 3,
        last_seq: 9,
        event_count: 7,
        technique: technique.into(),
        state: "open".into(),
        ..Default::default()
    }
}
