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
use otwatch_eventlog::{KafkaLogConfig, KafkaSecurity, LocalLogConfig};
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
    /// The event log: local segments (default) or Kafka (`[log]`).
    pub log: LogConfig,
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
    /// Address of the SOC dashboard (pages and their JSON API), e.g.
    /// "0.0.0.0:8443"; configured in `[dashboard]` (accounts, TLS).
    /// Default: none (off).
    pub dashboard_listen: Option<SocketAddr>,
    /// The dashboard: accounts with roles and sites, TLS, sign-in limits
    /// (see `otwatch_runtime::dashboard::DashboardConfig`).
    pub dashboard: crate::dashboard::DashboardConfig,
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
            log: LogConfig::default(),
            detector: DetectorConfig::default(),
            history: HistoryConfig::default(),
            outputs: crate::outputs::default_outputs(),
            metrics_listen: None,
            health: HealthConfig::default(),
            sql_listen: None,
            sql: SqlEndpointConfig::default(),
            dashboard_listen: None,
            dashboard: Default::default(),
            insecure_loopback: false,
        }
    }
}

/// Which event log the components share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// Segment files under `data_dir`: one process (`otwatch serve`).
    #[default]
    Local,
    /// Topics of a Kafka cluster: the roles may run on separate machines.
    Kafka,
}

/// The `[log]` section: the event log between ingest and everything
/// downstream. `segment_bytes` is for the local log only, the Kafka options
/// for `kind = "kafka"` only; `retention` is for both.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"local"` (default): segment files under `data_dir`, shared by the
    /// components of `otwatch serve` in one process. `"kafka"`: topics of a
    /// Kafka cluster, so that `otwatch collector`, `otwatch detector` and
    /// `otwatch history` can run (and scale) on separate machines.
    pub kind: LogKind,
    /// Local log: a segment is closed and a new one started once it reaches
    /// this size, in bytes.
    pub segment_bytes: u64,
    /// How long records are kept. Local log: a closed segment is deleted
    /// once all its records are older than this and every consumer has
    /// committed past it. Kafka: `retention.ms` of the topics otwatch
    /// creates (existing topics keep theirs); make it at least the longest
    /// outage of a consumer you want to survive.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Kafka: bootstrap brokers, e.g. `["kafka-0.kafka:9092"]`. Required
    /// with `kind = "kafka"`.
    pub brokers: Option<Vec<String>>,
    /// Kafka: topic of controller events. Default `otwatch-events`.
    pub events_topic: Option<String>,
    /// Kafka: topic of alerts. Default `otwatch-alerts`.
    pub alerts_topic: Option<String>,
    /// Kafka: topic of SOC decisions (one partition). Default
    /// `otwatch-control`.
    pub control_topic: Option<String>,
    /// Kafka: compacted topic of each agent's highest stored sequence, read
    /// by every collector. Default `otwatch-producers`.
    pub producers_topic: Option<String>,
    /// Kafka: partitions of the topics otwatch creates; detectors and history
    /// writers scale up to this many instances. Default 12.
    pub partitions: Option<i32>,
    /// Kafka: replication factor of the topics otwatch creates. Default: the
    /// broker's `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Kafka: client id the brokers see. Default `otwatch`.
    pub client_id: Option<String>,
    /// Kafka: largest message otwatch writes (longer records are chunked);
    /// keep it below the brokers' `message.max.bytes`. Default 900000.
    pub max_record_bytes: Option<usize>,
    /// Kafka: how long a produce, metadata request or commit may take.
    /// Default "30s".
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Kafka: how long a consumer group waits for a member that stopped
    /// answering (a killed detector) before its partitions move to the
    /// others; at least 6s. Default "10s".
    #[serde(with = "humantime_serde")]
    pub session_timeout: Option<Duration>,
    /// Kafka: TLS and SASL (`[log.security]`). Default: plaintext.
    pub security: Option<LogSecurity>,
}

impl Default for LogConfig {
    fn default() -> Self {
        let local = LocalLogConfig::default();
        LogConfig {
            kind: LogKind::Local,
            segment_bytes: local.segment_bytes,
            retention: local.retention,
            brokers: None,
            events_topic: None,
            alerts_topic: None,
            control_topic: None,
            producers_topic: None,
            partitions: None,
            replication_factor: None,
            client_id: None,
            max_record_bytes: None,
            timeout: None,
            session_timeout: None,
            security: None,
        }
    }
}

/// `[log.security]`: how otwatch authenticates to Kafka. Secrets come from
/// a file or an environment variable, never from this file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Option<String>,
    /// CA bundle (PEM) that signs the brokers' certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that authenticate clients by TLS.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// File holding the SASL password.
    pub sasl_password_file: Option<PathBuf>,
    /// Environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
}

impl LogConfig {
    /// The local log's settings.
    pub fn local(&self) -> LocalLogConfig {
        LocalLogConfig {
            segment_bytes: self.segment_bytes,
            retention: self.retention,
        }
    }

    /// The Kafka log's settings, with the SASL password read from its file
    /// or variable. Errors name the option.
    pub fn kafka(&self) -> Result<KafkaLogConfig, String> {
        let d = KafkaLogConfig::default();
        let security = match &self.security {
            None => KafkaSecurity::default(),
            Some(s) => KafkaSecurity {
                protocol: s.protocol.clone(),
                ca_file: s.ca_file.clone(),
                cert_file: s.cert_file.clone(),
                key_file: s.key_file.clone(),
                sasl_mechanism: s.sasl_mechanism.clone(),
                sasl_username: s.sasl_username.clone(),
                sasl_password: crate::outputs::secret::load_option(
                    "log.security",
                    "sasl_password",
                    s.sasl_password_file.as_ref(),
                    s.sasl_password_env.as_ref(),
                )?
                .map(|p| p.expose().to_string()),
            },
        };
        let config = KafkaLogConfig {
            brokers: self.brokers.clone().unwrap_or_default(),
            events_topic: self.events_topic.clone().unwrap_or(d.events_topic),
            alerts_topic: self.alerts_topic.clone().unwrap_or(d.alerts_topic),
            control_topic: self.control_topic.clone().unwrap_or(d.control_topic),
            producers_topic: self.producers_topic.clone().unwrap_or(d.producers_topic),
            partitions: self.partitions.unwrap_or(d.partitions),
            replication_factor: self.replication_factor,
            client_id: self.client_id.clone().unwrap_or(d.client_id),
            max_record_bytes: self.max_record_bytes.unwrap_or(d.max_record_bytes),
            timeout: self.timeout.unwrap_or(d.timeout),
            session_timeout: self.session_timeout.unwrap_or(d.session_timeout),
            retention: Some(self.retention),
            security,
        };
        config.validate()?;
        if config.security.sasl_username.is_some() && config.security.sasl_password.is_none() {
            return Err(
                "security: sasl_password_file or sasl_password_env is required with a SASL user"
                    .into(),
            );
        }
        Ok(config)
    }

    /// Names of the Kafka options that are set.
    fn kafka_options_set(&self) -> Vec<&'static str> {
        let set = [
            ("brokers", self.brokers.is_some()),
            ("events_topic", self.events_topic.is_some()),
            ("alerts_topic", self.alerts_topic.is_some()),
            ("control_topic", self.control_topic.is_some()),
            ("producers_topic", self.producers_topic.is_some()),
            ("partitions", self.partitions.is_some()),
            ("replication_factor", self.replication_factor.is_some()),
            ("client_id", self.client_id.is_some()),
            ("max_record_bytes", self.max_record_bytes.is_some()),
            ("timeout", self.timeout.is_some()),
            ("session_timeout", self.session_timeout.is_some()),
            ("security", self.security.is_some()),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| n)
            .collect()
    }

    /// Checks the section, naming the option.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind {
            LogKind::Local => {
                let set = self.kafka_options_set();
                if !set.is_empty() {
                    return Err(format!(
                        "{} apply to kind = \"kafka\" only (kind is \"local\")",
                        set.join(", ")
                    ));
                }
                self.local().validate()
            }
            LogKind::Kafka => {
                if self.segment_bytes != LocalLogConfig::default().segment_bytes {
                    return Err("segment_bytes applies to kind = \"local\" only".into());
                }
                if self.retention.is_zero() {
                    return Err("retention must be longer than 0 (e.g. \"7d\")".into());
                }
                self.kafka().map(|_| ())
            }
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
        self.dashboard.validate(self.dashboard_listen)?;
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
    fn the_log_section_picks_local_or_kafka_and_refuses_mixed_options() {
        let c: ServerConfig = toml::from_str("[log]\nretention = \"3d\"\n").unwrap();
        assert_eq!(c.log.kind, LogKind::Local);
        assert_eq!(c.log.local().retention, Duration::from_secs(3 * 86_400));
        c.validate_values().unwrap();

        let refused = |text: &str| {
            let c: ServerConfig = toml::from_str(text).unwrap();
            format!("{:#}", c.validate_values().unwrap_err())
        };
        assert!(refused("[log]\nbrokers = [\"k:9092\"]\n")
            .contains("brokers apply to kind = \"kafka\" only"));
        assert!(refused("[log]\nkind = \"kafka\"\n").contains("brokers"));
        assert!(
            refused("[log]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\npartitions = 0\n")
                .contains("partitions")
        );
        assert!(
            refused("[log]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\nsegment_bytes = 8192\n")
                .contains("segment_bytes")
        );
        let err = toml::from_str::<ServerConfig>("[log]\nkind = \"kafka\"\nbroker = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `broker`"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("kafka-password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let text = format!(
            "[log]\nkind = \"kafka\"\nbrokers = [\"k1:9092\", \"k2:9092\"]\npartitions = 24\n\
             events_topic = \"plant-events\"\n[log.security]\nprotocol = \"sasl_plaintext\"\n\
             sasl_mechanism = \"PLAIN\"\nsasl_username = \"otwatch\"\nsasl_password_file = {:?}\n",
            password.display().to_string()
        );
        let c: ServerConfig = toml::from_str(&text).unwrap();
        c.validate_values().unwrap();
        let kafka = c.log.kafka().unwrap();
        assert_eq!(kafka.brokers, vec!["k1:9092", "k2:9092"]);
        assert_eq!(kafka.partitions, 24);
        assert_eq!(kafka.events_topic, "plant-events");
        assert_eq!(kafka.alerts_topic, "otwatch-alerts");
        assert_eq!(kafka.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(kafka.security.sasl_password.as_deref(), Some("s3cret"));
        std::fs::remove_file(&password).unwrap();
        assert!(refused(&text).contains("log.security.sasl_password_file"));
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
