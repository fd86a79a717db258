//! The central service's figures for Prometheus (`metrics_listen`): ingest
//! counters of the collector, and how far the detector and the history
//! writers are behind the event log.

use crate::central::Progress;
use otwatch_collector::CollectorMetrics;
use otwatch_eventlog::{EventLog, Topic};
use otwatch_metrics::Metric;
use std::sync::atomic::Ordering;

/// The figures now, in the Prometheus text format.
pub fn render(collector: &CollectorMetrics, progress: &Progress, log: &dyn EventLog) -> String {
    let c = collector.snapshot();
    let events_end = log.end_offset(Topic::Events);
    let alerts_end = log.end_offset(Topic::Alerts);
    let at = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Acquire);
    let detector = at(&progress.detector);
    let events_history = at(&progress.events_history);
    let alerts_history = at(&progress.alerts_history);
    otwatch_metrics::render(
        &[],
        &[
            Metric::counter(
                "otwatch_collector_streams_opened_total",
                "Agent streams accepted.",
                c.streams_opened,
            ),
            Metric::gauge(
                "otwatch_collector_connections_open",
                "Agent connections open now (TLS handshakes included).",
                c.connections_open,
            ),
            Metric::counter(
                "otwatch_collector_connections_refused_total",
                "Connections closed at once because max_connections were open.",
                c.connections_refused,
            ),
            Metric::counter(
                "otwatch_collector_tls_handshake_failures_total",
                "TLS handshakes refused (unknown CA, expired or revoked certificate, none, timeout).",
                c.tls_handshake_failures,
            ),
            Metric::counter(
                "otwatch_collector_streams_unauthenticated_total",
                "Streams refused because the peer had no usable identity.",
                c.streams_unauthenticated,
            ),
            Metric::counter(
                "otwatch_collector_batches_total",
                "Batches received.",
                c.batches,
            ),
            Metric::counter(
                "otwatch_collector_batches_invalid_total",
                "Batches refused with INVALID_ARGUMENT (a broken limit).",
                c.batches_invalid,
            ),
            Metric::counter(
                "otwatch_collector_batches_denied_total",
                "Batches refused with PERMISSION_DENIED (another site or agent claimed).",
                c.batches_denied,
            ),
            Metric::counter(
                "otwatch_collector_events_stored_total",
                "Events appended durably to the event log.",
                c.events_stored,
            ),
            Metric::counter(
                "otwatch_collector_events_duplicate_total",
                "Events dropped because the log already held their (agent, seq).",
                c.events_duplicate,
            ),
            Metric::counter(
                "otwatch_collector_append_failures_total",
                "Appends to the event log that failed (the agent resends).",
                c.append_failures,
            ),
            Metric::gauge(
                "otwatch_log_events_end_offset",
                "Next offset of the events topic of the event log.",
                events_end,
            ),
            Metric::gauge(
                "otwatch_detector_lag_events",
                "Events in the log the detector has not read yet.",
                events_end.saturating_sub(detector),
            ),
            Metric::gauge(
                "otwatch_history_lag_events",
                "Events in the log not yet queryable in the events table.",
                events_end.saturating_sub(events_history),
            ),
            Metric::gauge(
                "otwatch_history_lag_alerts",
                "Alerts in the log not yet queryable in the alerts table.",
                alerts_end.saturating_sub(alerts_history),
            ),
            Metric::counter(
                "otwatch_detector_alerts_total",
                "Alerts raised since the service started.",
                at(&progress.alerts_raised),
            ),
            Metric::counter(
                "otwatch_history_rows_written_total",
                "Rows written to the events table since the service started.",
                at(&progress.events_written),
            ),
        ],
    )
}
