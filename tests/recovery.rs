//! The central service recovers from failures of its disk and its own
//! components without losing acknowledged events, and says so: a damaged
//! event log record costs only that record, a full disk pauses the history
//! and the detector (visibly) until space returns, a failing component
//! stops the service with exit status 70, and two services never share a
//! data directory.

mod common;

use common::{batch, open_on};
use otwatch_eventlog::EventLog;
use otwatch_runtime::{history_dir, ServerConfig, Service};
use otwatch_testkit::Tmpfs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(data_dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure_loopback: true,
        outputs: Vec::new(),
        ..ServerConfig::default()
    };
    config.history.flush_interval = Duration::from_millis(200);
    config
}

/// Sends events `seqs` of agent plant-a/gw-1 in batches of 10 and checks
/// every ack.
async fn send(service: &Service, seqs: std::ops::RangeInclusive<u64>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = open_on(channel, Some("plant-a"), "gw-1").await.unwrap();
    stream.acks.message().await.unwrap().unwrap();
    let (first, last) = (*seqs.start(), *seqs.end());
    let mut at = first;
    while at <= last {
        let to = (at + 9).min(last);
        let ack = stream
            .send(batch("plant-a", "gw-1", at..=to))
            .await
            .unwrap();
        assert_eq!(ack.durable_seq, to);
        at = to + 1;
    }
}

async fn stored_seqs(data_dir: &Path) -> Vec<u64> {
    let batches = otwatch_history::query(
        &history_dir(data_dir),
        "SELECT seq FROM events ORDER BY seq",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .unwrap();
        out.extend(col.values().iter().copied());
    }
    out
}

/// Byte positions of the records of a segment file (frame: len u32 LE,
/// crc u32 LE, payload).
fn record_positions(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    while at + 8 <= bytes.len() {
        out.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    out
}

fn newest_segment(data_dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log/events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("seg".as_ref()))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test]
async fn a_damaged_log_record_costs_that_record_only_and_later_events_reach_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let service = Service::start(config(&data)).await.unwrap();
    send(&service, 1..=100).await;
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    service.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(stored_seqs(&data).await.len(), 100);

    // A bit flips in the fourth record (events 31..=40), in the middle of
    // acknowledged data.
    let seg = newest_segment(&data);
    let records = record_positions(&seg);
    assert_eq!(records.len(), 10);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[records[3] + 60] ^= 0x10;
    std::fs::write(&seg, bytes).unwrap();

    let service = Service::start(config(&data)).await.unwrap();
    assert_eq!(
        service
            .log
            .damage()
            .records_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    send(&service, 101..=200).await;
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    service.stop(Duration::from_secs(10)).await.unwrap();

    let seqs = stored_seqs(&data).await;
    let expected: Vec<u64> = (1..=30).chain(41..=200).collect();
    // The history already held 31..=40 before the damage: it keeps them.
    let with_earlier: Vec<u64> = (1..=200).collect();
    assert!(
        seqs == with_earlier || seqs == expected,
        "history holds {} events: {:?}..",
        seqs.len(),
        &seqs[..seqs.len().min(20)]
    );
    assert!(
        (101..=200).all(|s| seqs.binary_search(&s).is_ok()),
        "every event acknowledged after the restart is queryable"
    );
    let quarantine = data.join("log/events/quarantine");
    assert_eq!(std::fs::read_dir(quarantine).unwrap().count(), 1);
}

#[tokio::test]
async fn a_lost_newest_log_segment_does_not_hide_later_events_from_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let service = Service::start(config(&data)).await.unwrap();
    send(&service, 1..=50).await;
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    service.stop(Duration::from_secs(10)).await.unwrap();
    // The log is restored from an older copy: its only segment is gone,
    // while the history and the detector already hold offsets 0..5.
    std::fs::remove_file(newest_segment(&data)).unwrap();
    let service = Service::start(config(&data)).await.unwrap();
    // The agent resends what the collector no longer knows, then more.
    send(&service, 1..=80).await;
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    service.stop(Duration::from_secs(10)).await.unwrap();
    let seqs = stored_seqs(&data).await;
    assert!(
        (51..=80).all(|s| seqs.contains(&s)),
        "events after the loss are queryable: {} stored",
        seqs.len()
    );
}

#[tokio::test]
async fn a_full_disk_pauses_the_history_and_the_detector_visibly_and_they_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("small-disk");
    let Some(mount) = Tmpfs::mount(&disk, "4m") else {
        eprintln!("skipped: mounting a tmpfs is not permitted here");
        return;
    };
    // The history and the detector's checkpoint live on the small disk,
    // the event log does not: ingest goes on while they cannot write.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(disk.join("history")).unwrap();
    std::fs::create_dir_all(disk.join("detector")).unwrap();
    std::os::unix::fs::symlink(disk.join("history"), data.join("history")).unwrap();
    std::os::unix::fs::symlink(disk.join("detector"), data.join("detector")).unwrap();

    let service = Service::start(config(&data)).await.unwrap();
    send(&service, 1..=50).await;
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    let filler = mount.fill();

    send(&service, 51..=300).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sick = loop {
        let probe = service.health.liveness(service.log.as_ref());
        if !probe.ok
            && probe.body.contains("history-events: retrying")
            && probe.body.contains("detector: retrying")
        {
            break probe.body;
        }
        assert!(
            Instant::now() < deadline,
            "the failing disk never showed in /healthz:\n{}",
            probe.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        sick.contains("No space left on device"),
        "the cause is named:\n{sick}"
    );
    assert!(service.log.end_offset(otwatch_eventlog::Topic::Events) >= 30);

    // Space comes back: no restart needed.
    std::fs::remove_file(filler).unwrap();
    assert!(
        service.wait_caught_up(Duration::from_secs(90)).await,
        "the history and the detector did not resume"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = service.health.liveness(service.log.as_ref());
        if probe.ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still unhealthy:\n{}",
            probe.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored_seqs(&data).await, (1..=300).collect::<Vec<u64>>());
    service.stop(Duration::from_secs(10)).await.unwrap();
}

fn otwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otwatch"))
}

#[test]
fn a_failing_component_stops_serve_with_status_70_and_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let out = otwatch()
        .args([
            "serve",
            "--insecure-loopback",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("OTWATCH_FAIL_COMPONENT", "history-events")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(
        err.contains("component history-events failed")
            && err.contains("failure injected by OTWATCH_FAIL_COMPONENT"),
        "{err}"
    );
}

#[test]
fn two_services_never_share_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = otwatch()
        .args([
            "serve",
            "--insecure-loopback",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("LOCK").exists() {
        assert!(Instant::now() < deadline, "the first service never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = otwatch()
        .args([
            "serve",
            "--insecure-loopback",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("in use by another process") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_stops_serve_promptly_while_an_agent_streams() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = otwatch()
        .args(["serve", "--insecure-loopback", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(Instant::now() < deadline, "serve never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stream = open_on(channel, Some("plant-a"), "gw-1").await.unwrap();
    stream.acks.message().await.unwrap().unwrap();
    let ack = stream.send(batch("plant-a", "gw-1", 1..=10)).await.unwrap();
    assert_eq!(ack.durable_seq, 10);

    let asked = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(60) {
            let _ = serve.kill();
            panic!("serve was still running 60 s after SIGTERM with an agent connected");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    println!("serve stopped {:?} after SIGTERM", asked.elapsed());
    // The agent's stream ended (UNAVAILABLE, or closed with the process).
    assert!(!matches!(stream.acks.message().await, Ok(Some(_))));
}
