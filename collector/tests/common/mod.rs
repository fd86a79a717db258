//! What the collector's integration tests share: a real collector on a
//! loopback port (plaintext, or mutual TLS with certificates made by
//! `otwatch-pki`), agents that talk gRPC to it, and a client that sends
//! batches as raw protobuf bytes.
#![allow(dead_code)] // each test binary uses its own subset

use otwatch_collector::tls::ServerTlsConfig;
use otwatch_collector::{Collector, CollectorConfig, CollectorMetrics};
use otwatch_eventlog::{LocalLog, LocalLogConfig};
use otwatch_pki::{self as cert, Subject, LEAF_VALIDITY};
use otwatch_proto::identity::{AGENT_HEADER, AGENT_VERSION_HEADER, SITE_HEADER};
use otwatch_proto::v1::ingest_client::IngestClient;
use otwatch_proto::{Ack, ControllerEvent, EventBatch, EventKind};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::codec::{Codec, CompressionEncoding, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Streaming;

pub const SITE: &str = "plant-a";
pub const AGENT: &str = "gw-1";

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A batch of CYCLE events with the given sequence numbers, stamped now.
pub fn batch(seqs: impl IntoIterator<Item = u64>) -> EventBatch {
    let now = now_ns();
    EventBatch {
        site: SITE.into(),
        agent: AGENT.into(),
        events: seqs
            .into_iter()
            .map(|seq| ControllerEvent {
                seq,
                ts_ns: now,
                asset: "line1/press-01".into(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some(1000.0),
                ..Default::default()
            })
            .collect(),
        queue_backlog: 0,
    }
}

/// A CA, the collector's certificate for 127.0.0.1, and the certificate of
/// agent `SITE`/`AGENT`, as `otwatch cert` makes them.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        cert::init(dir).unwrap();
        cert::issue(
            dir,
            &Subject::Collector {
                hosts: vec!["127.0.0.1".into()],
            },
            LEAF_VALIDITY,
        )
        .unwrap();
        cert::issue(
            dir,
            &Subject::Agent {
                site: SITE.into(),
                agent: AGENT.into(),
            },
            LEAF_VALIDITY,
        )
        .unwrap();
        Pki { dir: dir.into() }
    }

    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig {
            cert: self.dir.join(cert::COLLECTOR_CERT),
            key: self.dir.join(cert::COLLECTOR_KEY),
            client_ca: self.dir.join(cert::CA_CERT),
            crl: None,
        }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    /// The agent's TLS settings for tonic.
    pub fn client(&self) -> ClientTlsConfig {
        let (c, k) = cert::agent_files(SITE, AGENT);
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read(cert::CA_CERT)))
            .identity(Identity::from_pem(self.read(&c), self.read(&k)))
    }

    /// The agent's TLS settings for a bare rustls client (connections that
    /// complete the handshake and then say nothing).
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (c, k) = cert::agent_files(SITE, AGENT);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&self.read(cert::CA_CERT)).unwrap())
            .unwrap();
        let certs = vec![CertificateDer::from_pem_slice(&self.read(&c)).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(&self.read(&k)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// A collector serving on a loopback port, as `otwatch serve` runs it.
pub struct Server {
    pub addr: SocketAddr,
    pub log: Arc<LocalLog>,
    pub metrics: Arc<CollectorMetrics>,
    pub tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Serves `log` with `config` (TLS when `config.tls` is set).
    pub async fn start(log: Arc<LocalLog>, config: CollectorConfig) -> Server {
        let acceptor = config.tls.as_ref().map(|t| t.acceptor().unwrap());
        let tls = acceptor.is_some();
        let collector = Collector::new(log.clone(), config).unwrap();
        let metrics = collector.metrics();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel();
        let served = tokio::spawn(collector.serve(listener, acceptor, async move {
            let _ = signal.await;
        }));
        Server {
            addr,
            log,
            metrics,
            tls,
            shutdown: Some(shutdown),
            served,
        }
    }

    /// Fires the shutdown signal.
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn open_log(dir: &Path) -> Arc<LocalLog> {
    Arc::new(LocalLog::open(dir, LocalLogConfig::default()).unwrap())
}

/// Where a collector listens, and whether it speaks TLS: one of [`Server`]
/// or one started by hand (the measurements).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl From<&Server> for Target {
    fn from(server: &Server) -> Target {
        Target {
            addr: server.addr,
            tls: server.tls,
        }
    }
}

/// A channel to a collector from source address `from` (127.0.0.1 if
/// `None`), over TLS with the agent's certificate when it speaks TLS.
pub async fn channel(
    to: impl Into<Target>,
    pki: Option<&Pki>,
    from: Option<IpAddr>,
) -> Result<Channel, String> {
    let to = to.into();
    let scheme = if to.tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", to.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .local_address(from);
    if to.tls {
        endpoint = endpoint
            .tls_config(pki.expect("a TLS collector needs the PKI").client())
            .unwrap();
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// One ingest stream: batches go in, acks come back.
pub struct Stream {
    pub tx: mpsc::Sender<EventBatch>,
    pub acks: Streaming<Ack>,
    /// The greeting: the highest sequence number the collector holds.
    pub held: u64,
}

/// Opens an ingest stream as `SITE`/`AGENT` (headers, which a TLS collector
/// ignores) and waits for the greeting ack.
pub async fn open(channel: Channel) -> Result<Stream, String> {
    open_as_version(channel, None).await
}

/// [`open`], announcing agent version `version` (the raw header value)
/// when given.
pub async fn open_as_version(channel: Channel, version: Option<&str>) -> Result<Stream, String> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(version) = version {
        request
            .metadata_mut()
            .insert(AGENT_VERSION_HEADER, version.parse().unwrap());
    }
    request
        .metadata_mut()
        .insert(SITE_HEADER, SITE.parse().unwrap());
    request
        .metadata_mut()
        .insert(AGENT_HEADER, AGENT.parse().unwrap());
    let mut acks = client
        .stream(request)
        .await
        .map_err(|e| format!("open: {e}"))?
        .into_inner();
    match acks.message().await {
        Ok(Some(ack)) => Ok(Stream {
            tx,
            acks,
            held: ack.durable_seq,
        }),
        Ok(None) => Err("closed before the greeting".into()),
        Err(e) => Err(format!("greeting: {e}")),
    }
}

/// Connects and opens a stream, retrying (as an agent's backoff does) until
/// it works, for at most `deadline`; returns the stream and the attempts
/// made.
pub async fn open_within(
    to: impl Into<Target>,
    pki: Option<&Pki>,
    deadline: Duration,
) -> Result<(Stream, u32), String> {
    let to = to.into();
    let mut attempts = 0;
    let mut last = String::new();
    let attempt = async {
        loop {
            attempts += 1;
            match channel(to, pki, None).await {
                Ok(channel) => match open(channel).await {
                    Ok(stream) => return stream,
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(stream) => Ok((stream, attempts)),
        Err(_) => Err(format!(
            "no stream within {deadline:?} ({attempts} attempts); last failure: {last}"
        )),
    }
}

impl Stream {
    /// Sends a batch and returns its ack or the status that ended the stream.
    pub async fn send(&mut self, batch: EventBatch) -> Result<Ack, tonic::Status> {
        self.tx.send(batch).await.unwrap();
        self.next().await
    }

    /// The next ack, or the status that ended the stream.
    pub async fn next(&mut self) -> Result<Ack, tonic::Status> {
        match self.acks.message().await {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => Err(tonic::Status::ok("the stream ended without a status")),
            Err(status) => Err(status),
        }
    }
}

/// Sends protobuf bytes as they are (a client that does not go through the
/// generated types, as an attacker would not).
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use tonic_prost::prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Ack;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<Ack>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Opens a stream as `SITE`/`AGENT` on `channel`, sends `message` (an
/// encoded `EventBatch`, gzip-compressed on the wire when `gzip`) and
/// returns what the collector answers to it.
pub async fn send_raw(
    channel: Channel,
    message: Vec<u8>,
    gzip: bool,
) -> Result<Ack, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter(vec![message]).chain(
        // Keep the stream open: the answer comes before the agent would
        // close it.
        tokio_stream::pending(),
    ));
    request
        .metadata_mut()
        .insert(SITE_HEADER, SITE.parse().unwrap());
    request
        .metadata_mut()
        .insert(AGENT_HEADER, AGENT.parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/otwatch.v1.Ingest/Stream");
    let mut acks = grpc.streaming(request, path, RawCodec).await?.into_inner();
    let greeting = acks.message().await?;
    assert!(greeting.is_some(), "no greeting");
    match acks.message().await? {
        Some(ack) => Ok(ack),
        None => Err(tonic::Status::ok("the stream ended without a status")),
    }
}

use tokio_stream::StreamExt as _;

/// Every (site/agent, seq) in the log's events topic.
pub async fn stored(log: &LocalLog) -> Vec<(String, u64)> {
    otwatch_testkit::log_seqs(log).await
}
