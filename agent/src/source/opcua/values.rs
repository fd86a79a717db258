//! How OPC UA notifications become events, and the monitored-item requests
//! that ask for them. No I/O: `tests.rs` drives it with values of its own.
//!
//! - A data change of a number is a SAMPLE (`value`, attribute `unit`); of
//!   a boolean a STATE `ON`/`OFF` (`value` 1/0); of a text or localized
//!   text a STATE with the text; an item with `report = "state"` turns a
//!   number into a STATE too (its entry in `states`, or the number as
//!   written). A STATE is reported when its text changes only, across
//!   reconnections too (a re-created subscription sends every item's
//!   current value again).
//! - An event (alarm, condition) is an ALARM: `name` the condition's name
//!   (or the source's name), `text` its message, `value` its severity,
//!   attributes `source`, `event_type` and `severity`. A condition that
//!   reports itself inactive (its alarm cleared) and events below the
//!   source's `min_severity` are left out.
//! - A value's `ts` is its source timestamp (the controller's clock), else
//!   the server's, else the agent's clock when it arrived. A value of
//!   uncertain quality carries attribute `quality = "uncertain"`; a bad
//!   status is no value: it says the item is unavailable.

use super::config::{EventSourceConfig, ItemConfig, OpcuaServerConfig, Report};
use crate::source::poll::device_event;
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DateTime, DeadbandType,
    EventFilter, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    NodeId, QualifiedName, ReadValueId, SimpleAttributeOperand, StatusCode, Variant,
};
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::BTreeMap;

/// The BaseEventType, ConditionType and AlarmConditionType of namespace 0.
const BASE_EVENT_TYPE: u32 = 2041;
const CONDITION_TYPE: u32 = 2782;
const ALARM_CONDITION_TYPE: u32 = 2915;

/// The event fields asked for, in this order.
const FIELDS: [(u32, &[&str]); 6] = [
    (BASE_EVENT_TYPE, &["Time"]),
    (BASE_EVENT_TYPE, &["Severity"]),
    (BASE_EVENT_TYPE, &["Message"]),
    (BASE_EVENT_TYPE, &["SourceName"]),
    (BASE_EVENT_TYPE, &["EventType"]),
    (CONDITION_TYPE, &["ConditionName"]),
];
/// Asked for last: whether an alarm is active (conditions only).
const ACTIVE_FIELD: (u32, &[&str]) = (ALARM_CONDITION_TYPE, &["ActiveState", "Id"]);

/// What one monitored item reports, by its client handle (index + 1).
#[derive(Debug)]
pub enum Monitor {
    Value(ValueItem),
    Events(EventSource),
}

/// A monitored variable and what it last reported.
#[derive(Debug)]
pub struct ValueItem {
    pub name: String,
    pub node: String,
    unit: Option<String>,
    report: Option<Report>,
    states: BTreeMap<i64, String>,
    /// The STATE text last reported.
    last_state: Option<String>,
}

/// A monitored event notifier.
#[derive(Debug)]
pub struct EventSource {
    pub node: String,
    min_severity: u16,
}

/// Why a notification gives no event.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A bad status: the server cannot give the item's value (deleted,
    /// unknown, no access); the text names the status.
    Unavailable(String),
    /// A value of a type that cannot be an event of this item.
    Unsupported(String),
}

impl Monitor {
    /// The monitors of `server`, items first, in configuration order.
    pub fn of(server: &OpcuaServerConfig) -> Vec<Monitor> {
        let items = server.items.iter().map(|item| {
            Monitor::Value(ValueItem {
                name: item.name.clone(),
                node: item.node.clone(),
                unit: item.unit.clone(),
                report: item.report,
                states: item
                    .states
                    .iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
                    .collect(),
                last_state: None,
            })
        });
        let events = server.events.iter().map(|source| {
            Monitor::Events(EventSource {
                node: source.node.clone(),
                min_severity: source.min_severity,
            })
        });
        items.chain(events).collect()
    }

    /// How the item is named in logs.
    pub fn label(&self) -> String {
        match self {
            Monitor::Value(item) => format!("{} ({})", item.name, item.node),
            Monitor::Events(source) => format!("events of {}", source.node),
        }
    }
}

/// The create request of each monitor of `server`, client handles from 1.
pub fn create_requests(server: &OpcuaServerConfig) -> Vec<MonitoredItemCreateRequest> {
    let items = server.items.iter().map(|item| value_request(server, item));
    let events = server.events.iter().map(event_request);
    items
        .chain(events)
        .enumerate()
        .map(|(i, mut request)| {
            request.requested_parameters.client_handle = i as u32 + 1;
            request
        })
        .collect()
}

fn node(text: &str) -> NodeId {
    // Checked at load.
    super::config::parse_node(text).unwrap_or_else(|_| NodeId::null())
}

fn value_request(server: &OpcuaServerConfig, item: &ItemConfig) -> MonitoredItemCreateRequest {
    let filter = DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: if item.deadband > 0.0 {
            DeadbandType::Absolute as u32
        } else {
            DeadbandType::None as u32
        },
        deadband_value: item.deadband,
    };
    MonitoredItemCreateRequest::new(
        ReadValueId::from(node(&item.node)),
        MonitoringMode::Reporting,
        MonitoringParameters {
            client_handle: 0,
            sampling_interval: server.sampling_interval_of(item).as_secs_f64() * 1000.0,
            filter: ExtensionObject::from_message(filter),
            queue_size: server.queue_size,
            discard_oldest: true,
        },
    )
}

fn operand(type_id: u32, path: &[&str]) -> SimpleAttributeOperand {
    SimpleAttributeOperand {
        type_definition_id: NodeId::new(0, type_id),
        browse_path: Some(path.iter().map(|p| QualifiedName::new(0, *p)).collect()),
        attribute_id: AttributeId::Value as u32,
        index_range: Default::default(),
    }
}

fn event_request(source: &EventSourceConfig) -> MonitoredItemCreateRequest {
    let select = FIELDS
        .iter()
        .chain([&ACTIVE_FIELD])
        .map(|(type_id, path)| operand(*type_id, path))
        .collect();
    let filter = EventFilter {
        select_clauses: Some(select),
        where_clause: Default::default(),
    };
    let mut item = ReadValueId::from(node(&source.node));
    item.attribute_id = AttributeId::EventNotifier as u32;
    MonitoredItemCreateRequest::new(
        item,
        MonitoringMode::Reporting,
        MonitoringParameters {
            client_handle: 0,
            // Events are not sampled: the server sends each one.
            sampling_interval: 0.0,
            filter: ExtensionObject::from_message(filter),
            queue_size: 1000,
            discard_oldest: true,
        },
    )
}

/// Nanoseconds since the epoch of an OPC UA time, if it is set.
fn time_ns(time: Option<&DateTime>) -> Option<i64> {
    let time = time?;
    if time.is_null() {
        return None;
    }
    time.as_chrono().timestamp_nanos_opt().filter(|ns| *ns > 0)
}

/// A status's name for the log (`BadNodeIdUnknown`).
pub fn status_name(status: StatusCode) -> String {
    format!("{status}")
}

/// A scalar's number, if it is one (a boolean as 1/0).
fn number(value: &Variant) -> Option<f64> {
    Some(match value {
        Variant::Boolean(b) => f64::from(u8::from(*b)),
        Variant::SByte(v) => f64::from(*v),
        Variant::Byte(v) => f64::from(*v),
        Variant::Int16(v) => f64::from(*v),
        Variant::UInt16(v) => f64::from(*v),
        Variant::Int32(v) => f64::from(*v),
        Variant::UInt32(v) => f64::from(*v),
        Variant::Int64(v) => *v as f64,
        Variant::UInt64(v) => *v as f64,
        Variant::Float(v) => f64::from(*v),
        Variant::Double(v) => *v,
        _ => return None,
    })
}

/// A scalar's text, if it is one.
fn text(value: &Variant) -> Option<String> {
    match value {
        Variant::String(s) => Some(s.as_ref().to_string()),
        Variant::LocalizedText(t) => Some(t.text.as_ref().to_string()),
        _ => None,
    }
}

/// The name of a variant's type, for the log.
fn type_name(value: &Variant) -> String {
    let debug = format!("{value:?}");
    debug.split(['(', ' ']).next().unwrap_or("?").to_string()
}

impl ValueItem {
    /// The event of one data change of this item, at `now` unless the
    /// value carries a time; `Ok(None)` when it changes nothing.
    pub fn event(
        &mut self,
        asset: &str,
        value: &DataValue,
        now: i64,
    ) -> Result<Option<ControllerEvent>, Refused> {
        let status = value.status.unwrap_or(StatusCode::Good);
        if status.is_bad() {
            return Err(Refused::Unavailable(status_name(status)));
        }
        let ts = time_ns(value.source_timestamp.as_ref())
            .or_else(|| time_ns(value.server_timestamp.as_ref()))
            .unwrap_or(now);
        let variant = value.value.as_ref().unwrap_or(&Variant::Empty);
        let number = number(variant);
        let text = text(variant);
        let state = match self.report {
            Some(Report::State) => true,
            Some(Report::Sample) => false,
            None => number.is_none() || matches!(variant, Variant::Boolean(_)),
        };
        let mut event = if state {
            let shown = match (variant, number, text) {
                (Variant::Boolean(b), _, _) => if *b { "ON" } else { "OFF" }.to_string(),
                (_, _, Some(text)) => text,
                (_, Some(n), _) if !self.states.is_empty() => self
                    .states
                    .get(&(n as i64))
                    .filter(|_| n.fract() == 0.0)
                    .cloned()
                    .unwrap_or_else(|| format!("UNKNOWN({n})")),
                (_, Some(n), _) => format!("{n}"),
                _ => {
                    return Err(Refused::Unsupported(format!(
                        "a {} is not a state",
                        type_name(variant)
                    )))
                }
            };
            if self.last_state.as_deref() == Some(shown.as_str()) {
                return Ok(None);
            }
            let mut e = device_event(asset, ts, EventKind::State, &self.name);
            e.text = Some(shown.clone());
            e.value = number;
            self.last_state = Some(shown);
            e
        } else {
            let Some(n) = number else {
                return Err(Refused::Unsupported(format!(
                    "a {} is not a number",
                    type_name(variant)
                )));
            };
            let mut e = device_event(asset, ts, EventKind::Sample, &self.name);
            e.value = Some(n);
            if let Some(unit) = &self.unit {
                e.attrs.insert("unit".to_string(), unit.clone());
            }
            e
        };
        if status.is_uncertain() {
            event
                .attrs
                .insert("quality".to_string(), "uncertain".to_string());
        }
        event
            .attrs
            .insert("node".to_string(), self.node.trim().to_string());
        Ok(Some(event))
    }
}

impl EventSource {
    /// The ALARM of one event notification (its fields in the order of
    /// the request's select clauses), or `None` when it is left out.
    pub fn event(&self, asset: &str, fields: &[Variant], now: i64) -> Option<ControllerEvent> {
        let field = |i: usize| fields.get(i).unwrap_or(&Variant::Empty);
        let severity = number(field(1)).unwrap_or(0.0);
        if severity < f64::from(self.min_severity) {
            return None;
        }
        // A condition whose alarm is no longer active.
        if matches!(field(FIELDS.len()), Variant::Boolean(false)) {
            return None;
        }
        let ts = match field(0) {
            Variant::DateTime(t) => time_ns(Some(t)),
            _ => None,
        }
        .unwrap_or(now);
        let source = text(field(3)).unwrap_or_default();
        let name = text(field(5))
            .or_else(|| match field(5) {
                Variant::QualifiedName(q) => Some(q.name.as_ref().to_string()),
                _ => None,
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                if source.is_empty() {
                    "opcua_event".to_string()
                } else {
                    source.clone()
                }
            });
        let mut e = device_event(asset, ts, EventKind::Alarm, &name);
        e.value = Some(severity);
        e.text = text(field(2)).filter(|m| !m.is_empty());
        e.attrs
            .insert("severity".to_string(), format!("{severity}"));
        if !source.is_empty() {
            e.attrs.insert("source".to_string(), source);
        }
        if let Variant::NodeId(t) = field(4) {
            e.attrs.insert("event_type".to_string(), t.to_string());
        }
        e.attrs
            .insert("notifier".to_string(), self.node.trim().to_string());
        Some(e)
    }
}
