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
//! - a slow or hostile client cannot stall the accept loop: handshakes run
//!   concurrently, at most [`MAX_HANDSHAKES`] at a time, each bounded by
//!   [`HANDSHAKE_TIMEOUT`]; failures are logged with the peer address and
//!   counted, never fatal.

use crate::connections::{accept, Conn, Slots};
use crate::{AgentIdentity, CollectorMetrics};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the
/// kernel's accept backlog.
pub const MAX_HANDSHAKES: usize = 256;

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
    /// `otwatch cert revoke`. Read at startup: restart to apply a new list.
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

    /// The acceptor for [`tls_incoming`].
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(Arc::new(self.server_config()?)))
    }
}

/// What the ingest service learns about a TLS connection: its address and
/// the identity its verified certificate names (or why it names none).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Result<AgentIdentity, String>,
}

/// A verified TLS connection, as tonic serves it.
pub type TlsConn = Conn<TlsStream<TcpStream>, PeerInfo>;

fn peer_identity(stream: &TlsStream<TcpStream>) -> Result<AgentIdentity, String> {
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    let (site, agent) = otwatch_proto::identity::identity_from_cert_der(cert)?;
    Ok(AgentIdentity { site, agent })
}

/// Accepts TCP connections on `listener` within `slots` and yields those
/// that complete a verified TLS handshake. Runs until the returned stream is
/// dropped.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: Slots,
    metrics: Arc<CollectorMetrics>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                pair = accept(&listener) => pair,
                _ = tx.closed() => return,
            };
            // The slot is taken before the handshake, so handshakes count
            // against the cap too.
            let Some(slot) = slots.admit(remote) else {
                continue;
            };
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                        return;
                    }
                };
                let info = PeerInfo {
                    remote: Some(remote),
                    identity: peer_identity(&stream),
                };
                let _ = tx.send(Ok(Conn::new(stream, info, slot))).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
