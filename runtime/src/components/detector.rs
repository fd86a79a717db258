//! The detector component: feeds the `events` topic to the detector batch by
//! batch and appends the alerts it raises to the `alerts` topic (the alert
//! outputs and the alerts history read them from there).
//!
//! # Checkpoint
//!
//! `<data_dir>/detector/checkpoint.json` holds `{"offset": N, "detector":
//! {...}}`: everything learned and the next events offset to process,
//! replaced atomically together every [`CHECKPOINT_EVERY`] and at a clean
//! stop. A restart resumes from it; the options of `[detector]` in the
//! configuration always win over the copy the checkpoint holds (the options
//! that changed are logged), so a changed configuration takes effect at the
//! next start.
//!
//! Alerts are at least once: a crash between raising an alert and the next
//! checkpoint raises it again after the restart, with the same id.
//!
//! A failing disk is retried: alerts that cannot be appended are held (no
//! further batch is processed until they are in the log), a checkpoint that
//! cannot be written is tried again later; the component shows `retrying`
//! meanwhile.

use crate::health::Backoff;
use crate::retry_transient;
use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_detector::{Detector, DetectorConfig};
use otwatch_eventlog::{EventLog, LogError, Record, Topic};
use otwatch_proto::Alert;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the detector's state is checkpointed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// The consumer group of the detector.
pub const GROUP: &str = "detector";
/// Records read from the log per poll, at most.
const RECORDS_PER_POLL: usize = 256;

#[derive(serde::Deserialize)]
struct Checkpoint {
    offset: u64,
    detector: Detector,
}

#[derive(serde::Serialize)]
struct CheckpointRef<'a> {
    offset: u64,
    detector: &'a Detector,
}

/// What the component needs.
pub struct DetectorComponent {
    pub log: Arc<dyn EventLog>,
    /// `<data_dir>/detector`.
    pub dir: PathBuf,
    pub config: DetectorConfig,
    /// Alerts raised since start, for `/metrics` and the demo.
    pub alerts_raised: Arc<AtomicU64>,
}

fn transient(e: &LogError) -> bool {
    matches!(e, LogError::Io { .. } | LogError::Fs(_))
}

/// Loads the checkpoint (adopting `config`) or starts a new detector.
fn restore(path: &Path, config: DetectorConfig) -> anyhow::Result<(Detector, u64)> {
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
            Ok((detector, cp.offset))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            Detector::new(config).context("the [detector] configuration is invalid")?,
            0,
        )),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save(path: &Path, offset: u64, detector: &Detector) -> Result<(), otwatch_fs::FsError> {
    let bytes = serde_json::to_vec(&CheckpointRef { offset, detector })
        .expect("the detector state serializes");
    otwatch_fs::write_atomic(path, &bytes)
}

impl DetectorComponent {
    pub async fn run(self, mut ctx: Context) -> anyhow::Result<()> {
        otwatch_fs::create_dir_all_durable(&self.dir)?;
        let path = self.dir.join("checkpoint.json");
        let (mut detector, offset) = restore(&path, self.config.clone())?;
        let mut consumer = self
            .log
            .consumer_at(Topic::Events, GROUP, offset)
            .await
            .context("cannot open a consumer of the event log")?;
        ctx.reporter.set_position(offset);
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut backoff = Backoff::default();
        let mut saved_at = Instant::now();
        let mut saved_offset = offset;
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
            let mut raised = Vec::new();
            for d in &got {
                match detector.process(&d.batch) {
                    Ok(alerts) => raised.extend(alerts),
                    Err(e) => {
                        tracing::error!(offset = d.offset, error = %e, "detector could not process a batch; skipped")
                    }
                }
            }
            if !raised.is_empty() && !self.append(&raised, &mut ctx, &mut backoff).await? {
                // Stopping before the alerts reached the log: the checkpoint
                // is not advanced, so they are raised again next time.
                return Ok(());
            }
            let position = consumer.position();
            if position != saved_offset && (saved_at.elapsed() >= CHECKPOINT_EVERY || stopping) {
                let (path2, detector2) = (path.clone(), detector);
                let (d, saved) = tokio::task::spawn_blocking(move || {
                    let r = save(&path2, position, &detector2);
                    (detector2, r)
                })
                .await?;
                detector = d;
                match saved {
                    Ok(()) => {
                        saved_offset = position;
                        saved_at = Instant::now();
                        // The log may delete what the checkpoint covers.
                        if let Err(e) = consumer.commit(position).await {
                            tracing::warn!(error = %e, "cannot record the detector's offset in the event log; retention waits");
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

    /// Appends alerts to the log, retrying a failing disk. False if told to
    /// stop before it succeeded.
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
        self.alerts_raised
            .fetch_add(raised.len() as u64, Ordering::Relaxed);
        ctx.reporter.running();
        Ok(true)
    }
}
