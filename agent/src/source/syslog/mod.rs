//! The `syslog` source: receives syslog messages from PLCs, HMIs, switches
//! and firewalls over UDP and TCP ([`message`]: RFC 3164 and 5424,
//! octet-counted and newline-framed) and turns each into one event.
//!
//! # Events
//!
//! Every message becomes one event, `ts` the agent's clock when it arrived
//! (or, with `timestamps = "message"`, an RFC 5424 message's own):
//!
//! - **ACCESS** `login` / `login_failed`, or **CHANGE** `config`, when one
//!   of the `parsers` recognises a login or a configuration change
//!   ([`recognize`]), with what it found as attributes (`user`, `peer`,
//!   `method`, `path`, `action`, `command`);
//! - otherwise **LOG**, `name` = the APP-NAME or TAG (`syslog` when none).
//!
//! `text` is the message (MSG), `asset` the sender's entry in `assets`,
//! else the message's hostname, else the sender's address. Attributes:
//! `sender` (address the message came from), `facility`, `severity`,
//! `host`, `app`, `procid`, `msgid`, `sd` (structured data as sent),
//! `truncated` (the full length of a message cut at `max_message_bytes`).
//! Text and attributes are cut to the limits (`max_text_len`,
//! `max_attr_len`) rather than refused: a log line is worth keeping.
//!
//! # Bounds
//!
//! - A message is at most `max_message_bytes`; the rest of a longer one is
//!   skipped (counted: `otwatch_agent_messages_truncated_total`).
//! - Each sender address may send `max_messages_per_second` (a token bucket
//!   of as many): beyond that its messages are dropped before they are
//!   parsed, counted (`otwatch_agent_messages_rate_limited_total`), and
//!   logged when the sender goes over and when it comes back under, with the
//!   number dropped. Other senders are not affected.
//! - At most `max_connections` TCP connections; others are closed at once.
//! - A TCP stream whose framing cannot be read (a bad octet count) is
//!   closed, logged with the sender; its earlier messages are kept.
//!
//! # Backpressure
//!
//! Events go to the queue in chunks (whatever arrived since the last
//! append). When the queue blocks, TCP senders are read no further (their
//! own buffers fill, as with any syslog server), and UDP datagrams wait in
//! the socket's buffer, then are dropped by the kernel: UDP syslog cannot
//! be slowed down.

pub mod config;
pub mod message;
pub mod recognize;
#[cfg(test)]
mod tests;

pub use config::SyslogSourceConfig;

use super::poll::now_ns;
use super::SourceMetrics;
use crate::handle::QueueHandle;
use config::{Parser, Timestamps};
use message::{facility_name, severity_name, Framer, Message};
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Events waiting for the queue, between the receivers and the writer.
const PENDING_EVENTS: usize = 4096;
/// Most events in one queue append.
const MAX_APPEND: usize = 1024;
/// Senders the rate limiter remembers before it forgets idle ones.
const MAX_TRACKED_SENDERS: usize = 10_000;

/// Per-sender token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    senders: HashMap<IpAddr, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Messages dropped in the current episode over the rate.
    dropped: u64,
}

/// What the rate limiter says about one message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Passes, and ends an episode over the rate that dropped this many.
    PassAfterDrops(u64),
    /// Dropped; `first` for the first of an episode.
    Drop {
        first: bool,
    },
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(per_second),
            senders: HashMap::new(),
        }
    }

    /// Takes a token of `sender`'s bucket at `now`.
    pub fn check(&mut self, sender: IpAddr, now: Instant) -> Verdict {
        if self.senders.len() >= MAX_TRACKED_SENDERS && !self.senders.contains_key(&sender) {
            // Forget senders whose bucket has refilled: they lose nothing.
            let rate = self.rate;
            self.senders
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < rate);
        }
        let rate = self.rate;
        let bucket = self.senders.entry(sender).or_insert(Bucket {
            tokens: rate,
            last: now,
            dropped: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            match std::mem::take(&mut bucket.dropped) {
                0 => Verdict::Pass,
                n => Verdict::PassAfterDrops(n),
            }
        } else {
            bucket.dropped += 1;
            Verdict::Drop {
                first: bucket.dropped == 1,
            }
        }
    }
}

/// What turns a message into an event.
#[derive(Debug)]
pub struct Converter {
    pub assets: BTreeMap<IpAddr, String>,
    pub parsers: Vec<Parser>,
    pub timestamps: Timestamps,
    pub limits: Limits,
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Converter {
    /// The event of a message from `sender` that arrived at `now_ns`.
    pub fn event(
        &self,
        m: Message,
        sender: IpAddr,
        truncated_from: Option<usize>,
        now_ns: i64,
    ) -> ControllerEvent {
        let limits = &self.limits;
        let host = m
            .host
            .as_deref()
            .filter(|h| h.len() <= limits.max_id_len && !h.is_empty());
        let asset = match self.assets.get(&sender) {
            Some(asset) => asset.clone(),
            None => host.map_or_else(|| sender.to_string(), str::to_string),
        };
        let app = m.app.as_deref().map(|a| cut(a, limits.max_id_len));
        let recognized = recognize::recognize(&self.parsers, app, &m.msg);
        let (kind, name) = match &recognized {
            Some(r) => (r.kind, r.name.to_string()),
            None => (EventKind::Log, app.unwrap_or("syslog").to_string()),
        };
        let ts_ns = match (self.timestamps, m.ts_ns) {
            (Timestamps::Message, Some(ts)) => ts,
            _ => now_ns,
        };
        let mut attrs = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            // Keys are the source's own words: one the limits refuse is left out.
            if attrs.len() < limits.max_attrs && key.len() <= limits.max_attr_len {
                attrs.insert(key.to_string(), cut(value, limits.max_attr_len).to_string());
            }
        };
        put("sender", &sender.to_string());
        put("facility", facility_name(m.facility));
        put("severity", severity_name(m.severity));
        for (key, value) in [
            ("host", m.host.as_deref()),
            ("app", m.app.as_deref()),
            ("procid", m.procid.as_deref()),
            ("msgid", m.msgid.as_deref()),
            ("sd", m.sd.as_deref()),
        ] {
            if let Some(v) = value {
                put(key, v);
            }
        }
        if let Some(full) = truncated_from {
            put("truncated", &full.to_string());
        }
        if let Some(r) = recognized {
            for (key, value) in &r.attrs {
                put(key, value);
            }
        }
        ControllerEvent {
            ts_ns,
            asset,
            kind: kind as i32,
            name,
            text: Some(cut(&m.msg, limits.max_text_len).to_string()),
            attrs: attrs.into_iter().collect(),
            ..Default::default()
        }
    }
}

/// What the receivers share.
struct Receiver {
    max_message_bytes: usize,
    converter: Converter,
    limiter: Mutex<RateLimiter>,
    metrics: Arc<SourceMetrics>,
    events: mpsc::Sender<ControllerEvent>,
}

impl Receiver {
    /// Handles one message from `sender`; errs when the writer has stopped.
    async fn take(
        &self,
        sender: IpAddr,
        bytes: &[u8],
        truncated_from: Option<usize>,
    ) -> Result<(), ()> {
        let verdict = self.limiter.lock().unwrap().check(sender, Instant::now());
        match verdict {
            Verdict::Pass => {}
            Verdict::PassAfterDrops(n) => tracing::info!(
                %sender,
                dropped = n,
                "syslog sender back under max_messages_per_second"
            ),
            Verdict::Drop { first } => {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                if first {
                    tracing::warn!(
                        %sender,
                        "syslog sender over max_messages_per_second: its messages are dropped until it slows down (the other senders go on)"
                    );
                }
                return Ok(());
            }
        }
        if truncated_from.is_some() {
            self.metrics.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let event = self
            .converter
            .event(message::parse(bytes), sender, truncated_from, now_ns());
        self.events.send(event).await.map_err(|_| ())
    }
}

/// Runs the source until `shutdown` turns true. Fails when a socket cannot
/// be bound (naming the key) or the queue stops for good.
pub async fn run(
    config: SyslogSourceConfig,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let udp = match config.udp_addr()? {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|e| format!("syslog source: cannot receive on udp = \"{addr}\": {e}"))?,
        ),
        None => None,
    };
    let tcp = match config.tcp_addr()? {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("syslog source: cannot listen on tcp = \"{addr}\": {e}"))?,
        ),
        None => None,
    };
    tracing::info!(
        udp = ?udp.as_ref().and_then(|s| s.local_addr().ok()),
        tcp = ?tcp.as_ref().and_then(|s| s.local_addr().ok()),
        "syslog source receiving"
    );
    let (tx, rx) = mpsc::channel(PENDING_EVENTS);
    let receiver = Arc::new(Receiver {
        max_message_bytes: config.max_message_bytes,
        converter: Converter {
            assets: config.asset_map()?,
            parsers: config.parsers.clone(),
            timestamps: config.timestamps,
            limits: limits.clone(),
        },
        limiter: Mutex::new(RateLimiter::new(config.max_messages_per_second)),
        metrics: metrics.clone(),
        events: tx,
    });
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(socket) = udp {
        tasks.spawn(receive_udp(socket, receiver.clone(), shutdown.clone()).in_current_span());
    }
    if let Some(listener) = tcp {
        tasks.spawn(
            accept_tcp(
                listener,
                config.max_connections,
                receiver.clone(),
                shutdown.clone(),
            )
            .in_current_span(),
        );
    }
    drop(receiver);
    let writer = write(rx, limits, queue, metrics);
    tokio::pin!(writer);
    tokio::select! {
        done = &mut writer => return done,
        _ = shutdown.wait_for(|s| *s) => {}
    }
    // The receivers stop; what they took reaches the queue.
    tasks.shutdown().await;
    writer.await
}

/// Appends what the receivers send, in chunks, until they are all gone.
async fn write(
    mut rx: mpsc::Receiver<ControllerEvent>,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
) -> Result<(), String> {
    let mut chunk = Vec::with_capacity(MAX_APPEND);
    while rx.recv_many(&mut chunk, MAX_APPEND).await > 0 {
        let now = now_ns();
        let mut good = Vec::with_capacity(chunk.len());
        for event in chunk.drain(..) {
            match limits.check_event(0, &event, now) {
                Ok(()) => good.push(event),
                Err(e) => {
                    metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    let sender = event.attrs.get("sender").map(String::as_str);
                    tracing::warn!(
                        sender = sender.unwrap_or("?"),
                        asset = %event.asset,
                        reason = %e.to_string().replacen("event 0: ", "", 1),
                        "skipping a syslog message the limits refuse"
                    );
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        let n = good.len() as u64;
        queue.append(good).await.map_err(|e| e.to_string())?;
        metrics.events.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

async fn receive_udp(
    socket: tokio::net::UdpSocket,
    receiver: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    // ICMP errors and the like: the socket goes on.
                    tracing::debug!(error = %e, "syslog udp receive");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let max = receiver.max_message_bytes;
        let truncated_from = (len > max).then_some(len);
        if receiver
            .take(from.ip(), &buf[..len.min(max)], truncated_from)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    receiver: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(error = %e, "syslog tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Finished connections leave the set.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                sender = %peer,
                max_connections,
                "syslog connection refused: max_connections reached"
            );
            continue;
        };
        let span = tracing::info_span!("syslog_tcp", sender = %peer);
        let (receiver, shutdown) = (receiver.clone(), shutdown.clone());
        connections.spawn(
            async move {
                read_tcp(stream, peer, receiver, shutdown).await;
                // The slot is free once the connection is done.
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn read_tcp(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    receiver: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut framer = Framer::new(receiver.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let n = match read {
            Ok(0) => {
                // A last newline-framed message without its newline.
                if let Some(frame) = framer.finish() {
                    let _ = receiver
                        .take(peer.ip(), &frame.bytes, frame.truncated_from)
                        .await;
                }
                return;
            }
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "syslog connection ended");
                return;
            }
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    if receiver
                        .take(peer.ip(), &frame.bytes, frame.truncated_from)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    receiver.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "syslog connection closed: its framing cannot be read on (the messages before were kept)");
                    return;
                }
            }
        }
    }
}
