//! What the outputs' tests share: alerts with awkward text, and an output
//! running as the service runs it (its own consumer group over a real
//! event log), with its committed offset and health in view.

use super::{AlertOutput, OutputConfig};
use crate::health::{Health, Reporter, State};
use crate::supervisor::{Stage, Supervisor};
use otwatch_eventlog::{EventLog, LocalLog, LocalLogConfig, Topic};
use otwatch_proto::{Alert, Severity};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An alert whose text holds every character a format must escape:
/// CEF's `|`, `\` and `=`, syslog's `"` and `]`, line breaks, non-ASCII.
pub fn alert(i: u64) -> Alert {
    Alert {
        id: format!("{:016x}", 0xa1e7_0000_0000_0000u64 + i),
        ts_ns: 1_714_636_800_123_000_000 + i as i64 * 1_000_000_000,
        site: "plant-a".into(),
        asset: format!("line2/press-{i:02}"),
        detector: "cycle".into(),
        name: "press|cycle".into(),
        severity: match i % 4 {
            0 => Severity::Low,
            1 => Severity::Medium,
            2 => Severity::High,
            _ => Severity::Critical,
        } as i32,
        score: 7.25,
        observed: 1.5 + i as f64,
        expected_low: 1.0,
        expected_high: 1.25,
        message: format!(
            "press|cycle time {} s, expected 1–1.25 s: a=b \\ \"quoted\" [x] ]\nsecond line",
            1.5 + i as f64
        ),
        agent: "gw-1".into(),
        first_seq: 100 + i,
        last_seq: 120 + i,
        event_count: 21,
        technique: "T0836".into(),
        ..Default::default()
    }
}

/// `n` alerts, numbered from `from`.
pub fn alerts(from: u64, n: u64) -> Vec<Alert> {
    (from..from + n).map(alert).collect()
}

/// One output running over its own event log, as `otwatch serve` runs it.
pub struct Running {
    pub log: Arc<LocalLog>,
    pub reporter: Reporter,
    pub group: String,
    supervisor: Supervisor,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `output` (configured as `config`, for its name and group)
    /// over a new log holding `alerts`, one record per slice.
    pub async fn start(
        config: &OutputConfig,
        output: Box<dyn AlertOutput>,
        records: &[&[Alert]],
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let log =
            Arc::new(LocalLog::open(dir.path().join("log"), LocalLogConfig::default()).unwrap());
        let running = Running {
            log,
            reporter: Health::default().register(config.group(), Some(Topic::Alerts)),
            group: config.group(),
            supervisor: Supervisor::new(),
            _dir: dir,
        };
        for alerts in records {
            running.append(alerts).await;
        }
        let mut running = running;
        let reporter = running.reporter.clone();
        running.spawn(reporter, output);
        running
    }

    fn spawn(&mut self, reporter: Reporter, output: Box<dyn AlertOutput>) {
        let (log, group): (Arc<dyn EventLog>, String) =
            (self.log.clone(), reporter.name().to_string());
        self.supervisor.spawn(Stage::Output, reporter, move |ctx| {
            super::run(output, log, group, ctx)
        });
    }

    /// Starts one more output over the same log, as the service runs
    /// several; returns its reporter.
    pub fn spawn_also(&mut self, config: &OutputConfig, output: Box<dyn AlertOutput>) -> Reporter {
        let reporter = Health::default().register(config.group(), Some(Topic::Alerts));
        self.spawn(reporter.clone(), output);
        reporter
    }

    /// The offset `group` has committed.
    pub async fn committed_by(&self, group: &str) -> u64 {
        self.log
            .consumer(Topic::Alerts, group)
            .await
            .unwrap()
            .position()
    }

    /// Appends one record of alerts to the alerts topic.
    pub async fn append(&self, alerts: &[Alert]) {
        otwatch_testkit::append_alerts(self.log.as_ref(), alerts).await;
    }

    /// The offset the output's group has committed.
    pub async fn committed(&self) -> u64 {
        self.committed_by(&self.group).await
    }

    /// Waits until the group has committed everything in the log.
    pub async fn wait_committed_all(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.committed().await == self.log.end_offset(Topic::Alerts) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until the output reports `retrying` (a failed delivery).
    pub async fn wait_retrying(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let State::Retrying { error, .. } = self.reporter.state() {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the output never reported retrying; state {:?}",
            self.reporter.state()
        );
    }

    /// Stops the output (as a service stop does) and waits for it.
    pub async fn stop(mut self) {
        self.supervisor
            .stop_stage(Stage::Output, Duration::from_secs(20))
            .await;
        assert!(
            self.supervisor.try_failure().is_none(),
            "the output failed: {:?}",
            self.reporter.state()
        );
    }
}

pub use otwatch_testkit::peer_installed;

/// A loopback port free at the time of asking.
pub fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A CA with a server certificate for `localhost`/127.0.0.1 and a client
/// certificate, made by `otwatch cert` (otwatch-pki).
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        otwatch_pki::init(dir.path()).unwrap();
        otwatch_pki::issue(
            dir.path(),
            &otwatch_pki::Subject::Collector {
                hosts: vec!["localhost".into(), "127.0.0.1".into()],
            },
            otwatch_pki::LEAF_VALIDITY,
        )
        .unwrap();
        otwatch_pki::issue(
            dir.path(),
            &otwatch_pki::Subject::Agent {
                site: "central".into(),
                agent: "otwatch".into(),
            },
            otwatch_pki::LEAF_VALIDITY,
        )
        .unwrap();
        Pki { dir }
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join(otwatch_pki::CA_CERT)
    }

    /// The server certificate and key.
    pub fn server(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            self.dir.path().join(otwatch_pki::COLLECTOR_CERT),
            self.dir.path().join(otwatch_pki::COLLECTOR_KEY),
        )
    }

    /// The client certificate and key.
    pub fn client(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let (c, k) = otwatch_pki::agent_files("central", "otwatch");
        (self.dir.path().join(c), self.dir.path().join(k))
    }

    /// `[outputs.tls]` trusting this CA, with the client certificate.
    pub fn tls_files(&self) -> super::tls::TlsFiles {
        let (cert, key) = self.client();
        super::tls::TlsFiles {
            ca: Some(self.ca()),
            client_cert: Some(cert),
            client_key: Some(key),
        }
    }
}

/// One request an [`HttpReceiver`] took.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How an [`HttpReceiver`] answers the `n`th request (from 0): a status and
/// body, or `None` to never answer.
pub type Answer = Arc<dyn Fn(&Received, usize) -> Option<(u16, String)> + Send + Sync>;

/// A real HTTP/1.1 server (hyper) on loopback, over TLS with `pki`'s
/// server certificate when given, recording every request it answers.
pub struct HttpReceiver {
    pub addr: std::net::SocketAddr,
    /// Every request, answered or not, in arrival order.
    pub requests: Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpReceiver {
    pub async fn start(pki: Option<&Pki>, answer: Answer) -> HttpReceiver {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = pki.map(|pki| {
            use rustls::pki_types::pem::PemObject;
            let (cert, key) = pki.server();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (recorded, answer, acceptor) =
                    (recorded.clone(), answer.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (recorded, answer) = (recorded.clone(), answer.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                let received = Received {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                let n = {
                                    let mut all = recorded.lock().unwrap();
                                    all.push(received.clone());
                                    all.len() - 1
                                };
                                let Some((status, text)) = answer(&received, n) else {
                                    futures::future::pending::<()>().await;
                                    unreachable!()
                                };
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(hyper::body::Bytes::from(
                                            text,
                                        )))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        HttpReceiver {
            addr,
            requests,
            task,
        }
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
