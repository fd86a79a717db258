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
//! observations independent, times `process_margin`, and widened as a
//! prediction limit is when the window holds few observations (the ratio of
//! Hotelling's limit for a new observation from `n` learning observations
//! to its limit for very many: 1.25 for 40 observations of 3 components,
//! 7.6 for 7, about 1 beyond a few hundred).
//!
//! **Protecting.** An episode opens when either smoothed statistic has been
//! above its limit for `process_open_points` consecutive observations, or
//! at once when one observation is above `process_open_factor` × its limit,
//! and closes once both have stayed below `process_release` × their limits
//! for `process_open_points` consecutive observations (hysteresis in value
//! and in time, so noise at a slow sampling rate neither opens nor cuts an
//! episode). One alert per episode, at its opening, naming the tags that
//! contribute most to the deviation with observed and expected values.
//! Technique: when the residual (Q) dominates, tags disagree with each other,
//! as when a reading is spoofed or a sensor is tampered with: T0832
//! Manipulation of View. When T² dominates, the tags moved together to where
//! the process was never seen running, as after a changed setpoint: T0836
//! Modify Parameter.
//!
//! **Sampling rate.** The learned cadence (median interval between learning
//! observations) sets the EWMA weight, `1 − exp(−cadence /
//! process_smoothing)`: a process sampled every second is smoothed over
//! about ten observations, one sampled every minute or slower is not
//! smoothed at all, and the limits, computed from the learning observations
//! smoothed the same way, fit the noise each rate leaves. An episode opens
//! after `process_open_points` observations above a limit at any rate.
//!
//! **Nothing becomes normal without a decision.** The learned centre,
//! scales and components never move by themselves: a deviation that
//! persists stays one open episode (one alert) until the process comes back
//! or the SOC accepts it ([`ProcessModel::accept`]). Accepting takes the
//! episode's mean deviation: every variable is re-centred half way along
//! it, so that the learned and the accepted level sit on either side of
//! the centre and variables that moved together keep their relationship;
//! where either level plus the learned noise would cross a limit, the
//! model widens only in the directions that moved (the variance of the
//! components that carry the move; the Q limit only if the move itself
//! broke a relationship).
//! Scales of single variables never change, which would rotate the learned
//! relationships. There is no adaptation an attacker could ride: to stay
//! unseen, a change must stay inside the learned limits for good.
//!
//! **Learning is bounded.** The model is fitted once, on the observations of
//! its asset's learning window (at least `process_min_observations`); an
//! asset whose window held fewer, or fewer than `process_min_tags`
//! continuous variables, has no process model and says why
//! ([`ProcessModel::report`]); it never goes on learning from protected
//! data. Discrete tags (few integer values) and tags constant while learning
//! are left out: a constant has no scale, and the discrete model of
//! `series` watches both.
//!
//! Everything acts observation by observation, so the result does not depend
//! on how rows are cut into batches, and the state is checkpointed.

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

/// Share of a limit the learned noise reaches (the limits are a high
/// quantile of the learning statistics times `process_margin`, 1.5 by
/// default): an accepted level plus noise of this extent stays within the
/// limits.
const NOISE_SHARE: f64 = 2.0 / 3.0;

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
    /// Times of the learning observations (for the learned cadence).
    #[serde(default)]
    learn_ts: Vec<i64>,
    fitted: Option<Fitted>,
    /// Why learning ended without a model (too few observations or
    /// continuous variables in the window).
    #[serde(default)]
    unfitted: Option<String>,
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
    /// Consecutive observations below the release limit during an episode.
    #[serde(default)]
    below: u32,
    /// Time of the last scored observation.
    #[serde(default)]
    last_ts: Option<i64>,
    /// Time of the observation that opened the current episode.
    #[serde(default)]
    open_since: i64,
    /// Learned interval between observations (ns); 0 in a model fitted by
    /// an older otwatch, which smoothed with weight 0.1.
    #[serde(default)]
    cadence_ns: i64,
    /// Learning observations the model was fitted on, and their time span.
    #[serde(default)]
    fitted_on: usize,
    #[serde(default)]
    learned_from: i64,
    #[serde(default)]
    learned_until: i64,
    /// Tags left out: discrete or constant while learning.
    #[serde(default)]
    excluded: Vec<String>,
    /// Sum of the centred, scaled observations of the open episode and
    /// their count: its mean deviation, which an accept takes as normal.
    #[serde(default)]
    shift_sum: Vec<f64>,
    #[serde(default)]
    shift_count: u64,
    /// Deviations the SOC accepted, and when the last one was.
    #[serde(default)]
    accepted: u32,
    #[serde(default)]
    accepted_at: Option<i64>,
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
        if learning {
            self.keep(values, ts, config);
            return;
        }
        if self.fitted.is_none() {
            if self.unfitted.is_some() {
                return;
            }
            // The learning window is over: fit once, on what it held.
            if let Err(why) = self.fit(config) {
                self.unfitted = Some(why);
                self.learn = Vec::new();
                self.learn_ts = Vec::new();
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
    fn keep(&mut self, values: Vec<f64>, ts: i64, config: &DetectorConfig) {
        // A model read from an older checkpoint kept no times.
        if self.learn_ts.len() != self.learn.len() {
            self.learn_ts = vec![ts; self.learn.len()];
        }
        self.learn.push(values);
        self.learn_ts.push(ts);
        let max = config.process_max_learning_observations.max(2);
        if self.learn.len() > max {
            let cut = self.learn.len() - max / 2;
            self.learn.drain(..cut);
            self.learn_ts.drain(..cut);
        }
    }

    /// Fits the model on the learning observations; the error says why it
    /// cannot be (too few observations or continuous variables).
    fn fit(&mut self, config: &DetectorConfig) -> Result<(), String> {
        let n_all = self.learn.len();
        if self.learn_ts.len() != n_all {
            // Kept by an older otwatch, without times: the cadence is unknown.
            self.learn_ts = vec![0; n_all];
        }
        // Variables with a value in at least half the observations.
        let seen: Vec<usize> = (0..self.tags.len())
            .filter(|&v| {
                let seen = self
                    .learn
                    .iter()
                    .filter(|r| r.get(v).is_some_and(|x| x.is_finite()))
                    .count();
                2 * seen >= n_all
            })
            .collect();
        let complete = |r: &&Vec<f64>| {
            seen.iter()
                .all(|&v| r.get(v).is_some_and(|x| x.is_finite()))
        };
        // Discrete and constant variables have no continuous scale.
        let mut excluded = Vec::new();
        let vars: Vec<usize> = seen
            .iter()
            .copied()
            .filter(|&v| {
                let values = self.learn.iter().filter(complete).map(|r| r[v]);
                let keep = !crate::series::is_discrete(values, config.discrete_max_values);
                if !keep {
                    excluded.push(self.tags[v].clone());
                }
                keep
            })
            .collect();
        let (rows, times): (Vec<&Vec<f64>>, Vec<i64>) = self
            .learn
            .iter()
            .zip(&self.learn_ts)
            .filter(|(r, _)| complete(r))
            .map(|(r, &t)| (r, t))
            .unzip();
        let (n, d) = (rows.len(), vars.len());
        let min_obs = config.process_min_observations.max(3);
        if n < min_obs {
            return Err(format!(
                "its learning window held {n} complete observation(s), fewer than process_min_observations = {min_obs}"
            ));
        }
        if d < config.process_min_tags.max(2) {
            return Err(format!(
                "{d} continuous variable(s) while learning, fewer than process_min_tags = {}{}",
                config.process_min_tags.max(2),
                if excluded.is_empty() {
                    String::new()
                } else {
                    format!(" ({} discrete or constant)", excluded.join(", "))
                }
            ));
        }
        let mut gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64)
            .filter(|g| *g > 0.0)
            .collect();
        let cadence_ns = if gaps.is_empty() {
            1e9
        } else {
            crate::stats::median(&mut gaps)
        } as i64;
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
        let all: Vec<usize> = (0..n).collect();
        let Some((mean, loadings, eigen)) = components(&z, &all, d, config.process_variance) else {
            return Err("the eigendecomposition of its learning observations failed".into());
        };
        let k = eigen.len();
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
            below: 0,
            last_ts: None,
            open_since: 0,
            cadence_ns,
            fitted_on: n,
            learned_from: times.first().copied().unwrap_or(0),
            learned_until: times.last().copied().unwrap_or(0),
            excluded,
            shift_sum: vec![0.0; d],
            shift_count: 0,
            accepted: 0,
            accepted_at: None,
        };
        // The statistics over the learning observations, smoothed as when
        // protecting; the limits are their quantile after the warm-up.
        let mut t2 = vec![0.0; n];
        let mut q = vec![0.0; n];
        let mut raw_t2 = vec![0.0; n];
        let mut raw_q = vec![0.0; n];
        let mut scratch = vec![0.0; d + k];
        let alpha = fitted.alpha(config);
        let held: Vec<(f64, f64)> = (0..n)
            .map(|i| fitted.statistics(&z[i * d..(i + 1) * d], &mut scratch))
            .collect();
        for i in 0..n {
            let (a, b) = held[i];
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
        // Few learning observations know the statistics' spread poorly: the
        // limits widen as a prediction limit does (1.25× for 40
        // observations of 3 components, 7.6× for 7; about 1 beyond a few
        // hundred).
        let p = config.process_quantile;
        let t2_widen = crate::stats::small_sample_factor(n, k, p);
        let q_widen = crate::stats::small_sample_factor(n, (d - k).min(n - 2).max(1), p);
        fitted.t2_limit = (limit(&mut t2, &raw_t2) * t2_widen).max(f64::MIN_POSITIVE);
        fitted.q_limit = (limit(&mut q, &raw_q) * q_widen).max(1e-12);
        self.fitted = Some(fitted);
        self.learn = Vec::new();
        self.learn_ts = Vec::new();
        Ok(())
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
        let alpha = f.alpha(config);
        let confirm = config.process_open_points;
        let mut z = vec![0.0; d];
        let mut c = vec![0.0; d];
        let mut tmp = vec![0.0; d + f.eigen.len()];
        f.shift_sum.resize(d, 0.0);
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
            }
            let (rt, rq) = (f.t2 / f.t2_limit, f.q / f.q_limit);
            let meta = scratch.meta[i];
            f.above = if rt > 1.0 || rq > 1.0 { f.above + 1 } else { 0 };
            let released = rt < config.process_release && rq < config.process_release;
            f.below = if released { f.below + 1 } else { 0 };

            // Persistence, or one observation far beyond a limit.
            let at_once = rt.max(rq) > config.process_open_factor;
            match f.open {
                None if f.above >= confirm || at_once => {
                    let draft = f.draft(&self.tags, x, rt, rq, &meta, config);
                    f.open = Some((meta.first_seq, draft.name.clone()));
                    f.open_since = meta.ts;
                    f.shift_sum.copy_from_slice(&c);
                    f.shift_count = 1;
                    out.push(ProcessFinding::Opened {
                        row: meta.row,
                        draft,
                    });
                }
                Some(_) if f.below >= confirm => {
                    let (first_seq, name) = f.open.take().expect("open");
                    out.push(ProcessFinding::Closed {
                        ts: meta.ts,
                        first_seq,
                        name,
                    });
                }
                Some(_) => {
                    for j in 0..d {
                        f.shift_sum[j] += c[j];
                    }
                    f.shift_count += 1;
                }
                None => {}
            }
            f.last_ts = Some(meta.ts);
        }
        scratch.obs.clear();
        scratch.meta.clear();
    }

    /// The SOC accepts the open episode whose alert was raised at
    /// `first_seq`: its mean deviation becomes normal (see the module
    /// documentation), the smoothed statistics start again, and the episode
    /// ends at `at` (the detector's event time). Returns what changed, or
    /// why nothing could be accepted.
    pub fn accept(&mut self, first_seq: u64, at: i64) -> Result<Accepted, String> {
        let tags = &self.tags;
        let Some(f) = self.fitted.as_mut() else {
            return Err("the asset has no process model".into());
        };
        let Some((open_seq, name)) = f.open.clone() else {
            return Err("its episode is over (the process came back): nothing to accept".into());
        };
        if open_seq != first_seq {
            return Err("its episode is over; another one is open".into());
        }
        let d = f.centre.len();
        let count = f.shift_count.max(1) as f64;
        let mut moved = Vec::new();
        // The accepted level, centred and scaled as the model now stands.
        let mut held = f.mean.clone();
        for j in 0..d {
            let shift = f.shift_sum.get(j).copied().unwrap_or(0.0) / count;
            let old = f.centre[j];
            // Every variable follows the episode half way, those that
            // barely moved too, and no variable's scale changes on its own:
            // either would break the learned relationships between
            // variables that moved together, and open a Q episode at the
            // accepted level.
            f.centre[j] += f.scale[j] * shift / 2.0;
            held[j] += shift / 2.0;
            if shift.abs() >= 1.0 {
                moved.push(format!(
                    "{} {} → {}",
                    tags[f.vars[j]],
                    num(old),
                    num(old + 2.0 * (f.centre[j] - old))
                ));
            }
        }
        // The learned and the accepted level now sit half the move from the
        // centre on either side, and the learned noise comes on top of
        // either: T² and Q are quadratic, so noise along the move adds to
        // it. The model widens where the level plus noise at its learned
        // extent (about NOISE_SHARE of a limit) would cross the limit, and
        // only in the directions that moved: the variance of the components
        // that carry the move's T², and the Q limit if the move itself left
        // the learned relationships.
        let mut tmp = vec![0.0; d + f.eigen.len()];
        let (t2, q) = f.statistics(&held, &mut tmp);
        let needed = |x: f64| (x.sqrt() + NOISE_SHARE.sqrt()).powi(2);
        let mut widened = Vec::new();
        let k = f.eigen.len();
        let w = needed(t2 / f.t2_limit);
        if w > 1.0 {
            for a in 0..k {
                let t = tmp[d + a];
                // The components carrying at least their share of the move.
                if t * t / f.eigen[a] * k as f64 >= t2 {
                    f.eigen[a] *= w;
                    widened.push(format!("component {} ×{:.1}", a + 1, w.sqrt()));
                }
            }
        }
        let w = needed(q / f.q_limit);
        if w > 1.0 {
            f.q_limit *= w;
            widened.push(format!("Q limit ×{w:.1}"));
        }
        if !widened.is_empty() {
            moved.push(format!(
                "tolerance widened along the move ({})",
                widened.join(", ")
            ));
        }
        f.t2 = 0.0;
        f.q = 0.0;
        f.z = vec![0.0; d];
        f.above = 0;
        f.open = None;
        f.shift_sum = vec![0.0; d];
        f.shift_count = 0;
        f.accepted += 1;
        f.accepted_at = Some(at);
        Ok(Accepted {
            name,
            first_seq,
            changed: if moved.is_empty() {
                "no variable moved by a scale unit on average: the limits stay as learned".into()
            } else {
                moved.join(", ")
            },
        })
    }

    /// What the model knows, for `otwatch model status`.
    pub fn report(&self, learning: bool) -> Option<ProcessReport> {
        if self.tags.is_empty() {
            return None;
        }
        if let Some(f) = &self.fitted {
            let (rt, rq) = (f.t2 / f.t2_limit, f.q / f.q_limit);
            let vars: Vec<&str> = f.vars.iter().map(|&v| self.tags[v].as_str()).collect();
            let mut baseline = format!(
                "{} variables ({}) fitted on {} observations over {}, one every {}, {} components; T² {:.2}×, Q {:.2}× of their limits now",
                vars.len(),
                vars.join(", "),
                f.fitted_on,
                crate::alert::duration(f.learned_until - f.learned_from),
                crate::alert::duration(f.cadence_ns.max(1)),
                f.eigen.len(),
                rt,
                rq
            );
            if !f.excluded.is_empty() {
                baseline += &format!("; left to the discrete model: {}", f.excluded.join(", "));
            }
            if f.accepted > 0 {
                baseline += &format!("; {} deviation(s) accepted", f.accepted);
            }
            return Some(ProcessReport {
                state: "protecting",
                baseline,
                open: f.open.clone().map(|(seq, name)| (seq, name, f.open_since)),
            });
        }
        let (state, baseline) = match &self.unfitted {
            Some(why) => (
                "not fitted",
                format!("no process model: {why}; relearn over a longer window"),
            ),
            None if learning => (
                "learning",
                format!(
                    "{} observation(s) of {} variable(s) so far",
                    self.learn.len(),
                    self.tags.len()
                ),
            ),
            None => ("learning", "fitted at its next observation".into()),
        };
        Some(ProcessReport {
            state,
            baseline,
            open: None,
        })
    }
}

/// What [`ProcessModel::accept`] changed.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// Name the episode's alert carries.
    pub name: String,
    pub first_seq: u64,
    /// The variables re-centred and widened, in words.
    pub changed: String,
}

/// The process model's part of `otwatch model status`.
#[derive(Debug, Clone)]
pub(crate) struct ProcessReport {
    pub state: &'static str,
    pub baseline: String,
    /// The open episode: first sequence number, alert name, since when.
    pub open: Option<(u64, String, i64)>,
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

    /// EWMA weight of an observation: `1 − exp(−cadence / process_smoothing)`
    /// (0.1 for a model fitted by an older otwatch).
    fn alpha(&self, config: &DetectorConfig) -> f64 {
        if self.cadence_ns <= 0 {
            return 0.1;
        }
        let tau = config.process_smoothing.as_nanos().max(1) as f64;
        -(-(self.cadence_ns as f64) / tau).exp_m1()
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

/// PCA of the rows `rows` of the scaled observations `z` (row-major, `d`
/// columns): their mean, the loadings (row-major `d × k`) and variances of
/// the components kept, the fewest that explain `variance` (at most
/// `d − 1`, so Q has a residual, and no more than the rows span). `None`
/// when the eigendecomposition fails.
fn components(
    z: &[f64],
    rows: &[usize],
    d: usize,
    variance: f64,
) -> Option<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let n = rows.len();
    let mut mean = vec![0.0; d];
    for &i in rows {
        for j in 0..d {
            mean[j] += z[i * d + j];
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = Array2::<f64>::zeros((d, d));
    for &i in rows {
        for a in 0..d {
            let za = z[i * d + a] - mean[a];
            for b in a..d {
                cov[[a, b]] += za * (z[i * d + b] - mean[b]);
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            let c = cov[[a, b]] / (n.max(2) - 1) as f64;
            cov[[a, b]] = c;
            cov[[b, a]] = c;
        }
    }
    let (values, vectors) = cov.eigh_into().ok()?;
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    let top = values[order[0]].max(f64::MIN_POSITIVE);
    let total: f64 = order.iter().map(|&i| values[i].max(0.0)).sum();
    let mut k = 0;
    let mut cum = 0.0;
    while k < d {
        cum += values[order[k]].max(0.0);
        k += 1;
        if cum >= variance * total {
            break;
        }
    }
    let k = k.clamp(1, (d - 1).min(n.saturating_sub(1)).max(1));
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
    Some((mean, loadings, eigen))
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
