//! The alert lifecycle on the control plane: what `alert.ack`,
//! `alert.resolve`, `alert.suppress` and `alert.unsuppress` are checked
//! against before they are recorded, and the control records they become. The detector component
//! is the one consumer that acts on them, in log order
//! ([`crate::components::detector`]): it appends an update of the alert to
//! the `alerts` topic for an ack or a resolve, and keeps the suppressions
//! in its checkpoint and marks the new alerts they match.
//!
//! # Control records
//!
//! ```text
//! alert.ack, alert.resolve
//!   site, asset, alert_id   the alert's
//!   args                    {"comment": "text" | null,
//!                            "alert": <the alert in its JSON form (outputs::alert_json), as the history held it>}
//! alert.suppress
//!   site, asset             the site; the asset, or "" for every asset of it
//!   alert_id                null
//!   args                    {"detector": "cycle" | null, "for_secs": 7200, "reason": "text"}
//! alert.unsuppress
//!   site, asset             the suppression's
//!   alert_id                null
//!   args                    {"suppression": "<the alert.suppress record's id>", "reason": "text"}
//! alert.comment
//!   site, asset, alert_id   the alert's
//!   args                    {"comment": "text"}
//! ```
//!
//! A comment changes nothing of the alert: no consumer acts on it, the
//! `audit` table keeps it (the dashboard shows an alert's comments from
//! there).
//!
//! A suppression holds for alerts whose event time is in `[ts, ts +
//! for_secs)`, `ts` being the control record's: the window is part of the
//! hashed record, and an alert is judged by when its events happened, not
//! by when they arrived (a site's backlog after a WAN outage is judged the
//! same as live data, and a replay gives the same answer). An
//! `alert.unsuppress` ends it early, at its own `ts` ([`Suppression::lift`]):
//! alerts of events from then on are sent again.
//!
//! Which suppressions exist, and which are still in force, is read from the
//! `audit` table ([`suppressions`]), the same records the detector applied.
//!
//! Carrying the alert's fields in the record makes the update exact (the
//! detector need not remember every alert it ever raised) and puts them
//! under the audit's hash chain too.

use super::Request;
use crate::outputs::{alert_from_json, alert_json};
use otwatch_proto::arrow::{batch_to_alerts, batch_to_control, state, ControlRecord};
use otwatch_proto::Alert;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The longest suppression one decision may set: a month. A longer one
/// is far more likely a unit mistake (`--for 2000h`) than a plan, and a
/// site silenced by mistake hides everything.
pub const MAX_SUPPRESSION_SECS: u64 = 31 * 24 * 3600;
/// The longest comment or reason, in characters (it travels in every
/// output's update and in the audit).
pub const MAX_COMMENT_CHARS: usize = 1000;
/// How long after its end a suppression is kept, so that late events of
/// its window (a site's backlog after an outage) are still judged by it.
pub const SUPPRESSION_GRACE_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
/// The detectors an alert can come from (the `detector` column).
pub const DETECTORS: &[&str] = &[
    "cycle", "cadence", "sequence", "process", "discrete", "access",
];

/// The query of the latest row of each alert id among the rows of
/// `alerts` that match `filter` (an SQL condition): the row with the
/// greatest `coalesce(state_at, ts)`, its `state` made `open` when null
/// (history written before alert states). Every column of `alerts` is kept,
/// in order; the CLI's `otwatch alerts list` and the dashboard read alerts
/// through it.
pub fn latest_alerts_sql(filter: &str) -> String {
    format!(
        "SELECT * EXCEPT (latest) REPLACE (coalesce(state, 'open') AS state) FROM (\
           SELECT *, row_number() OVER (PARTITION BY id ORDER BY coalesce(state_at, ts) DESC) AS latest \
           FROM alerts WHERE {filter}) \
         WHERE latest = 1"
    )
}

/// One suppression in force: from an `alert.suppress` control record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The control record's id.
    pub id: String,
    pub site: String,
    /// Every asset of the site when `None`.
    pub asset: Option<String>,
    /// Every detector when `None`.
    pub detector: Option<String>,
    /// Event times `[from_ns, until_ns)` it covers.
    pub from_ns: i64,
    pub until_ns: i64,
    /// Who set it.
    pub by: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressArgs {
    detector: Option<String>,
    for_secs: u64,
    reason: String,
}

impl Suppression {
    /// The suppression an `alert.suppress` record sets.
    pub fn from_record(r: &ControlRecord) -> Result<Suppression, String> {
        let args: SuppressArgs = serde_json::from_str(&r.args)
            .map_err(|e| format!("the arguments of {} are not understood: {e}", r.id))?;
        let secs = i64::try_from(args.for_secs.min(MAX_SUPPRESSION_SECS)).unwrap_or(0);
        Ok(Suppression {
            id: r.id.clone(),
            site: r.site.clone(),
            asset: (!r.asset.is_empty()).then(|| r.asset.clone()),
            detector: args.detector,
            from_ns: r.ts_ns,
            until_ns: r.ts_ns.saturating_add(secs.saturating_mul(1_000_000_000)),
            by: r.user.clone(),
            reason: args.reason,
        })
    }

    /// Whether it covers `alert`.
    pub fn matches(&self, alert: &Alert) -> bool {
        alert.site == self.site
            && self.asset.as_ref().is_none_or(|a| *a == alert.asset)
            && self.detector.as_ref().is_none_or(|d| *d == alert.detector)
            && (self.from_ns..self.until_ns).contains(&alert.ts_ns)
    }

    /// Ends it at `at_ns` (an `alert.unsuppress` record's time), if it would
    /// have lasted longer; never before it began.
    pub fn lift(&mut self, at_ns: i64) {
        self.until_ns = self.until_ns.min(at_ns.max(self.from_ns));
    }

    /// Marks `alert` suppressed by this suppression.
    pub fn mark(&self, alert: &mut Alert) {
        alert.state = state::SUPPRESSED.into();
        alert.state_by = self.by.clone();
        alert.comment = self.reason.clone();
    }
}

/// What an `alert.unsuppress` record says: the id of the suppression it
/// lifts, and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsuppress {
    pub suppression: String,
    pub reason: String,
}

impl Unsuppress {
    /// Reads the arguments of an `alert.unsuppress` record.
    pub fn from_record(r: &ControlRecord) -> Result<Unsuppress, String> {
        serde_json::from_str(&r.args)
            .map_err(|e| format!("the arguments of {} are not understood: {e}", r.id))
    }
}

/// A suppression as the `audit` table tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionRecord {
    /// As in force: `until_ns` cut at the lift, if it was lifted.
    pub suppression: Suppression,
    /// The end it was set with.
    pub set_until_ns: i64,
    /// The `alert.unsuppress` that ended it early: its time, who, and why.
    pub lifted: Option<(i64, String, String)>,
}

impl SuppressionRecord {
    /// `in force`, `lifted` or `over` at `now_ns`.
    pub fn status(&self, now_ns: i64) -> &'static str {
        if self.lifted.is_some() {
            "lifted"
        } else if now_ns < self.suppression.until_ns {
            "in force"
        } else {
            "over"
        }
    }
}

/// Every suppression the `audit` table of the history at `history` holds,
/// oldest first, with its lift if any.
pub async fn suppressions(history: &Path) -> Result<Vec<SuppressionRecord>, String> {
    if !history.exists() {
        return Ok(Vec::new());
    }
    let sql =
        "SELECT * FROM audit WHERE command IN ('alert.suppress', 'alert.unsuppress') ORDER BY ts";
    let mut stream =
        otwatch_history::query_stream(history, sql, &otwatch_history::SqlConfig::default())
            .await
            .map_err(|e| format!("cannot read the audit history: {e}"))?;
    let mut out: Vec<SuppressionRecord> = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        let batch = batch.map_err(|e| format!("cannot read the audit history: {e}"))?;
        let records = batch_to_control(&batch)
            .map_err(|e| format!("the audit history is unreadable: {e}"))?;
        for r in records {
            if r.command == "alert.suppress" {
                if let Ok(s) = Suppression::from_record(&r) {
                    out.push(SuppressionRecord {
                        set_until_ns: s.until_ns,
                        suppression: s,
                        lifted: None,
                    });
                }
            } else if let Ok(lift) = Unsuppress::from_record(&r) {
                if let Some(found) = out
                    .iter_mut()
                    .find(|s| s.suppression.id == lift.suppression && s.lifted.is_none())
                {
                    found.suppression.lift(r.ts_ns);
                    found.lifted = Some((r.ts_ns, r.user.clone(), lift.reason));
                }
            }
        }
    }
    Ok(out)
}

/// The update an `alert.ack` or `alert.resolve` record makes: the alert it
/// carries, in its new state.
pub fn update_from_record(r: &ControlRecord) -> Result<Alert, String> {
    let new_state = match r.command.as_str() {
        "alert.ack" => state::ACKED,
        "alert.resolve" => state::RESOLVED,
        other => return Err(format!("{other} does not change an alert's state")),
    };
    let args: serde_json::Value = serde_json::from_str(&r.args)
        .map_err(|e| format!("the arguments of {} are not JSON: {e}", r.id))?;
    let mut alert = alert_from_json(&args["alert"])
        .ok_or_else(|| format!("{} does not carry the alert it changes", r.id))?;
    if Some(&alert.id) != r.alert_id.as_ref() {
        return Err(format!(
            "{} carries alert {} but names {:?}",
            r.id, alert.id, r.alert_id
        ));
    }
    alert.state = new_state.into();
    alert.state_by = r.user.clone();
    alert.state_at_ns = r.ts_ns;
    alert.comment = args["comment"].as_str().unwrap_or_default().to_string();
    Ok(alert)
}

/// A comment or reason: at most [`MAX_COMMENT_CHARS`], no control characters
/// but line breaks (it is written into syslog lines and CEF fields).
fn check_text(what: &str, text: &str) -> Result<(), String> {
    let chars = text.chars().count();
    if chars > MAX_COMMENT_CHARS {
        return Err(format!(
            "the {what} is {chars} characters long; at most {MAX_COMMENT_CHARS}"
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("the {what} holds control characters"));
    }
    Ok(())
}

/// The checks of an `alert.suppress` that need nothing but the request.
pub fn check_suppress(
    site: &str,
    asset: Option<&str>,
    detector: Option<&str>,
    for_secs: u64,
    reason: &str,
) -> Result<(), String> {
    if site.trim().is_empty() {
        return Err("name the site to suppress (--site)".into());
    }
    if asset.is_some_and(|a| a.trim().is_empty()) {
        return Err("the asset is empty; leave --asset out to suppress the whole site".into());
    }
    if let Some(d) = detector {
        if !DETECTORS.contains(&d) {
            return Err(format!(
                "{d:?} is not a detector; one of {}",
                DETECTORS.join(", ")
            ));
        }
    }
    if for_secs == 0 {
        return Err("the duration is zero; give how long to suppress (--for 2h)".into());
    }
    if for_secs > MAX_SUPPRESSION_SECS {
        return Err(format!(
            "a suppression of {for_secs} s is longer than the longest allowed ({} days); suppress again when it ends",
            MAX_SUPPRESSION_SECS / 86_400
        ));
    }
    if reason.trim().is_empty() {
        return Err(
            "give the reason for the suppression (--reason); it goes into the audit".into(),
        );
    }
    check_text("reason", reason)
}

/// An alert id as the detector makes them (16 hex digits), or at least
/// something that cannot be more than an id.
fn check_alert_id(alert_id: &str) -> Result<(), String> {
    if alert_id.is_empty()
        || alert_id.len() > 64
        || !alert_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{alert_id:?} is not an alert id (16 hex digits, as `otwatch alerts list` shows)"
        ));
    }
    Ok(())
}

/// The latest state of alert `alert_id` in the history's `alerts` table.
pub async fn latest(history: &Path, alert_id: &str) -> Result<Alert, String> {
    check_alert_id(alert_id)?;
    let unknown = || {
        format!("alert {alert_id} is not in the alerts history: unknown, or raised in the last seconds and not yet written (try again shortly; `otwatch alerts list` shows the alerts)")
    };
    if !history.exists() {
        return Err(unknown());
    }
    let sql = format!(
        "SELECT * FROM alerts WHERE id = '{alert_id}' ORDER BY coalesce(state_at, ts) DESC LIMIT 1"
    );
    let mut stream =
        otwatch_history::query_stream(history, &sql, &otwatch_history::SqlConfig::default())
            .await
            .map_err(|e| format!("cannot read the alerts history: {e}"))?;
    let mut found = None;
    while let Some(batch) = stream.next_batch().await {
        let batch = batch.map_err(|e| format!("cannot read the alerts history: {e}"))?;
        let alerts = batch_to_alerts(&batch)
            .map_err(|e| format!("the alerts history is unreadable: {e}"))?;
        found = found.or(alerts.into_iter().next());
    }
    found.ok_or_else(unknown)
}

/// Whether `request` (an ack or a resolve) may change `current`, the
/// latest state of its alert.
pub fn check_transition(request: &Request, current: &Alert) -> Result<(), String> {
    let by = |a: &Alert| {
        if a.state_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", a.state_by)
        }
    };
    match (request, current.state.as_str()) {
        (_, state::RESOLVED) => Err(format!(
            "alert {} is already resolved{}",
            current.id,
            by(current)
        )),
        (Request::AlertAck { .. }, state::ACKED) => Err(format!(
            "alert {} is already acked{}",
            current.id,
            by(current)
        )),
        _ => Ok(()),
    }
}

/// What the control record of an alert decision holds.
#[derive(Debug)]
pub struct Decision {
    pub site: String,
    /// Empty for a whole site.
    pub asset: String,
    pub alert_id: Option<String>,
    pub args: serde_json::Value,
}

/// Checks an `alert.*` request and gives what its control record holds.
pub async fn decision(request: &Request, history: &Path) -> Result<Decision, String> {
    match request {
        Request::AlertAck { alert_id, comment } | Request::AlertResolve { alert_id, comment } => {
            if let Some(c) = comment {
                check_text("comment", c)?;
            }
            let current = latest(history, alert_id).await?;
            check_transition(request, &current)?;
            let args = serde_json::json!({
                "comment": comment,
                "alert": alert_json(&current),
            });
            Ok(Decision {
                site: current.site,
                asset: current.asset,
                alert_id: Some(current.id),
                args,
            })
        }
        Request::AlertSuppress {
            site,
            asset,
            detector,
            for_secs,
            reason,
        } => {
            check_suppress(
                site,
                asset.as_deref(),
                detector.as_deref(),
                *for_secs,
                reason,
            )?;
            let args = serde_json::json!({
                "detector": detector,
                "for_secs": for_secs,
                "reason": reason.trim(),
            });
            Ok(Decision {
                site: site.clone(),
                asset: asset.clone().unwrap_or_default(),
                alert_id: None,
                args,
            })
        }
        Request::AlertComment { alert_id, comment } => {
            if comment.trim().is_empty() {
                return Err("the comment is empty".into());
            }
            check_text("comment", comment)?;
            let current = latest(history, alert_id).await?;
            Ok(Decision {
                site: current.site,
                asset: current.asset,
                alert_id: Some(current.id),
                args: serde_json::json!({"comment": comment.trim()}),
            })
        }
        Request::AlertUnsuppress { id, reason } => {
            if reason.trim().is_empty() {
                return Err(
                    "give the reason for ending the suppression early (--reason); it goes into the audit"
                        .into(),
                );
            }
            check_text("reason", reason)?;
            let all = suppressions(history).await?;
            let Some(found) = all.iter().find(|s| s.suppression.id == *id) else {
                return Err(format!(
                    "no suppression has the id {id:?}: unknown, or set in the last seconds and not yet written (try again shortly; `otwatch alerts suppressions` lists them)"
                ));
            };
            if let Some((at, by, _)) = &found.lifted {
                return Err(format!(
                    "suppression {id} was already lifted by {by} at {}",
                    crate::outputs::format_ts(*at)
                ));
            }
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            if found.suppression.until_ns <= now {
                return Err(format!(
                    "suppression {id} is over: it ended at {}",
                    crate::outputs::format_ts(found.suppression.until_ns)
                ));
            }
            Ok(Decision {
                site: found.suppression.site.clone(),
                asset: found.suppression.asset.clone().unwrap_or_default(),
                alert_id: None,
                args: serde_json::json!({"suppression": id, "reason": reason.trim()}),
            })
        }
        other => Err(format!(
            "{} is not an alert decision",
            other.command().unwrap_or("a read")
        )),
    }
}
