//! Per-site state: the watermark (newest event time seen from the site, the
//! clock against which its assets' silence is judged) and the `access` model.
//!
//! **access**: the peers (`attrs["peer"]`) of the site's ACCESS events seen
//! while the site learns (`learn` from its first event), and the busiest
//! `burst_window` of ACCESS events. Protecting, an ACCESS from an unknown
//! peer, or a window far busier than learned, is remote system discovery
//! (ATT&CK for ICS T0846) until shown otherwise. One episode per site: a scan
//! touching every asset is one alert, not one per asset.

use crate::alert::Draft;
use crate::batch::Columns;
use crate::config::{DetectorConfig, Resolved};
use crate::stats::{Episode, RateWindow};
use otwatch_proto::Severity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Peers listed in an alert message at most.
const PEERS_SHOWN: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SiteState {
    pub name: String,
    pub first_ts: Option<i64>,
    pub watermark: Option<i64>,
    /// The site's assets (ids), for the silence check.
    pub assets: Vec<u32>,
    peers: BTreeSet<String>,
    rate: RateWindow,
    episode: Episode,
}

impl SiteState {
    pub fn new(name: String) -> SiteState {
        SiteState {
            name,
            first_ts: None,
            watermark: None,
            assets: Vec::new(),
            peers: BTreeSet::new(),
            rate: RateWindow::default(),
            episode: Episode::default(),
        }
    }

    /// Takes in the time span of a batch's rows from this site.
    pub fn observe(&mut self, min_ts: i64, max_ts: i64) {
        self.first_ts = Some(self.first_ts.map_or(min_ts, |f| f.min(min_ts)));
        self.watermark = Some(self.watermark.map_or(max_ts, |w| w.max(max_ts)));
    }

    pub fn learning_at(&self, t: i64, resolved: &Resolved) -> bool {
        self.first_ts.is_none_or(|f| t - f < resolved.learn_ns)
    }

    /// The access model for ACCESS row `r` to asset `asset`.
    pub fn access(
        &mut self,
        r: usize,
        asset: &str,
        columns: &Columns,
        config: &DetectorConfig,
        resolved: &Resolved,
    ) -> Option<Draft> {
        let t = columns.ts[r];
        let seq = columns.seq[r];
        let peer = columns.attr(r, "peer").unwrap_or("(no peer)");
        let learning = self.learning_at(t, resolved);
        let step = self.rate.add(
            t,
            seq,
            learning,
            resolved.burst_window_ns,
            config.burst_factor,
            config.burst_min_excess,
        );
        if learning {
            self.peers.insert(peer.to_string());
            return None;
        }
        let (close, quiet) = (config.episode_close_points, resolved.quiet_ns);
        if step.closed_normal {
            self.episode.normal(t, close, quiet);
        }
        let unknown = !self.peers.contains(peer);
        if !unknown && !step.over {
            return None;
        }
        if !self.episode.abnormal(t, quiet) {
            return None;
        }
        let user = columns.attr(r, "user").unwrap_or("-");
        let what = columns.name.str(r);
        let mut known: Vec<&str> = self
            .peers
            .iter()
            .map(String::as_str)
            .take(PEERS_SHOWN)
            .collect();
        if self.peers.len() > PEERS_SHOWN {
            known.push("…");
        }
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        let count = self.rate.count();
        let learned = self.rate.learned_max;
        let (name, message) = if unknown {
            (
                peer.to_string(),
                format!("ACCESS {what} to {asset} from unknown peer {peer} (user {user}); learned peers: {known}"),
            )
        } else {
            (
                "rate".to_string(),
                format!(
                    "{count} ACCESS events within {}, learned at most {learned}; latest {what} from {peer} (user {user})",
                    crate::alert::duration(resolved.burst_window_ns)
                ),
            )
        };
        Some(Draft {
            ts_ns: t,
            detector: "access",
            name,
            severity: Severity::High,
            score: if unknown {
                1.0
            } else {
                count as f64 / learned.max(1) as f64
            },
            observed: count as f64,
            expected_low: 0.0,
            expected_high: learned as f64,
            message,
            first_seq: seq,
            last_seq: seq,
            event_count: 1,
            technique: "T0846",
        })
    }
}
