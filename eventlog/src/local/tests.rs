use super::*;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::time::Duration;

fn batch(first: i64, rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let n: Vec<i64> = (first..first + rows as i64).collect();
    let s: Vec<String> = n.iter().map(|v| format!("row {v}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(n)),
            Arc::new(StringArray::from(s)),
        ],
    )
    .unwrap()
}

fn record(first: i64, rows: usize, producer: &str, last_seq: u64) -> Record {
    Record {
        batch: batch(first, rows),
        producer: Some(ProducerMark {
            producer: producer.into(),
            last_seq,
        }),
    }
}

fn first_value(d: &Delivery) -> i64 {
    d.batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn small() -> LocalLogConfig {
    LocalLogConfig {
        segment_bytes: 2048,
        ..Default::default()
    }
}

/// Appends records one per call (one group each): record `i` holds the
/// value `10 * i` and the producer mark `i + 1`.
async fn fill(log: &LocalLog, from: u64, to: u64) {
    for i in from..to {
        let offs = log
            .append(Topic::Events, vec![record(i as i64 * 10, 10, "a/1", i + 1)])
            .await
            .unwrap();
        assert_eq!(offs, vec![i]);
    }
}

async fn read_all(log: &LocalLog, group: &str) -> Vec<Delivery> {
    let mut c = log.consumer(Topic::Events, group).await.unwrap();
    c.seek(log.start_offset(Topic::Events));
    let mut out = Vec::new();
    loop {
        let got = c.poll(1000, Duration::from_millis(10)).await.unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("seg".as_ref()))
        .collect();
    out.sort();
    out
}

/// Flips a bit of the byte at `at` (from the end when negative) of a file.
fn flip(path: &Path, at: i64) {
    let mut bytes = fs::read(path).unwrap();
    let i = if at < 0 {
        bytes.len() - (-at) as usize
    } else {
        at as usize
    };
    bytes[i] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

/// Byte positions of the frames of a segment, in order.
fn frame_positions(path: &Path) -> Vec<u64> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut pos = 0;
    let mut out = Vec::new();
    while let Frame::Record { size, .. } = frame::read_at(&file, pos, len, true).unwrap() {
        out.push(pos);
        pos += size;
    }
    out
}

#[tokio::test]
async fn append_reopen_and_consume_from_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), small()).unwrap();
        fill(&log, 0, 20).await;
        assert_eq!(log.end_offset(Topic::Events), 20);
        assert_eq!(log.end_offset(Topic::Alerts), 0);
    }
    assert!(
        segments(dir.path()).len() > 1,
        "small segment size must roll segments"
    );

    let log = LocalLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 20);
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(20));
    assert_eq!(log.producer_seq(Topic::Events, "b/2"), None);

    let mut c = log.consumer(Topic::Events, "g").await.unwrap();
    assert_eq!(c.position(), 0);
    c.seek(7);
    let got = c.poll(5, Duration::from_millis(10)).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![7, 8, 9, 10, 11]
    );
    assert_eq!(first_value(&got[0]), 70);
    assert_eq!(got[0].producer.as_ref().unwrap().last_seq, 8);
    c.commit(12).await.unwrap();
    drop(c);

    // A new consumer of the group resumes at the committed offset, and
    // sees appends made after it started waiting.
    let mut c = log.consumer(Topic::Events, "g").await.unwrap();
    assert_eq!(c.position(), 12);
    let rest = c.poll(100, Duration::from_millis(10)).await.unwrap();
    assert_eq!(rest.len(), 8);
    assert!(c
        .poll(10, Duration::from_millis(10))
        .await
        .unwrap()
        .is_empty());
    let log = Arc::new(log);
    let appender = log.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        appender
            .append(Topic::Events, vec![record(1000, 3, "a/1", 203)])
            .await
            .unwrap()
    });
    let woke = c.poll(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(woke.len(), 1);
    assert_eq!(woke[0].offset, 20);
    assert_eq!(task.await.unwrap(), vec![20]);
}

#[tokio::test]
async fn concurrent_appends_get_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LocalLog::open(dir.path(), small()).unwrap());
    let mut tasks = Vec::new();
    for p in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..25u64 {
                offs.extend(
                    log.append(Topic::Events, vec![record(0, 4, &format!("p{p}"), i + 1)])
                        .await
                        .unwrap(),
                );
            }
            offs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>());
    for p in 0..8 {
        assert_eq!(log.producer_seq(Topic::Events, &format!("p{p}")), Some(25));
    }
    let read = read_all(&log, "x").await;
    assert_eq!(
        read.iter().map(|d| d.offset).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_kept_in_quarantine_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
        fill(&log, 0, 5).await;
    }
    let seg = segment_path(&dir.path().join("events"), 0);
    let full = fs::metadata(&seg).unwrap().len();
    // A crash in the middle of writing the last record.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(full - 17).unwrap();
    drop(f);
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 4);
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(4));
    let quarantined: Vec<_> = fs::read_dir(dir.path().join("events/quarantine"))
        .unwrap()
        .collect();
    assert_eq!(
        quarantined.len(),
        1,
        "the cut bytes are kept for inspection"
    );
    // Appending continues right after the cut.
    assert_eq!(
        log.append(Topic::Events, vec![record(9, 1, "a/1", 5)])
            .await
            .unwrap(),
        vec![4]
    );
    let all = read_all(&log, "x").await;
    assert_eq!(all.len(), 5);
    assert_eq!(first_value(&all[4]), 9);
}

#[tokio::test]
async fn damage_in_the_middle_of_the_newest_segment_keeps_every_record_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
        fill(&log, 0, 10).await;
    }
    let seg = segment_path(&dir.path().join("events"), 0);
    let frames = frame_positions(&seg);
    // A bit flips inside record 3, well before the end: acknowledged data.
    flip(&seg, frames[3] as i64 + 40);
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(
        log.end_offset(Topic::Events),
        10,
        "nothing after the damage is cut"
    );
    assert_eq!(log.damage().records_lost.load(Ordering::Relaxed), 1);
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(10));
    let read = read_all(&log, "x").await;
    assert_eq!(
        read.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
        "records keep their offsets after the damaged one"
    );
    assert_eq!(first_value(&read[3]), 40);
    assert!(
        dir.path()
            .join("events/quarantine")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    // New records follow the old end.
    assert_eq!(
        log.append(Topic::Events, vec![record(100, 1, "a/1", 11)])
            .await
            .unwrap(),
        vec![10]
    );
    drop(log);
    // And the damage is found again, the same way, at the next open.
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 11);
    assert_eq!(read_all(&log, "y").await.len(), 10);
}

#[tokio::test]
async fn damage_within_the_last_write_is_cut_from_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
        fill(&log, 0, 4).await;
        // The last write: one group of three records.
        let offs = log
            .append(
                Topic::Events,
                vec![
                    record(40, 10, "a/1", 5),
                    record(50, 10, "a/1", 6),
                    record(60, 10, "a/1", 7),
                ],
            )
            .await
            .unwrap();
        assert_eq!(offs, vec![4, 5, 6]);
    }
    let seg = segment_path(&dir.path().join("events"), 0);
    let frames = frame_positions(&seg);
    // The first record of the last group does not read back while the two
    // after it do: pages written out of order before a crash look like this,
    // and that group may never have been acknowledged.
    flip(&seg, frames[4] as i64 + 40);
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 4);
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(4));
    assert_eq!(read_all(&log, "x").await.len(), 4);
}

#[tokio::test]
async fn damage_in_a_sealed_segment_is_reported_and_read_over() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), small()).unwrap();
        fill(&log, 0, 20).await;
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    // The first sealed segment: its last record is damaged, so is the
    // second's first.
    flip(&segs[0], -10);
    let second = frame_positions(&segs[1]);
    flip(&segs[1], second[0] as i64 + 40);
    let log = LocalLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 20);
    let read = read_all(&log, "x").await;
    let offsets: Vec<u64> = read.iter().map(|d| d.offset).collect();
    assert_eq!(offsets.len(), 18, "{offsets:?}");
    assert_eq!(log.damage().regions.load(Ordering::Relaxed), 2);
    assert_eq!(log.damage().records_lost.load(Ordering::Relaxed), 2);
    // A second reader skips them without a second report.
    assert_eq!(read_all(&log, "y").await.len(), 18);
    assert_eq!(log.damage().regions.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_lost_newest_segment_never_makes_offsets_go_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), small()).unwrap();
        fill(&log, 0, 20).await;
        let mut c = log.consumer(Topic::Events, "history-events").await.unwrap();
        c.commit(20).await.unwrap();
    }
    // The newest segment is gone (a restore from an older copy).
    let segs = segments(dir.path());
    fs::remove_file(segs.last().unwrap()).unwrap();
    let log = LocalLog::open(dir.path(), small()).unwrap();
    assert_eq!(
        log.end_offset(Topic::Events),
        20,
        "numbering continues after the committed offset"
    );
    let mut c = log.consumer(Topic::Events, "history-events").await.unwrap();
    assert_eq!(c.position(), 20);
    assert_eq!(
        log.append(Topic::Events, vec![record(7, 1, "a/1", 99)])
            .await
            .unwrap(),
        vec![20]
    );
    let got = c.poll(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.len(), 1, "the consumer sees the new record");
    assert_eq!(got[0].offset, 20);
    drop(c);
    drop(log);
    // A consumer whose position lives elsewhere (a history's files) at 30.
    let log = LocalLog::open(dir.path(), small()).unwrap();
    let mut c = log
        .consumer_at(Topic::Events, "history-alerts", 30)
        .await
        .unwrap();
    assert_eq!(log.end_offset(Topic::Events), 30);
    log.append(Topic::Events, vec![record(8, 1, "a/1", 100)])
        .await
        .unwrap();
    let got = c.poll(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![30]);
    // A consumer sent past the end without that is refused, not left to
    // skip records silently.
    let mut c = log.consumer(Topic::Events, "z").await.unwrap();
    c.seek(1000);
    let err = c.poll(10, Duration::from_millis(10)).await.unwrap_err();
    assert!(matches!(err, LogError::OffsetBeyondEnd { .. }), "{err}");
}

#[tokio::test]
async fn retention_deletes_only_old_segments_every_named_group_has_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalLogConfig {
        segment_bytes: 2048,
        retention: Duration::from_secs(3600),
    };
    let log = LocalLog::open(dir.path(), config).unwrap();
    fill(&log, 0, 30).await;
    let before = log.segment_count(Topic::Events);
    assert!(before >= 4);
    let later = SystemTime::now() + Duration::from_secs(7200);
    // Nothing is named yet: nothing goes.
    assert_eq!(log.apply_retention(later).unwrap(), 0);
    log.retain_for(Topic::Events, &["history-events".into(), "detector".into()]);
    let mut history = log.consumer(Topic::Events, "history-events").await.unwrap();
    history.commit(30).await.unwrap();
    // The detector never committed: it holds everything.
    assert_eq!(log.apply_retention(later).unwrap(), 0);
    let mut detector = log.consumer(Topic::Events, "detector").await.unwrap();
    detector.commit(12).await.unwrap();
    // Too recent: nothing goes.
    assert_eq!(log.apply_retention(SystemTime::now()).unwrap(), 0);
    let deleted = log.apply_retention(later).unwrap();
    assert!(deleted >= 1);
    let start = log.start_offset(Topic::Events);
    assert!(
        start <= 12,
        "segments the detector still needs stay ({start})"
    );
    assert_eq!(segments(dir.path()).len(), before - deleted);
    // Reading from the detector's offset still works; from 0 it says so.
    let mut c = log.consumer(Topic::Events, "detector").await.unwrap();
    assert_eq!(
        c.poll(100, Duration::from_millis(10)).await.unwrap().len(),
        18
    );
    c.seek(0);
    let err = c.poll(1, Duration::from_millis(10)).await.unwrap_err();
    assert!(matches!(err, LogError::OffsetGone { .. }), "{err}");
    // Producer marks survive the deletion and a reopen.
    drop((c, history, detector));
    drop(log);
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(30));
    assert_eq!(log.end_offset(Topic::Events), 30);
}

#[tokio::test]
async fn producer_marks_come_from_snapshots_or_the_segments_themselves() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LocalLog::open(dir.path(), small()).unwrap();
        fill(&log, 0, 20).await;
        log.append(Topic::Events, vec![record(0, 1, "b/2", 7)])
            .await
            .unwrap();
        fill(&log, 21, 30).await;
    }
    let snapshots = fs::read_dir(dir.path().join("events"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("producers".as_ref()))
        .count();
    assert!(snapshots >= 2, "sealed segments have snapshots");
    let log = LocalLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(30));
    assert_eq!(log.producer_seq(Topic::Events, "b/2"), Some(7));
    drop(log);
    for e in fs::read_dir(dir.path().join("events")).unwrap() {
        let p = e.unwrap().path();
        if p.extension() == Some("producers".as_ref()) {
            fs::remove_file(p).unwrap();
        }
    }
    let log = LocalLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(30));
    assert_eq!(log.producer_seq(Topic::Events, "b/2"), Some(7));
}

#[tokio::test]
async fn segments_written_before_frames_carried_offsets_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let tdir = dir.path().join("events");
    fs::create_dir_all(&tdir).unwrap();
    // The older frame: a header with rows and producer only.
    let mut bytes = Vec::new();
    for i in 0..3u64 {
        let body = encode_body(&record(i as i64 * 10, 2, "a/1", i + 1)).unwrap();
        let header = format!(
            r#"{{"producer":{{"producer":"a/1","last_seq":{}}},"rows":2}}"#,
            i + 1
        );
        let mut payload = (header.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(header.as_bytes());
        payload.extend_from_slice(&body.ipc);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
    }
    fs::write(segment_path(&tdir, 100), bytes).unwrap();
    let log = LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap();
    assert_eq!(log.end_offset(Topic::Events), 103);
    assert_eq!(log.producer_seq(Topic::Events, "a/1"), Some(3));
    let read = read_all(&log, "x").await;
    assert_eq!(
        read.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![100, 101, 102]
    );
    assert_eq!(first_value(&read[2]), 20);
    assert_eq!(
        log.append(Topic::Events, vec![record(0, 1, "a/1", 4)])
            .await
            .unwrap(),
        vec![103]
    );
    let mut c = log.consumer(Topic::Events, "y").await.unwrap();
    c.seek(102);
    let got = c.poll(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.offset).collect::<Vec<_>>(),
        vec![102, 103]
    );
}

#[tokio::test]
async fn the_index_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalLogConfig {
        segment_bytes: 8 << 20,
        ..Default::default()
    };
    let log = LocalLog::open(dir.path(), config.clone()).unwrap();
    fill(&log, 0, 2000).await;
    let (entries, len) = {
        let state = log.shared.topics[&Topic::Events].read().unwrap();
        let seg = state.segments.last().unwrap();
        (seg.index.as_ref().unwrap().len() as u64, seg.len)
    };
    assert!(
        entries <= len / INDEX_STRIDE + 1,
        "{entries} entries for {len} bytes"
    );
    // Reads from any offset land exactly, through the sparse index.
    let mut c = log.consumer(Topic::Events, "x").await.unwrap();
    for at in [0u64, 1, 777, 1500, 1999] {
        c.seek(at);
        let got = c.poll(1, Duration::from_millis(10)).await.unwrap();
        assert_eq!(got[0].offset, at);
        assert_eq!(first_value(&got[0]), at as i64 * 10);
    }
}

mod model {
    //! The log against a model: a list of the records each append was
    //! acknowledged for. Through appends of groups of any size across
    //! segment boundaries, reopens, torn last writes and consumers reading
    //! from anywhere, the log holds exactly the model's records at the
    //! model's offsets; a torn last write loses only records of that write.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// One append call (one group commit) of this many records.
        Append(usize),
        Reopen,
        /// A crash during the last write: this fraction of its bytes are
        /// cut off the newest segment before the log reopens.
        TearLastWrite(f64),
        /// A consumer reads from this fraction of the offsets on.
        Read(f64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1usize..5).prop_map(Op::Append),
            1 => Just(Op::Reopen),
            1 => (0.01f64..1.0).prop_map(Op::TearLastWrite),
            2 => (0.0f64..1.0).prop_map(Op::Read),
        ]
    }

    /// The value a record carries: unique, so a misplaced record shows.
    fn value(n: u64) -> i64 {
        n as i64 * 7 + 3
    }

    async fn check(log: &LocalLog, model: &[Option<i64>], from: u64) -> Result<(), TestCaseError> {
        let mut c = log.consumer(Topic::Events, "model").await.unwrap();
        c.seek(from);
        let mut got = Vec::new();
        loop {
            let batch = c.poll(7, Duration::from_millis(5)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch.into_iter().map(|d| (d.offset, first_value(&d))));
        }
        let expected: Vec<(u64, i64)> = model
            .iter()
            .enumerate()
            .skip(from as usize)
            .filter_map(|(o, v)| v.map(|v| (o as u64, v)))
            .collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn the_log_matches_its_model_through_crashes(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let config = LocalLogConfig { segment_bytes: 4096, ..Default::default() };
                let mut log = LocalLog::open(dir.path(), config.clone()).unwrap();
                // Offset → value of each record the log must hold (None:
                // an offset a torn write took).
                let mut model: Vec<Option<i64>> = Vec::new();
                let mut counter = 0u64;
                // The offsets of the last append, while nothing came after it.
                let mut last_write: Option<std::ops::Range<u64>> = None;
                for op in ops {
                    match op {
                        Op::Append(n) => {
                            let records: Vec<Record> = (0..n)
                                .map(|_| {
                                    counter += 1;
                                    Record { batch: batch(value(counter), 3), producer: None }
                                })
                                .collect();
                            let offsets = log.append(Topic::Events, records).await.unwrap();
                            let first = model.len() as u64;
                            prop_assert_eq!(&offsets, &(first..first + n as u64).collect::<Vec<_>>());
                            for i in 0..n as u64 {
                                model.push(Some(value(counter - n as u64 + 1 + i)));
                            }
                            last_write = Some(first..first + n as u64);
                        }
                        Op::Reopen => {
                            drop(log);
                            log = LocalLog::open(dir.path(), config.clone()).unwrap();
                            prop_assert_eq!(log.end_offset(Topic::Events), model.len() as u64);
                            last_write = None;
                        }
                        Op::TearLastWrite(frac) => {
                            let Some(write) = last_write.take() else { continue };
                            drop(log);
                            // The bytes of the last write are at the end of
                            // the newest segment (a write that rolled a segment
                            // started a new one).
                            let newest = segments(dir.path()).pop().unwrap();
                            let len = fs::metadata(&newest).unwrap().len();
                            let positions = frame_positions(&newest);
                            let in_segment = (write.end - write.start).min(positions.len() as u64) as usize;
                            let start = positions[positions.len() - in_segment];
                            let cut = ((len - start) as f64 * frac).ceil() as u64;
                            let f = OpenOptions::new().write(true).open(&newest).unwrap();
                            f.set_len(len - cut.max(1)).unwrap();
                            drop(f);
                            log = LocalLog::open(dir.path(), config.clone()).unwrap();
                            let end = log.end_offset(Topic::Events);
                            // Some prefix of the write survives, nothing before it is lost.
                            prop_assert!(end >= write.start && end < write.end, "end {} after tearing {:?}", end, write);
                            model.truncate(end as usize);
                        }
                        Op::Read(frac) => {
                            let from = (model.len() as f64 * frac) as u64;
                            check(&log, &model, from).await?;
                        }
                    }
                }
                check(&log, &model, 0).await?;
                drop(log);
                let log = LocalLog::open(dir.path(), config).unwrap();
                prop_assert_eq!(log.end_offset(Topic::Events), model.len() as u64);
                check(&log, &model, 0).await
            })?;
        }
    }
}
