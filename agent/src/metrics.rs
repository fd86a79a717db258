//! The agent's metrics endpoint: the counters of [`AgentCounts`] in the
//! Prometheus text format on `GET /metrics` of the `metrics_listen` address
//! (and `GET /healthz`), served by `otwatch-metrics`, followed by one series
//! per polled device ([`render_devices`]), labelled `source` and `device`.

use crate::source::poll::DeviceMetrics;
use crate::{AgentCounts, AgentMetrics};
use otwatch_metrics::{Family, Kind, Metric};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
            Metric::counter(
                "otwatch_agent_messages_rate_limited_total",
                "Syslog messages dropped because their sender went over max_messages_per_second.",
                counts.messages_rate_limited,
            ),
            Metric::counter(
                "otwatch_agent_messages_truncated_total",
                "Syslog messages cut at max_message_bytes.",
                counts.messages_truncated,
            ),
            Metric::counter(
                "otwatch_agent_sparkplug_unknown_aliases_total",
                "Sparkplug metrics named by an alias no birth announced, skipped (the agent never asks for a rebirth).",
                counts.sparkplug_unknown_aliases,
            ),
            Metric::counter(
                "otwatch_agent_sparkplug_seq_gaps_total",
                "Sparkplug seq numbers other than the one expected from an edge node.",
                counts.sparkplug_seq_gaps,
            ),
            Metric::counter(
                "otwatch_agent_sparkplug_stale_deaths_total",
                "Sparkplug NDEATH messages of an earlier session (bdSeq not the current NBIRTH's), ignored.",
                counts.sparkplug_stale_deaths,
            ),
            Metric::counter(
                "otwatch_agent_sparkplug_unsupported_metrics_total",
                "Sparkplug metrics of a datatype the agent does not map (DataSet, Template, arrays...), skipped.",
                counts.sparkplug_unsupported_metrics,
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

/// The polled devices' figures, one series per device, labelled with the
/// agent's `site` and `agent` and the device's `source` and `device`.
pub fn render_devices(devices: &[Arc<DeviceMetrics>], site: &str, agent: &str) -> String {
    if devices.is_empty() {
        return String::new();
    }
    type Read = fn(&DeviceMetrics) -> u64;
    let figures: [(&'static str, Kind, &'static str, Read); 9] = [
        (
            "otwatch_agent_device_polls_total",
            Kind::Counter,
            "Polls of the device that read every value.",
            |d| d.polls.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_errors_total",
            Kind::Counter,
            "Failed connections, requests and polls of the device (each outage logged).",
            |d| d.errors.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_values_rejected_total",
            Kind::Counter,
            "Values of the device the limits refused (NaN, too long, ...), logged with their tag and skipped.",
            |d| d.rejected.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_events_total",
            Kind::Counter,
            "Events of the device handed to the queue.",
            |d| d.events.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_up",
            Kind::Gauge,
            "1 while the device's last poll succeeded.",
            |d| u64::from(d.up.load(Ordering::Relaxed)),
        ),
        (
            "otwatch_agent_device_last_success_timestamp_seconds",
            Kind::Gauge,
            "Unix time of the device's last successful poll (0: none yet).",
            |d| d.last_success_unix_ms.load(Ordering::Relaxed) / 1000,
        ),
        (
            "otwatch_agent_device_last_poll_latency_microseconds",
            Kind::Gauge,
            "Time the device's last successful poll took, all its requests included.",
            |d| d.last_latency_us.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_poll_latency_microseconds_total",
            Kind::Counter,
            "Sum of the latencies of the device's successful polls (divide by polls for the mean).",
            |d| d.latency_us_total.load(Ordering::Relaxed),
        ),
        (
            "otwatch_agent_device_items_unavailable",
            Kind::Gauge,
            "Subscribed items the device does not serve now (unknown node, bad status), each logged (opcua; 0 for polled sources).",
            |d| d.items_unavailable.load(Ordering::Relaxed),
        ),
    ];
    let families: Vec<Family> = figures
        .into_iter()
        .map(|(name, kind, help, read)| Family {
            name,
            kind,
            help,
            series: devices
                .iter()
                .map(|d| {
                    (
                        vec![
                            ("site", site.to_string()),
                            ("agent", agent.to_string()),
                            ("source", d.source.to_string()),
                            ("device", d.device.clone()),
                        ],
                        read(d),
                    )
                })
                .collect(),
        })
        .collect();
    otwatch_metrics::render_families(&families)
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
        move || {
            render(&metrics.snapshot(), &site, &agent)
                + &render_devices(&metrics.devices, &site, &agent)
        },
        shutdown,
    )
    .await
}
