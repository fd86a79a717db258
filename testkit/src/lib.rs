//! Helpers the test suites of several crates share, so each is written
//! once: reading back what the event log holds, a small disk (a tmpfs)
//! a test can fill to see how the code under test meets `ENOSPC`, and
//! whether the real peers a test talks to are installed.
//!
//! Only for tests: nothing here is part of the product.

use otwatch_eventlog::{EventLog, Topic};
use otwatch_proto::ControllerEvent;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Appends events of one agent (stamped received at `received_ns`) to the
/// `events` topic, as the collector would.
pub async fn append_events(
    log: &dyn EventLog,
    site: &str,
    agent: &str,
    events: &[ControllerEvent],
    received_ns: i64,
) {
    let batch = otwatch_proto::arrow::events_to_batch(site, agent, events, received_ns).unwrap();
    append(log, Topic::Events, batch).await;
}

/// Appends alerts to the `alerts` topic, as the detector would.
pub async fn append_alerts(log: &dyn EventLog, alerts: &[otwatch_proto::Alert]) {
    let batch = otwatch_proto::arrow::alerts_to_batch(alerts).unwrap();
    append(log, Topic::Alerts, batch).await;
}

async fn append(log: &dyn EventLog, topic: Topic, batch: arrow_array::RecordBatch) {
    log.append(
        topic,
        vec![otwatch_eventlog::Record {
            batch,
            producer: None,
        }],
    )
    .await
    .unwrap();
}

/// Every event in the log's `events` topic, in log order.
pub async fn log_events(log: &dyn EventLog) -> Vec<ControllerEvent> {
    let mut consumer = log.consumer(Topic::Events, "testkit-check").await.unwrap();
    let mut out = Vec::new();
    loop {
        let got = consumer
            .poll(1000, Duration::from_millis(10))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        for d in got {
            out.extend(otwatch_proto::arrow::batch_to_events(&d.batch).unwrap());
        }
    }
}

/// Every `(site/agent, seq)` in the log's `events` topic, in log order.
pub async fn log_seqs(log: &dyn EventLog) -> Vec<(String, u64)> {
    log_events(log)
        .await
        .into_iter()
        .map(|e| (format!("{}/{}", e.site, e.agent), e.seq))
        .collect()
}

/// A tmpfs mounted on a directory, unmounted (lazily) when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `4m`, `2g`)
    /// on `dir`, creating it. `None`, with a note on stderr, where this
    /// machine does not let the test mount (not root, or no mount
    /// namespace): the caller skips what needs it.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the file system with one file until a write fails, and
    /// returns it: remove it to give the space back.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        // What is left is less than a chunk: take it too.
        while file.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Whether the Python modules a test's peer needs are installed. When they
/// are not, the test is skipped with a note, except under `CI=true`, where
/// a missing peer fails the test: `scripts/test.sh` installs them, so a CI
/// run without them is broken, not green.
pub fn python_has(modules: &[&str]) -> bool {
    let imports = modules.join(", ");
    let found = Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with {imports} is missing under CI=true: scripts/test.sh installs it"
        );
        eprintln!("skipped: python3 with {imports} is not installed (scripts/test.sh installs it)");
    }
    found
}

/// Whether a program a test starts as its peer is installed at `path`.
/// Missing, the test is skipped with a note, except under `CI=true`, where
/// `scripts/test.sh` installs every peer and a missing one is a failure.
pub fn peer_installed(what: &str, path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} ({path}) is missing under CI=true: scripts/test.sh installs it"
    );
    eprintln!("skipped: {what} ({path}) is not installed; scripts/test.sh installs it");
    false
}
