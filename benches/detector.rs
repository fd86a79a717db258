//! Detector throughput on protecting-phase batches.
//!
//! One site, 100 assets, each cycling every 8–20 s and sampling three tags
//! per cycle, plus an operator login now and then: 8192-row batches with 400
//! CYCLE/SAMPLE series each. The detector first learns 40 minutes of the same
//! plant; the measured batches are the following hours, in order, so every
//! model runs its protecting path (and raises no alert: the plant is normal).
//!
//! A second plant, one process asset with eight SAMPLE tags a second, runs
//! with and without the `process` model to show that model's own cost.
//!
//! `cargo bench --bench detector -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use otwatch_detector::{Detector, DetectorConfig};
use otwatch_proto::arrow::events_to_batch;
use otwatch_proto::{ControllerEvent, EventKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const ASSETS: usize = 100;
const ROWS: usize = 8192;
const START: i64 = 1_750_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

struct Plant {
    rng: StdRng,
    /// Per asset: mean cycle (ms) and the end time of its cycle under way.
    assets: Vec<(String, f64, i64)>,
    next_login: i64,
    seq: u64,
}

impl Plant {
    fn new() -> Plant {
        let mut rng = StdRng::seed_from_u64(7);
        let assets = (0..ASSETS)
            .map(|i| {
                let mean = rng.random_range(8_000.0..20_000.0);
                (
                    format!("line{}/asset-{i:03}", i / 10 + 1),
                    mean,
                    START + (mean * 1e6) as i64,
                )
            })
            .collect();
        Plant {
            rng,
            assets,
            next_login: START + 60 * SEC,
            seq: 0,
        }
    }

    fn normal(&mut self) -> f64 {
        let (a, b): (f64, f64) = (self.rng.random_range(1e-12..1.0), self.rng.random());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }

    fn event(
        &mut self,
        ts: i64,
        asset: &str,
        kind: EventKind,
        name: &str,
        value: Option<f64>,
    ) -> ControllerEvent {
        self.seq += 1;
        ControllerEvent {
            seq: self.seq,
            ts_ns: ts,
            asset: asset.to_string(),
            kind: kind as i32,
            name: name.to_string(),
            value,
            ..Default::default()
        }
    }

    /// The next `ROWS` events, in time order, as one batch.
    fn batch(&mut self) -> arrow::record_batch::RecordBatch {
        let mut events = Vec::with_capacity(ROWS + 8);
        while events.len() < ROWS {
            let (i, _) = self
                .assets
                .iter()
                .enumerate()
                .min_by_key(|(_, a)| a.2)
                .expect("assets");
            let (name, mean, t) = self.assets[i].clone();
            if self.next_login < t {
                let asset = self.assets[self.rng.random_range(0..ASSETS)].0.clone();
                let mut e = self.event(self.next_login, &asset, EventKind::Access, "login", None);
                e.attrs.insert("peer".into(), "10.1.1.20".into());
                e.attrs.insert("user".into(), "operator".into());
                events.push(e);
                self.next_login += self.rng.random_range(60 * SEC..240 * SEC);
                continue;
            }
            let ms = (mean * (1.0 + 0.02 * self.normal())).round();
            let current = 4.0 + 0.8 * ms / 1e3 + 0.05 * self.normal();
            let temperature = 35.0 + 0.5 * ms / 1e3 + 0.04 * self.normal();
            let voltage = 230.0 + 0.8 * self.normal();
            events.push(self.event(t, &name, EventKind::Cycle, "cycle", Some(ms)));
            events.push(self.event(
                t,
                &name,
                EventKind::Sample,
                "motor_current_a",
                Some(current),
            ));
            events.push(self.event(
                t,
                &name,
                EventKind::Sample,
                "temperature_c",
                Some(temperature),
            ));
            events.push(self.event(
                t,
                &name,
                EventKind::Sample,
                "supply_voltage_v",
                Some(voltage),
            ));
            let next = (mean * (1.0 + 0.02 * self.normal())) as i64 * 1_000_000;
            self.assets[i].2 = t + next;
        }
        events_to_batch("plant-1", "gw-1", &events, 0).expect("batch")
    }
}

/// A learned detector over `plant` and the next 64 batches.
fn learned(config: DetectorConfig) -> (Detector, Vec<arrow::record_batch::RecordBatch>) {
    let mut plant = Plant::new();
    let mut detector = Detector::new(config).unwrap();
    // Learn: 40 minutes of the plant (learning is 30 minutes by default).
    loop {
        let batch = plant.batch();
        detector.process(&batch).expect("learning batch");
        if detector.status().assets_learning == 0 && detector.status().series_learning == 0 {
            break;
        }
    }
    let batches: Vec<_> = (0..64).map(|_| plant.batch()).collect();
    let status = detector.status();
    assert_eq!(status.series_protecting, 4 * ASSETS, "{status:?}");
    (detector, batches)
}

/// One asset with eight SAMPLE tags per timestamp (one row a second, as the
/// SKAB test bed), two hidden factors plus noise: what the process model
/// sees on a process plant. Returns the learned detector and 64 batches.
fn process_plant(config: DetectorConfig) -> (Detector, Vec<arrow::record_batch::RecordBatch>) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut normal = move || {
        let (a, b): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    };
    let (mut t, mut seq) = (START, 0u64);
    let mut batch = |n: usize| {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            t += SEC;
            let (f, h) = (normal(), normal());
            for k in 0..8 {
                seq += 1;
                let v = 10.0 * (k + 1) as f64
                    + f * (k % 3) as f64
                    + h * (k % 2) as f64
                    + 0.1 * normal();
                events.push(ControllerEvent {
                    seq,
                    ts_ns: t,
                    asset: "line1/pump-01".into(),
                    kind: EventKind::Sample as i32,
                    name: format!("tag_{k}"),
                    value: Some(v),
                    ..Default::default()
                });
            }
        }
        events_to_batch("plant-1", "gw-1", &events, 0).expect("batch")
    };
    let mut detector = Detector::new(config).unwrap();
    // 40 minutes of learning (learning is 30 minutes by default).
    for _ in 0..(2400 * 8 / ROWS + 1) {
        detector.process(&batch(ROWS)).expect("learning batch");
    }
    let batches: Vec<_> = (0..64).map(|_| batch(ROWS)).collect();
    (detector, batches)
}

fn measure(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    name: &str,
    (mut detector, batches): (Detector, Vec<arrow::record_batch::RecordBatch>),
) {
    let mut i = 0;
    let mut alerts = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            // In order, so time moves forward; after the last batch time
            // jumps back once, which the detector tolerates (gaps are
            // negative, windows reopen).
            let out = detector
                .process(black_box(&batches[i % batches.len()]))
                .expect("batch");
            alerts += out.len();
            i += 1;
        })
    });
    eprintln!(
        "{name}: alerts raised while measuring: {alerts} (expected 0 before the first wrap-around)"
    );
}

fn bench(c: &mut Criterion) {
    let no_process = DetectorConfig {
        process: false,
        ..DetectorConfig::default()
    };
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(ROWS as u64));
    // 100 cycling machines, every model (the process model included).
    measure(
        &mut group,
        "all_models_8192_rows_protecting",
        learned(DetectorConfig::default()),
    );
    measure(
        &mut group,
        "all_but_process_8192_rows_protecting",
        learned(no_process.clone()),
    );
    // One process asset, eight tags a row: with and without the process
    // model (the per-tag sample model runs in both); the difference is the
    // process model's own cost.
    measure(
        &mut group,
        "process_plant_8_tags_8192_rows",
        process_plant(DetectorConfig::default()),
    );
    measure(
        &mut group,
        "process_plant_8_tags_without_process_8192_rows",
        process_plant(no_process),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
