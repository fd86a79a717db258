//! What every component of the running service is doing, for `/healthz`,
//! `/readyz`, `/metrics` and the logs.
//!
//! Each component registers once and reports through its [`Reporter`]: it is
//! starting, running, retrying after a transient failure (a full disk, a
//! receiver that is down), stopped, or failed for good. A consumer of the
//! event log also reports the log offset it has reached, so its lag is known.
//!
//! Promises:
//! - `/healthz` is 200 only while every component is running (or starting,
//!   or stopped during a clean shutdown); a component that is retrying or
//!   has failed makes it 503, and the body names the component, its state
//!   and the cause. A failure is never invisible.
//! - `/readyz` is 200 only when `/healthz` would be and, in addition, every
//!   log consumer is within `max_lag` records of the end of its topic and
//!   the event log takes appends.

use otwatch_eventlog::{EventLog, Topic};
use otwatch_metrics::{Family, Kind, Probe};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The state of one component.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Opening its state (files, checkpoints); not doing its job yet.
    Starting,
    /// Doing its job.
    Running,
    /// Its last attempt failed for a reason that may pass (a full disk, a
    /// receiver that is down); it tries again after a pause.
    Retrying {
        error: String,
        since: Instant,
        attempts: u64,
    },
    /// Ended cleanly, because the service is stopping.
    Stopped,
    /// Ended with an error or a panic; the service stops and exits non-zero.
    Failed { error: String },
}

impl State {
    /// The state in words, as `/healthz` shows it.
    pub fn describe(&self) -> String {
        match self {
            State::Starting => "starting".into(),
            State::Running => "running".into(),
            State::Retrying {
                error,
                since,
                attempts,
            } => format!(
                "retrying for {} s ({attempts} attempts): {error}",
                since.elapsed().as_secs()
            ),
            State::Stopped => "stopped".into(),
            State::Failed { error } => format!("failed: {error}"),
        }
    }

    /// Whether it counts as healthy for `/healthz`.
    pub fn healthy(&self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopped)
    }
}

/// One registered component.
#[derive(Debug)]
struct Component {
    name: String,
    /// The topic it consumes, if it is a log consumer.
    topic: Option<Topic>,
    state: Mutex<State>,
    /// Next offset of `topic` it will process (everything before is done).
    position: AtomicU64,
    /// Failed attempts since the service started.
    failures: AtomicU64,
    /// It has opened its state and positioned itself in the log.
    opened: std::sync::atomic::AtomicBool,
}

/// The registry of components. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<Vec<Arc<Component>>>>,
}

/// A component's handle on its entry in [`Health`].
#[derive(Debug, Clone)]
pub struct Reporter {
    component: Arc<Component>,
}

impl Reporter {
    /// The component's name, as it appears in logs and probes.
    pub fn name(&self) -> &str {
        &self.component.name
    }

    /// The log topic it consumes, if any.
    pub fn topic(&self) -> Option<Topic> {
        self.component.topic
    }

    /// The component is doing its job (again). Logs a recovery.
    pub fn running(&self) {
        let mut state = self.component.state.lock().unwrap();
        if let State::Retrying {
            attempts, since, ..
        } = &*state
        {
            tracing::info!(
                component = %self.component.name,
                attempts,
                after_s = since.elapsed().as_secs(),
                "component recovered"
            );
        }
        *state = State::Running;
    }

    /// An attempt failed for a reason that may pass; the component will try
    /// again. The first failure and every tenth after it are logged as errors.
    pub fn retrying(&self, error: &str) {
        self.component.failures.fetch_add(1, Ordering::Relaxed);
        let mut state = self.component.state.lock().unwrap();
        let (since, attempts) = match &*state {
            State::Retrying {
                since, attempts, ..
            } => (*since, attempts + 1),
            _ => (Instant::now(), 1),
        };
        if attempts == 1 || attempts % 10 == 0 {
            tracing::error!(
                component = %self.component.name,
                attempts,
                %error,
                "component failed; it retries (check /healthz and the disk, network or receiver named here)"
            );
        }
        *state = State::Retrying {
            error: error.to_string(),
            since,
            attempts,
        };
    }

    /// The component ended for good.
    pub fn failed(&self, error: &str) {
        self.component.failures.fetch_add(1, Ordering::Relaxed);
        *self.component.state.lock().unwrap() = State::Failed {
            error: error.to_string(),
        };
    }

    /// The component ended cleanly.
    pub fn stopped(&self) {
        let mut state = self.component.state.lock().unwrap();
        if !matches!(*state, State::Failed { .. }) {
            *state = State::Stopped;
        }
    }

    /// The component has opened its state and its position in the log:
    /// the service may start taking events in.
    pub fn opened(&self) {
        self.component.opened.store(true, Ordering::Release);
    }

    /// Whether [`opened`](Self::opened) was called.
    pub fn is_opened(&self) -> bool {
        self.component.opened.load(Ordering::Acquire)
    }

    /// Everything before `offset` of the component's topic is processed.
    pub fn set_position(&self, offset: u64) {
        self.component.position.store(offset, Ordering::Release);
    }

    /// The position last reported.
    pub fn position(&self) -> u64 {
        self.component.position.load(Ordering::Acquire)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.component.state.lock().unwrap().clone()
    }
}

/// One component as the probes and metrics see it.
#[derive(Debug, Clone)]
pub struct ComponentView {
    pub name: String,
    pub state: State,
    pub topic: Option<Topic>,
    pub position: u64,
    /// Records of its topic it has not processed.
    pub lag: u64,
    pub failures: u64,
}

impl Health {
    /// Registers a component; `topic` is the log topic it consumes, if any.
    pub fn register(&self, name: impl Into<String>, topic: Option<Topic>) -> Reporter {
        let component = Arc::new(Component {
            name: name.into(),
            topic,
            state: Mutex::new(State::Starting),
            position: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            opened: std::sync::atomic::AtomicBool::new(false),
        });
        self.components.lock().unwrap().push(component.clone());
        Reporter { component }
    }

    /// Every component now, with its lag behind `log`.
    pub fn view(&self, log: &dyn EventLog) -> Vec<ComponentView> {
        self.components
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let position = c.position.load(Ordering::Acquire);
                ComponentView {
                    name: c.name.clone(),
                    state: c.state.lock().unwrap().clone(),
                    topic: c.topic,
                    position,
                    lag: c
                        .topic
                        .map(|t| log.end_offset(t).saturating_sub(position))
                        .unwrap_or(0),
                    failures: c.failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// True once every log consumer has processed everything in its topic.
    pub fn caught_up(&self, log: &dyn EventLog) -> bool {
        self.view(log).iter().all(|c| c.lag == 0)
    }

    /// The `/healthz` verdict: every component running, or the ones that
    /// are not, with why.
    pub fn liveness(&self, log: &dyn EventLog) -> Probe {
        let view = self.view(log);
        let mut body = String::new();
        let mut ok = true;
        for c in &view {
            ok &= c.state.healthy();
            let _ = writeln!(body, "{}: {}", c.name, c.state.describe());
        }
        if ok {
            Probe::ok(format!("ok\n{body}"))
        } else {
            Probe::failing(format!("unhealthy\n{body}"))
        }
    }

    /// The `/readyz` verdict: healthy, the log takes appends, and every
    /// consumer within `max_lag` records of its topic's end.
    pub fn readiness(&self, log: &dyn EventLog, log_error: Option<String>, max_lag: u64) -> Probe {
        let view = self.view(log);
        let mut body = String::new();
        let mut ok = true;
        if let Some(error) = log_error {
            ok = false;
            let _ = writeln!(body, "event log: {error}");
        }
        for c in &view {
            let healthy = c.state.healthy();
            let behind = c.lag > max_lag;
            ok &= healthy && !behind;
            let _ = write!(body, "{}: {}", c.name, c.state.describe());
            if c.topic.is_some() {
                let _ = write!(body, ", {} record(s) behind", c.lag);
                if behind {
                    let _ = write!(body, " (more than {max_lag})");
                }
            }
            body.push('\n');
        }
        if ok {
            Probe::ok(format!("ready\n{body}"))
        } else {
            Probe::failing(format!("not ready\n{body}"))
        }
    }

    /// Per-component figures for `/metrics`.
    pub fn families(&self, log: &dyn EventLog) -> Vec<Family> {
        let view = self.view(log);
        let series = |f: &dyn Fn(&ComponentView) -> u64| {
            view.iter()
                .map(|c| (vec![("component", c.name.clone())], f(c)))
                .collect()
        };
        vec![
            Family {
                name: "otwatch_component_up",
                kind: Kind::Gauge,
                help: "1 while the component is running, 0 while it is starting, retrying, stopped or failed.",
                series: series(&|c| u64::from(c.state == State::Running)),
            },
            Family {
                name: "otwatch_component_failures_total",
                kind: Kind::Counter,
                help: "Failed attempts of the component (each retry after a transient failure, and a final failure).",
                series: series(&|c| c.failures),
            },
            Family {
                name: "otwatch_component_lag_records",
                kind: Kind::Gauge,
                help: "Records of its log topic the component has not processed yet (0 for components that consume no topic).",
                series: series(&|c| c.lag),
            },
        ]
    }
}

/// Exponential backoff for retries after transient failures: 1 s, doubling
/// up to 30 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    /// The pause before the next attempt; each call doubles the next one.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }

    /// After a success: the next failure waits the shortest pause again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
