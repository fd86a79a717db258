//! otwatch wire types and the contracts every component shares.
//!
//! - [`v1`]: the generated protobuf messages and the `Ingest` gRPC service
//!   (package `otwatch.v1`, see `proto/otwatch/v1/otwatch.proto`).
//! - [`identity`]: who an agent is and how its certificate says so;
//! - [`limits`]: the limits on everything an agent may send, and the one
//!   validation function that both the agent (before it queues) and the
//!   collector (before it appends) run, so a well-configured agent never
//!   produces a batch the collector refuses.
//! - [`arrow`] (feature `arrow`): the Arrow schemas of the `events` and
//!   `alerts` tables and the conversion from protobuf. The agent does not
//!   enable the feature and so never links Arrow.

#[cfg(feature = "arrow")]
pub mod arrow;
pub mod identity;
pub mod limits;

/// Generated protobuf types and gRPC stubs of `otwatch.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("otwatch.v1");
}

pub use v1::{Ack, Alert, ControllerEvent, EventBatch, EventKind, Severity};

/// Upper-case name of an event kind, as stored in the `kind` column.
pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Unspecified => "UNSPECIFIED",
        EventKind::Cycle => "CYCLE",
        EventKind::Sample => "SAMPLE",
        EventKind::State => "STATE",
        EventKind::Change => "CHANGE",
        EventKind::Alarm => "ALARM",
        EventKind::Access => "ACCESS",
        EventKind::Log => "LOG",
    }
}

/// Parses a kind name as written by [`kind_name`] (case-insensitive).
pub fn parse_kind(name: &str) -> Option<EventKind> {
    let kind = match name.to_ascii_uppercase().as_str() {
        "CYCLE" => EventKind::Cycle,
        "SAMPLE" => EventKind::Sample,
        "STATE" => EventKind::State,
        "CHANGE" => EventKind::Change,
        "ALARM" => EventKind::Alarm,
        "ACCESS" => EventKind::Access,
        "LOG" => EventKind::Log,
        _ => return None,
    };
    Some(kind)
}

/// Lower-case name of a severity, as stored in the `severity` column.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Unspecified => "unspecified",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Parses a severity name as written by [`severity_name`].
pub fn parse_severity(name: &str) -> Severity {
    match name {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => Severity::Unspecified,
    }
}

/// The JSON-lines form of an event, as the agent's `file` source reads it and
/// `otwatch` tools write it. `kind` is a name (`"CYCLE"`), `ts` is RFC 3339 or
/// nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEvent {
    /// Controller or machine.
    pub asset: String,
    /// Event kind name: CYCLE, SAMPLE, STATE, CHANGE, ALARM, ACCESS, LOG.
    pub kind: String,
    /// Tag, cycle, alarm or program name.
    #[serde(default)]
    pub name: String,
    /// Event time in nanoseconds since the Unix epoch (UTC).
    pub ts_ns: i64,
    /// Numeric value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Text value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Other attributes.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub attrs: std::collections::HashMap<String, String>,
}

impl JsonEvent {
    /// The protobuf event for this line; `site`, `agent` and `seq` are the agent's to fill.
    pub fn into_event(self) -> Result<ControllerEvent, String> {
        let kind = parse_kind(&self.kind).ok_or_else(|| {
            format!(
                "unknown kind {:?} (expected CYCLE, SAMPLE, STATE, CHANGE, ALARM, ACCESS or LOG)",
                self.kind
            )
        })?;
        Ok(ControllerEvent {
            site: String::new(),
            agent: String::new(),
            seq: 0,
            ts_ns: self.ts_ns,
            asset: self.asset,
            kind: kind as i32,
            name: self.name,
            value: self.value,
            text: self.text,
            attrs: self.attrs,
        })
    }

    /// The JSON form of a protobuf event.
    pub fn from_event(event: &ControllerEvent) -> Self {
        JsonEvent {
            asset: event.asset.clone(),
            kind: kind_name(event.kind()).to_string(),
            name: event.name.clone(),
            ts_ns: event.ts_ns,
            value: event.value,
            text: event.text.clone(),
            attrs: event.attrs.clone(),
        }
    }
}
