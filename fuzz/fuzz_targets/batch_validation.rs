//! Arbitrary bytes as an `EventBatch` off the wire: decode, validate with the
//! default limits, and convert what passes to Arrow, as the collector does.
//!
//! Checks: nothing panics; a batch that passes validation converts to an
//! `events` record batch with exactly one row per event, and that record
//! batch converts back to the same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otwatch_proto::arrow::{batch_to_events, events_schema, events_to_batch};
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventBatch};
use prost::Message;

/// The collector's clock: fixed so that every run is deterministic.
const NOW_NS: i64 = 1_800_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = EventBatch::decode(data) else {
        return;
    };
    if let Err(e) = Limits::default().check_batch(&batch, NOW_NS) {
        // The refusal text goes back to the agent: it must render.
        let _ = e.to_string();
        return;
    }
    let rows = events_to_batch(&batch.site, &batch.agent, &batch.events, NOW_NS)
        .expect("a validated batch converts to Arrow");
    assert_eq!(rows.num_rows(), batch.events.len());
    assert_eq!(rows.schema(), events_schema());

    let back = batch_to_events(&rows).expect("an events record batch converts back");
    assert_eq!(back.len(), batch.events.len());
    for (sent, stored) in batch.events.iter().zip(&back) {
        let expected = ControllerEvent {
            site: batch.site.clone(),
            agent: batch.agent.clone(),
            ..sent.clone()
        };
        assert_eq!(*stored, expected);
    }
});
