//! Per-asset state and the models that look at all of an asset's events in
//! time order: learning/protecting, `cadence` (silence and bursts) and
//! `sequence` (transitions between STATE, CHANGE and ALARM tokens).
//!
//! - **Learning** ends at the first event that is both `learn` after the
//!   asset's first event and preceded by `min_learning_cycles` cycles (an
//!   asset that sent no cycle at all ends after `learn`), or, when the SOC
//!   relearns the asset from stored history, at the first event at or after
//!   the end of that interval. From that event on (`protect_from`) every
//!   model of the asset protects.
//! - **cadence / silence**: the largest gap between consecutive events while
//!   the asset was in a running mode is learned. Protecting, an asset in a
//!   running mode is silent once its site's watermark (newest event of the
//!   site) passes its last event by `silence_factor` × that gap (and at least
//!   `silence_min`). An asset in STOP or MAINT is expected to be quiet.
//! - **cadence / burst**: the asset's own output (every kind but ACCESS,
//!   which the access model counts) per `burst_window`; a window far above
//!   the busiest learned one is a burst.
//! - **sequence**: the asset's mode is its latest STATE. Learned: which mode
//!   changes happen (`RUN -> MAINT`) and which CHANGE and ALARM tokens happen
//!   in which mode (`MAINT -> CHANGE program=1f2e…`; a CHANGE token carries
//!   its text, so a new program checksum is a new token). Protecting, an
//!   unseen transition is an alert. A CHANGE or ALARM does not become the
//!   mode, so the transition after it is still judged from the mode.
//!
//! The SOC can accept what an alert of these models named
//! ([`AssetState::accept`]): the transition becomes known, the gap or the
//! busiest window becomes the learned one.

use crate::alert::{duration, Draft};
use crate::batch::{Columns, ACCESS, ALARM, CHANGE, CYCLE, SAMPLE, STATE};
use crate::config::{DetectorConfig, Resolved};
use crate::process::ProcessModel;
use crate::stats::{Episode, RateWindow};
use otwatch_proto::Severity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The mode an asset has before its first STATE event.
const START: &str = "START";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AssetState {
    pub site: u32,
    pub name: String,
    /// Agent of the asset's latest event: the evidence of a silence alert.
    pub agent: String,
    pub first_ts: Option<i64>,
    /// Event time from which the asset protects; `None` while it learns.
    pub protect_from: Option<i64>,
    pub cycles_learned: u64,
    pub last_ts: Option<i64>,
    pub last_seq: u64,
    /// Latest CYCLE duration: the explanatory value of the asset's SAMPLE tags.
    pub last_cycle: Option<f64>,
    /// Latest STATE text.
    pub mode: Option<String>,
    /// Whether `mode` is a running mode (or unknown).
    pub running: bool,
    /// Largest gap between events learned while running, in ns.
    pub max_gap_ns: i64,
    /// A silence episode is open (closes with the asset's next event).
    pub silent: bool,
    burst: RateWindow,
    burst_episode: Episode,
    transitions: BTreeSet<String>,
    /// Unseen transitions alerted on, with the last time each was seen: one
    /// alert per transition until `episode_quiet` passes without it.
    unseen: BTreeMap<String, i64>,
    /// The joint model of the asset's SAMPLE tags.
    #[serde(default)]
    pub process: ProcessModel,
    /// Set while the asset relearns from stored history: it protects from
    /// its first event at or after this time.
    #[serde(default)]
    pub learn_until: Option<i64>,
    /// Things of these models the SOC accepted.
    #[serde(default)]
    accepted: u32,
}

/// What an alert of the asset models names, for the SOC to accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum AssetTarget {
    /// An unseen transition (`FROM -> TOKEN`).
    Transition(String),
    /// A silence this long (ns).
    Silence(i64),
    /// A window holding this many events.
    Burst(u64),
}

/// A finding of an asset model, made at a batch row (whose agent is the evidence).
pub(crate) struct AssetFinding {
    pub row: u32,
    pub draft: Draft,
    pub target: AssetTarget,
}

/// One asset's rows of a batch, in time order, as contiguous slices.
pub(crate) struct AssetRows<'a> {
    pub ts: &'a [i64],
    pub kind: &'a [u8],
    /// NaN where the row has no finite value.
    pub value: &'a [f64],
    pub seq: &'a [u64],
    /// Batch row of each slot, for the columns read rarely (text, name, agent).
    pub row: &'a [u32],
}

/// What the per-asset scan needs besides the asset and its rows.
pub(crate) struct ScanContext<'a> {
    pub columns: &'a Columns,
    pub config: &'a DetectorConfig,
    pub resolved: &'a Resolved,
}

impl AssetState {
    pub fn new(site: u32, name: String) -> AssetState {
        AssetState {
            site,
            name,
            agent: String::new(),
            first_ts: None,
            protect_from: None,
            cycles_learned: 0,
            last_ts: None,
            last_seq: 0,
            last_cycle: None,
            mode: None,
            running: true,
            max_gap_ns: 0,
            silent: false,
            burst: RateWindow::default(),
            burst_episode: Episode::default(),
            transitions: BTreeSet::new(),
            unseen: BTreeMap::new(),
            process: ProcessModel::default(),
            learn_until: None,
            accepted: 0,
        }
    }

    /// The same asset, having learned nothing: it learns again from its
    /// next event (for `learn`), or over `[from, until)` of stored history
    /// when `until` is given.
    pub fn relearned(&self, until: Option<i64>) -> AssetState {
        let mut fresh = AssetState::new(self.site, self.name.clone());
        fresh.agent = self.agent.clone();
        fresh.learn_until = until;
        fresh
    }

    /// The SOC accepts what an alert of these models named. Returns what
    /// changed.
    pub fn accept(&mut self, target: &AssetTarget) -> String {
        self.accepted += 1;
        match target {
            AssetTarget::Transition(key) => {
                self.transitions.insert(key.clone());
                self.unseen.remove(key);
                format!("transition {key} is now known")
            }
            AssetTarget::Silence(gap) => {
                self.max_gap_ns = self.max_gap_ns.max(*gap);
                self.silent = false;
                format!("gaps up to {} are now normal", duration(*gap))
            }
            AssetTarget::Burst(count) => {
                self.burst.learned_max = self.burst.learned_max.max(*count);
                self.burst_episode = Episode::default();
                format!("up to {count} events per window are now normal")
            }
        }
    }

    /// The cadence and sequence models in words, for `otwatch model
    /// status`: (model, summary, open since).
    pub fn report(&self, at: i64, resolved: &Resolved) -> Vec<(&'static str, String, Option<i64>)> {
        let accepted = if self.accepted > 0 {
            format!("; {} accepted", self.accepted)
        } else {
            String::new()
        };
        let open_transition = self
            .unseen
            .values()
            .filter(|&&t| at.saturating_sub(t) < resolved.quiet_ns)
            .min()
            .copied();
        vec![
            (
                "cadence",
                format!(
                    "longest gap while running {}, busiest window {} event(s){}",
                    duration(self.max_gap_ns),
                    self.burst.learned_max,
                    if self.silent { "; silent now" } else { "" }
                ),
                self.burst_episode.open_since(at, resolved.quiet_ns),
            ),
            (
                "sequence",
                format!(
                    "mode {}; {} known transition(s){accepted}",
                    self.mode.as_deref().unwrap_or("unknown"),
                    self.transitions.len()
                ),
                open_transition,
            ),
        ]
    }

    /// The gap after which a running asset is silent; `None` until a gap was learned.
    pub fn silence_after(&self, config: &DetectorConfig, resolved: &Resolved) -> Option<i64> {
        (self.max_gap_ns > 0).then(|| {
            ((self.max_gap_ns as f64 * config.silence_factor) as i64).max(resolved.silence_min_ns)
        })
    }

    /// Goes through the asset's `rows` of a batch in time order: learning
    /// boundary, cadence, sequence. Writes each SAMPLE row's explanatory cycle
    /// duration into `ctx` (aligned with `rows`), collects the batch rows of
    /// ACCESS events into `access_rows`.
    pub fn scan(
        &mut self,
        rows: &AssetRows,
        cx: &ScanContext,
        ctx: &mut [f64],
        access_rows: &mut Vec<u32>,
        out: &mut Vec<AssetFinding>,
    ) {
        if !self.scan_steady(rows, cx, ctx, out) {
            self.scan_each(rows, cx, ctx, access_rows, out);
        }
    }

    /// The common case in a few tight loops: a protecting, running asset
    /// whose rows are all CYCLE and SAMPLE, with no gap long enough to be a
    /// silence. Returns `false`, having changed nothing, when the rows are
    /// not that case; [`AssetState::scan_each`] then handles them.
    fn scan_steady(
        &mut self,
        rows: &AssetRows,
        cx: &ScanContext,
        ctx: &mut [f64],
        out: &mut Vec<AssetFinding>,
    ) -> bool {
        let n = rows.ts.len();
        let (ts, kinds, values) = (rows.ts, &rows.kind[..n], &rows.value[..n]);
        let (Some(&first), Some(last), Some(protect_from)) =
            (ts.first(), self.last_ts, self.protect_from)
        else {
            return false;
        };
        let Some(after) = self.silence_after(cx.config, cx.resolved) else {
            return false;
        };
        if !self.running || first < protect_from {
            return false;
        }
        // Branch-free checks the compiler can vectorize.
        let only_series = kinds
            .iter()
            .fold(true, |ok, &k| ok & ((k == CYCLE) | (k == SAMPLE)));
        let widest = ts.windows(2).fold(first - last, |m, w| m.max(w[1] - w[0]));
        if !only_series || widest > after {
            return false;
        }
        let (seqs, batch_rows, ctx) = (&rows.seq[..n], &rows.row[..n], &mut ctx[..n]);
        let mut cycle = self.last_cycle.unwrap_or(f64::NAN);
        for i in 0..n {
            ctx[i] = cycle;
            let v = values[i];
            cycle = if kinds[i] == CYCLE && v.is_finite() {
                v
            } else {
                cycle
            };
        }
        let config = cx.config;
        let window = cx.resolved.burst_window_ns;
        let (close, quiet) = (config.episode_close_points, cx.resolved.quiet_ns);
        // Rate: one window at a time. The first event of a run goes through
        // `add` (which may open a window), the rest of the run is counted at once.
        let mut i = 0;
        while i < n {
            let (t, seq) = (ts[i], seqs[i]);
            let step = self.burst.add(
                t,
                seq,
                false,
                window,
                config.burst_factor,
                config.burst_min_excess,
            );
            let mut over = step.over.then_some(i);
            let end = self.burst.end();
            let run = ts[i + 1..]
                .iter()
                .take_while(|&&u| u >= t && u < end)
                .count();
            if let Some(at) = self.burst.add_in_window(run as u64) {
                over = over.or(Some(i + at as usize));
            }
            if step.closed_normal {
                self.burst_episode.normal(t, close, quiet);
            }
            if let Some(j) = over {
                if self.burst_episode.abnormal(ts[j], quiet) {
                    out.push(AssetFinding {
                        row: batch_rows[j],
                        draft: self.burst_draft(ts[j], seqs[j], config),
                        target: AssetTarget::Burst(self.burst.count()),
                    });
                }
            }
            i += 1 + run;
        }
        self.last_cycle = Some(cycle).filter(|c| c.is_finite());
        self.last_ts = Some(ts.iter().fold(last, |m, &t| m.max(t)));
        self.last_seq = seqs[n - 1];
        self.silent = false;
        self.note_agent(cx, batch_rows[n - 1]);
        true
    }

    /// Every row, one at a time in time order: learning boundary, gaps, mode
    /// changes, sequence, access.
    fn scan_each(
        &mut self,
        rows: &AssetRows,
        cx: &ScanContext,
        ctx: &mut [f64],
        access_rows: &mut Vec<u32>,
        out: &mut Vec<AssetFinding>,
    ) {
        let config = cx.config;
        let window = cx.resolved.burst_window_ns;
        let (close, quiet) = (config.episode_close_points, cx.resolved.quiet_ns);
        let mut silence_after = self.silence_after(config, cx.resolved);
        // Re-sliced to one length so the loop runs without bounds checks.
        let n = rows.ts.len();
        let (ts, kinds, values) = (rows.ts, &rows.kind[..n], &rows.value[..n]);
        let (seqs, batch_rows, ctx) = (&rows.seq[..n], &rows.row[..n], &mut ctx[..n]);
        let mut cycle = self.last_cycle.unwrap_or(f64::NAN);
        for i in 0..n {
            let (t, kind, seq) = (ts[i], kinds[i], seqs[i]);
            // The explanatory cycle of a SAMPLE: the latest CYCLE before it.
            ctx[i] = cycle;
            if self.protect_from.is_none() {
                let first = *self.first_ts.get_or_insert(t);
                if kind == CYCLE && values[i].is_finite() {
                    self.cycles_learned += 1;
                }
                let cycles_ok =
                    self.cycles_learned >= config.min_learning_cycles || self.cycles_learned == 0;
                let over = match self.learn_until {
                    // The SOC chose the window: it ends where they said.
                    Some(until) => t >= until,
                    None => t - first >= cx.resolved.learn_ns && cycles_ok,
                };
                if over {
                    self.protect_from = Some(t);
                    self.learn_until = None;
                }
            }
            let learning = self.protect_from.is_none_or(|p| t < p);

            // Cadence: the gap since the previous event, judged in the mode it was spent in.
            if let Some(last) = self.last_ts {
                let gap = t - last;
                if self.running {
                    if learning {
                        if gap > self.max_gap_ns {
                            self.max_gap_ns = gap;
                            silence_after = self.silence_after(config, cx.resolved);
                        }
                    } else if let Some(after) = silence_after {
                        if gap > after && !self.silent {
                            out.push(AssetFinding {
                                row: batch_rows[i],
                                draft: self.silence(last + after, gap, after),
                                target: AssetTarget::Silence(gap),
                            });
                        }
                    }
                }
            }
            self.silent = false;
            self.last_ts = Some(self.last_ts.map_or(t, |l| l.max(t)));
            self.last_seq = seq;

            if kind != ACCESS {
                let step = self.burst.add(
                    t,
                    seq,
                    learning,
                    window,
                    config.burst_factor,
                    config.burst_min_excess,
                );
                if step.closed_normal {
                    self.burst_episode.normal(t, close, quiet);
                }
                if step.over && self.burst_episode.abnormal(t, quiet) {
                    out.push(AssetFinding {
                        row: batch_rows[i],
                        draft: self.burst_draft(t, seq, config),
                        target: AssetTarget::Burst(self.burst.count()),
                    });
                }
            }

            match kind {
                CYCLE if values[i].is_finite() => cycle = values[i],
                ACCESS => access_rows.push(batch_rows[i]),
                STATE | CHANGE | ALARM => {
                    if let Some(draft) =
                        self.transition(batch_rows[i] as usize, kind, t, seq, learning, cx)
                    {
                        out.push(AssetFinding {
                            row: batch_rows[i],
                            target: AssetTarget::Transition(draft.name.clone()),
                            draft,
                        });
                    }
                }
                _ => {}
            }
        }
        self.last_cycle = Some(cycle).filter(|c| c.is_finite());
        if let Some(&last) = batch_rows.last() {
            self.note_agent(cx, last);
        }
    }

    /// Remembers the agent of batch row `row`, the asset's latest event.
    fn note_agent(&mut self, cx: &ScanContext, row: u32) {
        let agent = cx.columns.agent.str(row as usize);
        if self.agent != agent {
            self.agent = agent.to_string();
        }
    }

    /// Sequence model for one STATE, CHANGE or ALARM row.
    fn transition(
        &mut self,
        r: usize,
        kind: u8,
        t: i64,
        seq: u64,
        learning: bool,
        cx: &ScanContext,
    ) -> Option<Draft> {
        let c = cx.columns;
        let text = c.text(r).unwrap_or("");
        let token = match kind {
            STATE => text.to_string(),
            CHANGE => format!("CHANGE {}={text}", c.name.str(r)),
            _ => format!("ALARM {}", c.name.str(r)),
        };
        let from = self.mode.clone().unwrap_or_else(|| START.to_string());
        if kind == STATE {
            self.running = cx
                .config
                .running_modes
                .iter()
                .any(|m| m.eq_ignore_ascii_case(text));
            self.mode = Some(text.to_string());
        }
        let key = format!("{from} -> {token}");
        if learning {
            self.transitions.insert(key);
            return None;
        }
        if self.transitions.contains(&key) {
            return None;
        }
        let quiet = cx.resolved.quiet_ns;
        if let Some(last) = self.unseen.get_mut(&key) {
            let repeat = t - *last < quiet;
            *last = t;
            if repeat {
                return None;
            }
        } else {
            self.unseen.insert(key.clone(), t);
        }
        let prefix = format!("{from} -> ");
        let known: Vec<&str> = self
            .transitions
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .take(8)
            .collect();
        let known = if known.is_empty() {
            "nothing".to_string()
        } else {
            known.join(", ")
        };
        let (severity, technique, what) = match kind {
            STATE => (Severity::High, "T0858", "operating mode change"),
            CHANGE => {
                let name = c.name.str(r).to_ascii_lowercase();
                let technique = if name.contains("firmware") {
                    "T0857"
                } else if ["config", "param", "setpoint"]
                    .iter()
                    .any(|w| name.contains(w))
                {
                    "T0836"
                } else {
                    "T0843"
                };
                (Severity::Critical, technique, "change")
            }
            _ => (Severity::Medium, "", "alarm"),
        };
        Some(Draft {
            ts_ns: t,
            detector: "sequence",
            name: key.clone(),
            severity,
            score: 1.0,
            observed: 1.0,
            expected_low: 0.0,
            expected_high: 0.0,
            message: format!("unseen {what} {key} (learned from {from}: {known})"),
            first_seq: seq,
            last_seq: seq,
            event_count: 1,
            technique,
        })
    }

    /// The silence alert of a gap of `gap` ns that became abnormal at `at`.
    pub fn silence(&self, at: i64, gap: i64, after: i64) -> Draft {
        let mode = self.mode.as_deref().unwrap_or("unknown mode");
        Draft {
            ts_ns: at,
            detector: "cadence",
            name: "silence".into(),
            severity: Severity::High,
            score: gap as f64 / self.max_gap_ns.max(1) as f64,
            observed: gap as f64 / 1e9,
            expected_low: 0.0,
            expected_high: self.max_gap_ns as f64 / 1e9,
            message: format!(
                "no event for {} while {mode} (longest learned gap {}, silent after {}): controller silent",
                duration(gap),
                duration(self.max_gap_ns),
                duration(after)
            ),
            first_seq: self.last_seq,
            last_seq: self.last_seq,
            event_count: 0,
            technique: "T0814",
        }
    }

    fn burst_draft(&self, t: i64, seq: u64, config: &DetectorConfig) -> Draft {
        let (count, limit) = (self.burst.count(), self.burst.limit());
        Draft {
            ts_ns: t,
            detector: "cadence",
            name: "burst".into(),
            severity: Severity::Medium,
            score: count as f64 / self.burst.learned_max.max(1) as f64,
            observed: count as f64,
            expected_low: 0.0,
            expected_high: self.burst.learned_max as f64,
            message: format!(
                "{count} events within {}, learned at most {} (limit {limit}): event burst",
                duration(i64::try_from(config.burst_window.as_nanos()).unwrap_or(i64::MAX)),
                self.burst.learned_max
            ),
            first_seq: self.burst.first_seq(),
            last_seq: seq,
            event_count: count,
            technique: "",
        }
    }
}
