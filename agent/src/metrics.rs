//! The agent's metrics endpoint: the counters of [`AgentCounts`] in the
//! Prometheus text format on `GET /metrics` of the `metrics_listen` address
//! (and `GET /healthz`), served by `otwatch-metrics`.

use crate::{AgentCounts, AgentMetrics};
use otwatch_metrics::Metric;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The counters as Prometheus text exposition.
pub fn render(counts: &AgentCounts, site: &str, agent: &str) -> String {
    otwatch_metrics::render(
        &[("site", site), ("agent", agent)],
        &[
            Metric::counter(
                "otwatch_agent_events_taken_total",
                "Events the sources handed to the queue.",
                counts.events_taken,
            ),
            Metric::counter(
                "otwatch_agent_inputs_rejected_total",
                "Inputs the sources refused (bad lines, broken limits).",
                counts.inputs_rejected,
            ),
            Metric::counter(
                "otwatch_agent_rotation_bytes_lost_total",
                "Bytes of followed files lost to rotation (copytruncate without a matching copy, or written between its copy and truncation).",
                counts.rotation_bytes_lost,
            ),
            Metric::gauge(
                "otwatch_agent_acked_seq",
                "Highest sequence number the collector holds durably.",
                counts.acked_seq,
            ),
            Metric::gauge(
                "otwatch_agent_last_seq",
                "Last sequence number taken into the queue.",
                counts.last_seq,
            ),
            Metric::counter(
                "otwatch_agent_dropped_total",
                "Events dropped because the queue was full (when_full = drop_oldest).",
                counts.dropped,
            ),
            Metric::counter(
                "otwatch_agent_quarantined_total",
                "Events lost to damaged queue segments.",
                counts.quarantined,
            ),
            Metric::counter(
                "otwatch_agent_lost_at_collector_total",
                "Events the collector had acked and later no longer held (its data was wiped); they could not be sent again.",
                counts.lost_at_collector,
            ),
            Metric::counter(
                "otwatch_agent_refused_total",
                "Events the collector refused for breaking a limit (kept in dead-letter.jsonl unless it is full).",
                counts.refused,
            ),
            Metric::counter(
                "otwatch_agent_refused_unstored_total",
                "Refused events not kept in the dead-letter file (full or unwritable); logged with seq and reason.",
                counts.refused_unstored,
            ),
            Metric::gauge(
                "otwatch_agent_dead_letter_bytes",
                "Bytes in the dead-letter file.",
                counts.dead_letter_bytes,
            ),
            Metric::gauge(
                "otwatch_agent_queue_bytes",
                "Bytes in the queue on disk.",
                counts.queue_bytes,
            ),
            Metric::counter(
                "otwatch_agent_connects_total",
                "Successful connections to the collector.",
                counts.connects,
            ),
            Metric::counter(
                "otwatch_agent_connection_failures_total",
                "Failed connections or broken streams.",
                counts.failures,
            ),
            Metric::gauge(
                "otwatch_agent_connected",
                "1 while a stream to the collector is up.",
                u64::from(counts.connected),
            ),
        ],
    )
}

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: AgentMetrics,
    site: String,
    agent: String,
    shutdown: watch::Receiver<bool>,
) {
    otwatch_metrics::serve(
        listener,
        move || render(&metrics.snapshot(), &site, &agent),
        shutdown,
    )
    .await
}
