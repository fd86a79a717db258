//! The textbook baseline `otwatch eval` prints beside otwatch: a plain PCA
//! with Hotelling's T² and the Q (squared prediction error) statistic, so
//! that every user sees on their own recordings whether otwatch adds
//! anything to what a process engineer would try first.
//!
//! Exactly as in the textbooks, nothing more:
//! - each tag is standardised with the mean and standard deviation of the
//!   learning rows (a tag constant while learning cannot be standardised
//!   and is left out);
//! - PCA of the standardised learning rows (the correlation matrix) keeps
//!   the fewest components that explain [`VARIANCE`] of the variance;
//! - each row gets T² (its scores over the components' variances) and Q
//!   (its squared residual off them); the limits are the [`QUANTILE`]
//!   quantiles of both statistics over the learning rows;
//! - a test row is anomalous when either statistic is above its limit. No
//!   smoothing, no debounce, no adaptation.
//!
//! A missing value repeats the tag's previous one (as the detector does);
//! rows before a tag's first value are skipped.

use crate::Recording;
use linfa_linalg::eigh::EighInto;
use ndarray::Array2;

/// Fraction of the variance of the standardised learning rows that the
/// kept components explain.
pub const VARIANCE: f64 = 0.9;
/// Quantile of the learning rows' statistics that is each limit.
pub const QUANTILE: f64 = 0.99;

/// Which rows the baseline flags (learning rows are never flagged).
/// `None` when the learning rows cannot be modelled (fewer than two
/// complete rows, or no tag that varies).
pub fn predict(rec: &Recording, first_test: usize) -> Option<Vec<bool>> {
    let n = rec.ts_ns.len();
    // Rows with every tag known, missing cells filled with the tag's last value.
    let mut last = vec![f64::NAN; rec.tags.len()];
    let mut rows: Vec<Option<Vec<f64>>> = Vec::with_capacity(n);
    for i in 0..n {
        for (k, v) in rec.values.iter().enumerate() {
            if v[i].is_finite() {
                last[k] = v[i];
            }
        }
        rows.push(last.iter().all(|x| x.is_finite()).then(|| last.clone()));
    }
    let learning: Vec<&Vec<f64>> = rows[..first_test].iter().flatten().collect();
    let m = learning.len();
    if m < 2 {
        return None;
    }
    // Standardisation on the learning rows; constant tags are left out.
    let mut keep = Vec::new();
    let mut mean = Vec::new();
    let mut sd = Vec::new();
    for k in 0..rec.tags.len() {
        let mu = learning.iter().map(|r| r[k]).sum::<f64>() / m as f64;
        let var = learning.iter().map(|r| (r[k] - mu).powi(2)).sum::<f64>() / (m - 1) as f64;
        if var > 0.0 && var.is_finite() {
            keep.push(k);
            mean.push(mu);
            sd.push(var.sqrt());
        }
    }
    let d = keep.len();
    if d == 0 {
        return None;
    }
    let standard = |r: &[f64]| -> Vec<f64> {
        keep.iter()
            .enumerate()
            .map(|(j, &k)| (r[k] - mean[j]) / sd[j])
            .collect()
    };
    let z: Vec<Vec<f64>> = learning.iter().map(|r| standard(r)).collect();
    let mut cov = Array2::<f64>::zeros((d, d));
    for r in &z {
        for a in 0..d {
            for b in a..d {
                cov[[a, b]] += r[a] * r[b];
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            let c = cov[[a, b]] / (m - 1) as f64;
            cov[[a, b]] = c;
            cov[[b, a]] = c;
        }
    }
    let (values, vectors) = cov.eigh_into().ok()?;
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let mut k = 0;
    let mut explained = 0.0;
    while k < d && explained < VARIANCE * total {
        explained += values[order[k]].max(0.0);
        k += 1;
    }
    let k = k.max(1);
    let top = values[order[0]].max(f64::MIN_POSITIVE);
    let comps: Vec<(f64, Vec<f64>)> = order[..k]
        .iter()
        .map(|&i| {
            (
                values[i].max(top * 1e-12),
                vectors.column(i).iter().copied().collect(),
            )
        })
        .collect();
    let stats = |z: &[f64]| -> (f64, f64) {
        let mut t2 = 0.0;
        let mut fit = vec![0.0; d];
        for (lambda, p) in &comps {
            let t: f64 = z.iter().zip(p).map(|(a, b)| a * b).sum();
            t2 += t * t / lambda;
            for j in 0..d {
                fit[j] += t * p[j];
            }
        }
        let q = z.iter().zip(&fit).map(|(a, b)| (a - b).powi(2)).sum();
        (t2, q)
    };
    let (mut t2s, mut qs): (Vec<f64>, Vec<f64>) = z.iter().map(|r| stats(r)).unzip();
    let t2_limit = quantile(&mut t2s, QUANTILE);
    let q_limit = quantile(&mut qs, QUANTILE);
    Some(
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                i >= first_test
                    && r.as_ref().is_some_and(|r| {
                        let (t2, q) = stats(&standard(r));
                        t2 > t2_limit || q > q_limit
                    })
            })
            .collect(),
    )
}

/// The `p` quantile with linear interpolation between order statistics
/// (numpy's default). Reorders `v`, which must not be empty.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_a_row_off_the_learned_correlation_and_not_the_ones_on_it() {
        // Two tags that move together while learning.
        let n = 200;
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..n {
            let x = ((i * 37) % 101) as f64 / 10.0;
            let e = ((i * 53) % 7) as f64 / 100.0;
            a.push(x);
            b.push(2.0 * x + e);
        }
        // Test rows: one on the line, one far off it.
        a.extend([5.0, 5.0]);
        b.extend([10.03, 4.0]);
        let rec = Recording {
            name: "t".into(),
            ts_ns: (0..n as i64 + 2).collect(),
            tags: vec!["a".into(), "b".into()],
            values: vec![a, b],
            labels: None,
        };
        let p = predict(&rec, n).unwrap();
        assert!(!p[..n].iter().any(|&x| x));
        assert_eq!(&p[n..], &[false, true]);
    }
}
