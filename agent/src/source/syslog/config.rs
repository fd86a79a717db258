//! The `syslog` source's options (`[[sources]] type = "syslog"` in
//! `agent.toml`) and their checks.
//!
//! ```toml
//! [[sources]]
//! type = "syslog"
//! udp = "0.0.0.0:514"
//! tcp = "0.0.0.0:601"
//! max_messages_per_second = 200     # per sender address
//! assets = { "192.168.10.5" = "line2/hmi-01", "192.168.10.1" = "net/core-sw-1" }
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Smallest `max_message_bytes`: RFC 5424 requires receivers to take 480
/// octets.
pub const MIN_MESSAGE_BYTES: usize = 480;
/// Largest `max_message_bytes`: a UDP datagram's payload.
pub const MAX_MESSAGE_BYTES: usize = 65_507;
/// Largest `max_messages_per_second`.
pub const MAX_MESSAGES_PER_SECOND: u32 = 100_000;

/// The `syslog` source: receives syslog messages (RFC 3164 and RFC 5424)
/// from PLCs, HMIs, switches and firewalls over UDP and TCP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogSourceConfig {
    /// Address to receive UDP datagrams on (one message each), e.g.
    /// `0.0.0.0:514`. Default: none. At least one of `udp` and `tcp`.
    #[serde(default)]
    pub udp: Option<String>,
    /// Address to accept TCP connections on, e.g. `0.0.0.0:601`; each frame
    /// is octet-counted (`LEN SP MSG`) or ends with a newline (RFC 6587),
    /// told apart frame by frame. Default: none.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Longest message kept, in bytes: a longer one is cut there (attribute
    /// `truncated` = its full length) and the rest is skipped. 480 to
    /// 65507. Default 8192.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Messages per second one sender address may send (a burst of as many
    /// at once); beyond that its messages are dropped, counted
    /// (`otwatch_agent_messages_rate_limited_total`) and logged once per
    /// episode. 1 to 100000. Default 200.
    #[serde(default = "default_max_messages_per_second")]
    pub max_messages_per_second: u32,
    /// Most TCP connections at once; further ones are closed at once and
    /// logged. Default 64.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The events' `asset` per sender address, e.g.
    /// `{ "192.168.10.5" = "line2/hmi-01" }`. A sender not listed: the
    /// message's hostname, or else the sender's address.
    #[serde(default)]
    pub assets: BTreeMap<String, String>,
    /// Which parsers turn logins and configuration changes into ACCESS and
    /// CHANGE events: `cisco_ios`, `openssh`, `fortigate`. Default: all.
    #[serde(default = "default_parsers")]
    pub parsers: Vec<Parser>,
    /// The events' `ts`: `received` (default: the agent's clock when the
    /// message arrived; device clocks are often wrong, and RFC 3164 carries
    /// neither year nor time zone) or `message` (an RFC 5424 message's own
    /// timestamp when it has one).
    #[serde(default)]
    pub timestamps: Timestamps,
}

/// A parser of one family of devices' messages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parser {
    /// Cisco IOS / IOS-XE (switches, routers): `%SEC_LOGIN-5-LOGIN_SUCCESS`,
    /// `%SEC_LOGIN-4-LOGIN_FAILED`, `%SYS-5-CONFIG_I`,
    /// `%PARSER-5-CFGLOG_LOGGEDCMD`.
    CiscoIos,
    /// OpenSSH's `sshd` (Linux-based HMIs, gateways, industrial PCs):
    /// accepted and failed logins.
    Openssh,
    /// Fortinet FortiGate key=value event logs: administrator logins and
    /// configuration changes.
    Fortigate,
}

/// Where an event's `ts` comes from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Timestamps {
    /// The agent's clock when the message arrived.
    #[default]
    Received,
    /// An RFC 5424 message's timestamp; the agent's clock for others.
    Message,
}

fn default_max_message_bytes() -> usize {
    8192
}

fn default_max_messages_per_second() -> u32 {
    200
}

fn default_max_connections() -> usize {
    64
}

fn default_parsers() -> Vec<Parser> {
    vec![Parser::CiscoIos, Parser::Openssh, Parser::Fortigate]
}

impl SyslogSourceConfig {
    /// A source listening on `udp` and `tcp` with every default.
    pub fn new(udp: Option<SocketAddr>, tcp: Option<SocketAddr>) -> SyslogSourceConfig {
        SyslogSourceConfig {
            udp: udp.map(|a| a.to_string()),
            tcp: tcp.map(|a| a.to_string()),
            max_message_bytes: default_max_message_bytes(),
            max_messages_per_second: default_max_messages_per_second(),
            max_connections: default_max_connections(),
            assets: BTreeMap::new(),
            parsers: default_parsers(),
            timestamps: Timestamps::default(),
        }
    }

    /// The `udp` address, parsed.
    pub fn udp_addr(&self) -> Result<Option<SocketAddr>, String> {
        socket_addr("udp", self.udp.as_deref())
    }

    /// The `tcp` address, parsed.
    pub fn tcp_addr(&self) -> Result<Option<SocketAddr>, String> {
        socket_addr("tcp", self.tcp.as_deref())
    }

    /// The `assets` table with its keys parsed.
    pub fn asset_map(&self) -> Result<BTreeMap<IpAddr, String>, String> {
        self.assets
            .iter()
            .map(|(ip, asset)| {
                let addr = ip.parse::<IpAddr>().map_err(|_| {
                    format!("syslog source: assets key {ip:?} is not an IP address (e.g. \"192.168.10.5\")")
                })?;
                Ok((addr, asset.clone()))
            })
            .collect()
    }

    /// Checks the values, naming the key at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.udp.is_none() && self.tcp.is_none() {
            return Err("syslog source: neither udp nor tcp is set: give the address to receive on, e.g. udp = \"0.0.0.0:514\"".into());
        }
        self.udp_addr()?;
        self.tcp_addr()?;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(format!(
                "syslog source: max_message_bytes = {} is outside {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES}",
                self.max_message_bytes
            ));
        }
        if !(1..=MAX_MESSAGES_PER_SECOND).contains(&self.max_messages_per_second) {
            return Err(format!(
                "syslog source: max_messages_per_second = {} is outside 1..={MAX_MESSAGES_PER_SECOND}",
                self.max_messages_per_second
            ));
        }
        if self.max_connections == 0 {
            return Err("syslog source: max_connections = 0 would refuse every TCP sender".into());
        }
        for (ip, asset) in self.asset_map()? {
            if asset.trim().is_empty() {
                return Err(format!("syslog source: assets.\"{ip}\" is empty"));
            }
        }
        Ok(())
    }
}

fn socket_addr(key: &str, value: Option<&str>) -> Result<Option<SocketAddr>, String> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                format!("syslog source: {key} = {v:?} is not an IP address and port (e.g. \"0.0.0.0:514\")")
            })
        })
        .transpose()
}
