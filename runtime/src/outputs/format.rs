//! How an alert reads: one line for a person, one JSON object for a tool,
//! and what its ATT&CK for ICS technique means. Every output formats alerts
//! through here, so they agree.
//!
//! An alert is sent once when raised (`state` `open`) and again, with the
//! same id, each time the SOC changes its state (`acked`, `resolved`): a
//! receiver tells an update from a new alert by an id it has seen before
//! with a state other than `open` (and `state_at` set). Alerts raised while
//! a suppression matched (`suppressed`) are never sent.

use otwatch_proto::arrow::state;
use otwatch_proto::{parse_severity, severity_name, Alert};

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
    let update = if is_update(alert) {
        let by = if alert.state_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", alert.state_by)
        };
        let comment = if alert.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", alert.comment)
        };
        format!(
            " ({} {}{by}{comment})",
            alert.state.to_uppercase(),
            alert.id
        )
    } else {
        String::new()
    };
    format!(
        "{} {:<8} {}/{} {}: {}{}{}",
        format_ts(alert.ts_ns),
        severity_name(alert.severity()).to_uppercase(),
        alert.site,
        alert.asset,
        alert.detector,
        alert.message,
        technique,
        update
    )
}

/// Whether `alert` is a change of state of an alert sent before (acked,
/// resolved), rather than a new one.
pub fn is_update(alert: &Alert) -> bool {
    !alert.state.is_empty() && alert.state != state::OPEN && alert.state != state::SUPPRESSED
}

/// The state of `alert` (`open` when unset).
pub fn state_of(alert: &Alert) -> &str {
    if alert.state.is_empty() {
        state::OPEN
    } else {
        &alert.state
    }
}

fn rfc3339(ts_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
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
        "state": state_of(alert),
        "state_by": (!alert.state_by.is_empty()).then_some(&alert.state_by),
        "state_at": (alert.state_at_ns != 0).then(|| rfc3339(alert.state_at_ns)),
        "comment": (!alert.comment.is_empty()).then_some(&alert.comment),
    })
}

/// An alert back from its JSON form ([`alert_json`]); `None` when a field
/// is missing or of the wrong type.
pub fn alert_from_json(v: &serde_json::Value) -> Option<Alert> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let opt = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let time = |k: &str| -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(v[k].as_str()?)
            .ok()?
            .timestamp_nanos_opt()
    };
    Some(Alert {
        id: s("id")?,
        ts_ns: time("ts")?,
        site: s("site")?,
        asset: s("asset")?,
        detector: s("detector")?,
        name: s("name")?,
        severity: parse_severity(v["severity"].as_str()?) as i32,
        score: v["score"].as_f64()?,
        observed: v["observed"].as_f64()?,
        expected_low: v["expected_low"].as_f64()?,
        expected_high: v["expected_high"].as_f64()?,
        message: s("message")?,
        agent: s("agent")?,
        first_seq: v["first_seq"].as_u64()?,
        last_seq: v["last_seq"].as_u64()?,
        event_count: v["event_count"].as_u64()?,
        technique: opt("technique"),
        state: opt("state"),
        state_by: opt("state_by"),
        state_at_ns: time("state_at").unwrap_or(0),
        comment: opt("comment"),
    })
}

/// The ATT&CK for ICS techniques otwatch's detectors name, and others an
/// OT monitor commonly reports: (id, name, tactics). Tactics as MITRE lists
/// them for the technique, joined with ", " where it serves several.
const ATTACK_ICS: &[(&str, &str, &str)] = &[
    (
        "T0800",
        "Activate Firmware Update Mode",
        "Inhibit Response Function",
    ),
    ("T0801", "Monitor Process State", "Collection"),
    ("T0806", "Brute Force I/O", "Impair Process Control"),
    ("T0812", "Default Credentials", "Lateral Movement"),
    ("T0813", "Denial of Control", "Impact"),
    ("T0814", "Denial of Service", "Inhibit Response Function"),
    ("T0815", "Denial of View", "Impact"),
    (
        "T0816",
        "Device Restart/Shutdown",
        "Inhibit Response Function",
    ),
    ("T0821", "Modify Controller Tasking", "Execution"),
    ("T0826", "Loss of Availability", "Impact"),
    ("T0827", "Loss of Control", "Impact"),
    ("T0831", "Manipulation of Control", "Impact"),
    ("T0832", "Manipulation of View", "Impact"),
    ("T0836", "Modify Parameter", "Impair Process Control"),
    (
        "T0838",
        "Modify Alarm Settings",
        "Inhibit Response Function",
    ),
    (
        "T0839",
        "Module Firmware",
        "Persistence, Impair Process Control",
    ),
    ("T0842", "Network Sniffing", "Discovery"),
    ("T0843", "Program Download", "Lateral Movement"),
    ("T0845", "Program Upload", "Collection"),
    ("T0846", "Remote System Discovery", "Discovery"),
    (
        "T0855",
        "Unauthorized Command Message",
        "Impair Process Control",
    ),
    (
        "T0856",
        "Spoof Reporting Message",
        "Evasion, Impair Process Control",
    ),
    (
        "T0857",
        "System Firmware",
        "Persistence, Inhibit Response Function",
    ),
    ("T0858", "Change Operating Mode", "Execution, Evasion"),
    ("T0859", "Valid Accounts", "Persistence, Lateral Movement"),
    ("T0861", "Point & Tag Identification", "Collection"),
    (
        "T0866",
        "Exploitation of Remote Services",
        "Initial Access, Lateral Movement",
    ),
    ("T0868", "Detect Operating Mode", "Collection"),
    ("T0878", "Alarm Suppression", "Inhibit Response Function"),
    ("T0881", "Service Stop", "Inhibit Response Function"),
    (
        "T0886",
        "Remote Services",
        "Initial Access, Lateral Movement",
    ),
    ("T0888", "Remote System Information Discovery", "Discovery"),
    ("T0889", "Modify Program", "Persistence"),
];

/// The name and tactic(s) of an ATT&CK for ICS technique id (`T0836` →
/// `("Modify Parameter", "Impair Process Control")`); `None` for an empty
/// or unlisted id (outputs then still carry the id itself).
pub fn attack_ics(technique: &str) -> Option<(&'static str, &'static str)> {
    ATTACK_ICS
        .iter()
        .find(|(id, _, _)| *id == technique)
        .map(|(_, name, tactics)| (*name, *tactics))
}

/// This machine's host name, as outputs name the otwatch server to their
/// receivers when the config names none; "otwatch" if it cannot be read.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "otwatch".to_string())
}
