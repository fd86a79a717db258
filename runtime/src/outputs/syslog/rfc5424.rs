//! Syslog records (RFC 5424) and their framing on the wire.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - alert STRUCTURED-DATA MSG
//! ```
//!
//! - PRI: `facility * 8 + severity`, the alert's severity mapped critical →
//!   2 (crit), high → 3 (err), medium → 4 (warning), low (and unspecified)
//!   → 5 (notice);
//! - TIMESTAMP: the alert's event time, RFC 3339 in UTC with milliseconds;
//! - PROCID `-`, MSGID `alert`;
//! - `format = "cef"`: STRUCTURED-DATA `-`, MSG the CEF text
//!   ([`super::cef`]);
//! - `format = "rfc5424"`: one element `[<sd_id> id="…" site="…" asset="…"
//!   detector="…" name="…" severity="…" score="…" observed="…"
//!   expected_low="…" expected_high="…" agent="…" first_seq="…"
//!   last_seq="…" event_count="…" technique="…" tactic="…"]` (technique
//!   and tactic only when known; `"`, `\` and `]` in values escaped with `\`),
//!   MSG the alert's message. An update of an alert (acked or resolved by
//!   the SOC) is the same element and id with `state="…" state_by="…"
//!   state_at="…"` (RFC 3339, UTC, milliseconds) and `comment="…"` (when
//!   one was given) added: their presence tells an update from a new alert.
//!
//! MSG is UTF-8 without a byte order mark, line breaks replaced by spaces so
//! each record stays one line in the receiver's files.
//!
//! Framing: over UDP one record per datagram (RFC 5426); over TCP and TLS
//! octet counting, `<length in bytes> SP <record>` (RFC 6587 section 3.4.1,
//! RFC 5425).

use super::cef::cef;
use super::config::SyslogFormat;
use crate::outputs::format::attack_ics;
use otwatch_proto::{severity_name, Alert, Severity};
use std::fmt::Write as _;

/// What every record of one output shares.
#[derive(Debug, Clone)]
pub struct Header {
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub sd_id: String,
    pub format: SyslogFormat,
}

/// The syslog severity (RFC 5424 section 6.2.1) of an alert.
pub fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low | Severity::Unspecified => 5,
    }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped.
pub fn escape_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The record of `alert`, unframed.
pub fn record(header: &Header, alert: &Alert) -> String {
    let pri = u16::from(header.facility) * 8 + u16::from(syslog_severity(alert.severity()));
    let ts = chrono::DateTime::from_timestamp_nanos(alert.ts_ns)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut text = format!(
        "<{pri}>1 {ts} {} {} - alert ",
        header.hostname, header.app_name
    );
    match header.format {
        SyslogFormat::Cef => {
            text.push_str("- ");
            text.push_str(&one_line(&cef(alert, &header.hostname)));
        }
        SyslogFormat::Rfc5424 => {
            let _ = write!(text, "[{}", header.sd_id);
            let mut param = |name: &str, value: &str| {
                let _ = write!(text, " {name}=\"{}\"", escape_param(value));
            };
            param("id", &alert.id);
            param("site", &alert.site);
            param("asset", &alert.asset);
            param("detector", &alert.detector);
            param("name", &alert.name);
            param("severity", severity_name(alert.severity()));
            param("score", &alert.score.to_string());
            param("observed", &alert.observed.to_string());
            param("expected_low", &alert.expected_low.to_string());
            param("expected_high", &alert.expected_high.to_string());
            param("agent", &alert.agent);
            param("first_seq", &alert.first_seq.to_string());
            param("last_seq", &alert.last_seq.to_string());
            param("event_count", &alert.event_count.to_string());
            if !alert.technique.is_empty() {
                param("technique", &alert.technique);
            }
            if let Some((_, tactic)) = attack_ics(&alert.technique) {
                param("tactic", tactic);
            }
            if crate::outputs::is_update(alert) {
                param("state", &alert.state);
                param("state_by", &alert.state_by);
                param(
                    "state_at",
                    &chrono::DateTime::from_timestamp_nanos(alert.state_at_ns)
                        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                        .to_string(),
                );
                if !alert.comment.is_empty() {
                    param("comment", &alert.comment);
                }
            }
            text.push_str("] ");
            text.push_str(&one_line(&alert.message));
        }
    }
    text
}

/// A record framed by octet counting, for TCP and TLS.
pub fn octet_counted(record: &str) -> Vec<u8> {
    let mut framed = format!("{} ", record.len()).into_bytes();
    framed.extend_from_slice(record.as_bytes());
    framed
}
