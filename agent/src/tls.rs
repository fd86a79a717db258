//! The agent's side of TLS: its client certificate, the CA it trusts for the
//! collector, and the check that the certificate names this agent.
//!
//! The files are read at every connection attempt, so renewed certificates
//! take effect at the next reconnect without a restart.

use crate::config::ClientTlsConfig;
use otwatch_proto::identity::identity_from_cert_der;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tonic::transport::{Certificate, Identity};

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The tonic TLS settings for a connection to `url`.
pub fn client_config(
    tls: &ClientTlsConfig,
    url: &str,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    let ca = read("collector.tls.ca", &tls.ca)?;
    let cert = read("collector.tls.cert", &tls.cert)?;
    let key = read("collector.tls.key", &tls.key)?;
    let domain = match &tls.domain {
        Some(d) => d.clone(),
        None => host_of(url).ok_or_else(|| format!("collector.url {url:?} names no host"))?,
    };
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(domain))
}

/// The host part of `scheme://host[:port][/path]`, without IPv6 brackets.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Checks that the configured certificate names `site` and `agent`, so a
/// copied configuration or a swapped certificate is caught at startup, not
/// by the collector's refusal later.
pub fn check_identity(tls: &ClientTlsConfig, site: &str, agent: &str) -> Result<(), String> {
    let path = &tls.cert;
    let first = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read collector.tls.cert {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| {
            format!(
                "collector.tls.cert {} holds no PEM certificate",
                path.display()
            )
        })?
        .map_err(|e| format!("collector.tls.cert {}: {e}", path.display()))?;
    let (cert_site, cert_agent) = identity_from_cert_der(&first)
        .map_err(|e| format!("collector.tls.cert {}: {e}", path.display()))?;
    if cert_site != site || cert_agent != agent {
        return Err(format!(
            "collector.tls.cert {} is issued to site {cert_site:?} agent {cert_agent:?}, but this configuration says site {site:?} agent {agent:?}",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_are_read_from_urls() {
        assert_eq!(
            host_of("https://collector.example:4317").as_deref(),
            Some("collector.example")
        );
        assert_eq!(host_of("https://10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(host_of("https://[::1]:4317/x").as_deref(), Some("::1"));
        assert_eq!(host_of("https://:4317"), None);
    }
}
