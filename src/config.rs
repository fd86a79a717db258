//! `otwatch.toml`, the central service's configuration. This struct is its
//! reference: every option is documented, has a default, and unknown keys are
//! refused by name. Command-line flags override the file.
//!
//! ```toml
//! data_dir = "/var/lib/otwatch"
//! listen = "127.0.0.1:4317"
//!
//! [collector.limits]
//! max_events_per_batch = 10000
//!
//! [detector]
//! learn = "1d"
//! ```

use anyhow::Context;
use otwatch_collector::CollectorConfig;
use otwatch_detector::DetectorConfig;
use otwatch_eventlog::LocalLogConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole central configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the event log, the Parquet history and detector checkpoints live.
    pub data_dir: PathBuf,
    /// Address of the gRPC ingest port agents connect to.
    pub listen: SocketAddr,
    /// Ingest: limits on what agents may send.
    pub collector: CollectorConfig,
    /// The embedded event log.
    pub log: LocalLogConfig,
    /// The anomaly detector.
    pub detector: DetectorConfig,
    /// The Parquet history.
    pub history: HistoryConfig,
    /// Where alerts go besides the `alerts` table.
    pub alerts: AlertSinkConfig,
    /// Address for a Prometheus `GET /metrics` endpoint (and `GET /healthz`)
    /// with ingest counters and how far the detector and history are
    /// behind, e.g. "127.0.0.1:9464". Default: none.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve plaintext gRPC (agents name themselves with headers) when
    /// `[collector.tls]` is absent. Only ever set from the command line
    /// (`--insecure-loopback`) or by the demo, never from a file, and only
    /// honoured when `listen` is a loopback address.
    #[serde(skip)]
    pub insecure_loopback: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("otwatch-data"),
            listen: "127.0.0.1:4317".parse().unwrap(),
            collector: CollectorConfig::default(),
            log: LocalLogConfig::default(),
            detector: DetectorConfig::default(),
            history: HistoryConfig::default(),
            alerts: AlertSinkConfig::default(),
            metrics_listen: None,
            insecure_loopback: false,
        }
    }
}

/// History writer settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Longest time between an event reaching the log and being queryable
    /// with SQL. Shorter means more, smaller Parquet files.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows that trigger a flush before `flush_interval` is up.
    pub flush_rows: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            flush_interval: Duration::from_secs(2),
            flush_rows: 500_000,
        }
    }
}

/// Alert outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSinkConfig {
    /// Print one readable line per alert on standard output.
    pub stdout: bool,
    /// Append every alert as one JSON object per line to this file
    /// (relative paths are under `data_dir`). Empty: no file.
    pub jsonl_file: Option<PathBuf>,
}

impl Default for AlertSinkConfig {
    fn default() -> Self {
        AlertSinkConfig {
            stdout: true,
            jsonl_file: Some(PathBuf::from("alerts.jsonl")),
        }
    }
}

impl ServerConfig {
    /// Checks that ingest is secured: TLS configured, or plaintext explicitly
    /// allowed on a loopback address.
    pub fn check_transport(&self) -> anyhow::Result<()> {
        if self.collector.tls.is_some() {
            return Ok(());
        }
        if !self.insecure_loopback {
            anyhow::bail!(
                "refusing to accept agents without TLS. Create certificates and configure them:\n\
                 \x20 otwatch cert init --dir pki\n\
                 \x20 otwatch cert issue --dir pki --collector $(hostname -f)\n\
                 \x20 otwatch cert issue --dir pki --site SITE --agent AGENT   (one per agent)\n\
                 then in otwatch.toml:\n\
                 \x20 [collector.tls]\n\
                 \x20 cert = \"pki/collector.pem\"\n\
                 \x20 key = \"pki/collector-key.pem\"\n\
                 \x20 client_ca = \"pki/ca.pem\"\n\
                 (for a local trial only: --insecure-loopback with a loopback --listen address)"
            );
        }
        if !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "--insecure-loopback only works on a loopback address, not {}: configure [collector.tls] to listen on other interfaces",
                self.listen
            );
        }
        Ok(())
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid otwatch config", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\ndatadir = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `datadir`"), "{err}");
        let err = toml::from_str::<ServerConfig>("[collector.limits]\nmax_event = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_event`"), "{err}");
    }

    #[test]
    fn an_empty_file_is_a_working_config() {
        let c: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen.port(), 4317);
        assert_eq!(c.history.flush_interval, Duration::from_secs(2));
    }
}
