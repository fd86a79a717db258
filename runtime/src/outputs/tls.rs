//! TLS towards receivers (syslog over TLS, webhooks, Splunk HEC): the
//! `[outputs.tls]` table and the rustls client configuration built from it,
//! with the ring provider as everywhere else in otwatch.
//!
//! Promises: the receiver's certificate is always verified, against the CA
//! file given or else the system's trusted roots, and must name the host
//! connected to (or `server_name` where an output has it); there is no
//! option to turn verification off. A client certificate is presented
//! only when both `client_cert` and `client_key` are given. Files that
//! cannot be used are refused when the configuration is loaded, naming the
//! option.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// `[outputs.tls]`: how an output checks its receiver and proves itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) (PEM) the receiver's certificate must chain to.
    /// Default: the system's trusted roots (`/etc/ssl/certs`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM, its chain may follow), for receivers that
    /// require one. Needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). A file, never config text;
    /// keep it readable by otwatch only.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// The rustls client configuration, or why it cannot be built (naming
    /// `outputs.<output>.tls.<option>`). `alpn` is offered as given.
    pub fn client_config(
        &self,
        output: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key_err =
            |key: &str, e: &dyn std::fmt::Display| format!("outputs.{output}.tls.{key}: {e}");
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let certs = read_certs(path).map_err(|e| key_err("ca", &e))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| key_err("ca", &format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "outputs.{output}.tls.ca: not given, and this machine has no trusted CA certificates (install ca-certificates, or give the receiver's CA file)"
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("outputs.{output}.tls: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert).map_err(|e| key_err("client_cert", &e))?;
                let private = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| key_err("client_key", &format!("{}: {e}", key.display())))?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    key_err("client_cert", &format!("does not go with client_key: {e}"))
                })?
            }
            (Some(_), None) => {
                return Err(format!(
                    "outputs.{output}.tls: client_cert needs client_key"
                ))
            }
            (None, Some(_)) => {
                return Err(format!(
                    "outputs.{output}.tls: client_key needs client_cert"
                ))
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
