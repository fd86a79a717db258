//! The fleet status over real gRPC streams: what an agent announces when it
//! connects (version), reports with its batches (queue backlog) and what its
//! connection tells (certificate expiry, address), and that it shows as
//! disconnected once its stream ends.

mod common;

use common::{batch, channel, open_as_version, open_log, Pki, Server, AGENT, SITE};
use otwatch_collector::{AgentStatus, CollectorConfig, CollectorMetrics};
use std::time::Duration;

/// Waits until the status of `SITE`/`AGENT` satisfies `done` (the stream's
/// end reaches the collector asynchronously).
async fn status_until(
    metrics: &CollectorMetrics,
    done: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = metrics.agents.get(SITE, AGENT);
        if let Some(status) = status.filter(|s| done(s)) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status not reached; now {:?}",
            metrics.agents.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_agent_s_version_backlog_and_connection_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_log(dir.path()), CollectorConfig::default()).await;
    assert!(server.metrics.agents.snapshot().is_empty());

    let before = common::now_ns();
    let mut stream = open_as_version(channel(&server, None, None).await.unwrap(), Some("1.4.2"))
        .await
        .unwrap();
    let status = server.metrics.agents.get(SITE, AGENT).unwrap();
    assert!(status.connected);
    assert_eq!(status.streams_open, 1);
    assert_eq!(status.version.as_deref(), Some("1.4.2"));
    let since = status.connected_since_ns.unwrap();
    assert!(since >= before && since <= common::now_ns(), "{since}");
    assert_eq!((status.last_batch_ns, status.queue_backlog), (None, None));
    // Plaintext (loopback trials): no certificate.
    assert_eq!(status.cert_not_after_ns, None);
    let peer: std::net::SocketAddr = status.peer.as_deref().unwrap().parse().unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");

    let mut first = batch(1..=3);
    first.queue_backlog = 42;
    let sent = common::now_ns();
    assert_eq!(stream.send(first).await.unwrap().durable_seq, 3);
    let status = server.metrics.agents.get(SITE, AGENT).unwrap();
    assert_eq!(status.queue_backlog, Some(42));
    let last_batch = status.last_batch_ns.unwrap();
    assert!(last_batch >= sent && last_batch <= common::now_ns());
    assert_eq!(status.connected_since_ns, Some(since));

    // Each batch replaces the backlog; 0 from agents that predate it.
    assert_eq!(stream.send(batch(4..=4)).await.unwrap().durable_seq, 4);
    assert_eq!(
        server
            .metrics
            .agents
            .get(SITE, AGENT)
            .unwrap()
            .queue_backlog,
        Some(0)
    );

    // The agent goes away: disconnected, with what was last known.
    drop(stream);
    let status = status_until(&server.metrics, |s| !s.connected).await;
    assert_eq!(status.streams_open, 0);
    assert_eq!(status.connected_since_ns, None);
    assert_eq!(status.version.as_deref(), Some("1.4.2"));
    assert_eq!(status.queue_backlog, Some(0));
    assert!(status.last_batch_ns.unwrap() >= last_batch);
    assert_eq!(server.metrics.agents.snapshot(), vec![status]);

    // It comes back with a version that cannot be shown: kept as none,
    // and the stream is served all the same.
    let long = "9".repeat(65);
    let mut stream = open_as_version(channel(&server, None, None).await.unwrap(), Some(&long))
        .await
        .unwrap();
    assert_eq!(stream.send(batch(5..=5)).await.unwrap().durable_seq, 5);
    let status = server.metrics.agents.get(SITE, AGENT).unwrap();
    assert!(status.connected);
    assert_eq!(status.version, None);
    assert!(status.connected_since_ns.unwrap() > since);
}

#[tokio::test]
async fn a_tls_agent_s_certificate_expiry_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let config = CollectorConfig {
        tls: Some(pki.server()),
        ..CollectorConfig::default()
    };
    let server = Server::start(open_log(&dir.path().join("log")), config).await;
    let issued = common::now_ns();
    let mut stream = open_as_version(
        channel(&server, Some(&pki), None).await.unwrap(),
        Some("0.1.0"),
    )
    .await
    .unwrap();
    let mut one = batch(1..=1);
    one.queue_backlog = 7;
    assert_eq!(stream.send(one).await.unwrap().durable_seq, 1);

    let status = server.metrics.agents.get(SITE, AGENT).unwrap();
    assert!(status.connected);
    assert_eq!(status.version.as_deref(), Some("0.1.0"));
    assert_eq!(status.queue_backlog, Some(7));
    // `otwatch cert issue` makes agent certificates valid for LEAF_VALIDITY
    // from now (give or take a day of backdating and rounding).
    let expected = issued + otwatch_pki::LEAF_VALIDITY.as_nanos() as i64;
    let day = 86_400 * 1_000_000_000i64;
    let not_after = status.cert_not_after_ns.unwrap();
    assert!(
        (expected - day..=expected + day).contains(&not_after),
        "notAfter {not_after}, expected about {expected}"
    );

    drop(stream);
    let status = status_until(&server.metrics, |s| !s.connected).await;
    // The certificate of the last stream is still shown.
    assert_eq!(status.cert_not_after_ns, Some(not_after));
}
