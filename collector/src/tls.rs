//! TLS on the ingest port, with client certificates.
//!
//! Owns the `[collector.tls]` settings, the rustls server configuration built
//! from them, and the accept loop that turns TCP connections into verified
//! TLS connections for tonic.
//!
//! Promises:
//! - every connection presents a client certificate that chains to
//!   `client_ca`, is within its validity period, carries the client-auth
//!   usage and is not on the revocation list (`crl`); anything else fails the
//!   handshake and never reaches the ingest service;
//! - the agent's identity is read from that verified certificate (its
//!   `otwatch://site/S/agent/A` URI, see `otwatch_proto::identity`) once per
//!   connection and handed to the service as [`PeerInfo`]; nothing the agent
//!   sends can change it;
//! - a slow or hostile client cannot stall the accept loop: it never waits
//!   for a handshake. Each accepted connection is admitted first (see
//!   [`crate::connections`]: a handshake in progress holds a connection slot
//!   like a connection without a stream, and gives it up to a newcomer when
//!   the slots are full), then handshakes in its own task, bounded by
//!   [`HANDSHAKE_TIMEOUT`]. So a flood of half-open connections that send
//!   nothing holds no slot longer than that, and never keeps a real agent
//!   waiting behind it. Every failed handshake is counted
//!   (`tls_handshake_failures`; `tls_handshake_timeouts` too for a timeout).
//!   One refused by TLS (unknown CA, expired or revoked certificate, no
//!   certificate) is logged with the peer address and reason at `warn`; one
//!   that timed out or that the peer closed before it completed (a scan, a
//!   TCP health check, a flood giving up) at `debug`, summed up at `warn`
//!   every [`ADMISSION_REPORT_INTERVAL`](crate::connections::ADMISSION_REPORT_INTERVAL)
//!   (a flood would otherwise flood the log). None is ever fatal;
//! - replaced TLS files (a new revocation list, a renewed certificate) are
//!   taken within [`RELOAD_CHECK_INTERVAL`] without a restart, and every open
//!   connection is then closed so that its agent handshakes again against
//!   them ([`Acceptor`]); connections are also closed at
//!   `MAX_CONNECTION_AGE`, so no certificate goes unchecked for longer;
//! - the certificate's expiry (`notAfter`) is handed on in [`PeerInfo`] too,
//!   for the fleet status ([`crate::agents`]).

use crate::connections::{accept, Admission, CloseReason, Conn, PeerInfo};
use crate::{AgentIdentity, CollectorMetrics};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often, at most, the TLS files are checked for replacements.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The `[collector.tls]` section: the collector's certificate and the CA that
/// agent certificates must chain to. `otwatch cert init` and `otwatch cert
/// issue` write all of these files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The collector's certificate (PEM; its chain may follow it in the same
    /// file), e.g. `collector.pem` from `otwatch cert issue --collector HOST`.
    pub cert: PathBuf,
    /// The collector's private key (PEM), e.g. `collector-key.pem`.
    pub key: PathBuf,
    /// CA certificate(s) (PEM) that agent certificates must chain to, e.g.
    /// `ca.pem` from `otwatch cert init`.
    pub client_ca: PathBuf,
    /// Optional certificate revocation list(s) (PEM), e.g. `crl.pem` from
    /// `otwatch cert revoke`. Replace the file to apply a new list: within
    /// seconds new handshakes use it and open connections are closed to
    /// handshake again, so a revoked agent is cut off without a restart.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// Why the TLS configuration cannot be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn pem_items<T: PemObject>(
    what: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<T>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let items = T::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if items.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected,
        });
    }
    Ok(items)
}

impl ServerTlsConfig {
    /// Builds the rustls server configuration: client certificates required
    /// and verified against `client_ca` and `crl`, HTTP/2 only.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            pem_items("certificate", &self.cert, "PEM certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            what: "private key",
            path: self.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in pem_items::<CertificateDer>("client CA", &self.client_ca, "PEM certificate")? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?;
        }
        let crls: Vec<CertificateRevocationListDer<'static>> = match &self.crl {
            Some(path) => pem_items("revocation list", path, "PEM X509 CRL")?,
            None => Vec::new(),
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| TlsError::Rustls(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The acceptor for [`tls_incoming`]; fails at once if the files
    /// cannot be used.
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        Ok(Acceptor {
            stamps: self.stamps(),
            current: TlsAcceptor::from(Arc::new(self.server_config()?)),
            config: self.clone(),
            checked: Instant::now(),
            generation: watch::channel(0).0,
        })
    }

    /// Modification time and length of each file, to notice replacements.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [
            Some(&self.cert),
            Some(&self.key),
            Some(&self.client_ca),
            self.crl.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
    }
}

/// The TLS acceptor, rebuilt when the files behind it change: a new
/// revocation list, a renewed collector certificate or an added CA takes
/// effect without a restart. The files are checked every
/// [`RELOAD_CHECK_INTERVAL`] (and before a handshake when that long has
/// passed). When a changed set is taken, every open connection is closed:
/// agents reconnect with backoff and handshake against the new files, so a
/// revoked agent is cut off within seconds and the others lose nothing
/// (they resend what is unacked). A replacement that cannot be used is
/// logged as an error and the previous configuration stays in force, so a
/// half-copied file never opens the port.
pub struct Acceptor {
    config: ServerTlsConfig,
    current: TlsAcceptor,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
    /// Bumped when a changed set of files is taken; connections watch it.
    generation: watch::Sender<u64>,
}

impl Acceptor {
    /// Resolves when the TLS files in force for a connection accepted now
    /// are replaced (never, once the acceptor is gone).
    fn replaced(&self) -> impl std::future::Future<Output = CloseReason> + Send + 'static {
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        async move {
            if generation.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            "its TLS files changed"
        }
    }

    /// The acceptor for the next handshake.
    fn current(&mut self) -> TlsAcceptor {
        if self.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            self.checked = Instant::now();
            let stamps = self.config.stamps();
            if stamps != self.stamps {
                self.stamps = stamps;
                match self.config.server_config() {
                    Ok(config) => {
                        self.current = TlsAcceptor::from(Arc::new(config));
                        tracing::info!(
                            crl = ?self.config.crl,
                            open_connections = self.generation.receiver_count(),
                            "TLS files changed: new handshakes use them; open connections are closed to handshake again"
                        );
                        self.generation.send_modify(|g| *g += 1);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "TLS files changed but cannot be used; the previous ones stay in force"
                    ),
                }
            }
        }
        self.current.clone()
    }
}

/// A verified TLS connection, as tonic serves it.
pub type TlsConn = Conn<TlsStream<TcpStream>>;

/// The verified client certificate of `stream` (its end-entity one).
fn peer_certificate(stream: &TlsStream<TcpStream>) -> Option<&CertificateDer<'static>> {
    let (_, session) = stream.get_ref();
    session.peer_certificates().and_then(|c| c.first())
}

fn peer_identity(cert: Option<&CertificateDer<'_>>) -> Result<AgentIdentity, String> {
    let cert = cert.ok_or("no client certificate")?;
    let (site, agent) = otwatch_proto::identity::identity_from_cert_der(cert)?;
    Ok(AgentIdentity { site, agent })
}

/// Accepts TCP connections on `listener`, admitted by `admission`, and
/// yields those that complete a verified TLS handshake. Runs until the
/// returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    mut acceptor: Acceptor,
    admission: Admission,
    metrics: Arc<CollectorMetrics>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                pair = accept(&listener) => pair,
                _ = tx.closed() => return,
                // Open connections must learn of replaced files even when
                // nobody connects.
                _ = tokio::time::sleep(RELOAD_CHECK_INTERVAL) => {
                    acceptor.current();
                    continue;
                }
            };
            // The slot is taken before the handshake, so handshakes count
            // against the caps too, and a stalled one can be evicted.
            let Some(slot) = admission.admit(remote) else {
                continue;
            };
            // The files first, then the watch: a connection is closed only
            // by a replacement of the files it was accepted with.
            let current = acceptor.current();
            let replaced = acceptor.replaced();
            let (acceptor, tx, metrics) = (current, tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let evicted = slot.closed();
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => handshake,
                    // Made room for a newcomer, or the server is stopping.
                    reason = evicted => {
                        tracing::debug!(%remote, reason, "TLS handshake abandoned");
                        return;
                    }
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            tracing::debug!(%remote, "the peer closed the connection during the TLS handshake");
                        } else {
                            tracing::warn!(%remote, error = %e, "TLS handshake refused");
                        }
                        return;
                    }
                    Err(_) => {
                        metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        metrics
                            .tls_handshake_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                        return;
                    }
                };
                let cert = peer_certificate(&stream);
                let info = PeerInfo {
                    remote,
                    identity: Some(peer_identity(cert)),
                    cert_not_after_ns: cert.and_then(|c| crate::agents::cert_not_after_ns(c)),
                    streams: slot.streams(),
                };
                let closed = slot.closed();
                let conn = Conn::new(stream, info, slot).closed_when(replaced);
                // Waiting for tonic to take the connection: a close (eviction,
                // shutdown) drops it meanwhile.
                tokio::select! {
                    _ = tx.send(Ok(conn)) => {}
                    _ = closed => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
