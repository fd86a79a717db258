//! Admission under floods, over real mutual TLS on loopback: connections
//! that open no gRPC stream give way to real agents, a flood of half-open
//! connections does not keep a real agent out, and one address cannot take
//! every slot. Floods come from other loopback addresses (127.0.0.2 and up)
//! than the real agent (127.0.0.1).

mod common;

use common::{batch, channel, open, open_log, open_within, Pki, Server};
use otwatch_collector::CollectorConfig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// How long a real agent may take to get its stream while a flood goes on:
/// generous, the point is that it gets in at all.
const DEADLINE: Duration = Duration::from_secs(30);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// A connection from `from` that completes the TLS handshake with the
/// agent's certificate and then says nothing; `None` if the collector
/// closed it first.
async fn idle_tls(
    pki: &Pki,
    from: IpAddr,
    to: SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(pki.rustls_client());
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let mut tls = connector.connect(name, tcp).await.ok()?;
    // A TLS 1.3 server may refuse a client certificate, or close the
    // connection, only after the client's side of the handshake is done: a
    // moment's read tells (what comes is the server's HTTP/2 settings).
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(50), tls.read(&mut buf)).await {
        Err(_) | Ok(Ok(1..)) => Some(tls),
        Ok(Ok(0) | Err(_)) => None,
    }
}

/// About 500 new connections a second to `addr` from 40 addresses, each
/// sending nothing and kept open for 60 s unless the collector closes it:
/// soon more than `max_connections` (1024) at once, and more than the
/// collector could ever give a handshake slot of its own. Runs until `stop`;
/// returns how many connections were made.
async fn half_open_flood(addr: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let opened = Arc::new(AtomicU64::new(0));
    // Bounds the file descriptors the flood holds.
    let open_at_once = Arc::new(tokio::sync::Semaphore::new(4000));
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let Ok(permit) = open_at_once.clone().try_acquire_owned() else {
            continue;
        };
        let (from, opened) = (loopback(10 + (i % 40) as u8), opened.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connect = tokio::time::timeout(Duration::from_secs(5), tcp_from(from, addr));
            let Ok(Ok(mut tcp)) = connect.await else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 16];
            let held_until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < held_until && !stop.load(Ordering::Relaxed) {
                let read = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return; // closed by the collector
                }
            }
        });
    }
    opened.load(Ordering::Relaxed)
}

async fn tls_server(dir: &std::path::Path, config: CollectorConfig) -> (Server, Pki) {
    let pki = Pki::new(&dir.join("pki"));
    let config = CollectorConfig {
        tls: Some(pki.server()),
        ..config
    };
    (Server::start(open_log(&dir.join("log")), config).await, pki)
}

#[tokio::test]
async fn a_connection_without_a_stream_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pki) = tls_server(dir.path(), CollectorConfig::default()).await;
    let mut idle = idle_tls(&pki, loopback(2), server.addr).await.unwrap();

    // The collector closes it: the read ends (EOF or error) before the deadline.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection without a gRPC stream was still open after {DEADLINE:?}"
    );
    assert_eq!(
        server
            .metrics
            .connections_idle_closed
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_give_way_to_a_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = CollectorConfig {
        max_connections: 32,
        ..CollectorConfig::default()
    };
    let (server, pki) = tls_server(dir.path(), config).await;

    // More connections than slots, all through the handshake, all silent.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.extend(idle_tls(&pki, loopback(2), server.addr).await);
    }

    let (mut agent, attempts) = open_within(&server, Some(&pki), DEADLINE).await.unwrap();
    println!("the agent got its stream after {attempts} attempt(s)");
    assert!(server.metrics.connections_evicted.load(Ordering::Relaxed) >= 9);

    // With its stream open the agent is no longer one to make room: more
    // silent connections take each other's places, not its.
    for _ in 0..40 {
        flood.extend(idle_tls(&pki, loopback(3), server.addr).await);
    }
    assert_eq!(agent.send(batch(1..=3)).await.unwrap().durable_seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_does_not_keep_a_real_agent_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pki) = tls_server(dir.path(), CollectorConfig::default()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn(half_open_flood(server.addr, stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;

    let started = Instant::now();
    let result = open_within(&server, Some(&pki), DEADLINE).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let opened = flood.await.unwrap();
    let (mut agent, attempts) = result.unwrap();
    println!(
        "the agent got its stream after {waited:?} ({attempts} attempt(s)) while {opened} half-open connections were made"
    );
    // Not turned away even once: its connection took the place of a
    // half-open one, and had far longer than its handshake takes before
    // 1024 newer ones could take its place in turn.
    assert_eq!(attempts, 1, "the agent was turned away during the flood");
    assert!(server.metrics.connections_evicted.load(Ordering::Relaxed) > 0);
    assert_eq!(agent.send(batch(1..=3)).await.unwrap().durable_seq, 3);
    // The fleet status knows the agent's certificate, and nothing of the
    // half-open connections, which named no agent.
    let fleet = server.metrics.agents.snapshot();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert!(fleet[0].connected);
    assert!(fleet[0].cert_not_after_ns.unwrap() > common::now_ns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = CollectorConfig {
        max_connections: 8,
        max_connections_per_ip: 4,
        ..CollectorConfig::default()
    };
    let (server, pki) = tls_server(dir.path(), config).await;

    // One host opens streams on as many connections as it can.
    let mut host = Vec::new();
    for _ in 0..8 {
        if let Ok(channel) = channel(&server, Some(&pki), Some(loopback(2))).await {
            if let Ok(stream) = open(channel).await {
                host.push(stream);
            }
        }
    }
    assert_eq!(host.len(), 4, "one address got {} streams", host.len());
    assert_eq!(
        server
            .metrics
            .connections_refused_per_ip
            .load(Ordering::Relaxed),
        4
    );

    // Another agent still gets in.
    let (mut agent, _) = open_within(&server, Some(&pki), DEADLINE).await.unwrap();
    assert!(agent.send(batch(1..=3)).await.is_ok());
}

/// Not a test: measures how long a real agent waits for its stream while a
/// flood goes on against a collector started by hand (`otwatch serve` with
/// TLS and the certificates of `common::Pki` in `OTWATCH_FLOOD_PKI`, the
/// agent `plant-a`/`gw-1`) at `OTWATCH_FLOOD_ADDR`. `OTWATCH_FLOOD_KIND`:
/// `half-open` (500 connections a second from 40 addresses, sending
/// nothing, held 60 s) or `idle-tls` (`OTWATCH_FLOOD_COUNT`, 1100,
/// connections through the TLS handshake from 20 addresses, then silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a collector started by hand"]
async fn flood_a_running_collector() {
    let env = |key: &str| std::env::var(key).ok();
    let addr: SocketAddr = env("OTWATCH_FLOOD_ADDR").unwrap().parse().unwrap();
    let pki = Pki {
        dir: env("OTWATCH_FLOOD_PKI").unwrap().into(),
    };
    let kind = env("OTWATCH_FLOOD_KIND").unwrap_or("half-open".into());
    let count: usize = env("OTWATCH_FLOOD_COUNT").map_or(1100, |c| c.parse().unwrap());
    let target = common::Target { addr, tls: true };
    let stop = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    let flood = match kind.as_str() {
        "half-open" => Some(tokio::spawn(half_open_flood(addr, stop.clone()))),
        "idle-tls" => {
            for i in 0..count {
                idle.extend(idle_tls(&pki, loopback(10 + (i % 20) as u8), addr).await);
            }
            println!("{} of {count} silent TLS connections open", idle.len());
            None
        }
        other => panic!("unknown OTWATCH_FLOOD_KIND {other}"),
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = Instant::now();
    let result = open_within(target, Some(&pki), Duration::from_secs(300)).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(flood) = flood {
        println!("{} half-open connections made", flood.await.unwrap());
    }
    match result {
        Ok((_, attempts)) => {
            println!("{kind}: the agent got its stream after {waited:?} ({attempts} attempt(s))")
        }
        Err(e) => println!("{kind}: {e}"),
    }
}
