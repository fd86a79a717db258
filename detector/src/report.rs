//! What the detector knows, in words, and the SOC's decisions on it:
//! [`Detector::report`] (for `otwatch model status`), [`Detector::accept`]
//! and [`Detector::relearn`] (for `otwatch model accept` and `relearn`).
//!
//! Decisions are plain method calls on the pure detector; the runtime
//! reads them from the control topic of the event log and checkpoints the
//! result with the offsets it covers.

use crate::{AlertTarget, Detector, DetectorError, EpisodeEnd, Series};
use serde::{Deserialize, Serialize};

/// One asset as `otwatch model status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetReport {
    pub site: String,
    pub asset: String,
    /// `learning` or `protecting`.
    pub state: String,
    /// Since when it learns (its first event) or protects.
    pub since_ns: Option<i64>,
    /// While learning: when the window ends at the earliest.
    pub learn_until_ns: Option<i64>,
    /// Newest event time of the asset's site: the time the report speaks of.
    pub at_ns: Option<i64>,
    pub models: Vec<ModelReport>,
}

/// One model of an asset (one tag for the per-tag models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// `cycle`, `sample`, `discrete`, `process`, `cadence`, `sequence`, `access`.
    pub model: String,
    /// The tag, for the per-tag models.
    pub name: String,
    /// `learning`, `protecting`, `not scored` or `not fitted`.
    pub state: String,
    /// What it learned, in words.
    pub baseline: String,
    /// When the open episode began, if one is open.
    pub open_since_ns: Option<i64>,
    /// Alerts of the open episodes (what `otwatch model accept --alert` takes).
    pub open_alerts: Vec<String>,
    /// The values it expects, `[low, high]` (the band its alerts quote),
    /// for the models that expect a fixed band: a protecting cycle model,
    /// or a sample model that does not follow the cycle time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<[f64; 2]>,
}

impl Detector {
    /// The assets of `site` (every site when `None`), or only `asset`, with
    /// what each model learned and the episodes open. An unknown site or
    /// asset is an error naming it.
    pub fn report(
        &self,
        site: Option<&str>,
        asset: Option<&str>,
    ) -> Result<Vec<AssetReport>, DetectorError> {
        let ids = self.select(site, asset)?;
        let resolved = self.config.resolved();
        let quiet = resolved.quiet_ns;
        let mut out = Vec::new();
        for id in ids {
            let a = &self.assets[id as usize];
            let site = &self.sites[a.site as usize];
            let at = site.watermark.unwrap_or(0);
            let learning = a.protect_from.is_none();
            let open_alerts = |detector: &str, name: &str, since: Option<i64>| -> Vec<String> {
                let Some(since) = since else {
                    return Vec::new();
                };
                self.alerts
                    .iter()
                    .filter(|r| {
                        r.asset == id && r.detector == detector && r.name == name && r.ts >= since
                    })
                    .map(|r| r.id.clone())
                    .collect()
            };
            let mut models = Vec::new();
            if let Some(p) = a.process.report(learning) {
                let (open_since_ns, open_alerts) = match &p.open {
                    Some((seq, name, since)) => (
                        Some(*since),
                        vec![crate::alert_id(&site.name, &a.name, "process", name, *seq)],
                    ),
                    None => (None, Vec::new()),
                };
                models.push(ModelReport {
                    model: "process".into(),
                    name: String::new(),
                    state: p.state.into(),
                    baseline: p.baseline,
                    open_since_ns,
                    open_alerts,
                    band: None,
                });
            }
            for (model, baseline, open) in a.report(at, &resolved) {
                let open_alerts = self
                    .alerts
                    .iter()
                    .filter(|r| {
                        r.asset == id
                            && open.is_some_and(|since| r.ts >= since)
                            && matches!(
                                (&r.target, model),
                                (
                                    AlertTarget::Asset(crate::AssetTarget::Transition(_)),
                                    "sequence"
                                ) | (AlertTarget::Asset(crate::AssetTarget::Burst(_)), "cadence")
                                    | (
                                        AlertTarget::Asset(crate::AssetTarget::Silence(_)),
                                        "cadence"
                                    )
                            )
                    })
                    .map(|r| r.id.clone())
                    .collect();
                models.push(ModelReport {
                    model: model.into(),
                    name: String::new(),
                    state: if learning { "learning" } else { "protecting" }.into(),
                    baseline,
                    open_since_ns: open,
                    open_alerts,
                    band: None,
                });
            }
            if let Some((baseline, open)) = site.report(id, at, quiet) {
                let open_alerts = self
                    .alerts
                    .iter()
                    .filter(|r| {
                        r.asset == id
                            && r.detector == "access"
                            && open.is_some_and(|since| r.ts >= since)
                    })
                    .map(|r| r.id.clone())
                    .collect();
                models.push(ModelReport {
                    model: "access".into(),
                    name: String::new(),
                    state: if learning { "learning" } else { "protecting" }.into(),
                    baseline,
                    open_since_ns: open,
                    open_alerts,
                    band: None,
                });
            }
            for series in self.series.iter().filter(|s| s.asset == id) {
                let (model, state, baseline, open) = series.report(at, quiet);
                models.push(ModelReport {
                    model: model.into(),
                    name: series.name.clone(),
                    state: state.into(),
                    baseline,
                    open_since_ns: open,
                    open_alerts: open_alerts(model, &series.name, open),
                    band: series.band(self.config.expected_band),
                });
            }
            out.push(AssetReport {
                site: site.name.clone(),
                asset: a.name.clone(),
                state: if learning { "learning" } else { "protecting" }.into(),
                since_ns: a.protect_from.or(a.first_ts),
                learn_until_ns: if learning {
                    a.learn_until
                        .or_else(|| a.first_ts.map(|f| f.saturating_add(resolved.learn_ns)))
                } else {
                    None
                },
                at_ns: site.watermark,
                models,
            });
        }
        Ok(out)
    }

    /// Whether the detector knows alert `id` (raised by it and not yet
    /// forgotten), so that a decision on it can be applied.
    pub fn knows_alert(&self, id: &str) -> bool {
        self.alerts.iter().any(|r| r.id == id)
    }

    /// The site and asset of alert `id`, if the detector knows it (see
    /// [`Detector::knows_alert`]).
    pub fn alert_subject(&self, id: &str) -> Option<(String, String)> {
        let r = self.alerts.iter().find(|r| r.id == id)?;
        let asset = &self.assets[r.asset as usize];
        Some((
            self.sites[asset.site as usize].name.clone(),
            asset.name.clone(),
        ))
    }

    /// The SOC accepts the deviation of alert `id` as normal: what the
    /// alert named becomes part of what its model learned (see each
    /// model), and an open episode ends at the site's newest event time.
    /// Returns what changed, in words.
    pub fn accept(&mut self, id: &str) -> Result<String, DetectorError> {
        let Some(at) = self.alerts.iter().position(|r| r.id == id) else {
            return Err(DetectorError::Unknown(format!(
                "alert {id} is not one the detector knows (it was never raised, its asset was relearned since, or it is older than the last {} alerts)",
                crate::ALERTS_KEPT
            )));
        };
        let r = self.alerts[at].clone();
        let asset = &mut self.assets[r.asset as usize];
        let site = &mut self.sites[asset.site as usize];
        let now = site.watermark.unwrap_or(r.ts);
        let changed = match &r.target {
            AlertTarget::Process { first_seq } => {
                let done = asset
                    .process
                    .accept(*first_seq, now)
                    .map_err(|why| DetectorError::Refused(format!("alert {id}: {why}")))?;
                self.alerts[at].open = false;
                if let Some(ends) = &mut self.episode_ends {
                    ends.push(EpisodeEnd::process(
                        &site.name,
                        &asset.name,
                        &done.name,
                        done.first_seq,
                        now,
                    ));
                }
                done.changed
            }
            AlertTarget::Series { id: series, what } => self.series[*series as usize]
                .accept(what)
                .map_err(|why| DetectorError::Refused(format!("alert {id}: {why}")))?,
            AlertTarget::Asset(target) => asset.accept(target),
            AlertTarget::Access(target) => site.accept(r.asset, target),
        };
        Ok(changed)
    }

    /// The SOC has `asset` of `site` (every asset of the site when `None`)
    /// learn again: everything its models learned is forgotten, with the
    /// alerts they raised. Without `until` each asset learns for `learn`
    /// from its next event; with `until`, the caller feeds it the stored
    /// history of the interval it chose (through [`Detector::process`]),
    /// every row before `until` is learned, and [`Detector::end_relearn`]
    /// is called once that history is in. Returns the assets reset.
    pub fn relearn(
        &mut self,
        site: &str,
        asset: Option<&str>,
        until: Option<i64>,
    ) -> Result<Vec<String>, DetectorError> {
        let ids = self.select(Some(site), asset)?;
        let mut names = Vec::new();
        for &id in &ids {
            let a = &self.assets[id as usize];
            let fresh = a.relearned(until);
            self.sites[a.site as usize].forget_asset(id);
            names.push(a.name.clone());
            self.assets[id as usize] = fresh;
            for s in self.series.iter_mut().filter(|s| s.asset == id) {
                *s = Series::new(id, s.kind, s.name.clone());
            }
        }
        self.alerts.retain(|r| !ids.contains(&r.asset));
        Ok(names)
    }

    /// The stored history of a relearn with `until` has been fed: the
    /// assets forget when their last stored event was, so the gap to the
    /// live stream is not taken for a silence; each protects from its
    /// first live event.
    pub fn end_relearn(&mut self, site: &str, asset: Option<&str>) -> Result<(), DetectorError> {
        for id in self.select(Some(site), asset)? {
            let a = &mut self.assets[id as usize];
            a.last_ts = None;
            a.silent = false;
        }
        Ok(())
    }

    /// Whether `site` (and `asset`, when given) are known.
    pub fn knows(&self, site: &str, asset: Option<&str>) -> bool {
        self.select(Some(site), asset).is_ok()
    }

    /// The asset ids a decision or report names.
    fn select(&self, site: Option<&str>, asset: Option<&str>) -> Result<Vec<u32>, DetectorError> {
        let sites: Vec<usize> = match site {
            None => (0..self.sites.len()).collect(),
            Some(name) => match self.sites.iter().position(|s| s.name == name) {
                Some(i) => vec![i],
                None => {
                    return Err(DetectorError::Unknown(format!(
                        "site {name:?} is not one the detector has seen (known: {})",
                        self.sites
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
        };
        let mut ids = Vec::new();
        for i in sites {
            for &id in &self.sites[i].assets {
                if asset.is_none_or(|a| self.assets[id as usize].name == a) {
                    ids.push(id);
                }
            }
        }
        if let (Some(a), true) = (asset, ids.is_empty()) {
            return Err(DetectorError::Unknown(format!(
                "asset {a:?} is not one the detector has seen{}",
                site.map_or(String::new(), |s| format!(" at site {s}"))
            )));
        }
        Ok(ids)
    }
}
