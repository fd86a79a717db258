//! A collector told to shut down stops within seconds while agents are
//! connected and streaming: their streams end with `UNAVAILABLE`, and each
//! agent resends only what is unacked to the next collector.

mod common;

use common::{batch, channel, open, open_log, stored, Pki, Server};
use otwatch_collector::CollectorConfig;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

/// Generous: the collector ends streams at once and closes what is left
/// after `connections::SHUTDOWN_GRACE` (5 s).
const DEADLINE: Duration = Duration::from_secs(30);

async fn streaming_agents_do_not_hold_up_shutdown(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls.then(|| Pki::new(&dir.path().join("pki")));
    let config = CollectorConfig {
        tls: pki.as_ref().map(Pki::server),
        ..CollectorConfig::default()
    };
    let log = open_log(&dir.path().join("log"));
    let mut server = Server::start(log.clone(), config.clone()).await;

    // One agent mid-stream (acked up to 5), one that only said hello.
    let mut agent = open(channel(&server, pki.as_ref(), None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(agent.send(batch(1..=5)).await.unwrap().durable_seq, 5);
    let mut quiet = open(channel(&server, pki.as_ref(), None).await.unwrap())
        .await
        .unwrap();

    server.shut_down();
    let served = tokio::time::timeout(DEADLINE, &mut server.served)
        .await
        .expect("serve did not return after its shutdown signal while agents were connected");
    served.unwrap().unwrap();

    for stream in [&mut agent, &mut quiet] {
        let status = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("the agent's stream did not end")
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("shutting down"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        server
            .metrics
            .streams_ended_by_shutdown
            .load(Ordering::Relaxed),
        2
    );

    // The next collector on the same log: the agent learns what is held and
    // sends only the rest.
    let next = Server::start(log.clone(), config).await;
    let mut agent = open(channel(&next, pki.as_ref(), None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(agent.held, 5);
    assert_eq!(agent.send(batch(6..=8)).await.unwrap().durable_seq, 8);
    let seqs: Vec<u64> = stored(&log).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_ends_plaintext_agent_streams() {
    streaming_agents_do_not_hold_up_shutdown(false).await;
}

#[tokio::test]
async fn shutdown_ends_tls_agent_streams() {
    streaming_agents_do_not_hold_up_shutdown(true).await;
}

/// An agent whose process hangs (its runtime blocked) cannot answer the end
/// of its stream: its connection is closed after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_connection_of_an_agent_that_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(open_log(dir.path()), CollectorConfig::default()).await;
    let target = common::Target::from(&server);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let hung = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut agent = open(channel(target, None, None).await.unwrap())
                .await
                .unwrap();
            assert_eq!(agent.send(batch(1..=3)).await.unwrap().durable_seq, 3);
            ready_tx.send(()).unwrap();
            // The agent's only thread blocks: nothing it receives is read,
            // nothing is answered.
            release_rx.recv().unwrap();
            agent.next().await.unwrap_err()
        })
    });
    ready_rx.recv().unwrap();

    server.shut_down();
    let served = tokio::time::timeout(DEADLINE, &mut server.served)
        .await
        .expect("serve did not return after its shutdown signal while an agent hung");
    served.unwrap().unwrap();

    release_tx.send(()).unwrap();
    let status = tokio::task::spawn_blocking(move || hung.join().unwrap())
        .await
        .unwrap();
    // The stream ended: by the collector's status if it got through before
    // the connection was closed, else by the closed connection.
    assert_ne!(status.code(), Code::Ok, "{status:?}");
}
