//! The `opcua` source's options (`[[sources]] type = "opcua"` in
//! `agent.toml`) and their checks.
//!
//! ```toml
//! [[sources]]
//! type = "opcua"
//!
//! [[sources.servers]]
//! name = "press-07"                         # metrics and logs
//! asset = "line2/press-07"                  # the events' asset
//! endpoint = "opc.tcp://192.168.10.30:4840"
//! security_policy = "basic256sha256"        # sign and encrypt
//! certificate = "/etc/otwatch/opcua/agent.der"
//! private_key = "/etc/otwatch/opcua/agent-key.pem"
//! trusted_server_certs = "/etc/otwatch/opcua/trusted"
//! username = "otwatch"
//! password_file = "/etc/otwatch/opcua/password"
//! sampling_interval = "500ms"
//! items = [
//!   { name = "oil_temp_c", node = "ns=2;s=Press.OilTemp", deadband = 0.5, unit = "°C" },
//!   { name = "running", node = "ns=2;s=Press.Running" },
//!   { name = "mode", node = "ns=2;i=1042", report = "state", states = { "1" = "RUN", "2" = "STOP" } },
//! ]
//! events = [{ node = "i=2253", min_severity = 400 }]   # the Server object: every alarm
//! # a CYCLE at each increase of the counter, with the controller's duration
//! cycle = { counter = "ns=2;s=Press.Cycles", duration = "ns=2;s=Press.CycleTime", unit = "ms" }
//! ```

use super::super::poll::{self, MIN_POLL_INTERVAL};
use opcua::types::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Most monitored items (values and event sources) one server may have:
/// beyond, split the server's items between two sections.
pub const MAX_ITEMS_PER_SERVER: usize = 10_000;

/// The `opcua` source: OPC UA servers (controllers, gateways), each over
/// its own session, values and events taken through subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSourceConfig {
    /// The servers (`[[sources.servers]]`), at least one.
    pub servers: Vec<OpcuaServerConfig>,
}

/// The message security of the session: `none`, or one of the two
/// policies, always with sign and encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicy {
    /// No signature, no encryption (a test bench, or a server on the same
    /// host).
    #[default]
    None,
    /// Basic256Sha256, SignAndEncrypt.
    Basic256sha256,
    /// Aes128-Sha256-RsaOaep, SignAndEncrypt.
    #[serde(rename = "aes128_sha256_rsa_oaep")]
    Aes128Sha256RsaOaep,
}

impl SecurityPolicy {
    /// The policy's URI, as servers list their endpoints.
    pub fn uri(self) -> &'static str {
        match self {
            SecurityPolicy::None => "http://opcfoundation.org/UA/SecurityPolicy#None",
            SecurityPolicy::Basic256sha256 => {
                "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
            }
            SecurityPolicy::Aes128Sha256RsaOaep => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
            }
        }
    }
}

/// One OPC UA server (a PLC's embedded server, a gateway, an HMI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaServerConfig {
    /// The server's name in metrics (`device` label) and logs; unique
    /// within the source.
    pub name: String,
    /// The `asset` of the server's events, e.g. `line2/press-07`.
    pub asset: String,
    /// The endpoint URL, `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// `none` (default), `basic256sha256` or `aes128_sha256_rsa_oaep`;
    /// the two policies always sign and encrypt, and need `certificate`,
    /// `private_key` and `trusted_server_certs`.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// The agent's application instance certificate (DER `.der` or PEM
    /// `.pem`), which the server must trust. Default: none.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM). Keep it readable by the agent's user only.
    /// Default: none.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// Directory of the server certificates (`.der` or `.pem`) the agent
    /// trusts; a server whose certificate is not there is refused, and its
    /// certificate is named in the log. Default: none.
    #[serde(default)]
    pub trusted_server_certs: Option<PathBuf>,
    /// The agent's application URI, which must be the URI in its
    /// certificate's subjectAltName. Default `urn:otwatch:agent`.
    #[serde(default = "default_application_uri")]
    pub application_uri: String,
    /// User name to log in with (with `password_file` or `password_env`).
    /// Default: anonymous.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line). Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password. Default: none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A user certificate (DER or PEM) to log in with instead of a user
    /// name. Default: none.
    #[serde(default)]
    pub user_certificate: Option<PathBuf>,
    /// Its private key (PEM). Required with `user_certificate`.
    #[serde(default)]
    pub user_private_key: Option<PathBuf>,
    /// How often the server sends the changes it collected. At least 100ms.
    /// Default 1s.
    #[serde(default = "poll::default_poll_interval", with = "humantime_serde")]
    pub publishing_interval: Duration,
    /// How often the server samples each item, unless the item sets its
    /// own. At least 100ms. Default 1s.
    #[serde(default = "poll::default_poll_interval", with = "humantime_serde")]
    pub sampling_interval: Duration,
    /// Values the server keeps per item between two publications (1 to
    /// 1000). Default 10.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Longest wait for the connection and for each request. At least
    /// 100ms. Default 5s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the session checks that the server is alive (a read of
    /// its state); three failures in a row drop the session. At least 1s.
    /// Default 5s.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// First wait before reconnecting to a server that failed, doubled up
    /// to `reconnect_max` (with jitter). Defaults 1s and 60s.
    #[serde(default = "poll::default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "poll::default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The variables to monitor.
    #[serde(default)]
    pub items: Vec<ItemConfig>,
    /// The objects whose events (alarms, conditions) to monitor.
    #[serde(default)]
    pub events: Vec<EventSourceConfig>,
    /// Machine cycles: a counter the controller increments at each cycle's
    /// end, and the duration it measured (see the `opcua` source's
    /// documentation for how the two are paired). Default: none.
    #[serde(default)]
    pub cycle: Option<OpcuaCycleConfig>,
}

/// A machine's cycles, from two variables of the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaCycleConfig {
    /// The node id of an integer the controller increments once per
    /// cycle: each increase by k ends k cycles, a decrease is a reset (no
    /// cycle).
    pub counter: String,
    /// The node id of the last cycle's duration, measured by the
    /// controller and written with the counter. Default: none (the
    /// duration is the time between two counter changes, by their source
    /// timestamps).
    #[serde(default)]
    pub duration: Option<String>,
    /// The unit of `duration`: `ms` (default) or `s`; CYCLE events carry
    /// milliseconds.
    #[serde(default)]
    pub unit: DurationUnit,
    /// The CYCLE events' `name`. Default `cycle`.
    #[serde(default = "default_cycle_name")]
    pub name: String,
}

/// The unit of a cycle's duration on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurationUnit {
    /// Milliseconds.
    #[default]
    Ms,
    /// Seconds.
    S,
}

impl DurationUnit {
    /// Milliseconds in one unit.
    pub fn ms(self) -> f64 {
        match self {
            DurationUnit::Ms => 1.0,
            DurationUnit::S => 1000.0,
        }
    }
}

/// When the server reports an item's value (OPC UA's DataChangeTrigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// When its value or status changes.
    #[default]
    StatusValue,
    /// Also when the controller writes the same value again with a new
    /// source timestamp (a value written once per machine cycle).
    StatusValueTimestamp,
}

/// How an item's values become events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// A SAMPLE per value (numbers; a boolean as 1/0).
    Sample,
    /// A STATE per change (`text` the value, or its entry in `states`).
    State,
}

/// One variable: which node, how often it is sampled, how its values are
/// reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// The events' `name` (the tag).
    pub name: String,
    /// The node id, in OPC UA's text form: `ns=2;s=Press.OilTemp`,
    /// `ns=3;i=1042`, `i=2258`.
    pub node: String,
    /// How often the server samples it. At least 100ms. Default: the
    /// server's `sampling_interval`.
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// Absolute deadband, applied by the server: a number is reported when
    /// it moved by more than this since it was last reported. Default 0
    /// (every change).
    #[serde(default)]
    pub deadband: f64,
    /// `sample` or `state`. Default: by the value's type (numbers SAMPLE,
    /// booleans and text STATE).
    #[serde(default)]
    pub report: Option<Report>,
    /// Unit of the samples (attribute `unit`). Default: none.
    #[serde(default)]
    pub unit: Option<String>,
    /// Texts of an enumeration's values for STATE events (`{ "1" = "RUN" }`);
    /// a value not listed gives `UNKNOWN(n)`. Default: none (the value as
    /// written).
    #[serde(default)]
    pub states: BTreeMap<String, String>,
    /// `status_value` (default: when the value or its status changes) or
    /// `status_value_timestamp` (also when the controller writes the same
    /// value again, with a new source timestamp).
    #[serde(default)]
    pub trigger: Trigger,
}

/// An object whose events (alarms and conditions) become ALARM events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSourceConfig {
    /// The object's node id; `i=2253` (the Server object) carries every
    /// event of the server.
    pub node: String,
    /// Events below this severity (1 to 1000) are left out. Default 1.
    #[serde(default = "default_min_severity")]
    pub min_severity: u16,
}

fn default_application_uri() -> String {
    "urn:otwatch:agent".to_string()
}

fn default_queue_size() -> u32 {
    10
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(5)
}

fn default_cycle_name() -> String {
    "cycle".to_string()
}

fn default_min_severity() -> u16 {
    1
}

/// Parses a node id in text form, saying what a valid one looks like.
pub fn parse_node(text: &str) -> Result<NodeId, String> {
    NodeId::from_str(text.trim()).map_err(|_| {
        format!("{text:?} is not a node id (e.g. \"ns=2;s=Press.OilTemp\", \"ns=3;i=1042\")")
    })
}

impl OpcuaSourceConfig {
    /// Checks the values, naming the server and the key at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err(
                "opcua source: no [[sources.servers]]: configure at least one server".into(),
            );
        }
        let mut names = HashSet::new();
        for server in &self.servers {
            if !names.insert(server.name.as_str()) {
                return Err(format!(
                    "opcua source: two servers are named {:?}",
                    server.name
                ));
            }
            server.check()?;
        }
        Ok(())
    }
}

impl OpcuaServerConfig {
    /// Checks one server's options, naming the key at fault.
    pub fn check(&self) -> Result<(), String> {
        let what = format!("opcua server {:?}", self.name);
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.name.trim().is_empty() {
            return Err("opcua source: a server has an empty name".into());
        }
        if self.asset.trim().is_empty() {
            return Err(format!("{what}: asset is empty"));
        }
        self.host_port()?;
        let secure = self.security_policy != SecurityPolicy::None;
        for (key, set) in [
            ("certificate", self.certificate.is_some()),
            ("private_key", self.private_key.is_some()),
            ("trusted_server_certs", self.trusted_server_certs.is_some()),
        ] {
            if secure && !set {
                return Err(format!(
                    "{what}: security_policy = {:?} needs {key}",
                    self.security_policy
                ));
            }
            if !secure && set {
                return Err(format!(
                    "{what}: {key} is set but security_policy is \"none\": set security_policy = \"basic256sha256\" or \"aes128_sha256_rsa_oaep\", or remove {key}"
                ));
            }
        }
        if self.application_uri.trim().is_empty() {
            return Err(format!("{what}: application_uri is empty"));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "{what}: password_file and password_env are both set: keep one"
            ));
        }
        let password = self.password_file.is_some() || self.password_env.is_some();
        if password != self.username.is_some() {
            return Err(format!(
                "{what}: username and a password (password_file or password_env) go together"
            ));
        }
        if self.user_certificate.is_some() != self.user_private_key.is_some() {
            return Err(format!(
                "{what}: user_certificate and user_private_key go together"
            ));
        }
        if self.username.is_some() && self.user_certificate.is_some() {
            return Err(format!(
                "{what}: username and user_certificate are both set: log in with one"
            ));
        }
        for (key, value) in [
            ("publishing_interval", self.publishing_interval),
            ("sampling_interval", self.sampling_interval),
        ] {
            if value < MIN_POLL_INTERVAL {
                return Err(format!(
                    "{what}: {key} = {} is below the floor of {}: a controller must not be sampled faster",
                    fmt(value),
                    fmt(MIN_POLL_INTERVAL)
                ));
            }
        }
        if !(1..=1000).contains(&self.queue_size) {
            return Err(format!(
                "{what}: queue_size = {} must be 1 to 1000",
                self.queue_size
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(format!(
                "{what}: timeout = {} must be at least 100ms",
                fmt(self.timeout)
            ));
        }
        if self.keep_alive < Duration::from_secs(1) {
            return Err(format!(
                "{what}: keep_alive = {} must be at least 1s",
                fmt(self.keep_alive)
            ));
        }
        poll::check_reconnect(&what, self.reconnect_min, self.reconnect_max)?;
        if self.items.is_empty() && self.events.is_empty() && self.cycle.is_none() {
            return Err(format!(
                "{what}: no items, no events and no cycle: give at least one item to monitor"
            ));
        }
        let monitored = self.items.len() + self.events.len() + self.cycle_nodes().len();
        if monitored > MAX_ITEMS_PER_SERVER {
            return Err(format!(
                "{what}: {monitored} items, cycle variables and event sources, above the {MAX_ITEMS_PER_SERVER} one server may have"
            ));
        }
        if let Some(cycle) = &self.cycle {
            parse_node(&cycle.counter).map_err(|e| format!("{what}: cycle.counter {e}"))?;
            if let Some(duration) = &cycle.duration {
                parse_node(duration).map_err(|e| format!("{what}: cycle.duration {e}"))?;
            }
            if cycle.name.trim().is_empty() {
                return Err(format!("{what}: cycle.name is empty"));
            }
        }
        let mut names = HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            let at = format!("{what}: items[{i}] ({:?})", item.name);
            if item.name.trim().is_empty() {
                return Err(format!("{what}: items[{i}] has an empty name"));
            }
            if !names.insert(item.name.as_str()) {
                return Err(format!("{what}: two items are named {:?}", item.name));
            }
            parse_node(&item.node).map_err(|e| format!("{at}: node {e}"))?;
            if let Some(interval) = item.sampling_interval {
                if interval < MIN_POLL_INTERVAL {
                    return Err(format!(
                        "{at}: sampling_interval = {} is below the floor of {}: a controller must not be sampled faster",
                        fmt(interval),
                        fmt(MIN_POLL_INTERVAL)
                    ));
                }
            }
            if !(item.deadband.is_finite() && item.deadband >= 0.0) {
                return Err(format!(
                    "{at}: deadband = {} must be a number, 0 or more",
                    item.deadband
                ));
            }
            for key in item.states.keys() {
                if key.parse::<i64>().is_err() {
                    return Err(format!(
                        "{at}: states key {key:?} is not a whole number (e.g. \"1\" = \"RUN\")"
                    ));
                }
            }
            if !item.states.is_empty() && item.report == Some(Report::Sample) {
                return Err(format!(
                    "{at}: states is set but report = \"sample\": states name the values of a STATE item"
                ));
            }
        }
        for (i, source) in self.events.iter().enumerate() {
            let at = format!("{what}: events[{i}]");
            parse_node(&source.node).map_err(|e| format!("{at}: node {e}"))?;
            if !(1..=1000).contains(&source.min_severity) {
                return Err(format!(
                    "{at}: min_severity = {} must be 1 to 1000",
                    source.min_severity
                ));
            }
        }
        Ok(())
    }

    /// The endpoint's host and port (4840 when it names none).
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let bad = |why: &str| {
            format!(
                "opcua server {:?}: endpoint = {:?} {why} (e.g. \"opc.tcp://192.168.10.30:4840\")",
                self.name, self.endpoint
            )
        };
        let rest = self
            .endpoint
            .strip_prefix("opc.tcp://")
            .ok_or_else(|| bad("does not start with opc.tcp://"))?;
        let authority = rest.split('/').next().unwrap_or("");
        // An IPv6 address is in brackets: its colons are not the port's.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("has an unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => 4840,
            Some(port) => port.parse().map_err(|_| bad("has no valid port"))?,
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok((host.to_string(), port))
    }

    /// The nodes of `cycle`, counter first, then the duration if set.
    pub fn cycle_nodes(&self) -> Vec<&str> {
        self.cycle
            .iter()
            .flat_map(|c| std::iter::once(c.counter.as_str()).chain(c.duration.as_deref()))
            .collect()
    }

    /// The sampling interval of `item`.
    pub fn sampling_interval_of(&self, item: &ItemConfig) -> Duration {
        item.sampling_interval.unwrap_or(self.sampling_interval)
    }
}

impl crate::source::poll::Device for OpcuaServerConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn asset(&self) -> &str {
        &self.asset
    }
}
