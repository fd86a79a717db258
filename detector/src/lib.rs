//! otwatch-detector: learned models over `events` record batches, turning
//! deviations into [`Alert`]s.
//!
//! Pure: no network, no threads, no clock. Time is the events' `ts`, so a
//! replay of the same batches gives the same alerts with the same ids. The
//! whole state is [`Detector`], which serializes (serde) so it can be
//! checkpointed together with the log offset it has consumed; a detector read
//! back from a checkpoint continues exactly as the original would have.
//!
//! Models (see each module): per (site, asset, name) series `cycle`,
//! `sample` and `discrete` (module `series`); per asset `cadence`,
//! `sequence` (module `asset`) and `process` (module `process`); per
//! (asset, peer, operation) `access` (module `site`). Each asset learns for
//! `learn` of event time (and `min_learning_cycles` cycles), then protects.
//! Alerts are debounced: one per episode.
//!
//! **Nothing becomes normal without a decision.** No model learns after its
//! learning window: what is normal changes only when the SOC accepts an
//! alert's deviation ([`Detector::accept`]) or relearns an asset, from now
//! or from stored history ([`Detector::relearn`]). Those decisions arrive as
//! control records (see the runtime) and are part of the checkpoint, so a
//! restart keeps them. [`Detector::report`] says, per asset and model, what
//! was learned and which episodes are open.
//!
//! **Checkpoints.** The state serializes with serde. A checkpoint written
//! before version 2 (the one with the automatic new normal and the
//! site-wide access model) reads back: its learned cycle, sample, cadence,
//! sequence and process models are kept (process models smooth
//! as before, being without a learned cadence, but never take a new normal
//! by themselves), options that no longer exist are dropped, and each
//! site's access model learns per (asset, peer, operation) for `learn` from
//! its next ACCESS event. Tags that were constant while learning keep their
//! continuous model until the asset is relearned.
//!
//! How a batch is processed (vectorized: no per-event dispatch):
//! 1. the dictionary strings of site, asset, kind and name are interned once
//!    per batch; each row gets a dense per-batch asset id through a lookup
//!    table indexed by the dictionary keys;
//! 2. a stable counting sort by asset id, then one fused copy, lay each
//!    asset's rows out contiguously in time order (`ts`, kind, value, seq);
//!    one scan per asset runs learning, cadence and sequence and records, for
//!    every SAMPLE row, the asset's latest cycle duration;
//! 3. a second counting sort by (asset, CYCLE/SAMPLE, name) lays out each
//!    series' rows contiguously, and each series runs its scoring loop over
//!    its slices of `f64`/`i64`;
//! 4. ACCESS rows go through their site's access model, then every site
//!    touched is checked for silent assets against its new watermark.
//!
//! Rows of one asset are expected in time order (they are, per agent), and
//! a SAMPLE is explained by the latest CYCLE of its asset at or before it in
//! row order, so an agent should emit a cycle's CYCLE before its SAMPLEs.

mod alert;
mod asset;
mod batch;
mod config;
mod process;
mod report;
mod series;
mod site;
mod stats;
#[cfg(test)]
mod tests;

pub use alert::alert_id;
pub use config::DetectorConfig;
pub use report::{AssetReport, ModelReport};

use config::Resolved;

use arrow::record_batch::RecordBatch;
use asset::{AssetFinding, AssetRows, AssetState, AssetTarget, ScanContext};
use batch::{slots, Columns, Groups, CYCLE, SAMPLE, SKIP};
use otwatch_proto::Alert;
use process::{ProcessFinding, ProcessRows, ProcessScratch, NO_VAR};
use serde::{Deserialize, Serialize};
use series::{Finding, Input, Series, SeriesKind, SeriesTarget};
use site::{AccessTarget, SiteState};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Why a batch could not be processed. The detector's state is unchanged
/// when `process` returns an error.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// The batch does not have the `events` schema.
    #[error("batch does not fit the events schema: {0}")]
    Schema(String),
    /// The configuration cannot be used.
    #[error("invalid detector config: {0}")]
    Config(String),
    /// A decision names an alert, site or asset the detector does not know.
    #[error("{0}")]
    Unknown(String),
    /// A decision cannot be applied (the episode is over, ...).
    #[error("{0}")]
    Refused(String),
}

/// Version of the detector state; see "Checkpoints" in the crate docs.
const STATE_VERSION: u32 = 2;

/// Alerts remembered for decisions: every open process episode, and the
/// most recent others up to this many.
const ALERTS_KEPT: usize = 10_000;

/// What an alert named, for the SOC to accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AlertTarget {
    Series { id: u32, what: SeriesTarget },
    Process { first_seq: u64 },
    Asset(AssetTarget),
    Access(AccessTarget),
}

/// An alert the detector raised, remembered so that the SOC can act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AlertRef {
    id: String,
    ts: i64,
    asset: u32,
    detector: String,
    name: String,
    target: AlertTarget,
    /// A process episode still open (other models' episodes are read from
    /// the models themselves).
    open: bool,
}

/// The end of an alert episode: the episode that alert `alert_id` opened is
/// over from `ts_ns` on (the first observation back to normal). Production
/// alerts stay one per episode; the ends are there for scoring a detector
/// point by point (see [`Detector::record_episode_ends`]). Reported by the
/// `process` model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeEnd {
    pub alert_id: String,
    pub site: String,
    pub asset: String,
    pub detector: String,
    pub ts_ns: i64,
}

impl EpisodeEnd {
    /// The end of the process-model episode whose alert was raised for
    /// `name` at `first_seq`.
    fn process(site: &str, asset: &str, name: &str, first_seq: u64, ts_ns: i64) -> Self {
        EpisodeEnd {
            alert_id: alert_id(site, asset, "process", name, first_seq),
            site: site.to_string(),
            asset: asset.to_string(),
            detector: "process".into(),
            ts_ns,
        }
    }
}

/// Counters for dashboards and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorStatus {
    pub events_seen: u64,
    pub batches_seen: u64,
    pub alerts_raised: u64,
    pub sites: usize,
    pub assets_learning: usize,
    pub assets_protecting: usize,
    /// CYCLE and SAMPLE series still learning or already scored.
    pub series_learning: usize,
    pub series_protecting: usize,
    /// Newest event time seen, over all sites (ns; 0 before any event).
    pub watermark_ns: i64,
}

/// The detector: configuration, everything learned, open episodes. See the
/// crate documentation.
#[derive(Serialize, Deserialize)]
pub struct Detector {
    /// 0 (absent) in checkpoints before version 2.
    #[serde(default)]
    version: u32,
    #[serde(with = "config::lenient")]
    config: DetectorConfig,
    sites: Vec<SiteState>,
    assets: Vec<AssetState>,
    series: Vec<Series>,
    events_seen: u64,
    batches_seen: u64,
    alerts_raised: u64,
    /// Alerts the SOC may act on, oldest first.
    #[serde(default)]
    alerts: Vec<AlertRef>,
    /// Lookups by name, rebuilt from the tables after deserialization.
    #[serde(skip)]
    index: Index,
    /// Episode ends recorded since the last [`Detector::take_episode_ends`],
    /// when recording is on.
    #[serde(skip)]
    episode_ends: Option<Vec<EpisodeEnd>>,
    /// Per-batch buffers, kept to avoid allocating on every batch.
    #[serde(skip)]
    scratch: Scratch,
}

#[derive(Default)]
struct Index {
    built: bool,
    sites: HashMap<String, u32>,
    /// Per site: asset name → asset id.
    assets: Vec<HashMap<String, u32>>,
    /// Series names → dense name ids (index-only, rebuilt with it).
    names: HashMap<String, u32>,
    /// [`series_key`] → series id.
    series: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
}

/// Key of a series in [`Index::series`].
fn series_key(asset: u32, name: u32, kind: SeriesKind) -> u64 {
    (u64::from(asset) << 32) | (u64::from(name) << 1) | u64::from(kind == SeriesKind::Sample)
}

/// Multiply-rotate hashing (as in rustc's FxHash) for the integer keys of
/// [`Index::series`]: looked up once per series per batch, where SipHash
/// would cost more than the models. The keys are ids the detector assigns,
/// not attacker-chosen strings, so flooding is not a concern.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Per-batch buffers. `a_*` hold the batch's rows grouped by asset (slot
/// order of `by_asset`), `s_*` the CYCLE/SAMPLE rows grouped by series.
#[derive(Default)]
struct Scratch {
    kinds: Vec<u8>,
    row_asset: Vec<u32>,
    asset_lut: Vec<u32>,
    /// Per-batch asset id → detector asset id.
    batch_assets: Vec<u32>,
    /// The value column, NaN where there is no finite value.
    values: Vec<f64>,
    by_asset: Groups,
    a_ts: Vec<i64>,
    a_kind: Vec<u8>,
    a_value: Vec<f64>,
    a_seq: Vec<u64>,
    a_key: Vec<u32>,
    a_ctx: Vec<f64>,
    /// Batch row of each asset-ordered slot.
    a_row: Vec<u32>,
    by_series: Groups,
    s_ts: Vec<i64>,
    s_value: Vec<f64>,
    s_seq: Vec<u64>,
    s_ctx: Vec<f64>,
    s_row: Vec<u32>,
    /// Name dictionary entry → name id, for this batch.
    name_ids: Vec<u32>,
    access_rows: Vec<u32>,
    asset_findings: Vec<AssetFinding>,
    series_findings: Vec<(u32, Finding)>,
    /// Process variable of each asset-ordered slot (`NO_VAR` when none).
    p_var: Vec<u32>,
    /// Name dictionary entry → process variable, for the asset at hand.
    p_lut: Vec<u32>,
    process: ProcessScratch,
    process_findings: Vec<ProcessFinding>,
}

impl Detector {
    /// A detector that has learned nothing yet. Refuses a configuration it
    /// cannot work with ([`DetectorConfig::validate`]), naming the option.
    pub fn new(config: DetectorConfig) -> Result<Self, DetectorError> {
        config.validate()?;
        Ok(Detector {
            version: STATE_VERSION,
            config,
            sites: Vec::new(),
            assets: Vec::new(),
            series: Vec::new(),
            events_seen: 0,
            batches_seen: 0,
            alerts_raised: 0,
            alerts: Vec::new(),
            index: Index::default(),
            episode_ends: None,
            scratch: Scratch::default(),
        })
    }

    /// Replaces the configuration of a detector restored from a checkpoint
    /// with `config` (validated), keeping everything it learned. The
    /// configured options always win over the copy the checkpoint holds, so
    /// a changed `[detector]` takes effect at the next start. Returns the
    /// names of the options that changed.
    pub fn reconfigure(&mut self, config: DetectorConfig) -> Result<Vec<String>, DetectorError> {
        config.validate()?;
        let changed = self.config.differences(&config);
        self.config = config;
        Ok(changed)
    }

    /// Starts (or stops) recording when alert episodes end, for scoring a
    /// detector point by point: a point is flagged while the episode of an
    /// alert covering it is open. Off by default; not part of checkpoints.
    pub fn record_episode_ends(&mut self, on: bool) {
        self.episode_ends = on.then(Vec::new);
    }

    /// The episode ends recorded since the last call.
    pub fn take_episode_ends(&mut self) -> Vec<EpisodeEnd> {
        self.episode_ends
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The configuration the detector runs with.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Runs every model over `batch` (an `events` batch) and returns the
    /// alerts it raised, ordered by time then id.
    pub fn process(&mut self, batch: &RecordBatch) -> Result<Vec<Alert>, DetectorError> {
        let mut alerts = Vec::new();
        self.process_into(batch, &mut alerts)?;
        Ok(alerts)
    }

    /// [`Detector::process`] appending to `alerts`.
    pub fn process_into(
        &mut self,
        batch: &RecordBatch,
        alerts: &mut Vec<Alert>,
    ) -> Result<(), DetectorError> {
        // Everything that can fail happens before the first state change.
        let columns = Columns::read(batch)?;
        let n = columns.rows;
        if n == 0 {
            return Ok(());
        }
        // Series keys are u32: (batch asset, CYCLE/SAMPLE, name key).
        let names = columns.name.entries().max(1);
        let max_assets = n.min(columns.site.entries() * columns.asset.entries());
        if max_assets.saturating_mul(2 * names) >= SKIP as usize {
            return Err(DetectorError::Schema(format!(
                "batch has too many distinct assets and names ({max_assets} x {names})"
            )));
        }
        self.build_index();
        let resolved = self.config.resolved();
        let mut s = std::mem::take(&mut self.scratch);

        // 1. Sites, their time span in this batch, and per-row batch asset ids.
        let mut span = vec![(i64::MAX, i64::MIN); columns.site.entries()];
        if span.len() == 1 {
            span[0] = columns
                .ts
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        } else {
            for (&k, &t) in columns.site.keys.iter().zip(columns.ts.iter()) {
                let e = &mut span[k as usize];
                *e = (e.0.min(t), e.1.max(t));
            }
        }
        // Dictionary entries no row uses are not sites of this batch.
        let site_ids: Vec<u32> = span
            .iter()
            .enumerate()
            .map(|(k, &(lo, hi))| {
                if lo > hi {
                    return SKIP;
                }
                let id = self.site_id(columns.site.value(k));
                self.sites[id as usize].observe(lo, hi);
                id
            })
            .collect();
        self.batch_assets(&columns, &site_ids, &mut s);
        columns.kinds(&mut s.kinds);
        columns.values_into(&mut s.values);

        let first_new = alerts.len();
        let asset_findings = self.scan_assets(&columns, &mut s, names, &resolved);
        if self.config.process {
            self.process_assets(&columns, &mut s, names, alerts);
        }
        self.score_series(&columns, &mut s, names, &resolved);
        self.access(&columns, &mut s, &resolved, alerts);
        self.silence(&site_ids, &resolved, alerts);
        for (id, f) in asset_findings {
            let asset = &self.assets[id as usize];
            let agent = columns.agent.str(f.row as usize);
            let site = &self.sites[asset.site as usize].name;
            let alert = f.draft.finish(site, &asset.name, agent);
            self.remember(&alert, id, AlertTarget::Asset(f.target), false);
            alerts.push(alert);
        }
        for (id, f) in std::mem::take(&mut s.series_findings) {
            let asset_id = self.series[id as usize].asset;
            let asset = &self.assets[asset_id as usize];
            let site = &self.sites[asset.site as usize].name;
            let agent = columns.agent.str(f.row as usize);
            let alert = f.draft.finish(site, &asset.name, agent);
            let target = AlertTarget::Series { id, what: f.target };
            self.remember(&alert, asset_id, target, false);
            alerts.push(alert);
        }
        alerts[first_new..].sort_by(|a, b| a.ts_ns.cmp(&b.ts_ns).then_with(|| a.id.cmp(&b.id)));

        self.events_seen += n as u64;
        self.batches_seen += 1;
        self.alerts_raised += (alerts.len() - first_new) as u64;
        self.scratch = s;
        Ok(())
    }

    /// Step 2: lays the batch out by asset and scans each asset's rows.
    fn scan_assets(
        &mut self,
        columns: &Columns,
        s: &mut Scratch,
        names: usize,
        resolved: &Resolved,
    ) -> Vec<(u32, AssetFinding)> {
        let n = columns.rows;
        s.by_asset.build(&s.row_asset, s.batch_assets.len());
        let len = s.by_asset.len;
        {
            // One fused pass: each column is read sequentially once. Each row
            // also gets its series key: (batch asset, CYCLE/SAMPLE, name key),
            // or SKIP when it belongs to no series.
            let a_ts = slots(&mut s.a_ts, len);
            let a_kind = slots(&mut s.a_kind, len);
            let a_value = slots(&mut s.a_value, len);
            let a_seq = slots(&mut s.a_seq, len);
            let a_key = slots(&mut s.a_key, len);
            let a_row = slots(&mut s.a_row, len);
            let (ts, seq, values) = (&columns.ts[..n], &columns.seq[..n], &s.values[..n]);
            let (kinds, row_asset) = (&s.kinds[..n], &s.row_asset[..n]);
            let name_keys = &columns.name.keys[..n];
            for (r, &d) in s.by_asset.dest[..n].iter().enumerate() {
                let d = d as usize;
                let (kind, value) = (kinds[r], values[r]);
                a_ts[d] = ts[r];
                a_kind[d] = kind;
                a_value[d] = value;
                a_seq[d] = seq[r];
                a_row[d] = r as u32;
                a_key[d] = if (kind == CYCLE || kind == SAMPLE) && value.is_finite() {
                    let slot = row_asset[r] as usize * 2 + usize::from(kind == SAMPLE);
                    (slot * names + name_keys[r] as usize) as u32
                } else {
                    SKIP
                };
            }
        }
        slots(&mut s.a_ctx, len);
        s.access_rows.clear();
        let mut findings = Vec::new();
        let cx = ScanContext {
            columns,
            config: &self.config,
            resolved,
        };
        for &(local, a, b) in &s.by_asset.groups {
            let id = s.batch_assets[local as usize];
            let rows = AssetRows {
                ts: &s.a_ts[a..b],
                kind: &s.a_kind[a..b],
                value: &s.a_value[a..b],
                seq: &s.a_seq[a..b],
                row: &s.a_row[a..b],
            };
            self.assets[id as usize].scan(
                &rows,
                &cx,
                &mut s.a_ctx[a..b],
                &mut s.access_rows,
                &mut s.asset_findings,
            );
            findings.extend(s.asset_findings.drain(..).map(|f| (id, f)));
        }
        findings
    }

    /// Step 2b: each asset's SAMPLE rows through its process model.
    #[allow(clippy::needless_range_loop)] // parallel slot arrays, indexed together
    fn process_assets(
        &mut self,
        columns: &Columns,
        s: &mut Scratch,
        names: usize,
        alerts: &mut Vec<Alert>,
    ) {
        let len = s.by_asset.len;
        let p_var = slots(&mut s.p_var, len);
        for &(local, a, b) in &s.by_asset.groups {
            let id = s.batch_assets[local as usize];
            let asset = &mut self.assets[id as usize];
            s.p_lut.clear();
            s.p_lut.resize(names, SKIP);
            let mut any = false;
            for i in a..b {
                p_var[i] = NO_VAR;
                if s.a_kind[i] != SAMPLE || !s.a_value[i].is_finite() {
                    continue;
                }
                let key = columns.name.keys[s.a_row[i] as usize] as usize;
                if s.p_lut[key] == SKIP {
                    s.p_lut[key] = asset
                        .process
                        .var_index(columns.name.value(key))
                        .unwrap_or(NO_VAR);
                }
                p_var[i] = s.p_lut[key];
                any |= p_var[i] != NO_VAR;
            }
            if !any {
                continue;
            }
            let rows = ProcessRows {
                ts: &s.a_ts[a..b],
                value: &s.a_value[a..b],
                seq: &s.a_seq[a..b],
                row: &s.a_row[a..b],
                var: &p_var[a..b],
                cycle: &s.a_ctx[a..b],
            };
            asset.process.process(
                &rows,
                asset.protect_from,
                &self.config,
                &mut s.process,
                &mut s.process_findings,
            );
            let site = &self.sites[asset.site as usize].name;
            for f in s.process_findings.drain(..) {
                match f {
                    ProcessFinding::Opened { row, draft } => {
                        let first_seq = draft.first_seq;
                        let alert =
                            draft.finish(site, &asset.name, columns.agent.str(row as usize));
                        let target = AlertTarget::Process { first_seq };
                        remember(&mut self.alerts, &alert, id, target, true);
                        alerts.push(alert);
                    }
                    ProcessFinding::Closed {
                        ts,
                        first_seq,
                        name,
                    } => {
                        let end = EpisodeEnd::process(site, &asset.name, &name, first_seq, ts);
                        if let Some(r) = self.alerts.iter_mut().find(|r| r.id == end.alert_id) {
                            r.open = false;
                        }
                        if let Some(ends) = &mut self.episode_ends {
                            ends.push(end);
                        }
                    }
                }
            }
        }
    }

    /// Step 3: lays the CYCLE and SAMPLE rows out by series and scores them.
    /// Findings go to `s.series_findings`.
    fn score_series(
        &mut self,
        columns: &Columns,
        s: &mut Scratch,
        names: usize,
        resolved: &Resolved,
    ) {
        let range = s.batch_assets.len() * 2 * names;
        s.by_series.build(&s.a_key[..s.by_asset.len], range);
        let len = s.by_series.len;
        {
            let s_ts = slots(&mut s.s_ts, len);
            let s_value = slots(&mut s.s_value, len);
            let s_seq = slots(&mut s.s_seq, len);
            let s_ctx = slots(&mut s.s_ctx, len);
            let s_row = slots(&mut s.s_row, len);
            for (i, &d) in s.by_series.dest.iter().enumerate() {
                if d != SKIP {
                    let d = d as usize;
                    s_ts[d] = s.a_ts[i];
                    s_value[d] = s.a_value[i];
                    s_seq[d] = s.a_seq[i];
                    s_ctx[d] = s.a_ctx[i];
                    s_row[d] = s.a_row[i];
                }
            }
        }
        s.series_findings.clear();
        s.name_ids.clear();
        s.name_ids.resize(names, SKIP);
        let mut found = Vec::new();
        for &(key, a, b) in &s.by_series.groups {
            let key = key as usize;
            let name_key = key % names;
            let name = columns.name.value(name_key);
            if s.name_ids[name_key] == SKIP {
                s.name_ids[name_key] = name_id(&mut self.index, name);
            }
            let slot = key / names;
            let asset = s.batch_assets[slot / 2];
            let kind = if slot % 2 == 1 {
                SeriesKind::Sample
            } else {
                SeriesKind::Cycle
            };
            let name_id = s.name_ids[name_key];
            let id = series_id(
                &mut self.series,
                &mut self.index,
                asset,
                kind,
                name_id,
                name,
            );
            let input = Input {
                ts: &s.s_ts[a..b],
                seq: &s.s_seq[a..b],
                value: &s.s_value[a..b],
                ctx: &s.s_ctx[a..b],
                row: &s.s_row[a..b],
            };
            let protect_from = self.assets[asset as usize].protect_from;
            self.series[id as usize].process(
                &input,
                protect_from,
                &self.config,
                resolved,
                &mut found,
            );
            s.series_findings.extend(found.drain(..).map(|f| (id, f)));
        }
    }

    /// Step 4a: the ACCESS rows, in batch order, through their site's model.
    fn access(
        &mut self,
        columns: &Columns,
        s: &mut Scratch,
        resolved: &Resolved,
        alerts: &mut Vec<Alert>,
    ) {
        s.access_rows.sort_unstable();
        for &row in &s.access_rows {
            let r = row as usize;
            let id = s.batch_assets[s.row_asset[r] as usize];
            let asset = &self.assets[id as usize];
            let learning = asset.protect_from.is_none_or(|p| columns.ts[r] < p);
            let site = &mut self.sites[asset.site as usize];
            if let Some((draft, target)) = site.access(
                r,
                id,
                &asset.name,
                learning,
                columns,
                &self.config,
                resolved,
            ) {
                let alert = draft.finish(&site.name, &asset.name, columns.agent.str(r));
                remember(
                    &mut self.alerts,
                    &alert,
                    id,
                    AlertTarget::Access(target),
                    false,
                );
                alerts.push(alert);
            }
        }
    }

    /// Step 4b: running assets of the sites in this batch that the site's
    /// watermark has left behind for too long.
    fn silence(&mut self, site_ids: &[u32], resolved: &Resolved, alerts: &mut Vec<Alert>) {
        let mut touched: Vec<u32> = site_ids.iter().copied().filter(|&id| id != SKIP).collect();
        touched.sort_unstable();
        touched.dedup();
        for site in touched {
            let site = &self.sites[site as usize];
            let Some(watermark) = site.watermark else {
                continue;
            };
            for &id in &site.assets {
                let asset = &mut self.assets[id as usize];
                let (Some(last), Some(protect_from)) = (asset.last_ts, asset.protect_from) else {
                    continue;
                };
                let Some(after) = asset.silence_after(&self.config, resolved) else {
                    continue;
                };
                let overdue = watermark >= protect_from && watermark - last > after;
                if asset.running && !asset.silent && overdue {
                    asset.silent = true;
                    let draft = asset.silence(last + after, watermark - last, after);
                    let alert = draft.finish(&site.name, &asset.name, &asset.agent);
                    let target = AlertTarget::Asset(AssetTarget::Silence(watermark - last));
                    remember(&mut self.alerts, &alert, id, target, false);
                    alerts.push(alert);
                }
            }
        }
    }

    /// Counts of what the detector knows.
    pub fn status(&self) -> DetectorStatus {
        let protecting = self
            .assets
            .iter()
            .filter(|a| a.protect_from.is_some())
            .count();
        let series_protecting = self.series.iter().filter(|s| s.protecting()).count();
        DetectorStatus {
            events_seen: self.events_seen,
            batches_seen: self.batches_seen,
            alerts_raised: self.alerts_raised,
            sites: self.sites.len(),
            assets_learning: self.assets.len() - protecting,
            assets_protecting: protecting,
            series_learning: self.series.len() - series_protecting,
            series_protecting,
            watermark_ns: self
                .sites
                .iter()
                .filter_map(|s| s.watermark)
                .max()
                .unwrap_or(0),
        }
    }

    /// Remembers an alert for decisions on it.
    fn remember(&mut self, alert: &Alert, asset: u32, target: AlertTarget, open: bool) {
        remember(&mut self.alerts, alert, asset, target, open);
    }

    /// Rebuilds the name lookups from the tables (after deserialization).
    fn build_index(&mut self) {
        if self.index.built {
            return;
        }
        // Older checkpoints: see "Checkpoints" in the crate docs (the
        // access model migrates itself at its next event).
        self.version = STATE_VERSION;
        let mut index = Index {
            built: true,
            sites: HashMap::new(),
            assets: vec![HashMap::new(); self.sites.len()],
            names: HashMap::new(),
            series: HashMap::default(),
        };
        for (i, site) in self.sites.iter().enumerate() {
            index.sites.insert(site.name.clone(), i as u32);
        }
        for (i, asset) in self.assets.iter().enumerate() {
            index.assets[asset.site as usize].insert(asset.name.clone(), i as u32);
        }
        for (i, series) in self.series.iter().enumerate() {
            let name = name_id(&mut index, &series.name);
            index
                .series
                .insert(series_key(series.asset, name, series.kind), i as u32);
        }
        self.index = index;
    }

    fn site_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.index.sites.get(name) {
            return id;
        }
        let id = self.sites.len() as u32;
        self.sites.push(SiteState::new(name.to_string()));
        self.index.sites.insert(name.to_string(), id);
        self.index.assets.push(HashMap::new());
        id
    }

    fn asset_id(&mut self, site: u32, name: &str) -> u32 {
        if let Some(&id) = self.index.assets[site as usize].get(name) {
            return id;
        }
        let id = self.assets.len() as u32;
        self.assets.push(AssetState::new(site, name.to_string()));
        self.sites[site as usize].assets.push(id);
        self.index.assets[site as usize].insert(name.to_string(), id);
        id
    }

    /// Gives every row a dense per-batch asset id (`s.row_asset`) and maps
    /// those to detector asset ids (`s.batch_assets`), looking each distinct
    /// (site, asset) dictionary pair up once.
    fn batch_assets(&mut self, columns: &Columns, site_ids: &[u32], s: &mut Scratch) {
        let (ns, na) = (site_ids.len(), columns.asset.entries());
        s.batch_assets.clear();
        s.row_asset.clear();
        if ns.saturating_mul(na) <= (4 * columns.rows).max(1 << 16) {
            s.asset_lut.clear();
            s.asset_lut.resize(ns * na, SKIP);
            for (&sk, &ak) in columns.site.keys.iter().zip(columns.asset.keys.iter()) {
                let slot = sk as usize * na + ak as usize;
                if s.asset_lut[slot] == SKIP {
                    s.asset_lut[slot] = s.batch_assets.len() as u32;
                    let id = self.asset_id(site_ids[sk as usize], columns.asset.value(ak as usize));
                    s.batch_assets.push(id);
                }
                s.row_asset.push(s.asset_lut[slot]);
            }
        } else {
            // Oversized dictionaries (not deduplicated by their writer).
            let mut seen: HashMap<(u32, &str), u32> = HashMap::new();
            for (&sk, &ak) in columns.site.keys.iter().zip(columns.asset.keys.iter()) {
                let site = site_ids[sk as usize];
                let name = columns.asset.value(ak as usize);
                let local = *seen.entry((site, name)).or_insert_with(|| {
                    let id = self.asset_id(site, name);
                    s.batch_assets.push(id);
                    s.batch_assets.len() as u32 - 1
                });
                s.row_asset.push(local);
            }
        }
    }
}

/// Remembers `alert` in `alerts`, forgetting the oldest closed ones beyond
/// [`ALERTS_KEPT`].
fn remember(
    alerts: &mut Vec<AlertRef>,
    alert: &Alert,
    asset: u32,
    target: AlertTarget,
    open: bool,
) {
    if alerts.iter().any(|r| r.id == alert.id) {
        // The same episode raised again (a replay): nothing new.
        return;
    }
    alerts.push(AlertRef {
        id: alert.id.clone(),
        ts: alert.ts_ns,
        asset,
        detector: alert.detector.clone(),
        name: alert.name.clone(),
        target,
        open,
    });
    if alerts.len() > ALERTS_KEPT {
        if let Some(oldest) = alerts.iter().position(|r| !r.open) {
            alerts.remove(oldest);
        }
    }
}

fn name_id(index: &mut Index, name: &str) -> u32 {
    if let Some(&id) = index.names.get(name) {
        return id;
    }
    let id = index.names.len() as u32;
    index.names.insert(name.to_string(), id);
    id
}

fn series_id(
    series: &mut Vec<Series>,
    index: &mut Index,
    asset: u32,
    kind: SeriesKind,
    name_id: u32,
    name: &str,
) -> u32 {
    let next = series.len() as u32;
    let id = *index
        .series
        .entry(series_key(asset, name_id, kind))
        .or_insert(next);
    if id == next {
        series.push(Series::new(asset, kind, name.to_string()));
    }
    id
}
