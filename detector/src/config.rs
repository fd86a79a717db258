//! The `[detector]` configuration section: learning, thresholds, debounce.
//!
//! Every duration is event time (the timestamps of the events), never wall
//! clock. The defaults suit machines that cycle every few seconds to a few
//! minutes and a learning window of half an hour or more.
//!
//! No option makes anything normal by itself: what the models learned
//! changes only through a learning window (`learn`, or `otwatch model
//! relearn`) or a decision of the SOC (`otwatch model accept`). The time
//! scales that remain are reaction times (how long a deviation must be seen
//! before it is an episode, how much the process statistics are smoothed),
//! expressed in event time or in observations, so a process sampled every
//! hour is judged with the same limits logic as one sampled every second.

use crate::DetectorError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[detector]` section of the otwatch config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Event time an asset (and a site's access model) learns before it
    /// protects, counted from its first event.
    #[serde(with = "humantime_serde")]
    pub learn: Duration,
    /// CYCLE events an asset must have sent before it leaves learning, even
    /// when `learn` is over. Assets that send no cycles at all leave after `learn`.
    pub min_learning_cycles: u64,
    /// Values a CYCLE or SAMPLE series must have learned, within its asset's
    /// learning window, to be scored. A series with fewer when the window
    /// ends is not scored (`otwatch model status` says so; relearn over a
    /// longer window): it never goes on learning from protected data. A
    /// series first seen once its asset protects is not modelled either.
    pub min_series_points: usize,
    /// Most learning values kept per series. Beyond it the kept sample is
    /// thinned evenly (every 2nd, then every 4th value, ...), so memory stays
    /// bounded however long learning lasts.
    pub max_learning_values: usize,
    /// Robust z-score, |x − median| / (1.4826·MAD), from which a single value
    /// is an outlier.
    pub outlier_z: f64,
    /// CUSUM allowance k, in standard deviations: shifts smaller than k do not
    /// accumulate.
    pub cusum_k: f64,
    /// CUSUM decision threshold h, in standard deviations: the accumulated
    /// shift at which a slow drift is reported.
    pub cusum_h: f64,
    /// Half-width of the `expected_low..expected_high` band reported in
    /// alerts, in robust standard deviations around the learned centre.
    pub expected_band: f64,
    /// Smallest spread a series may have, as a fraction of its centre's
    /// magnitude, so that a tag that never moved while learning does not
    /// turn rounding noise into infinite scores.
    pub min_relative_spread: f64,
    /// Coefficient of determination (R²) from which a SAMPLE tag is modelled
    /// as a straight line of its asset's latest cycle duration and scored on
    /// its residual; below it the raw value is scored.
    pub relationship_min_r2: f64,
    /// An asset in a running mode is silent when its site's watermark passes
    /// its last event by this many times its largest learned gap.
    pub silence_factor: f64,
    /// Silence is never reported before this much time without events.
    #[serde(with = "humantime_serde")]
    pub silence_min: Duration,
    /// STATE texts in which an asset is expected to keep reporting (compared
    /// case-insensitively). An asset whose mode is unknown counts as running.
    pub running_modes: Vec<String>,
    /// Window over which event rates are counted (tumbling, aligned to the epoch).
    #[serde(with = "humantime_serde")]
    pub burst_window: Duration,
    /// A window holding more than `burst_factor` × the learned busiest window
    /// (and at least `burst_min_excess` more events) is a burst.
    pub burst_factor: f64,
    /// See `burst_factor`.
    pub burst_min_excess: u64,
    /// An alert episode closes after this many consecutive normal points ...
    pub episode_close_points: u32,
    /// ... or after this much event time without an abnormal point.
    #[serde(with = "humantime_serde")]
    pub episode_quiet: Duration,
    /// A SAMPLE tag that takes at most this many distinct values while
    /// learning, all of them integers (coils, status bits, modes held as
    /// numbers), or a single value of any kind (a tag constant while
    /// learning), is modelled as a discrete state: the values and
    /// transitions seen, and how often it changes. An unseen value or
    /// transition is the alert, a seen toggle is not. Such tags are left out
    /// of the `process` model. 0 models every tag as continuous.
    pub discrete_max_values: usize,
    /// Run the `process` model: each asset's SAMPLE tags (and its cycle time)
    /// modelled jointly with PCA, Hotelling T² and Q/SPE.
    pub process: bool,
    /// Variables (tags, plus the cycle time) an asset needs for a process model.
    pub process_min_tags: usize,
    /// Observations (rows of SAMPLE tags sharing a timestamp) the process
    /// model needs from its asset's learning window to be fitted; with
    /// fewer it is not fitted (`otwatch model status` says so) and never
    /// goes on learning from protected data.
    pub process_min_observations: usize,
    /// Most learning observations kept per asset (the most recent ones).
    pub process_max_learning_observations: usize,
    /// Fraction of the scaled variance the kept principal components explain.
    /// The rest is the residual that Q/SPE measures.
    pub process_variance: f64,
    /// How much a slowly wandering variable's scale is widened: its standard
    /// deviation times `((1 + ρ) / (1 − ρ))^exponent`, ρ its lag-1
    /// autocorrelation while learning. 0 scales by the standard deviation alone.
    pub process_drift_exponent: f64,
    /// Largest ρ used in that widening (caps it for near-constant ramps).
    pub process_max_autocorrelation: f64,
    /// Time constant of the EWMA that smooths T² and Q (event time). Each
    /// observation weighs `1 − exp(−cadence / process_smoothing)`, with
    /// `cadence` the asset's learned interval between observations: at one
    /// observation per second about 0.1, at one per minute or slower each
    /// observation is judged on its own.
    #[serde(with = "humantime_serde")]
    pub process_smoothing: Duration,
    /// Control limits: this quantile of the smoothed statistics over the
    /// learning observations ...
    pub process_quantile: f64,
    /// ... but at least the statistic's learning mean plus this many standard
    /// deviations of its EWMA (as if observations were independent) ...
    pub process_limit_floor_z: f64,
    /// ... times this margin.
    pub process_margin: f64,
    /// A process episode opens after this many consecutive observations
    /// above a limit (observations at the asset's cadence, whatever it is),
    /// and closes after as many below the release limits.
    pub process_open_points: u32,
    /// One observation above this multiple of a limit opens an episode at
    /// once.
    pub process_open_factor: f64,
    /// An open process episode closes when both smoothed statistics have
    /// been below this fraction of their limits for `process_open_points`
    /// observations (hysteresis).
    pub process_release: f64,
    /// Tags named in a process alert, the largest contributors first.
    pub process_top_tags: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            learn: Duration::from_secs(30 * 60),
            min_learning_cycles: 50,
            min_series_points: 30,
            max_learning_values: 4096,
            outlier_z: 6.0,
            cusum_k: 1.0,
            cusum_h: 12.0,
            expected_band: 3.0,
            min_relative_spread: 0.001,
            relationship_min_r2: 0.5,
            silence_factor: 5.0,
            silence_min: Duration::from_secs(30),
            running_modes: vec!["RUN".into()],
            burst_window: Duration::from_secs(10),
            burst_factor: 4.0,
            burst_min_excess: 20,
            episode_close_points: 20,
            episode_quiet: Duration::from_secs(10 * 60),
            discrete_max_values: 8,
            process: true,
            process_min_tags: 2,
            process_min_observations: 5,
            process_max_learning_observations: 20_000,
            process_variance: 0.6,
            process_drift_exponent: 1.5,
            process_max_autocorrelation: 0.98,
            process_smoothing: Duration::from_secs(10),
            process_quantile: 0.99,
            process_limit_floor_z: 4.0,
            process_margin: 1.5,
            process_open_points: 3,
            process_open_factor: 2.0,
            process_release: 0.8,
            process_top_tags: 3,
        }
    }
}

impl DetectorConfig {
    /// Checks the values [`crate::Detector`] cannot work with.
    pub fn validate(&self) -> Result<(), DetectorError> {
        let positive = [
            ("outlier_z", self.outlier_z),
            ("cusum_h", self.cusum_h),
            ("expected_band", self.expected_band),
            ("silence_factor", self.silence_factor),
            ("burst_factor", self.burst_factor),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(DetectorError::Config(format!(
                    "{name} must be a positive number, not {value}"
                )));
            }
        }
        let non_negative = [
            ("cusum_k", self.cusum_k),
            ("min_relative_spread", self.min_relative_spread),
            ("relationship_min_r2", self.relationship_min_r2),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(DetectorError::Config(format!(
                    "{name} must be a number >= 0, not {value}"
                )));
            }
        }
        if self.burst_window.is_zero() {
            return Err(DetectorError::Config(
                "burst_window must be longer than 0".into(),
            ));
        }
        if self.min_series_points < 3 {
            return Err(DetectorError::Config(
                "min_series_points must be at least 3".into(),
            ));
        }
        if self.max_learning_values < 2 * self.min_series_points {
            return Err(DetectorError::Config(
                "max_learning_values must be at least twice min_series_points".into(),
            ));
        }
        let fractions = [
            ("process_variance", self.process_variance),
            ("process_quantile", self.process_quantile),
            ("process_release", self.process_release),
        ];
        for (name, value) in fractions {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(DetectorError::Config(format!(
                    "{name} must be in (0, 1], not {value}"
                )));
            }
        }
        if !(self.process_max_autocorrelation >= 0.0 && self.process_max_autocorrelation < 1.0) {
            return Err(DetectorError::Config(format!(
                "process_max_autocorrelation must be in [0, 1), not {}",
                self.process_max_autocorrelation
            )));
        }
        if !(self.process_drift_exponent.is_finite() && self.process_drift_exponent >= 0.0) {
            return Err(DetectorError::Config(format!(
                "process_drift_exponent must be a number >= 0, not {}",
                self.process_drift_exponent
            )));
        }
        if !(self.process_limit_floor_z.is_finite() && self.process_limit_floor_z >= 0.0) {
            return Err(DetectorError::Config(format!(
                "process_limit_floor_z must be a number >= 0, not {}",
                self.process_limit_floor_z
            )));
        }
        if !(self.process_open_factor.is_finite() && self.process_open_factor >= 1.0) {
            return Err(DetectorError::Config(format!(
                "process_open_factor must be a number >= 1, not {}",
                self.process_open_factor
            )));
        }
        if !(self.process_margin.is_finite() && self.process_margin > 0.0) {
            return Err(DetectorError::Config(format!(
                "process_margin must be a positive number, not {}",
                self.process_margin
            )));
        }
        if self.process_open_points == 0 {
            return Err(DetectorError::Config(
                "process_open_points must be at least 1".into(),
            ));
        }
        if self.process_smoothing.is_zero() {
            return Err(DetectorError::Config(
                "process_smoothing must be longer than 0 (a very short one judges each observation on its own)".into(),
            ));
        }
        if self.process_min_tags < 2 {
            return Err(DetectorError::Config(
                "process_min_tags must be at least 2".into(),
            ));
        }
        if self.process_min_observations < 3 {
            return Err(DetectorError::Config(
                "process_min_observations must be at least 3".into(),
            ));
        }
        if self.process_max_learning_observations < 2 * self.process_min_observations {
            return Err(DetectorError::Config(
                "process_max_learning_observations must be at least twice process_min_observations"
                    .into(),
            ));
        }
        if self.episode_close_points == 0 {
            return Err(DetectorError::Config(
                "episode_close_points must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Reads the copy of the configuration a checkpoint holds, leniently:
    /// options an older otwatch had and this one has not (or whose type
    /// changed) are dropped, missing ones take their defaults. The copy only
    /// serves to report what changed, since the configured options always
    /// win ([`crate::Detector::reconfigure`]).
    pub(crate) fn from_checkpoint(value: serde_json::Value) -> DetectorConfig {
        let serde_json::Value::Object(stored) = value else {
            return DetectorConfig::default();
        };
        let mut config = serde_json::to_value(DetectorConfig::default()).expect("serializes");
        for (key, v) in stored {
            let serde_json::Value::Object(map) = &mut config else {
                unreachable!("a struct serializes to an object")
            };
            if !map.contains_key(&key) {
                continue;
            }
            let before = map.insert(key.clone(), v);
            if serde_json::from_value::<DetectorConfig>(config.clone()).is_err() {
                if let (serde_json::Value::Object(map), Some(before)) = (&mut config, before) {
                    map.insert(key, before);
                }
            }
        }
        serde_json::from_value(config).unwrap_or_default()
    }

    /// The names of the options whose values differ between `self` and
    /// `other`, sorted by name.
    pub fn differences(&self, other: &DetectorConfig) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return Vec::new();
        };
        a.iter()
            .filter(|(key, value)| b.get(*key) != Some(*value))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The durations in nanoseconds and the derived values the hot loops use.
    pub(crate) fn resolved(&self) -> Resolved {
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX / 4);
        Resolved {
            learn_ns: ns(self.learn),
            silence_min_ns: ns(self.silence_min),
            burst_window_ns: ns(self.burst_window).max(1),
            quiet_ns: ns(self.episode_quiet),
        }
    }
}

/// Serde of [`DetectorConfig`] inside a checkpoint: written as is, read with
/// [`DetectorConfig::from_checkpoint`].
pub(crate) mod lenient {
    use super::DetectorConfig;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(c: &DetectorConfig, s: S) -> Result<S::Ok, S::Error> {
        c.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DetectorConfig, D::Error> {
        Ok(DetectorConfig::from_checkpoint(
            serde_json::Value::deserialize(d)?,
        ))
    }
}

/// [`DetectorConfig`] durations in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub learn_ns: i64,
    pub silence_min_ns: i64,
    pub burst_window_ns: i64,
    pub quiet_ns: i64,
}
