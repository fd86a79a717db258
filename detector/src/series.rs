//! The `cycle` and `sample` models: one [`Series`] per (site, asset, name) of
//! CYCLE durations or SAMPLE tag values.
//!
//! A series learns while its asset learns, and only then: one that holds
//! fewer than `min_series_points` values when the window ends, or that is
//! first seen once its asset protects, is not scored (its report says why)
//! rather than learning from protected data. Then it protects:
//! - **cycle**: the robust centre and spread (median, MAD) of the durations;
//!   a single value beyond `outlier_z` robust deviations is an outlier, a slow
//!   creep is caught by a two-sided CUSUM on the standardized durations;
//! - **sample**: the same, on the residual of the tag against its asset's
//!   latest cycle duration when a least-squares line explains the tag
//!   (R² ≥ `relationship_min_r2`), else on the raw value. A tag that follows a
//!   drifting cycle stays quiet (the cycle model reports the drift), a tag
//!   that leaves its relationship with the cycle is reported even while its
//!   value alone looks ordinary. The line is only trusted near the cycle
//!   durations it was fitted on: samples taken with a cycle beyond
//!   `outlier_z` robust deviations are not scored (that cycle is the cycle
//!   model's alert).
//! - **discrete**: a SAMPLE tag that took few distinct integer values while
//!   learning (at most `discrete_max_values`: coils, status bits, modes
//!   held as numbers), or one value of any kind, is a state: the values
//!   seen, the transitions between them, and the most changes in one
//!   `burst_window`. An unseen value or transition is an alert (T0836), a
//!   seen toggle is not; changes far more frequent than learned are
//!   brute-force I/O (T0806). A tag constant while learning thus never
//!   gets a zero-width band.
//!
//! The SOC can accept an episode ([`Series::accept`]): a discrete series
//! learns the value, transition or rate its alert named; a continuous one
//! takes the episode's mean level as normal, re-centred half way and its
//! tolerance widened so that both levels are within one spread.
//!
//! Scoring runs over a series' rows of one batch in one tight loop.

use crate::alert::{duration, num, Draft};
use crate::config::{DetectorConfig, Resolved};
use crate::stats::{median, Cusum, Drift, Episode, Line, RateWindow, Sampler, Spread};
use otwatch_proto::Severity;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SeriesKind {
    Cycle,
    Sample,
}

/// What a series learned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Model {
    /// Statistics of the scored quantity: the value, or the residual from `line`.
    stats: Spread,
    line: Option<Line>,
    points: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Series {
    pub asset: u32,
    pub kind: SeriesKind,
    pub name: String,
    /// Present while learning.
    learning: Option<Sampler>,
    model: Option<Model>,
    cusum: Cusum,
    episode: Episode,
    /// Distinct values and transitions seen while learning.
    #[serde(default)]
    seen: States,
    /// The model of a discrete tag (instead of `model`).
    #[serde(default)]
    discrete: Option<Discrete>,
    /// Why the series is not scored.
    #[serde(default)]
    unscored: Option<String>,
    /// Sum and count of the scored quantity since the open episode began:
    /// its mean level, which an accept takes as normal.
    #[serde(default)]
    episode_sum: f64,
    #[serde(default)]
    episode_count: u64,
    /// Episodes the SOC accepted.
    #[serde(default)]
    accepted: u32,
}

/// The distinct values of a series while it learns, and the transitions
/// between them, bounded: beyond `discrete_max_values` values nothing more
/// is kept (the tag is continuous).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct States {
    values: Vec<f64>,
    transitions: Vec<(f64, f64)>,
    last: Option<f64>,
    /// More distinct values than a discrete tag has.
    overflow: bool,
    /// A value with a fractional part was seen.
    fractional: bool,
    /// Changes of value per `burst_window` while learning.
    rate: RateWindow,
}

impl States {
    fn push(&mut self, v: f64, t: i64, seq: u64, config: &DetectorConfig, window_ns: i64) {
        if self.overflow {
            return;
        }
        self.fractional |= v.fract() != 0.0;
        if !self.values.contains(&v) {
            if self.values.len() > config.discrete_max_values.max(1) {
                // Neither a state nor a constant: stop tracking.
                *self = States {
                    overflow: true,
                    ..States::default()
                };
                return;
            }
            self.values.push(v);
        }
        if let Some(last) = self.last.filter(|&l| l != v) {
            if !self.transitions.contains(&(last, v)) {
                self.transitions.push((last, v));
            }
            self.rate.add(
                t,
                seq,
                true,
                window_ns,
                config.burst_factor,
                config.burst_min_excess,
            );
        }
        self.last = Some(v);
    }

    /// Whether the values seen make a discrete tag (see [`is_discrete`]).
    fn discrete(&self, config: &DetectorConfig) -> bool {
        !self.overflow
            && !self.values.is_empty()
            && (self.values.len() == 1
                || (!self.fractional && self.values.len() <= config.discrete_max_values))
    }
}

/// Whether `values` (the learning values of one tag) make a discrete tag:
/// a single value of any kind, or at most `max_values` distinct integers.
/// The process model leaves such tags to the discrete model.
pub(crate) fn is_discrete(values: impl Iterator<Item = f64>, max_values: usize) -> bool {
    let mut distinct: Vec<f64> = Vec::new();
    let mut fractional = false;
    for v in values {
        fractional |= v.fract() != 0.0;
        if !distinct.contains(&v) {
            if distinct.len() > max_values.max(1) {
                return false;
            }
            distinct.push(v);
        }
    }
    distinct.len() == 1 || (!distinct.is_empty() && !fractional && distinct.len() <= max_values)
}

/// A discrete value as the SOC reads it: integers without decimals.
fn state(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        num(v)
    }
}

/// What a discrete tag learned, and its current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Discrete {
    values: Vec<f64>,
    transitions: Vec<(f64, f64)>,
    /// Changes of value counted per `burst_window`; its learned maximum is
    /// the busiest learning window.
    rate: RateWindow,
    last: Option<f64>,
}

/// What an alert of a series names, for the SOC to accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum SeriesTarget {
    /// A continuous series' episode.
    Level,
    /// A discrete tag's unseen value, or unseen transition `from -> value`.
    State { value: f64, from: Option<f64> },
    /// A discrete tag changing this often within one window.
    Rate { count: u64 },
}

/// A series' rows of one batch, in time order, as contiguous slices.
pub(crate) struct Input<'a> {
    pub ts: &'a [i64],
    pub seq: &'a [u64],
    /// Finite values only.
    pub value: &'a [f64],
    /// For SAMPLE rows: the asset's latest cycle duration (NaN when unknown).
    pub ctx: &'a [f64],
    /// Batch row of each slot: where a finding's agent is read.
    pub row: &'a [u32],
}

/// A finding of a series at a batch row.
pub(crate) struct Finding {
    pub row: u32,
    pub draft: Draft,
    pub target: SeriesTarget,
}

impl Series {
    pub fn new(asset: u32, kind: SeriesKind, name: String) -> Series {
        Series {
            asset,
            kind,
            name,
            learning: Some(Sampler::default()),
            model: None,
            cusum: Cusum::default(),
            episode: Episode::default(),
            seen: States::default(),
            discrete: None,
            unscored: None,
            episode_sum: 0.0,
            episode_count: 0,
            accepted: 0,
        }
    }

    pub fn protecting(&self) -> bool {
        self.model.is_some() || self.discrete.is_some()
    }

    /// Runs the series over its rows of a batch. Rows before `protect_from`
    /// are learned; from it on the series is scored, or not at all when its
    /// learning window did not give it a model.
    pub fn process(
        &mut self,
        input: &Input,
        protect_from: Option<i64>,
        config: &DetectorConfig,
        resolved: &Resolved,
        out: &mut Vec<Finding>,
    ) {
        let n = input.ts.len();
        let mut first_scored = 0;
        if let Some(sampler) = &mut self.learning {
            let with_x = self.kind == SeriesKind::Sample;
            while first_scored < n {
                let i = first_scored;
                if protect_from.is_some_and(|p| input.ts[i] >= p) {
                    break;
                }
                let x = Some(input.ctx[i]).filter(|x| x.is_finite());
                sampler.push(
                    input.value[i],
                    with_x.then_some(x),
                    config.max_learning_values,
                );
                if with_x {
                    self.seen.push(
                        input.value[i],
                        input.ts[i],
                        input.seq[i],
                        config,
                        resolved.burst_window_ns,
                    );
                }
                first_scored += 1;
            }
            if first_scored == n {
                return;
            }
            let sampler = self.learning.take().expect("learning");
            let seen = std::mem::take(&mut self.seen);
            if sampler.len() == 0 {
                self.unscored = Some(
                    "first seen once its asset protected: relearn the asset to model it".into(),
                );
            } else if self.kind == SeriesKind::Sample && seen.discrete(config) {
                self.discrete = Some(Discrete {
                    values: seen.values,
                    transitions: seen.transitions,
                    rate: seen.rate,
                    last: seen.last,
                });
            } else if sampler.len() < config.min_series_points {
                self.unscored = Some(format!(
                    "learned {} value(s), fewer than min_series_points = {}: relearn over a longer window",
                    sampler.len(),
                    config.min_series_points
                ));
            } else {
                self.model = Some(self.learn(&sampler, config));
            }
        }
        if self.discrete.is_some() {
            self.score_discrete(first_scored, input, config, resolved, out);
            return;
        }
        let Some(model) = self.model else {
            return;
        };
        self.score(first_scored, input, &model, config, resolved, out);
    }

    /// Scores slots `from..` of a discrete tag's `input`.
    fn score_discrete(
        &mut self,
        from: usize,
        input: &Input,
        config: &DetectorConfig,
        resolved: &Resolved,
        out: &mut Vec<Finding>,
    ) {
        // Worked on as a local and put back: the alert text reads `self` too.
        let mut d = self.discrete.take().expect("discrete");
        let (close, quiet) = (config.episode_close_points, resolved.quiet_ns);
        for r in from..input.ts.len() {
            let (v, t, seq) = (input.value[r], input.ts[r], input.seq[r]);
            let last = d.last.replace(v);
            let changed = last.is_some_and(|l| l != v);
            let mut rate = None;
            if changed {
                let step = d.rate.add(
                    t,
                    seq,
                    false,
                    resolved.burst_window_ns,
                    config.burst_factor,
                    config.burst_min_excess,
                );
                if step.closed_normal {
                    self.episode.normal(t, close, quiet);
                }
                if step.over {
                    rate = Some(d.rate.count());
                }
            }
            let unseen_value = !d.values.contains(&v);
            let unseen_transition = changed && !d.transitions.contains(&(last.unwrap_or(v), v));
            let target = if unseen_value || unseen_transition {
                SeriesTarget::State {
                    value: v,
                    from: last,
                }
            } else if let Some(count) = rate {
                SeriesTarget::Rate { count }
            } else {
                if !changed {
                    self.episode.normal(t, close, quiet);
                }
                continue;
            };
            if !self.episode.abnormal(t, quiet) {
                continue;
            }
            let list = |v: &[f64]| v.iter().map(|x| state(*x)).collect::<Vec<_>>().join(", ");
            let (message, technique, observed) = match target {
                SeriesTarget::State { value, from } if !d.values.contains(&value) => (
                    format!(
                        "{} took {}{}, a value never seen while learning (learned: {})",
                        self.name,
                        state(value),
                        from.map_or(String::new(), |f| format!(" (was {})", state(f))),
                        list(&d.values)
                    ),
                    "T0836",
                    value,
                ),
                SeriesTarget::State { value, from } => (
                    format!(
                        "{} changed {} -> {}, a transition never seen while learning (learned: {})",
                        self.name,
                        state(from.unwrap_or(value)),
                        state(value),
                        d.transitions
                            .iter()
                            .map(|(a, b)| format!("{} -> {}", state(*a), state(*b)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "T0836",
                    value,
                ),
                SeriesTarget::Rate { count } => (
                    format!(
                        "{} changed {count} times within {}, learned at most {} (limit {}): toggled far more often than learned",
                        self.name,
                        duration(resolved.burst_window_ns),
                        d.rate.learned_max,
                        d.rate.limit()
                    ),
                    "T0806",
                    count as f64,
                ),
                SeriesTarget::Level => unreachable!("discrete tags have no level"),
            };
            let (low, high) = d
                .values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            out.push(Finding {
                row: input.row[r],
                draft: Draft {
                    ts_ns: t,
                    detector: "discrete",
                    name: self.name.clone(),
                    severity: Severity::Medium,
                    score: 1.0,
                    observed,
                    expected_low: low,
                    expected_high: high,
                    message,
                    first_seq: seq,
                    last_seq: seq,
                    event_count: 1,
                    technique,
                },
                target,
            });
        }
        self.discrete = Some(d);
    }

    /// The SOC accepts this series' episode whose alert named `target`:
    /// see the module documentation. Returns what changed.
    pub fn accept(&mut self, target: &SeriesTarget) -> Result<String, String> {
        if let Some(d) = &mut self.discrete {
            self.accepted += 1;
            self.episode = Episode::default();
            return Ok(match *target {
                SeriesTarget::State { value, from } => {
                    if !d.values.contains(&value) {
                        d.values.push(value);
                    }
                    match from.filter(|&f| f != value) {
                        Some(f) => {
                            if !d.transitions.contains(&(f, value)) {
                                d.transitions.push((f, value));
                            }
                            format!(
                                "{}: value {} and transition {} -> {} are now known",
                                self.name,
                                state(value),
                                state(f),
                                state(value)
                            )
                        }
                        None => format!("{}: value {} is now known", self.name, state(value)),
                    }
                }
                SeriesTarget::Rate { count } => {
                    d.rate.learned_max = d.rate.learned_max.max(count);
                    format!(
                        "{}: up to {count} changes per window are now normal",
                        self.name
                    )
                }
                SeriesTarget::Level => "nothing to change".into(),
            });
        }
        let Some(model) = &mut self.model else {
            return Err(format!("{} has no model", self.name));
        };
        if self.episode_count == 0 {
            return Err("its episode is over: nothing to accept".into());
        }
        let st = &mut model.stats;
        let level = self.episode_sum / self.episode_count as f64;
        let shift = (level - st.centre) / st.spread;
        let old = st.centre;
        let mut what = format!(
            "{}: no move of a spread on average, the band stays",
            self.name
        );
        if shift.abs() >= 1.0 {
            let widen = (shift.abs() / 2.0).max(1.0);
            let step = (level - st.centre) / 2.0;
            st.centre += step;
            st.mean += step;
            st.spread *= widen;
            st.sd *= widen;
            what = format!(
                "{}: centre {} → {} (tolerance ×{:.1})",
                self.name,
                num(old),
                num(st.centre),
                widen
            );
        }
        self.cusum = Cusum::default();
        self.episode = Episode::default();
        self.episode_sum = 0.0;
        self.episode_count = 0;
        self.accepted += 1;
        Ok(what)
    }

    /// What the series knows, for `otwatch model status`: its model's
    /// name, state, a summary and, while an episode is open, since when.
    pub fn report(
        &self,
        at: i64,
        quiet_ns: i64,
    ) -> (&'static str, &'static str, String, Option<i64>) {
        let model = match (self.kind, self.discrete.is_some()) {
            (SeriesKind::Cycle, _) => "cycle",
            (SeriesKind::Sample, true) => "discrete",
            (SeriesKind::Sample, false) => "sample",
        };
        let open = self.episode.open_since(at, quiet_ns);
        if let Some(why) = &self.unscored {
            return (model, "not scored", why.clone(), None);
        }
        if let Some(s) = &self.learning {
            return (
                model,
                "learning",
                format!("{} value(s) so far", s.len()),
                None,
            );
        }
        let accepted = if self.accepted > 0 {
            format!("; {} episode(s) accepted", self.accepted)
        } else {
            String::new()
        };
        if let Some(d) = &self.discrete {
            let list = d
                .values
                .iter()
                .map(|x| state(*x))
                .collect::<Vec<_>>()
                .join(", ");
            return (
                model,
                "protecting",
                format!(
                    "values {list}; {} transition(s); at most {} change(s) per window while learning{accepted}",
                    d.transitions.len(),
                    d.rate.learned_max
                ),
                open,
            );
        }
        let m = self.model.expect("scored");
        let mut text = format!(
            "median {}, spread {} over {} values",
            num(m.stats.centre),
            num(m.stats.spread),
            m.points
        );
        if let Some(l) = m.line {
            text = format!(
                "{} + {} × cycle, residual {text} (R² {:.2})",
                num(l.a),
                num(l.b),
                l.r2
            );
        }
        (model, "protecting", text + &accepted, open)
    }

    /// The band of values the model expects, `centre ± expected_band ×
    /// spread` (as its alerts quote it), when it protects a value that does
    /// not depend on the cycle time; `None` otherwise.
    pub fn band(&self, expected_band: f64) -> Option<[f64; 2]> {
        if self.unscored.is_some() || self.learning.is_some() || self.discrete.is_some() {
            return None;
        }
        let m = self.model?;
        if m.line.is_some() {
            return None;
        }
        let half = expected_band * m.stats.spread;
        Some([m.stats.centre - half, m.stats.centre + half])
    }

    fn learn(&self, s: &Sampler, config: &DetectorConfig) -> Model {
        let centre = median(&mut s.y.clone());
        let floor = (centre.abs() * config.min_relative_spread).max(1e-9);
        let mut line = None;
        if self.kind == SeriesKind::Sample {
            let (xs, ys): (Vec<f64>, Vec<f64>) =
                s.x.iter()
                    .zip(&s.y)
                    .filter_map(|(x, y)| x.map(|x| (x, *y)))
                    .unzip();
            // The line must cover most of the learning data to stand for it.
            if 2 * xs.len() >= s.y.len() {
                line = Line::fit(&xs, &ys).filter(|l| l.r2 >= config.relationship_min_r2);
            }
            if let Some(l) = line {
                let residuals: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| y - l.at(*x)).collect();
                return Model {
                    stats: Spread::of(&residuals, floor),
                    line,
                    points: s.len(),
                };
            }
        }
        Model {
            stats: Spread::of(&s.y, floor),
            line,
            points: s.len(),
        }
    }

    /// Scores slots `from..` of `input`.
    fn score(
        &mut self,
        from: usize,
        input: &Input,
        model: &Model,
        config: &DetectorConfig,
        resolved: &Resolved,
        out: &mut Vec<Finding>,
    ) {
        let st = model.stats;
        let (inv_spread, inv_sd) = (1.0 / st.spread, 1.0 / st.sd);
        let (limit, k, h) = (config.outlier_z, config.cusum_k, config.cusum_h);
        let (close, quiet) = (config.episode_close_points, resolved.quiet_ns);
        // Worked on in locals and written back once: kept in `self`, every
        // row would store and reload them around the (rare) alert calls.
        let mut cusum = std::mem::take(&mut self.cusum);
        let mut episode = std::mem::take(&mut self.episode);
        let n = input.ts.len();
        let (ts, seq, value, ctx) = (
            input.ts,
            &input.seq[..n],
            &input.value[..n],
            &input.ctx[..n],
        );
        for r in from..n {
            let y = value[r];
            let q = match &model.line {
                Some(l) => {
                    let x = ctx[r];
                    // False for NaN too: no cycle known, nothing to compare with.
                    let near = (x - l.x_centre).abs() <= limit * l.x_spread;
                    if !near {
                        continue;
                    }
                    y - l.at(x)
                }
                None => y,
            };
            let z = (q - st.centre) * inv_spread;
            // Clamped: one wild value is the outlier test's business and must
            // not leave the CUSUM primed for a drift alert afterwards.
            let zc = ((q - st.mean) * inv_sd).max(-limit).min(limit);
            let drift = cusum.update(zc, k, h, seq[r]);
            let outlier = z.abs() > limit;
            if !outlier && drift.is_none() {
                episode.normal(ts[r], close, quiet);
                if episode.is_open() {
                    self.episode_sum += q;
                    self.episode_count += 1;
                } else {
                    self.episode_sum = 0.0;
                    self.episode_count = 0;
                }
                continue;
            }
            if episode.abnormal(ts[r], quiet) {
                let drift = if outlier { None } else { drift };
                let draft = self.draft(r, input, model, z, drift, config);
                out.push(Finding {
                    row: input.row[r],
                    draft,
                    target: SeriesTarget::Level,
                });
                self.episode_sum = 0.0;
                self.episode_count = 0;
            }
            self.episode_sum += q;
            self.episode_count += 1;
        }
        self.cusum = cusum;
        self.episode = episode;
    }

    /// The alert for row `r`: an outlier when `drift` is `None`.
    fn draft(
        &self,
        r: usize,
        input: &Input,
        model: &Model,
        z: f64,
        drift: Option<Drift>,
        config: &DetectorConfig,
    ) -> Draft {
        let st = model.stats;
        let y = input.value[r];
        let x = input.ctx[r];
        let base = model.line.map_or(0.0, |l| l.at(x));
        let low = base + st.centre - config.expected_band * st.spread;
        let high = base + st.centre + config.expected_band * st.spread;
        let (score, first_seq, event_count, why) = match drift {
            None => (
                z.abs(),
                input.seq[r],
                1,
                if model.line.is_some() {
                    format!("off its relationship with the cycle time (robust z {z:.1})")
                } else {
                    format!("outlier (robust z {z:.1})")
                },
            ),
            Some(d) => {
                let unit = if self.kind == SeriesKind::Cycle {
                    "cycles"
                } else {
                    "samples"
                };
                let what = if model.line.is_some() {
                    "relationship with the cycle time shifted"
                } else {
                    "slow drift"
                };
                (
                    d.value,
                    d.first_seq,
                    d.count,
                    format!(
                        "{what} {} (CUSUM {:.1} over {} {unit})",
                        if d.upward { "upward" } else { "downward" },
                        d.value,
                        d.count
                    ),
                )
            }
        };
        let severity = if drift.is_none() && z.abs() >= 2.0 * config.outlier_z {
            Severity::High
        } else {
            Severity::Medium
        };
        let (detector, technique, message) = match (self.kind, model.line) {
            (SeriesKind::Cycle, _) => (
                "cycle",
                // A machine cycling off its learned time: a changed setpoint
                // or parameter is the first thing to rule out.
                "T0836",
                format!(
                    "{} time {} s, expected {}–{} s: {why}",
                    self.name,
                    num(y / 1e3),
                    num(low / 1e3),
                    num(high / 1e3)
                ),
            ),
            (SeriesKind::Sample, Some(_)) => (
                "sample",
                // The reported value no longer matches what the process does.
                "T0832",
                format!(
                    "{} {}, expected {}–{} for a {} s cycle: {why}",
                    self.name,
                    num(y),
                    num(low),
                    num(high),
                    num(x / 1e3)
                ),
            ),
            (SeriesKind::Sample, None) => (
                "sample",
                "",
                format!(
                    "{} {}, expected {}–{}: {why}",
                    self.name,
                    num(y),
                    num(low),
                    num(high)
                ),
            ),
        };
        Draft {
            ts_ns: input.ts[r],
            detector,
            name: self.name.clone(),
            severity,
            score,
            observed: y,
            expected_low: low,
            expected_high: high,
            message,
            first_seq,
            last_seq: input.seq[r],
            event_count,
            technique,
        }
    }
}
