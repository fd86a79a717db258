//! The history against damage from outside the writer: committed files or
//! partitions that disappear, stray and damaged files, a lost commit file,
//! corrupt manifests, tables from before manifests, and a full disk in the
//! middle of a flush. Every case uses real Parquet files on disk.

mod common;

use common::*;
use otwatch_history::{
    check, forget_missing, query, repair, HistoryError, IntegrityError, LossReason, Table,
    TableWriter,
};
use std::fs;
use std::path::{Path, PathBuf};

const HOUR11_B: &str = "date=2024-05-01/hour=11/plant-b-00000000000000000000-3.parquet";
const HOUR10_A: &str = "date=2024-05-01/hour=10/plant-a-00000000000000000000-0.parquet";

/// The sample events (115 rows in four files over hours 10 and 11),
/// committed at offset 3.
fn sample_table(root: &Path) {
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&sample_batches(), 3).unwrap();
}

async fn query_err(root: &Path, sql: &str) -> HistoryError {
    match query(root, sql).await {
        Ok(batches) => panic!("{sql}: expected an error, got {batches:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_missing_committed_file_fails_the_queries_that_need_it_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let gone = root.join("events").join(HOUR11_B);
    let saved = fs::read(&gone).unwrap();
    fs::remove_file(&gone).unwrap();

    // Every query that would read the file fails and names it.
    for sql in [
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM events WHERE hour = 11",
        "SELECT site, count(*) FROM events GROUP BY site",
    ] {
        let err = query_err(root, sql).await;
        match &err {
            HistoryError::Integrity(IntegrityError::MissingFile {
                table: "events",
                path,
                rows: 10,
                missing_listed: 1,
            }) => assert_eq!(path, &gone),
            other => panic!("{sql}: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&gone.display().to_string()), "{text}");
        assert!(
            text.contains("otwatch history repair --forget-missing"),
            "{text}"
        );
    }
    // Queries the partition filters keep away from it still run.
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 10").await,
        70
    );

    // `check` says what is missing; the alerts table is fine.
    let report = check(root, false).unwrap();
    assert!(!report.is_clean());
    let events = &report.tables[0];
    assert_eq!(events.table, Table::Events);
    assert_eq!(events.missing.len(), 1);
    assert_eq!(
        (events.missing[0].path.clone(), events.missing[0].rows),
        (gone.clone(), 10)
    );
    assert_eq!((events.files, events.rows), (3, 105));
    assert!(report.tables[1].is_clean());
    assert!(report.to_string().contains("missing: "), "{report}");

    // The operator acknowledges the loss: it is recorded, queries run again
    // and count what is left.
    let forgot = forget_missing(root, Table::Events).unwrap();
    assert_eq!(forgot.rows, 10);
    assert!(!forgot.rows_unknown);
    assert_eq!(forgot.recorded.len(), 1);
    let record = &forgot.recorded[0];
    assert_eq!(record.reason, LossReason::MissingFile);
    assert_eq!(record.partition, "date=2024-05-01/hour=11");
    assert_eq!(
        (record.rows, record.bytes),
        (Some(10), Some(saved.len() as u64))
    );
    let lost = fs::read_to_string(root.join("events/_lost")).unwrap();
    assert!(
        lost.contains("plant-b-00000000000000000000-3.parquet"),
        "{lost}"
    );
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 105);
    let report = check(root, false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.tables[0].lost.len(), 1);
    // Forgetting again records nothing new.
    assert!(forget_missing(root, Table::Events)
        .unwrap()
        .recorded
        .is_empty());

    // A file restored from a backup is read again.
    fs::write(&gone, saved).unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 115);
}

#[tokio::test]
async fn a_partition_deleted_whole_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let hour11 = root.join("events/date=2024-05-01/hour=11");
    fs::remove_dir_all(&hour11).unwrap();

    let err = query_err(root, "SELECT count(*) FROM events").await;
    assert!(
        matches!(
            &err,
            HistoryError::Integrity(IntegrityError::PartitionWithoutManifest { dir, dir_present: false, .. })
                if dir == &hour11
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("is gone (its directory and manifest)"),
        "{err}"
    );
    assert!(err.to_string().contains("--forget-missing"), "{err}");
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 10").await,
        70
    );
    assert_eq!(
        check(root, false).unwrap().tables[0].without_manifest,
        std::slice::from_ref(&hour11)
    );

    let forgot = forget_missing(root, Table::Events).unwrap();
    assert!(forgot.rows_unknown);
    assert_eq!(forgot.recorded[0].reason, LossReason::MissingPartition);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 70);
    assert!(check(root, false).unwrap().is_clean());
}

#[tokio::test]
async fn a_lost_manifest_is_rebuilt_from_the_files_present() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let hour10 = root.join("events/date=2024-05-01/hour=10");
    fs::remove_file(hour10.join("_manifest")).unwrap();

    let err = query_err(root, "SELECT count(*) FROM events WHERE hour = 10").await;
    assert!(
        matches!(
            &err,
            HistoryError::Integrity(IntegrityError::PartitionWithoutManifest {
                dir_present: true,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("has lost its manifest"), "{err}");
    assert!(err.to_string().contains("otwatch history repair"), "{err}");
    // Forgetting does not hide files that are there.
    let forgot = forget_missing(root, Table::Events).unwrap();
    assert!(forgot.recorded.is_empty());
    assert_eq!(forgot.needs_rebuild, ["date=2024-05-01/hour=10"]);

    // With no writer running, repair rebuilds it and says so in `_lost`.
    let repaired = repair(root, false).unwrap();
    let recovery = repaired[0].recovery.as_ref().unwrap();
    assert_eq!(recovery.rebuilt, ["date=2024-05-01/hour=10"]);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 115);
    let report = check(root, false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.tables[0].lost[0].reason, LossReason::ManifestRebuilt);
}

#[tokio::test]
async fn a_running_writer_rebuilds_a_manifest_removed_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[events("plant-a", 1, T10, 10)], 1).unwrap();
    fs::remove_file(root.join("events/date=2024-05-01/hour=10/_manifest")).unwrap();
    // The next flush into the partition must not start a manifest that
    // forgets the first file.
    writer
        .write(&[events("plant-a", 11, T10 + 10 * MINUTE, 5)], 2)
        .unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 15);
    assert!(check(root, false).unwrap().is_clean());
}

#[tokio::test]
async fn stray_files_are_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let hour10 = root.join("events/date=2024-05-01/hour=10");
    // Garbage, a copy of a committed file, and a file named like the
    // writer's but never committed by it.
    fs::write(hour10.join("notes.parquet"), b"not parquet at all").unwrap();
    fs::copy(
        root.join("events").join(HOUR10_A),
        hour10.join("copy-of-a.parquet"),
    )
    .unwrap();
    fs::copy(
        root.join("events").join(HOUR10_A),
        hour10.join("plant-z-00000000000000000001-0.parquet"),
    )
    .unwrap();
    // A stray directory level too.
    fs::create_dir_all(root.join("events/misc")).unwrap();
    fs::write(root.join("events/misc/x.parquet"), b"junk").unwrap();

    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 115);
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 10").await,
        70
    );
    let report = check(root, false).unwrap();
    assert!(report.is_clean(), "strays do not affect queries: {report}");
    let mut strays = report.tables[0].not_committed.clone();
    strays.sort();
    assert_eq!(
        strays,
        [
            hour10.join("copy-of-a.parquet"),
            hour10.join("notes.parquet"),
            hour10.join("plant-z-00000000000000000001-0.parquet"),
        ]
    );
    assert!(
        report
            .to_string()
            .contains("not committed (ignored by queries)"),
        "{report}"
    );
}

#[tokio::test]
async fn a_damaged_committed_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let file = root.join("events").join(HOUR10_A);
    let good = fs::read(&file).unwrap();

    // Cut short, as by a disk that filled during a copy.
    fs::write(&file, &good[..good.len() / 2]).unwrap();
    let err = query_err(root, "SELECT count(*) FROM events").await;
    match &err {
        HistoryError::Integrity(IntegrityError::Damaged { path, reason, .. }) => {
            assert_eq!(path, &file);
            assert!(reason.contains("bytes on disk"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(
        count_of(root, "SELECT count(*) FROM events WHERE hour = 11").await,
        45
    );

    // Overwritten with garbage of the same size: DataFusion's own error
    // does not name the file; the history finds and names it.
    let garbage = vec![0x5a; good.len()];
    fs::write(&file, &garbage).unwrap();
    let err = query_err(root, "SELECT count(*) FROM events").await;
    match &err {
        HistoryError::Integrity(IntegrityError::Damaged { path, reason, .. }) => {
            assert_eq!(path, &file);
            assert!(reason.contains("footer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let report = check(root, false).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.tables[0].damaged.len(), 1);
    assert_eq!(report.tables[0].damaged[0].path, file);

    // The operator moves it aside and records the loss.
    fs::rename(&file, root.join("damaged.parquet")).unwrap();
    let forgot = forget_missing(root, Table::Events).unwrap();
    assert_eq!(forgot.rows, 60);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 55);
}

#[tokio::test]
async fn a_damaged_data_page_is_found_and_named() {
    use parquet::file::metadata::ParquetMetaDataReader;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let file = root.join("events").join(HOUR10_A);
    let mut bytes = fs::read(&file).unwrap();
    // Flip bytes inside the compressed data of the `seq` column, leaving
    // the footer whole: only decoding the pages can tell.
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&fs::File::open(&file).unwrap())
        .unwrap();
    let seq = meta.row_group(0).column(2);
    assert_eq!(seq.column_path().string(), "seq");
    let start = seq.data_page_offset() as usize + 8;
    for b in &mut bytes[start..start + 24] {
        *b ^= 0xff;
    }
    fs::write(&file, &bytes).unwrap();

    let err = query_err(root, "SELECT sum(seq) FROM events").await;
    match &err {
        HistoryError::Integrity(IntegrityError::Damaged { path, reason, .. }) => {
            assert_eq!(path, &file);
            assert!(reason.contains("does not decode"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A quick check reads footers only; a full one decodes every page.
    assert!(check(root, false).unwrap().tables[0].damaged.is_empty());
    let full = check(root, true).unwrap();
    assert_eq!(full.tables[0].damaged.len(), 1, "{full}");
    assert_eq!(full.tables[0].damaged[0].path, file);
}

#[tokio::test]
async fn a_lost_commit_file_is_never_taken_for_a_new_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    let before = parquet_files(&root.join("events"));
    fs::remove_file(root.join("events/_committed")).unwrap();

    let err = query_err(root, "SELECT count(*) FROM events").await;
    assert!(
        matches!(
            err,
            HistoryError::Integrity(IntegrityError::CommitMissing { .. })
        ),
        "{err:?}"
    );
    // Opening the writer would otherwise delete every file as uncommitted.
    let err = TableWriter::open(root, Table::Events).unwrap_err();
    assert!(
        matches!(
            err,
            HistoryError::Integrity(IntegrityError::CommitMissing { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(parquet_files(&root.join("events")), before);
}

#[tokio::test]
async fn a_corrupt_manifest_line_is_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&[events("plant-a", 1, T10, 10)], 1).unwrap();
    writer
        .write(&[events("plant-a", 11, T10 + 10 * MINUTE, 5)], 2)
        .unwrap();
    drop(writer);
    let manifest = root.join("events/date=2024-05-01/hour=10/_manifest");
    let text = fs::read_to_string(&manifest).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    fs::write(&manifest, format!("{}#\n{rest}", &first[..first.len() - 5])).unwrap();

    let err = query_err(root, "SELECT count(*) FROM events").await;
    match &err {
        HistoryError::Integrity(IntegrityError::CorruptManifest { path, line: 1, .. }) => {
            assert_eq!(path, &manifest)
        }
        other => panic!("{other:?}"),
    }
    assert!(!check(root, false).unwrap().is_clean());
    repair(root, false).unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 15);
    assert!(check(root, false).unwrap().is_clean());
}

#[tokio::test]
async fn a_table_from_before_manifests_is_indexed_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_table(root);
    // What an older otwatch left: files and `_committed`, no manifests, and
    // a file of a flush that never committed.
    let table = root.join("events");
    fs::remove_file(table.join("_partitions")).unwrap();
    for hour in ["10", "11"] {
        fs::remove_file(table.join(format!("date=2024-05-01/hour={hour}/_manifest"))).unwrap();
    }
    fs::copy(
        table.join(HOUR10_A),
        table.join("date=2024-05-01/hour=10/plant-a-00000000000000000003-0.parquet"),
    )
    .unwrap();

    let err = query_err(root, "SELECT count(*) FROM events").await;
    assert!(
        matches!(
            err,
            HistoryError::Integrity(IntegrityError::NotIndexed { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("otwatch history repair"), "{err}");

    let writer = TableWriter::open(root, Table::Events).unwrap();
    assert!(writer.recovery().indexed);
    assert_eq!(writer.recovery().removed_files, 1);
    drop(writer);
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 115);
    assert!(check(root, false).unwrap().is_clean());
}

/// Makes the file the writer will create at `path` a link to `/dev/full`,
/// so writing it fails with ENOSPC exactly as on a full disk.
fn full_disk_at(path: &Path) {
    std::os::unix::fs::symlink("/dev/full", path).unwrap();
}

#[tokio::test]
async fn a_full_disk_mid_flush_leaves_exactly_the_committed_rows() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full here; not simulating a full disk");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let table = root.join("events");
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    // 10:00..10:49, all in hour 10.
    writer.write(&[events("plant-a", 1, T10, 50)], 5).unwrap();
    let committed_files = parquet_files(&table);
    let manifest10 = fs::read(table.join("date=2024-05-01/hour=10/_manifest")).unwrap();
    let index = fs::read(table.join("_partitions")).unwrap();
    // 10:50..11:09: a file in hour 10, then one in hour 11, a partition no
    // committed flush has created yet.
    let flush = [events("plant-b", 1, T10 + 50 * MINUTE, 20)];

    // 1. The disk fills while the flush writes its second file.
    let second = table.join("date=2024-05-01/hour=11/.plant-b-00000000000000000005-1.parquet.tmp");
    fs::create_dir_all(second.parent().unwrap()).unwrap();
    full_disk_at(&second);
    let err = writer.write(&flush, 8).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::StorageFull));
    assert!(
        err.to_string()
            .contains(".plant-b-00000000000000000005-1.parquet.tmp"),
        "{err}"
    );
    // The writer refuses to go on until recovered.
    assert!(matches!(
        writer.write(&flush, 8).unwrap_err(),
        HistoryError::Poisoned { .. }
    ));
    writer.recover().unwrap();
    assert_eq!(writer.next_offset(), 5);
    assert_eq!(parquet_files(&table), committed_files);
    assert!(second.symlink_metadata().is_err(), "temporary removed");
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 50);

    // 2. The disk fills at the commit, after the files and their manifest
    //    and index lines are down: the most a flush can leave behind.
    full_disk_at(&table.join("_committed.tmp"));
    let err = writer.write(&flush, 8).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    assert_eq!(parquet_files(&table).len(), committed_files.len() + 2);
    assert!(
        fs::read(table.join("date=2024-05-01/hour=10/_manifest"))
            .unwrap()
            .len()
            > manifest10.len()
    );
    assert!(fs::read(table.join("_partitions")).unwrap().len() > index.len());
    // Readers never count a flush before its commit.
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 50);
    // The runtime retries by reopening.
    drop(writer);
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    let recovery = writer.recovery().clone();
    assert_eq!(recovery.next_offset, 5);
    assert_eq!(recovery.removed_files, 2, "{recovery:?}");
    assert_eq!(recovery.removed_manifests, 1, "hour 11's: {recovery:?}");
    assert_eq!(parquet_files(&table), committed_files);
    assert_eq!(
        fs::read(table.join("date=2024-05-01/hour=10/_manifest")).unwrap(),
        manifest10
    );
    assert_eq!(fs::read(table.join("_partitions")).unwrap(), index);
    assert!(!table.join("date=2024-05-01/hour=11/_manifest").exists());
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 50);

    // 3. With space again, the same flush goes through, every row once.
    writer.write(&flush, 8).unwrap();
    assert_eq!(count_of(root, "SELECT count(*) FROM events").await, 70);
    let sql = "SELECT count(*) FROM (SELECT DISTINCT site, agent, seq FROM events)";
    assert_eq!(count_of(root, sql).await, 70);
    assert!(check(root, false).unwrap().is_clean());
}

#[test]
fn files_read_through_the_manifests_in_pyarrow_and_duckdb() {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let script = manifest_dir.join("tests/read_committed.py");
    if !otwatch_testkit::python_has(&["pyarrow", "duckdb"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let table = root.join("events");
    let mut writer = TableWriter::open(root, Table::Events).unwrap();
    writer.write(&sample_batches(), 3).unwrap();
    // A flush that reached the disk but not its commit, and a stray file.
    let committed = fs::read(table.join("_committed")).unwrap();
    writer
        .write(&[events("plant-c", 1, T10 + 30 * MINUTE, 40)], 4)
        .unwrap();
    drop(writer);
    fs::write(table.join("_committed"), committed).unwrap();
    fs::copy(
        table.join(HOUR10_A),
        table.join("date=2024-05-01/hour=10/stray.parquet"),
    )
    .unwrap();

    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(root)
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
            "events_files": 4,
            "events_pyarrow_rows": 115,
            "events_duckdb_rows": 115,
            "events_duckdb_by_site": {"plant-a": 95, "plant-b": 20},
            "alerts_files": 0,
        })
    );
}
