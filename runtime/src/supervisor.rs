//! Runs the components of a role and makes their failures visible.
//!
//! Components run in stages, stopped in order so that nothing is left
//! half-done at a clean stop: first ingest (no new events), then the
//! detector once it has read everything ingested, then the history writers
//! and alert outputs once they have read everything the detector raised.
//!
//! Promises:
//! - a component that returns an error, panics, or ends while the service
//!   is not stopping is a *failure*: it is logged as an error with its
//!   cause, marked failed in [`Health`] (so `/healthz` turns 503), and
//!   reported to whoever waits on [`Supervisor::next_failure`], which stops
//!   the service and exits non-zero so that systemd or Kubernetes restarts
//!   it; everything resumes from the log and the components' own state;
//! - transient trouble (a full disk, a receiver that is down) is not a
//!   failure: components retry it themselves and report `retrying`, which
//!   turns `/healthz` 503 while it lasts (see [`crate::health`]).
//!
//! To check what a deployment does when a component fails (does systemd or
//! Kubernetes restart the service, does an alert fire on `/healthz`), set
//! `OTWATCH_FAIL_COMPONENT=<component>` (e.g. `history-events`): that
//! component panics a second after it has opened.

use crate::health::Reporter;
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The stages of the central service, in stopping order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Takes events in: the collector.
    Ingest = 0,
    /// Turns events into alerts: the detector.
    Detect = 1,
    /// Writes out what the log holds: history writers, alert outputs.
    Output = 2,
}

const STAGES: usize = 3;

/// A component that failed, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub component: String,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "component {} failed: {}", self.component, self.error)
    }
}

impl std::error::Error for Failure {}

/// What a component is given to run: its reporter and the signal that
/// tells it to finish (drain what it has, then return `Ok`).
#[derive(Clone)]
pub struct Context {
    pub reporter: Reporter,
    pub stop: watch::Receiver<bool>,
}

impl Context {
    /// True once the component should finish.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `pause`, or less if told to stop. True if told to stop.
    pub async fn pause(&mut self, pause: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|&s| s) => {}
        }
        self.stopping()
    }
}

/// Evaluates `$attempt` (an expression, `.await` included, yielding a
/// `Result`) until it succeeds: an error for which `$transient` is true is
/// reported as `retrying` (prefixed with `$what`) and tried again after a
/// pause from `$backoff`, any other error is the result. Yields
/// `Ok(Some(value))`, `Ok(None)` when the component was told to stop while
/// waiting, or `Err(error)`. A macro rather than a function because the
/// attempt borrows what the component owns.
#[macro_export]
macro_rules! retry_transient {
    ($ctx:expr, $backoff:expr, $what:expr, $transient:expr, $attempt:expr) => {
        loop {
            match $attempt {
                Ok(value) => break Ok(Some(value)),
                Err(e) if ($transient)(&e) => {
                    $ctx.reporter.retrying(&format!("{}: {}", $what, e));
                    if $ctx.pause($backoff.next_pause()).await {
                        break Ok(None);
                    }
                }
                Err(e) => break Err(e),
            }
        }
    };
}

struct StageTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs components; see the module docs.
pub struct Supervisor {
    stages: Vec<StageTasks>,
    failures_tx: mpsc::UnboundedSender<Failure>,
    failures: mpsc::UnboundedReceiver<Failure>,
    stopping: Arc<AtomicBool>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (failures_tx, failures) = mpsc::unbounded_channel();
        Supervisor {
            stages: (0..STAGES)
                .map(|_| StageTasks {
                    stop: watch::channel(false).0,
                    tasks: Vec::new(),
                })
                .collect(),
            failures_tx,
            failures,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a component in `stage`. `run` gets its [`Context`] and must
    /// return `Ok` only when told to stop.
    pub fn spawn<F, Fut>(&mut self, stage: Stage, reporter: Reporter, run: F)
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let slot = &mut self.stages[stage as usize];
        let context = Context {
            reporter: reporter.clone(),
            stop: slot.stop.subscribe(),
        };
        let inner = run(context);
        let injected =
            std::env::var("OTWATCH_FAIL_COMPONENT").ok().as_deref() == Some(reporter.name());
        let opened = reporter.clone();
        let future = async move {
            if !injected {
                return inner.await;
            }
            tokio::select! {
                result = inner => result,
                _ = async {
                    while !opened.is_opened() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } => panic!("failure injected by OTWATCH_FAIL_COMPONENT"),
            }
        };
        let failures = self.failures_tx.clone();
        let stopping = self.stopping.clone();
        let name = reporter.name().to_string();
        let span = tracing::info_span!("component", component = %name);
        let task = async move {
            let outcome = AssertUnwindSafe(future).catch_unwind().await;
            let error = match outcome {
                Ok(Ok(())) if stopping.load(Ordering::Acquire) => {
                    reporter.stopped();
                    return;
                }
                Ok(Ok(())) => "it ended although the service was not stopping".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            tracing::error!(
                component = %name,
                %error,
                "component failed: the service stops and exits non-zero so that it is restarted; everything resumes from the event log"
            );
            reporter.failed(&error);
            let _ = failures.send(Failure {
                component: name,
                error,
            });
        };
        slot.tasks
            .push(tokio::spawn(tracing::Instrument::instrument(task, span)));
    }

    /// Waits for the first component failure. Never returns while all is well.
    pub async fn next_failure(&mut self) -> Failure {
        self.failures
            .recv()
            .await
            .expect("the supervisor holds a sender")
    }

    /// A failure already reported, if any.
    pub fn try_failure(&mut self) -> Option<Failure> {
        self.failures.try_recv().ok()
    }

    /// Marks the service as stopping: components that end from now on end
    /// cleanly. Call before [`stop_stage`](Self::stop_stage).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Tells the components of `stage` to finish and waits up to `grace` for
    /// them; those still running then are aborted (their state resumes from
    /// disk at the next start).
    pub async fn stop_stage(&mut self, stage: Stage, grace: Duration) {
        self.begin_stop();
        let slot = &mut self.stages[stage as usize];
        slot.stop.send_replace(true);
        let tasks = std::mem::take(&mut slot.tasks);
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(?stage, "a component did not stop in time; aborted");
                task.abort();
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, State};

    #[tokio::test]
    async fn a_panicking_component_is_a_failure_with_its_message() {
        let health = Health::default();
        let mut supervisor = Supervisor::new();
        let reporter = health.register("history-events", None);
        supervisor.spawn(Stage::Output, reporter.clone(), |_ctx| async {
            if true {
                panic!("disk on fire");
            }
            Ok(())
        });
        let failure = tokio::time::timeout(Duration::from_secs(10), supervisor.next_failure())
            .await
            .unwrap();
        assert_eq!(failure.component, "history-events");
        assert!(
            failure.error.contains("panicked: disk on fire"),
            "{failure}"
        );
        assert!(matches!(reporter.state(), State::Failed { .. }));
    }

    #[tokio::test]
    async fn an_error_or_an_early_end_is_a_failure_a_stop_is_not() {
        let health = Health::default();
        let mut supervisor = Supervisor::new();
        supervisor.spawn(
            Stage::Detect,
            health.register("detector", None),
            |_ctx| async { anyhow::bail!("checkpoint unreadable") },
        );
        let failure = supervisor.next_failure().await;
        assert_eq!(failure.error, "checkpoint unreadable");
        supervisor.spawn(
            Stage::Detect,
            health.register("quitter", None),
            |_ctx| async { Ok(()) },
        );
        let failure = supervisor.next_failure().await;
        assert!(failure.error.contains("not stopping"), "{failure}");

        let well_behaved = health.register("well-behaved", None);
        supervisor.spawn(Stage::Output, well_behaved.clone(), |mut ctx| async move {
            ctx.reporter.running();
            while !ctx.pause(Duration::from_secs(3600)).await {}
            Ok(())
        });
        supervisor
            .stop_stage(Stage::Output, Duration::from_secs(10))
            .await;
        assert_eq!(well_behaved.state(), State::Stopped);
        assert!(supervisor.try_failure().is_none());
    }
}
