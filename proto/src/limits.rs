//! Limits on everything an agent may send, and the validation that enforces them.
//!
//! The collector answers a batch that is wrong as a whole
//! ([`Limits::check_batch_frame`]) with `INVALID_ARGUMENT` and the
//! [`ValidationError`] text, which names the limit, the event index and the
//! offending value, so the operator of the agent can act on it; an event
//! that breaks a limit of its own ([`Limits::check_event`]) is refused alone,
//! listed with that text in the batch's ack. The agent
//! runs the same check before it queues an event, so a misbehaving source is
//! caught at the edge with a local error instead of a stuck queue.
//!
//! Two checks are the collector's alone:
//! - [`Limits::check_encoded_batch`] reads a batch's protobuf encoding before
//!   it is decoded and refuses one with more events (or attributes on one
//!   event) than the limits allow, so that decoding never materialises more
//!   than `max_events_per_batch` events however small they are on the wire;
//! - [`Limits::check_seq_advance`] refuses sequence numbers that would move
//!   an agent's high-water mark out of reach of its later events.

use crate::v1::{ControllerEvent, EventBatch, EventKind};
use serde::{Deserialize, Serialize};

/// Limits on ingest. Every field has a safe default; raise one only when a
/// real source needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest encoded gRPC message (one batch) the collector accepts, in bytes.
    pub max_message_bytes: usize,
    /// Most events in one batch.
    pub max_events_per_batch: usize,
    /// Longest site, agent, asset or name string, in bytes.
    pub max_id_len: usize,
    /// Longest `text` value, in bytes.
    pub max_text_len: usize,
    /// Most attributes on one event.
    pub max_attrs: usize,
    /// Longest attribute key or value, in bytes.
    pub max_attr_len: usize,
    /// How far in the future (relative to the collector's clock) an event
    /// timestamp may be, in seconds. Controllers' clocks drift; a timestamp far
    /// ahead would poison time-based partitions and detection windows.
    pub max_future_skew_secs: u64,
    /// How far in the past an event timestamp may be, in seconds. Generous by
    /// default so that an agent can drain a queue after a long WAN outage.
    pub max_past_secs: u64,
    /// Largest step (collector only) by which one batch may move an agent's
    /// high-water mark: the highest sequence number in a batch may be at most
    /// this far above the highest one already held for the agent. An agent
    /// whose queue dropped or quarantined events skips that many numbers,
    /// never billions; a batch that jumps further would make every later event
    /// of the agent look like a duplicate, so it is refused. Default 2^32.
    pub max_seq_gap: u64,
}

/// The largest sequence number an agent may use. Agents number their events
/// from 1 and their queues stop at `i64::MAX`; the collector refuses anything
/// above it, so no agent identity can be pushed to the end of the `u64` range.
pub const MAX_SEQ: u64 = i64::MAX as u64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 8 * 1024 * 1024,
            max_events_per_batch: 10_000,
            max_id_len: 256,
            max_text_len: 8 * 1024,
            max_attrs: 32,
            max_attr_len: 1024,
            max_future_skew_secs: 300,
            max_past_secs: 90 * 24 * 3600,
            max_seq_gap: 1 << 32,
        }
    }
}

/// Why a batch or event was refused. The text names the broken rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("batch has no site id")]
    MissingSite,
    #[error("batch has no agent id")]
    MissingAgent,
    #[error("batch is empty")]
    Empty,
    #[error("batch has {count} events, above the limit max_events_per_batch = {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("event {index}: {field} is {len} bytes, above the limit {limit_name} = {limit}")]
    TooLong {
        index: usize,
        field: &'static str,
        len: usize,
        limit_name: &'static str,
        limit: usize,
    },
    #[error("event {index}: {count} attributes, above the limit max_attrs = {limit}")]
    TooManyAttrs {
        index: usize,
        count: usize,
        limit: usize,
    },
    #[error("event {index}: {field} {value:?} does not match the batch's {field} {expected:?}")]
    IdentityMismatch {
        index: usize,
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("event {index}: asset is empty")]
    MissingAsset { index: usize },
    #[error("event {index}: kind is unspecified or unknown ({kind})")]
    BadKind { index: usize, kind: i32 },
    #[error("event {index}: seq {seq} is not above the previous event's seq {previous}")]
    SeqNotIncreasing {
        index: usize,
        seq: u64,
        previous: u64,
    },
    #[error("event {index}: seq 0 is reserved; sequences start at 1")]
    SeqZero { index: usize },
    #[error("event {index}: ts {ts_ns} ns is {skew_secs} s ahead of the collector clock, above the limit max_future_skew_secs = {limit}")]
    TooFarInFuture {
        index: usize,
        ts_ns: i64,
        skew_secs: i64,
        limit: u64,
    },
    #[error(
        "event {index}: ts {ts_ns} ns is {age_secs} s old, above the limit max_past_secs = {limit}"
    )]
    TooOld {
        index: usize,
        ts_ns: i64,
        age_secs: i64,
        limit: u64,
    },
    #[error("event {index}: value is not a finite number")]
    NotFinite { index: usize },
    #[error("batch is not a valid EventBatch encoding: {reason} at byte {offset}")]
    Malformed { offset: usize, reason: &'static str },
    #[error("event {index}: seq {seq} is above the largest sequence number an agent may use ({max})", max = MAX_SEQ)]
    SeqTooLarge { index: usize, seq: u64 },
    #[error("event {index}: seq {seq} is {gap} above the highest sequence number held for this agent ({held}), above the limit max_seq_gap = {limit}", gap = seq - held)]
    SeqJump {
        index: usize,
        seq: u64,
        held: u64,
        limit: u64,
    },
}

impl Limits {
    /// Checks that every limit can be met by a real event: a zero (or, for
    /// the message size, absurdly small) limit would refuse everything, so
    /// it is a configuration error naming the key, not a silent stall.
    pub fn validate(&self) -> Result<(), String> {
        let at_least = [
            ("max_message_bytes", self.max_message_bytes, 1024),
            ("max_events_per_batch", self.max_events_per_batch, 1),
            ("max_id_len", self.max_id_len, 1),
            ("max_text_len", self.max_text_len, 1),
            ("max_attr_len", self.max_attr_len, 1),
        ];
        for (key, value, min) in at_least {
            if value < min {
                return Err(format!("limits.{key} = {value} is below its minimum {min}"));
            }
        }
        if self.max_past_secs == 0 {
            return Err("limits.max_past_secs = 0 would refuse every event: give the age in seconds events may have when they arrive".into());
        }
        // A full batch of consecutive events moves the mark by its length.
        if self.max_seq_gap < self.max_events_per_batch as u64 {
            return Err(format!(
                "limits.max_seq_gap = {} is below limits.max_events_per_batch = {}: a full batch from a new agent would be refused",
                self.max_seq_gap, self.max_events_per_batch
            ));
        }
        Ok(())
    }

    /// Checks the protobuf encoding of an `EventBatch` before it is decoded:
    /// at most `max_events_per_batch` events, at most `max_attrs` attribute
    /// entries in each. An empty event is two bytes on the wire but a few
    /// hundred once decoded, so without this check a message of
    /// `max_message_bytes` could decode into a hundred times that; with it,
    /// what decoding allocates is bounded by the limits (events × their fixed
    /// size, plus the bytes of the message). Only the field headers are read,
    /// nothing is allocated.
    ///
    /// Encodings that the decoder would refuse anyway (truncated fields,
    /// lengths past the end, field number 0) are refused here too, as are
    /// groups, a deprecated protobuf feature `otwatch.v1` never uses.
    pub fn check_encoded_batch(&self, encoded: &[u8]) -> Result<(), ValidationError> {
        /// `EventBatch.events`.
        const EVENTS_FIELD: u64 = 3;
        /// `ControllerEvent.attrs` (one length-delimited entry per attribute).
        const ATTRS_FIELD: u64 = 10;
        let mut events = 0usize;
        let mut first_attrs_breach = None;
        let mut reader = WireReader::new(encoded, 0);
        while let Some(field) = reader.next_field()? {
            if field.number != EVENTS_FIELD {
                continue;
            }
            let Some(event) = field.body else {
                return Err(ValidationError::Malformed {
                    offset: field.offset,
                    reason: "events (field 3) is not length-delimited",
                });
            };
            let mut attrs = 0usize;
            let mut inner = WireReader::new(event, field.offset + field.header_len);
            while let Some(inner_field) = inner.next_field()? {
                if inner_field.number == ATTRS_FIELD && inner_field.body.is_some() {
                    attrs += 1;
                }
            }
            if attrs > self.max_attrs && first_attrs_breach.is_none() {
                first_attrs_breach = Some(ValidationError::TooManyAttrs {
                    index: events,
                    count: attrs,
                    limit: self.max_attrs,
                });
            }
            events += 1;
        }
        if events > self.max_events_per_batch {
            return Err(ValidationError::TooManyEvents {
                count: events,
                limit: self.max_events_per_batch,
            });
        }
        match first_attrs_breach {
            Some(breach) => Err(breach),
            None => Ok(()),
        }
    }

    /// Checks that a batch moves its agent's high-water mark `held` (the
    /// highest sequence number the collector holds for the agent) by at most
    /// `max_seq_gap`, and uses no sequence number above [`MAX_SEQ`]. Either
    /// would leave the agent's later events below the mark, dropped as
    /// duplicates for good.
    pub fn check_seq_advance(
        &self,
        held: u64,
        events: &[ControllerEvent],
    ) -> Result<(), ValidationError> {
        let Some((index, seq)) = events
            .iter()
            .map(|e| e.seq)
            .enumerate()
            .max_by_key(|&(_, seq)| seq)
        else {
            return Ok(());
        };
        if seq > MAX_SEQ {
            return Err(ValidationError::SeqTooLarge { index, seq });
        }
        if seq > held && seq - held > self.max_seq_gap {
            return Err(ValidationError::SeqJump {
                index,
                seq,
                held,
                limit: self.max_seq_gap,
            });
        }
        Ok(())
    }

    /// Checks one event (at position `index`) in isolation, without the
    /// identity and sequence rules that need its batch.
    pub fn check_event(
        &self,
        index: usize,
        event: &ControllerEvent,
        now_ns: i64,
    ) -> Result<(), ValidationError> {
        let too_long = |field, len: usize, limit_name, limit: usize| {
            if len > limit {
                Err(ValidationError::TooLong {
                    index,
                    field,
                    len,
                    limit_name,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        too_long("asset", event.asset.len(), "max_id_len", self.max_id_len)?;
        too_long("name", event.name.len(), "max_id_len", self.max_id_len)?;
        if event.asset.is_empty() {
            return Err(ValidationError::MissingAsset { index });
        }
        if let Some(text) = &event.text {
            too_long("text", text.len(), "max_text_len", self.max_text_len)?;
        }
        if event.attrs.len() > self.max_attrs {
            return Err(ValidationError::TooManyAttrs {
                index,
                count: event.attrs.len(),
                limit: self.max_attrs,
            });
        }
        for (k, v) in &event.attrs {
            too_long("attribute key", k.len(), "max_attr_len", self.max_attr_len)?;
            too_long(
                "attribute value",
                v.len(),
                "max_attr_len",
                self.max_attr_len,
            )?;
        }
        match EventKind::try_from(event.kind) {
            Ok(EventKind::Unspecified) | Err(_) => {
                return Err(ValidationError::BadKind {
                    index,
                    kind: event.kind,
                })
            }
            Ok(_) => {}
        }
        if let Some(v) = event.value {
            if !v.is_finite() {
                return Err(ValidationError::NotFinite { index });
            }
        }
        const NS: i64 = 1_000_000_000;
        let ahead = event.ts_ns.saturating_sub(now_ns) / NS;
        if ahead > self.max_future_skew_secs as i64 {
            return Err(ValidationError::TooFarInFuture {
                index,
                ts_ns: event.ts_ns,
                skew_secs: ahead,
                limit: self.max_future_skew_secs,
            });
        }
        let age = now_ns.saturating_sub(event.ts_ns) / NS;
        if age > self.max_past_secs as i64 {
            return Err(ValidationError::TooOld {
                index,
                ts_ns: event.ts_ns,
                age_secs: age,
                limit: self.max_past_secs,
            });
        }
        Ok(())
    }

    /// Checks a whole batch: identity, size, per-event limits and that
    /// sequence numbers strictly increase. `now_ns` is the checker's clock.
    pub fn check_batch(&self, batch: &EventBatch, now_ns: i64) -> Result<(), ValidationError> {
        self.check_batch_frame(batch)?;
        for (index, event) in batch.events.iter().enumerate() {
            self.check_event(index, event, now_ns)?;
        }
        Ok(())
    }

    /// Checks what concerns the batch as a whole: identity, size and that
    /// sequence numbers strictly increase; not the events' own limits
    /// ([`check_event`](Self::check_event)). The collector refuses a batch
    /// that fails this, and only the events that fail `check_event`.
    pub fn check_batch_frame(&self, batch: &EventBatch) -> Result<(), ValidationError> {
        if batch.site.is_empty() {
            return Err(ValidationError::MissingSite);
        }
        if batch.agent.is_empty() {
            return Err(ValidationError::MissingAgent);
        }
        for (field, value) in [("site", &batch.site), ("agent", &batch.agent)] {
            if value.len() > self.max_id_len {
                return Err(ValidationError::TooLong {
                    index: 0,
                    field,
                    len: value.len(),
                    limit_name: "max_id_len",
                    limit: self.max_id_len,
                });
            }
        }
        if batch.events.is_empty() {
            return Err(ValidationError::Empty);
        }
        if batch.events.len() > self.max_events_per_batch {
            return Err(ValidationError::TooManyEvents {
                count: batch.events.len(),
                limit: self.max_events_per_batch,
            });
        }
        let mut previous = 0u64;
        for (index, event) in batch.events.iter().enumerate() {
            for (field, value, expected) in [
                ("site", &event.site, &batch.site),
                ("agent", &event.agent, &batch.agent),
            ] {
                if !value.is_empty() && value != expected {
                    return Err(ValidationError::IdentityMismatch {
                        index,
                        field,
                        value: value.clone(),
                        expected: expected.clone(),
                    });
                }
            }
            if event.seq == 0 {
                return Err(ValidationError::SeqZero { index });
            }
            if event.seq <= previous {
                return Err(ValidationError::SeqNotIncreasing {
                    index,
                    seq: event.seq,
                    previous,
                });
            }
            previous = event.seq;
        }
        Ok(())
    }
}

/// One field of a protobuf message, as [`WireReader`] finds it.
struct WireField<'a> {
    number: u64,
    /// Where the field's key starts, counted from the start of the message.
    offset: usize,
    /// Bytes from `offset` to the start of `body`: the key and the length
    /// prefix (the whole field when it has no body).
    header_len: usize,
    /// The contents of a length-delimited field; `None` for other wire types.
    body: Option<&'a [u8]>,
}

/// Walks the fields of one protobuf message without decoding them.
struct WireReader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` within the outermost message, for error messages.
    base: usize,
}

impl<'a> WireReader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        WireReader { buf, pos: 0, base }
    }

    fn malformed(&self, reason: &'static str) -> ValidationError {
        ValidationError::Malformed {
            offset: self.base + self.pos,
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64, ValidationError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.malformed("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than 10 bytes"))
    }

    fn skip(&mut self, len: u64) -> Result<&'a [u8], ValidationError> {
        let rest = self.buf.len() - self.pos;
        if len > rest as u64 {
            return Err(self.malformed("field runs past the end of its message"));
        }
        let body = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(body)
    }

    /// The next field, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<WireField<'a>>, ValidationError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || key > u64::from(u32::MAX) {
            self.pos = start;
            return Err(self.malformed("invalid field key"));
        }
        let body = match key & 0x07 {
            0 => {
                self.varint()?;
                None
            }
            1 => {
                self.skip(8)?;
                None
            }
            2 => {
                let len = self.varint()?;
                Some(self.skip(len)?)
            }
            5 => {
                self.skip(4)?;
                None
            }
            3 | 4 => {
                self.pos = start;
                return Err(self.malformed("groups are not part of otwatch.v1"));
            }
            _ => {
                self.pos = start;
                return Err(self.malformed("invalid wire type"));
            }
        };
        let header_len = self.pos - start - body.map_or(0, <[u8]>::len);
        Ok(Some(WireField {
            number,
            offset: self.base + start,
            header_len,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000_000;

    fn event(seq: u64) -> ControllerEvent {
        ControllerEvent {
            seq,
            ts_ns: NOW,
            asset: "line1/press-01".into(),
            kind: EventKind::Cycle as i32,
            name: "cycle".into(),
            value: Some(1000.0),
            ..Default::default()
        }
    }

    fn batch(events: Vec<ControllerEvent>) -> EventBatch {
        EventBatch {
            site: "plant-a".into(),
            agent: "gw-1".into(),
            events,
            queue_backlog: 0,
        }
    }

    fn check(b: &EventBatch) -> String {
        match Limits::default().check_batch(b, NOW) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_batch_passes() {
        assert_eq!(check(&batch(vec![event(1), event(2)])), "ok");
    }

    #[test]
    fn each_bad_input_names_its_problem() {
        let mut b = batch(vec![event(1)]);
        b.site.clear();
        assert_eq!(check(&b), "batch has no site id");

        let mut b = batch(vec![event(1)]);
        b.agent.clear();
        assert_eq!(check(&b), "batch has no agent id");

        assert_eq!(check(&batch(vec![])), "batch is empty");

        let many = (1..=10_001).map(event).collect();
        assert!(check(&batch(many)).contains("max_events_per_batch = 10000"));

        let mut e = event(1);
        e.asset = "x".repeat(300);
        assert_eq!(
            check(&batch(vec![e])),
            "event 0: asset is 300 bytes, above the limit max_id_len = 256"
        );

        let mut e = event(2);
        e.text = Some("y".repeat(9000));
        assert!(check(&batch(vec![event(1), e])).starts_with("event 1: text is 9000 bytes"));

        let mut e = event(1);
        e.attrs = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check(&batch(vec![e])).contains("max_attrs = 32"));

        let mut e = event(1);
        e.site = "plant-b".into();
        assert_eq!(
            check(&batch(vec![e])),
            "event 0: site \"plant-b\" does not match the batch's site \"plant-a\""
        );

        let mut e = event(1);
        e.kind = 0;
        assert!(check(&batch(vec![e])).contains("kind is unspecified"));

        assert!(check(&batch(vec![event(2), event(2)])).contains("not above the previous"));
        assert!(check(&batch(vec![event(0)])).contains("seq 0 is reserved"));

        let mut e = event(1);
        e.ts_ns = NOW + 3600 * 1_000_000_000;
        assert!(check(&batch(vec![e])).contains("max_future_skew_secs = 300"));

        let mut e = event(1);
        e.ts_ns = 0;
        assert!(check(&batch(vec![e])).contains("max_past_secs"));

        let mut e = event(1);
        e.value = Some(f64::NAN);
        assert!(check(&batch(vec![e])).contains("not a finite number"));

        let mut e = event(1);
        e.asset.clear();
        assert!(check(&batch(vec![e])).contains("asset is empty"));
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits {
            max_events_per_batch: 0,
            ..Limits::default()
        };
        let err = zero.validate().unwrap_err();
        assert!(err.contains("limits.max_events_per_batch = 0"), "{err}");
        let tiny = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        assert!(tiny.validate().unwrap_err().contains("max_message_bytes"));
        let never = Limits {
            max_past_secs: 0,
            ..Limits::default()
        };
        assert!(never.validate().unwrap_err().contains("max_past_secs"));
    }

    #[test]
    fn a_zero_sequence_gap_is_refused_by_name() {
        let small = Limits {
            max_seq_gap: 10,
            ..Limits::default()
        };
        let err = small.validate().unwrap_err();
        assert!(err.contains("limits.max_seq_gap = 10"), "{err}");
    }

    fn encode(b: &EventBatch) -> Vec<u8> {
        use prost::Message;
        b.encode_to_vec()
    }

    fn check_encoded(limits: &Limits, bytes: &[u8]) -> String {
        match limits.check_encoded_batch(bytes) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn encoded_batches_within_the_limits_pass() {
        let limits = Limits::default();
        let mut e = event(2);
        e.text = Some("hello".into());
        e.attrs = (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
        let full = batch((1..=10_000).map(event).collect());
        for b in [batch(vec![event(1), e]), full, batch(vec![])] {
            assert_eq!(check_encoded(&limits, &encode(&b)), "ok");
        }
    }

    #[test]
    fn encoded_batches_with_too_many_events_are_refused_before_decoding() {
        let limits = Limits::default();
        let many = batch((1..=10_001).map(event).collect());
        assert_eq!(
            check_encoded(&limits, &encode(&many)),
            "batch has 10001 events, above the limit max_events_per_batch = 10000"
        );
        // The decompression bomb: empty events, two bytes each on the wire.
        let mut bomb = encode(&batch(vec![]));
        bomb.extend(std::iter::repeat_n([0x1a, 0x00], 1 << 20).flatten());
        assert_eq!(
            check_encoded(&limits, &bomb),
            "batch has 1048576 events, above the limit max_events_per_batch = 10000"
        );
    }

    #[test]
    fn encoded_events_with_too_many_attributes_are_refused_before_decoding() {
        let mut e = event(2);
        e.attrs = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let b = batch(vec![event(1), e]);
        assert_eq!(
            check_encoded(&Limits::default(), &encode(&b)),
            "event 1: 33 attributes, above the limit max_attrs = 32"
        );
        // Repeated entries for one key count each time: decoding builds
        // every entry before the map keeps one.
        let mut bytes = encode(&batch(vec![]));
        let entry = [0x52, 0x02, 0x0a, 0x00]; // attrs { key: "" }
        let body: Vec<u8> = std::iter::repeat_n(entry, 40).flatten().collect();
        bytes.push(0x1a);
        prost::encoding::encode_varint(body.len() as u64, &mut bytes);
        bytes.extend(body);
        assert!(check_encoded(&Limits::default(), &bytes).contains("40 attributes"));
    }

    #[test]
    fn malformed_encodings_are_refused_with_their_offset() {
        let limits = Limits::default();
        let good = encode(&batch(vec![event(1)]));
        let truncated = &good[..good.len() - 3];
        assert!(
            check_encoded(&limits, truncated).contains("runs past the end"),
            "{}",
            check_encoded(&limits, truncated)
        );
        assert_eq!(
            check_encoded(&limits, &[0x1b]),
            "batch is not a valid EventBatch encoding: groups are not part of otwatch.v1 at byte 0"
        );
        assert!(check_encoded(&limits, &[0x18, 0x01]).contains("events (field 3)"));
        assert!(check_encoded(&limits, &[0x00]).contains("invalid field key"));
        assert!(check_encoded(&limits, &[0x08, 0xff]).contains("truncated varint"));
    }

    /// Whatever the bytes, a batch that passes the wire check and decodes
    /// holds no more events, and no event more attributes, than the limits.
    #[test]
    fn the_wire_check_bounds_what_decoding_yields() {
        use prost::Message;
        let limits = Limits {
            max_events_per_batch: 3,
            max_attrs: 2,
            ..Limits::default()
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut passed, mut refused_counts) = (0, 0);
        for _ in 0..20_000 {
            // Batches around the limits, then bytes changed at random.
            let events = (0..next() % 6)
                .map(|i| {
                    let mut e = event(i + 1);
                    e.attrs = (0..next() % 4)
                        .map(|k| (format!("k{k}"), "v".into()))
                        .collect();
                    e
                })
                .collect();
            let mut bytes = encode(&batch(events));
            for _ in 0..(next() % 3) {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let end = (at + (next() as usize % 40)).min(bytes.len());
                        let chunk = bytes[at..end].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                }
            }
            match limits.check_encoded_batch(&bytes) {
                Err(
                    ValidationError::TooManyEvents { .. } | ValidationError::TooManyAttrs { .. },
                ) => {
                    refused_counts += 1;
                    continue;
                }
                Err(_) => continue,
                Ok(()) => {}
            }
            let Ok(decoded) = EventBatch::decode(bytes.as_slice()) else {
                continue;
            };
            passed += 1;
            assert!(decoded.events.len() <= 3, "{bytes:?}");
            assert!(
                decoded.events.iter().all(|e| e.attrs.len() <= 2),
                "{bytes:?}"
            );
        }
        assert!(passed > 100, "only {passed} mutations passed the check");
        assert!(
            refused_counts > 100,
            "only {refused_counts} mutations broke a count"
        );
    }

    #[test]
    fn sequence_numbers_cannot_push_an_agent_out_of_reach() {
        let limits = Limits::default();
        let check = |held, seqs: &[u64]| {
            let events: Vec<_> = seqs.iter().map(|&s| event(s)).collect();
            match limits.check_seq_advance(held, &events) {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert_eq!(check(0, &[1, 2, 3]), "ok");
        assert_eq!(check(10, &[5, 6]), "ok");
        assert_eq!(check(0, &[]), "ok");
        assert_eq!(check(100, &[100 + (1 << 32)]), "ok");
        assert_eq!(
            check(0, &[1, u64::MAX]),
            "event 1: seq 18446744073709551615 is above the largest sequence number an agent may use (9223372036854775807)"
        );
        assert_eq!(check(MAX_SEQ - 1, &[MAX_SEQ]), "ok");
        assert_eq!(
            check(100, &[101, 101 + (1 << 32)]),
            "event 1: seq 4294967397 is 4294967297 above the highest sequence number held for this agent (100), above the limit max_seq_gap = 4294967296"
        );
    }

    #[test]
    fn limits_reject_unknown_config_keys() {
        let err = serde_json::from_str::<Limits>(r#"{"max_events":5}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_events`"),
            "{err}"
        );
    }
}
