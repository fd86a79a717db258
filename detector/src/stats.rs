//! The statistics the models share: robust centre and spread, a least-squares
//! line, a two-sided CUSUM, bounded learning samples and alert episodes.
//!
//! Everything here is plain data that serializes with the detector's
//! checkpoint, and every value kept is finite (JSON has no NaN), so a
//! checkpoint always reads back.

use serde::{Deserialize, Serialize};

/// Scale factor turning a median absolute deviation into a standard
/// deviation for normally distributed data.
const MAD_TO_SD: f64 = 1.4826;

/// Values further than this many robust deviations from the median are left
/// out of the mean and standard deviation, so a few odd learning values do not
/// widen the model.
const INLIER_LIMIT: f64 = 4.0;

/// Median of `v`, reordering it. `v` must not be empty.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *m;
    if v.len() % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// What a series learned about one quantity (a value or a residual).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Spread {
    /// Median.
    pub centre: f64,
    /// The scale of the outlier test and of the reported expected band: the
    /// larger of 1.4826 × MAD and the inliers' standard deviation, and at
    /// least the floor. The MAD alone collapses on small or coarsely rounded
    /// samples (a tag logged with one decimal can have a MAD of two steps);
    /// the inlier deviation keeps it honest without letting outliers in.
    pub spread: f64,
    /// Mean and standard deviation of the inliers (within four robust
    /// deviations of the median). The CUSUM standardizes with these: the MAD
    /// is robust but noisy (37 % efficiency), and a CUSUM summing hundreds of
    /// slightly biased z-scores would drift into false alarms.
    pub mean: f64,
    pub sd: f64,
}

impl Spread {
    /// Robust statistics of `values` (not empty); spreads are at least `floor` (> 0).
    pub fn of(values: &[f64], floor: f64) -> Spread {
        let mut v = values.to_vec();
        let centre = median(&mut v);
        for x in v.iter_mut() {
            *x = (*x - centre).abs();
        }
        let mad_spread = (MAD_TO_SD * median(&mut v)).max(floor);
        let limit = INLIER_LIMIT * mad_spread;
        let inliers = || {
            values
                .iter()
                .copied()
                .filter(move |x| (x - centre).abs() <= limit)
        };
        let n = inliers().count().max(1) as f64;
        let mean = inliers().sum::<f64>() / n;
        let var = inliers().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0).max(1.0);
        let sd = var.sqrt().max(floor);
        Spread {
            centre,
            spread: mad_spread.max(sd),
            mean,
            sd,
        }
    }
}

/// A least-squares line `y = a + b·x`, with where its `x` were seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Line {
    pub a: f64,
    pub b: f64,
    /// Coefficient of determination on the learning data.
    pub r2: f64,
    /// Robust centre and spread of the learning `x`: the line is trusted only
    /// near the `x` it was fitted on.
    pub x_centre: f64,
    pub x_spread: f64,
}

impl Line {
    /// Fits `ys` on `xs` (same length); `None` when `x` or `y` never varied.
    pub fn fit(xs: &[f64], ys: &[f64]) -> Option<Line> {
        let n = xs.len() as f64;
        if xs.len() < 3 {
            return None;
        }
        let mx = xs.iter().sum::<f64>() / n;
        let my = ys.iter().sum::<f64>() / n;
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        for (x, y) in xs.iter().zip(ys) {
            let (dx, dy) = (x - mx, y - my);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
        if sxx <= 0.0 || syy <= 0.0 {
            return None;
        }
        let b = sxy / sxx;
        let a = my - b * mx;
        let r2 = (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0);
        let x = Spread::of(xs, (mx.abs() * 1e-6).max(f64::MIN_POSITIVE));
        Some(Line {
            a,
            b,
            r2,
            x_centre: x.centre,
            x_spread: x.spread,
        })
    }

    #[inline]
    pub fn at(&self, x: f64) -> f64 {
        self.a + self.b * x
    }
}

/// Two-sided tabular CUSUM on standardized values, remembering where the
/// current rise began so that an alert can name the events behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cusum {
    hi: f64,
    lo: f64,
    hi_first_seq: u64,
    lo_first_seq: u64,
    hi_count: u64,
    lo_count: u64,
}

/// A CUSUM crossing its threshold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drift {
    pub upward: bool,
    /// The statistic when it crossed.
    pub value: f64,
    /// The run of points that built it up.
    pub first_seq: u64,
    pub count: u64,
}

impl Cusum {
    /// Adds standardized value `z`. Returns the drift when a side crosses `h`;
    /// that side then restarts from zero, so a persisting drift keeps
    /// signalling (and keeps its episode open) while a finished one falls silent.
    #[inline]
    pub fn update(&mut self, z: f64, k: f64, h: f64, seq: u64) -> Option<Drift> {
        // Written as selects, not branches: whether a side sits at zero is
        // noise-driven and would mispredict half the time.
        let hi_fresh = self.hi == 0.0;
        let lo_fresh = self.lo == 0.0;
        self.hi_first_seq = if hi_fresh { seq } else { self.hi_first_seq };
        self.lo_first_seq = if lo_fresh { seq } else { self.lo_first_seq };
        self.hi_count = if hi_fresh { 1 } else { self.hi_count + 1 };
        self.lo_count = if lo_fresh { 1 } else { self.lo_count + 1 };
        self.hi = (self.hi + z - k).max(0.0);
        self.lo = (self.lo - z - k).max(0.0);
        if self.hi > h {
            let drift = Drift {
                upward: true,
                value: self.hi,
                first_seq: self.hi_first_seq,
                count: self.hi_count,
            };
            self.hi = 0.0;
            Some(drift)
        } else if self.lo > h {
            let drift = Drift {
                upward: false,
                value: self.lo,
                first_seq: self.lo_first_seq,
                count: self.lo_count,
            };
            self.lo = 0.0;
            Some(drift)
        } else {
            None
        }
    }
}

/// The learning values of a series, bounded: once `cap` values are held,
/// every second one is dropped and from then on only every second (fourth,
/// ...) value is kept, so the sample stays spread evenly over the whole
/// learning period, deterministically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sampler {
    pub y: Vec<f64>,
    /// Paired explanatory value (a SAMPLE's cycle duration); empty for series
    /// that have none.
    pub x: Vec<Option<f64>>,
    keep_every: u64,
    seen: u64,
}

impl Sampler {
    pub fn push(&mut self, y: f64, x: Option<Option<f64>>, cap: usize) {
        let every = self.keep_every.max(1);
        if self.seen.is_multiple_of(every) {
            self.y.push(y);
            if let Some(x) = x {
                self.x.push(x);
            }
        }
        self.seen += 1;
        if self.y.len() >= cap.max(2) {
            let mut i = 0;
            self.y.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            let mut i = 0;
            self.x.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.keep_every = every * 2;
        }
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }
}

/// Debounce: one alert per episode of abnormal points. An episode opens at
/// the first abnormal point and closes after `close_points` consecutive
/// normal points or `quiet_ns` of event time without an abnormal one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Episode {
    open: bool,
    last_abnormal_ns: i64,
    normal_run: u32,
    /// When the current (or last) episode opened.
    #[serde(default)]
    since_ns: i64,
}

impl Episode {
    /// Records an abnormal point; `true` when it opens a new episode, that is
    /// when an alert is due.
    #[inline]
    pub fn abnormal(&mut self, ts: i64, quiet_ns: i64) -> bool {
        let new = !self.open || ts.saturating_sub(self.last_abnormal_ns) >= quiet_ns;
        if new {
            self.since_ns = ts;
        }
        self.open = true;
        self.last_abnormal_ns = ts;
        self.normal_run = 0;
        new
    }

    /// Whether an episode is open (it may still close by quiet time).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// When the episode open at event time `at` began, if one is.
    pub fn open_since(&self, at: i64, quiet_ns: i64) -> Option<i64> {
        (self.open && at.saturating_sub(self.last_abnormal_ns) < quiet_ns).then_some(self.since_ns)
    }

    /// Records a normal point.
    #[inline]
    pub fn normal(&mut self, ts: i64, close_points: u32, quiet_ns: i64) {
        if self.open {
            self.normal_run += 1;
            if self.normal_run >= close_points
                || ts.saturating_sub(self.last_abnormal_ns) >= quiet_ns
            {
                self.open = false;
            }
        }
    }
}

/// Events per tumbling window (aligned to the epoch), with the busiest window
/// seen while learning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateWindow {
    start: i64,
    end: i64,
    count: u64,
    first_seq: u64,
    /// The window began while learning; its count feeds `learned_max`.
    learning: bool,
    active: bool,
    pub learned_max: u64,
    /// The most events the current window may hold, fixed when it opens.
    limit: u64,
}

/// What counting one event into a [`RateWindow`] found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateStep {
    /// A protecting window ended within the limit: a normal point.
    pub closed_normal: bool,
    /// This event took a protecting window over the limit (once per window).
    pub over: bool,
}

impl RateWindow {
    /// The most events the current window may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// End (exclusive) of the current window.
    pub fn end(&self) -> i64 {
        self.end
    }

    /// Counts `more` events known to fall in the current window. Returns the
    /// position (1-based, among them) of the event that takes a protecting
    /// window over its limit, if one does.
    #[inline]
    pub fn add_in_window(&mut self, more: u64) -> Option<u64> {
        let before = self.count;
        self.count += more;
        let over_at = self.limit + 1;
        (!self.learning && before < over_at && self.count >= over_at).then(|| over_at - before)
    }

    /// Counts an event at `ts`. A window holding more than `factor` × the
    /// busiest learned window, and at least `min_excess` more, is over.
    #[inline]
    pub fn add(
        &mut self,
        ts: i64,
        seq: u64,
        learning: bool,
        window_ns: i64,
        factor: f64,
        min_excess: u64,
    ) -> RateStep {
        let mut step = RateStep::default();
        if !(self.active && ts >= self.start && ts < self.end) {
            if self.active {
                if self.learning {
                    self.learned_max = self.learned_max.max(self.count);
                } else {
                    step.closed_normal = self.count <= self.limit;
                }
            }
            // ceil by hand: `f64::ceil` is a libm call, not an instruction, here.
            let max = self.learned_max;
            let scaled = max as f64 * factor;
            let whole = scaled as u64;
            let ceil = whole + u64::from((whole as f64) < scaled);
            self.limit = ceil.max(max + min_excess);
            self.start = ts.div_euclid(window_ns) * window_ns;
            self.end = self.start + window_ns;
            self.count = 0;
            self.first_seq = seq;
            self.learning = learning;
            self.active = true;
        }
        self.count += 1;
        step.over = !self.learning && self.count == self.limit + 1;
        step
    }
}

/// How much wider a control limit learned from `n` observations must be
/// than one learned from very many, for a statistic with `k` degrees of
/// freedom at quantile `p`: the ratio of Hotelling's prediction limit for a
/// new observation, `k(n−1)(n+1) / (n(n−k)) · F(k, n−k; p)`, to its limit
/// for n → ∞, `χ²(k; p) = k · F(k, ∞; p)`. About 1.25 for 40 observations
/// of 3 components, 7.6 for 7. 1 when `n ≤ k + 1` cannot be judged (the
/// caller needs more observations than components).
pub(crate) fn small_sample_factor(n: usize, k: usize, p: f64) -> f64 {
    if n <= k + 1 || k == 0 {
        return 1.0;
    }
    let (nf, kf) = (n as f64, k as f64);
    let finite = kf * (nf - 1.0) * (nf + 1.0) / (nf * (nf - kf)) * f_quantile(kf, nf - kf, p);
    let asymptotic = kf * f_quantile(kf, 1e7, p);
    (finite / asymptotic).max(1.0)
}

/// The `p` quantile of the F distribution with `d1`, `d2` degrees of
/// freedom, by bisection on the regularized incomplete beta function.
pub(crate) fn f_quantile(d1: f64, d2: f64, p: f64) -> f64 {
    let (a, b) = (d1 / 2.0, d2 / 2.0);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if incomplete_beta(a, b, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let x = 0.5 * (lo + hi);
    d2 * x / (d1 * (1.0 - x))
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction,
/// as in Numerical Recipes).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f_quantiles_match_the_tables() {
        // F(3, 4; 0.99) = 16.69, F(2, 10; 0.95) = 4.10, F(5, 30; 0.99) = 3.70.
        assert!((f_quantile(3.0, 4.0, 0.99) - 16.69).abs() < 0.01);
        assert!((f_quantile(2.0, 10.0, 0.95) - 4.103).abs() < 0.001);
        assert!((f_quantile(5.0, 30.0, 0.99) - 3.699).abs() < 0.001);
        // χ²(3; 0.99) = 11.34 through F(3, ∞).
        assert!((3.0 * f_quantile(3.0, 1e7, 0.99) - 11.345).abs() < 0.01);
        assert!((small_sample_factor(7, 3, 0.99) - 7.57).abs() < 0.05);
        assert!(small_sample_factor(4000, 3, 0.99) < 1.01);
    }

    #[test]
    fn robust_statistics_ignore_a_few_wild_values() {
        let mut values: Vec<f64> = (0..101).map(|i| 100.0 + (i as f64 - 50.0) / 50.0).collect();
        values[3] = 1e6;
        values[7] = -1e6;
        let s = Spread::of(&values, 1e-9);
        assert!((s.centre - 100.0).abs() < 0.05, "{s:?}");
        assert!(s.spread > 0.5 && s.spread < 1.0, "{s:?}");
        assert!((s.mean - 100.0).abs() < 0.05 && s.sd < 1.0, "{s:?}");
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn line_recovers_slope_and_intercept() {
        let xs: Vec<f64> = (0..50).map(|i| 10.0 + i as f64 * 0.1).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 3.0 + 0.5 * x).collect();
        let l = Line::fit(&xs, &ys).unwrap();
        assert!((l.a - 3.0).abs() < 1e-9 && (l.b - 0.5).abs() < 1e-9 && l.r2 > 0.999);
        assert!(Line::fit(&[1.0; 10], &ys[..10]).is_none());
    }

    #[test]
    fn cusum_signals_a_sustained_shift_and_not_noise_around_zero() {
        let mut c = Cusum::default();
        for i in 0..1000 {
            let z = if i % 2 == 0 { 0.9 } else { -0.9 };
            assert!(c.update(z, 1.0, 10.0, i).is_none());
        }
        let hit = (1000..1100)
            .find_map(|i| c.update(3.0, 1.0, 10.0, i))
            .unwrap();
        assert!(hit.upward && hit.first_seq == 1000 && hit.count == 6);
    }

    #[test]
    fn sampler_stays_bounded_and_spread_out() {
        let mut s = Sampler::default();
        for i in 0..10_000 {
            s.push(i as f64, None, 100);
        }
        assert!(s.len() < 100 && s.len() >= 50);
        assert!(*s.y.last().unwrap() > 9000.0 && s.y[0] == 0.0);
    }

    #[test]
    fn episode_opens_once_and_closes_after_normal_points_or_quiet() {
        let mut e = Episode::default();
        assert!(e.abnormal(0, 100));
        assert!(!e.abnormal(10, 100));
        e.normal(11, 3, 100);
        e.normal(12, 3, 100);
        assert!(!e.abnormal(13, 100));
        for t in 14..17 {
            e.normal(t, 3, 100);
        }
        assert!(e.abnormal(20, 100));
        assert!(e.abnormal(200, 100));
    }
}
