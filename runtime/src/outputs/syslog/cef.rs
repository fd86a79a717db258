//! An alert in ArcSight Common Event Format (CEF) version 0, as SIEMs
//! expect it from OT monitoring products.
//!
//! ```text
//! CEF:0|otwatch|otwatch|<version>|<detector>:<name>|<title>|<severity>|<extension>
//! ```
//!
//! - **header**: vendor and product `otwatch`, the otwatch version, the
//!   signature id `<detector>:<name>` (the model and the tag, cycle or
//!   transition it watches: the same kind of finding always has the same
//!   id), the title `<detector> anomaly on <name>` followed by the ATT&CK for
//!   ICS technique when there is one (`cycle anomaly on press_cycle (T0836
//!   Modify Parameter)`), and the severity low 3, medium 5, high 8,
//!   critical 10 (0 when unspecified). In header fields `\` is written `\\`
//!   and `|` is written `\|`; a line break becomes a space (the header
//!   cannot hold one).
//! - **extension**: `key=value` pairs separated by spaces, keys fixed, in
//!   this order (a labelled field is left out, label too, when empty):
//!
//! | key | value |
//! |---|---|
//! | `rt` | the alert's event time, ms since the Unix epoch |
//! | `dvchost` | the otwatch server (`hostname`) |
//! | `externalId` | the alert's stable id: redeliveries repeat it, dedupe on it |
//! | `cat` | the detector (`cycle`, `cadence`, `sequence`, …) |
//! | `msg` | the alert's message (at most 1023 characters, the CEF limit) |
//! | `cs1Label=ATT&CK for ICS technique` `cs1` | technique id, e.g. `T0836` |
//! | `cs2Label=ATT&CK for ICS tactic` `cs2` | its tactic(s), e.g. `Impair Process Control` |
//! | `cs3Label=Site` `cs3` | the site |
//! | `cs4Label=Asset` `cs4` | the asset (controller, machine) |
//! | `cs5Label=Name` `cs5` | the tag, cycle or transition |
//! | `cs6Label=ATT&CK for ICS technique name` `cs6` | e.g. `Modify Parameter` |
//! | `flexString1Label=Agent` `flexString1` | evidence: the agent whose events raised it |
//! | `cn1Label=First seq` `cn1`, `cn2Label=Last seq` `cn2` | evidence: its sequence range |
//! | `cfp1Label=Observed` `cfp1` | the value seen |
//! | `cfp2Label=Expected low` `cfp2`, `cfp3Label=Expected high` `cfp3` | the learned range |
//! | `cfp4Label=Score` `cfp4` | the model's score |
//! | `cnt` | evidence: how many events |
//! | `act` | only in an update: the new state, `acked` or `resolved` |
//! | `suser` | only in an update: who changed it |
//! | `flexDate1Label=State changed at` `flexDate1` | only in an update: when, ms since the Unix epoch |
//! | `reason` | only in an update: the comment given with it |
//!
//! An update of an alert (the SOC acked or resolved it) is the alert again,
//! same `externalId`, with `act` set: a SIEM correlates on `externalId`
//! and tells updates by `act`.
//!
//! In extension values `\` is written `\\`, `=` is written `\=`, a line
//! feed `\n` and a carriage return `\r`; `|` needs no escape there.

use crate::outputs::format::attack_ics;
use otwatch_proto::{Alert, Severity};
use std::fmt::Write as _;

/// CEF's severity (0-10) of an alert.
pub fn cef_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Unspecified => 0,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// A header field: `\` and `|` escaped, line breaks as spaces.
pub fn escape_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An extension value: `\`, `=`, line feed and carriage return escaped.
pub fn escape_extension(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The longest `msg` CEF allows, in characters.
const MSG_MAX_CHARS: usize = 1023;

/// The CEF text of `alert`, raised on the otwatch server `dvchost`.
pub fn cef(alert: &Alert, dvchost: &str) -> String {
    let attack = attack_ics(&alert.technique);
    let mut title = format!("{} anomaly on {}", alert.detector, alert.name);
    if !alert.technique.is_empty() {
        let _ = write!(title, " ({}", alert.technique);
        if let Some((name, _)) = attack {
            let _ = write!(title, " {name}");
        }
        title.push(')');
    }
    let mut text = format!(
        "CEF:0|otwatch|otwatch|{}|{}|{}|{}|",
        escape_header(env!("CARGO_PKG_VERSION")),
        escape_header(&format!("{}:{}", alert.detector, alert.name)),
        escape_header(&title),
        cef_severity(alert.severity()),
    );
    let mut fields: Vec<(&str, String)> = vec![
        ("rt", (alert.ts_ns.div_euclid(1_000_000)).to_string()),
        ("dvchost", dvchost.to_string()),
        ("externalId", alert.id.clone()),
        ("cat", alert.detector.clone()),
        ("msg", alert.message.chars().take(MSG_MAX_CHARS).collect()),
    ];
    let mut labelled = |key: &'static str, label: &'static str, value: String| {
        if !value.is_empty() {
            fields.push((key_label(key), label.to_string()));
            fields.push((key, value));
        }
    };
    labelled("cs1", "ATT&CK for ICS technique", alert.technique.clone());
    labelled(
        "cs2",
        "ATT&CK for ICS tactic",
        attack.map(|(_, t)| t.to_string()).unwrap_or_default(),
    );
    labelled("cs3", "Site", alert.site.clone());
    labelled("cs4", "Asset", alert.asset.clone());
    labelled("cs5", "Name", alert.name.clone());
    labelled(
        "cs6",
        "ATT&CK for ICS technique name",
        attack.map(|(n, _)| n.to_string()).unwrap_or_default(),
    );
    labelled("flexString1", "Agent", alert.agent.clone());
    labelled("cn1", "First seq", alert.first_seq.to_string());
    labelled("cn2", "Last seq", alert.last_seq.to_string());
    labelled("cfp1", "Observed", alert.observed.to_string());
    labelled("cfp2", "Expected low", alert.expected_low.to_string());
    labelled("cfp3", "Expected high", alert.expected_high.to_string());
    labelled("cfp4", "Score", alert.score.to_string());
    fields.push(("cnt", alert.event_count.to_string()));
    if crate::outputs::is_update(alert) {
        fields.push(("act", alert.state.clone()));
        fields.push(("suser", alert.state_by.clone()));
        fields.push(("flexDate1Label", "State changed at".into()));
        fields.push((
            "flexDate1",
            alert.state_at_ns.div_euclid(1_000_000).to_string(),
        ));
        fields.push(("reason", alert.comment.clone()));
    }
    let mut first = true;
    for (key, value) in fields {
        if value.is_empty() {
            continue;
        }
        if !first {
            text.push(' ');
        }
        first = false;
        let _ = write!(text, "{key}={}", escape_extension(&value));
    }
    text
}

/// The label key of a custom extension key (`cs1` → `cs1Label`).
fn key_label(key: &'static str) -> &'static str {
    match key {
        "cs1" => "cs1Label",
        "cs2" => "cs2Label",
        "cs3" => "cs3Label",
        "cs4" => "cs4Label",
        "cs5" => "cs5Label",
        "cs6" => "cs6Label",
        "flexString1" => "flexString1Label",
        "cn1" => "cn1Label",
        "cn2" => "cn2Label",
        "cfp1" => "cfp1Label",
        "cfp2" => "cfp2Label",
        "cfp3" => "cfp3Label",
        "cfp4" => "cfp4Label",
        other => unreachable!("{other} has no label key"),
    }
}
