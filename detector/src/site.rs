//! Per-site state: the watermark (newest event time seen from the site, the
//! clock against which its assets' silence is judged) and the `access`
//! model.
//!
//! **access**, per (asset, peer, operation): which peers
//! (`attrs["peer"]`) talk to which asset, with which operations (the
//! event's `name`: `read_holding_registers`, `write_single_coil`, `login`,
//! ...), and how many ACCESS events each (asset, peer) sends per
//! `burst_window` at most. It learns while the asset learns. Protecting,
//! for an ACCESS event:
//! - a peer never seen at the site is an unknown peer: remote system
//!   discovery (T0846) until shown otherwise, or an unauthorized command
//!   message (T0855) when the operation writes;
//! - a known peer that never wrote to this asset and now writes is an
//!   unauthorized command message (T0855), or a parameter change (T0836)
//!   when the operation says it writes a parameter or setpoint;
//! - an operation the peer never did while learning, on any asset, is
//!   reported (medium); one it did on other assets (an HMI logging in to
//!   whichever machine it needs) is not;
//! - a window far busier than the busiest learned one is a polling burst
//!   (T0846).
//!
//! Episodes are per (asset, peer): one alert while the same peer goes on
//! with the same asset, and a second peer, or the same peer on a second
//! asset, is a second alert. Nothing is learned while protecting: what an
//! unknown peer does is never taken as normal, unless the SOC accepts it.
//!
//! Operations count as writes when their name says so (`write`,
//! `download`, `force`, `set`, `put`, `program`, `modify`, `delete`), and
//! as parameter writes when it also names a parameter (`param`,
//! `setpoint`, `config`).

use crate::alert::{duration, Draft};
use crate::batch::Columns;
use crate::config::{DetectorConfig, Resolved};
use crate::stats::{Episode, RateWindow};
use otwatch_proto::Severity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Peers listed in an alert message at most.
const PEERS_SHOWN: usize = 5;

/// Words of an operation name that make it a write.
const WRITE_WORDS: [&str; 8] = [
    "write", "download", "force", "set", "put", "program", "modify", "delete",
];
/// Words of a write's name that make it a parameter write.
const PARAMETER_WORDS: [&str; 3] = ["param", "setpoint", "config"];

/// Current version of the access model; 0 is the site-wide model of older
/// checkpoints.
const ACCESS_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SiteState {
    pub name: String,
    pub first_ts: Option<i64>,
    pub watermark: Option<i64>,
    /// The site's assets (ids), for the silence check.
    pub assets: Vec<u32>,
    /// Peers seen while learning, on any asset of the site.
    peers: BTreeSet<String>,
    /// Operations each peer did while learning, on any asset of the site.
    #[serde(default)]
    peer_ops: BTreeMap<String, BTreeSet<String>>,
    /// What each (asset, peer) does, keyed by [`access_key`].
    #[serde(default)]
    access: BTreeMap<String, PeerAccess>,
    /// 0 in a checkpoint written before the per-(asset, peer, operation)
    /// model: that model then learns from the site's next ACCESS event for
    /// `learn` (`access_learn_until`).
    #[serde(default)]
    access_version: u32,
    #[serde(default)]
    access_learn_until: Option<i64>,
}

/// What one peer does with one asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PeerAccess {
    asset: u32,
    peer: String,
    /// Operations seen while learning (or accepted).
    ops: BTreeSet<String>,
    /// The peer was seen on this asset while learning (or accepted).
    known: bool,
    rate: RateWindow,
    episode: Episode,
}

/// What an access alert names, for the SOC to accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AccessTarget {
    pub peer: String,
    pub op: String,
    /// The window count, for a burst.
    pub burst: Option<u64>,
}

fn access_key(asset: u32, peer: &str) -> String {
    format!("{asset}\u{1f}{peer}")
}

fn is_write(op: &str) -> bool {
    let op = op.to_ascii_lowercase();
    WRITE_WORDS.iter().any(|w| op.contains(w))
}

/// The technique of a write: T0836 for a parameter, T0855 otherwise.
fn write_technique(op: &str) -> &'static str {
    let lower = op.to_ascii_lowercase();
    if PARAMETER_WORDS.iter().any(|w| lower.contains(w)) {
        "T0836"
    } else {
        "T0855"
    }
}

impl SiteState {
    pub fn new(name: String) -> SiteState {
        SiteState {
            name,
            first_ts: None,
            watermark: None,
            assets: Vec::new(),
            peers: BTreeSet::new(),
            peer_ops: BTreeMap::new(),
            access: BTreeMap::new(),
            access_version: ACCESS_VERSION,
            access_learn_until: None,
        }
    }

    /// Takes in the time span of a batch's rows from this site.
    pub fn observe(&mut self, min_ts: i64, max_ts: i64) {
        self.first_ts = Some(self.first_ts.map_or(min_ts, |f| f.min(min_ts)));
        self.watermark = Some(self.watermark.map_or(max_ts, |w| w.max(max_ts)));
    }

    /// Forgets what the access model learned about `asset` (it learns again
    /// with the asset).
    pub fn forget_asset(&mut self, asset: u32) {
        self.access.retain(|_, a| a.asset != asset);
    }

    /// The SOC accepts what an access alert on `asset` named.
    pub fn accept(&mut self, asset: u32, target: &AccessTarget) -> String {
        let a = self
            .access
            .entry(access_key(asset, &target.peer))
            .or_insert_with(|| PeerAccess {
                asset,
                peer: target.peer.clone(),
                ops: BTreeSet::new(),
                known: false,
                rate: RateWindow::default(),
                episode: Episode::default(),
            });
        a.known = true;
        a.ops.insert(target.op.clone());
        a.episode = Episode::default();
        self.peers.insert(target.peer.clone());
        self.peer_ops
            .entry(target.peer.clone())
            .or_default()
            .insert(target.op.clone());
        match target.burst {
            Some(count) => {
                a.rate.learned_max = a.rate.learned_max.max(count);
                format!(
                    "{} may send up to {count} ACCESS events per window",
                    target.peer
                )
            }
            None => format!("{} may {} on this asset", target.peer, target.op),
        }
    }

    /// The access model of `asset` in words, for `otwatch model status`,
    /// with the earliest open episode.
    pub fn report(&self, asset: u32, at: i64, quiet_ns: i64) -> Option<(String, Option<i64>)> {
        let entries: Vec<&PeerAccess> = self.access.values().filter(|a| a.asset == asset).collect();
        if entries.is_empty() {
            return None;
        }
        let known: Vec<String> = entries
            .iter()
            .filter(|a| a.known)
            .map(|a| {
                format!(
                    "{} ({}; at most {} per window)",
                    a.peer,
                    a.ops.iter().cloned().collect::<Vec<_>>().join(", "),
                    a.rate.learned_max
                )
            })
            .collect();
        let unknown = entries.iter().filter(|a| !a.known).count();
        let open = entries
            .iter()
            .filter_map(|a| a.episode.open_since(at, quiet_ns))
            .min();
        let mut text = if known.is_empty() {
            "no peer learned".to_string()
        } else {
            format!("peers {}", known.join(", "))
        };
        if unknown > 0 {
            text += &format!("; {unknown} peer(s) seen only while protecting");
        }
        Some((text, open))
    }

    /// The access model for ACCESS row `r` to asset `asset` (id `asset_id`);
    /// `learning` when the asset learns at that row.
    #[allow(clippy::too_many_arguments)]
    pub fn access(
        &mut self,
        r: usize,
        asset_id: u32,
        asset: &str,
        learning: bool,
        columns: &Columns,
        config: &DetectorConfig,
        resolved: &Resolved,
    ) -> Option<(Draft, AccessTarget)> {
        let t = columns.ts[r];
        let seq = columns.seq[r];
        let peer = columns.attr(r, "peer").unwrap_or("(no peer)");
        let op = columns.name.str(r);
        if self.access_version < ACCESS_VERSION {
            // Upgraded from the site-wide model: learn per (asset, peer,
            // operation) for `learn` from here on.
            self.access_version = ACCESS_VERSION;
            self.access_learn_until = Some(t.saturating_add(resolved.learn_ns));
        }
        let learning = learning || self.access_learn_until.is_some_and(|u| t < u);
        let known_at_site = self.peers.contains(peer);
        let a = self
            .access
            .entry(access_key(asset_id, peer))
            .or_insert_with(|| PeerAccess {
                asset: asset_id,
                peer: peer.to_string(),
                ops: BTreeSet::new(),
                known: learning,
                rate: RateWindow::default(),
                episode: Episode::default(),
            });
        let step = a.rate.add(
            t,
            seq,
            learning && a.known,
            resolved.burst_window_ns,
            config.burst_factor,
            config.burst_min_excess,
        );
        if learning {
            a.known = true;
            a.ops.insert(op.to_string());
            self.peers.insert(peer.to_string());
            self.peer_ops
                .entry(peer.to_string())
                .or_default()
                .insert(op.to_string());
            return None;
        }
        let (close, quiet) = (config.episode_close_points, resolved.quiet_ns);
        if step.closed_normal {
            a.episode.normal(t, close, quiet);
        }
        let write = is_write(op);
        let user = columns.attr(r, "user").unwrap_or("-");
        let done_at_site = self.peer_ops.get(peer).is_some_and(|o| o.contains(op));
        let (severity, technique, why) = if !known_at_site {
            let known = shown(&self.peers);
            (
                Severity::High,
                if write { write_technique(op) } else { "T0846" },
                format!("from unknown peer {peer} (user {user}); learned peers: {known}"),
            )
        } else if write && !a.ops.iter().any(|o| is_write(o)) {
            let learned = if a.ops.is_empty() {
                "nothing on this asset".to_string()
            } else {
                a.ops.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            (
                Severity::High,
                write_technique(op),
                format!(
                    "from {peer} (user {user}), which never wrote to this asset while learning (learned: {learned})"
                ),
            )
        } else if !a.ops.contains(op) && !done_at_site {
            (
                Severity::Medium,
                if write { write_technique(op) } else { "" },
                format!(
                    "from {peer} (user {user}): an operation this peer never did while learning (learned here: {})",
                    a.ops.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        } else if step.over {
            (
                Severity::High,
                "T0846",
                format!(
                    "from {peer} (user {user}): {} ACCESS events within {}, learned at most {}",
                    a.rate.count(),
                    duration(resolved.burst_window_ns),
                    a.rate.learned_max
                ),
            )
        } else {
            return None;
        };
        if !a.episode.abnormal(t, quiet) {
            return None;
        }
        let burst = (a.known && a.ops.contains(op)).then(|| a.rate.count());
        let count = a.rate.count();
        Some((
            Draft {
                ts_ns: t,
                detector: "access",
                name: peer.to_string(),
                severity,
                score: if burst.is_some() {
                    count as f64 / a.rate.learned_max.max(1) as f64
                } else {
                    1.0
                },
                observed: count as f64,
                expected_low: 0.0,
                expected_high: a.rate.learned_max as f64,
                message: format!("ACCESS {op} to {asset} {why}"),
                first_seq: seq,
                last_seq: seq,
                event_count: 1,
                technique,
            },
            AccessTarget {
                peer: peer.to_string(),
                op: op.to_string(),
                burst,
            },
        ))
    }
}

/// Up to [`PEERS_SHOWN`] peers, for a message.
fn shown(peers: &BTreeSet<String>) -> String {
    let mut known: Vec<&str> = peers.iter().map(String::as_str).take(PEERS_SHOWN).collect();
    if peers.len() > PEERS_SHOWN {
        known.push("…");
    }
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}
