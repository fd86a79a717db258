//! What one message can make the collector allocate, measured with a
//! counting allocator around a real collector on loopback: a small gzip
//! message that inflates to a flood of empty events is refused before it is
//! decoded, and a message that inflates past `max_message_bytes` is refused
//! with its reason, which the agent sees.

mod common;

use common::{channel, open_log, send_raw, Server};
use otwatch_collector::CollectorConfig;
use otwatch_proto::limits::Limits;
use otwatch_proto::EventBatch;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;

/// The system allocator, counting the bytes allocated now and at most.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the counter sees the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MAX_MESSAGE_BYTES: usize = 2 << 20;

/// An encoded batch of `plant-a`/`gw-1` followed by empty events (two bytes
/// each on the wire) up to about `len` bytes, and how many events it holds.
fn empty_events(len: usize) -> (Vec<u8>, usize) {
    use tonic_prost::prost::Message;
    let mut bytes = EventBatch {
        site: common::SITE.into(),
        agent: common::AGENT.into(),
        events: vec![],
        queue_backlog: 0,
    }
    .encode_to_vec();
    let count = (len - bytes.len()) / 2;
    bytes.extend(std::iter::repeat_n([0x1a, 0x00], count).flatten());
    (bytes, count)
}

async fn start(dir: &std::path::Path) -> Server {
    let config = CollectorConfig {
        limits: Limits {
            max_message_bytes: MAX_MESSAGE_BYTES,
            ..Limits::default()
        },
        ..CollectorConfig::default()
    };
    Server::start(open_log(dir), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_flood_of_empty_events_is_refused_before_it_is_decoded() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server, None, None).await.unwrap();
    // Just under the limit once decompressed: about a million events.
    let (bomb, events) = empty_events(MAX_MESSAGE_BYTES - 1024);

    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let status = send_raw(channel, bomb, true).await.unwrap_err();
    let peak = PEAK.load(Ordering::Relaxed) - before;

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        format!("batch has {events} events, above the limit max_events_per_batch = 10000")
    );
    // The message itself, once on each side (the client's encoding buffer
    // and the collector's decompression buffer), and some slack; decoding
    // the events would have taken about a hundred times the message.
    println!(
        "peak allocation while the collector refused a {MAX_MESSAGE_BYTES}-byte bomb of {events} events: {peak} bytes"
    );
    assert!(
        peak < 8 * MAX_MESSAGE_BYTES,
        "{peak} bytes allocated for one refused message of at most {MAX_MESSAGE_BYTES} bytes"
    );
    assert_eq!(server.metrics.batches_invalid.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_inflates_past_the_limit_is_refused_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server, None, None).await.unwrap();
    let (bomb, _) = empty_events(MAX_MESSAGE_BYTES + 4096);

    let status = send_raw(channel, bomb, true).await.unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("size limit"),
        "{}",
        status.message()
    );
    assert_eq!(server.metrics.batches_invalid.load(Ordering::Relaxed), 1);
}

/// Not a test: measures a collector started by hand, e.g.
/// `otwatch serve --insecure-loopback --listen 127.0.0.1:4317`. Sends the
/// bomb (empty events up to `OTWATCH_BOMB_BYTES`, default 8 MiB − 1 KiB,
/// gzip) on `OTWATCH_BOMB_STREAMS` (6) connections at once to
/// `OTWATCH_BOMB_ADDR` and prints each answer; read the collector's peak
/// memory from `VmHWM` in `/proc/PID/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a collector started by hand"]
async fn bomb_a_running_collector() {
    let env = |key: &str| std::env::var(key).ok();
    let addr = env("OTWATCH_BOMB_ADDR").expect("OTWATCH_BOMB_ADDR");
    let streams: usize = env("OTWATCH_BOMB_STREAMS").map_or(6, |s| s.parse().unwrap());
    let bytes: usize = env("OTWATCH_BOMB_BYTES").map_or((8 << 20) - 1024, |s| s.parse().unwrap());
    let target = common::Target {
        addr: addr.parse().unwrap(),
        tls: false,
    };
    let (bomb, events) = empty_events(bytes);
    let started = std::time::Instant::now();
    let answers: Vec<_> = (0..streams)
        .map(|_| {
            let bomb = bomb.clone();
            tokio::spawn(async move {
                let channel = channel(target, None, None).await.unwrap();
                send_raw(channel, bomb, true).await
            })
        })
        .collect();
    for answer in answers {
        println!("{:?}", answer.await.unwrap());
    }
    println!(
        "{streams} streams, each one message of {events} empty events ({bytes} bytes decompressed), answered in {:?}",
        started.elapsed()
    );
}
