//! The `sim` source: a simulated factory site with a labelled attack schedule.
//!
//! [`SimSite`] produces the [`ControllerEvent`]s of one site's machines in
//! event time. It is pure: no I/O, no clock, no threads. The caller decides how
//! fast simulated time runs by calling [`SimSite::advance`] with the time it
//! wants events up to; the same seed, site, config and start time always give
//! the same events, however `advance` is sliced.
//!
//! What a site does:
//! - each asset (press, robot, CNC) runs its own machine cycle (mean 8–20 s,
//!   about 2 % coefficient of variation) and, with every cycle, samples three
//!   tags: `motor_current_a` and `temperature_c` (linear in the cycle duration
//!   plus small noise) and `supply_voltage_v` (independent of the cycle);
//! - STATE events: RUN at start, then a planned stop about every 40 minutes
//!   per asset (MAINT, STOP one minute later, RUN a few minutes after that),
//!   the first one inside the learning window so that a detector learns the
//!   planned transitions; no cycles while an asset is not in RUN;
//! - ACCESS events: an operator logging in from the site's HMI every few
//!   minutes.
//!
//! The attack schedule ([`SCENARIOS`]): seven labelled scenarios for the whole
//! deployment, dealt round-robin over `site_count` sites (scenario `k` is
//! played by site `k % site_count`), the first starting three minutes after
//! the learning window, one every seven minutes. [`SimSite::scenarios`] gives
//! the ground truth of those this site plays, for scoring a detector.

use otwatch_proto::{ControllerEvent, EventKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

const NS_PER_SEC: i64 = 1_000_000_000;
const NS_PER_MIN: i64 = 60 * NS_PER_SEC;

/// Cycle-to-cycle coefficient of variation of normal operation.
const CYCLE_CV: f64 = 0.02;
/// Standard deviation of `motor_current_a` around its line, in A.
const CURRENT_NOISE: f64 = 0.05;
/// Standard deviation of `temperature_c` around its line, in °C.
const TEMPERATURE_NOISE: f64 = 0.04;
/// Standard deviation of `supply_voltage_v`, in V.
const VOLTAGE_NOISE: f64 = 0.8;

/// Mean spacing of planned stops of one asset.
const PLANNED_STOP_PERIOD: i64 = 40 * NS_PER_MIN;
/// Planned stops wander this much either side of their nominal time.
const PLANNED_STOP_JITTER: i64 = 3 * NS_PER_MIN;
/// MAINT is announced this long before the asset goes to STOP.
const MAINT_LEAD: i64 = NS_PER_MIN;
/// A planned stop keeps a scenario's asset this far clear of the scenario, so
/// the scenario plays on a running machine and its detection is not confused
/// with maintenance.
const STOP_CLEARANCE: i64 = 3 * NS_PER_MIN;

/// The first scenario starts this long after the learning window.
const SCENARIO_LEAD: i64 = 3 * NS_PER_MIN;
/// Spacing of consecutive scenarios of the schedule.
const SCENARIO_SPACING: i64 = 7 * NS_PER_MIN;
/// Each scenario starts up to this much after its slot, so starts look less
/// mechanical while staying in order and distinct.
const SCENARIO_JITTER: i64 = 40 * NS_PER_SEC;

/// Cycle duration growth per cycle during `cycle_drift` (setpoint creep).
const DRIFT_PER_CYCLE: f64 = 0.005;
const DRIFT_DURATION: i64 = 6 * NS_PER_MIN;
const SILENCE_DURATION: i64 = 5 * NS_PER_MIN;
const POLLING_DURATION: i64 = 30 * NS_PER_SEC;
const RELATIONSHIP_DURATION: i64 = 4 * NS_PER_MIN;
/// Shift of `motor_current_a` during `tag_relationship`, in noise standard deviations.
const RELATIONSHIP_SHIFT: f64 = 5.0;

/// Names of the scheduled scenarios, in schedule order, with their MITRE
/// ATT&CK for ICS technique.
pub const SCENARIOS: [(&str, &str); 7] = [
    ("cycle_drift", "T0836"),
    ("extreme_cycle", "T0836"),
    ("unplanned_stop", "T0858"),
    ("program_download", "T0843"),
    ("controller_silence", "T0814"),
    ("polling_burst", "T0846"),
    ("tag_relationship", "T0832"),
];

/// The `[source.sim]` section of the agent config: a simulated site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of the random generator; the same seed gives the same events.
    pub seed: u64,
    /// Number of assets (machines) at this site, named `line1/press-01`,
    /// `line1/press-02`, `line2/robot-01`, `line2/cnc-01`, `line3/press-03`, ...
    pub assets: usize,
    /// How long the detector is expected to learn: no scenario starts before
    /// start + learn + 3 min, and each asset's first planned stop falls inside
    /// it (from about 10 minutes of learning on; a planned stop takes up to 6).
    #[serde(with = "humantime_serde")]
    pub learn: Duration,
    /// Play the attack scenarios; `false` gives normal operation only.
    pub scenarios: bool,
    /// This site's position among the `site_count` simulated sites; scenario
    /// `k` of the schedule is played by the site with index `k % site_count`.
    pub site_index: usize,
    /// How many simulated sites share the scenario schedule.
    pub site_count: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 7,
            assets: 4,
            learn: Duration::from_secs(30 * 60),
            scenarios: true,
            site_index: 0,
            site_count: 1,
        }
    }
}

impl SimConfig {
    /// Checks the values that [`SimSite::new`] would otherwise have to correct.
    pub fn validate(&self) -> Result<(), String> {
        if self.assets == 0 {
            return Err("sim: assets must be at least 1".into());
        }
        if self.site_count == 0 {
            return Err("sim: site_count must be at least 1".into());
        }
        if self.site_index >= self.site_count {
            return Err(format!(
                "sim: site_index {} must be below site_count {}",
                self.site_index, self.site_count
            ));
        }
        Ok(())
    }
}

/// Ground truth of one labelled scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioTruth {
    /// Scenario name, one of [`SCENARIOS`].
    pub name: String,
    pub site: String,
    pub asset: String,
    /// When the abnormal behaviour starts (ns since the epoch).
    pub start_ns: i64,
    /// When it is over at the latest (ns since the epoch).
    pub end_ns: i64,
    /// MITRE ATT&CK for ICS technique the scenario stands for.
    pub technique: String,
}

/// One simulated site; see the module documentation.
pub struct SimSite {
    machines: Vec<Machine>,
    hmi: Hmi,
    truth: Vec<ScenarioTruth>,
}

impl SimSite {
    /// A site named `site` whose simulated time starts at `start_ns`.
    /// Out-of-range config values are clamped (at least one asset and one
    /// site, `site_index` modulo `site_count`); [`SimConfig::validate`] reports them.
    pub fn new(site: &str, config: &SimConfig, start_ns: i64) -> Self {
        let assets = config.assets.max(1);
        let site_count = config.site_count.max(1);
        let site_index = config.site_index % site_count;
        let learn = i64::try_from(config.learn.as_nanos()).unwrap_or(i64::MAX / 4);
        // One ChaCha stream per purpose: the schedule (shared by all sites, so
        // every site agrees on it), the site's own choices, each machine and
        // the HMI. Streams are independent, so how events interleave never
        // changes what any one of them draws.
        let stream = |id: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(id);
            rng
        };
        let site_stream = |id: u64| stream(((site_index as u64 + 1) << 20) | id);
        let mut schedule_rng = stream(0);
        let mut site_rng = site_stream(0);

        let names = asset_names(assets);
        let octet = site_index % 250 + 1;
        let mut effects: Vec<Vec<Effect>> = vec![Vec::new(); assets];
        let mut agenda: Vec<Vec<(i64, Action)>> = vec![Vec::new(); assets];
        let mut truth = Vec::new();
        let asset_offset = site_rng.random_range(0..assets);
        let mut played = 0usize;
        for (k, (name, technique)) in SCENARIOS.iter().enumerate() {
            // Draw every slot's jitter on every site so the schedule is shared.
            let jitter = schedule_rng.random_range(0..SCENARIO_JITTER);
            if !config.scenarios || k % site_count != site_index {
                continue;
            }
            let start = start_ns + learn + SCENARIO_LEAD + k as i64 * SCENARIO_SPACING + jitter;
            // Consecutive scenarios of a site go to different assets, so one
            // scenario's detection episode never swallows the next one's.
            let a = (asset_offset + played) % assets;
            played += 1;
            let end = plan_scenario(
                k,
                start,
                octet,
                &mut site_rng,
                &mut effects[a],
                &mut agenda[a],
            );
            truth.push(ScenarioTruth {
                name: name.to_string(),
                site: site.to_string(),
                asset: names[a].clone(),
                start_ns: start,
                end_ns: end,
                technique: technique.to_string(),
            });
        }

        let machines = names
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let mut rng = site_stream(1 + j as u64);
                let profile = Profile::draw(&mut rng);
                // Spread the first planned stops over the learning window so
                // that each ends (MAINT lead + at most 5 min stopped, 6 min in
                // all) with a minute to spare inside it, when it is long enough.
                let earliest = learn / 10;
                let latest = (learn - 7 * NS_PER_MIN).max(earliest);
                let first_stop = start_ns
                    + earliest
                    + if assets > 1 {
                        (latest - earliest) * j as i64 / (assets as i64 - 1)
                    } else {
                        0
                    };
                let mut scenario_actions = std::mem::take(&mut agenda[j]);
                scenario_actions.sort_by_key(|(t, _)| *t);
                let initial = start_ns + j as i64 * 250_000_000;
                let mut machine = Machine {
                    name: name.clone(),
                    rng,
                    profile,
                    cycle: None,
                    agenda: VecDeque::new(),
                    effects: std::mem::take(&mut effects[j]),
                    drift_cycles: 0,
                    extreme_left: HashMap::new(),
                    busy: truth
                        .iter()
                        .filter(|t: &&ScenarioTruth| t.asset == *name)
                        .map(|t| (t.start_ns, t.end_ns))
                        .collect(),
                };
                machine.insert(
                    initial,
                    Action::State {
                        mode: "RUN",
                        planned: false,
                    },
                );
                for (t, action) in scenario_actions {
                    machine.insert(t, action);
                }
                machine.schedule_planned_stop(first_stop);
                machine
            })
            .collect::<Vec<_>>();
        let silences = machines
            .iter()
            .map(|m| {
                m.effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Silence { start, end } => Some((*start, *end)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let mut hmi_rng = site_stream(0xFFFF);
        let first_login = start_ns + hmi_rng.random_range(30 * NS_PER_SEC..2 * NS_PER_MIN);
        let hmi = Hmi {
            rng: hmi_rng,
            next: first_login,
            peer: format!("10.{octet}.1.20"),
            assets: names,
            silences,
        };
        SimSite {
            machines,
            hmi,
            truth,
        }
    }

    /// Appends to `out`, in timestamp order, every event with `ts_ns <= until_ns`
    /// not yet produced. Events have `seq = 0` and empty site and agent: the
    /// agent fills those.
    pub fn advance(&mut self, until_ns: i64, out: &mut Vec<ControllerEvent>) {
        loop {
            // Earliest next event; ties go to the lower machine index, then the HMI.
            let mut best: Option<(i64, usize)> = None;
            for (i, m) in self.machines.iter().enumerate() {
                let t = m.next_ts();
                if best.is_none_or(|(bt, _)| t < bt) {
                    best = Some((t, i));
                }
            }
            let hmi_next = self.hmi.next;
            match best {
                Some((t, i)) if t <= until_ns && t <= hmi_next => self.machines[i].step(out),
                _ if hmi_next <= until_ns => self.hmi.step(out),
                _ => return,
            }
        }
    }

    /// Ground truth of the labelled scenarios this site will play.
    pub fn scenarios(&self) -> &[ScenarioTruth] {
        &self.truth
    }

    /// Names of this site's assets, in index order.
    pub fn assets(&self) -> Vec<&str> {
        self.machines.iter().map(|m| m.name.as_str()).collect()
    }
}

/// Sets up scenario `k` of [`SCENARIOS`] on one machine (its `effects` and
/// timed `agenda`), starting at `start`; returns when it is over at the latest.
fn plan_scenario(
    k: usize,
    start: i64,
    octet: usize,
    rng: &mut ChaCha8Rng,
    effects: &mut Vec<Effect>,
    agenda: &mut Vec<(i64, Action)>,
) -> i64 {
    let state = |mode| Action::State {
        mode,
        planned: false,
    };
    match k {
        0 => {
            let end = start + DRIFT_DURATION;
            effects.push(Effect::Drift { start, end });
            end
        }
        1 => {
            let count = rng.random_range(1..=2u32);
            effects.push(Effect::Extreme { start, count });
            // The cycle under way at `start` ends normally, then `count`
            // cycles of at most 3.2x the longest normal cycle.
            let longest = MAX_CYCLE_MS * 1.1 * 1e6;
            start + ((1.0 + 3.2 * f64::from(count)) * longest) as i64
        }
        2 => {
            let end = start + rng.random_range(3 * NS_PER_MIN..4 * NS_PER_MIN);
            agenda.push((start, state("STOP")));
            agenda.push((end, state("RUN")));
            end
        }
        3 => {
            let text = format!("{:08x}", rng.random::<u32>());
            agenda.push((
                start,
                Action::Change {
                    name: "program",
                    text,
                },
            ));
            start
        }
        4 => {
            let end = start + SILENCE_DURATION;
            effects.push(Effect::Silence { start, end });
            end
        }
        5 => {
            let peer = format!("10.{octet}.66.{}", rng.random_range(10..250));
            let mut t = start;
            while t < start + POLLING_DURATION {
                let peer = peer.clone();
                agenda.push((
                    t,
                    Action::Access {
                        name: "connect",
                        peer,
                    },
                ));
                t += rng.random_range(100_000_000..250_000_000);
            }
            t
        }
        _ => {
            let end = start + RELATIONSHIP_DURATION;
            effects.push(Effect::Relationship { start, end });
            end
        }
    }
}

/// `line1/press-01`, `line1/press-02`, `line2/robot-01`, `line2/cnc-01`, then
/// the same pattern on further lines with running type numbers.
fn asset_names(n: usize) -> Vec<String> {
    const TYPES: [&str; 4] = ["press", "press", "robot", "cnc"];
    let mut counts = HashMap::new();
    (0..n)
        .map(|j| {
            let kind = TYPES[j % 4];
            let c = counts.entry(kind).or_insert(0u32);
            *c += 1;
            format!("line{}/{kind}-{:02}", j / 2 + 1, *c)
        })
        .collect()
}

const MIN_CYCLE_MS: f64 = 8_000.0;
const MAX_CYCLE_MS: f64 = 20_000.0;

/// The normal behaviour of one asset.
#[derive(Debug, Clone)]
struct Profile {
    cycle_ms: f64,
    /// `motor_current_a = current_a + current_b * cycle seconds + noise`.
    current_a: f64,
    current_b: f64,
    /// `temperature_c = temperature_a + temperature_b * cycle seconds + noise`.
    temperature_a: f64,
    temperature_b: f64,
    voltage: f64,
}

impl Profile {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        Profile {
            cycle_ms: rng.random_range(MIN_CYCLE_MS..MAX_CYCLE_MS).round(),
            current_a: rng.random_range(3.0..8.0),
            current_b: rng.random_range(0.6..1.0),
            temperature_a: rng.random_range(30.0..45.0),
            temperature_b: rng.random_range(0.4..0.7),
            voltage: rng.random_range(226.0..234.0),
        }
    }
}

/// Something a scenario does to a machine's cycles or output over a window.
#[derive(Debug, Clone)]
enum Effect {
    /// Every cycle starting in the window is `DRIFT_PER_CYCLE` longer than the previous one.
    Drift { start: i64, end: i64 },
    /// The first `count` cycles starting at or after `start` last about 3x normal.
    Extreme { start: i64, count: u32 },
    /// `motor_current_a` sits `RELATIONSHIP_SHIFT` noise deviations above its line.
    Relationship { start: i64, end: i64 },
    /// The machine's events are lost (it keeps cycling, nobody hears it).
    Silence { start: i64, end: i64 },
}

/// A timed, discrete thing a machine does.
#[derive(Debug, Clone)]
enum Action {
    /// Operating mode change; `planned` marks the MAINT that opens a planned stop.
    State {
        mode: &'static str,
        planned: bool,
    },
    Change {
        name: &'static str,
        text: String,
    },
    /// A connection from `peer` (the scanner of `polling_burst`: no user).
    Access {
        name: &'static str,
        peer: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Cycle {
    end: i64,
    duration_ms: f64,
}

struct Machine {
    name: String,
    rng: ChaCha8Rng,
    profile: Profile,
    /// The cycle under way; `None` while the machine is not in RUN.
    cycle: Option<Cycle>,
    /// Timed actions, in time order.
    agenda: VecDeque<(i64, Action)>,
    effects: Vec<Effect>,
    /// Cycles started so far inside a drift window.
    drift_cycles: u32,
    /// Extreme cycles still to play, per `Effect::Extreme` index.
    extreme_left: HashMap<usize, u32>,
    /// Windows of the scenarios this machine plays; planned stops keep clear of them.
    busy: Vec<(i64, i64)>,
}

impl Machine {
    fn insert(&mut self, t: i64, action: Action) {
        let at = self.agenda.partition_point(|(u, _)| *u <= t);
        self.agenda.insert(at, (t, action));
    }

    fn next_ts(&self) -> i64 {
        let agenda = self.agenda.front().map_or(i64::MAX, |(t, _)| *t);
        let cycle = self.cycle.map_or(i64::MAX, |c| c.end);
        agenda.min(cycle)
    }

    fn silenced(&self, t: i64) -> bool {
        self.effects
            .iter()
            .any(|e| matches!(e, Effect::Silence { start, end } if (*start..*end).contains(&t)))
    }

    /// Plans a stop (MAINT, STOP, RUN) near `nominal`, moved later while it
    /// would come near one of this machine's scenarios.
    fn schedule_planned_stop(&mut self, nominal: i64) {
        let stopped = self.rng.random_range(3 * NS_PER_MIN..5 * NS_PER_MIN);
        let length = MAINT_LEAD + stopped;
        let mut begin = nominal;
        while let Some(after) = self
            .busy
            .iter()
            .filter(|(s, e)| begin < e + STOP_CLEARANCE && s - STOP_CLEARANCE < begin + length)
            .map(|(_, e)| e + STOP_CLEARANCE)
            .max()
        {
            begin = after;
        }
        self.insert(
            begin,
            Action::State {
                mode: "MAINT",
                planned: true,
            },
        );
        self.insert(
            begin + MAINT_LEAD,
            Action::State {
                mode: "STOP",
                planned: false,
            },
        );
        self.insert(
            begin + length,
            Action::State {
                mode: "RUN",
                planned: false,
            },
        );
    }

    fn start_cycle(&mut self, start: i64) {
        let noise: f64 = StandardNormal.sample(&mut self.rng);
        let mut duration = self.profile.cycle_ms * (1.0 + CYCLE_CV * noise);
        for (i, effect) in self.effects.iter().enumerate() {
            match *effect {
                Effect::Drift { start: s, end } if (s..end).contains(&start) => {
                    self.drift_cycles += 1;
                    duration *= (1.0 + DRIFT_PER_CYCLE).powi(self.drift_cycles as i32);
                }
                Effect::Extreme { start: s, count } if start >= s => {
                    let left = self.extreme_left.entry(i).or_insert(count);
                    if *left > 0 {
                        *left -= 1;
                        duration *= self.rng.random_range(2.8..3.2);
                    }
                }
                _ => {}
            }
        }
        let duration_ms = duration.round().max(1.0);
        self.cycle = Some(Cycle {
            end: start + (duration_ms * 1e6) as i64,
            duration_ms,
        });
    }

    fn step(&mut self, out: &mut Vec<ControllerEvent>) {
        let agenda_next = self.agenda.front().map_or(i64::MAX, |(t, _)| *t);
        match self.cycle {
            Some(cycle) if cycle.end < agenda_next => self.finish_cycle(cycle, out),
            _ => {
                let Some((t, action)) = self.agenda.pop_front() else {
                    return;
                };
                self.apply(t, action, out);
            }
        }
    }

    fn finish_cycle(&mut self, cycle: Cycle, out: &mut Vec<ControllerEvent>) {
        let t = cycle.end;
        let seconds = cycle.duration_ms / 1000.0;
        let n1: f64 = StandardNormal.sample(&mut self.rng);
        let n2: f64 = StandardNormal.sample(&mut self.rng);
        let n3: f64 = StandardNormal.sample(&mut self.rng);
        let p = &self.profile;
        let shift = if self.effects.iter().any(
            |e| matches!(e, Effect::Relationship { start, end } if (*start..*end).contains(&t)),
        ) {
            RELATIONSHIP_SHIFT * CURRENT_NOISE
        } else {
            0.0
        };
        let current = p.current_a + p.current_b * seconds + CURRENT_NOISE * n1 + shift;
        let temperature = p.temperature_a + p.temperature_b * seconds + TEMPERATURE_NOISE * n2;
        let voltage = p.voltage + VOLTAGE_NOISE * n3;
        if !self.silenced(t) {
            out.push(event(
                t,
                &self.name,
                EventKind::Cycle,
                "cycle",
                Some(cycle.duration_ms),
                None,
            ));
            for (tag, value, decimals) in [
                ("motor_current_a", current, 1e3),
                ("temperature_c", temperature, 1e2),
                ("supply_voltage_v", voltage, 1e1),
            ] {
                let value = (value * decimals).round() / decimals;
                out.push(event(
                    t,
                    &self.name,
                    EventKind::Sample,
                    tag,
                    Some(value),
                    None,
                ));
            }
        }
        self.start_cycle(t);
    }

    fn apply(&mut self, t: i64, action: Action, out: &mut Vec<ControllerEvent>) {
        let e = match action {
            Action::State { mode, planned } => {
                if mode == "RUN" {
                    self.start_cycle(t);
                } else {
                    // The cycle under way is abandoned: no cycles while stopped.
                    self.cycle = None;
                }
                if planned {
                    let jitter = self
                        .rng
                        .random_range(-PLANNED_STOP_JITTER..PLANNED_STOP_JITTER);
                    self.schedule_planned_stop(t + PLANNED_STOP_PERIOD + jitter);
                }
                event(
                    t,
                    &self.name,
                    EventKind::State,
                    "mode",
                    None,
                    Some(mode.to_string()),
                )
            }
            Action::Change { name, text } => {
                event(t, &self.name, EventKind::Change, name, None, Some(text))
            }
            Action::Access { name, peer } => {
                let mut e = event(t, &self.name, EventKind::Access, name, None, None);
                e.attrs.insert("peer".into(), peer);
                e
            }
        };
        if !self.silenced(t) {
            out.push(e);
        }
    }
}

/// The operator HMI: logs in to a random asset every two to four minutes.
struct Hmi {
    rng: ChaCha8Rng,
    next: i64,
    peer: String,
    assets: Vec<String>,
    /// Per asset, the windows in which the asset is silenced (nothing is heard from it).
    silences: Vec<Vec<(i64, i64)>>,
}

impl Hmi {
    fn step(&mut self, out: &mut Vec<ControllerEvent>) {
        let t = self.next;
        let first = self.rng.random_range(0..self.assets.len());
        // A silenced asset does not answer; the operator uses another one.
        let target = (0..self.assets.len())
            .map(|i| (first + i) % self.assets.len())
            .find(|&a| !self.silences[a].iter().any(|(s, e)| (*s..*e).contains(&t)));
        if let Some(a) = target {
            let mut e = event(t, &self.assets[a], EventKind::Access, "login", None, None);
            e.attrs.insert("peer".into(), self.peer.clone());
            e.attrs.insert("user".into(), "operator".into());
            out.push(e);
        }
        self.next = t + self.rng.random_range(2 * NS_PER_MIN..4 * NS_PER_MIN);
    }
}

fn event(
    ts_ns: i64,
    asset: &str,
    kind: EventKind,
    name: &str,
    value: Option<f64>,
    text: Option<String>,
) -> ControllerEvent {
    ControllerEvent {
        site: String::new(),
        agent: String::new(),
        seq: 0,
        ts_ns,
        asset: asset.to_string(),
        kind: kind as i32,
        name: name.to_string(),
        value,
        text,
        attrs: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_750_000_000_000_000_000;
    const MIN: i64 = NS_PER_MIN;

    fn run(
        config: &SimConfig,
        site: &str,
        minutes: i64,
        step: i64,
    ) -> (Vec<ControllerEvent>, Vec<ScenarioTruth>) {
        let mut sim = SimSite::new(site, config, START);
        let mut out = Vec::new();
        let end = START + minutes * MIN;
        let mut t = START;
        while t < end {
            t = (t + step).min(end);
            sim.advance(t, &mut out);
        }
        (out, sim.scenarios().to_vec())
    }

    #[test]
    fn same_inputs_give_same_events_however_advance_is_sliced() {
        let config = SimConfig::default();
        let (a, ta) = run(&config, "plant-1", 90, 7 * NS_PER_SEC);
        let (b, tb) = run(&config, "plant-1", 90, 61 * NS_PER_SEC + 3);
        assert!(a.len() > 1000);
        assert_eq!(a.len(), b.len());
        // Compared one by one: a failure names the first difference, not two
        // vectors of thousands of events.
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y);
        }
        assert_eq!(ta, tb);
        let other = SimConfig { seed: 8, ..config };
        let (c, _) = run(&other, "plant-1", 90, 7 * NS_PER_SEC);
        assert!(a.iter().zip(&c).any(|(x, y)| x != y));
    }

    #[test]
    fn events_come_in_timestamp_order_and_up_to_the_limit() {
        let config = SimConfig::default();
        let mut sim = SimSite::new("plant-1", &config, START);
        let mut out = Vec::new();
        let mut last = i64::MIN;
        for minute in 1..=90 {
            let until = START + minute * MIN;
            let from = out.len();
            sim.advance(until, &mut out);
            for e in &out[from..] {
                assert!(
                    e.ts_ns >= last && e.ts_ns <= until,
                    "out of order at {}",
                    e.ts_ns
                );
                assert_eq!((e.seq, e.site.as_str(), e.agent.as_str()), (0, "", ""));
                last = e.ts_ns;
            }
        }
    }

    #[test]
    fn normal_operation_has_cycles_samples_states_and_logins() {
        let (events, truth) = run(&SimConfig::default(), "plant-1", 90, MIN);
        assert_eq!(truth.len(), 7);
        let count = |k: EventKind| events.iter().filter(|e| e.kind() == k).count();
        // 4 assets, cycles of 8–20 s over 90 minutes, minus stops.
        assert!(
            count(EventKind::Cycle) > 4 * 200,
            "{}",
            count(EventKind::Cycle)
        );
        assert_eq!(count(EventKind::Sample), 3 * count(EventKind::Cycle));
        assert!(count(EventKind::Access) > 20);
        let modes: Vec<_> = events
            .iter()
            .filter(|e| e.kind() == EventKind::State && e.asset == "line1/press-01")
            .map(|e| (e.ts_ns, e.text.clone().unwrap()))
            .collect();
        assert_eq!(modes[0].1, "RUN");
        // The first planned stop is over before learning ends.
        let maint = modes.iter().position(|(_, m)| m == "MAINT").unwrap();
        assert_eq!(modes[maint + 1].1, "STOP");
        assert_eq!(modes[maint + 2].1, "RUN");
        assert!(modes[maint + 2].0 < START + 30 * MIN);
        // No cycles between a STOP and the next RUN.
        let stop = modes[maint + 1].0;
        let resume = modes[maint + 2].0;
        assert!(!events.iter().any(|e| e.asset == "line1/press-01"
            && e.kind() == EventKind::Cycle
            && e.ts_ns > stop
            && e.ts_ns < resume));
    }

    #[test]
    fn scenarios_are_spread_over_sites_inside_the_window_at_distinct_times() {
        let mut all = Vec::new();
        for site_index in 0..3 {
            let config = SimConfig {
                site_index,
                site_count: 3,
                ..SimConfig::default()
            };
            let site = format!("plant-{}", site_index + 1);
            let sim = SimSite::new(&site, &config, START);
            for (j, t) in sim.scenarios().iter().enumerate() {
                let k = SCENARIOS.iter().position(|(n, _)| *n == t.name).unwrap();
                assert_eq!(k % 3, site_index);
                assert_eq!(t.site, site);
                assert!(sim.assets().contains(&t.asset.as_str()));
                if j > 0 {
                    assert_ne!(t.asset, sim.scenarios()[j - 1].asset);
                }
            }
            all.extend(sim.scenarios().to_vec());
        }
        assert_eq!(all.len(), 7);
        all.sort_by_key(|t| t.start_ns);
        for (k, t) in all.iter().enumerate() {
            assert_eq!(t.name, SCENARIOS[k].0);
            assert_eq!(t.technique, SCENARIOS[k].1);
            assert!(t.start_ns >= START + 33 * MIN);
            assert!(
                t.end_ns >= t.start_ns && t.end_ns < START + 85 * MIN,
                "{t:?}"
            );
        }
        for pair in all.windows(2) {
            assert!(pair[0].start_ns < pair[1].start_ns);
        }
    }

    #[test]
    fn scenario_events_show_up_where_the_truth_says() {
        let (events, truth) = run(&SimConfig::default(), "plant-1", 90, MIN);
        let at = |name: &str| truth.iter().find(|t| t.name == name).unwrap();
        let download = at("program_download");
        assert!(events.iter().any(|e| e.kind() == EventKind::Change
            && e.asset == download.asset
            && e.ts_ns == download.start_ns));
        let polling = at("polling_burst");
        let burst = events
            .iter()
            .filter(|e| e.kind() == EventKind::Access && e.name == "connect")
            .filter(|e| (polling.start_ns..=polling.end_ns).contains(&e.ts_ns))
            .count();
        assert!(burst > 100, "{burst}");
        let silence = at("controller_silence");
        assert!(!events
            .iter()
            .any(|e| e.asset == silence.asset
                && (silence.start_ns..silence.end_ns).contains(&e.ts_ns)));
        let stop = at("unplanned_stop");
        let modes: Vec<_> = events
            .iter()
            .filter(|e| e.asset == stop.asset && e.kind() == EventKind::State)
            .filter(|e| e.ts_ns >= stop.start_ns && e.ts_ns <= stop.end_ns)
            .map(|e| e.text.clone().unwrap())
            .collect();
        assert_eq!(modes, ["STOP", "RUN"]);
        let extreme = at("extreme_cycle");
        let cycles: Vec<f64> = events
            .iter()
            .filter(|e| e.asset == extreme.asset && e.kind() == EventKind::Cycle)
            .map(|e| e.value.unwrap())
            .collect();
        let mut sorted = cycles.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        assert!(cycles.iter().any(|c| *c > 2.5 * median));
    }

    #[test]
    fn no_scenario_events_without_scenarios() {
        let config = SimConfig {
            scenarios: false,
            ..SimConfig::default()
        };
        let (events, truth) = run(&config, "plant-1", 90, MIN);
        assert!(truth.is_empty());
        assert!(!events.iter().any(|e| e.kind() == EventKind::Change));
        assert!(events
            .iter()
            .filter(|e| e.kind() == EventKind::Access)
            .all(|e| e.attrs["peer"] == "10.1.1.20"));
        // Every STOP is announced by MAINT: planned stops only.
        for asset in [
            "line1/press-01",
            "line1/press-02",
            "line2/robot-01",
            "line2/cnc-01",
        ] {
            let modes: Vec<_> = events
                .iter()
                .filter(|e| e.asset == asset && e.kind() == EventKind::State)
                .map(|e| e.text.clone().unwrap())
                .collect();
            for pair in modes.windows(2) {
                if pair[1] == "STOP" {
                    assert_eq!(pair[0], "MAINT");
                }
            }
        }
    }

    #[test]
    fn config_reads_from_toml_shaped_json_with_defaults() {
        let config: SimConfig = serde_json::from_str(r#"{"seed": 11, "learn": "10m"}"#).unwrap();
        assert_eq!(config.seed, 11);
        assert_eq!(config.learn, Duration::from_secs(600));
        assert_eq!(config.assets, 4);
        assert!(serde_json::from_str::<SimConfig>(r#"{"sead": 1}"#).is_err());
        assert!(SimConfig {
            site_index: 3,
            site_count: 3,
            ..config
        }
        .validate()
        .is_err());
    }
}
