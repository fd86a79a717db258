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
    /// Largest size of `<data_dir>/dead-letter.jsonl`, in bytes: where
    /// events the collector refused (too old after an outage, say) are kept
    /// with the reason, one JSON line each, for an operator to fix and
    /// replay. Beyond it refused events are still counted and logged, not
    /// kept; 0 keeps none. Default 64 MiB.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
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
    /// Plain `http://` is refused for any host but loopback (127.0.0.0/8,
    /// ::1, localhost): events would cross the network readable and the
    /// agent's identity unproven.
    pub url: String,
    /// More collectors, tried in turn after `url` when the current one
    /// cannot be reached or drops the connection (any collector of a
    /// deployment takes any agent; the agent resends only what is
    /// unacknowledged). Each follows the same rules as `url`. Default: none.
    pub urls: Vec<String>,
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
            urls: Vec::new(),
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
    /// Modbus/TCP devices, polled read-only.
    #[cfg(feature = "modbus")]
    Modbus(crate::source::modbus::ModbusSourceConfig),
    /// A `modbus` section in an agent built without the `modbus` feature:
    /// refused at load, saying so.
    #[cfg(not(feature = "modbus"))]
    Modbus(toml::Table),
    /// MELSEC PLCs over SLMP (MC protocol 3E binary), polled read-only.
    #[cfg(feature = "slmp")]
    Slmp(crate::source::slmp::SlmpSourceConfig),
    /// An `slmp` section in an agent built without the `slmp` feature.
    #[cfg(not(feature = "slmp"))]
    Slmp(toml::Table),
    /// MQTT subscriptions, JSON payloads mapped to events.
    #[cfg(feature = "mqtt")]
    Mqtt(crate::source::mqtt::MqttSourceConfig),
    /// An `mqtt` section in an agent built without the `mqtt` feature.
    #[cfg(not(feature = "mqtt"))]
    Mqtt(toml::Table),
    /// OPC UA servers, values and events through subscriptions.
    #[cfg(feature = "opcua")]
    Opcua(crate::source::opcua::OpcuaSourceConfig),
    /// An `opcua` section in an agent built without the `opcua` feature.
    #[cfg(not(feature = "opcua"))]
    Opcua(toml::Table),
    /// Syslog messages received over UDP and TCP.
    #[cfg(feature = "syslog")]
    Syslog(crate::source::syslog::SyslogSourceConfig),
    /// A `syslog` section in an agent built without the `syslog` feature.
    #[cfg(not(feature = "syslog"))]
    Syslog(toml::Table),
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

fn default_dead_letter_max_bytes() -> u64 {
    64 * 1024 * 1024
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

    /// Checks everything that can be checked without the network or the
    /// disk; each error names its key and says what would be valid.
    fn check(&self) -> Result<(), String> {
        otwatch_proto::identity::check_id("site", &self.site)?;
        otwatch_proto::identity::check_id("agent", &self.agent)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(
                "data_dir is empty: give the directory for the queue and checkpoints".into(),
            );
        }
        if self.sources.is_empty() {
            return Err(
                "no [[sources]]: configure at least one source (type = \"file\", \"modbus\", \"opcua\", \"slmp\", \"syslog\", \"mqtt\" or \"sim\")".into(),
            );
        }
        self.limits.validate()?;
        self.collector.check(&self.limits)?;
        self.queue_check()?;
        for source in &self.sources {
            match source {
                SourceConfig::Sim(sim) => {
                    if !(sim.speed > 0.0 && sim.speed.is_finite()) {
                        return Err(format!(
                            "sim speed must be a positive number, not {}",
                            sim.speed
                        ));
                    }
                    if let Some(start) = &sim.start {
                        humantime::parse_rfc3339_weak(start).map_err(|e| {
                            format!("sim start {start:?} is not an RFC 3339 time: {e}")
                        })?;
                    }
                }
                SourceConfig::File(file) => {
                    if file.path.as_os_str().is_empty() {
                        return Err("file source: path is empty".into());
                    }
                    file.check()?;
                }
                #[cfg(feature = "modbus")]
                SourceConfig::Modbus(modbus) => modbus.check()?,
                #[cfg(not(feature = "modbus"))]
                SourceConfig::Modbus(_) => return Err(without_feature("modbus")),
                #[cfg(feature = "slmp")]
                SourceConfig::Slmp(slmp) => slmp.check()?,
                #[cfg(not(feature = "slmp"))]
                SourceConfig::Slmp(_) => return Err(without_feature("slmp")),
                #[cfg(feature = "mqtt")]
                SourceConfig::Mqtt(mqtt) => mqtt.check()?,
                #[cfg(not(feature = "mqtt"))]
                SourceConfig::Mqtt(_) => return Err(without_feature("mqtt")),
                #[cfg(feature = "opcua")]
                SourceConfig::Opcua(opcua) => opcua.check()?,
                #[cfg(not(feature = "opcua"))]
                SourceConfig::Opcua(_) => return Err(without_feature("opcua")),
                #[cfg(feature = "syslog")]
                SourceConfig::Syslog(syslog) => syslog.check()?,
                #[cfg(not(feature = "syslog"))]
                SourceConfig::Syslog(_) => return Err(without_feature("syslog")),
            }
        }
        Ok(())
    }

    fn queue_check(&self) -> Result<(), String> {
        let q = &self.queue;
        if q.segment_bytes == 0 {
            return Err("queue.segment_bytes must be above 0".into());
        }
        // Acked space is reclaimed a whole segment at a time and the newest
        // segment stays: a queue of fewer than two segments could not free
        // room while it is being written.
        if q.max_bytes < q.segment_bytes.saturating_mul(2) {
            return Err(format!(
                "queue.max_bytes ({}) must be at least twice queue.segment_bytes ({}): lower segment_bytes or raise max_bytes",
                q.max_bytes, q.segment_bytes
            ));
        }
        Ok(())
    }
}

impl SenderConfig {
    fn check(&self, limits: &Limits) -> Result<(), String> {
        if self.batch_max_events == 0 || self.batch_max_events > limits.max_events_per_batch {
            return Err(format!(
                "collector.batch_max_events = {} must be 1 to limits.max_events_per_batch ({})",
                self.batch_max_events, limits.max_events_per_batch
            ));
        }
        if self.max_in_flight == 0 {
            return Err("collector.max_in_flight must be at least 1".into());
        }
        if self.reconnect_min.is_zero() {
            return Err(
                "collector.reconnect_min must be above 0 (e.g. \"200ms\"): a zero wait would retry a failing collector in a tight loop".into(),
            );
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(format!(
                "collector.reconnect_min ({}) is above collector.reconnect_max ({})",
                humantime::format_duration(self.reconnect_min),
                humantime::format_duration(self.reconnect_max)
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err("collector.connect_timeout must be above 0 (e.g. \"10s\")".into());
        }
        for (i, url) in self.addresses().iter().enumerate() {
            self.check_url(url).map_err(|e| {
                if i == 0 {
                    e
                } else {
                    e.replacen("collector.url ", &format!("collector.urls[{}] ", i - 1), 1)
                }
            })?;
        }
        Ok(())
    }

    /// Every collector address, in the order they are tried: `url`, then `urls`.
    pub fn addresses(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.urls.iter().map(String::as_str))
            .collect()
    }

    /// The URL must parse, and plaintext is for a collector on this machine
    /// only: events and the agent's identity headers would otherwise cross
    /// the network unauthenticated and readable.
    fn check_url(&self, url: &str) -> Result<(), String> {
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| {
            format!("collector.url {url:?} is not a URL ({e}): use https://HOST:4317")
        })?;
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty());
        let Some(host) = host else {
            return Err(format!(
                "collector.url {url:?} names no host: use https://HOST:4317"
            ));
        };
        match (uri.scheme_str(), &self.tls) {
            (Some("https"), Some(_)) => Ok(()),
            (Some("https"), None) => Err(format!(
                "collector.url {url:?} is https but [collector.tls] is missing: set ca, cert and key (see `otwatch cert issue`)"
            )),
            (Some("http"), Some(_)) => Err(format!(
                "[collector.tls] is set but collector.url {url:?} is plain http: use https://"
            )),
            (Some("http"), None) if is_loopback(host) => Ok(()),
            (Some("http"), None) => Err(format!(
                "collector.url {url:?} would send events in cleartext to {host}, which is not this machine: \
                 use https://{host}:PORT and a [collector.tls] section (ca, cert, key; see `otwatch cert issue`); \
                 http:// is only for a collector on loopback (127.0.0.1, ::1, localhost)"
            )),
            _ => Err(format!(
                "collector.url {url:?} must start with https:// (or http:// for a collector on loopback)"
            )),
        }
    }
}

/// Why a source of a protocol this build left out is refused.
#[cfg(not(all(
    feature = "modbus",
    feature = "slmp",
    feature = "syslog",
    feature = "mqtt",
    feature = "opcua"
)))]
fn without_feature(source: &str) -> String {
    format!(
        "{source} source: this otwatch-agent was built without the `{source}` feature; \
         build it with `--features {source}` (the default build has every source)"
    )
}

/// True for a loopback host: `localhost`, 127.0.0.0/8 or ::1.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        assert_eq!(c.dead_letter_max_bytes, 64 << 20);
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

    fn refused(extra: &str) -> String {
        AgentConfig::parse(&format!("{MINIMAL}\n{extra}\n"), "agent.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn plaintext_is_refused_beyond_loopback() {
        let err = refused("[collector]\nurl = \"http://10.0.0.5:4317\"");
        assert!(err.contains("cleartext"), "{err}");
        assert!(err.contains("https://10.0.0.5:PORT"), "{err}");
        assert!(err.contains("[collector.tls]"), "{err}");
        let err = refused("[collector]\nurl = \"http://collector.example:4317\"");
        assert!(err.contains("cleartext"), "{err}");
        let err = refused("[collector]\nurl = \"http://[2001:db8::1]:4317\"");
        assert!(err.contains("cleartext"), "{err}");
        for url in [
            "http://127.0.0.1:4317",
            "http://127.8.9.10:4317",
            "http://[::1]:4317",
            "http://localhost:4317",
            "http://LocalHost",
        ] {
            let text = format!("{MINIMAL}\n[collector]\nurl = {url:?}\n");
            AgentConfig::parse(&text, "agent.toml")
                .unwrap_or_else(|e| panic!("{url} refused: {e}"));
        }
        let err = refused("[collector]\nurl = \"http://\"");
        assert!(err.contains("collector.url"), "{err}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_key() {
        let cases = [
            (
                "[limits]\nmax_events_per_batch = 0",
                "limits.max_events_per_batch",
            ),
            ("[limits]\nmax_past_secs = 0", "limits.max_past_secs"),
            (
                "[collector]\nbatch_max_events = 0",
                "collector.batch_max_events",
            ),
            ("[collector]\nmax_in_flight = 0", "collector.max_in_flight"),
            (
                "[collector]\nreconnect_min = \"0s\"",
                "collector.reconnect_min must be above 0",
            ),
            (
                "[collector]\nreconnect_min = \"1m\"\nreconnect_max = \"10s\"",
                "collector.reconnect_min (1m) is above collector.reconnect_max (10s)",
            ),
            (
                "[collector]\nconnect_timeout = \"0s\"",
                "collector.connect_timeout",
            ),
            ("[queue]\nsegment_bytes = 0", "queue.segment_bytes"),
            (
                "[queue]\nmax_bytes = 1000\nsegment_bytes = 600",
                "queue.max_bytes (1000) must be at least twice queue.segment_bytes (600)",
            ),
        ];
        for (extra, expected) in cases {
            let err = refused(extra);
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let text = MINIMAL.replace("type = \"file\"", "type = \"file\"\npoll_interval = \"0s\"");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_interval must be above zero"), "{err}");
        let text = MINIMAL.replace("type = \"file\"", "type = \"file\"\nmax_lines_per_read = 0");
        let err = AgentConfig::parse(&text, "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_lines_per_read must be at least 1"),
            "{err}"
        );
    }
}
