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
//! - A change of the `cycle` counter is a CYCLE ([`CycleWatch`]), paired
//!   with the controller's duration as the `opcua` source's documentation
//!   says.
//! - A value's `ts` is its source timestamp (the controller's clock), else
//!   the server's, else the agent's clock when it arrived. A value of
//!   uncertain quality carries attribute `quality = "uncertain"`; a bad
//!   status is no value: it says the item is unavailable, except
//!   `BadWaitingForInitialData` (a server that has no value yet), which is
//!   just no value.
//! - A SAMPLE is reported once: the current value a new subscription sends
//!   again (same value, same source timestamp) is not reported twice.

use super::config::{EventSourceConfig, OpcuaCycleConfig, OpcuaServerConfig, Report, Trigger};
use crate::source::poll::{device_event, CycleConfig, CycleTracker};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DateTime, DeadbandType,
    EventFilter, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    NodeId, QualifiedName, ReadValueId, SimpleAttributeOperand, StatusCode, Variant,
};
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::{BTreeMap, VecDeque};

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
    /// The `cycle` counter.
    CycleCounter,
    /// The `cycle` duration.
    CycleDuration,
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
    /// The SAMPLE last reported: (source time, value).
    last_sample: Option<(i64, f64)>,
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
    /// The monitors of `server`: the cycle's counter and duration, items in
    /// configuration order, event sources (the order of
    /// [`create_requests`]).
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
                last_sample: None,
            })
        });
        let cycle = server.cycle.iter().flat_map(|c| {
            std::iter::once(Monitor::CycleCounter)
                .chain(c.duration.as_ref().map(|_| Monitor::CycleDuration))
        });
        let events = server.events.iter().map(|source| {
            Monitor::Events(EventSource {
                node: source.node.clone(),
                min_severity: source.min_severity,
            })
        });
        cycle.chain(items).chain(events).collect()
    }

    /// How the item is named in logs.
    pub fn label(&self) -> String {
        match self {
            Monitor::Value(item) => format!("{} ({})", item.name, item.node),
            Monitor::CycleCounter => "cycle counter".to_string(),
            Monitor::CycleDuration => "cycle duration".to_string(),
            Monitor::Events(source) => format!("events of {}", source.node),
        }
    }
}

/// The create request of each monitor of `server`, client handles from 1.
pub fn create_requests(server: &OpcuaServerConfig) -> Vec<MonitoredItemCreateRequest> {
    let items = server.items.iter().map(|item| {
        value_request(
            &item.node,
            server.sampling_interval_of(item),
            item.deadband,
            item.trigger,
            server.queue_size,
        )
    });
    // The counter's changes only; the duration at each write, so that a
    // cycle as long as the one before still brings its duration.
    let cycle = server.cycle.iter().flat_map(|c| {
        let counter = value_request(
            &c.counter,
            server.sampling_interval,
            0.0,
            Trigger::StatusValue,
            server.queue_size,
        );
        let duration = c.duration.as_ref().map(|node| {
            value_request(
                node,
                server.sampling_interval,
                0.0,
                Trigger::StatusValueTimestamp,
                server.queue_size,
            )
        });
        std::iter::once(counter).chain(duration)
    });
    let events = server.events.iter().map(event_request);
    // The cycle first: the server takes each item's current value when it
    // creates it, so a value of the other items is never older than the
    // counter's first value, and its cycle is reported.
    cycle
        .chain(items)
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

fn value_request(
    node_text: &str,
    sampling_interval: std::time::Duration,
    deadband: f64,
    trigger: Trigger,
    queue_size: u32,
) -> MonitoredItemCreateRequest {
    let filter = DataChangeFilter {
        trigger: match trigger {
            Trigger::StatusValue => DataChangeTrigger::StatusValue,
            Trigger::StatusValueTimestamp => DataChangeTrigger::StatusValueTimestamp,
        },
        deadband_type: if deadband > 0.0 {
            DeadbandType::Absolute as u32
        } else {
            DeadbandType::None as u32
        },
        deadband_value: deadband,
    };
    MonitoredItemCreateRequest::new(
        ReadValueId::from(node(node_text)),
        MonitoringMode::Reporting,
        MonitoringParameters {
            client_handle: 0,
            sampling_interval: sampling_interval.as_secs_f64() * 1000.0,
            filter: ExtensionObject::from_message(filter),
            queue_size,
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

/// A value's time: its source timestamp, else the server's, else `now`.
fn value_time(value: &DataValue, now: i64) -> i64 {
    time_ns(value.source_timestamp.as_ref())
        .or_else(|| time_ns(value.server_timestamp.as_ref()))
        .unwrap_or(now)
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
        if status == StatusCode::BadWaitingForInitialData {
            return Ok(None);
        }
        if status.is_bad() {
            return Err(Refused::Unavailable(status_name(status)));
        }
        let ts = value_time(value, now);
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
            let source_ts = time_ns(value.source_timestamp.as_ref());
            if let Some(source_ts) = source_ts {
                // The value a new subscription sends again.
                if self.last_sample == Some((source_ts, n)) {
                    return Ok(None);
                }
                self.last_sample = Some((source_ts, n));
            }
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

/// The machine cycles of one server (`cycle`): pairs each change of the
/// counter with the duration the controller wrote with it, and leaves the
/// counting to the polled sources' [`CycleTracker`].
///
/// The rule: the CYCLE of a counter change at source time T carries the
/// duration with the same source timestamp T (both written in one update),
/// whichever of the two arrives first, in one notification or across
/// several. A server sends each item's values in the order they were
/// written, but gives no order between two items: a publication that
/// carries several cycles (cycles shorter than the publishing interval,
/// or a publication that comes late, as the first ones of a subscription
/// often do) may bring the counter's changes first and the durations
/// after, or the other way round. So every duration received is kept by
/// its time until its counter change comes, and every counter change
/// waits for its own duration, oldest first, each reported in the
/// counter's order:
///
/// - a change whose duration has come is reported with it;
/// - a change whose duration did not come although a duration of a later
///   time did (the server dropped or re-stamped the one written with the
///   change: durations come in the order they were written, so it will
///   not come any more) is reported with the duration measured between
///   counter changes instead: never with another cycle's duration;
/// - the others wait. At most `queue_size` changes wait (as many as one
///   publication can carry): beyond, the oldest is measured, and so is
///   every waiting change while the duration is unavailable (a bad
///   status, an item the server does not know).
///
/// At a new session the first counter change the server sends is the
/// cycle it shows now: the one the other items' first values were read at
/// (the server reads the current value of every item when it creates
/// them, and sends it). With its duration it is reported, at the very
/// first session too, as the samples sent with it are (a SAMPLE always has
/// its CYCLE), unless it is the cycle last reported (a reconnection, whose
/// samples are not reported again either); without, it is where the count
/// starts. What ended while the agent was away is unknown and not
/// counted. If a newer
/// duration arrives before the first change's own (the counter was read
/// before a cycle ended, the duration after), the cycle it ends is the one
/// shown. No cycle is reported twice: none at or before the last one
/// reported.
#[derive(Debug)]
pub struct CycleWatch {
    tracker: CycleTracker,
    name: String,
    /// No counter change reported or measured in this session yet.
    fresh: bool,
    /// The source time of the last CYCLE reported, across sessions.
    last_reported: Option<i64>,
    has_duration: bool,
    /// Whether the duration can come in this session (no bad status).
    duration_available: bool,
    unit_ms: f64,
    /// The durations received and not yet taken: source time -> ms.
    durations: BTreeMap<i64, f64>,
    /// Counter changes waiting for their duration, oldest first: (source
    /// time, counter).
    waiting: VecDeque<(i64, f64)>,
    /// How many changes may wait at once.
    max_waiting: usize,
}

impl CycleWatch {
    /// The cycles of a server whose items keep `queue_size` values between
    /// two publications.
    pub fn new(config: &OpcuaCycleConfig, queue_size: u32) -> CycleWatch {
        CycleWatch {
            tracker: CycleTracker::new(&CycleConfig {
                counter: Some(config.counter.clone()),
                done: None,
                duration: config.duration.clone(),
                name: config.name.clone(),
            }),
            name: config.name.clone(),
            fresh: true,
            last_reported: None,
            has_duration: config.duration.is_some(),
            duration_available: true,
            unit_ms: config.unit.ms(),
            durations: BTreeMap::new(),
            waiting: VecDeque::new(),
            max_waiting: (queue_size as usize).max(1),
        }
    }

    /// At each new session: the changes still waiting for their duration
    /// when the last one ended are measured (their durations are lost with
    /// it; their samples were reported or wait for them), into `out`; what
    /// changed while the agent was not subscribed is unknown, so the next
    /// counter value starts afresh.
    pub fn connected(&mut self, asset: &str, out: &mut Vec<ControllerEvent>) {
        self.duration_available = false;
        self.resolve(asset, out);
        self.tracker.connected();
        self.fresh = true;
        self.duration_available = true;
        self.durations.clear();
        self.waiting.clear();
    }

    /// The server refused the duration's item at this session's start:
    /// every counter change of the session is measured.
    pub fn duration_refused(&mut self) {
        self.duration_available = false;
    }

    /// The CYCLE events of a counter value at `ts` with the controller's
    /// duration `ms`, if known.
    fn report(
        &mut self,
        asset: &str,
        count: f64,
        ms: Option<f64>,
        ts: i64,
        out: &mut Vec<ControllerEvent>,
    ) {
        let before = out.len();
        let last = self.last_reported;
        if std::mem::take(&mut self.fresh) {
            // The cycle the server shows at the session's start.
            if let Some(ms) = ms {
                self.report_shown(asset, ms, ts, out);
            }
        }
        self.tracker.update(asset, count, ms, ts, out);
        // A cycle reported already (the one a session started with, or
        // the one a duration reported) is not reported again.
        if let Some(last) = last {
            let new: Vec<ControllerEvent> =
                out.drain(before..).filter(|e| e.ts_ns > last).collect();
            out.extend(new);
        }
        if out.len() > before {
            self.last_reported = Some(ts);
        }
    }

    /// Reports the cycle ended at `ts` that the server shows, unless it was
    /// reported before.
    fn report_shown(&mut self, asset: &str, ms: f64, ts: i64, out: &mut Vec<ControllerEvent>) {
        if self.last_reported.is_none_or(|last| ts > last) {
            let mut e = device_event(asset, ts, EventKind::Cycle, &self.name);
            e.value = Some(ms);
            out.push(e);
            self.last_reported = Some(ts);
        }
    }

    /// The source time of the oldest counter change waiting for its
    /// duration.
    pub fn waiting_since(&self) -> Option<i64> {
        self.waiting.front().map(|(ts, _)| *ts)
    }

    /// Reports the waiting changes that can be: oldest first, each with
    /// its own duration, or measured when it will not come.
    fn resolve(&mut self, asset: &str, out: &mut Vec<ControllerEvent>) {
        while let Some(&(ts, count)) = self.waiting.front() {
            let ms = if !self.has_duration {
                None
            } else if let Some(ms) = self.durations.remove(&ts) {
                Some(ms)
            } else if !self.duration_available
                || self.waiting.len() > self.max_waiting
                || self.durations.range(ts..).next().is_some()
            {
                // Its duration will not come (a later one came first).
                None
            } else {
                break;
            };
            self.waiting.pop_front();
            self.report(asset, count, ms, ts, out);
            // Older durations belong to no change still to come.
            self.durations = self.durations.split_off(&ts);
        }
        // Durations whose counter change is not known yet, bounded.
        while self.durations.len() > self.max_waiting {
            self.durations.pop_first();
        }
    }

    /// A notification of the counter: the CYCLE events it completes.
    pub fn counter(
        &mut self,
        asset: &str,
        value: &DataValue,
        now: i64,
        out: &mut Vec<ControllerEvent>,
    ) -> Result<(), Refused> {
        let Some((ts, count)) = cycle_number(value, now, "counter")? else {
            return Ok(());
        };
        self.waiting.push_back((ts, count));
        self.resolve(asset, out);
        Ok(())
    }

    /// A notification of the duration: the CYCLEs of the counter changes
    /// that waited for it, if any.
    pub fn duration(
        &mut self,
        asset: &str,
        value: &DataValue,
        now: i64,
        out: &mut Vec<ControllerEvent>,
    ) -> Result<(), Refused> {
        let (ts, duration) = match cycle_number(value, now, "duration") {
            Ok(Some(value)) => value,
            Ok(None) => return Ok(()),
            Err(refused) => {
                if matches!(refused, Refused::Unavailable(_)) {
                    self.duration_available = false;
                    self.resolve(asset, out);
                }
                return Err(refused);
            }
        };
        self.duration_available = true;
        let ms = duration * self.unit_ms;
        // At a session's start: whether the first counter change waits
        // and is older than this duration (its own will not come).
        let fresh = self.fresh;
        let first_waits = self.waiting.front().is_some_and(|(waited, _)| *waited < ts);
        self.durations.insert(ts, ms);
        self.resolve(asset, out);
        if fresh && first_waits && self.durations.contains_key(&ts) {
            // The counter moved on while the session started (its first
            // value was read before the cycle this duration ends): that
            // cycle is reported now, and the counter's change to it, if it
            // comes, is not reported again.
            self.report_shown(asset, ms, ts, out);
        }
        Ok(())
    }
}

/// A cycle variable's time and number; `None` while the server has no
/// value yet.
fn cycle_number(value: &DataValue, now: i64, what: &str) -> Result<Option<(i64, f64)>, Refused> {
    let status = value.status.unwrap_or(StatusCode::Good);
    if status == StatusCode::BadWaitingForInitialData {
        return Ok(None);
    }
    if status.is_bad() {
        return Err(Refused::Unavailable(status_name(status)));
    }
    let variant = value.value.as_ref().unwrap_or(&Variant::Empty);
    match number(variant) {
        Some(n) if n.is_finite() => Ok(Some((value_time(value, now), n))),
        _ => Err(Refused::Unsupported(format!(
            "a cycle {what} must be a number, not a {}",
            type_name(variant)
        ))),
    }
}

/// Puts a batch's events in the order the detector reads them: by source
/// time, and at one time a CYCLE before the SAMPLEs (the values read at a
/// cycle's end, which the detector relates to the latest cycle, as the
/// polled sources' `on_cycle` samples come after their CYCLE). SAMPLEs at
/// or after the time of a counter change still `waiting` for its duration
/// are moved to `held`, to go with the next batch; `events` starts with
/// those held before.
pub fn order_by_cycles(
    events: &mut Vec<ControllerEvent>,
    held: &mut Vec<ControllerEvent>,
    waiting: Option<i64>,
) {
    let mut all = std::mem::take(held);
    all.append(events);
    all.sort_by_key(|e| (e.ts_ns, e.kind() != EventKind::Cycle));
    for e in all {
        match waiting {
            Some(since) if e.ts_ns >= since && e.kind() == EventKind::Sample => held.push(e),
            _ => events.push(e),
        }
    }
}
