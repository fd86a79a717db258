//! Per-output figures for `/metrics`: alerts delivered, failed delivery
//! attempts, whether the output is retrying now, and its lag in records of
//! the alerts topic. Each series carries the label `output="<name>"`.
//!
//! The figures live in a registry of the process (like a Prometheus client
//! library's default registry): [`super::run`] registers its output when it
//! starts and an output started again under the same name (a service
//! started again in one process, as tests do) replaces the earlier entry.

use crate::health::{Reporter, State};
use otwatch_eventlog::{EventLog, Topic};
use otwatch_metrics::{Family, Kind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The figures of one running output.
#[derive(Debug)]
pub struct OutputStats {
    /// The output's name (`name`, or its type).
    pub name: String,
    /// Alerts the receiver took since the output started.
    pub delivered: AtomicU64,
    /// Delivery attempts that failed (each is retried).
    pub failed_attempts: AtomicU64,
    reporter: Reporter,
}

static REGISTRY: Mutex<Vec<Arc<OutputStats>>> = Mutex::new(Vec::new());

/// Registers the output `name`, reporting through `reporter`.
pub(super) fn register(name: &str, reporter: Reporter) -> Arc<OutputStats> {
    let stats = Arc::new(OutputStats {
        name: name.to_string(),
        delivered: AtomicU64::new(0),
        failed_attempts: AtomicU64::new(0),
        reporter,
    });
    let mut registry = REGISTRY.lock().unwrap();
    registry.retain(|s| s.name != name);
    registry.push(stats.clone());
    stats
}

/// The figures of the output named `name`, if one runs in this process.
pub fn get(name: &str) -> Option<Arc<OutputStats>> {
    REGISTRY
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.name == name)
        .cloned()
}

/// Every running output's figures, for `/metrics`.
pub fn families(log: &dyn EventLog) -> Vec<Family> {
    let outputs = REGISTRY.lock().unwrap().clone();
    let end = log.end_offset(Topic::Alerts);
    let series = |f: &dyn Fn(&OutputStats) -> u64| {
        outputs
            .iter()
            .map(|s| (vec![("output", s.name.clone())], f(s)))
            .collect()
    };
    vec![
        Family {
            name: "otwatch_output_alerts_delivered_total",
            kind: Kind::Counter,
            help: "Alerts the output's receiver took (a redelivery after a restart or a failed attempt counts again).",
            series: series(&|s| s.delivered.load(Ordering::Relaxed)),
        },
        Family {
            name: "otwatch_output_failed_attempts_total",
            kind: Kind::Counter,
            help: "Delivery attempts to the output's receiver that failed; each is retried with backoff.",
            series: series(&|s| s.failed_attempts.load(Ordering::Relaxed)),
        },
        Family {
            name: "otwatch_output_retrying",
            kind: Kind::Gauge,
            help: "1 while the output is waiting to retry after a failure (its cause is in /healthz), else 0.",
            series: series(&|s| u64::from(matches!(s.reporter.state(), State::Retrying { .. }))),
        },
        Family {
            name: "otwatch_output_lag_records",
            kind: Kind::Gauge,
            help: "Records of the alerts topic the output has not delivered yet (its backlog waits in the event log).",
            series: series(&|s| end.saturating_sub(s.reporter.position())),
        },
    ]
}
