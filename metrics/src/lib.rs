//! Prometheus text exposition and a tiny HTTP endpoint that serves it, shared
//! by the agent and the central service.
//!
//! Owns the rendering of counters and gauges (with escaped labels) and the
//! endpoint: `GET /metrics` returns the current figures, `GET /healthz`
//! returns `ok` while the process serves. Deliberately small (one request
//! per connection, no HTTP library), so the agent stays small and a scraper
//! needs nothing more.
//!
//! Promises: a request is read within [`IO_TIMEOUT`] and at most
//! [`MAX_REQUEST_BYTES`] bytes of it are looked at; answers are written
//! within the same timeout; at most [`MAX_CONNECTIONS`] requests are served
//! at once. The port cannot be used to hold the process's resources.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Longest wait for a request, and for the answer to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a request looked at (the request line is all that matters).
pub const MAX_REQUEST_BYTES: usize = 1024;
/// Requests served at once; more wait in the kernel's accept backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// Whether a figure only grows or may go both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One figure: its name (with the `_total` suffix for counters), what it
/// means, and its value now.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub value: u64,
}

impl Metric {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Metric {
            name,
            kind: Kind::Counter,
            help,
            value,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Metric {
            name,
            kind: Kind::Gauge,
            help,
            value,
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures in the Prometheus text format (version 0.0.4), each with
/// `labels`.
pub fn render(labels: &[(&str, &str)], metrics: &[Metric]) -> String {
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",");
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let mut out = String::new();
    for m in metrics {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}\n",
            name = m.name,
            help = m.help,
            value = m.value
        );
    }
    out
}

/// Reads the request head (up to the blank line, or [`MAX_REQUEST_BYTES`]),
/// which may come in several pieces. Reading all of it before answering
/// matters: closing a socket with unread data resets the connection, and
/// the client may lose the answer. `None` if the client left first.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while head.len() < MAX_REQUEST_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Serves `GET /metrics` (whatever `render` returns at that moment) and
/// `GET /healthz` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
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
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Some(request)) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut conn)).await
            else {
                return;
            };
            let line = String::from_utf8_lossy(&request);
            let (status, content_type, body) = if line.starts_with("GET /metrics ") {
                ("200 OK", "text/plain; version=0.0.4", render())
            } else if line.starts_with("GET /healthz ") {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "only GET /metrics and GET /healthz here\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(IO_TIMEOUT, conn.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_escaped_labels() {
        let text = render(
            &[("site", "plant \"a\"\\b"), ("agent", "gw-1")],
            &[
                Metric::counter("x_total", "Things.", 3),
                Metric::gauge("y", "Level.", 7),
            ],
        );
        assert_eq!(
            text,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{site=\"plant \\\"a\\\"\\\\b\",agent=\"gw-1\"} 3\n\
             # HELP y Level.\n# TYPE y gauge\n\
             y{site=\"plant \\\"a\\\"\\\\b\",agent=\"gw-1\"} 7\n"
        );
        assert_eq!(
            render(&[], &[Metric::gauge("z", "Z.", 1)]),
            "# HELP z Z.\n# TYPE z gauge\nz 1\n"
        );
    }

    /// A request sent in pieces, as clients may send it.
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        for piece in ["GET ", path, " HTTP/1.1\r\n", "host: x\r\n", "\r\n"] {
            conn.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let figures = n.clone();
        let server = tokio::spawn(serve(
            listener,
            move || {
                let v = figures.load(std::sync::atomic::Ordering::Relaxed);
                render(&[], &[Metric::counter("hits_total", "Hits.", v)])
            },
            shutdown,
        ));
        let first = get(addr, "/metrics").await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.ends_with("hits_total 1\n"), "{first}");
        // Figures are read at each request.
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(get(addr, "/metrics").await.ends_with("hits_total 5\n"));
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));
        assert!(get(addr, "/admin").await.starts_with("HTTP/1.1 404"));
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the endpoint did not stop")
            .unwrap();
    }
}
