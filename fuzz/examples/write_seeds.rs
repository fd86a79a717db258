//! Writes the seed corpus of both fuzz targets from real data: an encoded
//! `EventBatch` that passes the default limits, and queue directories written
//! by `DiskQueue::append`, wrapped in the `queue_recovery` input format.
//!
//! `cargo run --example write_seeds` (from `fuzz/`) writes
//! `corpus/<target>/seed-*`.

use otwatch_agent::queue::{DiskQueue, QueueConfig, WhenFull};
use otwatch_proto::{ControllerEvent, EventBatch, EventKind};
use prost::Message;
use std::path::Path;

/// The fixed clock of `batch_validation`.
const NOW_NS: i64 = 1_800_000_000_000_000_000;

fn events(first_seq: u64) -> Vec<ControllerEvent> {
    vec![
        ControllerEvent {
            seq: first_seq,
            ts_ns: NOW_NS - 5_000_000_000,
            asset: "line1/press-01".into(),
            kind: EventKind::Cycle as i32,
            name: "cycle".into(),
            value: Some(11_950.0),
            ..Default::default()
        },
        ControllerEvent {
            seq: first_seq + 1,
            ts_ns: NOW_NS - 4_000_000_000,
            asset: "line1/plc-01".into(),
            kind: EventKind::State as i32,
            name: "mode".into(),
            text: Some("STOP".into()),
            ..Default::default()
        },
        ControllerEvent {
            seq: first_seq + 2,
            ts_ns: NOW_NS - 3_000_000_000,
            asset: "line1/plc-01".into(),
            kind: EventKind::Access as i32,
            name: "login".into(),
            attrs: [
                ("peer".to_string(), "10.1.2.3".to_string()),
                ("user".into(), "eng".into()),
            ]
            .into(),
            ..Default::default()
        },
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

/// A queue directory made by real appends: its segments as (first seq,
/// bytes), in sequence order, and its acked seq.
fn real_queue(segment_bytes: u64, appends: &[usize], ack: u64) -> (Vec<(u64, Vec<u8>)>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        max_bytes: 1 << 20,
        when_full: WhenFull::Block,
        segment_bytes,
    };
    let mut q = DiskQueue::open(dir.path(), config).unwrap();
    for &n in appends {
        let mut batch: Vec<_> = events(0).into_iter().cycle().take(n).collect();
        q.append(&mut batch).unwrap();
    }
    q.ack(ack).unwrap();
    drop(q);
    let mut segments: Vec<(u64, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let first = name.strip_suffix(".q")?.parse().ok()?;
            Some((first, std::fs::read(e.path()).unwrap()))
        })
        .collect();
    segments.sort();
    (segments, ack)
}

/// The `queue_recovery` input for a directory (see the target's format).
fn queue_input(
    segments: &[(u64, Vec<u8>)],
    acked: Option<u64>,
    append: u8,
    drop_oldest: bool,
    segment_bytes: u16,
) -> Vec<u8> {
    let mut flags = (append - 1) << 1 | drop_oldest as u8;
    if acked.is_some() {
        flags |= 2 << 3;
    }
    let mut out = vec![flags];
    if let Some(acked) = acked {
        out.extend_from_slice(&acked.to_le_bytes());
    }
    out.extend_from_slice(&segment_bytes.to_le_bytes());
    out.extend_from_slice(&(1u32 << 20).to_le_bytes());
    for (first, bytes) in segments {
        out.push(2); // exact first seq, raw bytes
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let batches = corpus.join("batch_validation");
    let batch = EventBatch {
        site: "plant-lyon".into(),
        agent: "gw-1".into(),
        events: events(1),
        queue_backlog: 0,
    };
    let limits = otwatch_proto::limits::Limits::default();
    limits.check_batch(&batch, NOW_NS).unwrap();
    write(&batches, "seed-three-events", &batch.encode_to_vec());
    let one = EventBatch {
        events: events(41).into_iter().take(1).collect(),
        ..batch.clone()
    };
    limits.check_batch(&one, NOW_NS).unwrap();
    write(&batches, "seed-one-event", &one.encode_to_vec());

    let queues = corpus.join("queue_recovery");
    // One segment holding two appends, nothing acked.
    let (segments, _) = real_queue(1 << 20, &[3, 2], 0);
    write(
        &queues,
        "seed-one-segment",
        &queue_input(&segments, None, 1, false, u16::MAX),
    );
    // Several segments, the first ones acked and reclaimed.
    let (segments, acked) = real_queue(300, &[3, 3, 1, 3, 2, 3], 4);
    assert!(segments.len() > 1);
    write(
        &queues,
        "seed-segments-acked",
        &queue_input(&segments, Some(acked), 2, false, 300),
    );
    // Everything acked: only the empty newest segment is left.
    let (segments, acked) = real_queue(100, &[3, 3], 6);
    write(
        &queues,
        "seed-all-acked",
        &queue_input(&segments, Some(acked), 3, true, 100),
    );
}
