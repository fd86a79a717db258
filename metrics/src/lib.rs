//! Prometheus text exposition and a tiny HTTP endpoint that serves it, shared
//! by the agent and the central service.
//!
//! Owns the rendering of counters and gauges (with escaped labels) and the
//! endpoint: `GET /metrics` returns the current figures, `GET /healthz` and
//! `GET /readyz` return 200 or 503 with a plain-text explanation, as the
//! process's [`Endpoints`] decide at the moment of the request. Deliberately small (one request
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

/// A figure reported once per label set, e.g. one value per component.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// (labels, value) of each series.
    pub series: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Families in the Prometheus text format, one `HELP`/`TYPE` per family.
pub fn render_families(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            f.name, f.help, f.name
        );
        for (labels, value) in &f.series {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
        }
    }
    out
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

/// The verdict of a health or readiness probe: 200 with `body` when `ok`,
/// 503 with `body` (which says why) otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    pub body: String,
}

impl Probe {
    pub fn ok(body: impl Into<String>) -> Self {
        Probe {
            ok: true,
            body: body.into(),
        }
    }

    pub fn failing(body: impl Into<String>) -> Self {
        Probe {
            ok: false,
            body: body.into(),
        }
    }
}

type Figures = dyn Fn() -> String + Send + Sync;
type Check = dyn Fn() -> Probe + Send + Sync;

/// What the endpoint answers, computed at each request.
pub struct Endpoints {
    /// `GET /metrics`: the figures in the Prometheus text format.
    pub metrics: Box<Figures>,
    /// `GET /healthz`: is the process doing its job (liveness)?
    pub health: Box<Check>,
    /// `GET /readyz`: is it caught up and able to take work (readiness)?
    /// `None`: no such endpoint (404).
    pub ready: Option<Box<Check>>,
}

/// Serves `GET /metrics` (whatever `render` returns at that moment) and a
/// `GET /healthz` that is `ok` while the process serves, on `listener` until
/// `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) {
    let endpoints = Endpoints {
        metrics: Box::new(render),
        health: Box::new(|| Probe::ok("ok\n")),
        ready: None,
    };
    serve_endpoints(listener, endpoints, shutdown).await
}

/// Serves `endpoints` on `listener` until `shutdown` turns true.
pub async fn serve_endpoints(
    listener: TcpListener,
    endpoints: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    let endpoints = Arc::new(endpoints);
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
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Some(request)) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut conn)).await
            else {
                return;
            };
            let line = String::from_utf8_lossy(&request);
            let probe = |check: &Check| {
                let p = check();
                let status = if p.ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                (status, "text/plain", p.body)
            };
            let (status, content_type, body) = if line.starts_with("GET /metrics ") {
                ("200 OK", "text/plain; version=0.0.4", (endpoints.metrics)())
            } else if line.starts_with("GET /healthz ") {
                probe(endpoints.health.as_ref())
            } else if let (true, Some(ready)) =
                (line.starts_with("GET /readyz "), endpoints.ready.as_ref())
            {
                probe(ready.as_ref())
            } else {
                let paths = if endpoints.ready.is_some() {
                    "GET /metrics, GET /healthz and GET /readyz"
                } else {
                    "GET /metrics and GET /healthz"
                };
                (
                    "404 Not Found",
                    "text/plain",
                    format!("only {paths} here\n"),
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

    #[tokio::test]
    async fn probes_answer_503_with_their_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = healthy.clone();
        let server = tokio::spawn(serve_endpoints(
            listener,
            Endpoints {
                metrics: Box::new(String::new),
                health: Box::new(move || {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        Probe::ok("ok\n")
                    } else {
                        Probe::failing("history-events: failed: disk on fire\n")
                    }
                }),
                ready: Some(Box::new(|| Probe::failing("detector: 12 records behind\n"))),
            },
            shutdown,
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 OK"));
        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let sick = get(addr, "/healthz").await;
        assert!(sick.starts_with("HTTP/1.1 503"), "{sick}");
        assert!(sick.ends_with("disk on fire\n"), "{sick}");
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.ends_with("12 records behind\n"), "{ready}");
        stop.send_replace(true);
        server.await.unwrap();
    }

    #[test]
    fn families_render_one_series_per_label_set() {
        let text = render_families(&[Family {
            name: "up",
            kind: Kind::Gauge,
            help: "Up.",
            series: vec![
                (vec![("component", "a".to_string())], 1),
                (vec![("component", "b\"".to_string())], 0),
            ],
        }]);
        assert_eq!(
            text,
            "# HELP up Up.\n# TYPE up gauge\nup{component=\"a\"} 1\nup{component=\"b\\\"\"} 0\n"
        );
    }
}
