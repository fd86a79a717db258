//! The agent's `file` source across log rotation, end to end: a real agent
//! follows a real file that a writer thread fills with numbered lines at
//! about 1,000 a second while the file is rotated (copytruncate, rename and
//! create, delete and recreate), and every line must be in the agent's queue
//! exactly once and in order. Then the same after rotations done while the
//! agent was stopped.
//!
//! `OTWATCH_ROTATION_LINES` (default 3000), `OTWATCH_ROTATION_RATE` (lines
//! per second, default 1000) and `OTWATCH_ROTATION_EVERY` (lines between
//! rotations, default 700) scale the writer; each test prints the rate it
//! sustained. Rotations must stay a few poll intervals apart: a file that
//! lives at the path for less than a poll may never be seen (see the
//! source's documentation).

use otwatch_agent::config::AgentConfig;
use otwatch_agent::queue::{DiskQueue, QueueConfig};
use otwatch_agent::Agent;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Line `n`: an event whose value is `n`.
fn line(n: u64) -> String {
    format!(
        "{{\"asset\":\"line1/press-01\",\"kind\":\"CYCLE\",\"name\":\"cycle\",\"ts_ns\":{},\"value\":{n}}}\n",
        now_ns()
    )
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn write_lines(path: &Path, numbers: impl IntoIterator<Item = u64>) {
    let mut file = open_append(path);
    for n in numbers {
        file.write_all(line(n).as_bytes()).unwrap();
    }
}

fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// Shifts `<path>.1` to `<path>.2` (and so on), as logrotate does first.
fn shift_rotated(path: &Path) {
    for k in (1..4).rev() {
        let _ = std::fs::rename(rotated(path, k), rotated(path, k + 1));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rotation {
    /// logrotate `copytruncate`: copy to `.1`, truncate the file in place.
    CopyTruncate,
    /// logrotate `create`: rename to `.1`; the writer reopens the path a
    /// few lines later (its postrotate signal).
    RenameCreate,
    /// The file is deleted; the writer recreates it a few lines later.
    DeleteRecreate,
}

/// Lines the writer still writes to the old file after a rename or delete.
const LATE_LINES: u64 = 20;

/// Writes lines 1..=`n` to `path` at `rate` lines/s, rotating it before
/// every `every`-th line. Each line is one `write` on an `O_APPEND` file.
fn write_rotating(path: PathBuf, n: u64, rate: u64, every: u64, how: Rotation) {
    let mut file = open_append(&path);
    let mut reopen_at = None;
    let start = Instant::now();
    for i in 1..=n {
        if i > 1 && (i - 1) % every == 0 {
            shift_rotated(&path);
            match how {
                Rotation::CopyTruncate => {
                    std::fs::copy(&path, rotated(&path, 1)).unwrap();
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                }
                Rotation::RenameCreate => {
                    std::fs::rename(&path, rotated(&path, 1)).unwrap();
                    reopen_at = Some(i + LATE_LINES);
                }
                Rotation::DeleteRecreate => {
                    std::fs::remove_file(&path).unwrap();
                    reopen_at = Some(i + LATE_LINES);
                }
            }
        }
        if reopen_at == Some(i) {
            file = open_append(&path);
            reopen_at = None;
        }
        file.write_all(line(i).as_bytes()).unwrap();
        let due = start + Duration::from_micros(i * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn agent_config(dir: &Path, path: &Path) -> AgentConfig {
    // The agent's logs, with RUST_LOG=info (say), for a failure's story.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {:?}\n\
         [collector]\nurl = \"http://127.0.0.1:9\"\n\
         [[sources]]\ntype = \"file\"\npath = {:?}\npoll_interval = \"{}ms\"\n",
        dir.join("data").display().to_string(),
        path.display().to_string(),
        POLL.as_millis()
    );
    AgentConfig::parse(&text, "test").unwrap()
}

/// The values of every event in the agent's queue, in sequence order.
fn queued_values(dir: &Path) -> Vec<u64> {
    let queue = DiskQueue::open(dir.join("data").join("queue"), QueueConfig::default()).unwrap();
    let mut values = Vec::new();
    let mut from = 1;
    loop {
        let events = queue.read(from, 1000).unwrap();
        let Some(last) = events.last() else {
            return values;
        };
        from = last.seq + 1;
        values.extend(events.iter().map(|e| e.value.unwrap() as u64));
    }
}

/// Waits (bounded) until the agent has taken `n` events, then a few polls
/// more so that anything read twice would show, and stops it. Returns when
/// the `n`th event was taken, if it was: a lost line means never, and the
/// queue's contents then say which.
async fn take_until(agent: Agent, n: u64) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut taken = None;
    while Instant::now() < deadline {
        if agent.last_seq() >= n {
            taken = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(4 * POLL).await;
    agent.stop(Duration::from_millis(10)).await.unwrap();
    taken
}

/// Every number of `expected` once, in order, and nothing else.
fn assert_exactly_once_in_order(values: &[u64], expected: impl IntoIterator<Item = u64>) {
    let expected: Vec<u64> = expected.into_iter().collect();
    if values == expected {
        return;
    }
    let mut seen = std::collections::HashMap::new();
    for v in values {
        *seen.entry(*v).or_insert(0u32) += 1;
    }
    let missing: Vec<_> = expected.iter().filter(|v| !seen.contains_key(v)).collect();
    let repeated = seen.values().filter(|&&c| c > 1).count();
    let first_missing: Vec<_> = missing.iter().take(10).collect();
    panic!(
        "{} lines queued for {} written: {} missing (first: {first_missing:?}), {repeated} repeated, out of order: {}",
        values.len(),
        expected.len(),
        missing.len(),
        values.windows(2).any(|w| w[0] >= w[1])
    );
}

/// Writes with rotations while a real agent follows the file.
async fn rotation_while_writing(how: Rotation) {
    let n = env_or("OTWATCH_ROTATION_LINES", 3000);
    let rate = env_or("OTWATCH_ROTATION_RATE", 1000);
    // About 0.7 s apart at the default rate: almost three polls.
    let every = env_or("OTWATCH_ROTATION_EVERY", 700);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let agent = Agent::start(agent_config(dir.path(), &path)).unwrap();
    let start = Instant::now();
    let writer = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || write_rotating(path, n, rate, every, how))
    };
    writer.await.unwrap();
    let written = start.elapsed();
    let all_taken = take_until(agent, n).await;
    let values = queued_values(dir.path());
    eprintln!(
        "{how:?}: {n} lines written in {:.2} s ({:.0} lines/s) with {} rotations; \
         {} queued, all {n} taken {} after the first write",
        written.as_secs_f64(),
        n as f64 / written.as_secs_f64(),
        (n - 1) / every,
        values.len(),
        all_taken.map_or("never".to_string(), |t| format!(
            "{:.2} s",
            (t - start).as_secs_f64()
        )),
    );
    assert_exactly_once_in_order(&values, 1..=n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_while_writing_loses_and_repeats_no_line() {
    rotation_while_writing(Rotation::CopyTruncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_create_while_writing_loses_and_repeats_no_line() {
    rotation_while_writing(Rotation::RenameCreate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_while_writing_loses_and_repeats_no_line() {
    rotation_while_writing(Rotation::DeleteRecreate).await;
}

/// Starts an agent on `path`, takes `n` events, stops it.
async fn run_agent_to(dir: &Path, path: &Path, n: u64) {
    let agent = Agent::start(agent_config(dir, path)).unwrap();
    take_until(agent, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_recreated_on_the_same_inode_while_stopped_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    write_lines(&path, 1..=100);
    let inode = std::fs::metadata(&path).unwrap().ino();
    run_agent_to(dir.path(), &path, 100).await;

    // Deleted and created again; the filesystem usually gives the new file
    // the inode just freed. Files that got another inode are kept aside
    // (so their inodes are taken) and the creation retried.
    std::fs::remove_file(&path).unwrap();
    let mut reused = false;
    for attempt in 0..64 {
        File::create(&path).unwrap();
        if std::fs::metadata(&path).unwrap().ino() == inode {
            reused = true;
            break;
        }
        std::fs::rename(&path, dir.path().join(format!("aside-{attempt}"))).unwrap();
    }
    if !reused {
        eprintln!("note: this filesystem did not reuse inode {inode}; test skipped");
        return;
    }
    // Longer than what was read of the old file: an inode-only checkpoint
    // would resume in the middle of it.
    write_lines(&path, 101..=400);
    run_agent_to(dir.path(), &path, 400).await;
    assert_exactly_once_in_order(&queued_values(dir.path()), 1..=400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_while_stopped_is_finished_before_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    write_lines(&path, 1..=100);
    run_agent_to(dir.path(), &path, 100).await;
    write_lines(&path, 101..=150);
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    write_lines(&path, 151..=250);
    run_agent_to(dir.path(), &path, 250).await;
    assert_exactly_once_in_order(&queued_values(dir.path()), 1..=250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_and_truncated_while_stopped_is_finished_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    write_lines(&path, 1..=100);
    run_agent_to(dir.path(), &path, 100).await;
    write_lines(&path, 101..=150);
    std::fs::copy(&path, rotated(&path, 1)).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_lines(&path, 151..=250);
    run_agent_to(dir.path(), &path, 250).await;
    assert_exactly_once_in_order(&queued_values(dir.path()), 1..=250);
}
