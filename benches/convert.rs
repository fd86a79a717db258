//! Protobuf → Arrow conversion, the collector's per-batch CPU cost: decode an
//! encoded `EventBatch` and build the `events` record batch.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use otwatch_proto::{ControllerEvent, EventBatch, EventKind};
use prost::Message;
use std::hint::black_box;

fn batch(n: usize) -> EventBatch {
    let events = (0..n)
        .map(|i| {
            let kind = if i % 3 == 0 {
                EventKind::Cycle
            } else {
                EventKind::Sample
            };
            ControllerEvent {
                seq: i as u64 + 1,
                ts_ns: 1_800_000_000_000_000_000 + i as i64 * 1_000_000,
                asset: format!("line{}/press-{:02}", i % 4, i % 16),
                kind: kind as i32,
                name: match kind {
                    EventKind::Cycle => "cycle".into(),
                    _ => ["motor_current_a", "temperature_c"][i % 2].into(),
                },
                value: Some(1000.0 + (i % 97) as f64),
                ..Default::default()
            }
        })
        .collect();
    EventBatch {
        site: "plant-lyon".into(),
        agent: "gw-1".into(),
        events,
        queue_backlog: 0,
    }
}

fn convert(c: &mut Criterion) {
    let mut group = c.benchmark_group("convert");
    for n in [1000usize, 8192] {
        let batch = batch(n);
        let bytes = batch.encode_to_vec();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("decode_and_to_arrow", n),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let decoded = EventBatch::decode(bytes.as_slice()).unwrap();
                    otwatch_proto::arrow::events_to_batch(
                        &decoded.site,
                        &decoded.agent,
                        &decoded.events,
                        1,
                    )
                    .unwrap()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("to_arrow", n), &batch, |b, batch| {
            b.iter(|| {
                otwatch_proto::arrow::events_to_batch(
                    &batch.site,
                    &batch.agent,
                    black_box(&batch.events),
                    1,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
