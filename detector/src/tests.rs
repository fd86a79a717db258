//! Detector behaviour on hand-made event streams.

use super::*;
use otwatch_proto::arrow::events_to_batch;
use otwatch_proto::{ControllerEvent, EventKind};

const T0: i64 = 1_750_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;
const MIN: i64 = 60 * SEC;

/// Deterministic standard normal noise (xorshift + Box–Muller).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        let mut u = || {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

fn ev(
    ts: i64,
    asset: &str,
    kind: EventKind,
    name: &str,
    value: Option<f64>,
    text: Option<&str>,
) -> ControllerEvent {
    ControllerEvent {
        ts_ns: ts,
        asset: asset.into(),
        kind: kind as i32,
        name: name.into(),
        value,
        text: text.map(Into::into),
        ..Default::default()
    }
}

fn access(ts: i64, asset: &str, peer: &str) -> ControllerEvent {
    let mut e = ev(ts, asset, EventKind::Access, "login", None, None);
    e.attrs.insert("peer".into(), peer.into());
    e.attrs.insert("user".into(), "operator".into());
    e
}

/// One machine: 12 s cycles (2 % noise) with a current tag linear in the
/// cycle time and a voltage tag independent of it.
struct Machine {
    asset: String,
    t: i64,
    noise: Noise,
}

/// What to do to one cycle.
#[derive(Clone, Copy, Default)]
struct Twist {
    factor: f64,
    current_shift: f64,
}

impl Machine {
    fn new(asset: &str, seed: u64) -> Machine {
        Machine {
            asset: asset.into(),
            t: T0,
            noise: Noise(seed),
        }
    }

    fn cycle(&mut self, out: &mut Vec<ControllerEvent>, twist: Twist) {
        let factor = if twist.factor == 0.0 {
            1.0
        } else {
            twist.factor
        };
        let ms = (12_000.0 * (1.0 + 0.02 * self.noise.next()) * factor).round();
        self.t += (ms * 1e6) as i64;
        let current = 4.0 + 0.8 * ms / 1e3 + 0.05 * self.noise.next() + twist.current_shift;
        let voltage = 230.0 + 0.8 * self.noise.next();
        out.push(ev(
            self.t,
            &self.asset,
            EventKind::Cycle,
            "cycle",
            Some(ms),
            None,
        ));
        out.push(ev(
            self.t,
            &self.asset,
            EventKind::Sample,
            "motor_current_a",
            Some(current),
            None,
        ));
        out.push(ev(
            self.t,
            &self.asset,
            EventKind::Sample,
            "supply_voltage_v",
            Some(voltage),
            None,
        ));
    }

    fn cycles(&mut self, out: &mut Vec<ControllerEvent>, n: usize) {
        for _ in 0..n {
            self.cycle(out, Twist::default());
        }
    }

    fn cycles_until(&mut self, out: &mut Vec<ControllerEvent>, end: i64) {
        while self.t < end {
            self.cycle(out, Twist::default());
        }
    }

    fn state(&mut self, out: &mut Vec<ControllerEvent>, mode: &str, after: i64) {
        self.t += after;
        out.push(ev(
            self.t,
            &self.asset,
            EventKind::State,
            "mode",
            None,
            Some(mode),
        ));
    }
}

/// A learned start: RUN, a planned stop (MAINT, STOP, RUN) and 40 minutes of cycles.
fn learned_machine(asset: &str, seed: u64, out: &mut Vec<ControllerEvent>) -> Machine {
    let mut m = Machine::new(asset, seed);
    m.state(out, "RUN", 0);
    m.cycles(out, 60);
    m.state(out, "MAINT", SEC);
    m.state(out, "STOP", MIN);
    m.state(out, "RUN", 3 * MIN);
    m.cycles(out, 150);
    m
}

/// Merges several machines' events into time order (stable).
fn merged(mut events: Vec<ControllerEvent>) -> Vec<ControllerEvent> {
    events.sort_by_key(|e| e.ts_ns);
    events
}

/// Numbers the events and feeds them in batches of `size`.
fn run(
    detector: &mut Detector,
    events: &[ControllerEvent],
    size: usize,
    first_seq: u64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let mut seq = first_seq;
    for chunk in events.chunks(size) {
        let numbered: Vec<_> = chunk
            .iter()
            .map(|e| {
                seq += 1;
                ControllerEvent { seq, ..e.clone() }
            })
            .collect();
        let batch = events_to_batch("plant-1", "gw-1", &numbered, 0).unwrap();
        alerts.extend(detector.process(&batch).unwrap());
    }
    alerts
}

/// The alerts of every model but `process`, which also reports cycle-time
/// changes (its observations include the cycle time) and is tested on its own.
fn without_process(alerts: Vec<Alert>) -> Vec<Alert> {
    alerts
        .into_iter()
        .filter(|a| !a.detector.starts_with("process"))
        .collect()
}

fn detect(events: &[ControllerEvent]) -> Vec<Alert> {
    run(
        &mut Detector::new(DetectorConfig::default()).unwrap(),
        events,
        256,
        0,
    )
}

#[test]
fn clean_stream_after_learning_gives_no_alert() {
    let mut events = Vec::new();
    let mut a = learned_machine("line1/press-01", 1, &mut events);
    let mut b = learned_machine("line1/press-02", 2, &mut events);
    a.cycles(&mut events, 400);
    b.cycles(&mut events, 400);
    events.push(access(T0 + 5 * MIN, "line1/press-01", "10.1.1.20"));
    events.push(access(T0 + 70 * MIN, "line1/press-02", "10.1.1.20"));
    let mut d = Detector::new(DetectorConfig::default()).unwrap();
    let alerts = run(&mut d, &merged(events), 256, 0);
    assert!(alerts.is_empty(), "{alerts:#?}");
    let status = d.status();
    assert_eq!((status.assets_protecting, status.assets_learning), (2, 0));
    assert_eq!((status.series_protecting, status.series_learning), (6, 0));
    assert_eq!(status.sites, 1);
    assert_eq!(status.alerts_raised, 0);
}

#[test]
fn slow_drift_is_caught_by_cusum_and_tags_that_follow_it_stay_quiet() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 3, &mut events);
    m.cycles(&mut events, 50);
    let drift_start = m.t;
    for i in 1..=30 {
        m.cycle(
            &mut events,
            Twist {
                factor: 1.005f64.powi(i),
                current_shift: 0.0,
            },
        );
    }
    let drift_end = m.t;
    m.cycles(&mut events, 100);
    let all = detect(&events);
    // The process model sees the tags move with the cycle time: one episode.
    assert!(all.iter().filter(|a| a.detector == "process").count() <= 1);
    let alerts = without_process(all);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.detector.as_str(), a.technique.as_str()),
        ("cycle", "T0836")
    );
    assert!(a.message.contains("slow drift upward"), "{}", a.message);
    assert!(a.ts_ns > drift_start && a.ts_ns <= drift_end);
    assert!(a.event_count > 3 && a.first_seq < a.last_seq);
    assert!(a.observed > a.expected_high);
}

#[test]
fn single_extreme_cycle_is_an_outlier() {
    let mut events = Vec::new();
    let mut m = learned_machine("line2/cnc-01", 4, &mut events);
    m.cycles(&mut events, 30);
    m.cycle(
        &mut events,
        Twist {
            factor: 3.0,
            current_shift: 0.0,
        },
    );
    let at = m.t;
    m.cycles(&mut events, 30);
    let all = detect(&events);
    let process: Vec<_> = all.iter().filter(|a| a.detector == "process").collect();
    assert_eq!(process.len(), 1, "{all:#?}");
    assert!(process[0].ts_ns >= at && process[0].ts_ns < at + MIN);
    assert!(
        process[0].message.contains("cycle_ms"),
        "{}",
        process[0].message
    );
    let alerts = without_process(all);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.detector.as_str(), a.ts_ns, a.event_count),
        ("cycle", at, 1)
    );
    assert!(
        a.message.contains("outlier") && a.message.starts_with("cycle time 3"),
        "{}",
        a.message
    );
    assert_eq!(a.severity(), otwatch_proto::Severity::High);
    assert_eq!(a.agent, "gw-1");
}

#[test]
fn tag_leaving_its_relationship_with_the_cycle_is_caught() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 5, &mut events);
    m.cycles(&mut events, 30);
    let start = m.t;
    for _ in 0..20 {
        m.cycle(
            &mut events,
            Twist {
                factor: 1.0,
                current_shift: 0.25,
            },
        );
    }
    m.cycles(&mut events, 30);
    let alerts = detect(&events);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.detector.as_str(), a.name.as_str(), a.technique.as_str()),
        ("sample", "motor_current_a", "T0832")
    );
    assert!(a.ts_ns > start && a.ts_ns < start + 2 * MIN, "{a:?}");
    assert!(a.message.contains("relationship"), "{}", a.message);
}

#[test]
fn sustained_outliers_are_one_episode_and_a_later_one_is_another() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 6, &mut events);
    let twist = Twist {
        factor: 2.0,
        current_shift: 0.0,
    };
    for _ in 0..10 {
        m.cycle(&mut events, twist);
    }
    // Fewer normal points than close the episode, then more outliers: same episode.
    m.cycles(&mut events, 5);
    for _ in 0..3 {
        m.cycle(&mut events, twist);
    }
    m.cycles(&mut events, 40);
    m.cycle(&mut events, twist);
    let second = m.t;
    m.cycles(&mut events, 40);
    let alerts = without_process(detect(&events));
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[1].ts_ns, second);
    assert_ne!(alerts[0].id, alerts[1].id);
}

#[test]
fn silent_asset_is_caught_while_others_keep_going_and_stop_is_not_silence() {
    let mut events = Vec::new();
    let mut a = learned_machine("line1/press-01", 7, &mut events);
    let mut b = learned_machine("line1/press-02", 8, &mut events);
    a.cycles(&mut events, 20);
    // a goes quiet without a word for 5 minutes, then resumes.
    let last = a.t;
    a.t += 5 * MIN;
    let end = a.t + 40 * MIN;
    a.cycles_until(&mut events, end);
    // b keeps going through a's silence, then stops for 10 minutes,
    // announced: quiet but not silent.
    b.cycles_until(&mut events, a.t - 30 * MIN);
    b.state(&mut events, "MAINT", SEC);
    b.state(&mut events, "STOP", MIN);
    b.state(&mut events, "RUN", 10 * MIN);
    b.cycles_until(&mut events, end);
    // Small batches, as from a live agent: the watermark moves on while a is quiet.
    let alerts = run(
        &mut Detector::new(DetectorConfig::default()).unwrap(),
        &merged(events),
        16,
        0,
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let s = &alerts[0];
    assert_eq!(
        (s.detector.as_str(), s.name.as_str(), s.asset.as_str()),
        ("cadence", "silence", "line1/press-01")
    );
    assert_eq!(s.technique, "T0814");
    assert!(s.ts_ns > last && s.ts_ns < last + 2 * MIN, "{s:?}");
    // Found from b's events while a was still silent: the gap so far, not the final one.
    assert!(s.observed < 5.0 * 60.0, "{s:?}");
}

#[test]
fn silence_is_also_caught_when_the_asset_resumes_in_the_same_batch() {
    let mut events = Vec::new();
    let mut a = learned_machine("line1/press-01", 9, &mut events);
    a.cycles(&mut events, 10);
    let last = a.t;
    a.t += 5 * MIN;
    a.cycles(&mut events, 10);
    // One batch holds the gap: there is no later watermark check in between.
    let alerts = run(
        &mut Detector::new(DetectorConfig::default()).unwrap(),
        &events,
        100_000,
        0,
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].name, "silence");
    assert!(alerts[0].ts_ns > last && alerts[0].ts_ns < last + 2 * MIN);
    assert!(alerts[0].observed > 5.0 * 60.0);
}

#[test]
fn unseen_transitions_are_caught_seen_ones_are_not() {
    let mut events = Vec::new();
    let mut m = learned_machine("line2/robot-01", 10, &mut events);
    m.cycles(&mut events, 20);
    // A planned stop: seen while learning.
    m.state(&mut events, "MAINT", SEC);
    m.state(&mut events, "STOP", MIN);
    m.state(&mut events, "RUN", 3 * MIN);
    m.cycles(&mut events, 20);
    // Straight from RUN to STOP: not seen.
    m.state(&mut events, "STOP", SEC);
    let stop = m.t;
    m.state(&mut events, "RUN", 3 * MIN);
    m.cycles(&mut events, 20);
    m.t += SEC;
    events.push(ev(
        m.t,
        "line2/robot-01",
        EventKind::Change,
        "program",
        None,
        Some("9f3a1c2b"),
    ));
    let change = m.t;
    m.cycles(&mut events, 20);
    let alerts = detect(&events);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(
        (alerts[0].name.as_str(), alerts[0].ts_ns),
        ("RUN -> STOP", stop)
    );
    assert_eq!(
        (alerts[0].detector.as_str(), alerts[0].technique.as_str()),
        ("sequence", "T0858")
    );
    assert!(
        alerts[0].message.contains("learned from RUN: MAINT"),
        "{}",
        alerts[0].message
    );
    assert_eq!(
        (alerts[1].name.as_str(), alerts[1].ts_ns),
        ("RUN -> CHANGE program=9f3a1c2b", change)
    );
    assert_eq!(alerts[1].technique, "T0843");
    assert_eq!(alerts[1].severity(), otwatch_proto::Severity::Critical);
}

#[test]
fn unknown_peer_is_caught_once_per_episode() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 11, &mut events);
    for i in 0..10 {
        events.push(access(T0 + i * 3 * MIN, "line1/press-01", "10.1.1.20"));
    }
    events.push(access(m.t + 10 * SEC, "line1/press-01", "10.1.1.20"));
    let scan = m.t + 30 * SEC;
    m.cycles(&mut events, 60);
    // A polling burst from a peer never seen: many events, one alert.
    for i in 0..150 {
        events.push(access(
            scan + i * 200_000_000,
            "line1/press-01",
            "10.1.66.7",
        ));
    }
    let alerts = detect(&merged(events));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.detector.as_str(), a.name.as_str(), a.technique.as_str()),
        ("access", "10.1.66.7", "T0846")
    );
    assert_eq!(a.ts_ns, scan);
    assert!(
        a.message.contains("learned peers: 10.1.1.20"),
        "{}",
        a.message
    );
}

#[test]
fn event_floods_are_bursts_one_alert_each() {
    // A flood of samples (the asset's steady path) and a flood of log lines
    // (the event-by-event path): each is one cadence burst alert.
    for kind in [EventKind::Sample, EventKind::Log] {
        let mut events = Vec::new();
        let mut m = learned_machine("line1/press-01", 16, &mut events);
        m.cycles(&mut events, 10);
        let last_cycle = events
            .iter()
            .rev()
            .find(|e| e.kind() == EventKind::Cycle)
            .unwrap()
            .value
            .unwrap();
        let current = 4.0 + 0.8 * last_cycle / 1e3;
        let flood = m.t + SEC;
        for i in 0..200 {
            let value = (kind == EventKind::Sample).then_some(current);
            events.push(ev(
                flood + i * 20_000_000,
                "line1/press-01",
                kind,
                "motor_current_a",
                value,
                None,
            ));
        }
        m.t = flood + 4 * SEC;
        m.cycles(&mut events, 30);
        let alerts = detect(&events);
        let bursts: Vec<_> = alerts.iter().filter(|a| a.name == "burst").collect();
        assert_eq!(bursts.len(), 1, "{kind:?}: {alerts:#?}");
        let b = bursts[0];
        assert_eq!(b.detector, "cadence");
        assert!(b.ts_ns >= flood && b.ts_ns < flood + 4 * SEC, "{b:?}");
        assert!(b.observed > b.expected_high * 4.0);
        assert!(
            alerts.iter().all(|a| a.name == "burst"),
            "{kind:?}: {alerts:#?}"
        );
    }
}

#[test]
fn checkpoint_and_resume_gives_the_same_alerts_as_an_uninterrupted_run() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 12, &mut events);
    let mut other = learned_machine("line1/press-02", 13, &mut events);
    m.cycles(&mut events, 20);
    for i in 1..=30 {
        m.cycle(
            &mut events,
            Twist {
                factor: 1.005f64.powi(i),
                current_shift: 0.0,
            },
        );
    }
    m.cycles(&mut events, 20);
    m.cycle(
        &mut events,
        Twist {
            factor: 3.0,
            current_shift: 0.0,
        },
    );
    other.cycles(&mut events, 80);
    let events = merged(events);
    let all = detect(&events);
    assert!(all.len() >= 2, "{all:#?}");
    // Checkpoint at several points, including mid-learning and mid-episode.
    for cut in [700, 1600, events.len() - 300] {
        let cut = cut / 256 * 256;
        let mut d = Detector::new(DetectorConfig::default()).unwrap();
        let mut alerts = run(&mut d, &events[..cut], 256, 0);
        let json = serde_json::to_string(&d).unwrap();
        let mut resumed: Detector = serde_json::from_str(&json).unwrap();
        assert_eq!(resumed.status(), d.status());
        alerts.extend(run(&mut resumed, &events[cut..], 256, cut as u64));
        assert_eq!(alerts, all, "checkpoint at {cut}");
        assert_eq!(serde_json::to_string(&resumed).unwrap(), {
            let mut straight = Detector::new(DetectorConfig::default()).unwrap();
            run(&mut straight, &events, 256, 0);
            serde_json::to_string(&straight).unwrap()
        });
    }
}

#[test]
fn replays_give_the_same_ids() {
    let mut events = Vec::new();
    let mut m = learned_machine("line1/press-01", 14, &mut events);
    m.cycle(
        &mut events,
        Twist {
            factor: 3.0,
            current_shift: 0.0,
        },
    );
    m.cycles(&mut events, 5);
    let a = detect(&events);
    let b = run(
        &mut Detector::new(DetectorConfig::default()).unwrap(),
        &events,
        97,
        0,
    );
    // The cycle model and the process model, each once.
    assert_eq!(a.len(), 2, "{a:#?}");
    assert_eq!(a, b);
}

#[test]
fn plain_utf8_columns_work_and_a_foreign_batch_is_refused() {
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::DataType;
    let mut events = Vec::new();
    learned_machine("line1/press-01", 15, &mut events);
    let batch = events_to_batch("plant-1", "gw-1", &events, 0).unwrap();
    // The same batch with plain string columns instead of dictionaries.
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(f.data_type(), DataType::Dictionary(..)) {
            fields.push(arrow::datatypes::Field::new(
                f.name(),
                DataType::Utf8,
                false,
            ));
            columns.push(arrow::compute::cast(c, &DataType::Utf8).unwrap());
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    let plain = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
    .unwrap();
    let mut d = Detector::new(DetectorConfig::default()).unwrap();
    assert!(d.process(&plain).unwrap().is_empty());
    assert_eq!(d.status().events_seen, events.len() as u64);

    let foreign = RecordBatch::try_from_iter([(
        "x",
        std::sync::Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )])
    .unwrap();
    let err = d.process(&foreign).unwrap_err();
    assert!(err.to_string().contains("no column"), "{err}");
    assert_eq!(d.status().events_seen, events.len() as u64);
}

#[test]
fn config_reads_with_defaults_and_is_checked() {
    let c: DetectorConfig = serde_json::from_str(r#"{"learn": "1h", "outlier_z": 5}"#).unwrap();
    assert_eq!(c.learn, std::time::Duration::from_secs(3600));
    assert_eq!(c.cusum_h, DetectorConfig::default().cusum_h);
    assert!(c.validate().is_ok());
    assert!(serde_json::from_str::<DetectorConfig>(r#"{"lern": "1h"}"#).is_err());
    let bad = DetectorConfig { cusum_h: 0.0, ..c };
    assert!(bad.validate().is_err());
}

#[test]
fn a_detector_refuses_a_bad_config_and_takes_a_changed_one_over_its_checkpoint() {
    let bad = DetectorConfig {
        cusum_h: 0.0,
        ..DetectorConfig::default()
    };
    let err = Detector::new(bad.clone()).err().unwrap().to_string();
    assert!(err.contains("cusum_h"), "{err}");

    let mut d = Detector::new(DetectorConfig::default()).unwrap();
    let restored: Detector = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    d = restored;
    let changed = d
        .reconfigure(DetectorConfig {
            outlier_z: 9.0,
            learn: std::time::Duration::from_secs(7200),
            ..DetectorConfig::default()
        })
        .unwrap();
    assert_eq!(changed, vec!["learn".to_string(), "outlier_z".to_string()]);
    assert_eq!(d.config().outlier_z, 9.0);
    assert!(d.reconfigure(bad).is_err());
    assert_eq!(
        d.config().outlier_z,
        9.0,
        "a refused config changes nothing"
    );
}

/// A process of four tags driven by two hidden factors (flow and heat) plus
/// noise, sampled every second with the same timestamp per row.
struct Plant {
    t: i64,
    noise: Noise,
}

impl Plant {
    fn new(seed: u64) -> Plant {
        Plant {
            t: T0,
            noise: Noise(seed),
        }
    }

    /// One row; `pressure_offset` pushes `pressure_bar` off its relation
    /// with the flow, `flow_shift` moves the whole process.
    fn row(&mut self, out: &mut Vec<ControllerEvent>, pressure_offset: f64, flow_shift: f64) {
        self.t += SEC;
        let flow = 30.0 + flow_shift + 0.5 * self.noise.next();
        let heat = 60.0 + 0.3 * self.noise.next();
        let tags = [
            ("flow_m3h", flow),
            (
                "pressure_bar",
                0.1 * flow + 0.02 * self.noise.next() + pressure_offset,
            ),
            (
                "motor_current_a",
                2.0 + 0.05 * flow + 0.01 * self.noise.next(),
            ),
            ("temperature_c", heat + 0.05 * self.noise.next()),
        ];
        for (name, value) in tags {
            out.push(ev(
                self.t,
                "line3/pump-01",
                EventKind::Sample,
                name,
                Some(value),
                None,
            ));
        }
    }

    fn rows(
        &mut self,
        out: &mut Vec<ControllerEvent>,
        n: usize,
        pressure_offset: f64,
        flow_shift: f64,
    ) {
        for _ in 0..n {
            self.row(out, pressure_offset, flow_shift);
        }
    }
}

fn process_config() -> DetectorConfig {
    DetectorConfig {
        learn: std::time::Duration::from_secs(400),
        ..DetectorConfig::default()
    }
}

#[test]
fn process_model_stays_quiet_on_normal_data() {
    let mut events = Vec::new();
    let mut p = Plant::new(21);
    p.rows(&mut events, 2000, 0.0, 0.0);
    let mut d = Detector::new(process_config()).unwrap();
    let alerts = run(&mut d, &events, 256, 0);
    assert!(alerts.is_empty(), "{alerts:#?}");
}

#[test]
fn process_model_names_a_tag_that_breaks_its_correlation() {
    let mut events = Vec::new();
    let mut p = Plant::new(22);
    p.rows(&mut events, 600, 0.0, 0.0);
    let start = p.t;
    // Pressure 0.3 bar too high for the flow: within its own learned range
    // (flow noise alone moves it ±0.15), but off its relation with the flow.
    p.rows(&mut events, 100, 0.3, 0.0);
    let end = p.t;
    p.rows(&mut events, 300, 0.0, 0.0);
    let mut d = Detector::new(process_config()).unwrap();
    d.record_episode_ends(true);
    let alerts: Vec<Alert> = run(&mut d, &events, 256, 0)
        .into_iter()
        .filter(|a| a.detector == "process")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert!(a.ts_ns > start && a.ts_ns < start + 30 * SEC, "{a:?}");
    assert_eq!(
        (a.name.as_str(), a.technique.as_str()),
        ("pressure_bar", "T0832")
    );
    assert!(
        a.message
            .starts_with("tags left their learned relationship"),
        "{}",
        a.message
    );
    assert!(a.message.contains("pressure_bar 3."), "{}", a.message);
    assert!(a.observed > a.expected_low && a.expected_low < a.expected_high);
    assert_eq!(a.event_count, 4);
    // The episode ends after the pressure is back, once.
    let ends = d.take_episode_ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].alert_id, a.id);
    assert!(
        ends[0].ts_ns > end && ends[0].ts_ns < end + 2 * MIN,
        "{ends:?}"
    );
}

#[test]
fn process_model_catches_the_process_moving_together() {
    let mut events = Vec::new();
    let mut p = Plant::new(23);
    p.rows(&mut events, 600, 0.0, 0.0);
    let start = p.t;
    p.rows(&mut events, 100, 0.0, -4.0);
    let alerts: Vec<Alert> = run(
        &mut Detector::new(process_config()).unwrap(),
        &events,
        100,
        0,
    )
    .into_iter()
    .filter(|a| a.detector == "process")
    .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert!(a.ts_ns > start && a.ts_ns < start + 30 * SEC, "{a:?}");
    assert_eq!(a.technique, "T0836", "{}", a.message);
    assert!(a.message.contains("flow_m3h"), "{}", a.message);
}

#[test]
fn process_model_resumes_from_a_checkpoint_mid_episode() {
    let mut events = Vec::new();
    let mut p = Plant::new(24);
    p.rows(&mut events, 600, 0.0, 0.0);
    p.rows(&mut events, 100, 0.3, 0.0);
    p.rows(&mut events, 200, 0.0, 0.0);
    let straight = {
        let mut d = Detector::new(process_config()).unwrap();
        d.record_episode_ends(true);
        let alerts = run(&mut d, &events, 256, 0);
        (alerts, d.take_episode_ends())
    };
    assert!(
        !straight.0.is_empty() && !straight.1.is_empty(),
        "{straight:#?}"
    );
    // Cuts mid-learning, mid-episode and inside a row (a timestamp's tags
    // split over two batches).
    for cut in [1000, 2500, 2650, 2803] {
        let mut d = Detector::new(process_config()).unwrap();
        d.record_episode_ends(true);
        let mut alerts = run(&mut d, &events[..cut], 256, 0);
        let mut ends = d.take_episode_ends();
        let json = serde_json::to_string(&d).unwrap();
        let mut resumed: Detector = serde_json::from_str(&json).unwrap();
        resumed.record_episode_ends(true);
        alerts.extend(run(&mut resumed, &events[cut..], 256, cut as u64));
        ends.extend(resumed.take_episode_ends());
        assert_eq!((alerts, ends), straight, "checkpoint at {cut}");
    }
}

/// The process model's own alerts and notices.
fn process_only(alerts: Vec<Alert>) -> Vec<Alert> {
    alerts
        .into_iter()
        .filter(|a| a.detector.starts_with("process"))
        .collect()
}

#[test]
fn process_model_follows_a_slow_drift_but_not_an_abrupt_change() {
    // Two hours over which the flow (and the pressure and current that
    // follow it) creeps 3 units, six learning standard deviations.
    let mut events = Vec::new();
    let mut p = Plant::new(25);
    p.rows(&mut events, 400, 0.0, 0.0);
    let n = 7200;
    for i in 0..n {
        p.row(&mut events, 0.0, 3.0 * i as f64 / n as f64);
    }
    let start = p.t;
    // Then the flow drops 4 units at once and stays there for 5 minutes.
    p.rows(&mut events, 300, 0.0, -1.0);
    let alerts = process_only(run(
        &mut Detector::new(process_config()).unwrap(),
        &events,
        512,
        0,
    ));
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.detector, "process");
    assert!(a.ts_ns > start && a.ts_ns < start + 30 * SEC, "{a:?}");
    assert!(a.message.contains("flow_m3h"), "{}", a.message);

    // The same drift against a model that never re-learns is reported long
    // before the drop.
    let frozen = DetectorConfig {
        process_adapt: std::time::Duration::ZERO,
        process_rebaseline_after: std::time::Duration::ZERO,
        ..process_config()
    };
    let alerts = process_only(run(&mut Detector::new(frozen).unwrap(), &events, 512, 0));
    assert!(
        alerts.first().is_some_and(|a| a.ts_ns < start - 30 * MIN),
        "{alerts:#?}"
    );
}

#[test]
fn process_model_accepts_a_held_new_level_with_a_notice() {
    let mut events = Vec::new();
    let mut p = Plant::new(26);
    p.rows(&mut events, 600, 0.0, 0.0);
    let start = p.t;
    // The pressure leaves its relation with the flow and stays there.
    p.rows(&mut events, 1800, 0.3, 0.0);
    let mut d = Detector::new(process_config()).unwrap();
    d.record_episode_ends(true);
    let alerts = process_only(run(&mut d, &events, 256, 0));
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let (alert, notice) = (&alerts[0], &alerts[1]);
    assert_eq!(
        (alert.detector.as_str(), alert.name.as_str()),
        ("process", "pressure_bar")
    );
    assert!(alert.ts_ns > start && alert.ts_ns < start + 30 * SEC);
    // Ten minutes later the level is taken as the new normal, once: a
    // low-severity notice naming the tag with its old and new level, and
    // the episode ends there.
    assert_eq!(
        (notice.detector.as_str(), notice.name.as_str()),
        ("process-baseline", "pressure_bar")
    );
    assert_eq!(notice.severity(), otwatch_proto::Severity::Low);
    assert!(
        notice.ts_ns >= alert.ts_ns + 10 * MIN && notice.ts_ns < alert.ts_ns + 11 * MIN,
        "{notice:?}"
    );
    assert!(
        notice.message.starts_with("new normal accepted")
            && notice.message.contains("pressure_bar 2.99")
            && notice.message.contains("→ 3.3"),
        "{}",
        notice.message
    );
    assert!(
        (notice.observed - 3.3).abs() < 0.05 && notice.observed > notice.expected_high,
        "{notice:?}"
    );
    let ends = d.take_episode_ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(
        (ends[0].alert_id.as_str(), ends[0].ts_ns),
        (alert.id.as_str(), notice.ts_ns)
    );

    // A spike that decays slowly is not a level: with the time it takes
    // the smoothed statistics to forget it, no notice.
    let mut events = Vec::new();
    let mut p = Plant::new(27);
    p.rows(&mut events, 600, 0.0, 0.0);
    p.rows(&mut events, 5, 500.0, 0.0);
    p.rows(&mut events, 1800, 0.0, 0.0);
    let slow = DetectorConfig {
        process_smoothing: 0.005,
        ..process_config()
    };
    let alerts = process_only(run(&mut Detector::new(slow).unwrap(), &events, 256, 0));
    assert!(
        alerts.iter().all(|a| a.detector == "process"),
        "{alerts:#?}"
    );
}

#[test]
fn process_model_resumes_from_a_checkpoint_across_drift_and_a_new_normal() {
    let mut events = Vec::new();
    let mut p = Plant::new(28);
    p.rows(&mut events, 600, 0.0, 0.0);
    for i in 0..1200 {
        p.row(&mut events, 0.0, i as f64 / 1200.0);
    }
    p.rows(&mut events, 1200, 0.3, 1.0);
    p.rows(&mut events, 300, 0.3, 1.0);
    let straight = {
        let mut d = Detector::new(process_config()).unwrap();
        d.record_episode_ends(true);
        let alerts = run(&mut d, &events, 256, 0);
        (alerts, d.take_episode_ends())
    };
    assert!(
        straight.0.iter().any(|a| a.detector == "process-baseline"),
        "{straight:#?}"
    );
    // Cuts while the centre follows the drift, mid-episode, and right
    // around the new normal.
    let notice = straight
        .0
        .iter()
        .find(|a| a.detector == "process-baseline")
        .unwrap()
        .last_seq as usize;
    for cut in [4000, 8001, 9000, notice - 2, notice - 1, notice + 3] {
        let mut d = Detector::new(process_config()).unwrap();
        d.record_episode_ends(true);
        let mut alerts = run(&mut d, &events[..cut], 256, 0);
        let mut ends = d.take_episode_ends();
        let json = serde_json::to_string(&d).unwrap();
        let mut resumed: Detector = serde_json::from_str(&json).unwrap();
        resumed.record_episode_ends(true);
        alerts.extend(run(&mut resumed, &events[cut..], 256, cut as u64));
        ends.extend(resumed.take_episode_ends());
        assert_eq!((alerts, ends), straight, "checkpoint at {cut}");
    }
}
