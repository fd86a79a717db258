//! The central service's HTTP endpoint (`metrics_listen`): Prometheus
//! figures (ingest counters, each component's state, failures and lag, each
//! alert output's deliveries: [`crate::outputs::stats`]), and the
//! `/healthz` and `/readyz` probes (see [`crate::health`]).

use crate::health::Health;
use crate::service::Counters;
use otwatch_collector::CollectorMetrics;
use otwatch_eventlog::{EventLog, LocalLog, Topic};
use otwatch_metrics::{Endpoints, Metric};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The endpoint's answers, computed at each request.
pub fn endpoints(
    collector: Arc<CollectorMetrics>,
    health: Health,
    counters: Arc<Counters>,
    log: Arc<LocalLog>,
    ready_max_lag: u64,
) -> Endpoints {
    let (h1, l1) = (health.clone(), log.clone());
    let (h2, l2) = (health.clone(), log.clone());
    Endpoints {
        metrics: Box::new(move || render(&collector, &health, &counters, log.as_ref())),
        health: Box::new(move || h1.liveness(l1.as_ref())),
        ready: Some(Box::new(move || {
            h2.readiness(l2.as_ref(), l2.check().err(), ready_max_lag)
        })),
    }
}

/// The figures now, in the Prometheus text format.
pub fn render(
    collector: &CollectorMetrics,
    health: &Health,
    counters: &Counters,
    log: &LocalLog,
) -> String {
    let c = collector.snapshot();
    let damage = log.damage();
    let events_end = log.end_offset(Topic::Events);
    let alerts_end = log.end_offset(Topic::Alerts);
    let at = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Acquire);
    let maintenance = &counters.history_maintenance;
    let mut text = otwatch_metrics::render(
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
                "Connections closed at once because max_connections were open, every one of them with an agent stream.",
                c.connections_refused,
            ),
            Metric::counter(
                "otwatch_collector_connections_refused_per_ip_total",
                "Connections closed at once because their address had max_connections_per_ip open, every one with a stream.",
                c.connections_refused_per_ip,
            ),
            Metric::counter(
                "otwatch_collector_connections_evicted_total",
                "Connections without a stream (handshakes included) closed to make room for a newcomer.",
                c.connections_evicted,
            ),
            Metric::counter(
                "otwatch_collector_connections_idle_closed_total",
                "Connections closed because they had no gRPC stream for 10 s.",
                c.connections_idle_closed,
            ),
            Metric::counter(
                "otwatch_collector_tls_handshake_timeouts_total",
                "TLS handshakes that took longer than 10 s (also counted as failures).",
                c.tls_handshake_timeouts,
            ),
            Metric::counter(
                "otwatch_collector_streams_ended_by_shutdown_total",
                "Agent streams ended because the collector was stopping.",
                c.streams_ended_by_shutdown,
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
                "otwatch_collector_events_refused_total",
                "Events refused alone for breaking a limit of their own (too old, too long, ...); the rest of their batch was stored and the agent set them aside.",
                c.events_refused,
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
                "otwatch_log_alerts_end_offset",
                "Next offset of the alerts topic of the event log.",
                alerts_end,
            ),
            Metric::counter(
                "otwatch_log_damaged_regions_total",
                "Damaged stretches of the event log found since start (each logged with its file, bytes and offsets, and copied to quarantine/).",
                at(&damage.regions),
            ),
            Metric::counter(
                "otwatch_log_records_lost_total",
                "Acknowledged records of the event log that no longer read back (damage), since start.",
                at(&damage.records_lost),
            ),
            Metric::counter(
                "otwatch_log_segments_deleted_total",
                "Event log segments deleted by retention since start.",
                at(&damage.segments_deleted),
            ),
            Metric::gauge(
                "otwatch_log_events_segments",
                "Segment files of the events topic.",
                log.segment_count(Topic::Events) as u64,
            ),
            Metric::counter(
                "otwatch_detector_alerts_total",
                "Alerts raised since the service started.",
                at(&counters.alerts_raised),
            ),
            Metric::counter(
                "otwatch_history_records_skipped_total",
                "Event log records the history writers set aside because they do not fit their table (logged with their offset).",
                at(&counters.history_records_skipped),
            ),
            Metric::counter(
                "otwatch_history_rows_written_total",
                "Rows written to the events table since the service started.",
                at(&counters.events_written),
            ),
            Metric::counter(
                "otwatch_history_compactions_total",
                "Closed hours compacted (small files merged and swapped in) since start.",
                at(&maintenance.compactions),
            ),
            Metric::counter(
                "otwatch_history_compaction_files_merged_total",
                "Small files merged away by compaction since start.",
                at(&maintenance.files_merged),
            ),
            Metric::counter(
                "otwatch_history_compaction_files_written_total",
                "Files written by compaction since start.",
                at(&maintenance.files_written),
            ),
            Metric::counter(
                "otwatch_history_compaction_bytes_written_total",
                "Bytes written by compaction since start.",
                at(&maintenance.bytes_written),
            ),
            Metric::counter(
                "otwatch_history_compaction_files_removed_total",
                "Files replaced by compaction and removed after the grace period, since start.",
                at(&maintenance.files_removed),
            ),
            Metric::gauge(
                "otwatch_history_compaction_backlog",
                "Closed hours waiting for compaction at the last look.",
                maintenance.backlog(),
            ),
            Metric::counter(
                "otwatch_history_maintenance_failures_total",
                "Compactions, removals and retention passes that failed (logged; retried later).",
                at(&maintenance.failures),
            ),
            Metric::counter(
                "otwatch_history_partitions_dropped_total",
                "Partitions (hours) dropped by history.retention since start.",
                at(&maintenance.partitions_dropped),
            ),
        ],
    );
    text.push_str(&otwatch_metrics::render_families(&health.families(log)));
    text.push_str(&otwatch_metrics::render_families(
        &crate::outputs::stats::families(log),
    ));
    text
}
