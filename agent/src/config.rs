//! The agent's configuration file (`agent.toml`). This struct is its
//! reference: every option has a doc comment and a default, and unknown keys
//! are refused with the key's name, so a typo never silently changes
//! behaviour.
//!
//! ```toml
//! site = "plant-lyon"
//! agent = "gw-1"
//! data_dir = "/var/lib/otwatch-agent"
//!
//! [collector]
//! url = "https://collector.example:4317"
//!
//! [collector.tls]
//! ca = "/etc/otwatch-agent/ca.pem"
//! cert = "/etc/otwatch-agent/agent-plant-lyon-gw-1.pem"
//! key = "/etc/otwatch-agent/agent-plant-lyon-gw-1-key.pem"
//!
//! [[sources]]
//! type = "file"
//! path = "/var/log/plc/events.jsonl"
//! ```

use crate::queue::QueueConfig;
use crate::sim::SimConfig;
use otwatch_proto::limits::Limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::source::file::FileSourceConfig;

/// The whole agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Factory site this agent belongs to. With TLS, the collector checks it
    /// against the agent's certificate.
    pub site: String,
    /// This agent's id, unique within its site.
    pub agent: String,
    /// Where the agent keeps its queue and source checkpoints. Must survive
    /// reboots: sequence numbers and unsent events live here.
    pub data_dir: PathBuf,
    /// How to reach the collector and how to batch.
    #[serde(default)]
    pub collector: SenderConfig,
    /// The on-disk queue between sources and sender.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Limits each event must meet before it is queued (the collector
    /// enforces the same limits; keep them equal).
    #[serde(default)]
    pub limits: Limits,
    /// Address for a Prometheus `/metrics` endpoint with the agent's
    /// counters (events taken, rejected, dropped, quarantined, queue bytes,
    /// acked sequence, connection state), e.g. "127.0.0.1:9464". Default: none.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where events come from. At least one.
    pub sources: Vec<SourceConfig>,
}

/// Compression of batches on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

/// Sender settings (the `[collector]` section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Collector address: "https://HOST:4317" with `[collector.tls]`, or
    /// "http://127.0.0.1:4317" for a collector running `--insecure-loopback`.
    pub url: String,
    /// TLS with a client certificate. Required for an `https://` url.
    pub tls: Option<ClientTlsConfig>,
    /// Most events in one batch.
    pub batch_max_events: usize,
    /// Longest time an event waits for its batch to fill before it is sent.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Batches sent but not yet acked, at most. This window is what slows the
    /// agent down when the collector is slow, and bounds the sender's memory
    /// to about `max_in_flight * batch_max_events` events.
    pub max_in_flight: usize,
    /// Compression of batches: "zstd", "gzip" or "none".
    pub compression: Compression,
    /// First wait before reconnecting after a failure; doubles up to `reconnect_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Time allowed to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            url: "http://127.0.0.1:4317".into(),
            tls: None,
            batch_max_events: 1000,
            batch_max_delay: Duration::from_millis(200),
            max_in_flight: 4,
            compression: Compression::Zstd,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The `[collector.tls]` section: the files `otwatch cert init` and `otwatch
/// cert issue --site S --agent A` write. The certificate names this agent's
/// site and id; the agent refuses to start when they differ from `site` and
/// `agent` above, and the collector takes the identity from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// CA certificate (PEM) the collector's certificate must chain to (`ca.pem`).
    pub ca: PathBuf,
    /// This agent's certificate (PEM), e.g. `agent-plant-lyon-gw-1.pem`.
    pub cert: PathBuf,
    /// This agent's private key (PEM). Keep it readable by the agent's user only.
    pub key: PathBuf,
    /// Name to check the collector's certificate against. Default: the host of `url`.
    pub domain: Option<String>,
}

/// One source of events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A simulated factory site: assets with realistic cycles, samples, stops
    /// and, optionally, a labelled attack schedule.
    Sim(SimSourceConfig),
    /// Tails a file of JSON lines, one event per line.
    File(FileSourceConfig),
}

/// The `sim` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSourceConfig {
    /// Simulated seconds per wall-clock second. Event timestamps follow
    /// simulated time, so 60 fits an hour of production into a minute.
    pub speed: f64,
    /// Simulated start time (RFC 3339). Default: when the source starts.
    pub start: Option<String>,
    /// Where to write the scenario schedule (ground truth) as JSON lines.
    pub truth_file: Option<PathBuf>,
    /// The simulated site itself.
    pub sim: SimConfig,
}

impl Default for SimSourceConfig {
    fn default() -> Self {
        SimSourceConfig {
            speed: 1.0,
            start: None,
            truth_file: None,
            sim: SimConfig::default(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        otwatch_proto::identity::check_id("site", &self.site)?;
        otwatch_proto::identity::check_id("agent", &self.agent)?;
        if self.sources.is_empty() {
            return Err(
                "no [[sources]]: configure at least one source (type = \"sim\" or \"file\")".into(),
            );
        }
        let c = &self.collector;
        if c.batch_max_events == 0 || c.batch_max_events > self.limits.max_events_per_batch {
            return Err(format!(
                "collector.batch_max_events must be 1 to limits.max_events_per_batch ({})",
                self.limits.max_events_per_batch
            ));
        }
        if c.max_in_flight == 0 {
            return Err("collector.max_in_flight must be at least 1".into());
        }
        match (c.url.split_once("://").map(|(scheme, _)| scheme), &c.tls) {
            (Some("https"), Some(_)) | (Some("http"), None) => {}
            (Some("https"), None) => {
                return Err(format!(
                    "collector.url {:?} is https but [collector.tls] is missing: set ca, cert and key (see `otwatch cert issue`)",
                    c.url
                ))
            }
            (Some("http"), Some(_)) => {
                return Err(format!(
                    "[collector.tls] is set but collector.url {:?} is plain http: use https://",
                    c.url
                ))
            }
            _ => {
                return Err(format!(
                    "collector.url {:?} must start with https:// (or http:// for a loopback trial)",
                    c.url
                ))
            }
        }
        if self.queue.max_bytes < 2 * self.queue.segment_bytes {
            return Err("queue.max_bytes must be at least twice queue.segment_bytes".into());
        }
        for source in &self.sources {
            if let SourceConfig::File(file) = source {
                file.check()?;
            }
            if let SourceConfig::Sim(sim) = source {
                if !(sim.speed > 0.0 && sim.speed.is_finite()) {
                    return Err(format!(
                        "sim speed must be a positive number, not {}",
                        sim.speed
                    ));
                }
                if let Some(start) = &sim.start {
                    humantime::parse_rfc3339_weak(start)
                        .map_err(|e| format!("sim start {start:?} is not an RFC 3339 time: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
site = "plant-a"
agent = "gw-1"
data_dir = "/tmp/x"
[[sources]]
type = "file"
path = "/tmp/events.jsonl"
"#;

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = AgentConfig::parse(MINIMAL, "agent.toml").unwrap();
        assert_eq!(c.collector.batch_max_events, 1000);
        assert!(matches!(c.sources[0], SourceConfig::File(_)));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = MINIMAL.replace("agent = \"gw-1\"", "agent = \"gw-1\"\nsitte = \"x\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sitte`"), "{err}");
        let text = format!("{MINIMAL}\n[queue]\nmax_byte = 5\n");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_byte`"), "{err}");
        let text = MINIMAL.replace("type = \"file\"", "type = \"file\"\npoll = \"1s\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let text = MINIMAL.replace("site = \"plant-a\"", "site = \"a/b\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("site id \"a/b\" is not valid"), "{err}");
        let text = format!("{MINIMAL}\n[collector]\nurl = \"collector:4317\"\n");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with https://"), "{err}");
        let text = format!("{MINIMAL}\n[collector]\nurl = \"https://collector:4317\"\n");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[collector.tls] is missing"), "{err}");
        let text = format!(
            "{MINIMAL}\n[collector]\nurl = \"http://collector:4317\"\n[collector.tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        );
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("use https://"), "{err}");
    }
}
