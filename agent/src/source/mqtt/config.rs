//! The `mqtt` source's options (`[[sources]] type = "mqtt"` in
//! `agent.toml`) and their checks.
//!
//! ```toml
//! [[sources]]
//! type = "mqtt"
//! broker = "broker.plant.local:8883"
//! client_id = "otwatch-plant-a-gw-1"      # the broker keeps this session
//! username = "otwatch"
//! password_file = "/etc/otwatch/mqtt-password"
//! tls = { ca = "/etc/otwatch/mqtt-ca.pem" }
//!
//! [[sources.subscriptions]]
//! topic = "plant/+/press/+/telemetry"
//! asset = "{1}/{3}"                        # topic levels, from 0
//! timestamp = "/ts"                        # JSON pointer; Unix ms
//! samples = { "/oil_temp" = "oil_temp_c", "/pressure" = "pressure_bar" }
//! states = { "/mode" = "mode" }
//!
//! [[sources.subscriptions]]
//! format = "sparkplug_b"                   # Eclipse Sparkplug B 3.0
//! group = "plant-a"                        # spBv1.0/plant-a/#
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The `mqtt` source: subscribes to topics of an MQTT broker (3.1.1) and
/// maps JSON or Sparkplug B payloads to events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// `host:port` of the broker (1883 plain, 8883 with `tls`).
    pub broker: String,
    /// The client id; with `clean_session = false` the broker keeps this
    /// session's subscriptions and QoS 1 messages while the agent is away.
    /// Unique per agent.
    pub client_id: String,
    /// Start a new session at each connection (messages published while the
    /// agent was away are lost). Default false: a persistent session.
    #[serde(default)]
    pub clean_session: bool,
    /// Keep-alive interval. At least 5s. Default 30s.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Longest wait before reconnecting to a broker that is down (the wait
    /// doubles from 1s). Default 30s.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// User name, if the broker asks for one. Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line). Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password. Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS to the broker. Default: none (plain TCP).
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// The subscriptions, at least one.
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// TLS to the broker: the CA that signed its certificate (which must name
/// the host of `broker`), and a client certificate when the broker asks for
/// one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// CA certificate(s) (PEM) the broker's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate (PEM). Default: none.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Required with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// How a subscription's payloads are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// JSON, mapped by `asset`, `timestamp`, `samples` and `states`.
    #[default]
    Json,
    /// Eclipse Sparkplug B 3.0 (protobuf) of the edge nodes of `group`:
    /// topics, assets and names come from Sparkplug itself.
    SparkplugB,
}

/// One topic filter and how its payloads become events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// How payloads are read: `json` (the default) or `sparkplug_b`.
    #[serde(default)]
    pub format: PayloadFormat,
    /// The Sparkplug group id whose edge nodes and devices are read, `+`
    /// for every group (`format = "sparkplug_b"` only, and required there):
    /// the subscription is `spBv1.0/<group>/#`.
    #[serde(default)]
    pub group: Option<String>,
    /// Topic filter (`+` one level, `#` the rest), subscribed with QoS 1.
    /// Required with `format = "json"`; none with `sparkplug_b` (the
    /// filter is made of `group`).
    #[serde(default)]
    pub topic: String,
    /// The events' asset: text where `{N}` is the topic's level N (from 0),
    /// e.g. `"{1}/{3}"` for `plant/line2/press/07/telemetry` gives
    /// `line2/07`. Required with `format = "json"`; none with
    /// `sparkplug_b` (the asset is `<edge_node_id>[/<device_id>]`).
    #[serde(default)]
    pub asset: String,
    /// JSON pointer to the event time (`/ts`): Unix time in ms as a
    /// number, or RFC 3339 text. Default: none (the agent's clock when the
    /// message arrived).
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Numbers to SAMPLE events: JSON pointer → tag name. Default: when
    /// `samples` and `states` are both empty, every top-level number of
    /// the payload, named by its key.
    #[serde(default)]
    pub samples: BTreeMap<String, String>,
    /// Values to STATE events: JSON pointer → name; `text` is the value
    /// (a string as is, a number or a boolean as written). Default: none.
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl MqttSourceConfig {
    /// Checks the values, naming the key at fault.
    pub fn check(&self) -> Result<(), String> {
        let what = "mqtt source";
        self.host_port()?;
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return Err(format!("{what}: client_id must be 1 to 128 characters"));
        }
        if self.keep_alive < Duration::from_secs(5) {
            return Err(format!(
                "{what}: keep_alive = {} is below 5s",
                humantime::format_duration(self.keep_alive)
            ));
        }
        if self.reconnect_max < Duration::from_secs(1) {
            return Err(format!("{what}: reconnect_max is below 1s"));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "{what}: password_file and password_env are both set: keep one"
            ));
        }
        if (self.password_file.is_some() || self.password_env.is_some()) && self.username.is_none()
        {
            return Err(format!("{what}: a password is set but no username"));
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(format!("{what}: tls.cert and tls.key go together"));
            }
        }
        if self.subscriptions.is_empty() {
            return Err(format!(
                "{what}: no [[sources.subscriptions]]: give at least one topic"
            ));
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            if s.format == PayloadFormat::SparkplugB {
                s.check_sparkplug()
                    .map_err(|e| format!("{what}: subscriptions[{i}] (sparkplug_b): {e}"))?;
                continue;
            }
            let at = format!("{what}: subscriptions[{i}] ({:?})", s.topic);
            if let Some(group) = &s.group {
                return Err(format!(
                    "{at}: group = {group:?} is for format = \"sparkplug_b\" only"
                ));
            }
            if s.topic.is_empty() {
                return Err(format!("{what}: subscriptions[{i}]: topic is required"));
            }
            if s.asset.is_empty() {
                return Err(format!("{at}: asset is required"));
            }
            check_filter(&s.topic).map_err(|e| format!("{at}: topic {e}"))?;
            let levels = s.topic.split('/').count();
            let multi = s.topic.ends_with('#');
            for n in template_levels(&s.asset).map_err(|e| format!("{at}: asset {e}"))? {
                if n >= levels && !multi {
                    return Err(format!(
                        "{at}: asset {:?} names topic level {n}, but the topic has {levels} levels",
                        s.asset
                    ));
                }
            }
            for pointer in s
                .timestamp
                .iter()
                .chain(s.samples.keys())
                .chain(s.states.keys())
            {
                if !pointer.starts_with('/') {
                    return Err(format!(
                        "{at}: {pointer:?} is not a JSON pointer (they start with /, e.g. \"/temp\")"
                    ));
                }
            }
            if let Some(name) = s
                .samples
                .values()
                .chain(s.states.values())
                .find(|n| n.is_empty())
            {
                return Err(format!("{at}: a samples or states name is empty {name:?}"));
            }
        }
        Ok(())
    }

    /// The broker's host and port.
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let (host, port) = self.broker.rsplit_once(':').ok_or_else(|| {
            format!(
                "mqtt source: broker = {:?} is not host:port (e.g. \"broker:1883\")",
                self.broker
            )
        })?;
        let port = port
            .parse()
            .map_err(|_| format!("mqtt source: broker = {:?} has no valid port", self.broker))?;
        if host.is_empty() {
            return Err(format!(
                "mqtt source: broker = {:?} has no host",
                self.broker
            ));
        }
        Ok((host.trim_matches(['[', ']']).to_string(), port))
    }
}

impl SubscriptionConfig {
    /// The topic filter subscribed to.
    pub fn filter(&self) -> String {
        match (self.format, &self.group) {
            (PayloadFormat::SparkplugB, Some(group)) => {
                format!("{}/{group}/#", super::sparkplug::NAMESPACE)
            }
            _ => self.topic.clone(),
        }
    }

    /// Checks a `sparkplug_b` subscription.
    fn check_sparkplug(&self) -> Result<(), String> {
        let group = self
            .group
            .as_deref()
            .ok_or("group is required (a Sparkplug group id, or \"+\" for every group)")?;
        if group.is_empty() || group.contains(['/', '#']) || (group.contains('+') && group != "+") {
            return Err(format!(
                "group = {group:?} is not a Sparkplug group id (no /, # or +), nor \"+\""
            ));
        }
        for (key, set) in [
            ("topic", !self.topic.is_empty()),
            ("asset", !self.asset.is_empty()),
            ("timestamp", self.timestamp.is_some()),
            ("samples", !self.samples.is_empty()),
            ("states", !self.states.is_empty()),
        ] {
            if set {
                return Err(format!(
                    "{key} is for format = \"json\": Sparkplug B names its topics, assets, times and metrics itself"
                ));
            }
        }
        Ok(())
    }
}

/// Checks an MQTT topic filter: `#` only last and alone in its level, `+`
/// alone in its level.
fn check_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("is empty".into());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("{topic:?}: # must be a whole level, the last"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{topic:?}: + must be a whole level"));
        }
    }
    Ok(())
}

/// The topic levels `{N}` an asset template names.
pub fn template_levels(template: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{template:?}: a {{ is not closed"))?;
        let n = &rest[open + 1..open + close];
        out.push(n.parse().map_err(|_| {
            format!("{template:?}: {{{n}}} is not a topic level number like {{1}}")
        })?);
        rest = &rest[open + close + 1..];
    }
    if template.trim().is_empty() {
        return Err("is empty".into());
    }
    Ok(out)
}
