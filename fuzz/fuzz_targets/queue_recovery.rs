//! An arbitrary queue directory (segment files, maybe an `acked` file) opened
//! by `DiskQueue::open`, as the agent does at start-up after a crash or on a
//! damaged disk.
//!
//! The input describes the directory; every byte string is a valid input
//! (reads past its end give zeros), and a real queue segment is easy to wrap
//! as a seed:
//!
//! ```text
//! u8      flags: bit 0 when_full = drop_oldest; bits 1-2 events to append - 1;
//!         bits 3-4 acked file: 0 none, 1 u8, 2 u64 LE, 3 text (u8 len + bytes)
//! ...     the acked value, as bits 3-4 say
//! u16 LE  segment_bytes
//! u32 LE  max_bytes
//! then segments until the input ends (at most MAX_SEGMENTS), each:
//!   u8    bits 0-1 name: 0 first seq right after the previous segment (1 for
//!         the first), 1 a gap of u8 + 1 after it, 2 first seq u64 LE,
//!         3 any name: u8 len + bytes, then ".q";
//!         bit 2: framed records (else raw bytes: u16 LE len + bytes)
//!   records: u8 count, each:
//!     u8  bit 0 end of an append; bits 1-2 body: 0 the event at this
//!         position, 1 an event claiming seq u64 LE, 2 raw (u8 len + bytes),
//!         3 the event at this position with asset u8 len + bytes;
//!         bits 3-4 damage: 0 none, 1 length word u32 LE, 2 CRC u32 LE,
//!         3 body cut short by u8 bytes
//! ```
//!
//! Checks: opening never panics, hangs or allocates from a corrupt length
//! word; it returns an error or a queue. An opened queue reads without
//! panicking, and what it reads has strictly increasing sequence numbers
//! between the acked one and the next one. Events appended to it get the
//! next sequence numbers and are still there, whole, after reopening.
#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use otwatch_agent::queue::{DiskQueue, QueueConfig, QueueError, WhenFull};
use otwatch_proto::{ControllerEvent, EventKind};
use prost::Message;
use std::path::Path;

const END_BIT: u32 = 1 << 31;
const MAX_SEGMENTS: usize = 6;

/// Reads the input front to back; past its end every read gives zeros.
struct Input<'a>(Unstructured<'a>);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        self.0.bytes(n).unwrap_or(&[])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn event(seq: u64, asset: &str, value: Option<f64>) -> ControllerEvent {
    ControllerEvent {
        seq,
        ts_ns: 1_800_000_000_000_000_000,
        asset: asset.into(),
        kind: EventKind::Cycle as i32,
        name: "cycle".into(),
        value,
        ..Default::default()
    }
}

struct Setup {
    config: QueueConfig,
    appended: usize,
}

/// Writes the directory the input describes.
fn write_dir(dir: &Path, data: &[u8]) -> Setup {
    let mut input = Input(Unstructured::new(data));
    let flags = input.u8();
    let acked = match flags >> 3 & 3 {
        0 => None,
        1 => Some(format!("{}\n", input.u8()).into_bytes()),
        2 => Some(format!("{}\n", input.u64()).into_bytes()),
        _ => {
            let n = input.u8() as usize;
            Some(input.bytes(n).to_vec())
        }
    };
    if let Some(acked) = acked {
        std::fs::write(dir.join("acked"), acked).unwrap();
    }
    let segment_bytes = input.u16() as u64;
    let max_bytes = input.u32() as u64;
    let mut next_first = 1u64;
    for _ in 0..MAX_SEGMENTS {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let (first, name) = match kind & 3 {
            0 => (next_first, None),
            1 => (next_first.saturating_add(input.u8() as u64 + 1), None),
            2 => (input.u64(), None),
            _ => {
                let n = input.u8() as usize;
                let name = String::from_utf8_lossy(input.bytes(n)).into_owned();
                (next_first, Some(format!("{name}.q")))
            }
        };
        let mut bytes = Vec::new();
        let mut count = 0u64;
        if kind & 4 == 0 {
            let n = input.u16() as usize;
            bytes.extend_from_slice(input.bytes(n));
        } else {
            for _ in 0..input.u8() {
                let seq = first.saturating_add(count);
                let flags = input.u8();
                let body = match flags >> 1 & 3 {
                    0 => event(seq, "a", Some(seq as f64)).encode_to_vec(),
                    1 => event(input.u64(), "a", None).encode_to_vec(),
                    2 => {
                        let n = input.u8() as usize;
                        input.bytes(n).to_vec()
                    }
                    _ => {
                        let n = input.u8() as usize;
                        let asset = String::from_utf8_lossy(input.bytes(n)).into_owned();
                        event(seq, &asset, None).encode_to_vec()
                    }
                };
                let mut len = body.len() as u32 | if flags & 1 != 0 { END_BIT } else { 0 };
                let mut crc = crc32c(&body);
                let mut keep = body.len();
                match flags >> 3 & 3 {
                    0 => {}
                    1 => len = input.u32(),
                    2 => crc = input.u32(),
                    _ => keep = keep.saturating_sub(input.u8() as usize),
                }
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(&crc.to_le_bytes());
                bytes.extend_from_slice(&body[..keep]);
                count += 1;
            }
        }
        let name = name.unwrap_or_else(|| format!("{first:020}.q"));
        if name.contains(['/', '\0']) || name.len() > 255 {
            continue;
        }
        std::fs::write(dir.join(name), &bytes).unwrap();
        next_first = first.saturating_add(count.max(1));
    }
    Setup {
        config: QueueConfig {
            max_bytes,
            when_full: if flags & 1 != 0 {
                WhenFull::DropOldest
            } else {
                WhenFull::Block
            },
            segment_bytes,
            ..QueueConfig::default()
        },
        appended: (flags >> 1 & 3) as usize + 1,
    }
}

/// CRC32C (Castagnoli), bitwise: the fuzz crate computes it on its own
/// rather than trusting the code under test.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn tempdir() -> tempfile::TempDir {
    // tmpfs when there is one: the queue fsyncs on every append.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn check_read(q: &DiskQueue) {
    match q.read(0, 1_000_000) {
        Ok(events) => {
            let mut previous = q.acked();
            for e in &events {
                assert!(
                    e.seq > previous,
                    "seq {} read after {previous} (acked {})",
                    e.seq,
                    q.acked()
                );
                assert!(
                    e.seq < q.next_seq(),
                    "seq {} read, next seq {}",
                    e.seq,
                    q.next_seq()
                );
                previous = e.seq;
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempdir();
    let Setup { config, appended } = write_dir(dir.path(), data);
    let mut q = match DiskQueue::open(dir.path(), config.clone()) {
        Ok(q) => q,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let next = q.next_seq();
    assert!(next >= 1, "sequence numbers start at 1, next seq is {next}");
    check_read(&q);

    let n = appended;
    let mut events: Vec<_> = (0..n).map(|i| event(0, "fuzz", Some(i as f64))).collect();
    let last = match q.append(&mut events) {
        Ok(last) => last,
        Err(QueueError::Full { .. }) => return,
        Err(e) => panic!("append to an opened queue failed: {e}"),
    };
    assert_eq!(last, next + n as u64 - 1);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, next + i as u64);
    }
    check_read(&q);
    drop(q);

    let q = DiskQueue::open(dir.path(), config).expect("a queue reopens after an append");
    assert_eq!(q.next_seq(), last + 1);
    let got = q
        .read(next, n)
        .expect("the appended events read back after reopening");
    assert_eq!(got, events, "the appended events survive a reopen");
    check_read(&q);
});
