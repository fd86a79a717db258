//! Compaction and retention on a real table: the rows of a compacted hour
//! are there exactly once whatever step a crash stops it at, a query
//! running across the swap reads every row once, retention drops exactly
//! the partitions older than the cutoff, and `check` is clean after each.

mod common;

use arrow::array::RecordBatch;
use common::*;
use otwatch_history::compact::Step;
use otwatch_history::{
    check, format_batches, query, query_stream, CompactionConfig, Compactor, HistoryError,
    IntegrityError, OutputFormat, SqlConfig, Table, TableWriter,
};
use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Far after every hour the tests write: all of them are closed.
fn later() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap()
}

/// No delay and no grace: every hour is due, replaced files go at once.
fn eager() -> CompactionConfig {
    CompactionConfig {
        delay: Duration::ZERO,
        grace: Duration::ZERO,
        ..CompactionConfig::default()
    }
}

const HOUR10: &str = "date=2024-05-01/hour=10";

/// Six flushes in hour 10 (each 10 events of plant A and 10 of plant B, so
/// 12 small files), then one flush in hour 11 (one file per site: nothing
/// to merge there).
fn write_hours(root: &Path) {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    for k in 0..6u64 {
        let start = T10 + k as i64 * 10 * MINUTE;
        let batches = [
            events("plant-a", 1 + 10 * k, start, 10),
            events("plant-b", 1 + 10 * k, start + 1, 10),
        ];
        writer.write(&batches, k + 1).unwrap();
    }
    let start = T10 + 60 * MINUTE;
    writer
        .write(
            &[
                events("plant-a", 61, start, 5),
                events("plant-b", 61, start, 5),
            ],
            7,
        )
        .unwrap();
}

/// Rows per site and hour, their distinct sequence numbers and sums: equal
/// before and after only if every row is there exactly once.
async fn fingerprint(root: &Path) -> String {
    let batches = query(
        root,
        "SELECT site, hour, count(*) AS n, count(DISTINCT seq) AS distinct_seq, sum(seq) AS s, \
         sum(value) AS v FROM events GROUP BY site, hour ORDER BY site, hour",
    )
    .await
    .unwrap();
    format_batches(&batches, OutputFormat::Csv).unwrap()
}

/// The Parquet files in a partition directory, sorted.
fn files_in(root: &Path, partition: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join("events").join(partition))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
}

/// `check` finds nothing wrong, and every data file on disk is committed
/// or held by a compaction in progress.
fn assert_clean(root: &Path) -> otwatch_history::TableCheck {
    let report = check(root, true).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let events = report
        .tables
        .iter()
        .find(|t| t.table == Table::Events)
        .unwrap()
        .clone();
    assert!(events.not_committed.is_empty(), "{events:?}");
    events
}

/// Compacts every due hour to the end, with a fresh compactor, and removes
/// the replaced files.
async fn compact_everything(root: &Path, writer: &mut TableWriter) -> usize {
    let compactor = Compactor::new(root, Table::Events, eager());
    let mut swaps = 0;
    for partition in compactor.candidates(later()).unwrap() {
        if let Some(prepared) = compactor.prepare(&partition).await.unwrap() {
            writer.commit_compaction(&prepared).unwrap();
            compactor.swapped(&prepared);
            swaps += 1;
        }
    }
    compactor.collect(Instant::now()).unwrap();
    swaps
}

#[tokio::test]
async fn a_closed_hour_is_merged_into_sorted_files_once() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_hours(root);
    let before = fingerprint(root).await;
    assert_eq!(files_in(root, HOUR10).len(), 12);

    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let compactor = Compactor::new(root, Table::Events, eager());
    // Hour 11 has one file per site: nothing to merge there.
    assert_eq!(compactor.candidates(later()).unwrap(), [HOUR10]);
    // An hour not yet closed is left alone.
    let at_11_05 = chrono::DateTime::from_timestamp_nanos(T10 + 65 * MINUTE);
    let waiting = Compactor::new(
        root,
        Table::Events,
        CompactionConfig {
            delay: Duration::from_secs(600),
            ..eager()
        },
    );
    assert!(waiting.candidates(at_11_05).unwrap().is_empty());

    let prepared = compactor.prepare(HOUR10).await.unwrap().unwrap();
    assert_eq!(prepared.files_replaced(), 12);
    assert_eq!(prepared.files_written(), 2);
    assert_eq!(prepared.rows(), 120);
    writer.commit_compaction(&prepared).unwrap();
    compactor.swapped(&prepared);
    // Between the swap and the removal, queries read the new files only
    // and check counts the old ones as held, not as strays.
    assert_eq!(fingerprint(root).await, before);
    let held = assert_clean(root);
    assert_eq!(held.compaction_held.len(), 12 + 2 - 2, "{held:?}");
    assert_eq!(compactor.collect(Instant::now()).unwrap(), 12);
    let files = files_in(root, HOUR10);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.contains("-c")), "{files:?}");
    assert!(!root
        .join("events")
        .join(HOUR10)
        .join("_compaction")
        .exists());
    assert_eq!(fingerprint(root).await, before);
    let after = assert_clean(root);
    assert!(after.compaction_held.is_empty(), "{after:?}");
    assert_eq!(after.rows, 130);

    // Sorted by site, asset and ts: within a compacted file ts ascends.
    let ts = query(
        root,
        "SELECT ts FROM events WHERE site = 'plant-a' AND hour = 10",
    )
    .await
    .unwrap();
    let text = format_batches(&ts, OutputFormat::Csv).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);

    // Done is done: nothing left to merge, and a flush continues as before.
    assert!(compactor.candidates(later()).unwrap().is_empty());
    writer
        .write(&[events("plant-a", 200, T10 + 30 * MINUTE, 3)], 8)
        .unwrap();
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 10").await,
        123
    );
    // The late small file and the compacted one of its site merge again.
    assert_eq!(compact_everything(root, &mut writer).await, 1);
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 10").await,
        123
    );
    assert_eq!(files_in(root, HOUR10).len(), 2);
    assert_clean(root);
}

/// Where the run stops, as a crash (a panic at a step, or nothing more
/// after a point) would stop it.
#[derive(Debug, Clone, Copy)]
enum Stop {
    At(Step),
    /// The new files are written, the swap has not happened.
    BeforeSwap,
    /// The swap happened, the replaced files are all still there.
    AfterSwap,
}

/// Runs one compaction of hour 10 up to `stop`, dropping the writer and
/// the compactor there as a crash would.
async fn compact_until(root: &Path, stop: Stop) {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let mut compactor = Compactor::new(root, Table::Events, eager());
    if let Stop::At(step) = stop {
        compactor = compactor.crash_at(step);
    }
    let compactor = Arc::new(compactor);
    let c = Arc::clone(&compactor);
    let prepared = tokio::spawn(async move { c.prepare(HOUR10).await }).await;
    let prepared = match (stop, prepared) {
        (Stop::At(Step::IntentWritten | Step::FirstFileWritten), Err(e)) => {
            assert!(e.is_panic());
            return;
        }
        (_, Ok(Ok(Some(prepared)))) => prepared,
        (_, other) => panic!("{other:?}"),
    };
    if let Stop::BeforeSwap = stop {
        return;
    }
    writer.commit_compaction(&prepared).unwrap();
    compactor.swapped(&prepared);
    if let Stop::AfterSwap = stop {
        return;
    }
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compactor.collect(Instant::now())
    }));
    assert!(crashed.is_err(), "no crash at {stop:?}");
    // Some replaced files are gone, the record is still there.
    assert!(files_in(root, HOUR10).len() < 14);
    assert!(root
        .join("events")
        .join(HOUR10)
        .join("_compaction")
        .exists());
}

#[tokio::test]
async fn a_crash_at_any_step_leaves_every_row_exactly_once() {
    for stop in [
        Stop::At(Step::IntentWritten),
        Stop::At(Step::FirstFileWritten),
        Stop::BeforeSwap,
        Stop::AfterSwap,
        Stop::At(Step::CleanupStarted),
    ] {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write_hours(root);
        let before = fingerprint(root).await;
        compact_until(root, stop).await;

        // Before any recovery, readers see one set or the other.
        assert_eq!(fingerprint(root).await, before, "{stop:?}");
        assert_clean(root);

        // The writer's recovery keeps the set the manifest lists and
        // removes what an unfinished compaction wrote.
        let mut writer = TableWriter::open(root, Table::Events).unwrap();
        let recovery = writer.recovery().clone();
        match stop {
            Stop::At(_) | Stop::BeforeSwap if !matches!(stop, Stop::At(Step::CleanupStarted)) => {
                assert_eq!(recovery.compactions_rolled_back, 1, "{stop:?}");
                assert_eq!(files_in(root, HOUR10).len(), 12, "{stop:?}");
                assert!(!root
                    .join("events")
                    .join(HOUR10)
                    .join("_compaction")
                    .exists());
            }
            _ => {
                assert_eq!(recovery.compactions_awaiting_removal, 1, "{stop:?}");
            }
        }
        assert_eq!(fingerprint(root).await, before, "{stop:?}");
        assert_clean(root);

        // A later run finishes the job: two files, nothing else on disk.
        compact_everything(root, &mut writer).await;
        assert_eq!(files_in(root, HOUR10).len(), 2, "{stop:?}");
        assert_eq!(fingerprint(root).await, before, "{stop:?}");
        let report = assert_clean(root);
        assert!(report.compaction_held.is_empty(), "{stop:?}: {report:?}");
        assert_eq!(report.files, 4, "{stop:?}: {report:?}");
    }
}

/// Many small files in one hour, one site.
fn write_many(root: &Path, flushes: u64) {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    for k in 0..flushes {
        let start = T10 + k as i64 * MINUTE / 2;
        writer
            .write(&[events("plant-a", 1 + 10 * k, start, 10)], k + 1)
            .unwrap();
    }
}

async fn distinct_rows(
    stream: &mut otwatch_history::QueryStream,
    seen: &mut HashSet<u64>,
) -> Result<usize, HistoryError> {
    let mut rows = 0;
    while let Some(batch) = stream.next_batch().await {
        let batch: RecordBatch = batch?;
        rows += batch.num_rows();
        let seq = batch.column(0).as_any();
        let seq = seq
            .downcast_ref::<arrow::array::UInt64Array>()
            .expect("seq is u64");
        for v in seq.values() {
            assert!(seen.insert(*v), "seq {v} read twice");
        }
    }
    Ok(rows)
}

#[tokio::test]
async fn a_query_running_across_a_compaction_reads_every_row_once() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_many(root, 40);
    // No filter: a filter's output is gathered into large batches, which
    // would read every file before the first batch comes back.
    let sql = "SELECT seq FROM events";

    // The query lists the 40 small files and reads its first rows...
    let mut running = query_stream(root, sql, &SqlConfig::default())
        .await
        .unwrap();
    let first = running.next_batch().await.unwrap().unwrap();
    let mut seen = HashSet::new();
    for v in first
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap()
        .values()
    {
        seen.insert(*v);
    }
    let first_rows = first.num_rows();
    assert!(first_rows < 400, "the first batch read everything");

    // ... the hour is compacted and swapped meanwhile (grace: 1 hour) ...
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let compactor = Compactor::new(
        root,
        Table::Events,
        CompactionConfig {
            delay: Duration::ZERO,
            ..CompactionConfig::default()
        },
    );
    let prepared = compactor.prepare(HOUR10).await.unwrap().unwrap();
    writer.commit_compaction(&prepared).unwrap();
    compactor.swapped(&prepared);
    // Within the grace period nothing is removed.
    assert_eq!(compactor.collect(Instant::now()).unwrap(), 0);

    // ... and the running query still reads the files it listed: every
    // row once.
    let rest = distinct_rows(&mut running, &mut seen).await.unwrap();
    assert_eq!(first_rows + rest, 400);
    assert_eq!(seen.len(), 400);

    // A query started after the swap reads the one new file.
    let mut after = query_stream(root, sql, &SqlConfig::default())
        .await
        .unwrap();
    let mut seen = HashSet::new();
    assert_eq!(distinct_rows(&mut after, &mut seen).await.unwrap(), 400);

    // Once the grace period is over, the replaced files go.
    let removed = compactor
        .collect(Instant::now() + Duration::from_secs(3601))
        .unwrap();
    assert_eq!(removed, 40);
    assert_eq!(files_in(root, HOUR10).len(), 1);
    assert_clean(root);
}

#[tokio::test]
async fn a_query_that_outlives_the_grace_period_fails_rather_than_answer_short() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_many(root, 40);
    // No filter: a filter's output is gathered into large batches, which
    // would read every file before the first batch comes back.
    let sql = "SELECT seq FROM events";
    let mut running = query_stream(root, sql, &SqlConfig::default())
        .await
        .unwrap();
    let first = running.next_batch().await.unwrap().unwrap();
    assert!(first.num_rows() < 400);

    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    compact_everything(root, &mut writer).await;
    assert_eq!(files_in(root, HOUR10).len(), 1);

    let mut seen = HashSet::new();
    match distinct_rows(&mut running, &mut seen).await {
        Err(HistoryError::Integrity(IntegrityError::Replaced { path, .. })) => {
            assert!(path.to_string_lossy().contains("plant-a-"), "{path:?}");
        }
        other => panic!("expected the query to fail naming a replaced file: {other:?}"),
    }
    // Run again, it reads the compacted file.
    let mut again = query_stream(root, sql, &SqlConfig::default())
        .await
        .unwrap();
    let mut seen = HashSet::new();
    assert_eq!(distinct_rows(&mut again, &mut seen).await.unwrap(), 400);
}

/// One flush per hour from 2024-05-01 06:00 to 2024-05-02 01:00 (20 hours),
/// 10 events of each of two sites each.
fn write_days(root: &Path) -> TableWriter {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    for h in 0..20u64 {
        let start = T10 + (h as i64 - 4) * 60 * MINUTE;
        writer
            .write(
                &[
                    events("plant-a", 1 + 10 * h, start, 10),
                    events("plant-b", 1 + 10 * h, start, 10),
                ],
                h + 1,
            )
            .unwrap();
    }
    writer
}

fn partitions_on_disk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for date in fs::read_dir(root.join("events")).unwrap() {
        let date = date.unwrap();
        let name = date.file_name().to_string_lossy().into_owned();
        if !name.starts_with("date=") {
            continue;
        }
        for hour in fs::read_dir(date.path()).unwrap() {
            let hour = hour.unwrap().file_name().to_string_lossy().into_owned();
            out.push(format!("{name}/{hour}"));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_older_than_the_cutoff() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut writer = write_days(root);
    assert_eq!(partitions_on_disk(root).len(), 20);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 400);

    // 10:00 is the end of hour 9: hours 6 to 9 go, hour 10 stays.
    let cutoff = chrono::DateTime::from_timestamp_nanos(T10);
    let dropped = writer.drop_partitions_before(cutoff).unwrap();
    assert_eq!(
        dropped,
        [6, 7, 8, 9].map(|h| format!("date=2024-05-01/hour={h}"))
    );
    let left = partitions_on_disk(root);
    assert_eq!(left.len(), 16);
    assert!(left.iter().all(|p| !dropped.contains(p)), "{left:?}");
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 320);
    assert_eq!(
        count_of(
            root,
            "SELECT count(*) FROM events WHERE hour < 10 AND date = '2024-05-01'"
        )
        .await,
        0
    );
    let index = fs::read_to_string(root.join("events/_partitions")).unwrap();
    assert!(!index.contains("hour=9\""), "{index}");
    let report = assert_clean(root);
    assert_eq!(report.partitions, 16);
    // Nothing more is due at the same cutoff; the writer writes on.
    assert!(writer.drop_partitions_before(cutoff).unwrap().is_empty());
    writer
        .write(&[events("plant-a", 500, T10 + 30 * MINUTE, 2)], 21)
        .unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 322);

    // A whole day goes with its date directory.
    let cutoff = chrono::DateTime::from_timestamp_nanos(T10 + 14 * 60 * MINUTE);
    let dropped = writer.drop_partitions_before(cutoff).unwrap();
    assert_eq!(dropped.len(), 14);
    assert!(!root.join("events/date=2024-05-01").exists());
    assert_eq!(
        partitions_on_disk(root),
        ["date=2024-05-02/hour=0", "date=2024-05-02/hour=1"]
    );
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 40);
    assert_clean(root);
    drop(writer);
    let writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.recovery().partitions_dropped, 0);
    assert_clean(root);
}

#[tokio::test]
async fn a_drop_stopped_by_a_crash_is_finished_at_open() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    drop(write_days(root));
    let doomed = "date=2024-05-01/hour=7";
    // A crash after the decision (the record written) and part of the
    // deletion (one file of the partition gone, its index line still
    // there).
    fs::write(
        root.join("events/_dropping"),
        format!("{{\"partitions\":[\"{doomed}\"]}}"),
    )
    .unwrap();
    let first = files_in(root, doomed).remove(0);
    fs::remove_file(root.join("events").join(doomed).join(first)).unwrap();

    let writer = TableWriter::open(root, Table::Events).unwrap();
    assert_eq!(writer.recovery().partitions_dropped, 1);
    assert!(!root.join("events").join(doomed).exists());
    assert!(!root.join("events/_dropping").exists());
    assert_eq!(partitions_on_disk(root).len(), 19);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 380);
    assert_clean(root);
}

#[tokio::test]
async fn retention_after_compaction_leaves_a_clean_table() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_hours(root);
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    // Compacted and swapped, the replaced files still in their grace
    // period when retention drops the hour.
    let compactor = Compactor::new(
        root,
        Table::Events,
        CompactionConfig {
            delay: Duration::ZERO,
            ..CompactionConfig::default()
        },
    );
    let prepared = compactor.prepare(HOUR10).await.unwrap().unwrap();
    writer.commit_compaction(&prepared).unwrap();
    compactor.swapped(&prepared);
    let cutoff = chrono::DateTime::from_timestamp_nanos(T10 + 60 * MINUTE);
    assert_eq!(
        writer.drop_partitions_before(cutoff).unwrap(),
        [HOUR10.to_owned()]
    );
    assert!(!root.join("events").join(HOUR10).exists());
    // The compactor finds nothing left of it to remove.
    assert_eq!(
        compactor
            .collect(Instant::now() + Duration::from_secs(7200))
            .unwrap(),
        0
    );
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 10);
    assert_clean(root);
}
