//! `[[outputs]] type = "syslog"`: options and their checks.

use crate::outputs::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How each alert is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    /// ArcSight Common Event Format in the message of an RFC 5424 record
    /// (see [`super::cef`]), what SIEMs expect from OT monitoring products.
    #[default]
    Cef,
    /// RFC 5424 with the alert's fields as structured data and its message
    /// as the text (see [`super::rfc5424`]).
    Rfc5424,
}

/// How records travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// One record per datagram (RFC 5426). Nothing confirms receipt: a
    /// receiver that is down loses what is sent meanwhile.
    Udp,
    /// A TCP connection, records framed by octet counting (RFC 6587).
    Tcp,
    /// TCP with TLS (RFC 5425), octet counting; the receiver's certificate
    /// is verified (see `[outputs.tls]`).
    #[default]
    Tls,
}

/// Syslog facilities by name (RFC 5424 section 6.2.1).
pub const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("audit", 13),
    ("alert", 14),
    ("clock", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// `[[outputs]] type = "syslog"`: alerts to a SIEM or syslog relay.
///
/// ```toml
/// [[outputs]]
/// type = "syslog"
/// name = "siem"
/// address = "siem.example.net:6514"
/// [outputs.tls]
/// ca = "/etc/otwatch/siem-ca.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "syslog".
    #[serde(default)]
    pub name: Option<String>,
    /// The receiver, `host:port` (e.g. `siem.example.net:6514`, `10.0.0.5:514`,
    /// `[fd00::5]:6514`). The host is looked up at each connection.
    pub address: String,
    /// `udp`, `tcp` or `tls`. Default: `tls`.
    #[serde(default)]
    pub transport: Transport,
    /// `cef` or `rfc5424`. Default: `cef`.
    #[serde(default)]
    pub format: SyslogFormat,
    /// Syslog facility of every record, by name (`local0` … `local7`,
    /// `auth`, `audit`, …). Default: `local0`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// The HOSTNAME of each record and CEF's `dvchost`: this otwatch
    /// server. Default: the machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The APP-NAME of each record. Default: `otwatch`.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// SD-ID of the structured data element of `rfc5424` records. RFC 5424
    /// wants `name@<private enterprise number>`; the default uses 32473,
    /// the number reserved for documentation, so set your organisation's.
    /// Default: `otwatch@32473`.
    #[serde(default = "default_sd_id")]
    pub sd_id: String,
    /// The name the receiver's certificate must carry (`tls`). Default: the
    /// host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Longest a connection or a delivery may take before it is given up
    /// and retried. Default: 10 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// CA and client certificate for `tls`.
    #[serde(default)]
    pub tls: TlsFiles,
}

fn default_facility() -> String {
    "local0".into()
}

fn default_app_name() -> String {
    "otwatch".into()
}

fn default_sd_id() -> String {
    "otwatch@32473".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Printable US-ASCII without space, `=`, `]` and `"`, 1 to 32 long: an
/// RFC 5424 SD-NAME.
pub(super) fn is_sd_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
}

/// Printable US-ASCII without space, `max` long at most: a header field of
/// RFC 5424 (HOSTNAME 255, APP-NAME 48).
pub(super) fn is_header_field(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len()) && value.bytes().all(|b| (33..=126).contains(&b))
}

impl SyslogConfig {
    /// The facility's number.
    pub fn facility_code(&self) -> Option<u8> {
        FACILITIES
            .iter()
            .find(|(n, _)| *n == self.facility)
            .map(|(_, c)| *c)
    }

    /// The host and port of `address`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().ok()?;
        if host.is_empty()
            || port == 0
            || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err())
        {
            return None;
        }
        Some((host.to_string(), port))
    }

    /// Refuses values the output cannot work with, naming the option.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.host_port().is_none() {
            return Err(format!(
                "outputs.{name}.address: {:?} is not host:port (e.g. \"siem.example.net:6514\")",
                self.address
            ));
        }
        if self.facility_code().is_none() {
            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "outputs.{name}.facility: {:?} is not one of {}",
                self.facility,
                names.join(", ")
            ));
        }
        if let Some(host) = &self.hostname {
            if !is_header_field(host, 255) {
                return Err(format!(
                    "outputs.{name}.hostname: {host:?} must be 1 to 255 printable ASCII characters without spaces"
                ));
            }
        }
        if !is_header_field(&self.app_name, 48) {
            return Err(format!(
                "outputs.{name}.app_name: {:?} must be 1 to 48 printable ASCII characters without spaces",
                self.app_name
            ));
        }
        if !is_sd_name(&self.sd_id) {
            return Err(format!(
                "outputs.{name}.sd_id: {:?} must be 1 to 32 printable ASCII characters without spaces, '=', ']' or '\"' (e.g. \"otwatch@32473\")",
                self.sd_id
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("outputs.{name}.timeout must be longer than 0"));
        }
        if let Some(server_name) = &self.server_name {
            rustls::pki_types::ServerName::try_from(server_name.as_str())
                .map_err(|e| format!("outputs.{name}.server_name: {server_name:?}: {e}"))?;
        }
        if self.transport == Transport::Tls {
            self.tls.client_config(name, &[])?;
        } else if self.tls != TlsFiles::default() {
            return Err(format!(
                "outputs.{name}.tls is set but transport is not \"tls\": set transport = \"tls\" or remove [outputs.tls]"
            ));
        }
        Ok(())
    }
}
