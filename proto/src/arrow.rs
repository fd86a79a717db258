//! The Arrow form of events, alerts and control records: the schemas of the
//! `events`, `alerts` and `audit` tables (the last is the `control` topic of
//! the event log), and conversion from and to protobuf or [`ControlRecord`].
//!
//! Low-cardinality strings (site, agent, asset, kind, name) are dictionary
//! encoded: a batch from one agent carries a handful of distinct values over
//! thousands of rows, and the detector groups on the dictionary keys instead of
//! comparing strings. Timestamps are nanoseconds with time zone "UTC".

use crate::v1::{Alert, ControllerEvent, EventKind};
use crate::{kind_name, parse_kind, parse_severity, severity_name};
use arrow::array::{
    Array, ArrayRef, DictionaryArray, Float64Array, Float64Builder, Int32Array, MapArray,
    MapBuilder, RecordBatch, StringArray, StringBuilder, StringDictionaryBuilder,
    TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use std::sync::{Arc, OnceLock};

/// Column names of the `events` table.
pub mod col {
    pub const SITE: &str = "site";
    pub const AGENT: &str = "agent";
    pub const SEQ: &str = "seq";
    pub const TS: &str = "ts";
    pub const RECEIVED: &str = "received";
    pub const ASSET: &str = "asset";
    pub const KIND: &str = "kind";
    pub const NAME: &str = "name";
    pub const VALUE: &str = "value";
    pub const TEXT: &str = "text";
    pub const ATTRS: &str = "attrs";
}

/// Column indexes of the `events` table, in schema order.
pub mod idx {
    pub const SITE: usize = 0;
    pub const AGENT: usize = 1;
    pub const SEQ: usize = 2;
    pub const TS: usize = 3;
    pub const RECEIVED: usize = 4;
    pub const ASSET: usize = 5;
    pub const KIND: usize = 6;
    pub const NAME: usize = 7;
    pub const VALUE: usize = 8;
    pub const TEXT: usize = 9;
    pub const ATTRS: usize = 10;
}

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Timestamp type of every time column: nanoseconds, UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn attrs_type() -> DataType {
    static T: OnceLock<DataType> = OnceLock::new();
    T.get_or_init(|| {
        MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
            .finish()
            .data_type()
            .clone()
    })
    .clone()
}

/// Schema of the `events` table.
pub fn events_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::SITE, dict(), false),
            Field::new(col::AGENT, dict(), false),
            Field::new(col::SEQ, DataType::UInt64, false),
            Field::new(col::TS, ts_type(), false),
            Field::new(col::RECEIVED, ts_type(), false),
            Field::new(col::ASSET, dict(), false),
            Field::new(col::KIND, dict(), false),
            Field::new(col::NAME, dict(), false),
            Field::new(col::VALUE, DataType::Float64, true),
            Field::new(col::TEXT, DataType::Utf8, true),
            Field::new(col::ATTRS, attrs_type(), false),
        ]))
    })
    .clone()
}

/// The states of an alert (the `state` column; see [`alerts_schema`]).
pub mod state {
    /// Raised and not yet handled.
    pub const OPEN: &str = "open";
    /// Someone in the SOC took it.
    pub const ACKED: &str = "acked";
    /// Closed.
    pub const RESOLVED: &str = "resolved";
    /// Raised while a suppression matched it: stored, never sent.
    pub const SUPPRESSED: &str = "suppressed";
}

/// Schema of the `alerts` table: one row per alert and state. An alert is
/// raised as `open` (or `suppressed`); each change the SOC makes (`otwatch
/// alerts ack|resolve`) is one more row with the same `id`, the alert's
/// fields, and the new state. The latest state of an alert is the row of
/// its id with the greatest `coalesce(state_at, ts)`.
///
/// The lifecycle columns come last and are nullable, so files and log
/// records written before them still read (a null `state` is `open`):
///
/// | column | type | meaning |
/// |---|---|---|
/// | `state` | string, nullable | `open`, `acked`, `resolved`, `suppressed` ([`state`]) |
/// | `state_by` | string, nullable | who set it; null when raised open |
/// | `state_at` | timestamp ns UTC, nullable | when it was set (the service's clock); null when raised |
/// | `comment` | string, nullable | the comment given with it (a suppression's reason) |
pub fn alerts_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let s = |name| Field::new(name, DataType::Utf8, false);
        let f = |name| Field::new(name, DataType::Float64, false);
        let u = |name| Field::new(name, DataType::UInt64, false);
        Arc::new(Schema::new(vec![
            s("id"),
            Field::new("ts", ts_type(), false),
            s("site"),
            s("asset"),
            s("detector"),
            s("name"),
            s("severity"),
            f("score"),
            f("observed"),
            f("expected_low"),
            f("expected_high"),
            s("message"),
            s("agent"),
            u("first_seq"),
            u("last_seq"),
            u("event_count"),
            Field::new("technique", DataType::Utf8, true),
            Field::new("state", DataType::Utf8, true),
            Field::new("state_by", DataType::Utf8, true),
            Field::new("state_at", ts_type(), true),
            Field::new("comment", DataType::Utf8, true),
        ]))
    })
    .clone()
}

/// A dictionary column holding one value in every row: the site and agent of a
/// batch from one agent cost one string, not one per row.
fn constant_dict(value: &str, rows: usize) -> ArrayRef {
    let keys = Int32Array::from(vec![0; rows]);
    let values = Arc::new(StringArray::from(vec![value]));
    Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values).expect("valid keys"))
}

/// Converts the events of one agent's batch to an `events` record batch.
/// `received_ns` is the collector's clock when it took the batch. Event-level
/// site and agent are ignored: validation already held them to the batch's.
pub fn events_to_batch(
    site: &str,
    agent: &str,
    events: &[ControllerEvent],
    received_ns: i64,
) -> Result<RecordBatch, ArrowError> {
    let n = events.len();
    let mut seq = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut asset = StringDictionaryBuilder::<Int32Type>::with_capacity(n, 16, 256);
    let mut kind = StringDictionaryBuilder::<Int32Type>::with_capacity(n, 8, 64);
    let mut name = StringDictionaryBuilder::<Int32Type>::with_capacity(n, 32, 512);
    let mut value = Float64Builder::with_capacity(n);
    let mut text = StringBuilder::new();
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for e in events {
        seq.push(e.seq);
        ts.push(e.ts_ns);
        asset.append_value(&e.asset);
        kind.append_value(kind_name(e.kind()));
        name.append_value(&e.name);
        value.append_option(e.value);
        text.append_option(e.text.as_deref());
        if !e.attrs.is_empty() {
            // Sorted so that the same event always encodes the same way.
            let mut pairs: Vec<_> = e.attrs.iter().collect();
            pairs.sort_unstable();
            for (k, v) in pairs {
                attrs.keys().append_value(k);
                attrs.values().append_value(v);
            }
        }
        attrs.append(true)?;
    }
    let columns: Vec<ArrayRef> = vec![
        constant_dict(site, n),
        constant_dict(agent, n),
        Arc::new(UInt64Array::from(seq)),
        Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(TimestampNanosecondArray::from(vec![received_ns; n]).with_timezone("UTC")),
        Arc::new(asset.finish()),
        Arc::new(kind.finish()),
        Arc::new(name.finish()),
        Arc::new(value.finish()),
        Arc::new(text.finish()),
        Arc::new(attrs.finish()),
    ];
    RecordBatch::try_new(events_schema(), columns)
}

/// Reads a string column that is either plain `Utf8` or a dictionary of `Utf8`.
pub fn string_column(array: &dyn Array) -> Result<StringArray, ArrowError> {
    let cast = arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(cast
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray")
        .clone())
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name} has an unexpected type")))
}

/// Converts an `events` record batch back to protobuf events (site and agent
/// filled in on every event). Used by tests and exports, not on the hot path.
pub fn batch_to_events(batch: &RecordBatch) -> Result<Vec<ControllerEvent>, ArrowError> {
    let site = string_column(batch.column_by_name(col::SITE).ok_or_else(no(col::SITE))?)?;
    let agent = string_column(
        batch
            .column_by_name(col::AGENT)
            .ok_or_else(no(col::AGENT))?,
    )?;
    let asset = string_column(
        batch
            .column_by_name(col::ASSET)
            .ok_or_else(no(col::ASSET))?,
    )?;
    let kind = string_column(batch.column_by_name(col::KIND).ok_or_else(no(col::KIND))?)?;
    let name = string_column(batch.column_by_name(col::NAME).ok_or_else(no(col::NAME))?)?;
    let seq = column::<UInt64Array>(batch, col::SEQ)?;
    let ts = column::<TimestampNanosecondArray>(batch, col::TS)?;
    let value = column::<Float64Array>(batch, col::VALUE)?;
    let text = column::<StringArray>(batch, col::TEXT)?;
    let attrs = column::<MapArray>(batch, col::ATTRS)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut map = std::collections::HashMap::new();
        if attrs.is_valid(i) {
            let entries = attrs.value(i);
            let keys = string_column(entries.column(0).as_ref())?;
            let values = string_column(entries.column(1).as_ref())?;
            for j in 0..keys.len() {
                map.insert(keys.value(j).to_string(), values.value(j).to_string());
            }
        }
        out.push(ControllerEvent {
            site: site.value(i).to_string(),
            agent: agent.value(i).to_string(),
            seq: seq.value(i),
            ts_ns: ts.value(i),
            asset: asset.value(i).to_string(),
            kind: parse_kind(kind.value(i)).unwrap_or(EventKind::Unspecified) as i32,
            name: name.value(i).to_string(),
            value: value.is_valid(i).then(|| value.value(i)),
            text: text.is_valid(i).then(|| text.value(i).to_string()),
            attrs: map,
        });
    }
    Ok(out)
}

fn no(name: &'static str) -> impl Fn() -> ArrowError {
    move || ArrowError::SchemaError(format!("no column {name}"))
}

/// Converts alerts to an `alerts` record batch.
pub fn alerts_to_batch(alerts: &[Alert]) -> Result<RecordBatch, ArrowError> {
    let strings = |f: fn(&Alert) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(alerts.iter().map(f)))
    };
    let floats = |f: fn(&Alert) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(alerts.iter().map(f)))
    };
    let uints = |f: fn(&Alert) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(alerts.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|a| &a.id),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(alerts.iter().map(|a| a.ts_ns))
                .with_timezone("UTC"),
        ),
        strings(|a| &a.site),
        strings(|a| &a.asset),
        strings(|a| &a.detector),
        strings(|a| &a.name),
        strings(|a| severity_name(a.severity())),
        floats(|a| a.score),
        floats(|a| a.observed),
        floats(|a| a.expected_low),
        floats(|a| a.expected_high),
        strings(|a| &a.message),
        strings(|a| &a.agent),
        uints(|a| a.first_seq),
        uints(|a| a.last_seq),
        uints(|a| a.event_count),
        Arc::new(StringArray::from_iter(alerts.iter().map(|a| {
            (!a.technique.is_empty()).then_some(a.technique.as_str())
        }))),
        strings(|a| {
            if a.state.is_empty() {
                state::OPEN
            } else {
                &a.state
            }
        }),
        Arc::new(StringArray::from_iter(alerts.iter().map(|a| {
            (!a.state_by.is_empty()).then_some(a.state_by.as_str())
        }))),
        Arc::new(
            TimestampNanosecondArray::from_iter(
                alerts
                    .iter()
                    .map(|a| (a.state_at_ns != 0).then_some(a.state_at_ns)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            alerts
                .iter()
                .map(|a| (!a.comment.is_empty()).then_some(a.comment.as_str())),
        )),
    ];
    RecordBatch::try_new(alerts_schema(), columns)
}

/// Converts an `alerts` record batch back to protobuf alerts. A batch
/// without the lifecycle columns (written before them) reads as `open`
/// alerts.
pub fn batch_to_alerts(batch: &RecordBatch) -> Result<Vec<Alert>, ArrowError> {
    let optional = |name: &'static str| -> Result<Option<StringArray>, ArrowError> {
        batch
            .column_by_name(name)
            .map(|c| string_column(c.as_ref()))
            .transpose()
    };
    let (state_col, state_by, comment) = (
        optional("state")?,
        optional("state_by")?,
        optional("comment")?,
    );
    let state_at = match batch.column_by_name("state_at") {
        Some(_) => Some(column::<TimestampNanosecondArray>(batch, "state_at")?),
        None => None,
    };
    let text = |c: &Option<StringArray>, i: usize| -> String {
        c.as_ref()
            .filter(|c| c.is_valid(i))
            .map_or(String::new(), |c| c.value(i).to_string())
    };
    let s = |name: &'static str| -> Result<StringArray, ArrowError> {
        string_column(batch.column_by_name(name).ok_or_else(no(name))?)
    };
    let (id, site, asset, detector, name, severity, message, agent, technique) = (
        s("id")?,
        s("site")?,
        s("asset")?,
        s("detector")?,
        s("name")?,
        s("severity")?,
        s("message")?,
        s("agent")?,
        s("technique")?,
    );
    let ts = column::<TimestampNanosecondArray>(batch, "ts")?;
    let f = |name| column::<Float64Array>(batch, name);
    let u = |name| column::<UInt64Array>(batch, name);
    let (score, observed, low, high) = (
        f("score")?,
        f("observed")?,
        f("expected_low")?,
        f("expected_high")?,
    );
    let (first, last, count) = (u("first_seq")?, u("last_seq")?, u("event_count")?);
    Ok((0..batch.num_rows())
        .map(|i| Alert {
            id: id.value(i).into(),
            ts_ns: ts.value(i),
            site: site.value(i).into(),
            asset: asset.value(i).into(),
            detector: detector.value(i).into(),
            name: name.value(i).into(),
            severity: parse_severity(severity.value(i)) as i32,
            score: score.value(i),
            observed: observed.value(i),
            expected_low: low.value(i),
            expected_high: high.value(i),
            message: message.value(i).into(),
            agent: agent.value(i).into(),
            first_seq: first.value(i),
            last_seq: last.value(i),
            event_count: count.value(i),
            technique: if technique.is_valid(i) {
                technique.value(i).into()
            } else {
                String::new()
            },
            state: match text(&state_col, i) {
                s if s.is_empty() => state::OPEN.into(),
                s => s,
            },
            state_by: text(&state_by, i),
            state_at_ns: state_at.filter(|c| c.is_valid(i)).map_or(0, |c| c.value(i)),
            comment: text(&comment, i),
        })
        .collect())
}

/// Schema of a control record, the `control` topic of the event log and the
/// `audit` table of the history: one decision of the SOC per row.
///
/// | column | type | meaning |
/// |---|---|---|
/// | `id` | string | unique id of the record |
/// | `ts` | timestamp ns UTC | when it was issued (the service's clock, strictly increasing along the chain) |
/// | `user` | string | who asked (the peer of the admin socket) |
/// | `host` | string | the machine the service runs on |
/// | `command` | string | `model.accept`, `model.relearn`, ... |
/// | `site` | string | the site it acts on (empty when none) |
/// | `asset` | string | the asset it acts on (empty for a whole site or none) |
/// | `alert_id` | string, nullable | the alert it acts on |
/// | `args` | string | further arguments, a JSON object |
/// | `prev_hash` | string | `hash` of the record before it ([`GENESIS_HASH`] for the first) |
/// | `hash` | string | [`ControlRecord::chain_hash`]: hex SHA-256 of `prev_hash` and the fields above |
///
/// The records form a hash chain: changing, removing or inserting one
/// breaks every `hash` after it.
pub fn control_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let s = |name| Field::new(name, DataType::Utf8, false);
        Arc::new(Schema::new(vec![
            s("id"),
            Field::new("ts", ts_type(), false),
            s("user"),
            s("host"),
            s("command"),
            s("site"),
            s("asset"),
            Field::new("alert_id", DataType::Utf8, true),
            s("args"),
            s("prev_hash"),
            s("hash"),
        ]))
    })
    .clone()
}

/// `prev_hash` of the first control record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One row of the `control` schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRecord {
    pub id: String,
    pub ts_ns: i64,
    pub user: String,
    pub host: String,
    pub command: String,
    pub site: String,
    pub asset: String,
    pub alert_id: Option<String>,
    /// A JSON object.
    pub args: String,
    pub prev_hash: String,
    pub hash: String,
}

impl ControlRecord {
    /// The hash this record must carry: hex SHA-256 of `prev_hash`, a
    /// newline, and the canonical form of the other fields (each as a
    /// netstring `<length>:<bytes>,` in schema order, `ts` in decimal
    /// nanoseconds, a missing `alert_id` as `N,`), so that no two different
    /// records hash the same input.
    pub fn chain_hash(&self) -> String {
        use sha2::Digest;
        let mut canonical = Vec::with_capacity(256);
        canonical.extend_from_slice(self.prev_hash.as_bytes());
        canonical.push(b'\n');
        let mut field = |f: Option<&str>| match f {
            Some(f) => {
                canonical.extend_from_slice(format!("{}:", f.len()).as_bytes());
                canonical.extend_from_slice(f.as_bytes());
                canonical.push(b',');
            }
            None => canonical.extend_from_slice(b"N,"),
        };
        let ts = self.ts_ns.to_string();
        for f in [
            Some(self.id.as_str()),
            Some(ts.as_str()),
            Some(self.user.as_str()),
            Some(self.host.as_str()),
            Some(self.command.as_str()),
            Some(self.site.as_str()),
            Some(self.asset.as_str()),
            self.alert_id.as_deref(),
            Some(self.args.as_str()),
        ] {
            field(f);
        }
        sha2::Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Links the record after `prev_hash`: sets `prev_hash` and `hash`.
    pub fn seal(mut self, prev_hash: &str) -> ControlRecord {
        self.prev_hash = prev_hash.to_string();
        self.hash = self.chain_hash();
        self
    }
}

/// Where a sequence of control records stops being one hash chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control record {index} (id {id}) does not fit the chain: {reason}")]
pub struct ChainBreak {
    /// Position of the record in the sequence, from 0.
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// Checks that `records`, in order, form one hash chain from
/// [`GENESIS_HASH`]: each links to the hash of the one before it, carries
/// the hash of its own fields, and is issued after the one before it.
/// Returns the first record that does not fit.
pub fn verify_chain(records: &[ControlRecord]) -> Result<(), ChainBreak> {
    let mut prev_hash = GENESIS_HASH;
    let mut prev_ts = i64::MIN;
    for (index, r) in records.iter().enumerate() {
        let broken = |reason: String| ChainBreak {
            index,
            id: r.id.clone(),
            reason,
        };
        if r.prev_hash != prev_hash {
            return Err(broken(format!(
                "prev_hash {} is not the hash of the record before it ({prev_hash}): a record was removed, inserted or reordered",
                r.prev_hash
            )));
        }
        let hash = r.chain_hash();
        if r.hash != hash {
            return Err(broken(format!(
                "hash {} is not the hash of its fields ({hash}): the record was changed",
                r.hash
            )));
        }
        if r.ts_ns <= prev_ts {
            return Err(broken(format!(
                "ts {} is not after the record before it ({prev_ts})",
                r.ts_ns
            )));
        }
        prev_hash = &r.hash;
        prev_ts = r.ts_ns;
    }
    Ok(())
}

/// Converts control records to a `control` record batch.
pub fn control_to_batch(records: &[ControlRecord]) -> Result<RecordBatch, ArrowError> {
    let strings = |f: fn(&ControlRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.id),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(records.iter().map(|r| r.ts_ns))
                .with_timezone("UTC"),
        ),
        strings(|r| &r.user),
        strings(|r| &r.host),
        strings(|r| &r.command),
        strings(|r| &r.site),
        strings(|r| &r.asset),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.alert_id.as_deref()),
        )),
        strings(|r| &r.args),
        strings(|r| &r.prev_hash),
        strings(|r| &r.hash),
    ];
    RecordBatch::try_new(control_schema(), columns)
}

/// Converts a `control` record batch (from the log or the `audit` table)
/// back to control records.
pub fn batch_to_control(batch: &RecordBatch) -> Result<Vec<ControlRecord>, ArrowError> {
    let s = |name: &'static str| -> Result<StringArray, ArrowError> {
        string_column(batch.column_by_name(name).ok_or_else(no(name))?)
    };
    let (id, user, host, command, site, asset, alert, args, prev, hash) = (
        s("id")?,
        s("user")?,
        s("host")?,
        s("command")?,
        s("site")?,
        s("asset")?,
        s("alert_id")?,
        s("args")?,
        s("prev_hash")?,
        s("hash")?,
    );
    let ts = column::<TimestampNanosecondArray>(batch, "ts")?;
    Ok((0..batch.num_rows())
        .map(|i| ControlRecord {
            id: id.value(i).into(),
            ts_ns: ts.value(i),
            user: user.value(i).into(),
            host: host.value(i).into(),
            command: command.value(i).into(),
            site: site.value(i).into(),
            asset: asset.value(i).into(),
            alert_id: alert.is_valid(i).then(|| alert.value(i).to_string()),
            args: args.value(i).into(),
            prev_hash: prev.value(i).into(),
            hash: hash.value(i).into(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_records_round_trip_and_chain() {
        let first = ControlRecord {
            id: "c1".into(),
            ts_ns: 7,
            user: "alice".into(),
            host: "soc-1".into(),
            command: "model.accept".into(),
            site: "plant-a".into(),
            asset: "line1/press-01".into(),
            alert_id: Some("0123456789abcdef".into()),
            args: "{}".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(GENESIS_HASH);
        let second = ControlRecord {
            id: "c2".into(),
            ts_ns: 8,
            command: "model.relearn".into(),
            asset: String::new(),
            alert_id: None,
            ..first.clone()
        }
        .seal(&first.hash);
        assert_eq!(first.hash.len(), 64);
        assert_eq!(second.prev_hash, first.hash);
        let batch = control_to_batch(&[first.clone(), second.clone()]).unwrap();
        assert_eq!(batch.schema(), control_schema());
        let back = batch_to_control(&batch).unwrap();
        assert_eq!(back, vec![first.clone(), second]);
        assert!(back.iter().all(|r| r.chain_hash() == r.hash));
        // Any change to a field changes the hash; a missing alert id is
        // not an empty one.
        let tampered = ControlRecord {
            user: "mallory".into(),
            ..first.clone()
        };
        assert_ne!(tampered.chain_hash(), first.hash);
        let empty = ControlRecord {
            alert_id: Some(String::new()),
            ..back[1].clone()
        };
        assert_ne!(empty.chain_hash(), back[1].hash);
        // The chain checks: intact, then a changed, a removed and a
        // reordered record.
        assert_eq!(verify_chain(&back), Ok(()));
        let err = verify_chain(&[tampered, back[1].clone()]).unwrap_err();
        assert_eq!((err.index, err.id.as_str()), (0, "c1"));
        assert!(err.reason.contains("was changed"), "{err}");
        let err = verify_chain(&back[1..]).unwrap_err();
        assert!(err.reason.contains("removed"), "{err}");
        let err = verify_chain(&[back[1].clone(), back[0].clone()]).unwrap_err();
        assert_eq!(err.index, 0);
    }

    fn sample_events() -> Vec<ControllerEvent> {
        vec![
            ControllerEvent {
                seq: 1,
                ts_ns: 1_700_000_000_000_000_000,
                asset: "line1/press-01".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(1234.5),
                ..Default::default()
            },
            ControllerEvent {
                seq: 2,
                ts_ns: 1_700_000_000_500_000_000,
                asset: "line1/plc-01".into(),
                kind: EventKind::Access as i32,
                name: "login".into(),
                text: Some("engineering session".into()),
                attrs: [
                    ("peer".to_string(), "10.0.0.5".to_string()),
                    ("user".into(), "eng".into()),
                ]
                .into(),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn events_round_trip_through_arrow() {
        let events = sample_events();
        let batch = events_to_batch("plant-a", "gw-1", &events, 42).unwrap();
        assert_eq!(batch.schema(), events_schema());
        assert_eq!(batch.num_rows(), 2);
        let back = batch_to_events(&batch).unwrap();
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(b.site, "plant-a");
            assert_eq!(b.agent, "gw-1");
            assert_eq!(
                ControllerEvent {
                    site: String::new(),
                    agent: String::new(),
                    ..b.clone()
                },
                *a
            );
        }
    }

    #[test]
    fn alerts_round_trip_through_arrow() {
        let alert = Alert {
            id: "a1".into(),
            ts_ns: 5,
            site: "s".into(),
            asset: "a".into(),
            detector: "cycle".into(),
            name: "cycle".into(),
            severity: crate::Severity::High as i32,
            score: 7.5,
            observed: 1500.0,
            expected_low: 900.0,
            expected_high: 1100.0,
            message: "m".into(),
            agent: "g".into(),
            first_seq: 3,
            last_seq: 9,
            event_count: 7,
            technique: "T0836".into(),
            state: state::OPEN.into(),
            ..Alert::default()
        };
        let acked = Alert {
            state: state::ACKED.into(),
            state_by: "alice".into(),
            state_at_ns: 9,
            comment: "on it".into(),
            ..alert.clone()
        };
        let batch = alerts_to_batch(&[alert.clone(), acked.clone()]).unwrap();
        assert_eq!(batch_to_alerts(&batch).unwrap(), vec![alert.clone(), acked]);
        // An empty state is written as open.
        let unset = Alert {
            state: String::new(),
            ..alert.clone()
        };
        let batch = alerts_to_batch(&[unset]).unwrap();
        assert_eq!(batch_to_alerts(&batch).unwrap(), vec![alert.clone()]);
        // A batch from before the lifecycle columns reads as open alerts.
        let old = batch.project(&(0..17).collect::<Vec<_>>()).unwrap();
        assert_eq!(old.num_columns(), 17);
        assert_eq!(batch_to_alerts(&old).unwrap(), vec![alert]);
    }
}
