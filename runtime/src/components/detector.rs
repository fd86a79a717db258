//! The detector component: feeds the `events` topic to the detector batch by
//! batch and appends the alerts it raises to the `alerts` topic (the alert
//! outputs and the alerts history read them from there).
//!
//! It also consumes the `control` topic (the SOC's decisions, see
//! [`crate::admin`]) and applies each decision to the detector before the
//! events it reads next: a decision appended before an event is in force
//! when that event is scored. `model.relearn` with an interval reads the
//! stored `events` history of that interval (`otwatch_history::query_stream`)
//! and feeds it to the detector before going on with the live log. Queries
//! of the admin socket ([`Query`]: `model status`, the check of a model decision
//! before it is recorded) are answered here, between polls, from the live
//! state, after the decisions already in the log are applied: routing them
//! to the one owner of the state costs nothing while nobody asks, where a
//! shared snapshot would be rebuilt on every batch.
//!
//! It is also the one consumer that acts on the alert lifecycle
//! ([`crate::admin::alerts`]), in log order: an `alert.ack` or
//! `alert.resolve` appends the alert again, same id, in its new state, to
//! the `alerts` topic (so the outputs send the update and the `alerts`
//! table holds each state); an `alert.suppress` adds a suppression that
//! marks the alerts raised after it in the log, and within its window,
//! `suppressed` (stored, not sent); an `alert.unsuppress` ends such a
//! window at its own time.
//!
//! # Checkpoint
//!
//! `<data_dir>/detector/checkpoint.json` holds `{"offset": N,
//! "control_offset": M, "detector": {...}, "suppressions": [...]}`:
//! everything learned, the suppressions in force
//! ([`crate::admin::alerts::Suppression`]) and the next offsets of `events`
//! and `control` to process, replaced atomically together every
//! [`CHECKPOINT_EVERY`] and at a clean stop (a checkpoint without
//! `control_offset` reads as 0, without `suppressions` as none). A restart
//! resumes from it; the options of `[detector]` in the configuration always
//! win over the copy the checkpoint holds (the options that changed are
//! logged), so a changed configuration takes effect at the next start.
//!
//! Alerts are at least once: a crash between raising an alert and the next
//! checkpoint raises it again after the restart, with the same id; so is
//! an update of an alert's state.
//!
//! A failing disk is retried: alerts that cannot be appended are held (no
//! further batch is processed until they are in the log), a checkpoint that
//! cannot be written is tried again later; the component shows `retrying`
//! meanwhile.

use crate::admin::alerts::{update_from_record, Suppression, Unsuppress, SUPPRESSION_GRACE_NS};
use crate::admin::Request;
use crate::health::Backoff;
use crate::retry_transient;
use crate::supervisor::Context;
use anyhow::Context as _;
use arrow::record_batch::RecordBatch;
use otwatch_detector::{AssetReport, Detector, DetectorConfig};
use otwatch_eventlog::{Consumer, EventLog, LogError, Record, Topic};
use otwatch_proto::arrow::{batch_to_control, events_schema, ControlRecord};
use otwatch_proto::Alert;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;

/// How often the detector's state is checkpointed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// The consumer group of the detector.
pub const GROUP: &str = "detector";
/// Records read from the log per poll, at most.
const RECORDS_PER_POLL: usize = 256;

#[derive(serde::Deserialize)]
struct Checkpoint {
    offset: u64,
    #[serde(default)]
    control_offset: u64,
    detector: Detector,
    #[serde(default)]
    suppressions: Vec<Suppression>,
}

#[derive(serde::Serialize)]
struct CheckpointRef<'a> {
    offset: u64,
    control_offset: u64,
    detector: &'a Detector,
    suppressions: &'a [Suppression],
}

/// A question of the admin socket for the detector.
pub enum Query {
    /// `model.status`: the report of a site (every site when `None`) or
    /// one asset.
    Status {
        site: Option<String>,
        asset: Option<String>,
        reply: oneshot::Sender<Result<Vec<AssetReport>, String>>,
    },
    /// Whether a decision names what the detector knows; the answer is the
    /// (site, asset) it acts on (asset empty for a whole site).
    Check {
        request: Request,
        reply: oneshot::Sender<Result<(String, String), String>>,
    },
}

/// What the component needs.
pub struct DetectorComponent {
    pub log: Arc<dyn EventLog>,
    /// `<data_dir>/detector`.
    pub dir: PathBuf,
    /// The history root, read by `model.relearn` over an interval.
    pub history: PathBuf,
    pub config: DetectorConfig,
    /// Alerts raised since start, for `/metrics` and the demo.
    pub alerts_raised: Arc<AtomicU64>,
    /// Questions of the admin socket.
    pub queries: mpsc::Receiver<Query>,
}

fn transient(e: &LogError) -> bool {
    matches!(e, LogError::Io { .. } | LogError::Fs(_))
}

/// What a checkpoint restores.
struct Restored {
    detector: Detector,
    offset: u64,
    control_offset: u64,
    suppressions: Vec<Suppression>,
}

/// Loads the checkpoint (adopting `config`) or starts a new detector; with
/// the next offsets of `events` and `control`.
fn restore(path: &Path, config: DetectorConfig) -> anyhow::Result<Restored> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let cp: Checkpoint = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "detector checkpoint {} is unreadable (move it away to start learning anew)",
                    path.display()
                )
            })?;
            let mut detector = cp.detector;
            let changed = detector
                .reconfigure(config)
                .context("the [detector] configuration is invalid")?;
            if changed.is_empty() {
                tracing::info!(offset = cp.offset, "detector resumed from its checkpoint");
            } else {
                tracing::info!(
                    offset = cp.offset,
                    changed = %changed.join(", "),
                    "detector resumed from its checkpoint; these [detector] options changed since it was written and the configured values now apply"
                );
            }
            Ok(Restored {
                detector,
                offset: cp.offset,
                control_offset: cp.control_offset,
                suppressions: cp.suppressions,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Restored {
            detector: Detector::new(config).context("the [detector] configuration is invalid")?,
            offset: 0,
            control_offset: 0,
            suppressions: Vec::new(),
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save(
    path: &Path,
    offset: u64,
    control_offset: u64,
    detector: &Detector,
    suppressions: &[Suppression],
) -> Result<(), otwatch_fs::FsError> {
    let bytes = serde_json::to_vec(&CheckpointRef {
        offset,
        control_offset,
        detector,
        suppressions,
    })
    .expect("the detector state serializes");
    otwatch_fs::write_atomic(path, &bytes)
}

impl DetectorComponent {
    pub async fn run(mut self, mut ctx: Context) -> anyhow::Result<()> {
        otwatch_fs::create_dir_all_durable(&self.dir)?;
        let path = self.dir.join("checkpoint.json");
        let Restored {
            mut detector,
            offset,
            control_offset,
            mut suppressions,
        } = restore(&path, self.config.clone())?;
        let mut consumer = self
            .log
            .consumer_at(Topic::Events, GROUP, offset)
            .await
            .context("cannot open a consumer of the event log")?;
        let mut control = self
            .log
            .consumer_at(Topic::Control, GROUP, control_offset)
            .await
            .context("cannot open a consumer of the control topic")?;
        ctx.reporter.set_position(offset);
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut backoff = Backoff::default();
        let mut saved_at = Instant::now();
        let mut saved = (offset, control_offset);
        loop {
            let stopping = ctx.stopping();
            let wait = if stopping {
                Duration::ZERO
            } else {
                Duration::from_millis(250)
            };
            let polled = retry_transient!(
                ctx,
                backoff,
                "cannot read the event log",
                transient,
                consumer.poll(RECORDS_PER_POLL, wait).await
            );
            let Some(got) = polled.context("cannot read the event log")? else {
                return Ok(());
            };
            let drained = got.is_empty();
            // Decisions after the poll, before scoring: one appended before
            // these events (even while the poll waited) is in force when
            // they are scored.
            if !self
                .decide(
                    &mut detector,
                    &mut suppressions,
                    control.as_mut(),
                    &mut ctx,
                    &mut backoff,
                )
                .await?
            {
                return Ok(());
            }
            let mut raised = Vec::new();
            for d in &got {
                match detector.process(&d.batch) {
                    Ok(alerts) => raised.extend(alerts),
                    Err(e) => {
                        tracing::error!(offset = d.offset, error = %e, "detector could not process a batch; skipped")
                    }
                }
            }
            for alert in &mut raised {
                if let Some(s) = suppressions.iter().find(|s| s.matches(alert)) {
                    s.mark(alert);
                    tracing::info!(site = %alert.site, asset = %alert.asset, alert_id = %alert.id, suppression = %s.id, "alert suppressed: stored, not sent");
                }
            }
            if !raised.is_empty() {
                if !self.append(&raised, &mut ctx, &mut backoff).await? {
                    // Stopping before the alerts reached the log: the
                    // checkpoint is not advanced, so they are raised again
                    // next time.
                    return Ok(());
                }
                self.alerts_raised
                    .fetch_add(raised.len() as u64, Ordering::Relaxed);
            }
            while let Ok(query) = self.queries.try_recv() {
                if !self
                    .decide(
                        &mut detector,
                        &mut suppressions,
                        control.as_mut(),
                        &mut ctx,
                        &mut backoff,
                    )
                    .await?
                {
                    return Ok(());
                }
                answer(&detector, query);
            }
            let position = consumer.position();
            let positions = (position, control.position());
            if positions != saved && (saved_at.elapsed() >= CHECKPOINT_EVERY || stopping) {
                let (path2, detector2, suppressions2) =
                    (path.clone(), detector, suppressions.clone());
                let (d, written) = tokio::task::spawn_blocking(move || {
                    let r = save(&path2, positions.0, positions.1, &detector2, &suppressions2);
                    (detector2, r)
                })
                .await?;
                detector = d;
                match written {
                    Ok(()) => {
                        saved = positions;
                        saved_at = Instant::now();
                        // The log may delete what the checkpoint covers.
                        if let Err(e) = consumer.commit(position).await {
                            tracing::warn!(error = %e, "cannot record the detector's offset in the event log; retention waits");
                        }
                        if let Err(e) = control.commit(positions.1).await {
                            tracing::warn!(error = %e, "cannot record the detector's control offset in the event log; retention waits");
                        }
                        ctx.reporter.running();
                        backoff.reset();
                    }
                    Err(e) => {
                        // Detection goes on; the checkpoint is tried again at
                        // the next interval.
                        ctx.reporter
                            .retrying(&format!("cannot write the detector checkpoint: {e}"));
                        saved_at = Instant::now();
                        if stopping {
                            return Ok(());
                        }
                    }
                }
            }
            ctx.reporter.set_position(position);
            if stopping && drained {
                return Ok(());
            }
        }
    }

    /// Applies the control records the log holds beyond `control`'s
    /// position. A decision that cannot be applied (its alert was
    /// forgotten since it was checked, ...) is logged and skipped: it stays
    /// in the audit either way. False if told to stop before the alert
    /// updates the decisions make reached the log (the checkpoint must
    /// then not move, so that they are made again).
    async fn decide(
        &self,
        detector: &mut Detector,
        suppressions: &mut Vec<Suppression>,
        control: &mut dyn Consumer,
        ctx: &mut Context,
        backoff: &mut Backoff,
    ) -> anyhow::Result<bool> {
        loop {
            let polled = retry_transient!(
                ctx,
                backoff,
                "cannot read the control topic",
                transient,
                control.poll(RECORDS_PER_POLL, Duration::ZERO).await
            );
            let Some(got) = polled.context("cannot read the control topic")? else {
                return Ok(false);
            };
            if got.is_empty() {
                return Ok(true);
            }
            let mut updates = Vec::new();
            for d in &got {
                let records = match batch_to_control(&d.batch) {
                    Ok(records) => records,
                    Err(e) => {
                        tracing::error!(offset = d.offset, error = %e, "control record does not have the control schema; skipped");
                        continue;
                    }
                };
                for record in records {
                    if record.command.starts_with("alert.") {
                        updates.extend(apply_alert_decision(suppressions, &record));
                    } else {
                        self.apply(detector, &record).await;
                    }
                }
            }
            if !updates.is_empty() && !self.append(&updates, ctx, backoff).await? {
                return Ok(false);
            }
        }
    }

    /// Applies one decision.
    async fn apply(&self, detector: &mut Detector, r: &ControlRecord) {
        let asset = (!r.asset.is_empty()).then_some(r.asset.as_str());
        match r.command.as_str() {
            "model.accept" => {
                let Some(alert_id) = &r.alert_id else {
                    tracing::warn!(id = %r.id, "model.accept without an alert id; skipped");
                    return;
                };
                match detector.accept(alert_id) {
                    Ok(changed) => {
                        tracing::info!(id = %r.id, user = %r.user, site = %r.site, asset = %r.asset, alert_id = %alert_id, %changed, "deviation accepted as normal")
                    }
                    Err(e) => {
                        tracing::warn!(id = %r.id, alert_id = %alert_id, error = %e, "model.accept could not be applied")
                    }
                }
            }
            "model.relearn" => {
                let args: serde_json::Value =
                    serde_json::from_str(&r.args).unwrap_or(serde_json::Value::Null);
                let interval = match (args["from_ns"].as_i64(), args["to_ns"].as_i64()) {
                    (Some(from), Some(to)) => Some((from, to)),
                    _ => None,
                };
                if let Some((from, to)) = interval {
                    if let Err(e) = detector.relearn(&r.site, asset, Some(to)) {
                        tracing::warn!(id = %r.id, error = %e, "model.relearn could not be applied");
                        return;
                    }
                    match self.feed_history(detector, &r.site, asset, from, to).await {
                        Ok(rows) => {
                            let _ = detector.end_relearn(&r.site, asset);
                            tracing::info!(id = %r.id, user = %r.user, site = %r.site, asset = %r.asset, rows, "relearned from the stored history");
                        }
                        Err(e) => {
                            // Half a history would protect with too narrow a
                            // baseline: learn from the live stream instead.
                            let _ = detector.relearn(&r.site, asset, None);
                            tracing::error!(id = %r.id, site = %r.site, asset = %r.asset, error = format!("{e:#}"), "cannot relearn from the stored history; learning from the next events instead");
                        }
                    }
                } else {
                    match detector.relearn(&r.site, asset, None) {
                        Ok(assets) => {
                            tracing::info!(id = %r.id, user = %r.user, site = %r.site, assets = %assets.join(", "), "relearning from the next events")
                        }
                        Err(e) => {
                            tracing::warn!(id = %r.id, error = %e, "model.relearn could not be applied")
                        }
                    }
                }
            }
            // Decisions for other consumers (alert lifecycle, ...).
            other => {
                tracing::debug!(id = %r.id, command = other, "control record not for the detector")
            }
        }
    }

    /// Feeds the stored `events` of `site` (and `asset`) in `[from, to)`
    /// to the detector, in time order. Returns the rows fed. Alerts are not
    /// expected (every row is before the end of learning) and are dropped.
    async fn feed_history(
        &self,
        detector: &mut Detector,
        site: &str,
        asset: Option<&str>,
        from: i64,
        to: i64,
    ) -> anyhow::Result<u64> {
        if !self.history.exists() {
            return Ok(0);
        }
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let columns: Vec<String> = events_schema()
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name()))
            .collect();
        let sql = format!(
            "SELECT {} FROM events WHERE site = {} {} AND ts >= to_timestamp_nanos({from}) AND ts < to_timestamp_nanos({to}) ORDER BY ts, agent, seq",
            columns.join(", "),
            quote(site),
            asset.map_or(String::new(), |a| format!("AND asset = {}", quote(a))),
        );
        let mut stream = otwatch_history::query_stream(
            &self.history,
            &sql,
            &otwatch_history::SqlConfig::default(),
        )
        .await
        .context("cannot query the events history")?;
        let mut rows = 0;
        while let Some(batch) = stream.next_batch().await {
            let batch = conform(&batch.context("cannot read the events history")?)?;
            rows += batch.num_rows() as u64;
            if let Err(e) = detector.process(&batch) {
                tracing::warn!(error = %e, "a batch of the stored history could not be processed; skipped");
            }
        }
        Ok(rows)
    }

    /// Appends alerts (raised, or updates of their state) to the log,
    /// retrying a failing disk. False if told to stop before it succeeded.
    async fn append(
        &self,
        raised: &[Alert],
        ctx: &mut Context,
        backoff: &mut Backoff,
    ) -> anyhow::Result<bool> {
        let batch = otwatch_proto::arrow::alerts_to_batch(raised)?;
        let record = || Record {
            batch: batch.clone(),
            producer: None,
        };
        let appended = retry_transient!(
            ctx,
            backoff,
            "cannot append alerts to the event log",
            transient,
            self.log.append(Topic::Alerts, vec![record()]).await
        );
        if appended
            .context("cannot append alerts to the event log")?
            .is_none()
        {
            return Ok(false);
        }
        ctx.reporter.running();
        Ok(true)
    }
}

/// A batch of the `events` table as a query returns it, in the exact
/// `events` schema (a query may return dictionary columns as plain strings).
fn conform(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let schema = events_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let column = batch
                .column_by_name(f.name())
                .with_context(|| format!("the events history has no column {}", f.name()))?;
            if column.data_type() == f.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast(column, f.data_type())
                    .with_context(|| format!("column {} of the events history", f.name()))
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Applies one decision of the alert lifecycle: the update of the alert it
/// makes, if any.
fn apply_alert_decision(suppressions: &mut Vec<Suppression>, r: &ControlRecord) -> Option<Alert> {
    match r.command.as_str() {
        "alert.ack" | "alert.resolve" => match update_from_record(r) {
            Ok(update) => {
                tracing::info!(id = %r.id, user = %r.user, site = %r.site, asset = %r.asset, alert_id = %update.id, state = %update.state, "alert state changed");
                Some(update)
            }
            Err(e) => {
                tracing::warn!(id = %r.id, error = %e, "alert decision could not be applied; skipped");
                None
            }
        },
        "alert.suppress" => {
            match Suppression::from_record(r) {
                Ok(s) => {
                    // Suppressions long over are dropped; the audit keeps them.
                    suppressions
                        .retain(|old| old.until_ns.saturating_add(SUPPRESSION_GRACE_NS) > r.ts_ns);
                    tracing::info!(id = %r.id, user = %r.user, site = %s.site, asset = s.asset.as_deref().unwrap_or("*"), detector = s.detector.as_deref().unwrap_or("*"), until_ns = s.until_ns, "suppression in force");
                    suppressions.push(s);
                }
                Err(e) => {
                    tracing::warn!(id = %r.id, error = %e, "alert.suppress could not be applied; skipped")
                }
            }
            None
        }
        "alert.unsuppress" => {
            match Unsuppress::from_record(r).map(|u| u.suppression) {
                Ok(id) => match suppressions.iter_mut().find(|s| s.id == id) {
                    Some(s) => {
                        s.lift(r.ts_ns);
                        tracing::info!(id = %r.id, user = %r.user, site = %s.site, suppression = %id, until_ns = s.until_ns, "suppression lifted");
                    }
                    None => {
                        tracing::warn!(id = %r.id, suppression = %id, "alert.unsuppress names no suppression the detector holds; skipped")
                    }
                },
                Err(e) => {
                    tracing::warn!(id = %r.id, error = %e, "alert.unsuppress could not be applied; skipped")
                }
            }
            None
        }
        other => {
            tracing::warn!(id = %r.id, command = other, "unknown alert decision; skipped");
            None
        }
    }
}

/// Answers a question of the admin socket from the live state.
fn answer(detector: &Detector, query: Query) {
    match query {
        Query::Status { site, asset, reply } => {
            let _ = reply.send(
                detector
                    .report(site.as_deref(), asset.as_deref())
                    .map_err(|e| e.to_string()),
            );
        }
        Query::Check { request, reply } => {
            let _ = reply.send(check(detector, &request));
        }
    }
}

/// Whether `request` names what the detector knows; the (site, asset) it
/// acts on.
fn check(detector: &Detector, request: &Request) -> Result<(String, String), String> {
    match request {
        Request::ModelAccept { alert_id } => detector.alert_subject(alert_id).ok_or_else(|| {
            format!("alert {alert_id} is not one the detector knows (never raised, its asset was relearned since, or too old); see `otwatch model status`")
        }),
        Request::ModelRelearn {
            site,
            asset,
            from_ns,
            to_ns,
        } => {
            match (from_ns, to_ns) {
                (Some(from), Some(to)) if from >= to => {
                    return Err(format!("the interval is empty: from {from} ns is not before to {to} ns"))
                }
                (Some(_), None) | (None, Some(_)) => {
                    return Err("give both ends of the interval (--from and --to), or neither to learn from the next events".into())
                }
                _ => {}
            }
            detector
                .report(Some(site), asset.as_deref())
                .map_err(|e| e.to_string())?;
            Ok((site.clone(), asset.clone().unwrap_or_default()))
        }
        Request::ModelStatus { .. } => Err("model.status is not a decision".into()),
        other => Err(format!(
            "{} is not checked by the detector",
            other.command().unwrap_or("a read")
        )),
    }
}
