//! How an alert reads: one line for a person, one JSON object for a tool.
//! Every output formats alerts through here, so they agree.

use otwatch_proto::{severity_name, Alert};

/// Formats an event-time timestamp (ns) as `YYYY-MM-DD HH:MM:SS`, UTC.
pub fn format_ts(ts_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts_ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// One line for a human: when, where, what deviated, how badly, and which
/// ATT&CK for ICS technique it may indicate.
pub fn alert_line(alert: &Alert) -> String {
    let technique = if alert.technique.is_empty() {
        String::new()
    } else {
        format!(" [{}]", alert.technique)
    };
    format!(
        "{} {:<8} {}/{} {}: {}{}",
        format_ts(alert.ts_ns),
        severity_name(alert.severity()).to_uppercase(),
        alert.site,
        alert.asset,
        alert.detector,
        alert.message,
        technique
    )
}

/// The JSON form of an alert, as written to the JSON-lines sink.
pub fn alert_json(alert: &Alert) -> serde_json::Value {
    serde_json::json!({
        "id": alert.id,
        "ts": chrono::DateTime::from_timestamp_nanos(alert.ts_ns).to_rfc3339(),
        "site": alert.site,
        "asset": alert.asset,
        "detector": alert.detector,
        "name": alert.name,
        "severity": severity_name(alert.severity()),
        "score": alert.score,
        "observed": alert.observed,
        "expected_low": alert.expected_low,
        "expected_high": alert.expected_high,
        "message": alert.message,
        "agent": alert.agent,
        "first_seq": alert.first_seq,
        "last_seq": alert.last_seq,
        "event_count": alert.event_count,
        "technique": alert.technique,
    })
}
