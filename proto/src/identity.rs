//! Who an agent is, and how that identity is carried.
//!
//! An agent is `(site, agent)`. With TLS (the default outside local trials),
//! the identity comes from the agent's client certificate, never from the
//! payload: the certificate carries exactly one subject alternative name URI
//! of the form
//!
//! ```text
//! otwatch://site/<site>/agent/<agent>
//! ```
//!
//! which binds the certificate to its site. `otwatch cert issue` writes it,
//! the collector reads it back from the verified certificate, and the agent
//! checks at startup that its own certificate names the site and agent of its
//! configuration. Ids are restricted to [`valid_id`] characters so that they
//! need no escaping inside the URI, in file names or in log lines.
//!
//! On a plaintext connection (only allowed on loopback, for local trials) the
//! agent names itself with the [`SITE_HEADER`] and [`AGENT_HEADER`] metadata.

/// gRPC metadata key naming the agent's site on a plaintext connection.
pub const SITE_HEADER: &str = "x-otwatch-site";
/// gRPC metadata key naming the agent on a plaintext connection.
pub const AGENT_HEADER: &str = "x-otwatch-agent";
/// gRPC metadata key carrying the agent's software version (its crate
/// version, e.g. `0.1.0`), sent on every connection, TLS or not. It only
/// informs: it never identifies the agent nor changes what the collector
/// accepts. The collector keeps it when it is [`valid_version`].
pub const AGENT_VERSION_HEADER: &str = "x-otwatch-agent-version";

/// Longest agent version kept by the collector, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// True for an agent version worth keeping: 1 to [`MAX_VERSION_LEN`]
/// printable ASCII characters (space included, no control characters).
pub fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && version.bytes().all(|b| (0x20..0x7f).contains(&b))
}

const URI_PREFIX: &str = "otwatch://site/";
const AGENT_PART: &str = "/agent/";

/// Longest site or agent id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// True for a usable site or agent id: 1 to [`MAX_ID_LEN`] ASCII letters,
/// digits, `.`, `_` or `-`, not starting with `.` or `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Explains why an id is not [`valid_id`]; `what` names it ("site", "agent").
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{what} id {id:?} is not valid: use 1 to {MAX_ID_LEN} ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ))
    }
}

/// The certificate URI that names `site`/`agent`.
pub fn identity_uri(site: &str, agent: &str) -> String {
    format!("{URI_PREFIX}{site}{AGENT_PART}{agent}")
}

/// Reads `(site, agent)` back from an identity URI; `None` when `uri` is not
/// one or names an invalid id.
pub fn parse_identity_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (site, agent) = rest.split_once(AGENT_PART)?;
    (valid_id(site) && valid_id(agent)).then(|| (site.to_string(), agent.to_string()))
}

/// The identity named by a DER certificate: its one otwatch SAN URI.
/// Does not verify the certificate (the TLS handshake does that).
pub fn identity_from_cert_der(der: &[u8]) -> Result<(String, String), String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let found: Vec<(String, String)> = cert
        .valid_uri_names()
        .filter_map(parse_identity_uri)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "the certificate names no otwatch identity (a subject alternative name URI {}); issue agent certificates with `otwatch cert issue --site S --agent A`",
            identity_uri("<site>", "<agent>")
        )),
        _ => Err("the certificate names more than one otwatch identity".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_reject_lookalikes() {
        let uri = identity_uri("plant-lyon", "gw-1");
        assert_eq!(uri, "otwatch://site/plant-lyon/agent/gw-1");
        assert_eq!(
            parse_identity_uri(&uri),
            Some(("plant-lyon".into(), "gw-1".into()))
        );
        for bad in [
            "otwatch://site//agent/gw-1",
            "otwatch://site/a/b/agent/gw-1",
            "otwatch://site/plant/agent/gw 1",
            "https://site/plant/agent/gw-1",
            "otwatch://site/plant/agent/",
            "otwatch://site/../agent/x",
        ] {
            assert_eq!(parse_identity_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_checked_with_a_reason() {
        assert!(valid_id("plant_7.b-2"));
        assert!(!valid_id("-x"));
        assert!(!valid_id(&"x".repeat(MAX_ID_LEN + 1)));
        let err = check_id("site", "plant/7").unwrap_err();
        assert!(err.contains("site id \"plant/7\""), "{err}");
    }

    #[test]
    fn versions_are_printable_ascii_and_short() {
        assert!(valid_version("0.1.0"));
        assert!(valid_version("1.2.3-rc.1+build 7"));
        assert!(valid_version(&"9".repeat(MAX_VERSION_LEN)));
        assert!(!valid_version(""));
        assert!(!valid_version(&"9".repeat(MAX_VERSION_LEN + 1)));
        assert!(!valid_version("1.0\n"));
        assert!(!valid_version("1.0\u{7f}"));
        assert!(!valid_version("1.0-é"));
    }
}
