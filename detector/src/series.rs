//! The `cycle` and `sample` models: one [`Series`] per (site, asset, name) of
//! CYCLE durations or SAMPLE tag values.
//!
//! A series learns while its asset learns (and until it holds
//! `min_series_points` values), then protects:
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
//!
//! Scoring runs over a series' rows of one batch in one tight loop.

use crate::alert::{num, Draft};
use crate::config::{DetectorConfig, Resolved};
use crate::stats::{median, Cusum, Drift, Episode, Line, Sampler, Spread};
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
        }
    }

    pub fn protecting(&self) -> bool {
        self.model.is_some()
    }

    /// Runs the series over its rows of a batch. Rows from `protect_from`
    /// on are scored once the series has learned enough; earlier ones are learned.
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
                let due = protect_from.is_some_and(|p| input.ts[i] >= p);
                if due && sampler.len() >= config.min_series_points {
                    break;
                }
                let x = Some(input.ctx[i]).filter(|x| x.is_finite());
                sampler.push(
                    input.value[i],
                    with_x.then_some(x),
                    config.max_learning_values,
                );
                first_scored += 1;
            }
            if first_scored == n {
                return;
            }
            let sampler = self.learning.take().expect("learning");
            self.model = Some(self.learn(&sampler, config));
        }
        let model = self.model.expect("protecting");
        self.score(first_scored, input, &model, config, resolved, out);
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
                continue;
            }
            if episode.abnormal(ts[r], quiet) {
                let drift = if outlier { None } else { drift };
                let draft = self.draft(r, input, model, z, drift, config);
                out.push(Finding {
                    row: input.row[r],
                    draft,
                });
            }
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
