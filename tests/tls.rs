//! Mutual TLS on the ingest port, over real connections on loopback, with
//! certificates made by `otwatch cert`: the identity comes from the client
//! certificate, never from headers or payload; certificates from another
//! CA, expired or revoked ones, and clients without one never get in; and
//! `otwatch serve` will not start without TLS outside loopback trials.

mod common;

use common::{batch, open_greeted, stored, Stream};
use otwatch_collector::tls::{ServerTlsConfig, RELOAD_CHECK_INTERVAL};
use otwatch_collector::{Collector, CollectorConfig, CollectorMetrics};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use otwatch_pki::{self as cert, Subject, LEAF_VALIDITY};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

fn agent(dir: &Path, site: &str, agent: &str) -> (PathBuf, PathBuf) {
    cert::issue(
        dir,
        &Subject::Agent {
            site: site.into(),
            agent: agent.into(),
        },
        LEAF_VALIDITY,
    )
    .unwrap();
    let (c, k) = cert::agent_files(site, agent);
    (dir.join(c), dir.join(k))
}

/// A CA with the collector's certificate for 127.0.0.1.
fn pki(dir: &Path) {
    cert::init(dir).unwrap();
    cert::issue(
        dir,
        &Subject::Collector {
            hosts: vec!["127.0.0.1".into()],
        },
        LEAF_VALIDITY,
    )
    .unwrap();
}

async fn start(
    pki: &Path,
    data: &Path,
    crl: Option<PathBuf>,
) -> (SocketAddr, Arc<LocalLog>, Arc<CollectorMetrics>) {
    let tls = ServerTlsConfig {
        cert: pki.join(cert::COLLECTOR_CERT),
        key: pki.join(cert::COLLECTOR_KEY),
        client_ca: pki.join(cert::CA_CERT),
        crl,
    };
    let log = Arc::new(LocalLog::open(data, LocalLogConfig::default()).unwrap());
    let collector = Collector::new(
        log.clone(),
        CollectorConfig {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let metrics = collector.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor().unwrap();
    tokio::spawn(collector.serve(listener, Some(acceptor), std::future::pending()));
    (addr, log, metrics)
}

/// Opens a stream over TLS as the holder of `cert`/`key` (or with no
/// client certificate), trusting `ca` for the collector. Headers claim
/// `claimed_site`/`gw-x`, which a TLS collector must ignore.
async fn open_tls(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    claimed_site: &str,
) -> Result<Stream, String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    open_greeted(channel, claimed_site, "gw-x").await
}

#[tokio::test]
async fn identity_comes_from_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let (cert_a, key_a) = agent(&pki_dir, "plant-a", "gw-1");
    let (addr, log, metrics) = start(&pki_dir, &dir.path().join("log"), None).await;
    let ca = pki_dir.join(cert::CA_CERT);

    // Headers claim plant-b; the certificate says plant-a/gw-1, and wins.
    let mut s = open_tls(addr, &ca, Some((&cert_a, &key_a)), "plant-b")
        .await
        .unwrap();
    let ack = s.send(batch("plant-a", "gw-1", 1..=10)).await.unwrap();
    assert_eq!(ack.durable_seq, 10);

    // A batch claiming another site (or agent) is refused and counted.
    let status = s.send(batch("plant-b", "gw-1", 11..=12)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("plant-b"), "{}", status.message());
    let mut s = open_tls(addr, &ca, Some((&cert_a, &key_a)), "plant-a")
        .await
        .unwrap();
    let status = s.send(batch("plant-a", "gw-2", 11..=12)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(metrics.batches_denied.load(Ordering::Relaxed), 2);

    let rows = stored(&log).await;
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|(p, _)| p == "plant-a/gw-1"));
}

#[tokio::test]
async fn strangers_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let ca = pki_dir.join(cert::CA_CERT);
    let (good_cert, good_key) = agent(&pki_dir, "plant-a", "gw-1");
    let (revoked_cert, revoked_key) = agent(&pki_dir, "plant-a", "gw-old");
    let crl = cert::revoke(&pki_dir, std::slice::from_ref(&revoked_cert)).unwrap();
    // Expired: valid for a day, two days ago.
    let now = time::OffsetDateTime::now_utc();
    cert::issue_between(
        &pki_dir,
        &Subject::Agent {
            site: "plant-a".into(),
            agent: "gw-expired".into(),
        },
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    )
    .unwrap();
    let (expired_cert, expired_key) = cert::agent_files("plant-a", "gw-expired");
    let (expired_cert, expired_key) = (pki_dir.join(expired_cert), pki_dir.join(expired_key));
    // Another CA issuing the very same identity.
    let other = dir.path().join("other");
    cert::init(&other).unwrap();
    let (other_cert, other_key) = agent(&other, "plant-a", "gw-1");

    let (addr, log, metrics) = start(&pki_dir, &dir.path().join("log"), Some(crl)).await;
    for (what, client) in [
        (
            "another CA",
            Some((other_cert.as_path(), other_key.as_path())),
        ),
        (
            "expired",
            Some((expired_cert.as_path(), expired_key.as_path())),
        ),
        (
            "revoked",
            Some((revoked_cert.as_path(), revoked_key.as_path())),
        ),
        ("no certificate", None),
    ] {
        let result = open_tls(addr, &ca, client, "plant-a").await;
        assert!(result.is_err(), "{what}: a stream was accepted");
    }
    assert!(
        metrics.tls_handshake_failures.load(Ordering::Relaxed) >= 4,
        "{:?}",
        metrics.tls_handshake_failures
    );
    // The collector's own certificate is not a client certificate.
    let collector = (
        pki_dir.join(cert::COLLECTOR_CERT),
        pki_dir.join(cert::COLLECTOR_KEY),
    );
    assert!(
        open_tls(addr, &ca, Some((&collector.0, &collector.1)), "plant-a")
            .await
            .is_err()
    );

    // None of that disturbed a legitimate agent.
    let mut s = open_tls(addr, &ca, Some((&good_cert, &good_key)), "plant-a")
        .await
        .unwrap();
    assert_eq!(
        s.send(batch("plant-a", "gw-1", 1..=5))
            .await
            .unwrap()
            .durable_seq,
        5
    );
    assert_eq!(stored(&log).await.len(), 5);
}

#[tokio::test]
async fn a_replaced_revocation_list_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let ca = pki_dir.join(cert::CA_CERT);
    let (cert_a, key_a) = agent(&pki_dir, "plant-a", "gw-1");
    let (cert_b, key_b) = agent(&pki_dir, "plant-a", "gw-2");
    let crl = cert::revoke(&pki_dir, &[]).unwrap();
    let (addr, _log, _metrics) = start(&pki_dir, &dir.path().join("log"), Some(crl.clone())).await;
    let mut stolen = open_tls(addr, &ca, Some((&cert_a, &key_a)), "plant-a")
        .await
        .unwrap();
    stolen.send(batch("plant-a", "gw-1", 1..=3)).await.unwrap();

    // gw-1's key was stolen: revoke it. Its open stream is closed and its
    // new handshakes fail, within seconds, without a restart.
    cert::revoke(&pki_dir, std::slice::from_ref(&cert_a)).unwrap();
    let wait = RELOAD_CHECK_INTERVAL * 6;
    let ended = tokio::time::timeout(wait, stolen.acks.message()).await;
    assert!(
        matches!(ended, Ok(Err(_)) | Ok(Ok(None))),
        "the revoked agent's open stream went on: {ended:?}"
    );
    let deadline = std::time::Instant::now() + wait;
    while open_tls(addr, &ca, Some((&cert_a, &key_a)), "plant-a")
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new revocation list was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut good = open_tls(addr, &ca, Some((&cert_b, &key_b)), "plant-a")
        .await
        .expect("an agent that is not revoked still gets in");

    // A broken replacement is refused: the last good list stays in force
    // and open connections are left alone.
    std::fs::write(&crl, "half a file").unwrap();
    tokio::time::sleep(RELOAD_CHECK_INTERVAL * 2).await;
    assert_eq!(
        good.send(batch("plant-a", "gw-2", 1..=2))
            .await
            .expect("a broken revocation list closed a good connection")
            .durable_seq,
        2
    );
    open_tls(addr, &ca, Some((&cert_b, &key_b)), "plant-a")
        .await
        .expect("a broken revocation list shut the port");
    assert!(
        open_tls(addr, &ca, Some((&cert_a, &key_a)), "plant-a")
            .await
            .is_err(),
        "a broken revocation list let a revoked agent in"
    );
}

#[test]
fn serve_refuses_to_run_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_otwatch"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to accept agents without TLS"),
        "{err}"
    );
    assert!(err.contains("otwatch cert init"), "{err}");
    let out = run(&["--listen", "0.0.0.0:0", "--insecure-loopback"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only works on a loopback address"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the check"
    );
}
