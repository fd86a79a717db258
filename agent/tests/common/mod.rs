//! What the agent's integration tests share: a real collector
//! (`otwatch_collector::Collector` over a `LocalLog` in a temporary
//! directory, served by tonic on a loopback port) that can be killed and
//! started again on the same port, and small helpers around the real agent.
#![allow(dead_code)] // each test binary uses its own subset

use otwatch_collector::{Collector, CollectorConfig, CollectorMetrics};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A collector in its own runtime on its own thread, so that killing it
/// (dropping the runtime) drops every connection at once, as a crash does.
pub struct TestCollector {
    pub addr: SocketAddr,
    pub log: Arc<LocalLog>,
    pub metrics: Arc<CollectorMetrics>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestCollector {
    /// Starts a collector with its log in `dir`, on `addr` (a free loopback
    /// port when `None`; the same port again after a kill).
    pub fn start(dir: &Path, config: CollectorConfig, addr: Option<SocketAddr>) -> TestCollector {
        let dir = dir.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let log = Arc::new(LocalLog::open(&dir, LocalLogConfig::default()).unwrap());
            let collector = Collector::new(log.clone(), config).unwrap();
            let metrics = collector.metrics();
            let listener = rt.block_on(async {
                let want = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match tokio::net::TcpListener::bind(want).await {
                        Ok(l) => break l,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("binding {want}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("cannot bind {want}: {e}"),
                    }
                }
            });
            let addr = listener.local_addr().unwrap();
            rt.spawn(collector.serve(listener, None, std::future::pending()));
            ready_tx.send((addr, log, metrics)).unwrap();
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        let (addr, log, metrics) = ready_rx.recv().expect("collector started");
        TestCollector {
            addr,
            log,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The URL an agent uses to reach it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every (site/agent, seq) the log holds, in log order.
    pub async fn stored(&self) -> Vec<(String, u64)> {
        otwatch_testkit::log_seqs(self.log.as_ref()).await
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One line of the `file` source's format: a CYCLE event at `ts_ns`.
pub fn line(ts_ns: i64, value: f64) -> String {
    format!(
        r#"{{"asset":"line1/press-01","kind":"CYCLE","name":"cycle","ts_ns":{ts_ns},"value":{value}}}"#
    )
}

/// Appends lines to a file (the file source follows it).
pub fn append_lines(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.sync_all().unwrap();
}

/// An agent configuration following `events` and sending to `url`, with
/// short reconnect waits; `extra` is appended verbatim (more sections).
pub fn agent_toml(data_dir: &Path, events: &Path, url: &str, extra: &str) -> String {
    format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n{extra}\n\
         [collector]\nurl = {url:?}\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n\
         batch_max_delay = \"0ms\"\n\
         [[sources]]\ntype = \"file\"\npath = {events:?}\npoll_interval = \"20ms\"\n",
        data = data_dir.display().to_string(),
        events = events.display().to_string(),
    )
}

/// Waits (up to a generous deadline) until `check` holds, panicking with
/// `what` otherwise.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unused_imports)] // each test binary uses its own subset
pub use otwatch_testkit::python_has;

/// A free loopback port (free when asked; a test binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub async fn wait_listening(port: u16) {
    wait_until(&format!("something listens on port {port}"), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// A process a test started, killed (SIGKILL) when dropped.
pub struct Child {
    pub child: std::process::Child,
}

impl Child {
    /// Starts `program` with `args`, its output appended to `log`.
    pub fn start(program: &str, args: &[&str], log: &Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Child { child }
    }

    /// Asks the process to stop (SIGTERM) and waits for it, returning
    /// whether it exited with success.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `otwatch-agent` binary running `config`, logging to `log`.
pub fn start_agent(config: &Path, log: &Path) -> Child {
    Child::start(
        env!("CARGO_BIN_EXE_otwatch-agent"),
        &["--config", config.to_str().unwrap()],
        log,
    )
}

/// The body of `GET path` on `addr` (the agent's metrics endpoint).
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body).await;
    body
}

/// The value of the metric line starting with `series` (name and labels).
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
