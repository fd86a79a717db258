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
    /// Time between rows.
    step: i64,
    /// When set, the flow wanders (AR(1) with this coefficient) instead of
    /// varying independently from row to row.
    wander: Option<f64>,
    level: f64,
}

impl Plant {
    fn new(seed: u64) -> Plant {
        Plant {
            t: T0,
            noise: Noise(seed),
            step: SEC,
            wander: None,
            level: 0.0,
        }
    }

    /// The same plant sampled once every `step`.
    fn sampled_every(seed: u64, step: i64) -> Plant {
        Plant {
            step,
            ..Plant::new(seed)
        }
    }

    /// One row; `pressure_offset` pushes `pressure_bar` off its relation
    /// with the flow, `flow_shift` moves the whole process.
    fn row(&mut self, out: &mut Vec<ControllerEvent>, pressure_offset: f64, flow_shift: f64) {
        self.t += self.step;
        let flow = match self.wander {
            None => 30.0 + flow_shift + 0.5 * self.noise.next(),
            Some(phi) => {
                self.level = phi * self.level + 0.5 * self.noise.next();
                30.0 + flow_shift + self.level
            }
        };
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

/// A checkpoint round trip, as the runtime does it.
fn restarted(d: &Detector) -> Detector {
    serde_json::from_str(&serde_json::to_string(d).unwrap()).unwrap()
}

/// Learns the plant sampled once a minute for two hours.
fn slow_plant(seed: u64) -> (Plant, Vec<ControllerEvent>, DetectorConfig) {
    let config = DetectorConfig {
        learn: std::time::Duration::from_secs(2 * 3600),
        ..DetectorConfig::default()
    };
    let mut p = Plant::sampled_every(seed, MIN);
    let mut events = Vec::new();
    p.rows(&mut events, 130, 0.0, 0.0);
    (p, events, config)
}

#[test]
fn a_held_setpoint_change_stays_one_open_episode_across_hours_of_slow_sampling() {
    let (mut p, mut events, config) = slow_plant(31);
    let start = p.t;
    // The flow (and what follows it) moves 4 units, 8 learning standard
    // deviations, and stays there for six hours, sampled once a minute.
    p.rows(&mut events, 360, 0.0, 4.0);
    let mut d = Detector::new(config).unwrap();
    d.record_episode_ends(true);
    let alerts = run(&mut d, &events, 64, 0);
    let process: Vec<_> = alerts.iter().filter(|a| a.detector == "process").collect();
    assert_eq!(process.len(), 1, "{alerts:#?}");
    assert!(process[0].ts_ns > start && process[0].ts_ns <= start + 5 * MIN);
    assert_eq!(process[0].technique, "T0836", "{}", process[0].message);
    // Never accepted by itself: the episode is still open six hours on.
    assert!(d.take_episode_ends().is_empty());
    assert!(!alerts.iter().any(|a| a.detector.starts_with("process-")));
    let report = d.report(Some("plant-1"), Some("line3/pump-01")).unwrap();
    let model = report[0]
        .models
        .iter()
        .find(|m| m.model == "process")
        .unwrap();
    assert_eq!(model.state, "protecting");
    assert_eq!(model.open_alerts, vec![process[0].id.clone()], "{model:?}");
    assert_eq!(model.open_since_ns, Some(process[0].ts_ns));
    assert!(
        model.baseline.contains("one every 60.0 s"),
        "{}",
        model.baseline
    );
}

#[test]
fn accepting_ends_the_episode_and_a_restart_keeps_the_acceptance() {
    let (mut p, mut events, config) = slow_plant(32);
    p.rows(&mut events, 120, 0.0, 4.0);
    let mut d = Detector::new(config).unwrap();
    d.record_episode_ends(true);
    let alerts = run(&mut d, &events, 64, 0);
    let alert = alerts.iter().find(|a| a.detector == "process").unwrap();
    assert!(d.knows_alert(&alert.id));

    let changed = d.accept(&alert.id).unwrap();
    assert!(changed.contains("flow_m3h"), "{changed}");
    let ends = d.take_episode_ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].alert_id, alert.id);
    // Accepting it twice is refused: the episode is over.
    let again = d.accept(&alert.id).unwrap_err().to_string();
    assert!(again.contains("over"), "{again}");
    assert!(d
        .accept("0123456789abcdef")
        .unwrap_err()
        .to_string()
        .contains("not one the detector knows"));

    // A restart from the checkpoint keeps the acceptance: four more hours
    // at the accepted level raise nothing, here and in an uninterrupted run.
    let mut resumed = restarted(&d);
    let mut more = Vec::new();
    p.rows(&mut more, 240, 0.0, 4.0);
    let seq = events.len() as u64;
    let after = run(&mut resumed, &more, 64, seq);
    assert!(after.is_empty(), "{after:#?}");
    assert_eq!(run(&mut d, &more, 64, seq), after);
    // A further move away from the accepted level is a new episode.
    let mut further = Vec::new();
    p.rows(&mut further, 60, 0.0, 12.0);
    let later = run(&mut resumed, &further, 64, seq + more.len() as u64);
    assert_eq!(
        later.iter().filter(|a| a.detector == "process").count(),
        1,
        "{later:#?}"
    );
}

#[test]
fn accepting_a_joint_move_of_wandering_tags_keeps_their_relationship() {
    // The flow wanders (its scale is widened for it) and pressure and
    // current follow it: a held move of all three is accepted, and the
    // accepted level stays quiet, in T² and in Q, for hours.
    let config = DetectorConfig {
        learn: std::time::Duration::from_secs(2 * 3600),
        ..DetectorConfig::default()
    };
    let mut p = Plant {
        wander: Some(0.8),
        ..Plant::sampled_every(41, MIN)
    };
    let mut events = Vec::new();
    p.rows(&mut events, 180, 0.0, 0.0);
    p.rows(&mut events, 120, 0.0, 5.0);
    let mut d = Detector::new(config).unwrap();
    let alerts = run(&mut d, &events, 64, 0);
    let process: Vec<_> = alerts.iter().filter(|a| a.detector == "process").collect();
    assert_eq!(process.len(), 1, "{alerts:#?}");
    let changed = d.accept(&process[0].id).unwrap();
    assert!(changed.contains("widened along the move"), "{changed}");
    let mut more = Vec::new();
    p.rows(&mut more, 240, 0.0, 5.0);
    let after = run(&mut d, &more, 64, events.len() as u64);
    assert!(!after.iter().any(|a| a.detector == "process"), "{after:#?}");
}

#[test]
fn a_slow_creep_is_not_absorbed() {
    // Two hours over which the flow creeps 4 units: nothing follows it, so
    // it is reported once it leaves the learned region.
    let mut events = Vec::new();
    let mut p = Plant::new(25);
    p.rows(&mut events, 400, 0.0, 0.0);
    let n = 7200;
    for i in 0..n {
        p.row(&mut events, 0.0, 4.0 * i as f64 / n as f64);
    }
    let mut d = Detector::new(process_config()).unwrap();
    let alerts: Vec<Alert> = run(&mut d, &events, 512, 0)
        .into_iter()
        .filter(|a| a.detector == "process")
        .collect();
    // Reported while it crosses the limit (maybe more than once, as it
    // wavers across it), and still open at the end: the creep never
    // became normal.
    assert!(!alerts.is_empty(), "{alerts:#?}");
    assert!(alerts[0].ts_ns > T0 + 400 * SEC + 10 * MIN, "{alerts:#?}");
    assert!(
        alerts.iter().all(|a| a.message.contains("flow_m3h")),
        "{alerts:#?}"
    );
    let report = d.report(None, None).unwrap();
    let process = report[0]
        .models
        .iter()
        .find(|m| m.model == "process")
        .unwrap();
    assert!(process.open_since_ns.is_some(), "{process:?}");
}

/// A valve that toggles between 0 and 1, a mode held constant at 3 and a
/// pressure, sampled every 10 s.
fn valve_rows(
    out: &mut Vec<ControllerEvent>,
    t: &mut i64,
    n: usize,
    valve: impl Fn(usize) -> f64,
    mode: f64,
    noise: &mut Noise,
) {
    for i in 0..n {
        *t += 10 * SEC;
        for (name, value) in [
            ("valve_open", valve(i)),
            ("mode", mode),
            ("pressure_bar", 3.0 + 0.05 * noise.next()),
            ("flow_m3h", 30.0 + 0.5 * noise.next()),
        ] {
            out.push(ev(
                *t,
                "line4/valve-01",
                EventKind::Sample,
                name,
                Some(value),
                None,
            ));
        }
    }
}

#[test]
fn a_discrete_toggle_seen_while_learning_is_quiet_and_an_unseen_value_alerts() {
    let config = DetectorConfig {
        learn: std::time::Duration::from_secs(1800),
        ..DetectorConfig::default()
    };
    let mut events = Vec::new();
    let mut t = T0;
    let mut noise = Noise(41);
    let toggling = |i: usize| if (i / 20).is_multiple_of(2) { 0.0 } else { 1.0 };
    valve_rows(&mut events, &mut t, 200, toggling, 3.0, &mut noise);
    // Protecting: the same toggles, then the valve takes 2 (never seen).
    valve_rows(&mut events, &mut t, 200, toggling, 3.0, &mut noise);
    let quiet = events.len();
    valve_rows(&mut events, &mut t, 5, |_| 2.0, 3.0, &mut noise);
    valve_rows(&mut events, &mut t, 40, toggling, 3.0, &mut noise);
    // The mode, constant while learning, changes once: the operator's
    // toggle is reported once, plainly, not as an infinite z-score.
    valve_rows(&mut events, &mut t, 40, toggling, 4.0, &mut noise);
    let mut d = Detector::new(config).unwrap();
    let alerts = run(&mut d, &events, 200, 0);
    assert!(
        alerts.iter().all(|a| a.detector == "discrete"),
        "{alerts:#?}"
    );
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let (value, mode) = (&alerts[0], &alerts[1]);
    assert_eq!(value.name, "valve_open");
    assert!(value.first_seq as usize > quiet);
    assert!(
        value.message.contains("took 2") && value.message.contains("learned: 0, 1"),
        "{}",
        value.message
    );
    assert_eq!(value.severity(), otwatch_proto::Severity::Medium);
    assert_eq!(mode.name, "mode");
    assert!(mode.message.contains("took 4 (was 3)"), "{}", mode.message);
    assert!(!alerts.iter().any(|a| a.message.contains("robust z")));
    let report = d.report(None, None).unwrap();
    let models = &report[0].models;
    let process = models.iter().find(|m| m.model == "process").unwrap();
    assert!(
        process
            .baseline
            .contains("left to the discrete model: valve_open, mode"),
        "{}",
        process.baseline
    );
    assert_eq!(
        models.iter().filter(|m| m.model == "discrete").count(),
        2,
        "{models:#?}"
    );
    // Accepting the new value: it is known from now on.
    d.accept(&value.id).unwrap();
    let mut more = Vec::new();
    valve_rows(
        &mut more,
        &mut t,
        30,
        |i| [0.0, 2.0][i % 2],
        4.0,
        &mut noise,
    );
    let later = run(&mut d, &more, 200, events.len() as u64);
    // 0 -> 2 and 2 -> 0 are transitions never seen: one more episode.
    assert_eq!(later.len(), 1, "{later:#?}");
    assert!(
        later[0].message.contains("transition"),
        "{}",
        later[0].message
    );
}

fn op(ts: i64, asset: &str, peer: &str, name: &str) -> ControllerEvent {
    let mut e = ev(ts, asset, EventKind::Access, name, None, None);
    e.attrs.insert("peer".into(), peer.into());
    e
}

#[test]
fn a_known_reader_writing_alerts_once_per_asset_and_peer() {
    let config = DetectorConfig {
        learn: std::time::Duration::from_secs(1800),
        ..DetectorConfig::default()
    };
    let master = "10.0.0.1";
    let rtus = ["rtu-1", "rtu-2", "rtu-3"];
    let mut events = Vec::new();
    // Learning: the master polls every RTU every 10 s and writes a coil of rtu-3.
    let mut t = T0;
    for i in 0..360 {
        t += 10 * SEC;
        for (k, rtu) in rtus.iter().enumerate() {
            events.push(op(
                t + k as i64 * MIN / 60,
                rtu,
                master,
                "read_holding_registers",
            ));
        }
        if i % 60 == 0 {
            events.push(op(t + SEC / 2, "rtu-3", master, "write_single_coil"));
        }
    }
    let protect = events.len();
    // Protecting: the same, then the master writes rtu-1 (which it only
    // ever read) again and again, then rtu-2, and a parameter on rtu-3.
    for i in 0..120 {
        t += 10 * SEC;
        for (k, rtu) in rtus.iter().enumerate() {
            events.push(op(
                t + k as i64 * MIN / 60,
                rtu,
                master,
                "read_holding_registers",
            ));
        }
        if (30..40).contains(&i) {
            events.push(op(t + SEC / 2, "rtu-1", master, "write_single_coil"));
        }
        if i == 50 {
            events.push(op(t + SEC / 2, "rtu-2", master, "write_multiple_registers"));
        }
        if i == 60 {
            events.push(op(t + SEC / 2, "rtu-3", master, "write_setpoint_param"));
        }
        if i == 70 {
            events.push(op(
                t + SEC / 2,
                "rtu-2",
                "10.0.0.99",
                "read_holding_registers",
            ));
        }
    }
    let events = merged(events);
    let mut d = Detector::new(config).unwrap();
    let alerts = run(&mut d, &events, 256, 0);
    let summary: Vec<(&str, &str, &str)> = alerts
        .iter()
        .map(|a| (a.asset.as_str(), a.name.as_str(), a.technique.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("rtu-1", master, "T0855"),
            ("rtu-2", master, "T0855"),
            ("rtu-3", "10.0.0.99", "T0846"),
        ]
        .into_iter()
        .filter(|_| false)
        .chain([
            ("rtu-1", master, "T0855"),
            ("rtu-2", master, "T0855"),
            ("rtu-3", master, "T0836"),
            ("rtu-2", "10.0.0.99", "T0846"),
        ])
        .collect::<Vec<_>>(),
        "{alerts:#?}"
    );
    assert!(alerts.iter().all(|a| a.first_seq as usize > protect));
    assert!(
        alerts[0].message.contains("never wrote to this asset")
            && alerts[0].message.contains("read_holding_registers"),
        "{}",
        alerts[0].message
    );
    assert!(
        alerts[3].message.contains("unknown peer"),
        "{}",
        alerts[3].message
    );
    // Accepted, the master may write rtu-1's coils.
    d.accept(&alerts[0].id).unwrap();
    let later = run(
        &mut d,
        &[op(t + 5 * SEC, "rtu-1", master, "write_single_coil")],
        1,
        events.len() as u64,
    );
    assert!(later.is_empty(), "{later:#?}");
}

#[test]
fn series_do_not_learn_past_their_window() {
    // A tag sampled every 5 minutes: 6 values in a 30-minute window, fewer
    // than min_series_points. It is not scored, and later values are not
    // learned: a wild one raises nothing from the sample model.
    let mut events = Vec::new();
    let mut m = Machine::new("line1/press-01", 51);
    let mut t = T0;
    for i in 0..120 {
        m.cycles(&mut events, 5);
        t = t.max(m.t);
        let value = if i == 100 {
            500.0
        } else {
            20.0 + 0.1 * (i % 3) as f64
        };
        if i % 25 == 0 || i == 100 {
            events.push(ev(
                m.t,
                "line1/press-01",
                EventKind::Sample,
                "oil_level",
                Some(value),
                None,
            ));
        }
    }
    let mut d = Detector::new(DetectorConfig::default()).unwrap();
    let alerts = without_process(run(&mut d, &events, 128, 0));
    assert!(alerts.is_empty(), "{alerts:#?}");
    let report = d.report(None, Some("line1/press-01")).unwrap();
    let oil = report[0]
        .models
        .iter()
        .find(|m| m.name == "oil_level")
        .unwrap();
    assert_eq!(oil.state, "not scored", "{oil:?}");
    assert!(
        oil.baseline.contains("fewer than min_series_points"),
        "{}",
        oil.baseline
    );
    let _ = t;
}

#[test]
fn relearning_forgets_an_asset_and_learns_it_again_from_now_or_from_history() {
    let (mut p, mut events, config) = slow_plant(33);
    p.rows(&mut events, 60, 0.0, 4.0);
    let mut d = Detector::new(config.clone()).unwrap();
    let alerts = run(&mut d, &events, 64, 0);
    let alert = alerts
        .iter()
        .find(|a| a.detector == "process")
        .unwrap()
        .clone();
    assert!(d
        .relearn("plant-2", None, None)
        .unwrap_err()
        .to_string()
        .contains("site \"plant-2\""));
    assert!(d.relearn("plant-1", Some("nope"), None).is_err());

    // From now: the asset learns the new level for `learn`, then protects.
    let mut from_now = restarted(&d);
    assert_eq!(
        from_now.relearn("plant-1", None, None).unwrap(),
        vec!["line3/pump-01"]
    );
    assert!(!from_now.knows_alert(&alert.id));
    let report = from_now.report(Some("plant-1"), None).unwrap();
    assert_eq!(report[0].state, "learning");
    let mut more = Vec::new();
    p.rows(&mut more, 200, 0.0, 4.0);
    let seq = events.len() as u64;
    assert!(run(&mut from_now, &more, 64, seq).is_empty());
    assert_eq!(from_now.report(None, None).unwrap()[0].state, "protecting");

    // From history: the first two hours (the learning window again) are
    // fed back with `until` at their end; the asset protects from its next
    // live event, and the held level is still a deviation.
    let mut from_history = restarted(&d);
    let until = events[130 * 4 - 1].ts_ns + 1;
    from_history
        .relearn("plant-1", Some("line3/pump-01"), Some(until))
        .unwrap();
    run(&mut from_history, &events[..130 * 4], 64, 0);
    from_history.end_relearn("plant-1", None).unwrap();
    let live = run(&mut from_history, &more, 64, seq);
    assert_eq!(
        live.iter().filter(|a| a.detector == "process").count(),
        1,
        "{live:#?}"
    );
    assert!(
        live.iter()
            .all(|a| a.ts_ns > until && a.detector != "cadence"),
        "{live:#?}"
    );
}

#[test]
fn a_checkpoint_of_the_previous_version_reads_back_and_goes_on() {
    let (mut p, mut events, config) = slow_plant(34);
    events.push(access(p.t, "line3/pump-01", "10.1.1.20"));
    let mut d = Detector::new(config).unwrap();
    run(&mut d, &events, 64, 0);
    // What the previous version wrote: no version, the options it had,
    // a site-wide access model.
    let mut json: serde_json::Value = serde_json::to_value(&d).unwrap();
    json.as_object_mut().unwrap().remove("version");
    json.as_object_mut().unwrap().remove("alerts");
    let c = json["config"].as_object_mut().unwrap();
    c.insert("process_smoothing".into(), 0.1.into());
    c.insert("process_adapt".into(), "5m".into());
    c.insert("process_rebaseline_after".into(), "10m".into());
    for site in json["sites"].as_array_mut().unwrap() {
        let site = site.as_object_mut().unwrap();
        for key in ["access", "access_version", "access_learn_until", "peer_ops"] {
            site.remove(key);
        }
    }
    let mut old: Detector = serde_json::from_value(json).unwrap();
    // An option whose type changed takes its default.
    assert_eq!(
        old.config().process_smoothing,
        std::time::Duration::from_secs(10)
    );
    // The access model learns per (asset, peer, operation) from its next
    // event: the HMI's logins right after the upgrade are learned, a new
    // peer after that window is an alert.
    let mut more = Vec::new();
    p.rows(&mut more, 10, 0.0, 0.0);
    more.push(access(p.t, "line3/pump-01", "10.1.1.20"));
    p.rows(&mut more, 200, 0.0, 0.0);
    more.push(access(p.t, "line3/pump-01", "10.1.66.6"));
    let more = merged(more);
    let alerts = run(&mut old, &more, 64, events.len() as u64);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].name, "10.1.66.6");
}
