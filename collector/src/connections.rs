//! Admission of agent connections: the cap on how many are served at once,
//! and the accept loop for plaintext (loopback) serving.
//!
//! Promises:
//! - at most `max_connections` connections are open at once, TLS handshakes
//!   in progress included; a connection over the cap is closed at once,
//!   logged with the peer address and counted (`connections_refused`), and
//!   the agent's reconnect backoff tries again later. Together with the
//!   per-connection stream cap ([`MAX_STREAMS_PER_CONNECTION`]) and
//!   `limits.max_message_bytes` this bounds what agents can make the
//!   collector hold in memory;
//! - a slot is given back when its connection ends, however it ends; peers
//!   that vanish without closing (a gateway losing power, a cut WAN link)
//!   are found by HTTP/2 pings ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`])
//!   so they do not hold slots forever;
//! - no connection lives longer than [`MAX_CONNECTION_AGE`] (plus
//!   [`MAX_CONNECTION_AGE_GRACE`]): its agent then reconnects and resends
//!   what is unacked, and its certificate is checked again, so a revoked or
//!   expired one is cut off within that time;
//! - a failing `accept` (out of file descriptors) is logged and retried after
//!   a pause, never fatal.

use crate::CollectorMetrics;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Default of `collector.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Most concurrent gRPC streams on one connection. An agent uses one; a
/// reconnecting agent opens a new connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 2;
/// How often the collector pings an idle agent connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Age at which a connection is asked to close (HTTP/2 GOAWAY).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
/// How long after [`MAX_CONNECTION_AGE`] a connection is closed regardless.
/// Agent streams never end by themselves, so this is when they reconnect.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The connection slots of one server.
#[derive(Clone)]
pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    metrics: Arc<CollectorMetrics>,
}

/// One admitted connection's slot; given back when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<CollectorMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(max: usize, metrics: Arc<CollectorMetrics>) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            metrics,
        }
    }

    /// A slot for the connection from `remote`, or `None` (logged and
    /// counted) when all are taken.
    pub fn admit(&self, remote: SocketAddr) -> Option<Slot> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics
                    .connections_open
                    .fetch_add(1, Ordering::Relaxed);
                Some(Slot {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %remote,
                    max_connections = self.max,
                    "connection refused: every connection slot is taken (raise collector.max_connections if this many agents are expected)"
                );
                None
            }
        }
    }
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
/// service learns about the peer (`info`), and the slot it holds.
pub struct Conn<S, I> {
    io: S,
    info: I,
    _slot: Slot,
    close: Close,
}

/// When a [`Conn`] is closed by the collector.
enum Close {
    /// Only when its peer or the server ends it.
    Never,
    /// When this resolves.
    On(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// It has resolved: reads and writes fail.
    Fired,
}

impl<S, I> Conn<S, I> {
    pub fn new(io: S, info: I, slot: Slot) -> Self {
        Conn {
            io,
            info,
            _slot: slot,
            close: Close::Never,
        }
    }

    /// Closes the connection when `signal` resolves (its agent reconnects).
    pub fn closed_when(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.close = Close::On(Box::pin(signal));
        self
    }

    /// An error once the close signal has fired; registers for it otherwise.
    fn check_closed(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        // A finished future must not be polled again: it is dropped when it fires.
        if let Close::On(signal) = &mut self.close {
            if signal.as_mut().poll(cx).is_ready() {
                self.close = Close::Fired;
            }
        }
        if let Close::Fired = self.close {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed by the collector: its TLS files changed",
            ));
        }
        Ok(())
    }
}

impl<S, I> Connected for Conn<S, I>
where
    I: Clone + Send + Sync + 'static,
{
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin, I: Unpin> AsyncRead for Conn<S, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, I: Unpin> AsyncWrite for Conn<S, I> {
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

/// Plaintext connections on `listener`, within `slots`. Runs until the
/// returned stream is dropped.
pub fn plain_incoming(
    listener: TcpListener,
    slots: Slots,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn<TcpStream, TcpConnectInfo>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                pair = accept(&listener) => pair,
                _ = tx.closed() => return,
            };
            let Some(slot) = slots.admit(remote) else {
                continue;
            };
            let info = tcp.connect_info();
            if tx.send(Ok(Conn::new(tcp, info, slot))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
