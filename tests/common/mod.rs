//! Helpers shared by the integration tests that talk gRPC to a collector.
#![allow(dead_code)] // each test binary uses its own subset

use otwatch_eventlog::LocalLog;
use otwatch_proto::identity::{AGENT_HEADER, SITE_HEADER};
use otwatch_proto::v1::ingest_client::IngestClient;
use otwatch_proto::{Ack, ControllerEvent, EventBatch, EventKind};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

/// `otwatch-agent` is another package's binary: it sits next to `otwatch`
/// once the workspace is built (scripts/test.sh builds it).
pub fn agent_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_otwatch")).with_file_name("otwatch-agent");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The repository root, looked up when the test runs: a test binary built
/// in another checkout that shares the target directory must not read files
/// from that checkout.
pub fn repo_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A batch of CYCLE events with the given sequence numbers, stamped now.
pub fn batch(site: &str, agent: &str, seqs: std::ops::RangeInclusive<u64>) -> EventBatch {
    let now = now_ns();
    EventBatch {
        site: site.into(),
        agent: agent.into(),
        events: seqs
            .map(|seq| ControllerEvent {
                seq,
                ts_ns: now,
                asset: "line1/press-01".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(1000.0 + seq as f64),
                ..Default::default()
            })
            .collect(),
        queue_backlog: 0,
    }
}

/// One ingest stream: batches go in, acks come back.
pub struct Stream {
    pub tx: mpsc::Sender<EventBatch>,
    pub acks: Streaming<Ack>,
}

/// Opens an ingest stream on `channel`, naming the agent with headers
/// (`site` may be left out to test refusals).
pub async fn open_on(
    channel: Channel,
    site: Option<&str>,
    agent: &str,
) -> Result<Stream, tonic::Status> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(site) = site {
        request
            .metadata_mut()
            .insert(SITE_HEADER, site.parse().unwrap());
    }
    request
        .metadata_mut()
        .insert(AGENT_HEADER, agent.parse().unwrap());
    let acks = client.stream(request).await?.into_inner();
    Ok(Stream { tx, acks })
}

/// [`open_on`], then waits for the greeting ack that proves the collector
/// accepted the stream; any failure on the way comes back as text.
pub async fn open_greeted(channel: Channel, site: &str, agent: &str) -> Result<Stream, String> {
    let mut stream = open_on(channel, Some(site), agent)
        .await
        .map_err(|e| format!("open: {e}"))?;
    match stream.acks.message().await {
        Ok(Some(_)) => Ok(stream),
        Ok(None) => Err("closed before the greeting".into()),
        Err(e) => Err(format!("greeting: {e}")),
    }
}

impl Stream {
    /// Sends a batch and returns its ack or the status that ended the stream.
    pub async fn send(&mut self, batch: EventBatch) -> Result<Ack, tonic::Status> {
        self.tx.send(batch).await.unwrap();
        match self.acks.message().await {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => panic!("stream closed without a status"),
            Err(status) => Err(status),
        }
    }
}

/// Every (site/agent, seq) in the log's events topic.
pub async fn stored(log: &LocalLog) -> Vec<(String, u64)> {
    otwatch_testkit::log_seqs(log).await
}

/// Starts `otwatch serve --insecure-loopback` with `dir/data` as its data
/// directory and `dir/otwatch.toml` as its configuration (written with
/// `config` unless it exists, so a restart keeps it), on a port of its
/// choosing (two tests picking a free port each could pick the same one),
/// and connects to it: the address is read from its log.
pub async fn start_serve(
    dir: &std::path::Path,
    config: &str,
) -> (std::process::Child, tonic::transport::Channel) {
    let (serve, channel, _log) = start_serve_with_log(dir, config).await;
    (serve, channel)
}

/// [`start_serve`], also handing over every line of its log after the one
/// that named the ingest address.
#[allow(dead_code)] // not every test binary reads the log
pub async fn start_serve_with_log(
    dir: &std::path::Path,
    config: &str,
) -> (
    std::process::Child,
    tonic::transport::Channel,
    std::sync::mpsc::Receiver<String>,
) {
    use std::process::{Command, Stdio};
    let config_path = dir.join("otwatch.toml");
    if !config_path.exists() {
        std::fs::write(&config_path, config).unwrap();
    }
    let mut serve = Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args([
            "serve",
            "--insecure-loopback",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::io::BufReader::new(serve.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        // Reads the whole log, so that serve never blocks on a full pipe.
        for line in log.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            if let Some(addr) = line
                .contains("collector listening")
                .then(|| line.split("addr=").nth(1))
                .flatten()
                .and_then(|rest| rest.split_whitespace().next())
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.to_string());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("serve never said where it listens");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (serve, channel, lines)
}

/// Stops `serve` with SIGTERM and checks it exits cleanly.
pub fn stop_serve(mut serve: std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = serve.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// Runs `otwatch ARGS --data-dir DATA`.
pub fn run_otwatch(args: &[&str], data: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// Runs `otwatch sql --format json` over `data_dir` and returns the rows.
#[allow(dead_code)] // not every test binary queries
pub fn sql(data_dir: &std::path::Path, query: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data_dir)
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
