//! The history workload shared by the benchmark against DuckDB
//! (`benches/history_vs_duckdb.rs`) and its small correctness twin in the
//! test suite (`tests/duckdb_answers.rs`): a day of controller events from
//! three sites written through the real [`TableWriter`], one flush per
//! `flush_secs` of event time (a file per site per flush, as the history
//! writer component makes them), and the four queries the maintainers
//! measure, in otwatch's SQL and in DuckDB's.
#![allow(dead_code)] // each target uses its own subset

use otwatch_history::{CompactionConfig, Compactor, Table, TableWriter};
use otwatch_proto::arrow::events_to_batch;
use otwatch_proto::{ControllerEvent, EventKind};
use std::path::Path;
use std::time::Instant;

/// 2026-01-01T00:00:00Z in nanoseconds: the day the workload covers.
pub const DAY_START: i64 = 1_767_225_600_000_000_000;
pub const DAY: &str = "2026-01-01";
pub const SITES: [&str; 3] = ["plant-a", "plant-b", "plant-c"];
const ASSETS: [&str; 12] = [
    "line1/press-01",
    "line1/press-02",
    "line1/robot-01",
    "line1/cnc-01",
    "line2/press-01",
    "line2/press-02",
    "line2/robot-01",
    "line2/cnc-01",
    "line3/press-01",
    "line3/robot-01",
    "line3/cnc-01",
    "line3/hmi-01",
];
const NS_PER_SEC: i64 = 1_000_000_000;

/// How big a history to make.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Events over the day, all sites together.
    pub events: u64,
    /// Event time covered by one flush.
    pub flush_secs: i64,
}

/// What [`Workload::write`] made.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub events: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Workload {
    /// Events per site and flush.
    fn per_flush(&self) -> usize {
        let flushes = (86_400 / self.flush_secs).max(1) as u64;
        (self.events / flushes / SITES.len() as u64).max(1) as usize
    }

    /// Writes the day into `<root>/events` through the writer, one flush per
    /// `flush_secs`, each with one batch per site (agent `gw-1` of each).
    pub fn write(&self, root: &Path) -> Written {
        let started = Instant::now();
        let mut writer = TableWriter::open(root, Table::Events).unwrap();
        let per_flush = self.per_flush();
        let flushes = 86_400 / self.flush_secs;
        let mut seq = vec![0u64; SITES.len()];
        let mut total = Written {
            events: 0,
            files: 0,
            bytes: 0,
            seconds: 0.0,
        };
        let mut offset = writer.next_offset();
        for f in 0..flushes {
            let start = DAY_START + f * self.flush_secs * NS_PER_SEC;
            let step = self.flush_secs * NS_PER_SEC / per_flush as i64;
            let batches: Vec<_> = SITES
                .iter()
                .enumerate()
                .map(|(s, site)| {
                    let events: Vec<ControllerEvent> = (0..per_flush)
                        .map(|i| {
                            seq[s] += 1;
                            event(seq[s], start + i as i64 * step + s as i64)
                        })
                        .collect();
                    events_to_batch(site, "gw-1", &events, start).unwrap()
                })
                .collect();
            offset += 1;
            let stats = writer.write(&batches, offset).unwrap();
            total.events += stats.rows as u64;
            total.files += stats.files as u64;
            total.bytes += stats.bytes;
        }
        total.seconds = started.elapsed().as_secs_f64();
        total
    }
}

/// Event `seq` of a site: mostly cycles and samples, some state changes and
/// accesses, spread over the assets.
fn event(seq: u64, ts_ns: i64) -> ControllerEvent {
    let asset = ASSETS[(seq % ASSETS.len() as u64) as usize];
    let roll = seq / ASSETS.len() as u64 % 20;
    let (kind, name, value, text) = match roll {
        0..=7 => (
            EventKind::Cycle,
            "cycle",
            Some(15_000.0 + (seq % 997) as f64),
            None,
        ),
        8..=16 => (
            EventKind::Sample,
            ["temperature_c", "motor_current_a", "pressure_bar"][(seq % 3) as usize],
            Some(20.0 + (seq % 113) as f64 / 10.0),
            None,
        ),
        17 | 18 => (
            EventKind::State,
            "mode",
            None,
            Some(["RUN", "MAINT"][(seq % 2) as usize].to_owned()),
        ),
        _ => (EventKind::Access, "connect", None, None),
    };
    ControllerEvent {
        seq,
        ts_ns,
        asset: asset.into(),
        kind: kind as i32,
        name: name.into(),
        value,
        text,
        attrs: if kind == EventKind::Access {
            [("peer".to_string(), "10.3.1.20".to_string())].into()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

/// Compacts every closed hour of the events table (all of the day, whatever
/// the clock says) and removes the replaced files at once. Returns the
/// files the table holds then and the time it took.
pub async fn compact_all(root: &Path) -> (usize, f64) {
    let started = Instant::now();
    let config = CompactionConfig {
        delay: std::time::Duration::ZERO,
        grace: std::time::Duration::ZERO,
        ..CompactionConfig::default()
    };
    let compactor = Compactor::new(root, Table::Events, config);
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let far = chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap();
    for partition in compactor.candidates(far).unwrap() {
        let prepared = compactor.prepare(&partition).await.unwrap().unwrap();
        writer.commit_compaction(&prepared).unwrap();
        compactor.swapped(&prepared);
    }
    compactor.collect(Instant::now()).unwrap();
    drop(writer);
    (committed_files(root), started.elapsed().as_secs_f64())
}

/// Committed files of the events table.
pub fn committed_files(root: &Path) -> usize {
    let report = otwatch_history::check(root, false).unwrap();
    report
        .tables
        .iter()
        .find(|t| t.table == Table::Events)
        .map_or(0, |t| t.files)
}

/// Whether no hour of the events table has files left to merge.
pub fn compacted(root: &Path) -> bool {
    let compactor = Compactor::new(root, Table::Events, CompactionConfig::default());
    let far = chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap();
    compactor.candidates(far).unwrap().is_empty()
}

/// One of the four measured queries.
pub struct Query {
    pub name: &'static str,
    /// otwatch's SQL (DataFusion).
    pub otwatch: String,
    /// The same query in DuckDB's SQL over `events` (a view of the files).
    pub duckdb: String,
}

/// The four queries: count by site and kind; one hour of one site by a
/// `ts` range; an evidence lookup by (site, agent, seq range); cycle
/// statistics for one day by the `date` column. `w` decides the seq range.
pub fn queries(w: &Workload) -> Vec<Query> {
    let per_site = w.per_flush() as u64 * (86_400 / w.flush_secs) as u64;
    let seq_lo = per_site / 2;
    let seq_hi = seq_lo + 500;
    vec![
        Query {
            name: "count by site and kind",
            otwatch: "SELECT site, kind, count(*) AS n FROM events GROUP BY site, kind ORDER BY site, kind".into(),
            duckdb: "SELECT site, kind, count(*) AS n FROM events GROUP BY site, kind ORDER BY site, kind".into(),
        },
        Query {
            name: "one hour of one site (ts range)",
            otwatch: format!(
                "SELECT ts, asset, kind, name, value FROM events WHERE site = 'plant-b' \
                 AND ts >= TIMESTAMP '{DAY}T13:00:00Z' AND ts < TIMESTAMP '{DAY}T14:00:00Z'"
            ),
            duckdb: format!(
                "SELECT ts, asset, kind, name, value FROM events WHERE site = 'plant-b' \
                 AND ts >= '{DAY} 13:00:00+00' AND ts < '{DAY} 14:00:00+00'"
            ),
        },
        Query {
            name: "evidence lookup (site, agent, seq range)",
            otwatch: format!(
                "SELECT ts, seq, kind, name, value, text FROM events WHERE site = 'plant-c' \
                 AND agent = 'gw-1' AND seq BETWEEN {seq_lo} AND {seq_hi} ORDER BY seq"
            ),
            duckdb: format!(
                "SELECT ts, seq, kind, name, value, text FROM events WHERE site = 'plant-c' \
                 AND agent = 'gw-1' AND seq BETWEEN {seq_lo} AND {seq_hi} ORDER BY seq"
            ),
        },
        Query {
            name: "cycle statistics of one day (date)",
            otwatch: format!(
                "SELECT site, asset, count(*) AS cycles, avg(value) AS mean_ms, stddev(value) AS sd_ms \
                 FROM events WHERE kind = 'CYCLE' AND date = '{DAY}' GROUP BY site, asset ORDER BY site, asset"
            ),
            duckdb: format!(
                "SELECT site, asset, count(*) AS cycles, avg(value) AS mean_ms, stddev(value) AS sd_ms \
                 FROM events WHERE kind = 'CYCLE' AND date = DATE '{DAY}' GROUP BY site, asset ORDER BY site, asset"
            ),
        },
    ]
}

/// The Python program that times DuckDB on the same files: reads JSON
/// `{"glob":..,"queries":[..],"runs":N}` on stdin and prints, per query,
/// `{"seconds":[..],"rows":N,"digest":..}` (a digest of the result:
/// row count and the sum of every numeric cell, rounded).
pub const DUCKDB_RUNNER: &str = r#"
import json, sys, time
import duckdb
import pyarrow.compute as pc
import pyarrow.types as pt
job = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{job['glob']}', hive_partitioning = true)")
out = []
for q in job["queries"]:
    seconds = []
    for _ in range(job["runs"]):
        t = time.perf_counter()
        result = con.sql(q)
        # DuckDB 2 renamed fetch_arrow_table to to_arrow_table.
        fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
        table = fetch()
        seconds.append(time.perf_counter() - t)
    total = 0.0
    for column in table.columns:
        if pt.is_integer(column.type) or pt.is_floating(column.type):
            part = pc.sum(column).as_py()
            if part is not None:
                total += float(part)
    out.append({"seconds": seconds, "rows": table.num_rows, "digest": round(total, 3)})
print(json.dumps(out))
"#;

/// DuckDB's figures for one query.
#[derive(Debug, serde::Deserialize)]
pub struct DuckTimed {
    pub seconds: Vec<f64>,
    pub rows: usize,
    pub digest: f64,
}

/// Runs every query `runs` times in DuckDB over the Parquet files of
/// `<root>/events` (all of them, as a glob reads them).
pub fn duckdb(root: &Path, queries: &[Query], runs: usize) -> Vec<DuckTimed> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let job = serde_json::json!({
        "glob": format!("{}/events/**/*.parquet", root.display()),
        "queries": queries.iter().map(|q| q.duckdb.as_str()).collect::<Vec<_>>(),
        "runs": runs,
    });
    let mut child = Command::new("python3")
        .args(["-c", DUCKDB_RUNNER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the runner prints JSON")
}

/// Whether two digests are the same answer: the same rows, and sums equal
/// up to the rounding of a different order of additions (and of the
/// digests to three decimals).
pub fn same_answer(a: (usize, f64), b: (usize, f64)) -> bool {
    let tolerance = (1e-9 * a.1.abs().max(b.1.abs())).max(0.002);
    a.0 == b.0 && (a.1 - b.1).abs() <= tolerance
}

/// The same digest as [`DUCKDB_RUNNER`] of an otwatch result: row count
/// and the sum of every numeric cell (timestamps and strings left out).
pub fn digest(batches: &[arrow::array::RecordBatch]) -> (usize, f64) {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
    let mut rows = 0;
    let mut total = 0.0;
    for b in batches {
        rows += b.num_rows();
        for c in b.columns() {
            match c.data_type() {
                DataType::Int64 => {
                    let a = c.as_primitive::<Int64Type>();
                    total += a.iter().flatten().map(|v| v as f64).sum::<f64>();
                }
                DataType::UInt64 => {
                    let a = c.as_primitive::<UInt64Type>();
                    total += a.iter().flatten().map(|v| v as f64).sum::<f64>();
                }
                DataType::Float64 => {
                    let a = c.as_primitive::<Float64Type>();
                    total += (0..a.len())
                        .filter(|&i| a.is_valid(i))
                        .map(|i| a.value(i))
                        .sum::<f64>();
                }
                _ => {}
            }
        }
    }
    (rows, (total * 1000.0).round() / 1000.0)
}
