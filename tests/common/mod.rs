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

/// `otwatch serve --insecure-loopback` on a free port with `config` (the
/// text of its otwatch.toml) and `dir/data` as its data directory, once it
/// listens; with a gRPC channel to it.
pub async fn start_serve(
    dir: &std::path::Path,
    config: &str,
) -> (std::process::Child, tonic::transport::Channel) {
    use std::time::{Duration, Instant};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config_path = dir.join("otwatch.toml");
    std::fs::write(&config_path, config).unwrap();
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args(["serve", "--insecure-loopback", "--config"])
        .arg(&config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(Instant::now() < deadline, "serve never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (serve, channel)
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
