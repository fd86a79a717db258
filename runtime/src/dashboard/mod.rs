//! The SOC dashboard (`dashboard_listen`, off by default): pages in the
//! browser over a small JSON API, served by the central service.
//!
//! - [`config`]: `[dashboard]`: accounts (argon2 hashes, roles `viewer` and
//!   `analyst`, optional site lists), TLS, sign-in limits;
//! - [`auth`]: sign-in, sessions, CSRF tokens, the lockout after failures;
//! - [`api`]: the JSON API (`docs/dashboard-api.yaml` documents it), over
//!   the same history SQL and control plane the CLI uses;
//! - [`assets`]: the page itself, built into the binary (the plotting
//!   library, uPlot, vendored under `assets/vendor/`): nothing is fetched
//!   from elsewhere at run time, so it works on an air-gapped SOC network.
//!
//! Promises:
//! - Every API call but sign-in needs a session; every state change also
//!   needs the session's CSRF token; only analysts change alert states or
//!   models, and only for their sites. Decisions go through the control
//!   plane ([`crate::admin::server::Control`]) under `dashboard:NAME`, so the
//!   audit names who took them, as for the CLI.
//! - A user limited to sites never sees another site's alerts, assets,
//!   agents or live alerts: every query is filtered by site on the server.
//! - Failed sign-ins are audited (a `dashboard.signin_failed` control
//!   record: name tried, client address) and locked out after
//!   `max_failed_signins`.
//! - Requests are bounded: bodies of at most [`MAX_BODY_BYTES`], results of
//!   at most `max_rows` rows or `max_points` points; a slow query ends after
//!   [`QUERY_TIMEOUT`].
//! - Live alerts (`/api/live`, server-sent events) come from one reader of
//!   the `alerts` topic shared by every open page.

pub mod api;
pub mod assets;
pub mod auth;
pub mod config;
#[cfg(test)]
mod tests;

pub use config::{DashboardConfig, DashboardTlsConfig, DashboardUser, Role};

use crate::admin::server::Control;
use crate::health::Health;
use crate::supervisor::Context;
use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use otwatch_eventlog::{EventLog, Topic};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// The component's name in logs and probes.
pub const NAME: &str = "dashboard";
/// Longest request body read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a query of the history may take before the request fails.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API handlers share.
pub struct Shared {
    pub auth: auth::Auth,
    pub control: Arc<Control>,
    pub history: PathBuf,
    pub health: Health,
    /// The collector's view of each agent (version, backlog, certificate).
    pub collector: Arc<otwatch_collector::CollectorMetrics>,
    pub log: Arc<dyn EventLog>,
    pub config: DashboardConfig,
    /// Served over TLS: cookies are `Secure`.
    pub secure: bool,
    /// Alerts as the detector appends them: new ones and state changes.
    pub live: broadcast::Sender<LiveAlert>,
    /// Set when the service stops: live streams end, so the server can.
    pub closing: tokio::sync::watch::Sender<bool>,
}

/// One alert record of the `alerts` topic, for the live pages.
#[derive(Debug, Clone)]
pub struct LiveAlert {
    pub site: String,
    /// A change of state (acked, resolved) of an alert raised before.
    pub update: bool,
    /// Its JSON form ([`crate::outputs::alert_json`]).
    pub json: serde_json::Value,
}

/// The dashboard component: a bound listener and what it serves.
pub struct DashboardComponent {
    pub listener: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub shared: Arc<Shared>,
}

impl DashboardComponent {
    /// Reads the configuration's users (and users file) and TLS files; an
    /// error names what cannot be used.
    pub fn open(
        listener: TcpListener,
        config: &DashboardConfig,
        control: Arc<Control>,
        history: PathBuf,
        health: Health,
        collector: Arc<otwatch_collector::CollectorMetrics>,
        log: Arc<dyn EventLog>,
    ) -> anyhow::Result<DashboardComponent> {
        let users = config.all_users()?;
        let tls = match &config.tls {
            Some(files) => {
                let mut server = otwatch_pgwire::SqlTlsConfig {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
                .server_config()
                .map_err(|e| anyhow::anyhow!("[dashboard.tls]: {e}"))?;
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
            }
            None => None,
        };
        let (live, _) = broadcast::channel(256);
        Ok(DashboardComponent {
            listener,
            shared: Arc::new(Shared {
                auth: auth::Auth::new(config, users)?,
                control,
                history,
                health,
                collector,
                log,
                config: config.clone(),
                secure: tls.is_some(),
                live,
                closing: tokio::sync::watch::channel(false).0,
            }),
            tls,
        })
    }

    pub async fn run(self, ctx: Context) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        let shared = self.shared;
        let router = api::router(shared.clone());
        let mut tail = tokio::spawn(tail_alerts(shared.clone(), ctx.stop.clone()));
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut stop = ctx.stop.clone();
        let closing = shared.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|&s| s).await;
            closing.closing.send_replace(true);
        };
        let served = match self.tls {
            None => {
                let app = router.into_make_service_with_connect_info::<Peer>();
                let serve = axum::serve(self.listener, app).with_graceful_shutdown(shutdown);
                serve_beside(serve.into_future(), &mut tail).await
            }
            Some(acceptor) => {
                let listener = TlsListener::new(self.listener, acceptor, addr);
                let app = router.into_make_service_with_connect_info::<Peer>();
                let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
                serve_beside(serve.into_future(), &mut tail).await
            }
        };
        tail.abort();
        served.with_context(|| format!("the dashboard on {addr} stopped serving"))
    }
}

/// Runs the server until it stops; the live alert reader failing fails it
/// too. The reader ends cleanly only when the service stops, and then the
/// server is on its way down as well.
async fn serve_beside(
    serve: impl std::future::Future<Output = std::io::Result<()>>,
    tail: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served.map_err(anyhow::Error::from),
        tailed = tail => match tailed {
            Ok(Ok(())) => serve.await.map_err(anyhow::Error::from),
            Ok(Err(e)) => Err(e.context("the live alert reader failed")),
            Err(e) => Err(anyhow::anyhow!("the live alert reader panicked: {e}")),
        },
    }
}

/// Reads the `alerts` topic from its end and hands each new alert to the
/// open pages. Its failure fails the component (and so shows on
/// `/healthz`): live alerts that silently stop are worse than none.
async fn tail_alerts(
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let log = shared.log.clone();
    let mut consumer = log
        .consumer(Topic::Alerts, "dashboard-live")
        .await
        .context("cannot read the alerts topic")?;
    consumer.seek(log.end_offset(Topic::Alerts));
    loop {
        let polled = tokio::select! {
            _ = stop.wait_for(|&s| s) => return Ok(()),
            polled = consumer.poll(64, Duration::from_millis(500)) => polled,
        };
        for delivery in polled.context("cannot read the alerts topic")? {
            for alert in otwatch_proto::arrow::batch_to_alerts(&delivery.batch)? {
                let live = LiveAlert {
                    update: crate::outputs::is_update(&alert),
                    json: crate::outputs::alert_json(&alert),
                    site: alert.site,
                };
                // No page open is no error.
                let _ = shared.live.send(live);
            }
        }
    }
}

/// The client's address, for the sign-in lockout and the audit.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Accepts TCP connections and completes their TLS handshakes
/// concurrently (a slow client holds up only itself), for `axum::serve`.
struct TlsListener {
    ready: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
    _acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, addr: SocketAddr) -> Self {
        let (tx, ready) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            let handshakes = Arc::new(tokio::sync::Semaphore::new(64));
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "dashboard: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    continue; // too many handshakes at once: dropped
                };
                let (acceptor, handed) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "dashboard: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "dashboard: TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        TlsListener {
            ready,
            addr,
            _acceptor: task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
