//! The central service in one process (`otwatch serve`): the collector, the
//! embedded event log, the detector, the history writers and the alert
//! outputs, each a supervised component over the log, and, with
//! `sql_listen`, the Postgres wire endpoint over the history, and with
//! `dashboard_listen`, the SOC dashboard.
//!
//! Everything downstream of the collector reads the event log and nothing
//! else, so each component resumes on its own after a restart: the history
//! writers from the offset committed with their Parquet files, the detector
//! from its checkpoint, each output from its consumer group's offset.
//!
//! Promises:
//! - one process per data directory: a second one is refused at start,
//!   naming the holder ([`otwatch_fs::DirLock`]);
//! - the configuration is validated before anything opens;
//! - a component that fails stops the service, and [`Service::run`] returns
//!   the failure so the binary exits non-zero (see [`crate::supervisor`]);
//! - a clean stop ends ingest first, lets the detector and then the writers
//!   and outputs finish what the log holds (each up to the drain time), and
//!   returns; what is left is read again at the next start.

use crate::admin::server::AdminComponent;
use crate::components::detector::{DetectorComponent, Query};
use crate::components::history::{source_topic, HistoryComponent};
use crate::components::ingest::IngestComponent;
use crate::components::sql::SqlComponent;
use crate::config::ServerConfig;
use crate::health::{Health, Reporter};
use crate::supervisor::{Failure, Stage, Supervisor};
use anyhow::Context;
use otwatch_collector::{tls, Collector, CollectorMetrics};
use otwatch_eventlog::{Consumer, EventLog, LocalLog, Topic};
use otwatch_history::Table;
use otwatch_proto::Alert;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Where the Parquet history of a data directory lives.
pub fn history_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("history")
}

/// Where the event log of a data directory lives.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// Counters the components keep beside their health.
#[derive(Debug, Default)]
pub struct Counters {
    /// Alerts raised since start.
    pub alerts_raised: Arc<AtomicU64>,
    /// Rows written to the events table since start.
    pub events_written: Arc<AtomicU64>,
    /// Log records the history writers skipped because they do not fit
    /// their table.
    pub history_records_skipped: Arc<AtomicU64>,
    /// What compaction and retention did.
    pub history_maintenance: Arc<crate::components::history::MaintenanceCounters>,
}

/// The history writer of `table`, reading its topic of `log` into the
/// history under the data directory.
pub(crate) fn history_writer(
    table: Table,
    log: Arc<dyn EventLog>,
    config: &ServerConfig,
    counters: &Counters,
) -> HistoryComponent {
    HistoryComponent {
        log,
        root: history_dir(&config.data_dir),
        table,
        config: config.history.clone(),
        rows_written: match table {
            Table::Events => counters.events_written.clone(),
            Table::Alerts | Table::Audit => Arc::new(AtomicU64::new(0)),
        },
        records_skipped: counters.history_records_skipped.clone(),
        maintenance: counters.history_maintenance.clone(),
    }
}

/// The detector over `log`, and the sender of the queries it answers
/// (`model status`, checks of decisions); dropping the sender ends none of
/// its work, it only stops the answers.
pub(crate) fn detector(
    log: Arc<dyn EventLog>,
    config: &ServerConfig,
    counters: &Counters,
) -> (DetectorComponent, mpsc::Sender<Query>) {
    let (queries, queries_rx) = mpsc::channel(16);
    let detector = DetectorComponent {
        log,
        dir: config.data_dir.join("detector"),
        history: history_dir(&config.data_dir),
        config: config.detector.clone(),
        alerts_raised: counters.alerts_raised.clone(),
        queries: queries_rx,
    };
    (detector, queries)
}

/// The ingest port's TLS, when `[collector.tls]` is set.
pub(crate) fn ingest_tls(config: &ServerConfig) -> anyhow::Result<Option<tls::Acceptor>> {
    config
        .collector
        .tls
        .as_ref()
        .map(|tls| {
            tls.acceptor()
                .context("cannot set up TLS on the ingest port")
        })
        .transpose()
}

/// The running central service.
pub struct Service {
    /// The ingest address (useful with port 0).
    pub addr: SocketAddr,
    /// The Postgres wire endpoint's address, when `sql_listen` is set.
    pub sql_addr: Option<SocketAddr>,
    /// The dashboard's address, when `dashboard_listen` is set.
    pub dashboard_addr: Option<SocketAddr>,
    pub log: Arc<LocalLog>,
    pub collector: Arc<CollectorMetrics>,
    pub health: Health,
    pub counters: Arc<Counters>,
    pub data_dir: PathBuf,
    supervisor: Supervisor,
    stages: Vec<(Stage, Reporter)>,
    stop_http: watch::Sender<bool>,
    _lock: otwatch_fs::DirLock,
}

impl Service {
    /// Validates the configuration, locks and opens the data directory and
    /// starts every component.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Service> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let lock =
            otwatch_fs::DirLock::acquire(&data_dir).context("cannot use the data directory")?;
        // The SQL endpoint's files (TLS, users) and port are checked before
        // anything opens: one that cannot be used stops the start.
        let sql = match config.sql_listen {
            Some(addr) => {
                let endpoint =
                    otwatch_pgwire::SqlEndpoint::open(&config.sql, &history_dir(&data_dir))
                        .await
                        .context("cannot start the SQL endpoint")?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for SQL on {addr}"))?;
                Some(SqlComponent { endpoint, listener })
            }
            None => None,
        };
        let sql_addr = match &sql {
            Some(c) => Some(c.listener.local_addr()?),
            None => None,
        };
        let log = Arc::new(
            LocalLog::open(log_dir(&data_dir), config.log.local())
                .context("cannot open the event log")?,
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        // Every port is bound before any component starts, so a port in use
        // fails the start with nothing left running.
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some((
                addr,
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            )),
            None => None,
        };
        let dashboard_listener = match config.dashboard_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for the dashboard on {addr}"))?,
            ),
            None => None,
        };
        let tls = ingest_tls(&config)?;
        let secure = tls.is_some();
        let collector = Collector::new(log.clone(), config.collector.clone())
            .context("the [collector] configuration is invalid")?;
        let collector_metrics = collector.metrics();

        let counters = Arc::new(Counters::default());
        // The admin socket and the dashboard ask the detector (`model
        // status`, checks of decisions) through `queries`, and append
        // decisions through one `control`.
        let log_dyn: Arc<dyn EventLog> = log.clone();
        let (detector, queries) = detector(log_dyn.clone(), &config, &counters);
        let control = Arc::new(
            crate::admin::server::Control::open(log_dyn, &data_dir, queries)
                .await
                .context("cannot read the end of the control topic's chain")?,
        );
        let health = Health::default();
        // The dashboard's files (accounts, TLS) are read before anything
        // starts, like the SQL endpoint's.
        let dashboard = match dashboard_listener {
            Some(listener) => Some(
                crate::dashboard::DashboardComponent::open(
                    listener,
                    &config.dashboard,
                    control.clone(),
                    history_dir(&data_dir),
                    health.clone(),
                    collector_metrics.clone(),
                    log.clone(),
                )
                .context("cannot start the dashboard")?,
            ),
            None => None,
        };
        let mut supervisor = Supervisor::new();
        let mut stages = Vec::new();
        let mut register = |stage: Stage, name: String, topic: Option<Topic>| {
            let reporter = health.register(name, topic);
            stages.push((stage, reporter.clone()));
            reporter
        };
        let as_dyn = || -> Arc<dyn EventLog> { log.clone() };

        // Consumers first: each opens its own state before ingest starts.
        for table in Table::ALL {
            let component = history_writer(table, as_dyn(), &config, &counters);
            let reporter = register(
                Stage::Output,
                crate::components::history::group(table),
                Some(source_topic(table)),
            );
            supervisor.spawn(Stage::Output, reporter, |ctx| component.run(ctx));
        }
        for output in &config.outputs {
            let receiver = output
                .open(&data_dir)
                .with_context(|| format!("cannot open output {}", output.name()))?;
            let group = output.group();
            let reporter = register(Stage::Output, group.clone(), Some(Topic::Alerts));
            let log = as_dyn();
            supervisor.spawn(Stage::Output, reporter, move |ctx| {
                crate::outputs::run(receiver, log, group, ctx)
            });
        }
        let reporter = register(
            Stage::Detect,
            crate::components::detector::GROUP.to_string(),
            Some(Topic::Events),
        );
        supervisor.spawn(Stage::Detect, reporter, |ctx| detector.run(ctx));

        // Retention waits for every consumer this service runs.
        for topic in Topic::ALL {
            let mut groups: Vec<String> = stages
                .iter()
                .filter(|(_, r)| r.topic() == Some(topic))
                .map(|(_, r)| r.name().to_string())
                .collect();
            if topic == Topic::Control {
                // The detector reads decisions beside its events.
                groups.push(crate::components::detector::GROUP.to_string());
            }
            log.retain_for(topic, &groups);
        }
        // Ingest starts once every consumer has its position in the log, so
        // that a log that lost records continues numbering after them first.
        while stages.iter().any(|(_, r)| !r.is_opened()) {
            if let Some(failure) = supervisor.try_failure() {
                // Nothing started may keep running once start has failed.
                supervisor.begin_stop();
                for stage in [Stage::Ingest, Stage::Detect, Stage::Output] {
                    supervisor.stop_stage(stage, Duration::from_secs(5)).await;
                }
                return Err(failure).context("the service could not start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let ingest = IngestComponent {
            collector,
            listener,
            tls,
            log: as_dyn(),
        };
        let reporter = health.register("ingest", None);
        stages.push((Stage::Ingest, reporter.clone()));
        supervisor.spawn(Stage::Ingest, reporter, |ctx| ingest.run(ctx));
        // Decisions stop with ingest: none is taken while the rest drains.
        let admin = AdminComponent {
            data_dir: data_dir.clone(),
            control: control.clone(),
        };
        let reporter = health.register("admin", None);
        stages.push((Stage::Ingest, reporter.clone()));
        supervisor.spawn(Stage::Ingest, reporter, |ctx| admin.run(ctx));
        let mut dashboard_addr = None;
        if let Some(dashboard) = dashboard {
            let addr = dashboard.listener.local_addr()?;
            let scheme = if dashboard.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(
                url = %format!("{scheme}://{addr}/"),
                users = dashboard.shared.auth.users(),
                "dashboard listening"
            );
            dashboard_addr = Some(addr);
            let reporter = health.register(crate::dashboard::NAME, None);
            stages.push((Stage::Ingest, reporter.clone()));
            supervisor.spawn(Stage::Ingest, reporter, |ctx| dashboard.run(ctx));
        }
        if let (Some(sql), Some(sql_addr)) = (sql, sql_addr) {
            tracing::info!(
                addr = %sql_addr,
                tls = sql.endpoint.tls(),
                require_tls = sql.endpoint.requires_tls(),
                users = sql.endpoint.users(),
                "SQL endpoint listening (Postgres wire, SCRAM-SHA-256 passwords, read-only)"
            );
            let reporter = health.register(crate::components::sql::NAME, None);
            stages.push((Stage::Ingest, reporter.clone()));
            supervisor.spawn(Stage::Ingest, reporter, |ctx| sql.run(ctx));
        }
        if secure {
            tracing::info!(%addr, data_dir = %data_dir.display(), "collector listening (TLS, client certificates required)");
        } else {
            tracing::warn!(%addr, data_dir = %data_dir.display(), "collector listening WITHOUT TLS on loopback (--insecure-loopback): agents are trusted by the names they give");
        }

        let (stop_http, http_stop) = watch::channel(false);
        if let Some((addr, listener)) = metrics_listener {
            tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
            let endpoints = crate::metrics::endpoints(
                collector_metrics.clone(),
                health.clone(),
                counters.clone(),
                log.clone(),
                config.health.ready_max_lag,
            );
            tokio::spawn(otwatch_metrics::serve_endpoints(
                listener, endpoints, http_stop,
            ));
        }
        Ok(Service {
            addr,
            sql_addr,
            dashboard_addr,
            log,
            collector: collector_metrics,
            health,
            counters,
            data_dir,
            supervisor,
            stages,
            stop_http,
            _lock: lock,
        })
    }

    /// Alerts raised since start.
    pub fn alerts_raised(&self) -> u64 {
        self.counters.alerts_raised.load(Ordering::Relaxed)
    }

    /// True once the detector, the history writers and the outputs have
    /// processed everything in the log.
    pub fn caught_up(&self) -> bool {
        self.health.caught_up(self.log.as_ref())
    }

    fn stage_caught_up(&self, stage: Stage) -> bool {
        let log = self.log.as_ref();
        self.health
            .view(log)
            .iter()
            .filter(|c| {
                self.stages
                    .iter()
                    .any(|(s, r)| *s == stage && r.name() == c.name)
            })
            .all(|c| c.lag == 0)
    }

    /// Waits until [`caught_up`](Self::caught_up) holds, up to `timeout`.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.caught_up() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// A reader of the alerts raised from now on, for live displays.
    pub async fn tail_alerts(&self) -> anyhow::Result<AlertTail> {
        let mut consumer = self.log.consumer(Topic::Alerts, "live-tail").await?;
        consumer.seek(self.log.end_offset(Topic::Alerts));
        Ok(AlertTail { consumer })
    }

    /// The first component failure, once there is one.
    pub async fn failed(&mut self) -> Failure {
        self.supervisor.next_failure().await
    }

    /// Runs until `shutdown` completes (then stops cleanly, draining up to
    /// `drain` per stage) or a component fails (then stops at once and
    /// returns the failure, so the process exits non-zero).
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let failure = tokio::select! {
            _ = shutdown => None,
            failure = self.supervisor.next_failure() => Some(failure),
        };
        match failure {
            None => {
                tracing::info!("stopping");
                self.stop(drain).await
            }
            Some(failure) => {
                let _ = self.stop(Duration::from_secs(2)).await;
                Err(failure.into())
            }
        }
    }

    /// Stops ingest, lets the detector and then the writers and outputs
    /// finish what the log holds (up to `drain` each), then stops them.
    /// Returns the first component failure, if any happened.
    pub async fn stop(mut self, drain: Duration) -> anyhow::Result<()> {
        self.supervisor.begin_stop();
        self.supervisor
            .stop_stage(Stage::Ingest, Duration::from_secs(30))
            .await;
        for stage in [Stage::Detect, Stage::Output] {
            let deadline = Instant::now() + drain;
            while !self.stage_caught_up(stage) && Instant::now() < deadline {
                if self.supervisor_failed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !self.stage_caught_up(stage) {
                tracing::warn!(
                    ?stage,
                    "stopping before every component caught up; they resume from the event log at the next start"
                );
            }
            self.supervisor.stop_stage(stage, drain).await;
        }
        self.stop_http.send_replace(true);
        match self.supervisor.try_failure() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }

    fn supervisor_failed(&self) -> bool {
        self.health
            .view(self.log.as_ref())
            .iter()
            .any(|c| matches!(c.state, crate::health::State::Failed { .. }))
    }
}

/// Alerts as the detector appends them, read from the log.
pub struct AlertTail {
    consumer: Box<dyn Consumer>,
}

impl AlertTail {
    /// The next alerts, waiting up to `wait`; empty when none came.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Vec<Alert>> {
        let mut alerts = Vec::new();
        for d in self.consumer.poll(64, wait).await? {
            alerts.extend(otwatch_proto::arrow::batch_to_alerts(&d.batch)?);
        }
        Ok(alerts)
    }
}
