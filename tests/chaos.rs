//! Chaos: an agent streams a file at a fixed rate over mutual TLS while, at
//! random moments, round after round, the agent and the collector (`otwatch
//! serve`) are killed with SIGKILL or frozen with SIGSTOP, a byte of the
//! collector's event log is flipped while it is down, and the collector's
//! disk (a tmpfs, where the test may mount one) is filled for a few seconds;
//! then the collector stays down for a long outage. Afterwards the history
//! must hold every event the file held exactly once (by (agent, seq) and by
//! the line number each event carries), except events of log records the
//! flipped bytes damaged: those may be lost, at most one batch per flip,
//! never duplicated.
//!
//! Sized for CI by default; `scripts/chaos.sh` runs a longer one. Knobs
//! (environment): `OTWATCH_CHAOS_ROUNDS` (20), `OTWATCH_CHAOS_OUTAGE_SECS`
//! (60), `OTWATCH_CHAOS_RATE` (events/s, 1000), `OTWATCH_CHAOS_SEED`.
//! The figures (rounds of each kind, events written, stored, lost and
//! duplicated, outage drain rate, the agent's peak memory during the
//! outage) are printed; run with `--nocapture` to see them.

mod common;

use common::agent_binary;

use otwatch_pki::{self as cert, Subject, LEAF_VALIDITY};
use otwatch_testkit::Tmpfs;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process that is SIGKILLed when dropped.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child, what }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {} failed", self.what);
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sql(data: &Path, query: &str) -> Option<Vec<Value>> {
    if !data.join("history").exists() {
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data)
        .arg(query)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

fn stored(data: &Path) -> u64 {
    sql(data, "SELECT count(*) AS n FROM events")
        .and_then(|rows| rows.first()?["n"].as_u64())
        .unwrap_or(0)
}

/// Appends JSON lines to `path` at `rate` lines per second until `stop`;
/// line `i` carries `attrs.n = i`. Returns how many it wrote.
fn generate(path: PathBuf, rate: u64, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut chunk = String::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        while i < due {
            chunk.push_str(&format!(
                r#"{{"asset":"line1/press-0{}","kind":"CYCLE","name":"cycle","ts_ns":{},"value":{},"attrs":{{"n":"{}"}}}}"#,
                i % 3,
                now,
                1000 + i % 17,
                i
            ));
            chunk.push('\n');
            i += 1;
        }
        // One write per chunk, whole lines only: the agent reads complete lines.
        file.write_all(chunk.as_bytes()).unwrap();
        written.store(i, Ordering::Release);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Flips one bit of a random byte of a random segment of the events log.
fn flip_a_log_byte(data: &Path, rng: &mut impl Rng) -> Option<String> {
    let dir = data.join("log/events");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("seg".as_ref()))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    if segs.is_empty() {
        return None;
    }
    segs.sort();
    let seg = segs.swap_remove(rng.random_range(0..segs.len()));
    let mut bytes = std::fs::read(&seg).ok()?;
    let at = rng.random_range(0..bytes.len());
    bytes[at] ^= 1 << rng.random_range(0..8);
    std::fs::write(&seg, bytes).ok()?;
    Some(format!("{} byte {at}", seg.display()))
}

/// Largest batch the agent sends: what one damaged log record can hold.
const BATCH_MAX_EVENTS: u64 = 500;

#[test]
fn nothing_lost_nothing_twice_under_kills_freezes_corruption_full_disks_and_an_outage() {
    let rounds: u32 = env_or("OTWATCH_CHAOS_ROUNDS", 20);
    let outage = Duration::from_secs(env_or("OTWATCH_CHAOS_OUTAGE_SECS", 60));
    let rate: u64 = env_or("OTWATCH_CHAOS_RATE", 1000);
    let seed: u64 = env_or("OTWATCH_CHAOS_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = root.join("pki");
    cert::init(&pki).unwrap();
    cert::issue(
        &pki,
        &Subject::Collector {
            hosts: vec!["127.0.0.1".into()],
        },
        LEAF_VALIDITY,
    )
    .unwrap();
    cert::issue(
        &pki,
        &Subject::Agent {
            site: "plant-chaos".into(),
            agent: "gw-1".into(),
        },
        LEAF_VALIDITY,
    )
    .unwrap();
    let (agent_cert, agent_key) = cert::agent_files("plant-chaos", "gw-1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = root.join("central");
    // The collector's disk is a tmpfs the test can fill, where it may mount one.
    let disk = Tmpfs::mount(&data, "2g");
    if disk.is_none() {
        println!("chaos: mounting a tmpfs is not permitted here: no full-disk rounds");
    }
    let serve_toml = root.join("otwatch.toml");
    std::fs::write(
        &serve_toml,
        format!(
            r#"
data_dir = "{data}"
listen = "127.0.0.1:{port}"
[collector.tls]
cert = "{pki}/collector.pem"
key = "{pki}/collector-key.pem"
client_ca = "{pki}/ca.pem"
[history]
flush_interval = "1s"
[[outputs]]
type = "jsonl"
path = "alerts.jsonl"
"#,
            data = data.display(),
            pki = pki.display()
        ),
    )
    .unwrap();
    let input = root.join("events.jsonl");
    let agent_toml = root.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"
site = "plant-chaos"
agent = "gw-1"
data_dir = "{agent_dir}"
[collector]
url = "https://127.0.0.1:{port}"
batch_max_events = {BATCH_MAX_EVENTS}
reconnect_min = "100ms"
reconnect_max = "1s"
[collector.tls]
ca = "{pki}/ca.pem"
cert = "{pki}/{agent_cert}"
key = "{pki}/{agent_key}"
[[sources]]
type = "file"
path = "{input}"
poll_interval = "50ms"
"#,
            agent_dir = root.join("agent").display(),
            pki = pki.display(),
            input = input.display()
        ),
    )
    .unwrap();
    let log = root.join("processes.log");
    let serve = || {
        Proc::spawn(
            "otwatch serve",
            Command::new(env!("CARGO_BIN_EXE_otwatch"))
                .arg("serve")
                .arg("--config")
                .arg(&serve_toml),
            &log,
        )
    };
    let agent = || {
        Proc::spawn(
            "otwatch-agent",
            Command::new(agent_binary())
                .arg("--config")
                .arg(&agent_toml),
            &log,
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let generator = {
        let (input, stop, written) = (input.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || generate(input, rate, stop, written))
    };
    let mut collector = serve();
    let mut edge = agent();
    let started = Instant::now();
    let (mut agent_kills, mut collector_kills, mut freezes) = (0, 0, 0);
    let (mut corruptions, mut fills) = (0u64, 0u64);
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        match rng.random_range(0..7) {
            5 => {
                // Bit rot: a byte of the log changes while the collector is down.
                collector.kill();
                collector_kills += 1;
                if let Some(what) = flip_a_log_byte(&data, &mut rng) {
                    println!("chaos: flipped a bit of {what}");
                    corruptions += 1;
                }
                collector = serve();
            }
            6 if disk.is_some() => {
                // The collector's disk fills up for a while.
                let filler = disk.as_ref().unwrap().fill();
                fills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(500..3000)));
                std::fs::remove_file(filler).unwrap();
            }
            0 | 1 => {
                edge.kill();
                agent_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                edge = agent();
            }
            2 | 3 => {
                collector.kill();
                collector_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
                collector = serve();
            }
            _ => {
                // A frozen collector (disk stall, VM pause): no acks, then it resumes.
                collector.signal("-STOP");
                freezes += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(500..3000)));
                collector.signal("-CONT");
            }
        }
    }

    // Events damaged log records took with them, at most.
    let may_lose = corruptions * BATCH_MAX_EVENTS;
    // The long outage: the agent keeps taking events into its queue.
    let stored_before = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = stored(&data);
            if s + rate * 3 >= written.load(Ordering::Acquire) || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    collector.kill();
    collector_kills += 1;
    std::thread::sleep(outage);
    let peak_rss = edge.peak_rss_kib();
    let backlog_until = written.load(Ordering::Acquire);
    let restarted = Instant::now();
    collector = serve();
    let drained_at = {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if stored(&data) + may_lose >= backlog_until {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "the backlog did not drain");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let drain_secs = drained_at.duration_since(restarted).as_secs_f64();

    stop.store(true, Ordering::Relaxed);
    generator.join().unwrap();
    let total = written.load(Ordering::Acquire);
    // Everything arrives, or (after damage) nothing more for 10 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut still_since) = (0, Instant::now());
    loop {
        let now = stored(&data);
        if now >= total {
            break;
        }
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if may_lose > 0
            && now + may_lose >= total
            && still_since.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {total} events reached the history"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let anything that would arrive twice arrive.
    std::thread::sleep(Duration::from_secs(3));
    let rows = sql(
        &data,
        "SELECT count(*) AS n, count(DISTINCT seq) AS seqs, count(DISTINCT attrs['n']) AS lines, \
         min(CAST(attrs['n'] AS BIGINT)) AS lo, max(CAST(attrs['n'] AS BIGINT)) AS hi \
         FROM events WHERE site = 'plant-chaos' AND agent = 'gw-1'",
    )
    .expect("history readable");
    let r = &rows[0];
    let (n, lines) = (r["n"].as_u64().unwrap(), r["lines"].as_u64().unwrap());
    println!(
        "chaos: events written {total}, stored {n}, lost {}, duplicated {}",
        total.saturating_sub(lines),
        n.saturating_sub(lines)
    );
    println!(
        "chaos: {rounds} rounds ({agent_kills} agent SIGKILLs, {collector_kills} collector SIGKILLs, {freezes} collector freezes, \
         {corruptions} log bit flips, {fills} full disks) \
         over {:.0} s, {total} events at {rate}/s; outage {} s: backlog {} events drained in {drain_secs:.1} s \
         ({:.0} events/s while catching up); agent peak RSS during the outage {} KiB",
        started.elapsed().as_secs_f64(),
        outage.as_secs(),
        backlog_until.saturating_sub(stored_before),
        backlog_until.saturating_sub(stored_before) as f64 / drain_secs.max(0.001),
        peak_rss.map_or("?".to_string(), |k| k.to_string()),
    );
    assert_eq!(n, lines, "no event is stored twice: {r}");
    assert_eq!(r["seqs"].as_u64(), Some(n), "distinct (agent, seq): {r}");
    assert!(
        total - lines <= may_lose,
        "{} events lost, more than the {corruptions} damaged log record(s) can hold: {r}",
        total - lines
    );
    if corruptions == 0 {
        assert_eq!(lines, total, "nothing lost: {r}");
        assert_eq!(r["lo"].as_u64(), Some(0), "{r}");
        assert_eq!(r["hi"].as_u64(), Some(total - 1), "{r}");
    }
    drop(collector);
    drop(edge);
    drop(disk);
}
