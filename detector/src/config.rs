//! The `[detector]` configuration section: learning, thresholds, debounce.
//!
//! Every duration is event time (the timestamps of the events), never wall
//! clock. The defaults suit machines that cycle every few seconds to a few
//! minutes and a learning window of half an hour or more.

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
    /// Learned values a CYCLE or SAMPLE series needs before it is scored. A
    /// series that first appears once its asset protects learns this many
    /// values of its own first.
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
        if self.episode_close_points == 0 {
            return Err(DetectorError::Config(
                "episode_close_points must be at least 1".into(),
            ));
        }
        Ok(())
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

/// [`DetectorConfig`] durations in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub learn_ns: i64,
    pub silence_min_ns: i64,
    pub burst_window_ns: i64,
    pub quiet_ns: i64,
}
