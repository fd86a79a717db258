//! `otwatch cert`: a small certificate authority for one otwatch deployment.
//!
//! Files, all PEM, in one directory (`--dir`, default the current one):
//!
//! ```text
//! ca.pem, ca-key.pem                       the CA (init)
//! collector.pem, collector-key.pem         the collector's server certificate
//! agent-<site>-<agent>.pem, …-key.pem      one per agent
//! revoked.txt                              serials revoked so far, one hex serial per line
//! crl.pem                                  the revocation list the collector reads
//! ```
//!
//! Promises: private keys are created with mode 0600 and never overwritten;
//! an agent certificate carries exactly one identity URI
//! (`otwatch://site/S/agent/A`) and only the client-auth usage, so it can
//! neither act as another agent nor as a server; the collector certificate
//! carries only the server-auth usage, so it cannot act as an agent. Keys are
//! ECDSA P-256.

use anyhow::{bail, Context};
use otwatch_proto::identity::{check_id, identity_uri};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Validity of a new CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Default validity of agent and collector certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(397 * 86_400);
/// How long a revocation list is valid before it must be re-issued.
pub const CRL_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const COLLECTOR_CERT: &str = "collector.pem";
pub const COLLECTOR_KEY: &str = "collector-key.pem";
pub const CRL: &str = "crl.pem";
const REVOKED: &str = "revoked.txt";

/// File names of an agent's certificate and key.
pub fn agent_files(site: &str, agent: &str) -> (String, String) {
    (
        format!("agent-{site}-{agent}.pem"),
        format!("agent-{site}-{agent}-key.pem"),
    )
}

/// Writes a new file, refusing to replace an existing one; keys get 0600.
fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; remove it first if you mean to replace it",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces a public file atomically (the revocation list and its ledger).
fn replace(path: &Path, contents: &str) -> anyhow::Result<()> {
    otwatch_fs::write_atomic(path, contents.as_bytes()).context("cannot replace a CA file")
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks a few minutes behind.
    params.not_before = now - time::Duration::minutes(10);
    params.not_after = now + valid_for;
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and of full length
    SerialNumber::from_slice(&bytes)
}

/// Refuses to go on if any of `paths` exists, saying what to do instead:
/// a certificate or key is never replaced by accident.
fn refuse_existing(paths: &[&Path], advice: &str) -> anyhow::Result<()> {
    if let Some(path) = paths.iter().find(|p| p.exists()) {
        bail!("{} already exists: {advice}", path.display());
    }
    Ok(())
}

/// `otwatch cert init`: creates the CA in `dir`.
pub fn init(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    refuse_existing(
        &[&cert_path, &key_path],
        "this directory already holds a CA (use `otwatch cert issue`, or choose another --dir)",
    )?;
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "otwatch");
    name.push(DnType::CommonName, "otwatch CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).context("cannot sign the CA")?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(vec![cert_path, key_path])
}

/// The CA of `dir`, ready to sign.
fn load_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !cert_path.exists() {
        bail!(
            "no CA in {} (expected {}); run `otwatch cert init --dir {}` first",
            dir.display(),
            cert_path.display(),
            dir.display()
        );
    }
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let cert_pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .with_context(|| format!("{} is not a usable CA certificate", cert_path.display()))
}

/// What to issue.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An agent certificate for `site`/`agent`.
    Agent { site: String, agent: String },
    /// The collector's server certificate, valid for these DNS names or IP addresses.
    Collector { hosts: Vec<String> },
}

/// `otwatch cert issue`: signs a new certificate with the CA in `dir` and
/// writes it with its key. Returns the files written.
pub fn issue(dir: &Path, subject: &Subject, valid_for: Duration) -> anyhow::Result<Vec<PathBuf>> {
    issue_between(
        dir,
        subject,
        OffsetDateTime::now_utc() - time::Duration::minutes(10),
        OffsetDateTime::now_utc() + valid_for,
    )
}

/// [`issue`] with an explicit validity period (tests use it for expired
/// certificates).
pub fn issue_between(
    dir: &Path,
    subject: &Subject,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<Vec<PathBuf>> {
    let issuer = load_issuer(dir)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "otwatch");
    let (cert_name, key_name) = match subject {
        Subject::Agent { site, agent } => {
            check_id("site", site).map_err(anyhow::Error::msg)?;
            check_id("agent", agent).map_err(anyhow::Error::msg)?;
            name.push(DnType::OrganizationalUnitName, site.as_str());
            name.push(DnType::CommonName, agent.as_str());
            params.subject_alt_names = vec![SanType::URI(
                identity_uri(site, agent)
                    .try_into()
                    .context("identity URI is not IA5")?,
            )];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            agent_files(site, agent)
        }
        Subject::Collector { hosts } => {
            if hosts.is_empty() {
                bail!("name at least one host for the collector certificate (--collector HOST)");
            }
            name.push(DnType::CommonName, hosts[0].as_str());
            for host in hosts {
                let san = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        host.as_str()
                            .try_into()
                            .with_context(|| format!("{host:?} is not a valid DNS name"))?,
                    ),
                };
                params.subject_alt_names.push(san);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            (COLLECTOR_CERT.to_string(), COLLECTOR_KEY.to_string())
        }
    };
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    let (cert_path, key_path) = (dir.join(cert_name), dir.join(key_name));
    refuse_existing(
        &[&cert_path, &key_path],
        "remove it (and revoke the old certificate with `otwatch cert revoke`) to issue a new one",
    )?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(vec![cert_path, key_path])
}

/// The serial number of the first certificate in a PEM file.
fn serial_of(path: &Path) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| anyhow::anyhow!("{} cannot be parsed: {e}", path.display()))?;
    Ok(cert.serial().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `otwatch cert revoke CERT`: adds the certificate's serial to the CA's
/// ledger and writes a new `crl.pem` listing every revoked serial. An empty
/// `certs` just re-issues the list (it expires after [`CRL_VALIDITY`]).
pub fn revoke(dir: &Path, certs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let issuer = load_issuer(dir)?;
    let ledger = dir.join(REVOKED);
    let mut serials: Vec<String> = match std::fs::read_to_string(&ledger) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ledger.display())),
    };
    for cert in certs {
        let serial = hex(&serial_of(cert)?);
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let now = OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    for s in &serials {
        let bytes = unhex(s)
            .with_context(|| format!("{} holds {s:?}, not a hex serial", ledger.display()))?;
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(10),
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .context("cannot sign the revocation list")?;
    replace(&ledger, &(serials.join("\n") + "\n"))?;
    let path = dir.join(CRL);
    replace(
        &path,
        &crl.pem().context("cannot encode the revocation list")?,
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let err = init(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already holds a CA"), "{err}");
        let files = issue(
            dir.path(),
            &Subject::Agent {
                site: "plant-a".into(),
                agent: "gw-1".into(),
            },
            LEAF_VALIDITY,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&files[1]), 0o600);
            assert_eq!(mode(&dir.path().join(CA_KEY)), 0o600);
        }
        let der = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(&files[0]).unwrap()
        };
        assert_eq!(
            otwatch_proto::identity::identity_from_cert_der(&der).unwrap(),
            ("plant-a".to_string(), "gw-1".to_string())
        );
        let again = issue(
            dir.path(),
            &Subject::Agent {
                site: "plant-a".into(),
                agent: "gw-1".into(),
            },
            LEAF_VALIDITY,
        );
        assert!(again.unwrap_err().to_string().contains("already exists"));
        let bad = issue(
            dir.path(),
            &Subject::Agent {
                site: "plant/a".into(),
                agent: "gw-1".into(),
            },
            LEAF_VALIDITY,
        );
        assert!(bad.unwrap_err().to_string().contains("site id"));
    }

    #[test]
    fn revocation_keeps_a_ledger() {
        let dir = tempfile::tempdir().unwrap();
        assert!(revoke(dir.path(), &[])
            .unwrap_err()
            .to_string()
            .contains("cert init"));
        init(dir.path()).unwrap();
        let a = issue(
            dir.path(),
            &Subject::Agent {
                site: "s".into(),
                agent: "a".into(),
            },
            LEAF_VALIDITY,
        )
        .unwrap();
        revoke(dir.path(), &[a[0].clone()]).unwrap();
        revoke(dir.path(), &[a[0].clone()]).unwrap();
        let ledger = std::fs::read_to_string(dir.path().join(REVOKED)).unwrap();
        assert_eq!(ledger.lines().count(), 1);
        assert_eq!(unhex(ledger.trim()).unwrap(), serial_of(&a[0]).unwrap());
        assert!(std::fs::read_to_string(dir.path().join(CRL))
            .unwrap()
            .contains("BEGIN X509 CRL"));
    }
}
