//! The agent's metrics endpoint: the counters of [`AgentCounts`] in the
//! Prometheus text format, on `GET /metrics` of the `metrics_listen`
//! address. Deliberately tiny (one request per connection, no HTTP library):
//! the agent stays small, and a scraper needs nothing more. Requests are
//! bounded in size and time, so the port cannot be used to hold resources.

use crate::{AgentCounts, AgentMetrics};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The counters as Prometheus text exposition.
pub fn render(counts: &AgentCounts, site: &str, agent: &str) -> String {
    let labels = format!("site=\"{site}\",agent=\"{agent}\"");
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "otwatch_agent_events_taken_total",
            "counter",
            "Events the sources handed to the queue.",
            counts.events_taken,
        ),
        (
            "otwatch_agent_inputs_rejected_total",
            "counter",
            "Inputs the sources refused (bad lines, broken limits).",
            counts.inputs_rejected,
        ),
        (
            "otwatch_agent_acked_seq",
            "gauge",
            "Highest sequence number the collector holds durably.",
            counts.acked_seq,
        ),
        (
            "otwatch_agent_last_seq",
            "gauge",
            "Last sequence number taken into the queue.",
            counts.last_seq,
        ),
        (
            "otwatch_agent_dropped_total",
            "counter",
            "Events dropped because the queue was full (when_full = drop_oldest).",
            counts.dropped,
        ),
        (
            "otwatch_agent_quarantined_total",
            "counter",
            "Events lost to damaged queue segments.",
            counts.quarantined,
        ),
        (
            "otwatch_agent_queue_bytes",
            "gauge",
            "Bytes in the queue on disk.",
            counts.queue_bytes,
        ),
        (
            "otwatch_agent_connects_total",
            "counter",
            "Successful connections to the collector.",
            counts.connects,
        ),
        (
            "otwatch_agent_connection_failures_total",
            "counter",
            "Failed connections or broken streams.",
            counts.failures,
        ),
        (
            "otwatch_agent_connected",
            "gauge",
            "1 while a stream to the collector is up.",
            u64::from(counts.connected),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"
        ));
    }
    out
}

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: AgentMetrics,
    site: String,
    agent: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut conn, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let body = render(&metrics.snapshot(), &site, &agent);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let line = String::from_utf8_lossy(&request[..n]);
            let response = if line.starts_with("GET /metrics ") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 22\r\nconnection: close\r\n\r\nonly GET /metrics here".to_string()
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.write_all(response.as_bytes()))
                    .await;
        });
    }
}
