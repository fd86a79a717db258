//! Load generator: durable ingest throughput and latency on this machine.
//!
//! Phase 1 — ingest: a collector over real gRPC on loopback, appending to the
//! embedded event log with fsync; N concurrent agents stream batches with a
//! window of in-flight batches, as the real sender does. Prints events/s
//! through collector → durable log and the ack latency (send → durable ack).
//!
//! Phase 2 — ingest → alert: the whole central service (collector, log,
//! detector, history); after the detector has learned, an extreme cycle is
//! sent and the time until its alert is raised is measured, several times.
//!
//! The load generator runs in the same process as the server, so both share
//! the machine's cores: the figures are a floor for a dedicated collector.
//!
//! With `--tls`, phase 1 runs as in production: a CA made with `otwatch cert`,
//! one client certificate per agent, the collector's own TLS accept loop, and
//! the identity taken from the certificate instead of headers.
//!
//! Run: cargo bench --bench ingest [-- --agents 8 --seconds 10 --batch 1000 --tls]

use otwatch_collector::tls::ServerTlsConfig;
use otwatch_collector::{Collector, CollectorConfig, AGENT_HEADER, SITE_HEADER};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use otwatch_pki::{self as cert, Subject, LEAF_VALIDITY};
use otwatch_proto::v1::ingest_client::IngestClient;
use otwatch_proto::{ControllerEvent, EventBatch, EventKind};
use otwatch_runtime::{ServerConfig, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

struct Args {
    agents: usize,
    seconds: u64,
    batch: usize,
    window: usize,
    /// Mutual TLS on the ingest port: the CA and certificates live here.
    tls: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        agents: 8,
        seconds: 10,
        batch: 1000,
        window: 4,
        tls: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--agents" => a.agents = value().expect("--agents N"),
            "--seconds" => a.seconds = value().expect("--seconds N") as u64,
            "--batch" => a.batch = value().expect("--batch N"),
            "--window" => a.window = value().expect("--window N"),
            "--tls" => {
                a.tls = Some(PathBuf::new());
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn template(n: usize, ts: i64) -> Vec<ControllerEvent> {
    (0..n)
        .map(|i| {
            let kind = if i % 3 == 0 {
                EventKind::Cycle
            } else {
                EventKind::Sample
            };
            ControllerEvent {
                ts_ns: ts + i as i64 * 1_000_000,
                asset: format!("line{}/press-{:02}", i % 4, i % 16),
                kind: kind as i32,
                name: match kind {
                    EventKind::Cycle => "cycle".into(),
                    _ => ["motor_current_a", "temperature_c"][i % 2].into(),
                },
                value: Some(1000.0 + (i % 97) as f64),
                ..Default::default()
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One agent: streams batches for `run_for`, `window` unacked at most.
/// Returns (events acked, ack latencies).
async fn agent(
    addr: SocketAddr,
    site: String,
    args: Arc<Args>,
    run_for: Duration,
) -> (u64, Vec<Duration>) {
    let channel = match &args.tls {
        Some(pki) => {
            let (cert, key) = cert::agent_files(&site, "load");
            let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(cert::CA_CERT)))
                .identity(tonic::transport::Identity::from_pem(
                    read(&cert),
                    read(&key),
                ));
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    };
    let mut client =
        IngestClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let (tx, rx) = mpsc::channel(args.window);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert(SITE_HEADER, site.parse().unwrap());
    req.metadata_mut()
        .insert(AGENT_HEADER, "load".parse().unwrap());
    let mut acks = client.stream(req).await.unwrap().into_inner();
    acks.message().await.unwrap().unwrap();
    let events = template(args.batch, now_ns());
    let mut seq = 0u64;
    let mut sent_at = std::collections::VecDeque::new();
    let mut latencies = Vec::new();
    let mut acked = 0u64;
    let start = Instant::now();
    loop {
        while sent_at.len() < args.window && start.elapsed() < run_for {
            let mut batch = events.clone();
            for e in &mut batch {
                seq += 1;
                e.seq = seq;
            }
            tx.send(EventBatch {
                site: site.clone(),
                agent: "load".into(),
                events: batch,
                queue_backlog: 0,
            })
            .await
            .unwrap();
            sent_at.push_back((Instant::now(), seq));
        }
        if sent_at.is_empty() {
            break;
        }
        let ack = acks.message().await.unwrap().unwrap();
        while let Some(&(t, last)) = sent_at.front() {
            if last > ack.durable_seq {
                break;
            }
            latencies.push(t.elapsed());
            sent_at.pop_front();
            acked += args.batch as u64;
        }
    }
    (acked, latencies)
}

/// A CA, the collector's certificate for 127.0.0.1 and one agent
/// certificate per load agent, as `otwatch cert` makes them.
fn make_pki(dir: &Path, agents: usize) -> ServerTlsConfig {
    cert::init(dir).unwrap();
    let mut subjects = vec![Subject::Collector {
        hosts: vec!["127.0.0.1".into()],
    }];
    subjects.extend((0..agents).map(|i| Subject::Agent {
        site: format!("site-{i}"),
        agent: "load".into(),
    }));
    for subject in &subjects {
        cert::issue(dir, subject, LEAF_VALIDITY).unwrap();
    }
    ServerTlsConfig {
        cert: dir.join(cert::COLLECTOR_CERT),
        key: dir.join(cert::COLLECTOR_KEY),
        client_ca: dir.join(cert::CA_CERT),
        crl: None,
    }
}

async fn ingest_phase(mut args: Args) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let tls = args.tls.is_some().then(|| {
        std::fs::create_dir(&pki).unwrap();
        args.tls = Some(pki.clone());
        make_pki(&pki, args.agents)
    });
    let args = Arc::new(args);
    let log = Arc::new(LocalLog::open(dir.path(), LocalLogConfig::default()).unwrap());
    let collector = Collector::new(
        log.clone(),
        CollectorConfig {
            tls: tls.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|t| t.acceptor().unwrap());
    tokio::spawn(collector.serve(listener, acceptor, std::future::pending()));
    let run_for = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.agents)
        .map(|i| tokio::spawn(agent(addr, format!("site-{i}"), args.clone(), run_for)))
        .collect();
    let mut total = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.unwrap();
        total += n;
        latencies.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let bytes: u64 = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "ingest ({}): {} agents x {}-event batches, window {}: {} events durable in {:.1} s = {:.0} events/s ({:.1} MB/s to the log)",
        if args.tls.is_some() { "mutual TLS" } else { "plaintext" },
        args.agents,
        args.batch,
        args.window,
        total,
        secs,
        total as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    println!(
        "ingest: ack latency (send -> durable ack) p50 {:.1} ms, p99 {:.1} ms over {} batches",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
}

async fn alert_phase() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    config.outputs.clear();
    // The load generator is on loopback in this process; TLS is measured apart.
    config.insecure_loopback = true;
    config.collector.limits.max_future_skew_secs = 366 * 24 * 3600;
    let learn = config.detector.learn;
    let central = Service::start(config).await.unwrap();
    let mut alerts = central.tail_alerts().await.unwrap();
    let mut client = IngestClient::connect(format!("http://{}", central.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert(SITE_HEADER, "plant".parse().unwrap());
    req.metadata_mut()
        .insert(AGENT_HEADER, "gw".parse().unwrap());
    let mut acks = client.stream(req).await.unwrap().into_inner();
    acks.message().await.unwrap().unwrap();

    // Event time: 8 assets, one cycle of ~10 s each, starting in the past.
    let cycle_ns = 10_000_000_000i64;
    let learn_cycles = (learn.as_nanos() as i64 / cycle_ns) as usize + 400;
    let mut ts = now_ns() - (learn_cycles as i64 + 1000) * cycle_ns;
    let mut seq = 0u64;
    let mut jitter = 0u64;
    let mut send = |tx: &mpsc::Sender<EventBatch>, cycles: usize, odd: Option<usize>| {
        let mut events = Vec::with_capacity(cycles * 8);
        for c in 0..cycles {
            ts += cycle_ns;
            for asset in 0..8 {
                seq += 1;
                jitter = jitter
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((jitter >> 33) % 200) as f64 - 100.0;
                let value = if odd == Some(asset) && c == cycles - 1 {
                    100_000.0
                } else {
                    10_000.0 + noise
                };
                events.push(ControllerEvent {
                    seq,
                    ts_ns: ts + asset as i64,
                    asset: format!("line1/press-{asset:02}"),
                    kind: EventKind::Cycle as i32,
                    name: "cycle".into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        }
        let batch = EventBatch {
            site: "plant".into(),
            agent: "gw".into(),
            events,
            queue_backlog: 0,
        };
        let tx = tx.clone();
        async move { tx.send(batch).await.unwrap() }
    };
    for _ in 0..learn_cycles / 50 {
        send(&tx, 50, None).await;
        acks.message().await.unwrap().unwrap();
    }
    while !central.caught_up() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while !alerts.next(Duration::ZERO).await.unwrap().is_empty() {}
    let mut latencies = Vec::new();
    for round in 0..8 {
        let sent = Instant::now();
        send(&tx, 1, Some(round % 8)).await;
        acks.message().await.unwrap().unwrap();
        match alerts.next(Duration::from_secs(10)).await {
            Ok(got) if !got.is_empty() => latencies.push(sent.elapsed()),
            _ => println!("alert: round {round}: no alert within 10 s"),
        }
        // Back to normal so the episode closes before the next round.
        for _ in 0..4 {
            send(&tx, 50, None).await;
            acks.message().await.unwrap().unwrap();
        }
        while !alerts.next(Duration::ZERO).await.unwrap().is_empty() {}
    }
    latencies.sort();
    println!(
        "ingest -> alert: median {:.1} ms, max {:.1} ms over {} extreme cycles (send to alert raised, through gRPC, fsync'd log, detector)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        latencies.len()
    );
    drop(tx);
    central.stop(Duration::from_secs(10)).await.unwrap();
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        ingest_phase(args).await;
        alert_phase().await;
    });
}
