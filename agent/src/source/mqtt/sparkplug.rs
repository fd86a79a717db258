//! Sparkplug B (Eclipse Sparkplug 3.0) on the `mqtt` source: the payload
//! (`org.eclipse.tahu.protobuf.Payload`, the fields the agent reads; the
//! others are skipped when decoding) and the state a host application keeps
//! per edge node: the aliases of its births, its `seq` and `bdSeq`.
//!
//! # Topics
//!
//! `spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]`.
//! NBIRTH, NDATA, NDEATH are the edge node's; DBIRTH, DDATA, DDEATH its
//! devices'. NCMD, DCMD (commands of other host applications) and
//! `spBv1.0/STATE/<host_id>` are taken and acknowledged, and are no events.
//!
//! # Events
//!
//! Asset `<edge_node_id>` (node messages) or `<edge_node_id>/<device_id>`,
//! attribute `group`:
//!
//! - NBIRTH / DBIRTH: a STATE `sparkplug` = `ONLINE`, and a SAMPLE per
//!   metric with a value (`bdSeq` and `Node Control/*` left out). The
//!   birth's aliases are kept: later DATA messages name metrics by alias.
//! - NDATA / DDATA: a SAMPLE per metric: numbers as `value` (booleans 1 /
//!   0), String, Text and UUID as `text`, DateTime as `text` (RFC 3339).
//!   Transient metrics (`is_transient`, not to be historized) and null
//!   values are no events. Other datatypes (DataSet, Bytes, File,
//!   Template, PropertySet, arrays) are counted (`unsupported`) and logged
//!   once per metric.
//! - NDEATH: a STATE `OFFLINE` for the node and each of its devices not
//!   known to be offline already (a death delivered twice says nothing
//!   more); DDEATH: a STATE `OFFLINE` for the device.
//!
//! `ts`: the metric's timestamp (ms), else the payload's, else the agent's
//! clock.
//!
//! # Read-only
//!
//! A DATA message naming an alias no birth announced (the agent started
//! after the birth, or lost it) has that metric counted (`unknown_aliases`),
//! logged once per node or device until its next birth, and skipped. The
//! specification has a host application then ask the node for a rebirth
//! (NCMD `Node Control/Rebirth`): the agent never does, it publishes
//! nothing; the node's metrics come back with its next birth.
//!
//! # Sequence numbers
//!
//! `seq` (0 to 255, wrapping) is followed per edge node over all its
//! messages but NDEATH; a number other than the one expected is a gap,
//! counted (`seq_gaps`) and logged. An NDEATH whose `bdSeq` differs from
//! the current NBIRTH's belongs to an earlier session (the broker sent the
//! old will late): it is ignored, counted (`stale_deaths`) and logged. An
//! NDEATH of a node whose NBIRTH the agent did not see, or without
//! `bdSeq`, is taken.

use crate::source::SourceMetrics;
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

/// The first topic level of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";

/// `org.eclipse.tahu.protobuf.Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Unix time in ms when the message was made.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0 to 255, wrapping, per edge node.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (metadata, properties, DataSet and Template values are
/// skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Unix time in ms of the value.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// One of the `datatype` constants.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// The metric by which an NBIRTH and the NDEATH that ends it are paired.
pub const BD_SEQ: &str = "bdSeq";

impl Metric {
    /// The `bdSeq` metric of an NBIRTH or NDEATH, as an edge node sends it.
    pub fn bd_seq(n: u64) -> Metric {
        Metric::named(BD_SEQ, 0, datatype::INT64, MetricValue::LongValue(n))
    }

    /// A metric by name and alias, as births carry them.
    pub fn named(name: &str, alias: u64, datatype: u32, value: MetricValue) -> Metric {
        Metric {
            name: Some(name.into()),
            alias: Some(alias),
            datatype: Some(datatype),
            value: Some(value),
            ..Default::default()
        }
    }

    /// A metric by alias only, as DATA messages after a birth carry them.
    pub fn aliased(alias: u64, value: MetricValue) -> Metric {
        Metric {
            alias: Some(alias),
            value: Some(value),
            ..Default::default()
        }
    }
}

impl Payload {
    /// The encoded payload of `metrics` at `timestamp` (ms) with `seq`:
    /// what an edge node publishes (for simulators and tests; the agent
    /// itself never publishes).
    pub fn encoded(timestamp: u64, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        prost::Message::encode_to_vec(&Payload {
            timestamp: Some(timestamp),
            metrics,
            seq,
            ..Default::default()
        })
    }
}

/// Sparkplug 3.0 datatypes the agent reads.
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
}

/// A metric's value as an event carries it.
#[derive(Debug, Clone, PartialEq)]
enum Reading {
    Number(f64),
    Text(String),
}

/// Why a metric's value is not read.
enum NotRead {
    /// A datatype the agent does not map (DataSet, Template, arrays...).
    Unsupported,
    /// The value field does not fit the datatype.
    Mismatch,
}

/// The value of `value` read as `datatype` (0: guessed from the field).
fn reading(datatype: u32, value: &MetricValue) -> Result<Reading, NotRead> {
    use datatype::*;
    use MetricValue::*;
    let integer = || match value {
        IntValue(v) => Ok(u64::from(*v)),
        LongValue(v) => Ok(*v),
        _ => Err(NotRead::Mismatch),
    };
    let number = |v: f64| Ok(Reading::Number(v));
    match (datatype, value) {
        // Signed values are two's complement in the unsigned fields.
        (INT8, _) => number(f64::from(integer()? as u8 as i8)),
        (INT16, _) => number(f64::from(integer()? as u16 as i16)),
        (INT32, _) => number(f64::from(integer()? as u32 as i32)),
        (INT64, _) => number(integer()? as i64 as f64),
        (UINT8 | UINT16 | UINT32 | UINT64, _) => number(integer()? as f64),
        (FLOAT | DOUBLE, FloatValue(v)) => number(f64::from(*v)),
        (FLOAT | DOUBLE, DoubleValue(v)) => number(*v),
        (BOOLEAN, BooleanValue(b)) => number(f64::from(u8::from(*b))),
        (STRING | TEXT | UUID, StringValue(s)) => Ok(Reading::Text(s.clone())),
        (DATETIME, _) => {
            let ms = i64::try_from(integer()?).map_err(|_| NotRead::Mismatch)?;
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| Reading::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
                .ok_or(NotRead::Mismatch)
        }
        (0, IntValue(v)) => number(f64::from(*v)),
        (0, LongValue(v)) => number(*v as f64),
        (0, FloatValue(v)) => number(f64::from(*v)),
        (0, DoubleValue(v)) => number(*v),
        (0, BooleanValue(b)) => number(f64::from(u8::from(*b))),
        (0, StringValue(s)) => Ok(Reading::Text(s.clone())),
        (1..=15, _) => Err(NotRead::Mismatch),
        _ => Err(NotRead::Unsupported),
    }
}

/// A metric as a birth announced it.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    datatype: u32,
}

/// The metrics of an edge node or a device, from its last birth.
#[derive(Debug, Default)]
struct Births {
    /// Online (a birth) or offline (a death); `None` before either.
    online: Option<bool>,
    aliases: HashMap<u64, Known>,
    datatypes: HashMap<String, u32>,
    /// An unknown alias was logged since the last birth.
    unknown_logged: bool,
}

impl Births {
    fn born(&mut self, metrics: &[Metric]) {
        self.online = Some(true);
        self.aliases.clear();
        self.datatypes.clear();
        self.unknown_logged = false;
        for m in metrics {
            let (Some(name), datatype) = (&m.name, m.datatype.unwrap_or(0)) else {
                continue;
            };
            if let Some(alias) = m.alias {
                self.aliases.insert(
                    alias,
                    Known {
                        name: name.clone(),
                        datatype,
                    },
                );
            }
            self.datatypes.insert(name.clone(), datatype);
        }
    }

    fn died(&mut self) {
        self.online = Some(false);
        self.aliases.clear();
        self.datatypes.clear();
    }
}

/// What the agent knows of one edge node.
#[derive(Debug, Default)]
struct Node {
    node: Births,
    devices: HashMap<String, Births>,
    /// `bdSeq` of the current NBIRTH.
    bd_seq: Option<u64>,
    /// The last `seq` seen.
    seq: Option<u64>,
}

/// The Sparkplug state of an `mqtt` source: its edge nodes by group and
/// id.
#[derive(Debug, Default)]
pub struct Sparkplug {
    nodes: HashMap<(String, String), Node>,
    /// Metrics whose value was not read, logged once each.
    logged: HashSet<(String, String)>,
}

/// The parts of a Sparkplug topic.
struct Topic<'a> {
    group: &'a str,
    kind: &'a str,
    node: &'a str,
    device: Option<&'a str>,
}

fn parse_topic(topic: &str) -> Result<Option<Topic<'_>>, String> {
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.first() != Some(&NAMESPACE) {
        return Err(format!(
            "not a Sparkplug B topic (it starts with {NAMESPACE}/)"
        ));
    }
    if levels.get(1) == Some(&"STATE") {
        // A host application's state, not an edge node's.
        return Ok(None);
    }
    let (group, kind, node, device) = match levels[..] {
        [_, g, k, n] => (g, k, n, None),
        [_, g, k, n, d] => (g, k, n, Some(d)),
        _ => {
            return Err("not spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]".into())
        }
    };
    if group.is_empty() || node.is_empty() || device.is_some_and(str::is_empty) {
        return Err("a Sparkplug topic level is empty".into());
    }
    let device_message = match kind {
        "NBIRTH" | "NDATA" | "NDEATH" | "NCMD" => false,
        "DBIRTH" | "DDATA" | "DDEATH" | "DCMD" => true,
        other => return Err(format!("{other:?} is not a Sparkplug message type")),
    };
    if device_message != device.is_some() {
        return Err(format!(
            "{kind} {}",
            if device_message {
                "needs a device id"
            } else {
                "takes no device id"
            }
        ));
    }
    Ok(Some(Topic {
        group,
        kind,
        node,
        device,
    }))
}

/// `bdSeq` among a birth's or death's metrics.
fn bd_seq(metrics: &[Metric]) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ))
        .and_then(|m| match m.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            Some(MetricValue::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// Unix ms as `ts`, if sensible.
fn ms_to_ns(ms: Option<u64>) -> Option<i64> {
    ms.and_then(|ms| super::super::poll::controller_time_ns(ms as f64))
}

impl Sparkplug {
    /// The events of one message on `topic` at `now_ns`, counting on
    /// `metrics`; or why the message cannot be read (not a Sparkplug topic,
    /// not a Sparkplug payload).
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
        metrics: &SourceMetrics,
    ) -> Result<Vec<ControllerEvent>, String> {
        let Some(t) = parse_topic(topic)? else {
            return Ok(Vec::new());
        };
        if t.kind == "NCMD" || t.kind == "DCMD" {
            return Ok(Vec::new());
        }
        let payload = <Payload as prost::Message>::decode(payload)
            .map_err(|e| format!("payload is not Sparkplug B protobuf: {e}"))?;
        let ts_ns = ms_to_ns(payload.timestamp).unwrap_or(now_ns);
        let asset = match t.device {
            Some(device) => format!("{}/{device}", t.node),
            None => t.node.to_string(),
        };
        let event = |ts_ns: i64, asset: &str, kind: EventKind, name: &str| ControllerEvent {
            ts_ns,
            asset: asset.to_string(),
            kind: kind as i32,
            name: name.to_string(),
            attrs: HashMap::from([("group".to_string(), t.group.to_string())]),
            ..Default::default()
        };
        let state = |asset: &str, text: &str| {
            let mut e = event(ts_ns, asset, EventKind::State, "sparkplug");
            e.text = Some(text.to_string());
            e
        };
        let node = self
            .nodes
            .entry((t.group.to_string(), t.node.to_string()))
            .or_default();

        if t.kind == "NDEATH" {
            let death = bd_seq(&payload.metrics);
            if let (Some(birth), Some(death)) = (node.bd_seq, death) {
                if birth != death {
                    metrics
                        .sparkplug_stale_deaths
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        group = t.group,
                        edge_node = t.node,
                        birth_bd_seq = birth,
                        death_bd_seq = death,
                        "ignoring a Sparkplug NDEATH of an earlier session (its bdSeq is not the current NBIRTH's)"
                    );
                    return Ok(Vec::new());
                }
            }
            let mut out = Vec::new();
            let mut devices: Vec<_> = node.devices.iter_mut().collect();
            devices.sort_by(|a, b| a.0.cmp(b.0));
            for (device, births) in devices {
                if births.online != Some(false) {
                    out.push(state(&format!("{}/{device}", t.node), "OFFLINE"));
                }
                births.died();
            }
            // A node known to be offline already (a death sent twice) says
            // nothing new.
            if node.node.online != Some(false) {
                out.push(state(&asset, "OFFLINE"));
            }
            node.node.died();
            node.devices.clear();
            node.seq = None;
            return Ok(out);
        }

        // Every other message of the node carries the next seq.
        if let Some(seq) = payload.seq {
            let seq = seq % 256;
            if t.kind != "NBIRTH" {
                if let Some(last) = node.seq {
                    let expected = (last + 1) % 256;
                    if seq != expected {
                        metrics.sparkplug_seq_gaps.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            group = t.group,
                            edge_node = t.node,
                            message_type = t.kind,
                            expected,
                            seq,
                            "Sparkplug seq gap: messages of this edge node were lost or reordered"
                        );
                    }
                }
            }
            node.seq = Some(seq);
        }

        let mut out = Vec::new();
        let births = match t.device {
            None => &mut node.node,
            Some(device) => node.devices.entry(device.to_string()).or_default(),
        };
        let birth = matches!(t.kind, "NBIRTH" | "DBIRTH");
        match t.kind {
            "NBIRTH" | "DBIRTH" => {
                births.born(&payload.metrics);
                out.push(state(&asset, "ONLINE"));
            }
            "DDEATH" => {
                births.died();
                out.push(state(&asset, "OFFLINE"));
                return Ok(out);
            }
            _ => {}
        }
        if t.kind == "NBIRTH" {
            node.bd_seq = bd_seq(&payload.metrics);
            // The node's devices announce themselves again with births.
            node.devices.clear();
        }
        let births = match t.device {
            None => &mut node.node,
            Some(device) => node.devices.entry(device.to_string()).or_default(),
        };
        for m in &payload.metrics {
            if m.is_transient == Some(true) || m.is_null == Some(true) {
                continue;
            }
            let known = match (&m.name, m.alias) {
                (Some(name), _) if !name.is_empty() => Known {
                    name: name.clone(),
                    datatype: births.datatypes.get(name).copied().unwrap_or(0),
                },
                (_, Some(alias)) => match births.aliases.get(&alias) {
                    Some(known) => known.clone(),
                    None => {
                        metrics
                            .sparkplug_unknown_aliases
                            .fetch_add(1, Ordering::Relaxed);
                        if !std::mem::replace(&mut births.unknown_logged, true) {
                            tracing::warn!(
                                group = t.group,
                                edge_node = t.node,
                                device = t.device.unwrap_or(""),
                                alias,
                                "skipping Sparkplug metrics by an alias no birth announced (logged once until the next birth; counted each time). \
                                 The agent is read-only and does not ask for a rebirth: the values come back with the next birth"
                            );
                        }
                        continue;
                    }
                },
                _ => {
                    metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    if self.logged.insert((asset.clone(), String::new())) {
                        tracing::warn!(
                            group = t.group,
                            %asset,
                            message_type = t.kind,
                            "skipping a Sparkplug metric with neither name nor alias (logged once per node or device; counted each time)"
                        );
                    }
                    continue;
                }
            };
            if birth && (known.name == BD_SEQ || known.name.starts_with("Node Control/")) {
                continue;
            }
            let Some(value) = &m.value else { continue };
            let datatype = m.datatype.filter(|d| *d != 0).unwrap_or(known.datatype);
            let read = match reading(datatype, value) {
                Ok(read) => read,
                Err(why) => {
                    let (counter, what) = match why {
                        NotRead::Unsupported => (
                            &metrics.sparkplug_unsupported,
                            "skipping a Sparkplug metric of a datatype the agent does not map (logged once per metric; counted each time)",
                        ),
                        NotRead::Mismatch => (
                            &metrics.rejected,
                            "skipping a Sparkplug metric whose value does not fit its datatype (logged once per metric; counted each time)",
                        ),
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if self.logged.insert((asset.clone(), known.name.clone())) {
                        tracing::warn!(group = t.group, %asset, metric = %known.name, datatype, "{what}");
                    }
                    continue;
                }
            };
            let ts = ms_to_ns(m.timestamp).unwrap_or(ts_ns);
            let mut e = event(ts, &asset, EventKind::Sample, &known.name);
            match read {
                Reading::Number(v) => e.value = Some(v),
                Reading::Text(s) => e.text = Some(s),
            }
            out.push(e);
        }
        Ok(out)
    }
}
