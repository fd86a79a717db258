//! The roles of a distributed deployment: `otwatch collector`, `otwatch
//! detector` and `otwatch history` each run only their components, over the
//! event log every instance shares (`[log] kind = "kafka"`), with the same
//! configuration file as `otwatch serve`.
//!
//! Promises:
//! - a local log is refused with a clear error: its segment files can only
//!   be shared by the components of one process (`otwatch serve`);
//! - the configuration is validated and the log opened (topics created)
//!   before any component starts;
//! - a component that fails stops the role with its cause, as in `serve`
//!   (see [`crate::supervisor`]);
//! - with `metrics_listen`, `/readyz` also says whether the brokers answer
//!   and whether this instance's consumer groups hold their partitions.
//!
//! What each role runs:
//! - `collector`: the ingest server (stateless: any agent may connect to any
//!   collector; an agent's mark is read from the log);
//! - `detector`: the detector and the alert outputs;
//! - `history`: the history writers of every table.

use crate::components::history::source_topic;
use crate::components::ingest::IngestComponent;
use crate::config::{LogKind, ServerConfig};
use crate::health::Health;
use crate::service::{detector, history_writer, ingest_tls, Counters};
use crate::supervisor::{Stage, Supervisor};
use anyhow::Context;
use otwatch_collector::Collector;
use otwatch_eventlog::{EventLog, KafkaLog, Topic};
use otwatch_history::Table;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A set of components run by one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Collector,
    Detector,
    History,
}

impl Role {
    /// The command that runs it.
    pub fn command(self) -> &'static str {
        match self {
            Role::Collector => "otwatch collector",
            Role::Detector => "otwatch detector",
            Role::History => "otwatch history",
        }
    }
}

/// How often `/readyz`'s view of the brokers is refreshed.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Checks that `config` lets `role` run on its own: the log is shared.
pub fn check(config: &ServerConfig, role: Role) -> anyhow::Result<()> {
    if config.log.kind == LogKind::Local {
        anyhow::bail!(
            "{}: the [log] of this configuration is local, and a local event log can only be shared inside `otwatch serve` (one process runs every component). Run `otwatch serve`, or set [log] kind = \"kafka\" to run the roles separately",
            role.command()
        );
    }
    if role == Role::Collector {
        config.check_transport()?;
    }
    Ok(())
}

/// Runs `role` until `shutdown` completes (then stops cleanly) or a
/// component fails (then returns the failure).
pub async fn run(
    config: ServerConfig,
    role: Role,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    check(&config, role)?;
    let kafka = config
        .log
        .kafka()
        .map_err(|e| anyhow::anyhow!("[log]: {e}"))?;
    let log = Arc::new(
        KafkaLog::open(kafka)
            .await
            .context("cannot open the Kafka event log")?,
    );
    if role != Role::Collector && log.partitions(Topic::Events) > 1 {
        anyhow::bail!(
            "{}: the events topic has {} partitions; on Kafka this version runs the detector and history roles over topics of one partition ([log] partitions = 1 for new topics), because their checkpoints keep one offset per topic",
            role.command(),
            log.partitions(Topic::Events)
        );
    }
    let shared: Arc<dyn EventLog> = log.clone();
    let health = Health::default();
    let counters = Arc::new(Counters::default());
    let mut supervisor = Supervisor::new();
    let data_dir = config.data_dir.clone();
    // Held for the detector's lifetime: the detector answers queries on it.
    let mut _queries = None;
    match role {
        Role::Collector => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let tls = ingest_tls(&config)?;
            let collector = Collector::new(shared.clone(), config.collector.clone())
                .context("the [collector] configuration is invalid")?;
            tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "collector listening");
            let ingest = IngestComponent {
                collector,
                listener,
                tls,
                log: shared.clone(),
            };
            let reporter = health.register("ingest", None);
            supervisor.spawn(Stage::Ingest, reporter, |ctx| ingest.run(ctx));
        }
        Role::Detector => {
            let (detector, queries) = detector(shared.clone(), &config, &counters);
            _queries = Some(queries);
            let reporter = health.register(
                crate::components::detector::GROUP.to_string(),
                Some(Topic::Events),
            );
            supervisor.spawn(Stage::Detect, reporter, |ctx| detector.run(ctx));
            for output in &config.outputs {
                let receiver = output
                    .open(&data_dir)
                    .with_context(|| format!("cannot open output {}", output.name()))?;
                let group = output.group();
                let reporter = health.register(group.clone(), Some(Topic::Alerts));
                let log = shared.clone();
                supervisor.spawn(Stage::Output, reporter, move |ctx| {
                    crate::outputs::run(receiver, log, group, ctx)
                });
            }
        }
        Role::History => {
            for table in Table::ALL {
                let component = history_writer(table, shared.clone(), &config, &counters);
                let reporter = health.register(
                    crate::components::history::group(table),
                    Some(source_topic(table)),
                );
                supervisor.spawn(Stage::Output, reporter, |ctx| component.run(ctx));
            }
        }
    }

    let (stop_http, http_stop) = watch::channel(false);
    let broker_error = Arc::new(Mutex::new(Some("not probed yet".to_string())));
    let prober = tokio::spawn(probe(log.clone(), broker_error.clone()));
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
        let max_lag = config.health.ready_max_lag;
        let (h1, h2, h3) = (health.clone(), health.clone(), health.clone());
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        let endpoints = otwatch_metrics::Endpoints {
            metrics: Box::new(move || otwatch_metrics::render_families(&h1.families(l1.as_ref()))),
            health: Box::new(move || h2.liveness(l2.as_ref())),
            ready: Some(Box::new(move || {
                let error = broker_error.lock().unwrap().clone();
                h3.readiness(l3.as_ref(), error, max_lag)
            })),
        };
        tokio::spawn(otwatch_metrics::serve_endpoints(
            listener, endpoints, http_stop,
        ));
    }

    let failure = tokio::select! {
        _ = shutdown => None,
        failure = supervisor.next_failure() => Some(failure),
    };
    tracing::info!(role = role.command(), "stopping");
    supervisor.begin_stop();
    let grace = match failure {
        Some(_) => Duration::from_secs(2),
        None => Duration::from_secs(30),
    };
    for stage in [Stage::Ingest, Stage::Detect, Stage::Output] {
        supervisor.stop_stage(stage, grace).await;
    }
    prober.abort();
    stop_http.send_replace(true);
    match failure.or_else(|| supervisor.try_failure()) {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// Keeps `error` saying why the log is not ready: brokers that do not
/// answer, or consumer group members of this process without partitions.
async fn probe(log: Arc<KafkaLog>, error: Arc<Mutex<Option<String>>>) {
    loop {
        let now = match log.reachable(PROBE_EVERY).await {
            Err(e) => Some(format!("Kafka brokers unreachable: {e}")),
            Ok(()) => {
                let waiting = log.unassigned();
                if waiting.is_empty() {
                    None
                } else {
                    Some(format!(
                        "consumer group has no partitions yet for {}",
                        waiting.join(", ")
                    ))
                }
            }
        };
        *error.lock().unwrap() = now;
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_role_refuses_a_local_log_and_says_why() {
        for role in [Role::Collector, Role::Detector, Role::History] {
            let config = ServerConfig {
                insecure_loopback: true,
                ..ServerConfig::default()
            };
            let err = run(config, role, std::future::pending())
                .await
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(role.command()), "{err}");
            assert!(
                err.contains("a local event log can only be shared inside `otwatch serve`"),
                "{err}"
            );
        }
    }

    /// `GET path` on `addr`: the status code.
    async fn get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.ok()?;
        answer.split(' ').nth(1)?.parse().ok()
    }

    async fn wait_for(addr: std::net::SocketAddr, status: u16) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if get(addr, "/readyz").await == Some(status) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_collector_role_on_kafka_gets_ready_and_stops_cleanly() {
        let cluster = otwatch_eventlog::kafka::mock_cluster();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        drop(metrics);
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: Some(metrics_addr),
            insecure_loopback: true,
            log: crate::config::LogConfig {
                kind: LogKind::Kafka,
                brokers: Some(vec![cluster.bootstrap_servers()]),
                partitions: Some(3),
                timeout: Some(Duration::from_secs(3)),
                ..crate::config::LogConfig::default()
            },
            ..ServerConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let role = tokio::spawn(run(config, Role::Collector, async move {
            let _ = stopped.await;
        }));
        assert!(
            wait_for(metrics_addr, 200).await,
            "ready once the brokers answer"
        );
        stop.send(()).unwrap();
        role.await.unwrap().unwrap();
    }
}
