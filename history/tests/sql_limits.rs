//! SQL under limits: the memory pool, spilling, streamed results with a
//! row cap, and rendering a stream batch by batch.

mod common;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use common::*;
use otwatch_history::{
    format_batches, query_stream, query_with, session_with, BatchWriter, HistoryError,
    OutputFormat, SqlConfig, Table, TableWriter,
};
use otwatch_proto::arrow::events_to_batch;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// `n` events whose `text` is `len` bytes and distinct per row.
fn wordy_events(first_seq: u64, n: usize, len: usize) -> RecordBatch {
    let events: Vec<_> = (0..n)
        .map(|i| {
            let seq = first_seq + i as u64;
            let mut e = event(seq, T10 + i as i64 * 1_000_000_000, "line1/press-01");
            e.text = Some(format!("{seq:08}{}", "x".repeat(len.saturating_sub(8))));
            e
        })
        .collect();
    events_to_batch("plant-a", "gw-1", &events, T10).unwrap()
}

/// 6,000 events with 300-byte texts (about 1.8 MB of text), in one hour.
fn wordy_table(root: &Path) {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[wordy_events(1, 6000, 300)], 1).unwrap();
}

fn limited(memory_limit: u64) -> SqlConfig {
    SqlConfig {
        memory_limit,
        ..SqlConfig::default()
    }
}

async fn rows_of(root: &Path, sql: &str, config: &SqlConfig) -> (usize, bool) {
    let mut stream = query_stream(root, sql, config).await.unwrap();
    let mut rows = 0;
    while let Some(batch) = stream.next_batch().await {
        rows += batch.unwrap().num_rows();
    }
    (rows, stream.truncated())
}

#[tokio::test]
async fn a_query_over_the_memory_limit_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    wordy_table(root);
    // The build side of a hash join holds the texts it joins on: 1.8 MB,
    // or that divided by the partitions when the join is partitioned,
    // which is more than 128 KiB on any machine this runs on.
    let sql = "SELECT count(*) FROM events a JOIN events b ON a.text = b.text";
    let err = query_with(root, sql, &limited(MIB / 8)).await.unwrap_err();
    assert!(
        matches!(err, HistoryError::MemoryLimit { limit, .. } if limit == MIB / 8),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("memory_limit = 128 KiB"), "{text}");
    assert!(text.contains("Failed to allocate"), "{text}");
    // With room, the same query runs.
    let batches = query_with(root, sql, &limited(64 * MIB)).await.unwrap();
    assert_eq!(count(&batches), 6000);
}

#[tokio::test]
async fn a_sort_larger_than_the_limit_spills_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 300,000 sequence numbers: with their sort keys, more than a 4 MiB
    // limit holds. (Narrow rows on purpose: merging the spilled runs keeps a
    // batch per run in memory, so wide rows need a roomier limit to spill
    // and still finish.)
    const N: u64 = 300_000;
    TableWriter::open(root, Table::Events)
        .unwrap()
        .write(&[wordy_events(1, N as usize, 0)], 1)
        .unwrap();
    let spill = tempfile::tempdir().unwrap();
    let config = SqlConfig {
        memory_limit: 4 * MIB,
        spill_dir: Some(spill.path().to_path_buf()),
        ..SqlConfig::default()
    };
    let sql = "SELECT seq FROM events ORDER BY seq DESC";
    let mut stream = query_stream(root, sql, &config).await.unwrap();
    let mut seqs = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        let batch = batch.unwrap();
        seqs.extend(
            batch
                .column(0)
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    assert!(seqs.iter().copied().eq((1..=N).rev()));

    let ctx = session_with(root, &config).await.unwrap();
    let plan = ctx
        .sql(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plan = format_batches(&plan, OutputFormat::Table).unwrap();
    let spills: usize = plan
        .split("spill_count=")
        .skip(1)
        .map(|rest| {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..digits].parse::<usize>().unwrap()
        })
        .sum();
    assert!(spills > 0, "{plan}");
}

#[tokio::test]
async fn max_rows_cuts_the_stream_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    TableWriter::open(root, Table::Events)
        .unwrap()
        .write(&sample_batches(), 3)
        .unwrap();
    let capped = |n| SqlConfig {
        max_rows: Some(n),
        ..SqlConfig::default()
    };
    let sql = "SELECT * FROM events ORDER BY ts";
    assert_eq!(rows_of(root, sql, &capped(7)).await, (7, true));
    assert_eq!(rows_of(root, sql, &capped(114)).await, (114, true));
    assert_eq!(rows_of(root, sql, &capped(115)).await, (115, false));
    assert_eq!(rows_of(root, sql, &capped(1000)).await, (115, false));
    assert_eq!(
        rows_of(root, sql, &SqlConfig::default()).await,
        (115, false)
    );
    // Aggregates count everything before the cap applies to their output.
    let sql = "SELECT site, count(*) FROM events GROUP BY site";
    assert_eq!(rows_of(root, sql, &capped(1)).await, (1, true));
    // The cap does not change what is counted.
    let mut stream = query_stream(root, "SELECT count(*) FROM events", &capped(1))
        .await
        .unwrap();
    let batch = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(count(&[batch]), 115);
    assert!(stream.next_batch().await.is_none());
    assert!(!stream.truncated());
}

#[tokio::test]
async fn query_refuses_to_collect_a_result_larger_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    wordy_table(root);
    let err = query_with(root, "SELECT * FROM events", &limited(MIB))
        .await
        .unwrap_err();
    assert!(matches!(err, HistoryError::MemoryLimit { .. }), "{err:?}");
    assert!(err.to_string().contains("collected result"), "{err}");
    // Streamed, the same result passes under the same limit.
    assert_eq!(
        rows_of(root, "SELECT * FROM events", &limited(MIB)).await,
        (6000, false)
    );
}

#[test]
fn limits_are_validated_by_name() {
    for (config, key) in [
        (limited(0), "memory_limit"),
        (
            SqlConfig {
                max_rows: Some(0),
                ..SqlConfig::default()
            },
            "max_rows",
        ),
        (
            SqlConfig {
                max_spill_bytes: 0,
                ..SqlConfig::default()
            },
            "max_spill_bytes",
        ),
    ] {
        let err = config.validate().unwrap_err();
        assert!(err.to_string().starts_with(key), "{err}");
    }
    SqlConfig::default().validate().unwrap();
    assert_eq!(SqlConfig::default().memory_limit, 1 << 30);
    let parsed: SqlConfig = serde_json::from_str(r#"{"max_rows": 10}"#).unwrap();
    assert_eq!(
        parsed,
        SqlConfig {
            max_rows: Some(10),
            ..SqlConfig::default()
        }
    );
    let err = serde_json::from_str::<SqlConfig>(r#"{"memory_limt": 10}"#).unwrap_err();
    assert!(err.to_string().contains("memory_limt"), "{err}");
}

#[tokio::test]
async fn streamed_output_matches_the_whole_result() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    TableWriter::open(root, Table::Events)
        .unwrap()
        .write(&sample_batches(), 3)
        .unwrap();
    let sql = "SELECT site, seq, ts, attrs FROM events ORDER BY site, seq";
    let whole = query_with(root, sql, &SqlConfig::default()).await.unwrap();
    for format in [OutputFormat::Csv, OutputFormat::Json, OutputFormat::Table] {
        let mut stream = query_stream(root, sql, &SqlConfig::default())
            .await
            .unwrap();
        let mut writer = BatchWriter::new(Vec::new(), format);
        let mut batches = 0;
        while let Some(batch) = stream.next_batch().await {
            // In small pieces, as a slow scan would deliver them.
            let batch = batch.unwrap();
            for start in (0..batch.num_rows()).step_by(7) {
                writer
                    .write(&batch.slice(start, 7.min(batch.num_rows() - start)))
                    .unwrap();
                batches += 1;
            }
        }
        assert!(batches > 10);
        let streamed = String::from_utf8(writer.finish().unwrap()).unwrap();
        assert_eq!(
            streamed,
            format_batches(&whole, format).unwrap(),
            "{format}"
        );
    }
}

/// Peak memory of a runaway query, for the README's figures; prints, does
/// not assert. Run one mode per process under `/usr/bin/time -v`:
///
/// ```text
/// OTWATCH_MEASURE=collect cargo test -p otwatch-history --release --test sql_limits \
///     runaway_cross_join -- --ignored --nocapture
/// ```
///
/// `collect` runs the cross join through [`otwatch_history::query`]
/// (collecting the result), `stream` through [`query_stream`], reading
/// 50 million rows.
#[tokio::test]
#[ignore]
async fn runaway_cross_join() {
    let mode = std::env::var("OTWATCH_MEASURE").unwrap_or_else(|_| "stream".into());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[wordy_events(1, 20_000, 40)], 1).unwrap();
    let sql = "SELECT a.seq, b.seq, a.text FROM events a CROSS JOIN events b";
    let started = std::time::Instant::now();
    match mode.as_str() {
        "collect" => {
            let result = otwatch_history::query(root, sql).await;
            match result {
                Ok(batches) => println!(
                    "collected {} rows",
                    batches.iter().map(RecordBatch::num_rows).sum::<usize>()
                ),
                Err(e) => println!("failed: {e}"),
            }
        }
        _ => {
            let mut stream = query_stream(root, sql, &SqlConfig::default())
                .await
                .unwrap();
            let mut rows = 0usize;
            while let Some(batch) = stream.next_batch().await {
                rows += batch.unwrap().num_rows();
                if rows >= 50_000_000 {
                    break;
                }
            }
            println!("streamed {rows} rows");
        }
    }
    println!("{mode}: {:.1} s", started.elapsed().as_secs_f64());
}

/// Query and flush times over 2,000 files (100 flushes of 20 sites, over 20
/// hourly partitions), for the README's figures; prints, does not assert:
///
/// ```text
/// cargo test -p otwatch-history --test sql_limits many_files_query_time -- --ignored --nocapture
/// ```
#[tokio::test]
#[ignore]
async fn many_files_query_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let mut flush_times = Vec::new();
    for flush in 0..100u64 {
        let hour = (flush % 20) as i64;
        let batches: Vec<_> = (0..20)
            .map(|site| {
                events(
                    &format!("site-{site:02}"),
                    flush * 10 + 1,
                    T10 - 10 * 60 * MINUTE + hour * 60 * MINUTE,
                    10,
                )
            })
            .collect();
        let t = std::time::Instant::now();
        writer.write(&batches, flush + 1).unwrap();
        flush_times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(writer);
    flush_times.sort_by(f64::total_cmp);
    println!(
        "files {}; flush of 20 files: median {:.1} ms",
        parquet_files(&root.join("events")).len(),
        flush_times[50]
    );
    for sql in [
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM events WHERE date = '2024-05-01' AND hour = 3",
    ] {
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = std::time::Instant::now();
            let n = count_of(root, sql).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(n > 0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{sql}: median {:.1} ms (min {:.1}, max {:.1})",
            times[10], times[0], times[20]
        );
    }
}
