//! Admission of agent connections: which connections are served, which are
//! closed to make room, and how the server's connections end at shutdown;
//! and the accept loop for plaintext (loopback) serving.
//!
//! A real agent opens a connection and, at once, one gRPC stream on it that
//! it keeps open. A connection without a stream serves nobody, so the rules
//! below let such connections go first, and a real agent gets in within a
//! bounded time however many connections others open and leave idle:
//!
//! - **Per address.** At most `max_connections_per_ip` connections from one
//!   IP address at once (TLS handshakes included). A newcomer from an address
//!   at its cap takes the place of that address's longest-idle connection
//!   without a stream (counted `connections_evicted`); when every one of them
//!   has a stream, the newcomer is closed at once (`connections_refused_per_ip`).
//!   So one host cannot take every slot, and a host behind the same NAT as a
//!   flood still gets in.
//! - **In all.** At most `max_connections` connections at once. A newcomer
//!   when all are taken takes the place of the longest-idle connection
//!   without a stream, from any address (`connections_evicted`); when every
//!   connection has a stream, the newcomer is closed at once
//!   (`connections_refused`) and its agent retries with backoff.
//! - **Idle.** A connection that has no gRPC stream open for
//!   [`IDLE_TIMEOUT`] (counted from its accept, TLS handshake included, or
//!   from the end of its last stream) is closed (`connections_idle_closed`).
//!   A TLS handshake has [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT)
//!   besides. Nothing waits for a free handshake slot: the accept loop never
//!   stops, and a handshake in progress is a connection without a stream like
//!   any other, so a flood of half-open connections (that send nothing) holds
//!   each slot for at most that long and yields it to newcomers before that.
//!
//! What a real agent can count on: its connection is admitted at once
//! unless every connection (or every one from its address) has a stream.
//! It is closed to make room only once it is the longest idle, that is once
//! every slot not held by a stream is taken by a connection accepted after
//! it: with `S` connections holding streams and others opening `R` new ones
//! a second, not before `(max_connections - S) / R` seconds (1024 slots at
//! 1,000/s: about a second, far longer than a handshake and a stream take).
//! A flood from one address only ever replaces its own connections. Once
//! its stream is open, only its own end, the keepalive, the connection age
//! or a shutdown closes it.
//!
//! Other promises:
//! - together with the per-connection stream cap
//!   ([`MAX_STREAMS_PER_CONNECTION`]) and the limits on messages this bounds
//!   what agents can make the collector hold in memory (see "Delivery
//!   guarantees" in the README);
//! - a slot is given back when its connection ends, however it ends; peers
//!   that vanish without closing (a gateway losing power, a cut WAN link) are
//!   found by HTTP/2 pings ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]) so
//!   they do not hold slots forever;
//! - no connection lives longer than [`MAX_CONNECTION_AGE`] (plus
//!   [`MAX_CONNECTION_AGE_GRACE`]): its agent then reconnects and resends what
//!   is unacked, and its certificate is checked again;
//! - at shutdown every open stream is ended at once with `UNAVAILABLE`
//!   ([`Admission::drain`]), and connections still open [`SHUTDOWN_GRACE`]
//!   later are closed ([`Admission::close_all`]), so the server stops within
//!   seconds even with agents streaming;
//! - every closing and refusal is counted in [`CollectorMetrics`] and logged
//!   with the peer address at `debug` level; a `warn` line sums them up at
//!   most every [`ADMISSION_REPORT_INTERVAL`], so a flood cannot flood the
//!   log;
//! - a failing `accept` (out of file descriptors) is logged and retried after
//!   a pause, never fatal.

use crate::{AgentIdentity, CollectorCounts, CollectorMetrics};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::server::Connected;

/// Default of `collector.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `collector.max_connections_per_ip`: room for the gateways of a
/// large site behind one NAT address, a sixteenth of the default total.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Most concurrent gRPC streams on one connection. An agent uses one; a
/// reconnecting agent opens a new connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 2;
/// How long a connection may go without an open gRPC stream before it is
/// closed: from its accept (TLS handshake included) or from the end of its
/// last stream. A real agent opens its stream right after connecting.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often connections are checked against [`IDLE_TIMEOUT`].
pub const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two `warn` summaries of closed and refused
/// connections.
pub const ADMISSION_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the collector pings an idle agent connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Age at which a connection is asked to close (HTTP/2 GOAWAY).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
/// How long after [`MAX_CONNECTION_AGE`] a connection is closed regardless.
/// Agent streams never end by themselves, so this is when they reconnect.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// How long after the shutdown signal connections may take to close by
/// themselves (their streams are ended at once) before they are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the collector closed a connection; the text ends its reads and writes
/// and the `debug` log line.
pub type CloseReason = &'static str;

const EVICTED: CloseReason = "every connection slot is taken: the longest-idle connection without a gRPC stream makes room for a newcomer";
const EVICTED_PER_IP: CloseReason = "its address holds collector.max_connections_per_ip connections: its longest-idle connection without a gRPC stream makes room for a newcomer from the same address";
const IDLE: CloseReason = "no gRPC stream within the idle timeout";
const SHUTTING_DOWN: CloseReason = "the collector is shutting down";

/// The connection slots of one server and the rules that fill them (see the
/// module documentation). Clone-cheap.
#[derive(Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    max_per_ip: usize,
    metrics: Arc<CollectorMetrics>,
    table: Mutex<Table>,
    /// Set at shutdown: every open stream ends.
    draining: watch::Sender<bool>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections without an open stream, longest idle first.
    idle: BTreeSet<(Instant, u64)>,
}

struct Entry {
    remote: SocketAddr,
    streams: usize,
    /// Since when the connection has had no stream; `None` while it has one.
    idle_since: Option<Instant>,
    close: watch::Sender<Option<CloseReason>>,
}

impl Table {
    /// Removes a connection from the table, closing it with `reason` if given.
    fn remove(&mut self, id: u64, reason: Option<CloseReason>, metrics: &CollectorMetrics) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        if let Some(since) = entry.idle_since {
            self.idle.remove(&(since, id));
        }
        let ip = entry.remote.ip().to_canonical();
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
        metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        if let Some(reason) = reason {
            entry.close.send_replace(Some(reason));
            tracing::debug!(remote = %entry.remote, reason, "connection closed by the collector");
        }
    }

    /// The longest-idle connection without a stream, from `ip` if given.
    fn longest_idle(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| ip.is_none_or(|ip| self.conns[id].remote.ip().to_canonical() == ip))
    }
}

impl Admission {
    /// Slots for at most `max` connections, `max_per_ip` from one address.
    /// Starts the task that closes idle connections (it ends with the last
    /// clone); must be called within a Tokio runtime.
    pub fn new(max: usize, max_per_ip: usize, metrics: Arc<CollectorMetrics>) -> Self {
        let shared = Arc::new(Shared {
            max,
            max_per_ip,
            metrics,
            table: Mutex::default(),
            draining: watch::channel(false).0,
        });
        tokio::spawn(idle_sweeper(Arc::downgrade(&shared)));
        Admission { shared }
    }

    /// A slot for the connection from `remote`, making room if need be; or
    /// `None` (counted, logged) when every connection it could replace has a
    /// stream open.
    pub fn admit(&self, remote: SocketAddr) -> Option<Slot> {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let ip = remote.ip().to_canonical();
        let mut table = shared.table.lock().unwrap();
        if table.per_ip.get(&ip).copied().unwrap_or(0) >= shared.max_per_ip {
            let Some(victim) = table.longest_idle(Some(ip)) else {
                metrics
                    .connections_refused_per_ip
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    %remote,
                    max_connections_per_ip = shared.max_per_ip,
                    "connection refused: its address already has collector.max_connections_per_ip connections, each with a gRPC stream"
                );
                return None;
            };
            table.remove(victim, Some(EVICTED_PER_IP), metrics);
            metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
        }
        if table.conns.len() >= shared.max {
            let Some(victim) = table.longest_idle(None) else {
                metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    %remote,
                    max_connections = shared.max,
                    "connection refused: every connection slot is taken by a connection with a gRPC stream (raise collector.max_connections if this many agents are expected)"
                );
                return None;
            };
            table.remove(victim, Some(EVICTED), metrics);
            metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = table.next_id;
        table.next_id += 1;
        let now = Instant::now();
        let (close, closed) = watch::channel(None);
        table.conns.insert(
            id,
            Entry {
                remote,
                streams: 0,
                idle_since: Some(now),
                close,
            },
        );
        table.idle.insert((now, id));
        *table.per_ip.entry(ip).or_default() += 1;
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            id,
            remote,
            shared: self.shared.clone(),
            closed,
        })
    }

    /// Ends every open stream (with `UNAVAILABLE`, so its agent reconnects
    /// later and resends what is unacked). Connections then close as their
    /// streams end.
    pub fn drain(&self) {
        self.shared.draining.send_replace(true);
    }

    /// Closes every connection at once: reads and writes fail.
    pub fn close_all(&self) {
        let shared = &self.shared;
        let mut table = shared.table.lock().unwrap();
        let ids: Vec<u64> = table.conns.keys().copied().collect();
        if !ids.is_empty() {
            tracing::info!(
                connections = ids.len(),
                "closing the connections still open after the shutdown grace"
            );
        }
        for id in ids {
            table.remove(id, Some(SHUTTING_DOWN), &shared.metrics);
        }
    }

    /// Connections in the table now.
    pub fn open(&self) -> usize {
        self.shared.table.lock().unwrap().conns.len()
    }
}

/// Closes connections without a stream for [`IDLE_TIMEOUT`], and sums up
/// closings and refusals in the log; ends when the admission is gone.
async fn idle_sweeper(shared: Weak<Shared>) {
    let mut reported = CollectorCounts::default();
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(IDLE_CHECK_INTERVAL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let metrics = &shared.metrics;
        {
            let mut table = shared.table.lock().unwrap();
            let now = Instant::now();
            while let Some(&(since, id)) = table.idle.first() {
                if now.duration_since(since) < IDLE_TIMEOUT {
                    break;
                }
                table.remove(id, Some(IDLE), metrics);
                metrics
                    .connections_idle_closed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if last_report.elapsed() >= ADMISSION_REPORT_INTERVAL {
            let now = metrics.snapshot();
            let delta = |f: fn(&CollectorCounts) -> u64| f(&now) - f(&reported);
            let evicted = delta(|c| c.connections_evicted);
            let idle = delta(|c| c.connections_idle_closed);
            let refused = delta(|c| c.connections_refused);
            let refused_per_ip = delta(|c| c.connections_refused_per_ip);
            let handshake_timeouts = delta(|c| c.tls_handshake_timeouts);
            let handshake_failures = delta(|c| c.tls_handshake_failures);
            if evicted + idle + refused + refused_per_ip + handshake_failures > 0 {
                tracing::warn!(
                    evicted,
                    idle_closed = idle,
                    refused,
                    refused_per_ip,
                    handshake_failures,
                    handshake_timeouts,
                    open = now.connections_open,
                    max_connections = shared.max,
                    max_connections_per_ip = shared.max_per_ip,
                    seconds = last_report.elapsed().as_secs(),
                    "connections closed or refused without serving an agent (idle without a gRPC stream, evicted to make room, over a cap, or failed in the TLS handshake); many of them mean a scan or a flood, or caps too low for the fleet"
                );
            }
            reported = now;
            last_report = Instant::now();
        }
    }
}

/// One admitted connection's slot: given back when dropped, and the signal
/// by which the collector closes the connection.
pub struct Slot {
    id: u64,
    remote: SocketAddr,
    shared: Arc<Shared>,
    closed: watch::Receiver<Option<CloseReason>>,
}

impl Slot {
    /// Resolves with the reason when the collector closes this connection.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            match closed.wait_for(Option::is_some).await {
                Ok(reason) => reason.unwrap_or(SHUTTING_DOWN),
                // The admission is gone: so is the server.
                Err(_) => SHUTTING_DOWN,
            }
        }
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// What the ingest service needs to report this connection's streams.
    pub fn streams(&self) -> StreamTracker {
        StreamTracker {
            id: self.id,
            shared: Arc::downgrade(&self.shared),
            draining: self.shared.draining.subscribe(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.shared.table.lock().unwrap();
        table.remove(self.id, None, &self.shared.metrics);
    }
}

/// Tells the admission when streams open and end on one connection, and the
/// streams when the server shuts down. Carried to the service in [`PeerInfo`].
#[derive(Clone, Debug)]
pub struct StreamTracker {
    id: u64,
    shared: Weak<Shared>,
    draining: watch::Receiver<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max", &self.max)
            .field("max_per_ip", &self.max_per_ip)
            .finish_non_exhaustive()
    }
}

impl StreamTracker {
    /// Marks a stream open until the returned guard is dropped; while one is
    /// open the connection is neither idle nor evictable.
    pub fn stream_opened(&self) -> StreamGuard {
        if let Some(shared) = self.shared.upgrade() {
            let mut table = shared.table.lock().unwrap();
            let table = &mut *table;
            if let Some(entry) = table.conns.get_mut(&self.id) {
                if let Some(since) = entry.idle_since.take() {
                    table.idle.remove(&(since, self.id));
                }
                entry.streams += 1;
            }
        }
        StreamGuard {
            tracker: self.clone(),
        }
    }

    /// Resolves when the server shuts down (or is gone): the stream must end.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.clone();
        async move {
            let _ = draining.wait_for(|&d| d).await;
        }
    }
}

/// One open stream, as the admission counts it.
pub struct StreamGuard {
    tracker: StreamTracker,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let Some(shared) = self.tracker.shared.upgrade() else {
            return;
        };
        let mut table = shared.table.lock().unwrap();
        let table = &mut *table;
        let id = self.tracker.id;
        if let Some(entry) = table.conns.get_mut(&id) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                let now = Instant::now();
                entry.idle_since = Some(now);
                table.idle.insert((now, id));
            }
        }
    }
}

/// What the ingest service learns about a connection: its address, for TLS
/// the identity its verified certificate names (or why it names none), and
/// the tracker of its streams.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// `None` on plaintext connections, where agents name themselves with
    /// headers.
    pub identity: Option<Result<AgentIdentity, String>>,
    /// When the verified client certificate expires (its `notAfter`, ns
    /// since the epoch); `None` on plaintext connections.
    pub cert_not_after_ns: Option<i64>,
    pub streams: StreamTracker,
}

/// Waits for the next TCP connection, riding out failing accepts.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An admitted connection as tonic serves it: the transport `io`, what the
/// service learns about the peer, and the slot it holds. Reads and writes
/// fail once the collector closes it.
pub struct Conn<S> {
    io: S,
    info: PeerInfo,
    _slot: Slot,
    close: Close,
}

/// Whether the collector has closed a [`Conn`].
enum Close {
    /// Not yet: closed when this resolves.
    On(Pin<Box<dyn Future<Output = CloseReason> + Send>>),
    /// Closed, for this reason: reads and writes fail.
    Fired(CloseReason),
}

impl<S> Conn<S> {
    /// A connection closed when `slot` is taken back (idle, evicted, shutdown).
    pub fn new(io: S, info: PeerInfo, slot: Slot) -> Self {
        let close = Close::On(Box::pin(slot.closed()));
        Conn {
            io,
            info,
            _slot: slot,
            close,
        }
    }

    /// Closes the connection also when `signal` resolves (its agent
    /// reconnects).
    pub fn closed_when(
        mut self,
        signal: impl Future<Output = CloseReason> + Send + 'static,
    ) -> Self {
        if let Close::On(slot_closed) = self.close {
            self.close = Close::On(Box::pin(async move {
                tokio::select! {
                    reason = slot_closed => reason,
                    reason = signal => reason,
                }
            }));
        }
        self
    }

    /// An error once the collector has closed the connection; registers for
    /// the close signal otherwise.
    fn check_closed(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        // A finished future must not be polled again: it is dropped when it fires.
        if let Close::On(signal) = &mut self.close {
            if let Poll::Ready(reason) = signal.as_mut().poll(cx) {
                self.close = Close::Fired(reason);
            }
        }
        if let Close::Fired(reason) = self.close {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("closed by the collector: {reason}"),
            ));
        }
        Ok(())
    }
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Plaintext connections on `listener`, admitted by `admission`. Runs until
/// the returned stream is dropped.
pub fn plain_incoming(
    listener: TcpListener,
    admission: Admission,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn<TcpStream>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                pair = accept(&listener) => pair,
                _ = tx.closed() => return,
            };
            let Some(slot) = admission.admit(remote) else {
                continue;
            };
            let info = PeerInfo {
                remote,
                identity: None,
                cert_not_after_ns: None,
                streams: slot.streams(),
            };
            if tx.send(Ok(Conn::new(tcp, info, slot))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, ip], port))
    }

    fn counts(admission: &Admission) -> CollectorCounts {
        admission.shared.metrics.snapshot()
    }

    #[tokio::test]
    async fn a_newcomer_from_an_address_at_its_cap_replaces_that_address_s_idle_connection() {
        let admission = Admission::new(10, 2, Arc::default());
        let a1 = admission.admit(addr(1, 1)).unwrap();
        let _a1_stream = a1.streams().stream_opened();
        let a2 = admission.admit(addr(1, 2)).unwrap();
        let other = admission.admit(addr(2, 1)).unwrap();

        // 10.0.0.1 is at its cap: its idle connection (a2) gives way, not
        // the older one of 10.0.0.2, and not a1 that has a stream.
        let a3 = admission.admit(addr(1, 3)).unwrap();
        assert_eq!(a2.closed().await, EVICTED_PER_IP);
        assert_eq!(counts(&admission).connections_evicted, 1);
        assert_eq!(admission.open(), 3);

        // Now both of its connections have streams: refused.
        let _a3_stream = a3.streams().stream_opened();
        assert!(admission.admit(addr(1, 4)).is_none());
        assert_eq!(counts(&admission).connections_refused_per_ip, 1);
        drop(other);
        assert_eq!(admission.open(), 2);
    }

    #[tokio::test]
    async fn when_all_slots_are_taken_the_longest_idle_connection_gives_way() {
        let admission = Admission::new(3, 3, Arc::default());
        let first = admission.admit(addr(1, 1)).unwrap();
        let second = admission.admit(addr(2, 1)).unwrap();
        let third = admission.admit(addr(3, 1)).unwrap();
        // The oldest has a stream; the second is the longest idle.
        let stream = first.streams().stream_opened();
        let fourth = admission.admit(addr(4, 1)).unwrap();
        assert_eq!(second.closed().await, EVICTED);

        // When its stream ends, the first is idle again, from now: the third
        // and the fourth have been idle longer and go first.
        drop(stream);
        let _fifth = admission.admit(addr(5, 1)).unwrap();
        assert_eq!(third.closed().await, EVICTED);
        let _sixth = admission.admit(addr(6, 1)).unwrap();
        assert_eq!(fourth.closed().await, EVICTED);
        let _seventh = admission.admit(addr(7, 1)).unwrap();
        assert_eq!(first.closed().await, EVICTED);
        assert_eq!(counts(&admission).connections_evicted, 4);
        assert_eq!(counts(&admission).connections_open, 3);
    }

    #[tokio::test]
    async fn when_every_connection_has_a_stream_the_newcomer_is_refused() {
        let admission = Admission::new(2, 2, Arc::default());
        let a = admission.admit(addr(1, 1)).unwrap();
        let b = admission.admit(addr(2, 1)).unwrap();
        let _streams = (a.streams().stream_opened(), b.streams().stream_opened());
        assert!(admission.admit(addr(3, 1)).is_none());
        assert_eq!(counts(&admission).connections_refused, 1);
        assert_eq!(counts(&admission).connections_evicted, 0);
    }

    /// Runs in real time: about twice the idle timeout.
    #[tokio::test]
    async fn a_connection_without_a_stream_is_closed_after_the_idle_timeout() {
        let admission = Admission::new(10, 10, Arc::default());
        let idle = admission.admit(addr(1, 1)).unwrap();
        let busy = admission.admit(addr(2, 1)).unwrap();
        let stream = busy.streams().stream_opened();
        assert_eq!(idle.closed().await, IDLE);
        assert_eq!(counts(&admission).connections_idle_closed, 1);
        // As old, but with a stream open all along.
        assert_eq!(admission.open(), 1);

        // Its stream ended, the other connection is idle from then on.
        drop(stream);
        assert_eq!(busy.closed().await, IDLE);
        assert_eq!(counts(&admission).connections_idle_closed, 2);
    }

    #[tokio::test]
    async fn shutdown_ends_streams_then_closes_connections() {
        let admission = Admission::new(10, 10, Arc::default());
        let slot = admission.admit(addr(1, 1)).unwrap();
        let streams = slot.streams();
        let _stream = streams.stream_opened();
        admission.drain();
        streams.shutting_down().await;
        admission.close_all();
        assert_eq!(slot.closed().await, SHUTTING_DOWN);
        assert_eq!(admission.open(), 0);
    }
}
