//! Turning a model's finding into an [`Alert`]: the stable id, and numbers and
//! durations written the way an analyst reads them.

use otwatch_proto::{Alert, Severity};

/// A finding before it knows its site, asset and agent names.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub ts_ns: i64,
    pub detector: &'static str,
    pub name: String,
    pub severity: Severity,
    pub score: f64,
    pub observed: f64,
    pub expected_low: f64,
    pub expected_high: f64,
    pub message: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub event_count: u64,
    pub technique: &'static str,
}

impl Draft {
    pub fn finish(self, site: &str, asset: &str, agent: &str) -> Alert {
        // NaN or infinities would not survive JSON or every sink: clamp.
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        Alert {
            id: alert_id(site, asset, self.detector, &self.name, self.first_seq),
            ts_ns: self.ts_ns,
            site: site.to_string(),
            asset: asset.to_string(),
            detector: self.detector.to_string(),
            name: self.name,
            severity: self.severity as i32,
            score: finite(self.score),
            observed: finite(self.observed),
            expected_low: finite(self.expected_low),
            expected_high: finite(self.expected_high),
            message: self.message,
            agent: agent.to_string(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            event_count: self.event_count,
            technique: self.technique.to_string(),
            state: "open".into(),
            ..Alert::default()
        }
    }
}

/// The id of an alert: FNV-1a (64 bit) of site, asset, detector, name and the
/// first sequence number of its evidence, as 16 hex digits. The same episode
/// replayed from the log always gets the same id, on any platform, so sinks
/// can drop replays.
pub fn alert_id(site: &str, asset: &str, detector: &str, name: &str, first_seq: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for part in [site, asset, detector, name] {
        eat(part.as_bytes());
        eat(&[0]);
    }
    eat(&first_seq.to_le_bytes());
    format!("{h:016x}")
}

/// A value with four significant digits (at most six decimals).
pub(crate) fn num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.decimals$}")
}

/// A duration in nanoseconds as `850 ms`, `72.4 s`, `5m12s` or `2h05m`.
pub(crate) fn duration(ns: i64) -> String {
    let s = ns as f64 / 1e9;
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinguish_their_inputs() {
        let a = alert_id("plant-1", "line1/press-01", "cycle", "cycle", 42);
        assert_eq!(
            a,
            alert_id("plant-1", "line1/press-01", "cycle", "cycle", 42)
        );
        assert_eq!(a.len(), 16);
        assert_ne!(
            a,
            alert_id("plant-1", "line1/press-01", "cycle", "cycle", 43)
        );
        assert_ne!(
            alert_id("ab", "c", "d", "e", 1),
            alert_id("a", "bc", "d", "e", 1)
        );
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(num(12.0417), "12.04");
        assert_eq!(num(230.46), "230.5");
        assert_eq!(num(0.0123456), "0.01235");
        assert_eq!(duration(850_000_000), "850 ms");
        assert_eq!(duration(72_400_000_000), "72.4 s");
        assert_eq!(duration(312_000_000_000), "5m12s");
    }
}
