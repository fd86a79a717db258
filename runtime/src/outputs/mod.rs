//! Alert outputs: components that read the `alerts` topic of the event log
//! and hand each alert to a receiver: standard output, a JSON-lines file, a
//! SIEM over syslog (CEF or RFC 5424), a webhook, Splunk's HTTP Event
//! Collector, a Kafka topic. Each type that talks to a receiver has its own
//! folder (`config.rs`, the output in `mod.rs`, `tests.rs` against a real
//! receiver).
//!
//! Every output is its own consumer of the log (group `output-<name>`), so
//! it resumes on its own after a restart and never holds up detection or
//! the other outputs. The contract each output keeps:
//! - **at least once**: the output's offset is committed only after the
//!   receiver took the alerts; a crash in between delivers them again,
//!   with the same alert ids, so a receiver can drop repeats;
//! - a receiver that fails is retried with backoff, and the output shows
//!   `retrying` with the cause in `/healthz` meanwhile; its backlog waits in
//!   the log (the log keeps what any consumer has not committed);
//! - a new output starts at the oldest alert the log holds;
//! - alerts marked `suppressed` are not sent; a change of state of an alert
//!   (`acked`, `resolved`) is sent as the alert again, with the same id and
//!   its new state (see [`format`]);
//! - secrets (tokens, HMAC keys) come from files or environment variables
//!   ([`secret`]), TLS keys from files ([`tls`]); none is in the config
//!   text, its `Debug` or the logs;
//! - figures per output for `/metrics` ([`stats`]): alerts delivered,
//!   failed attempts, retrying now, lag.

mod format;
mod http;
mod jsonl;
pub mod kafka;
pub mod secret;
pub mod splunk_hec;
pub mod stats;
mod stdout;
pub mod syslog;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod webhook;

pub use format::{alert_from_json, alert_json, alert_line, attack_ics, format_ts, is_update};

use crate::health::Backoff;
use crate::retry_transient;
use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_eventlog::{EventLog, LogError, Topic};
use otwatch_proto::Alert;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// One `[[outputs]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// One readable line per alert on standard output.
    Stdout(stdout::StdoutConfig),
    /// One JSON object per alert and line, appended to a file.
    Jsonl(jsonl::JsonlConfig),
    /// CEF or RFC 5424 records to a SIEM over UDP, TCP or TLS.
    Syslog(syslog::SyslogConfig),
    /// One HTTP POST of JSON per alert, signed with HMAC-SHA256.
    Webhook(webhook::WebhookConfig),
    /// Batches of events to Splunk's HTTP Event Collector.
    SplunkHec(splunk_hec::SplunkHecConfig),
    /// One message per alert on a Kafka topic.
    Kafka(kafka::KafkaConfig),
}

impl OutputConfig {
    /// The output's name: its `name` option, or its type.
    pub fn name(&self) -> &str {
        match self {
            OutputConfig::Stdout(c) => c.name.as_deref().unwrap_or("stdout"),
            OutputConfig::Jsonl(c) => c.name.as_deref().unwrap_or("jsonl"),
            OutputConfig::Syslog(c) => c.name.as_deref().unwrap_or("syslog"),
            OutputConfig::Webhook(c) => c.name.as_deref().unwrap_or("webhook"),
            OutputConfig::SplunkHec(c) => c.name.as_deref().unwrap_or("splunk_hec"),
            OutputConfig::Kafka(c) => c.name.as_deref().unwrap_or("kafka"),
        }
    }

    /// The consumer group under which it reads the alerts topic.
    pub fn group(&self) -> String {
        format!("output-{}", self.name())
    }

    /// Opens the receiver. Relative paths are under `data_dir`.
    pub fn open(&self, data_dir: &Path) -> anyhow::Result<Box<dyn AlertOutput>> {
        Ok(match self {
            OutputConfig::Stdout(_) => Box::new(stdout::Stdout),
            OutputConfig::Jsonl(c) => Box::new(jsonl::Jsonl::open(resolve(data_dir, &c.path))?),
            OutputConfig::Syslog(c) => Box::new(syslog::Syslog::open(self.name(), c)?),
            OutputConfig::Webhook(c) => Box::new(webhook::Webhook::open(self.name(), c)?),
            OutputConfig::SplunkHec(c) => Box::new(splunk_hec::SplunkHec::open(self.name(), c)?),
            OutputConfig::Kafka(c) => Box::new(kafka::Kafka::open(self.name(), c)?),
        })
    }
}

fn resolve(data_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        data_dir.join(path)
    }
}

/// The outputs when the config gives none: standard output and
/// `alerts.jsonl` in the data directory.
pub fn default_outputs() -> Vec<OutputConfig> {
    vec![
        OutputConfig::Stdout(stdout::StdoutConfig::default()),
        OutputConfig::Jsonl(jsonl::JsonlConfig::default()),
    ]
}

/// Checks the `[[outputs]]` list: names unique (each names a consumer
/// group), options usable.
pub fn validate(outputs: &[OutputConfig]) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for output in outputs {
        let name = output.name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!("outputs: name {name:?} must be letters, digits, '-' or '_'");
        }
        if !names.insert(name.to_string()) {
            anyhow::bail!(
                "outputs: two outputs are named {name:?}; give each of them its own `name`"
            );
        }
        let checked = match output {
            OutputConfig::Stdout(_) => Ok(()),
            OutputConfig::Jsonl(c) if c.path.as_os_str().is_empty() => {
                Err(format!("outputs.{name}: path is empty"))
            }
            OutputConfig::Jsonl(_) => Ok(()),
            OutputConfig::Syslog(c) => c.check(name),
            OutputConfig::Webhook(c) => c.check(name).map(|_| ()),
            OutputConfig::SplunkHec(c) => c.check(name).map(|_| ()),
            OutputConfig::Kafka(c) => c.check(name),
        };
        checked.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// It may work later (a full disk, a receiver that is down): retried.
    #[error("{0}")]
    Transient(String),
}

/// A receiver of alerts.
#[async_trait::async_trait]
pub trait AlertOutput: Send {
    /// Hands `alerts` to the receiver; `Ok` once it has taken all of them.
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError>;
}

/// Alerts read per delivery, at most.
const RECORDS_PER_POLL: usize = 64;

/// Runs one output: reads the alerts topic from its committed offset,
/// delivers, commits. See the module docs for the contract.
pub async fn run(
    mut output: Box<dyn AlertOutput>,
    log: Arc<dyn EventLog>,
    group: String,
    mut ctx: Context,
) -> anyhow::Result<()> {
    let mut consumer = log
        .consumer(Topic::Alerts, &group)
        .await
        .with_context(|| format!("cannot open consumer group {group}"))?;
    let name = group.strip_prefix("output-").unwrap_or(&group);
    let stats = stats::register(name, ctx.reporter.clone());
    ctx.reporter.set_position(consumer.position());
    ctx.reporter.opened();
    ctx.reporter.running();
    let mut backoff = Backoff::default();
    let log_transient = |e: &LogError| matches!(e, LogError::Io { .. } | LogError::Fs(_));
    loop {
        let stopping = ctx.stopping();
        let wait = if stopping {
            Duration::ZERO
        } else {
            Duration::from_millis(250)
        };
        let polled = retry_transient!(
            ctx,
            backoff,
            "cannot read the alerts topic",
            log_transient,
            consumer.poll(RECORDS_PER_POLL, wait).await
        );
        let Some(got) = polled.context("cannot read the alerts topic")? else {
            return Ok(());
        };
        if got.is_empty() {
            if stopping {
                return Ok(());
            }
            continue;
        }
        let next = consumer.position();
        let mut alerts = Vec::new();
        for d in &got {
            // One unreadable record must not stop the output for good.
            match otwatch_proto::arrow::batch_to_alerts(&d.batch) {
                Ok(more) => alerts.extend(more),
                Err(e) => tracing::error!(
                    offset = d.offset,
                    error = %e,
                    "a record of the alerts topic is not alerts: skipped"
                ),
            }
        }
        // Suppressed alerts are stored (the history reads the same topic)
        // but never sent.
        alerts.retain(|a| a.state != otwatch_proto::arrow::state::SUPPRESSED);
        // Not committed until delivered: a stop while the receiver fails
        // delivers these again at the next start.
        if !alerts.is_empty() {
            let delivered = retry_transient!(
                ctx,
                backoff,
                "cannot deliver",
                |_: &OutputError| {
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    true
                },
                output.deliver(&alerts).await
            );
            if delivered?.is_none() {
                return Ok(());
            }
        }
        stats
            .delivered
            .fetch_add(alerts.len() as u64, Ordering::Relaxed);
        let committed = retry_transient!(
            ctx,
            backoff,
            format!("cannot commit offset {next}"),
            log_transient,
            consumer.commit(next).await
        );
        if committed
            .context("cannot commit the output's offset")?
            .is_none()
        {
            return Ok(());
        }
        backoff.reset();
        ctx.reporter.set_position(next);
        ctx.reporter.running();
    }
}
