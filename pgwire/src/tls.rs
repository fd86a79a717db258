//! TLS on the SQL endpoint: the rustls server configuration built from
//! `[sql.tls]`, with the ring provider (the workspace's one TLS stack).
//!
//! It fails closed: a certificate or key that cannot be read, holds
//! nothing, or does not match is an error naming the file, and the
//! endpoint does not start (datafusion-postgres's own setup would log it
//! and serve plaintext instead; it is not used). Clients authenticate with
//! SCRAM inside the TLS session, not with certificates.

use crate::config::SqlTlsConfig;
use crate::SqlError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// ALPN name of the Postgres protocol, required by clients that start TLS
/// directly (PostgreSQL 17's `sslnegotiation=direct`).
const POSTGRESQL_ALPN: &[u8] = b"postgresql";

impl SqlTlsConfig {
    /// Builds the acceptor; see the module documentation.
    pub fn acceptor(&self) -> Result<TlsAcceptor, SqlError> {
        let mut config = self.server_config()?;
        config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The server configuration of this certificate and key, without
    /// client authentication and without ALPN: shared with the other HTTPS
    /// and TLS endpoints of the central service (the dashboard).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SqlError> {
        let tls_err = |path: &Path, what: &'static str, detail: String| SqlError::Tls {
            what,
            path: path.to_path_buf(),
            detail,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_err(&self.cert, "certificate", e.to_string()))?;
        if certs.is_empty() {
            return Err(tls_err(
                &self.cert,
                "certificate",
                "holds no PEM certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| tls_err(&self.key, "private key", e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&self.cert, "certificate", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                tls_err(
                    &self.key,
                    "private key",
                    format!("does not go with {}: {e}", self.cert.display()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn files_that_cannot_be_used_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path();
        otwatch_pki::init(pki).unwrap();
        otwatch_pki::issue(
            pki,
            &otwatch_pki::Subject::Collector {
                hosts: vec!["localhost".into()],
            },
            Duration::from_secs(86_400),
        )
        .unwrap();
        let good = SqlTlsConfig {
            cert: pki.join(otwatch_pki::COLLECTOR_CERT),
            key: pki.join(otwatch_pki::COLLECTOR_KEY),
        };
        good.acceptor().unwrap();

        let missing = SqlTlsConfig {
            cert: pki.join("nope.pem"),
            ..good.clone()
        };
        let err = missing.acceptor().err().unwrap().to_string();
        assert!(
            err.contains("nope.pem") && err.contains("certificate"),
            "{err}"
        );

        let not_a_key = SqlTlsConfig {
            key: pki.join(otwatch_pki::CA_CERT),
            ..good.clone()
        };
        let err = not_a_key.acceptor().err().unwrap().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("private key"),
            "{err}"
        );

        let wrong_key = SqlTlsConfig {
            key: pki.join(otwatch_pki::CA_KEY),
            ..good
        };
        let err = wrong_key.acceptor().err().unwrap().to_string();
        assert!(
            err.contains("ca-key.pem") && err.contains("does not go with"),
            "{err}"
        );
    }
}
