//! The `process` model: an asset's SAMPLE tags modelled jointly with PCA, so
//! a deviation of the process as a whole is caught even when no single tag
//! leaves its own range, and a tag that breaks its learned relation with the
//! others is named.
//!
//! **Observations.** The SAMPLE rows of one asset with the same `ts` form one
//! observation vector (one value per tag; a tag missing at that time keeps
//! its previous value). When the asset sends CYCLE events, its latest cycle
//! duration at the observation is one more variable, `cycle`, so tags that
//! follow the cycle time are explained by it. While the asset learns, an
//! observation is complete when a row with a later `ts` arrives; once
//! protecting, it is complete as soon as every modelled tag has a value at
//! that time (or a later `ts` arrives). Completion depends on the rows only,
//! never on how they are cut into batches, so a replay or a restart from a
//! checkpoint scores exactly the same observations.
//!
//! **Learning.** The observations of the asset's learning window (the most
//! recent `process_max_learning_observations` of them) are kept. When the
//! asset starts protecting (and at least `process_min_observations` are
//! there), each variable gets a robust centre (median) and a scale: its
//! standard deviation, widened for variables that wander slowly. A variable
//! whose lag-1 autocorrelation ρ is high (a temperature that heats up over
//! hours) moves further over a day than its spread in a short learning window
//! shows; its scale is multiplied by `((1 + ρ) / (1 − ρ))^process_drift_exponent`
//! (the long-run standard deviation of an AR(1) process for exponent ½), so
//! slow drifts do not swamp the variables that carry fast, sharp changes.
//! PCA (symmetric eigendecomposition from linfa) of the scaled learning
//! observations keeps the components that explain `process_variance` of the
//! variance. Each observation then has two statistics: Hotelling's T² (how far
//! along the learned directions it is) and Q/SPE (the squared residual off
//! them: relationships between tags broken). Both are smoothed with an EWMA
//! (`process_smoothing`), and their control limits are the
//! `process_quantile` quantile of the smoothed statistics over the learning
//! observations (after the EWMA's warm-up), but at least the statistic's
//! mean plus `process_limit_floor_z` standard deviations of its EWMA were the
//! observations independent, times `process_margin`.
//!
//! **Protecting.** An episode opens when either smoothed statistic has
//! exceeded its limit for `process_open_points` consecutive observations and
//! closes when both fall below `process_release` × their limit
//! (hysteresis). One alert per episode, at its opening, naming the tags that
//! contribute most to the deviation with observed and expected values.
//! Technique: when the residual (Q) dominates, tags disagree with each other,
//! as when a reading is spoofed or a sensor is tampered with: T0832
//! Manipulation of View. When T² dominates, the tags moved together to where
//! the process was never seen running, as after a changed setpoint: T0836
//! Modify Parameter.
//!
//! **Following slow drift.** A learning window shows minutes or hours of a
//! process; over days, vibration levels creep and temperatures follow the
//! weather. Two mechanisms keep such benign drift from holding an episode
//! open for ever, both causal and both visible:
//!
//! - *Re-learning while quiet.* While no episode is open and both smoothed
//!   statistics are below `process_adapt_below` × their limits, each
//!   observation pulls the centre towards itself with an exponential
//!   forgetting of time constant `process_adapt` (event time). A drift much
//!   slower than that is absorbed. An abrupt change is not: it crosses the
//!   gate within a few observations and freezes the centre, and the episode
//!   is judged against the centre from before the change.
//! - *New normal.* An episode that has lasted `process_rebaseline_after`,
//!   while the level the process holds (the smoothed observation itself,
//!   not the smoothed statistics, which also remember a past spike) has
//!   been beyond a limit for the last half of that time, is closed: the
//!   model takes that level as its centre, widens the scale of each tag to
//!   at least the size of its move (the same move is not reported again),
//!   and raises a low-severity `process-baseline` notice naming the tags and
//!   their old and new levels, so the decision is the SOC's to see, not
//!   silent. A changed setpoint held for that long is
//!   reported twice: by the episode's alert when it happens, by the notice
//!   when it is accepted.
//!
//! Both act observation by observation, so the result does not depend on
//! how rows are cut into batches, and their state is checkpointed.

// The linear algebra indexes several parallel arrays by the same variable
// or component; index loops read closer to the formulas than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::alert::{num, Draft};
use crate::config::DetectorConfig;
use linfa_linalg::eigh::EighInto;
use ndarray::Array2;
use otwatch_proto::Severity;
use serde::{Deserialize, Serialize};

/// Name of the pseudo-tag carrying the asset's latest cycle duration.
pub(crate) const CYCLE_TAG: &str = "cycle_ms";

/// Largest step, in scaled units, that one observation moves the level the
/// new-normal decision is based on (a robust, clipped EWMA).
const LEVEL_STEP: f64 = 3.0;

/// Smallest eigenvalue kept, relative to the largest, so that a direction
/// the learning data never moved in does not divide by zero.
const MIN_EIGENVALUE: f64 = 1e-9;

/// The per-asset process model: learning buffer, fitted model, open episode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcessModel {
    /// Variables in the order they were first seen (tags, then possibly `cycle`).
    tags: Vec<String>,
    /// The observation being assembled.
    pending: Pending,
    /// Latest value of each variable (NaN before its first value).
    #[serde(with = "nan_as_null")]
    last: Vec<f64>,
    /// Learning observations: the value of each variable known when each
    /// was stored (later variables are missing from earlier observations).
    #[serde(with = "nan_rows")]
    learn: Vec<Vec<f64>>,
    fitted: Option<Fitted>,
    /// Observations to wait before fitting is tried again (fitting fails
    /// while there are too few variables).
    #[serde(default)]
    retry_in: usize,
}

/// An observation being assembled from the rows sharing one `ts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    ts: Option<i64>,
    /// Value per variable at `ts`, NaN where none came yet.
    #[serde(with = "nan_as_null")]
    values: Vec<f64>,
    /// Variables of the fitted model that have a value at `ts`.
    present: usize,
    first_seq: u64,
    last_seq: u64,
    count: u64,
}

/// What was learned, and the running statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fitted {
    /// Indices into `ProcessModel::tags` of the modelled variables.
    vars: Vec<usize>,
    centre: Vec<f64>,
    /// Standard deviation of each variable while learning (for the expected band).
    spread: Vec<f64>,
    /// Scale dividing each variable (the spread widened for slow wanderers).
    scale: Vec<f64>,
    /// Mean of the scaled learning observations.
    mean: Vec<f64>,
    /// Loadings, row-major `d × k`.
    loadings: Vec<f64>,
    /// Variance of each kept component.
    eigen: Vec<f64>,
    t2_limit: f64,
    q_limit: f64,
    /// EWMA of T², Q and of the centred, scaled observation.
    t2: f64,
    q: f64,
    z: Vec<f64>,
    /// The open episode: first sequence number of its first observation and
    /// the name its alert carries.
    open: Option<(u64, String)>,
    /// Consecutive observations above a limit so far.
    #[serde(default)]
    above: u32,
    /// Time of the last scored observation.
    #[serde(default)]
    last_ts: Option<i64>,
    /// Time of the observation that opened the current episode.
    #[serde(default)]
    open_since: i64,
    /// During an episode, since when the level the process holds has been
    /// beyond a limit without interruption.
    #[serde(default)]
    held_since: Option<i64>,
    /// The level the process holds: an EWMA of the centred, scaled
    /// observation whose steps are clipped to [`LEVEL_STEP`], so a spike,
    /// however large, barely moves it.
    #[serde(default)]
    level: Vec<f64>,
}

/// One complete observation of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObsMeta {
    pub ts: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// Batch row of the row that completed the observation.
    pub row: u32,
}

/// What the model reports for a batch.
pub(crate) enum ProcessFinding {
    /// An episode opened: its alert.
    Opened { row: u32, draft: Draft },
    /// The episode whose first evidence is `first_seq` closed at `ts`
    /// (the first observation back under the release limit).
    Closed {
        ts: i64,
        first_seq: u64,
        name: String,
    },
    /// The episode whose first evidence is `first_seq` lasted
    /// `process_rebaseline_after`: the model took the level the process
    /// holds as its new normal, which closes the episode at `ts`; `draft` is
    /// the notice saying so.
    Rebaselined {
        row: u32,
        draft: Draft,
        ts: i64,
        first_seq: u64,
        name: String,
    },
}

/// One asset's rows of a batch that the model reads, in time order.
pub(crate) struct ProcessRows<'a> {
    pub ts: &'a [i64],
    pub value: &'a [f64],
    pub seq: &'a [u64],
    pub row: &'a [u32],
    /// Variable index of each row (SAMPLE rows with a finite value), or `None`.
    pub var: &'a [u32],
    /// Latest cycle duration at each row (NaN when none).
    pub cycle: &'a [f64],
}

/// Marks a row that is not a process variable in [`ProcessRows::var`].
pub(crate) const NO_VAR: u32 = u32::MAX;

impl ProcessModel {
    /// Index of variable `name`, adding it while learning. `None` for a
    /// variable first seen after the model was fitted (it is not modelled).
    pub fn var_index(&mut self, name: &str) -> Option<u32> {
        if let Some(i) = self.tags.iter().position(|t| t == name) {
            return Some(i as u32);
        }
        if self.fitted.is_some() {
            return None;
        }
        self.tags.push(name.to_string());
        self.last.push(f64::NAN);
        self.pending.values.push(f64::NAN);
        Some(self.tags.len() as u32 - 1)
    }

    /// Runs the asset's rows of a batch: assembles observations, learns
    /// before `protect_from`, scores after. `scratch` is reused between calls.
    pub fn process(
        &mut self,
        rows: &ProcessRows,
        protect_from: Option<i64>,
        config: &DetectorConfig,
        scratch: &mut ProcessScratch,
        out: &mut Vec<ProcessFinding>,
    ) {
        scratch.obs.clear();
        scratch.meta.clear();
        let has_cycle =
            (0..rows.ts.len()).any(|i| rows.var[i] != NO_VAR && rows.cycle[i].is_finite());
        let cycle_var = if has_cycle {
            self.var_index(CYCLE_TAG)
        } else {
            self.tags
                .iter()
                .position(|t| t == CYCLE_TAG)
                .map(|i| i as u32)
        };
        for i in 0..rows.ts.len() {
            let var = rows.var[i];
            if var == NO_VAR {
                continue;
            }
            let t = rows.ts[i];
            if self.pending.ts.is_some_and(|p| p != t) {
                self.complete(rows.row[i], protect_from, config, scratch);
            }
            let p = &mut self.pending;
            if p.ts.is_none() {
                p.ts = Some(t);
                p.first_seq = rows.seq[i];
                p.count = 0;
                p.present = 0;
            }
            p.last_seq = rows.seq[i];
            p.count += 1;
            self.set(var as usize, rows.value[i]);
            if let Some(c) = cycle_var {
                if rows.cycle[i].is_finite() {
                    self.set(c as usize, rows.cycle[i]);
                }
            }
            let complete = self
                .fitted
                .as_ref()
                .is_some_and(|f| self.pending.present == f.vars.len());
            if complete {
                self.complete(rows.row[i], protect_from, config, scratch);
            }
        }
        self.score(config, scratch, out);
    }

    /// Sets variable `var` of the pending observation.
    fn set(&mut self, var: usize, value: f64) {
        let p = &mut self.pending;
        if p.values[var].is_nan() {
            if let Some(f) = &self.fitted {
                if f.vars.contains(&var) {
                    p.present += 1;
                }
            }
        }
        p.values[var] = value;
        self.last[var] = value;
    }

    /// The pending observation is complete: learn it, or queue it for
    /// scoring (fitting the model first when learning is over).
    fn complete(
        &mut self,
        row: u32,
        protect_from: Option<i64>,
        config: &DetectorConfig,
        scratch: &mut ProcessScratch,
    ) {
        let Some(ts) = self.pending.ts.take() else {
            return;
        };
        // Missing variables keep their previous value.
        let values: Vec<f64> = self.last.clone();
        for v in self.pending.values.iter_mut() {
            *v = f64::NAN;
        }
        let meta = ObsMeta {
            ts,
            first_seq: self.pending.first_seq,
            last_seq: self.pending.last_seq,
            count: self.pending.count,
            row,
        };
        self.pending.present = 0;
        let learning = protect_from.is_none_or(|p| ts < p);
        if self.fitted.is_none() {
            let few = self.learn.len() < config.process_min_observations;
            if learning || few || self.retry_in > 0 {
                self.retry_in = self.retry_in.saturating_sub(usize::from(!learning));
                self.keep(values, config);
                return;
            }
            self.fit(config);
            if self.fitted.is_none() {
                // Too few variables so far: try again later, not at every observation.
                self.retry_in = config.process_min_observations;
                self.keep(values, config);
                return;
            }
        }
        let f = self.fitted.as_ref().expect("fitted");
        for (j, &v) in f.vars.iter().enumerate() {
            let x = values[v];
            scratch
                .obs
                .push(if x.is_finite() { x } else { f.centre[j] });
        }
        scratch.meta.push(meta);
    }

    /// Keeps a learning observation; beyond the bound the oldest half goes.
    fn keep(&mut self, values: Vec<f64>, config: &DetectorConfig) {
        self.learn.push(values);
        let max = config.process_max_learning_observations.max(2);
        if self.learn.len() > max {
            self.learn.drain(..self.learn.len() - max / 2);
        }
    }

    /// Fits the model on the learning observations (no-op when there are too
    /// few observations or variables).
    fn fit(&mut self, config: &DetectorConfig) {
        let n_all = self.learn.len();
        // Variables with a value in at least half the observations.
        let vars: Vec<usize> = (0..self.tags.len())
            .filter(|&v| {
                let seen = self
                    .learn
                    .iter()
                    .filter(|r| r.get(v).is_some_and(|x| x.is_finite()))
                    .count();
                2 * seen >= n_all
            })
            .collect();
        let rows: Vec<&Vec<f64>> = self
            .learn
            .iter()
            .filter(|r| {
                vars.iter()
                    .all(|&v| r.get(v).is_some_and(|x| x.is_finite()))
            })
            .collect();
        let (n, d) = (rows.len(), vars.len());
        if d < config.process_min_tags.max(2) || n < config.process_min_observations.max(3) {
            return;
        }
        let mut x = vec![0.0; n * d];
        for (i, r) in rows.iter().enumerate() {
            for (j, &v) in vars.iter().enumerate() {
                x[i * d + j] = r[v];
            }
        }
        let mut centre = vec![0.0; d];
        let mut spread = vec![0.0; d];
        let mut scale = vec![0.0; d];
        let mut col = vec![0.0; n];
        for j in 0..d {
            for i in 0..n {
                col[i] = x[i * d + j];
            }
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            let lag = col
                .windows(2)
                .map(|w| (w[0] - mean) * (w[1] - mean))
                .sum::<f64>()
                / (n - 1) as f64;
            centre[j] = crate::stats::median(&mut col.clone());
            let floor = config.min_relative_spread * centre[j].abs().max(1.0);
            let sd = var.sqrt().max(floor);
            let rho = if var > 0.0 { lag / var } else { 0.0 };
            let rho = rho.clamp(0.0, config.process_max_autocorrelation);
            spread[j] = sd;
            scale[j] = sd * ((1.0 + rho) / (1.0 - rho)).powf(config.process_drift_exponent);
        }
        // Scaled observations, their mean and covariance.
        let mut z = x;
        for i in 0..n {
            for j in 0..d {
                z[i * d + j] = (z[i * d + j] - centre[j]) / scale[j];
            }
        }
        let mut mean = vec![0.0; d];
        for i in 0..n {
            for j in 0..d {
                mean[j] += z[i * d + j];
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = Array2::<f64>::zeros((d, d));
        for i in 0..n {
            for a in 0..d {
                let za = z[i * d + a] - mean[a];
                for b in a..d {
                    cov[[a, b]] += za * (z[i * d + b] - mean[b]);
                }
            }
        }
        for a in 0..d {
            for b in a..d {
                let c = cov[[a, b]] / (n - 1) as f64;
                cov[[a, b]] = c;
                cov[[b, a]] = c;
            }
        }
        let Ok((values, vectors)) = cov.eigh_into() else {
            return;
        };
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        let top = values[order[0]].max(f64::MIN_POSITIVE);
        let total: f64 = order.iter().map(|&i| values[i].max(0.0)).sum();
        let mut k = 0;
        let mut cum = 0.0;
        while k < d {
            cum += values[order[k]].max(0.0);
            k += 1;
            if cum >= config.process_variance * total {
                break;
            }
        }
        let k = k.clamp(1, d - 1);
        let mut loadings = vec![0.0; d * k];
        let mut eigen = vec![0.0; k];
        for (c, &i) in order[..k].iter().enumerate() {
            eigen[c] = values[i].max(top * MIN_EIGENVALUE);
            // A stable sign: the largest loading of each component is positive.
            let column = vectors.column(i);
            let big = column
                .iter()
                .copied()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            let sign = if big < 0.0 { -1.0 } else { 1.0 };
            for j in 0..d {
                loadings[j * k + c] = sign * column[j];
            }
        }
        let mut fitted = Fitted {
            vars,
            centre,
            spread,
            scale,
            mean,
            loadings,
            eigen,
            t2_limit: 1.0,
            q_limit: 1.0,
            t2: 0.0,
            q: 0.0,
            z: vec![0.0; d],
            open: None,
            above: 0,
            last_ts: None,
            open_since: 0,
            held_since: None,
            level: vec![0.0; d],
        };
        // The statistics over the learning observations, smoothed as when
        // protecting; the limits are their quantile after the warm-up.
        let mut t2 = vec![0.0; n];
        let mut q = vec![0.0; n];
        let mut raw_t2 = vec![0.0; n];
        let mut raw_q = vec![0.0; n];
        let mut scratch = vec![0.0; d + k];
        let alpha = config.process_smoothing;
        for i in 0..n {
            let (a, b) = fitted.statistics(&z[i * d..(i + 1) * d], &mut scratch);
            raw_t2[i] = a;
            raw_q[i] = b;
            if i == 0 {
                fitted.t2 = a;
                fitted.q = b;
            } else {
                fitted.t2 += alpha * (a - fitted.t2);
                fitted.q += alpha * (b - fitted.q);
            }
            for j in 0..d {
                let c = scratch[j];
                fitted.z[j] = if i == 0 {
                    c
                } else {
                    fitted.z[j] + alpha * (c - fitted.z[j])
                };
            }
            t2[i] = fitted.t2;
            q[i] = fitted.q;
        }
        let warmup = ((5.0 / alpha).round() as usize).min(n / 2);
        // Floor: the mean plus `process_limit_floor_z` standard deviations
        // the EWMA would have if the observations were independent. A short
        // learning window of independent noise gives a low quantile; the
        // floor keeps such assets quiet.
        let shrink = (alpha / (2.0 - alpha)).sqrt();
        let limit = |v: &mut [f64], raw: &[f64]| {
            let mean = raw.iter().sum::<f64>() / n as f64;
            let sd = (raw.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt();
            let floor = mean + config.process_limit_floor_z * sd * shrink;
            quantile(&mut v[warmup..], config.process_quantile).max(floor) * config.process_margin
        };
        fitted.t2_limit = limit(&mut t2, &raw_t2).max(f64::MIN_POSITIVE);
        fitted.q_limit = limit(&mut q, &raw_q).max(1e-12);
        self.fitted = Some(fitted);
        self.learn = Vec::new();
    }

    /// Scores the queued observations of the batch in order.
    fn score(
        &mut self,
        config: &DetectorConfig,
        scratch: &mut ProcessScratch,
        out: &mut Vec<ProcessFinding>,
    ) {
        let Some(f) = self.fitted.as_mut() else {
            scratch.obs.clear();
            scratch.meta.clear();
            return;
        };
        let d = f.vars.len();
        let m = scratch.meta.len();
        if m == 0 {
            return;
        }
        // Observation by observation: each one may move the centre the next
        // one is scaled by (re-learning while quiet), so the statistics do not
        // depend on how the rows were cut into batches.
        let alpha = config.process_smoothing;
        let tau = config.process_adapt.as_nanos() as f64;
        let below = config.process_adapt_below;
        let rebaseline_ns =
            i64::try_from(config.process_rebaseline_after.as_nanos()).unwrap_or(i64::MAX);
        let mut z = vec![0.0; d];
        let mut c = vec![0.0; d];
        let mut tmp = vec![0.0; d + f.eigen.len()];
        f.level.resize(d, 0.0);
        for i in 0..m {
            let x = &scratch.obs[i * d..(i + 1) * d];
            for j in 0..d {
                z[j] = (x[j] - f.centre[j]) / f.scale[j];
            }
            let (a, b) = f.statistics(&z, &mut tmp);
            // The centred observation (`tmp` is reused below).
            c.copy_from_slice(&tmp[..d]);
            f.t2 += alpha * (a - f.t2);
            f.q += alpha * (b - f.q);
            for j in 0..d {
                f.z[j] += alpha * (c[j] - f.z[j]);
                f.level[j] += alpha * (c[j] - f.level[j]).clamp(-LEVEL_STEP, LEVEL_STEP);
            }
            let (rt, rq) = (f.t2 / f.t2_limit, f.q / f.q_limit);
            let meta = scratch.meta[i];
            f.above = if rt > 1.0 || rq > 1.0 { f.above + 1 } else { 0 };
            f.held_since = match f.held_since {
                _ if f.open.is_none() || !f.holds_a_level(&mut tmp) => None,
                None => Some(meta.ts),
                since => since,
            };
            match f.open {
                None if f.above >= config.process_open_points => {
                    let draft = f.draft(&self.tags, x, rt, rq, &meta, config);
                    f.open = Some((meta.first_seq, draft.name.clone()));
                    f.open_since = meta.ts;
                    out.push(ProcessFinding::Opened {
                        row: meta.row,
                        draft,
                    });
                }
                Some(_) if rt < config.process_release && rq < config.process_release => {
                    let (first_seq, name) = f.open.take().expect("open");
                    out.push(ProcessFinding::Closed {
                        ts: meta.ts,
                        first_seq,
                        name,
                    });
                }
                Some(_)
                    if rebaseline_ns > 0
                        && meta.ts - f.open_since >= rebaseline_ns
                        && f.held_since
                            .is_some_and(|h| meta.ts - h >= rebaseline_ns / 2) =>
                {
                    let (first_seq, name) = f.open.take().expect("open");
                    let draft = f.rebaseline(&self.tags, &meta, config);
                    out.push(ProcessFinding::Rebaselined {
                        row: meta.row,
                        draft,
                        ts: meta.ts,
                        first_seq,
                        name,
                    });
                }
                _ => {}
            }
            // Re-learning while quiet: the centre follows drifts much slower
            // than `process_adapt`; an episode, or statistics already half
            // way to their limits, freeze it.
            if tau > 0.0 && f.open.is_none() && rt < below && rq < below {
                let dt = f.last_ts.map_or(0, |l| meta.ts - l).max(0) as f64;
                // A gap between observations counts as at most τ/20.
                let w = -(-dt.min(tau / 20.0) / tau).exp_m1();
                for j in 0..d {
                    f.centre[j] += w * f.scale[j] * c[j];
                }
            }
            f.last_ts = Some(meta.ts);
        }
        scratch.obs.clear();
        scratch.meta.clear();
    }
}

impl Fitted {
    /// T² and Q of a scaled observation `z` (not yet centred on `mean`).
    /// `tmp` (d + k) receives the centred observation, then the scores.
    fn statistics(&self, z: &[f64], tmp: &mut [f64]) -> (f64, f64) {
        let d = self.centre.len();
        let k = self.eigen.len();
        let (c, t) = tmp.split_at_mut(d);
        for j in 0..d {
            c[j] = z[j] - self.mean[j];
        }
        t[..k].fill(0.0);
        for j in 0..d {
            let cj = c[j];
            let l = &self.loadings[j * k..(j + 1) * k];
            for a in 0..k {
                t[a] += cj * l[a];
            }
        }
        let t2: f64 = (0..k).map(|a| t[a] * t[a] / self.eigen[a]).sum();
        let mut q = 0.0;
        for j in 0..d {
            let l = &self.loadings[j * k..(j + 1) * k];
            let r = c[j] - (0..k).map(|a| t[a] * l[a]).sum::<f64>();
            q += r * r;
        }
        (t2, q)
    }

    /// Each variable's share of the smoothed deviation: its part of T² and
    /// of Q, each relative to its limit.
    fn contributions(&self) -> Vec<f64> {
        let d = self.centre.len();
        let k = self.eigen.len();
        let z = &self.z;
        let mut t = vec![0.0; k];
        for j in 0..d {
            for a in 0..k {
                t[a] += z[j] * self.loadings[j * k + a];
            }
        }
        (0..d)
            .map(|j| {
                let l = &self.loadings[j * k..(j + 1) * k];
                let fit: f64 = (0..k).map(|a| t[a] * l[a]).sum();
                let inv: f64 = (0..k).map(|a| t[a] / self.eigen[a] * l[a]).sum();
                let r = z[j] - fit;
                (z[j] * inv).max(0.0) / self.t2_limit + r * r / self.q_limit
            })
            .collect()
    }

    /// Whether the level the process holds (a robust smoothing of the
    /// observations, not the smoothed statistics, which also carry the
    /// decaying memory of a past spike) is itself beyond a limit. `tmp` as
    /// in [`Fitted::statistics`].
    fn holds_a_level(&self, tmp: &mut [f64]) -> bool {
        let level: Vec<f64> = self
            .level
            .iter()
            .zip(&self.mean)
            .map(|(l, m)| l + m)
            .collect();
        let (t2, q) = self.statistics(&level, tmp);
        t2 > self.t2_limit || q > self.q_limit
    }

    /// Takes the level the process has held lately (the smoothed
    /// observation) as the new centre, widens the scale of each variable to
    /// at least the size of its move (a move the SOC has now seen accepted is
    /// not reported again), restarts the smoothed statistics, and drafts
    /// the notice that says so.
    fn rebaseline(&mut self, tags: &[String], meta: &ObsMeta, config: &DetectorConfig) -> Draft {
        let d = self.centre.len();
        let shift = std::mem::replace(&mut self.level, vec![0.0; d]);
        self.z = vec![0.0; d];
        let old: Vec<(f64, f64)> = (0..d)
            .map(|j| {
                let half = config.expected_band * self.spread[j];
                (self.centre[j] - half, self.centre[j] + half)
            })
            .collect();
        let old_centre = self.centre.clone();
        let mut widen = vec![1.0; d];
        for j in 0..d {
            self.centre[j] += self.scale[j] * shift[j];
            widen[j] = shift[j].abs().max(1.0);
            self.scale[j] *= widen[j];
            self.spread[j] *= widen[j];
        }
        self.t2 = 0.0;
        self.q = 0.0;
        self.above = 0;
        self.held_since = None;
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| shift[b].abs().total_cmp(&shift[a].abs()).then(a.cmp(&b)));
        let named: Vec<String> = order
            .iter()
            .take(config.process_top_tags.max(1))
            .map(|&j| {
                let mut s = format!(
                    "{} {} → {}",
                    tags[self.vars[j]],
                    num(old_centre[j]),
                    num(self.centre[j])
                );
                if widen[j] > 1.0 {
                    s += &format!(" (tolerance ×{:.1})", widen[j]);
                }
                s
            })
            .collect();
        let top = order[0];
        let held = crate::alert::duration(meta.ts - self.open_since);
        Draft {
            ts_ns: meta.ts,
            detector: "process-baseline",
            name: tags[self.vars[top]].clone(),
            severity: Severity::Low,
            score: shift[top].abs(),
            observed: self.centre[top],
            expected_low: old[top].0,
            expected_high: old[top].1,
            message: format!(
                "new normal accepted: the process held a level outside its learned region for {held}; \
                 the process model now takes that level as normal (the episode is closed) and \
                 watches for deviations from it: {}",
                named.join(", ")
            ),
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            event_count: meta.count,
            technique: "",
        }
    }

    fn draft(
        &self,
        tags: &[String],
        raw: &[f64],
        rt: f64,
        rq: f64,
        meta: &ObsMeta,
        config: &DetectorConfig,
    ) -> Draft {
        let contrib = self.contributions();
        let total: f64 = contrib.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mut order: Vec<usize> = (0..contrib.len()).collect();
        order.sort_by(|&a, &b| contrib[b].total_cmp(&contrib[a]).then(a.cmp(&b)));
        let band = |j: usize| {
            let half = config.expected_band * self.spread[j];
            (self.centre[j] - half, self.centre[j] + half)
        };
        let named: Vec<String> = order
            .iter()
            .take(config.process_top_tags.max(1))
            .map(|&j| {
                let (lo, hi) = band(j);
                format!(
                    "{} {} (expected {}–{}, {:.0} %)",
                    tags[self.vars[j]],
                    num(raw[j]),
                    num(lo),
                    num(hi),
                    100.0 * contrib[j] / total
                )
            })
            .collect();
        let top = order[0];
        let (lo, hi) = band(top);
        let ratio = rt.max(rq);
        let (technique, what) = if rq >= rt {
            ("T0832", "tags left their learned relationship")
        } else {
            ("T0836", "process left its learned operating region")
        };
        let severity = if ratio >= 4.0 {
            Severity::High
        } else if ratio >= 2.0 {
            Severity::Medium
        } else {
            Severity::Low
        };
        Draft {
            ts_ns: meta.ts,
            detector: "process",
            name: tags[self.vars[top]].clone(),
            severity,
            score: ratio,
            observed: raw[top],
            expected_low: lo,
            expected_high: hi,
            message: format!(
                "{what} (T² {:.1}×, Q {:.1}× limit): {}",
                rt,
                rq,
                named.join(", ")
            ),
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            event_count: meta.count,
            technique,
        }
    }
}

/// Per-batch buffers of the process model.
#[derive(Debug, Default)]
pub(crate) struct ProcessScratch {
    obs: Vec<f64>,
    meta: Vec<ObsMeta>,
}

/// The `p` quantile of `v` with linear interpolation between order
/// statistics (as numpy's default). Reorders `v`.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = p.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// JSON has no NaN: missing values are written as `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let o: Vec<Option<f64>> = v.iter().map(|x| x.is_finite().then_some(*x)).collect();
        o.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let o: Vec<Option<f64>> = Vec::deserialize(d)?;
        Ok(o.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

/// [`nan_as_null`] for rows of values.
mod nan_rows {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
        let o: Vec<Vec<Option<f64>>> = v
            .iter()
            .map(|r| r.iter().map(|x| x.is_finite().then_some(*x)).collect())
            .collect();
        o.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        let o: Vec<Vec<Option<f64>>> = Vec::deserialize(d)?;
        Ok(o.into_iter()
            .map(|r| r.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
            .collect())
    }
}
