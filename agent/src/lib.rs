//! otwatch-agent: the edge side of otwatch.
//!
//! Sources read controller events; the disk queue numbers them and makes them
//! durable; the sender streams the queue to the collector over gRPC and trims
//! it only on the collector's durable acks. The agent never links Arrow,
//! DataFusion, linfa or rdkafka: it must stay small on a factory gateway.
//!
//! - [`config`]: `agent.toml`, every option documented;
//! - [`queue`]: the on-disk queue and its format;
//! - [`handle`]: the queue's async face shared by sources and sender;
//! - [`sender`]: batching, compression, acks, reconnects;
//! - [`dead_letter`]: events the collector refused, kept for an operator;
//! - [`source`]: the `file`, `sim` and protocol sources (what every
//!   source promises is written there); [`sim`]: the simulated site;
//! - [`tls`]: the client certificate and its identity check;
//! - [`metrics`]: the counters on a Prometheus `/metrics` endpoint.

pub mod sim;

pub mod config;
pub mod dead_letter;
pub mod handle;
pub mod metrics;
pub mod queue;
pub mod sender;
pub mod source;
pub mod tls;

use config::{AgentConfig, SourceConfig};
use handle::QueueHandle;
use queue::{DiskQueue, QueueMetrics};
use sender::{Sender, SenderMetrics};
use source::poll::DeviceMetrics;
use source::SourceMetrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

/// Live counters of a running agent.
#[derive(Clone)]
pub struct AgentMetrics {
    pub queue: Arc<QueueMetrics>,
    pub sender: Arc<SenderMetrics>,
    pub sources: Vec<Arc<SourceMetrics>>,
    /// Every device of a protocol source (modbus, slmp, mqtt broker, opcua
    /// server), labelled by source and device.
    pub devices: Vec<Arc<DeviceMetrics>>,
}

/// A snapshot of [`AgentMetrics`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AgentCounts {
    /// Events the sources handed to the queue.
    pub events_taken: u64,
    /// Inputs the sources refused (bad lines, broken limits).
    pub inputs_rejected: u64,
    /// Bytes of followed files lost to rotation (see [`source::file`]).
    pub rotation_bytes_lost: u64,
    /// Syslog messages dropped because their sender went over its rate.
    pub messages_rate_limited: u64,
    /// Syslog messages cut at `max_message_bytes`.
    pub messages_truncated: u64,
    /// Sparkplug metrics by an alias no birth announced, skipped.
    pub sparkplug_unknown_aliases: u64,
    /// Sparkplug `seq` gaps.
    pub sparkplug_seq_gaps: u64,
    /// Sparkplug NDEATH messages of an earlier session, ignored.
    pub sparkplug_stale_deaths: u64,
    /// Sparkplug metrics of a datatype the agent does not map, skipped.
    pub sparkplug_unsupported_metrics: u64,
    /// Highest sequence number the collector acked durably.
    pub acked_seq: u64,
    /// Last sequence number taken into the queue.
    pub last_seq: u64,
    /// Events dropped because the queue was full (`drop_oldest`).
    pub dropped: u64,
    /// Events lost to damaged queue segments.
    pub quarantined: u64,
    /// Events the collector had acked and later no longer held (its data
    /// was wiped): gone from the queue, they could not be sent again.
    pub lost_at_collector: u64,
    /// Events the collector refused (set aside in the dead-letter file).
    pub refused: u64,
    /// Refused events not kept in the dead-letter file (full or unwritable).
    pub refused_unstored: u64,
    /// Bytes in the dead-letter file.
    pub dead_letter_bytes: u64,
    /// Bytes in the queue.
    pub queue_bytes: u64,
    /// Successful connections (the first one included).
    pub connects: u64,
    /// Failed connections or broken streams.
    pub failures: u64,
    /// A stream to the collector is up.
    pub connected: bool,
}

impl AgentMetrics {
    pub fn snapshot(&self) -> AgentCounts {
        let r = Ordering::Relaxed;
        AgentCounts {
            events_taken: self.sources.iter().map(|s| s.events.load(r)).sum(),
            inputs_rejected: self.sources.iter().map(|s| s.rejected.load(r)).sum(),
            rotation_bytes_lost: self
                .sources
                .iter()
                .map(|s| s.rotation_bytes_lost.load(r))
                .sum(),
            messages_rate_limited: self.sources.iter().map(|s| s.rate_limited.load(r)).sum(),
            messages_truncated: self.sources.iter().map(|s| s.truncated.load(r)).sum(),
            sparkplug_unknown_aliases: self
                .sources
                .iter()
                .map(|s| s.sparkplug_unknown_aliases.load(r))
                .sum(),
            sparkplug_seq_gaps: self
                .sources
                .iter()
                .map(|s| s.sparkplug_seq_gaps.load(r))
                .sum(),
            sparkplug_stale_deaths: self
                .sources
                .iter()
                .map(|s| s.sparkplug_stale_deaths.load(r))
                .sum(),
            sparkplug_unsupported_metrics: self
                .sources
                .iter()
                .map(|s| s.sparkplug_unsupported.load(r))
                .sum(),
            acked_seq: self.queue.acked_seq.load(r),
            last_seq: self.queue.durable_seq.load(r),
            dropped: self.queue.dropped.load(r),
            quarantined: self.queue.quarantined.load(r),
            lost_at_collector: self.sender.lost_at_collector.load(r),
            refused: self.sender.refused.load(r),
            refused_unstored: self.sender.refused_unstored.load(r),
            dead_letter_bytes: self.sender.dead_letter_bytes.load(r),
            queue_bytes: self.queue.bytes.load(r),
            connects: self.sender.connects.load(r),
            failures: self.sender.failures.load(r),
            connected: self.sender.connected.load(r),
        }
    }
}

/// How often the agent logs its counters.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Logs the counters every [`STATUS_EVERY`], so losses and backlogs show in
/// the logs even without a metrics scraper.
async fn log_status(metrics: AgentMetrics, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATUS_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let c = metrics.snapshot();
        tracing::info!(
            taken = c.events_taken,
            unacked = c.last_seq.saturating_sub(c.acked_seq),
            queue_bytes = c.queue_bytes,
            rejected = c.inputs_rejected,
            rotation_bytes_lost = c.rotation_bytes_lost,
            dropped = c.dropped,
            quarantined = c.quarantined,
            lost_at_collector = c.lost_at_collector,
            refused = c.refused,
            refused_unstored = c.refused_unstored,
            connected = c.connected,
            "agent status"
        );
        for device in &metrics.devices {
            device.log_status();
        }
    }
}

/// The text of a panic's payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs one of the agent's tasks (a source, the sender) and reports on
/// `failed` when it fails, panics or ends by itself: the agent cannot go on
/// without it, and a process that stays up without delivering would look
/// healthy to its supervisor. The task runs in its own tokio task so that a
/// panic is caught here, through its join handle.
fn supervise(
    name: String,
    failed: &watch::Sender<Option<String>>,
    run: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let failed = failed.clone();
    let task = tokio::spawn(run);
    tokio::spawn(async move {
        let result = match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            tracing::error!(task = %name, error = %e, "agent task failed; the agent stops");
            failed.send_if_modified(|f| {
                f.get_or_insert_with(|| format!("{name}: {e}"));
                true
            });
        }
        result
    })
}

/// A running agent: its tasks and counters.
pub struct Agent {
    pub metrics: AgentMetrics,
    queue: QueueHandle,
    /// The first source failure, once there is one.
    failed: watch::Sender<Option<String>>,
    stop_sources: watch::Sender<bool>,
    stop_sender: watch::Sender<bool>,
    sources: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    sender: tokio::task::JoinHandle<Result<(), String>>,
}

impl Agent {
    /// Opens the queue and starts the sources and the sender.
    pub fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        use anyhow::Context;
        if let Some(tls) = &config.collector.tls {
            tls::check_identity(tls, &config.site, &config.agent).map_err(anyhow::Error::msg)?;
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let queue = DiskQueue::open(config.data_dir.join("queue"), config.queue.clone())
            .context("cannot open the queue")?;
        let queue = QueueHandle::new(queue);
        // File sources decide where to resume from what the queue held when
        // it opened, before any source appends again.
        let seq_at_open = queue.last_seq();
        let (stop_sources, stop) = watch::channel(false);
        let (stop_sender, sender_stop) = watch::channel(false);
        let span = tracing::info_span!("agent", site = %config.site, agent = %config.agent);
        let mut sources = Vec::new();
        let mut source_metrics = Vec::new();
        #[cfg_attr(
            not(any(
                feature = "modbus",
                feature = "slmp",
                feature = "mqtt",
                feature = "opcua"
            )),
            allow(unused_mut)
        )]
        let mut device_metrics: Vec<Arc<DeviceMetrics>> = Vec::new();
        let (failed, _) = watch::channel(None);
        for source in &config.sources {
            let metrics = Arc::new(SourceMetrics::default());
            source_metrics.push(metrics.clone());
            let task = match source.clone() {
                SourceConfig::Sim(sim) => supervise(
                    "source sim".into(),
                    &failed,
                    source::sim::run(
                        config.site.clone(),
                        sim,
                        queue.clone(),
                        metrics,
                        stop.clone(),
                    )
                    .instrument(span.clone()),
                ),
                SourceConfig::File(file) => supervise(
                    format!("source file {}", file.path.display()),
                    &failed,
                    source::file::run(
                        file,
                        seq_at_open,
                        config.data_dir.join("sources"),
                        config.limits.clone(),
                        queue.clone(),
                        metrics,
                        stop.clone(),
                    )
                    .instrument(span.clone()),
                ),
                #[cfg(feature = "modbus")]
                SourceConfig::Modbus(modbus) => {
                    let devices = source::modbus::device_metrics(&modbus);
                    device_metrics.extend(devices.iter().cloned());
                    supervise(
                        format!("source modbus ({} device(s))", modbus.devices.len()),
                        &failed,
                        source::modbus::run(
                            modbus,
                            config.limits.clone(),
                            queue.clone(),
                            metrics,
                            devices,
                            stop.clone(),
                        )
                        .instrument(span.clone()),
                    )
                }
                #[cfg(feature = "slmp")]
                SourceConfig::Slmp(slmp) => {
                    let devices = source::slmp::device_metrics(&slmp);
                    device_metrics.extend(devices.iter().cloned());
                    supervise(
                        format!("source slmp ({} device(s))", slmp.devices.len()),
                        &failed,
                        source::slmp::run(
                            slmp,
                            config.data_dir.join("sources"),
                            config.limits.clone(),
                            queue.clone(),
                            metrics,
                            devices,
                            stop.clone(),
                        )
                        .instrument(span.clone()),
                    )
                }
                #[cfg(feature = "mqtt")]
                SourceConfig::Mqtt(mqtt) => {
                    let devices = source::mqtt::device_metrics(&mqtt);
                    device_metrics.extend(devices.iter().cloned());
                    supervise(
                        format!("source mqtt ({})", mqtt.broker),
                        &failed,
                        source::mqtt::run(
                            mqtt,
                            config.limits.clone(),
                            queue.clone(),
                            metrics,
                            devices,
                            stop.clone(),
                        )
                        .instrument(span.clone()),
                    )
                }
                #[cfg(feature = "opcua")]
                SourceConfig::Opcua(opcua) => {
                    let devices = source::opcua::device_metrics(&opcua);
                    device_metrics.extend(devices.iter().cloned());
                    supervise(
                        format!("source opcua ({} server(s))", opcua.servers.len()),
                        &failed,
                        source::opcua::run(
                            opcua,
                            config.data_dir.join("sources"),
                            config.limits.clone(),
                            queue.clone(),
                            metrics,
                            devices,
                            stop.clone(),
                        )
                        .instrument(span.clone()),
                    )
                }
                #[cfg(feature = "syslog")]
                SourceConfig::Syslog(syslog) => supervise(
                    "source syslog".to_string(),
                    &failed,
                    source::syslog::run(
                        syslog,
                        config.limits.clone(),
                        queue.clone(),
                        metrics,
                        stop.clone(),
                    )
                    .instrument(span.clone()),
                ),
                #[cfg(not(all(
                    feature = "modbus",
                    feature = "slmp",
                    feature = "syslog",
                    feature = "mqtt",
                    feature = "opcua"
                )))]
                #[allow(unreachable_patterns)]
                _ => anyhow::bail!("a source of a protocol this build left out (see --check)"),
            };
            sources.push(task);
        }
        let dead_letter =
            dead_letter::DeadLetter::open(&config.data_dir, config.dead_letter_max_bytes)?;
        let sender_metrics = Arc::new(SenderMetrics::default());
        sender_metrics
            .dead_letter_bytes
            .store(dead_letter.bytes(), Ordering::Relaxed);
        let sender = Sender {
            config: config.collector.clone(),
            site: config.site.clone(),
            agent: config.agent.clone(),
            max_message_bytes: config.limits.max_message_bytes,
            queue: queue.clone(),
            metrics: sender_metrics.clone(),
            seq_offset_path: config.data_dir.join("seq_offset"),
            dead_letter: Arc::new(std::sync::Mutex::new(dead_letter)),
        };
        let sender = {
            let stop = sender_stop.clone();
            supervise(
                "sender".into(),
                &failed,
                async move {
                    sender.run(stop.clone()).await;
                    if *stop.borrow() {
                        Ok(())
                    } else {
                        Err("stopped sending although the agent is running".into())
                    }
                }
                .instrument(span.clone()),
            )
        };
        let metrics = AgentMetrics {
            queue: queue.metrics(),
            sender: sender_metrics,
            sources: source_metrics,
            devices: device_metrics,
        };
        if let Some(addr) = config.metrics_listen {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .and_then(tokio::net::TcpListener::from_std)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                config.site.clone(),
                config.agent.clone(),
                sender_stop.clone(),
            ));
        }
        tokio::spawn(log_status(metrics.clone(), sender_stop).instrument(span));
        Ok(Agent {
            metrics,
            queue,
            failed,
            stop_sources,
            stop_sender,
            sources,
            sender,
        })
    }

    /// Resolves when a task of the agent has failed for good, with the
    /// reason: a source (its queue stopped after a disk failure, its
    /// checkpoint cannot be written), or the sender or a source that
    /// panicked or ended on its own. The binary then exits non-zero so that
    /// its supervisor restarts it: the queue and the checkpoints recover
    /// from what is on disk.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        let reason = rx.wait_for(Option::is_some).await;
        reason
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "the agent's tasks are gone".into())
    }

    /// Last sequence number taken into the queue.
    pub fn last_seq(&self) -> u64 {
        self.queue.last_seq()
    }

    /// Stops the sources, then waits up to `drain` for the collector to ack
    /// everything queued before stopping the sender. What is not acked stays
    /// in the queue for the next start.
    pub async fn stop(self, drain: std::time::Duration) -> anyhow::Result<AgentCounts> {
        self.stop_sources.send_replace(true);
        let mut errors = Vec::new();
        for task in self.sources {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let last = self.queue.last_seq();
        if tokio::time::timeout(drain, self.queue.wait_acked(last))
            .await
            .is_err()
        {
            tracing::warn!(
                unacked = last.saturating_sub(self.queue.acked()),
                "stopping with events not yet acked; they stay queued for the next start"
            );
        }
        self.stop_sender.send_replace(true);
        match self.sender.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("sender: {e}")),
            Err(e) => errors.push(format!("sender: {e}")),
        }
        if !errors.is_empty() {
            anyhow::bail!("agent tasks failed: {}", errors.join("; "));
        }
        Ok(self.metrics.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stopped_queue_fails_the_agent_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let line =
            format!(r#"{{"asset":"a","kind":"CYCLE","name":"cycle","ts_ns":{now},"value":1}}"#);
        std::fs::write(&events, format!("{line}\n")).unwrap();
        let text = format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {:?}\n\
             [collector]\nurl = \"http://127.0.0.1:9\"\n\
             [[sources]]\ntype = \"file\"\npath = {:?}\npoll_interval = \"10ms\"\n",
            dir.path().join("data").display().to_string(),
            events.display().to_string()
        );
        let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while agent.last_seq() < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was not taken"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        agent.queue.queue.lock().unwrap().fail_next_sync = true;
        std::fs::write(&events, format!("{line}\n{line}\n")).unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(10), agent.failed())
            .await
            .expect("the agent went on after its queue stopped");
        assert!(reason.contains("source file"), "{reason}");
        assert!(reason.contains("queue stopped"), "{reason}");
        assert!(agent.stop(Duration::from_millis(10)).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_sender_fails_the_agent_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        // One event waits in the queue, and a real collector is bound now
        // but served only once the queue is broken, so that the sender's
        // first use of the queue (reading that event after the greeting)
        // is what panics.
        let mut queue = DiskQueue::open(dir.path().join("data/queue"), Default::default()).unwrap();
        queue
            .append(&mut [otwatch_proto::ControllerEvent {
                ts_ns: 1,
                asset: "a".into(),
                kind: otwatch_proto::EventKind::Cycle as i32,
                ..Default::default()
            }])
            .unwrap();
        drop(queue);
        let log = Arc::new(
            otwatch_eventlog::LocalLog::open(dir.path().join("log"), Default::default()).unwrap(),
        );
        let collector = otwatch_collector::Collector::new(log, Default::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {:?}\n\
             [collector]\nurl = \"http://{addr}\"\n\
             [[sources]]\ntype = \"file\"\npath = {:?}\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("absent.jsonl").display().to_string()
        );
        let agent = Agent::start(AgentConfig::parse(&text, "test").unwrap()).unwrap();
        // A panic while the queue's lock is held poisons it: every later
        // use of the queue panics.
        let queue = agent.queue.queue.clone();
        let _ = std::thread::spawn(move || {
            let _held = queue.lock().unwrap();
            panic!("injected panic under the queue lock");
        })
        .join();
        tokio::spawn(collector.serve(listener, None, std::future::pending()));
        let reason = tokio::time::timeout(Duration::from_secs(30), agent.failed())
            .await
            .expect("the agent went on after its sender panicked");
        assert!(reason.starts_with("sender: panicked"), "{reason}");
        assert!(agent.stop(Duration::from_millis(10)).await.is_err());
    }
}
