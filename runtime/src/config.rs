//! `otwatch.toml`, the central service's configuration. This struct is its
//! reference: every option is documented, has a default, and unknown keys are
//! refused by name. Command-line flags override the file.
//!
//! Every command that runs a part of the service reads it through
//! [`ServerConfig::load`] (or checks a built one with
//! [`ServerConfig::validate`]), so a value one command refuses is refused by
//! all of them, before anything starts.
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

use crate::outputs::OutputConfig;
use anyhow::Context;
use otwatch_collector::CollectorConfig;
use otwatch_detector::DetectorConfig;
use otwatch_eventlog::LocalLogConfig;
use otwatch_pgwire::SqlEndpointConfig;
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
    /// Where alerts go besides the `alerts` table, one `[[outputs]]` table
    /// each. Default: `stdout` and `jsonl` to `alerts.jsonl`. Giving any
    /// replaces the defaults.
    pub outputs: Vec<OutputConfig>,
    /// Address for the HTTP endpoint with Prometheus `GET /metrics` (ingest
    /// counters, each component's state and lag), `GET /healthz` and
    /// `GET /readyz`, e.g. "127.0.0.1:9464". Default: none.
    pub metrics_listen: Option<SocketAddr>,
    /// What `/readyz` requires.
    pub health: HealthConfig,
    /// Address of the Postgres wire endpoint where analysts connect with
    /// psql, Grafana, DBeaver or psycopg, e.g. "0.0.0.0:5432"; configured
    /// in `[sql]`. Default: none (off).
    pub sql_listen: Option<SocketAddr>,
    /// The Postgres wire endpoint: users, TLS, limits (see
    /// `otwatch_pgwire::SqlEndpointConfig`).
    pub sql: SqlEndpointConfig,
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
            outputs: crate::outputs::default_outputs(),
            metrics_listen: None,
            health: HealthConfig::default(),
            sql_listen: None,
            sql: SqlEndpointConfig::default(),
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
    /// Merging the small files of closed hours (`[history.compaction]`).
    pub compaction: otwatch_history::CompactionConfig,
    /// Partitions (hours) that ended longer ago than this are dropped
    /// whole, e.g. "400d". Default: none (everything is kept).
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            flush_interval: Duration::from_secs(2),
            flush_rows: 500_000,
            compaction: otwatch_history::CompactionConfig::default(),
            retention: None,
        }
    }
}

/// The `[health]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `/readyz` answers 503 while any consumer of the event log (history
    /// writers, detector, alert outputs) is more than this many records
    /// behind the end of its topic. A record is one ingested batch.
    pub ready_max_lag: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            ready_max_lag: 10_000,
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

    /// Reads a configuration file and checks it ([`validate`](Self::validate)
    /// without the transport check, which depends on command-line flags).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid otwatch config", path.display()))?;
        config
            .validate_values()
            .with_context(|| format!("{} is not a valid otwatch config", path.display()))?;
        Ok(config)
    }

    /// Checks every value a component cannot work with, and that ingest is
    /// secured ([`check_transport`](Self::check_transport)). Each error names
    /// the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_values()?;
        self.check_transport()
    }

    fn validate_values(&self) -> anyhow::Result<()> {
        self.collector.validate().map_err(anyhow::Error::msg)?;
        self.detector
            .validate()
            .map_err(|e| anyhow::anyhow!("[detector]: {e}"))?;
        self.log
            .validate()
            .map_err(|e| anyhow::anyhow!("[log]: {e}"))?;
        if self.history.flush_interval.is_zero() {
            anyhow::bail!("history.flush_interval must be longer than 0");
        }
        if self.history.flush_rows == 0 {
            anyhow::bail!("history.flush_rows must be at least 1");
        }
        self.history.compaction.validate()?;
        if self
            .history
            .retention
            .is_some_and(|r| r < Duration::from_secs(3600))
        {
            anyhow::bail!("history.retention must be at least 1h (it drops whole hours)");
        }
        crate::outputs::validate(&self.outputs)?;
        self.sql.validate(self.sql_listen)?;
        Ok(())
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
        assert_eq!(c.history.retention, None);
        assert!(c.history.compaction.enabled);
        let c: ServerConfig = toml::from_str(
            "[history]\nretention = \"400d\"\n[history.compaction]\ngrace = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(c.history.retention, Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(c.history.compaction.grace, Duration::from_secs(300));
        let err = toml::from_str::<ServerConfig>("[history.compaction]\ntarget = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `target`"), "{err}");
        c.validate_values().unwrap();
    }

    #[test]
    fn values_no_component_can_work_with_are_refused_by_name() {
        let refused = |text: &str| {
            let c: ServerConfig = toml::from_str(text).unwrap();
            format!("{:#}", c.validate_values().unwrap_err())
        };
        assert!(refused("[collector]\nmax_connections = 0\n").contains("max_connections"));
        assert!(refused("[collector.limits]\nmax_events_per_batch = 0\n")
            .contains("collector.limits.max_events_per_batch = 0"));
        assert!(refused("[detector]\ncusum_h = 0\n").contains("cusum_h"));
        assert!(refused("[history]\nflush_rows = 0\n").contains("flush_rows"));
        assert!(refused("[history]\nretention = \"10m\"\n").contains("history.retention"));
        assert!(refused("[history.compaction]\ntarget_file_bytes = 1000\n")
            .contains("history.compaction.target_file_bytes"));
        assert!(refused("[history.compaction]\ninterval = \"0s\"\n")
            .contains("history.compaction.interval"));
        assert!(refused("[log]\nretention = \"0s\"\n").contains("retention"));
        assert!(refused("[[outputs]]\ntype = \"jsonl\"\npath = \"\"\n").contains("path"));
        assert!(refused("[sql]\nmax_rows = 0\n").contains("sql.max_rows"));
        assert!(refused("sql_listen = \"0.0.0.0:5432\"\n").contains("sql_listen"));
    }

    #[test]
    fn serve_refuses_plaintext_off_loopback() {
        let mut c = ServerConfig {
            listen: "0.0.0.0:4317".parse().unwrap(),
            ..ServerConfig::default()
        };
        assert!(c.validate().is_err());
        c.insecure_loopback = true;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        c.listen = "127.0.0.1:4317".parse().unwrap();
        c.validate().unwrap();
    }
}
