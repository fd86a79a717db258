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
}

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
    fn limits_reject_unknown_config_keys() {
        let err = serde_json::from_str::<Limits>(r#"{"max_events":5}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_events`"),
            "{err}"
        );
    }
}
