//! Alert outputs besides the `alerts` table: one readable line per alert on
//! standard output, and a JSON-lines file for other tools to follow.

use crate::config::AlertSinkConfig;
use anyhow::Context;
use otwatch_proto::{severity_name, Alert};
use std::io::Write;
use std::path::Path;

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

pub struct AlertSinks {
    stdout: bool,
    file: Option<std::fs::File>,
}

impl AlertSinks {
    pub fn open(config: &AlertSinkConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let file = match &config.jsonl_file {
            Some(path) => {
                let path = data_dir.join(path);
                Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| format!("cannot open alert file {}", path.display()))?,
                )
            }
            None => None,
        };
        Ok(AlertSinks {
            stdout: config.stdout,
            file,
        })
    }

    /// Sends one alert to every configured output. A failing output is
    /// logged, never fatal: the alert is in the `alerts` table regardless.
    pub fn emit(&mut self, alert: &Alert) {
        if self.stdout {
            println!("ALERT {}", alert_line(alert));
        }
        if let Some(file) = &mut self.file {
            let mut line = alert_json(alert).to_string();
            line.push('\n');
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "cannot append to the alert file");
            }
        }
    }
}
