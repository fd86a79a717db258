//! The ingest server: authenticates agents, validates their batches, drops
//! what it already holds, appends the rest to the event log, and acks.
//!
//! Promises (see "Delivery guarantees" in the README):
//! - an `Ack { durable_seq }` is sent only after every event of that agent up
//!   to `durable_seq` is durable in the event log;
//! - the first message on every stream is an ack with the highest sequence
//!   already held for the agent, so a reconnecting agent resends exactly the
//!   rest;
//! - each (agent, seq) is appended at most once: the per-agent high-water mark
//!   comes from the log's producer state, which the log recovers with the data
//!   itself, and appends of one agent are serialized;
//! - a batch that is wrong as a whole (size, sequence order, an event naming
//!   another agent: [`Limits::check_batch_frame`]) is answered with
//!   `INVALID_ARGUMENT` naming the problem, a batch that claims another site
//!   or agent with `PERMISSION_DENIED`; both are counted and logged and affect
//!   no other agent;
//! - an event that breaks a limit of its own ([`Limits::check_event`]: too
//!   old, too far in the future, too long, unknown kind, non-finite value)
//!   is refused alone: the rest of its batch is stored, and the ack lists
//!   the refused events (seq and reason) so that the agent can set them
//!   aside instead of resending the batch forever. Refusals are counted
//!   (`events_refused`) and logged, one line per batch;
//! - what decoding a batch may allocate is bounded by the limits before it
//!   is decoded ([`service`]);
//! - a batch whose sequence numbers would jump further than
//!   `limits.max_seq_gap` above the agent's high-water mark, or past
//!   `i64::MAX`, is refused: the agent's later events stay storable;
//! - which connections are served, and which are closed to make room, follows
//!   the admission rules of [`connections`]: a real agent gets in within a
//!   bounded time while others flood the port;
//! - a collector is only ever built from a valid configuration
//!   ([`CollectorConfig::validate`]), and [`Collector::serve`] returns within
//!   seconds of its shutdown signal, agents streaming or not: their streams
//!   end with `UNAVAILABLE` and they resend what is unacked to the next
//!   collector;
//! - with TLS ([`tls`]), the agent's identity is its verified client
//!   certificate's; headers and payload cannot change it. Plaintext, where
//!   agents name themselves with headers, is for loopback trials only (the
//!   central binary refuses it elsewhere);
//! - every agent that opens a stream is listed in the fleet status
//!   ([`CollectorMetrics::agents`], see [`agents`]) with its version,
//!   reported backlog, certificate expiry, peer address and whether it is
//!   connected now.
//!
//! # Refused events and the producer mark
//!
//! An ack's `durable_seq` is the last sequence number of its batch whether
//! the batch's last events were stored or refused, and the agent trims its
//! queue up to it. The high-water mark kept in the log must say the same,
//! or a collector restarted after an ack would greet the agent with a lower
//! number than the agent trimmed to, which the agent must treat as events
//! the collector lost. So the record appended for a batch always carries
//! the batch's last sequence number as its [`ProducerMark`], even when its
//! last events were refused, and a batch whose new events were all refused
//! is appended as a record with no rows that carries only the mark. Those
//! records are rare (a whole batch refused) and cost a few hundred bytes;
//! consumers see a batch of zero rows (the history writer and the detector
//! skip them). The alternative, appending nothing, would leave the mark
//! below what was acked, and a restart would make refused events look like
//! lost ones.
//!
//! Events at or below the mark are duplicates and are not stored again, but
//! they are checked again: one that fails [`Limits::check_event`] is listed
//! as refused once more. An agent whose ack was lost (the connection broke,
//! or the agent crashed before setting the refused events aside) resends
//! them and so still learns which to set aside. The one case this cannot
//! answer exactly is an event whose verdict changed between the first send
//! and the resend (it aged past `max_past_secs`, or came within
//! `max_future_skew_secs`, in between).

pub mod agents;
pub mod connections;
pub mod service;
pub mod tls;

use otwatch_eventlog::{EventLog, ProducerMark, Record, Topic};
use otwatch_proto::limits::{Limits, ValidationError};
use otwatch_proto::v1::ingest_server::Ingest;
use otwatch_proto::v1::Refused;
use otwatch_proto::{Ack, ControllerEvent, EventBatch};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

pub use agents::{AgentRegistry, AgentStatus};
pub use otwatch_proto::identity::{AGENT_HEADER, AGENT_VERSION_HEADER, SITE_HEADER};

/// Settings of the ingest server (the `[collector]` config section).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Most agent connections served at once (TLS handshakes in progress
    /// included). When all are taken, a newcomer takes the place of the
    /// longest-idle connection without a gRPC stream, or is closed at once
    /// (logged, counted; its agent retries with backoff) when every
    /// connection has a stream (see [`connections`]). With the limits this
    /// bounds the collector's memory: see "Delivery guarantees" in the
    /// README. Default 1024; at least 1.
    pub max_connections: usize,
    /// Most connections from one IP address at once, so that one host cannot
    /// take every slot. Gateways of one site behind a NAT share an address:
    /// raise it if more than this many agents connect through one. Default
    /// 64; at least 1.
    pub max_connections_per_ip: usize,
    /// Limits on what agents may send.
    pub limits: Limits,
    /// TLS with client certificates. Required by `otwatch serve` unless it is
    /// told `--insecure-loopback` and listens on loopback only.
    pub tls: Option<tls::ServerTlsConfig>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            max_connections: connections::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: connections::DEFAULT_MAX_CONNECTIONS_PER_IP,
            limits: Limits::default(),
            tls: None,
        }
    }
}

impl CollectorConfig {
    /// Checks that the settings can serve agents at all; the error names the
    /// key (`collector.…`). The TLS files are read, and named in errors, when
    /// the acceptor is built ([`tls::ServerTlsConfig::acceptor`]).
    pub fn validate(&self) -> Result<(), String> {
        for (key, value, default) in [
            (
                "max_connections",
                self.max_connections,
                connections::DEFAULT_MAX_CONNECTIONS,
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip,
                connections::DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
        ] {
            if value == 0 {
                return Err(format!(
                    "collector.{key} = 0 would refuse every agent: give how many connections to serve at once (default {default})"
                ));
            }
        }
        self.limits
            .validate()
            .map_err(|e| format!("collector.{e}"))?;
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("cert", Some(&tls.cert)),
                ("key", Some(&tls.key)),
                ("client_ca", Some(&tls.client_ca)),
                ("crl", tls.crl.as_ref()),
            ] {
                if path.is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(format!(
                        "collector.tls.{key} is empty: give the path of the PEM file"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a collector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("invalid collector configuration: {0}")]
    InvalidConfig(String),
}

/// Counters of the ingest server, for logs, metrics and the demo scorecard.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    pub streams_opened: AtomicU64,
    pub batches: AtomicU64,
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    /// Events refused alone for breaking a limit of their own (too old,
    /// too long, ...); the rest of their batches was stored.
    pub events_refused: AtomicU64,
    pub batches_invalid: AtomicU64,
    pub batches_denied: AtomicU64,
    pub append_failures: AtomicU64,
    /// Streams refused because the peer had no usable identity.
    pub streams_unauthenticated: AtomicU64,
    /// TLS handshakes that failed (unknown CA, expired or revoked
    /// certificate, no certificate, timeout).
    pub tls_handshake_failures: AtomicU64,
    /// Connections open now (a gauge).
    pub connections_open: AtomicU64,
    /// Connections closed at once because `max_connections` were open, each
    /// with a gRPC stream.
    pub connections_refused: AtomicU64,
    /// Connections closed at once because their address already had
    /// `max_connections_per_ip` open, each with a gRPC stream.
    pub connections_refused_per_ip: AtomicU64,
    /// Connections without a gRPC stream (TLS handshakes in progress
    /// included) closed to make room for a newcomer, because all slots, or
    /// all of the newcomer's address, were taken.
    pub connections_evicted: AtomicU64,
    /// Connections closed because they had no gRPC stream for
    /// `connections::IDLE_TIMEOUT`.
    pub connections_idle_closed: AtomicU64,
    /// TLS handshakes that did not complete within `tls::HANDSHAKE_TIMEOUT`
    /// (also counted in `tls_handshake_failures`).
    pub tls_handshake_timeouts: AtomicU64,
    /// Agent streams ended by a shutdown of the collector.
    pub streams_ended_by_shutdown: AtomicU64,
    /// The fleet status: one entry per agent that has opened a stream
    /// (read it with [`AgentRegistry::snapshot`]).
    pub agents: AgentRegistry,
}

/// A snapshot of [`CollectorMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectorCounts {
    pub streams_opened: u64,
    pub batches: u64,
    pub events_stored: u64,
    pub events_duplicate: u64,
    pub events_refused: u64,
    pub batches_invalid: u64,
    pub batches_denied: u64,
    pub append_failures: u64,
    pub streams_unauthenticated: u64,
    pub tls_handshake_failures: u64,
    pub connections_open: u64,
    pub connections_refused: u64,
    pub connections_refused_per_ip: u64,
    pub connections_evicted: u64,
    pub connections_idle_closed: u64,
    pub tls_handshake_timeouts: u64,
    pub streams_ended_by_shutdown: u64,
}

impl CollectorMetrics {
    pub fn snapshot(&self) -> CollectorCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CollectorCounts {
            streams_opened: g(&self.streams_opened),
            batches: g(&self.batches),
            events_stored: g(&self.events_stored),
            events_duplicate: g(&self.events_duplicate),
            events_refused: g(&self.events_refused),
            batches_invalid: g(&self.batches_invalid),
            batches_denied: g(&self.batches_denied),
            append_failures: g(&self.append_failures),
            streams_unauthenticated: g(&self.streams_unauthenticated),
            tls_handshake_failures: g(&self.tls_handshake_failures),
            connections_open: g(&self.connections_open),
            connections_refused: g(&self.connections_refused),
            connections_refused_per_ip: g(&self.connections_refused_per_ip),
            connections_evicted: g(&self.connections_evicted),
            connections_idle_closed: g(&self.connections_idle_closed),
            tls_handshake_timeouts: g(&self.tls_handshake_timeouts),
            streams_ended_by_shutdown: g(&self.streams_ended_by_shutdown),
        }
    }
}

/// Who is on the other end of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub site: String,
    pub agent: String,
}

impl AgentIdentity {
    /// The producer id under which the event log keeps this agent's high-water mark.
    pub fn producer(&self) -> String {
        format!("{}/{}", self.site, self.agent)
    }
}

/// The ingest service. Clone-cheap; share one per process.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn EventLog>,
    config: CollectorConfig,
    metrics: Arc<CollectorMetrics>,
    /// One lock per producer so that two streams of the same agent (an old
    /// one not yet torn down and its replacement) cannot both append the same
    /// sequence numbers.
    producer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Backfill allowances by (site, agent): see [`Collector::allow_backfill`].
    backfills: Mutex<HashMap<(String, String), Backfill>>,
}

/// An operator's allowance for one agent to send events older than
/// `limits.max_past_secs`, decided through the control topic
/// (`collector.backfill`) and kept until `until_ns` (wall clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// The oldest event time the agent may send.
    pub oldest_ns: i64,
    /// When the allowance ends (collector clock, ns since the epoch).
    pub until_ns: i64,
}

impl Collector {
    /// A collector appending to `log`; refuses an invalid `config` (see
    /// [`CollectorConfig::validate`]), so no collector runs with limits that
    /// would refuse every agent.
    pub fn new(log: Arc<dyn EventLog>, config: CollectorConfig) -> Result<Self, CollectorError> {
        config.validate().map_err(CollectorError::InvalidConfig)?;
        Ok(Collector {
            inner: Arc::new(Inner {
                log,
                config,
                metrics: Arc::default(),
                producer_locks: Mutex::default(),
                backfills: Mutex::default(),
            }),
        })
    }

    /// Lets agent `agent` of `site` send events as old as
    /// `backfill.oldest_ns` until `backfill.until_ns`, beyond
    /// `limits.max_past_secs`: an operator loading a gateway's recorded
    /// history, one agent at a time, instead of widening the limit for
    /// every agent. Every other limit still applies. A later allowance for
    /// the same agent replaces the earlier one; one whose end has passed
    /// is dropped.
    pub fn allow_backfill(&self, site: &str, agent: &str, backfill: Backfill) {
        let mut backfills = self.inner.backfills.lock().unwrap();
        let now = now_ns();
        backfills.retain(|_, b| b.until_ns > now);
        let key = (site.to_string(), agent.to_string());
        backfills.remove(&key);
        if backfill.until_ns > now {
            tracing::info!(
                site,
                agent,
                oldest_ns = backfill.oldest_ns,
                until_ns = backfill.until_ns,
                "backfill allowed: this agent may send events older than max_past_secs"
            );
            backfills.insert(key, backfill);
        }
    }

    /// The oldest event time `identity` may send now, when an allowance
    /// holds.
    fn backfill_oldest(&self, identity: &AgentIdentity, now_ns: i64) -> Option<i64> {
        let backfills = self.inner.backfills.lock().unwrap();
        backfills
            .get(&(identity.site.clone(), identity.agent.clone()))
            .filter(|b| b.until_ns > now_ns)
            .map(|b| b.oldest_ns)
    }

    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        self.inner.metrics.clone()
    }

    /// The tonic service: message size limits, and batches checked against
    /// the limits before they are decoded (see [`service`]).
    pub fn into_service(self) -> service::IngestService {
        service::IngestService::new(self)
    }

    /// Refuses a batch whose sequence numbers would move the agent's
    /// high-water mark `held` too far (see [`Limits::check_seq_advance`]):
    /// counted with the invalid batches, logged, `INVALID_ARGUMENT`.
    fn check_sequence(&self, held: u64, events: &[ControllerEvent]) -> Result<(), Status> {
        self.inner
            .config
            .limits
            .check_seq_advance(held, events)
            .map_err(|e| {
                self.inner
                    .metrics
                    .batches_invalid
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, held, "batch refused: its sequence numbers jump out of this agent's reach");
                Status::invalid_argument(e.to_string())
            })
    }

    /// Validates, dedupes and appends one batch; returns the ack to send.
    pub async fn ingest(
        &self,
        identity: &AgentIdentity,
        batch: EventBatch,
        now_ns: i64,
    ) -> Result<Ack, Status> {
        let inner = &self.inner;
        let m = &inner.metrics;
        if batch.site != identity.site || batch.agent != identity.agent {
            m.batches_denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                claimed_site = %batch.site,
                claimed_agent = %batch.agent,
                "batch claims another identity; refused"
            );
            return Err(Status::permission_denied(format!(
                "this stream is authenticated as site {:?} agent {:?}; a batch for site {:?} agent {:?} is refused",
                identity.site, identity.agent, batch.site, batch.agent
            )));
        }
        let limits = &inner.config.limits;
        if let Err(e) = limits.check_batch_frame(&batch) {
            m.batches_invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(site = %identity.site, agent = %identity.agent, error = %e, "invalid batch refused");
            return Err(Status::invalid_argument(e.to_string()));
        }
        // Each event's own limits, before taking the producer lock: what
        // fails is refused alone (see the module doc). An agent with a
        // backfill allowance may send events older than max_past_secs,
        // back to the allowance's oldest time.
        let backfill_oldest = self.backfill_oldest(identity, now_ns);
        let verdicts: Vec<Option<String>> = batch
            .events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let verdict = match limits.check_event(index, event, now_ns) {
                    Err(ValidationError::TooOld { ts_ns, .. })
                        if backfill_oldest.is_some_and(|oldest| ts_ns >= oldest) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                verdict.err().map(|e| {
                    // The seq identifies the event; its index in the batch
                    // means nothing to the agent's operator.
                    let text = e.to_string();
                    match text.strip_prefix(&format!("event {index}: ")) {
                        Some(reason) => reason.to_string(),
                        None => text,
                    }
                })
            })
            .collect();
        let producer = identity.producer();
        let lock = {
            let mut locks = inner.producer_locks.lock().unwrap();
            // Bounded: locks no ingest holds now are dropped once there are
            // many (a new one is made when its agent sends again; only
            // concurrent ingests of one agent must share one).
            if locks.len() > 4 * inner.config.max_connections {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(producer.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let held = match inner.log.producer_seq(Topic::Events, &producer).await {
            Ok(held) => held.unwrap_or(0),
            Err(e) => {
                m.append_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot read the agent's sequence from the event log; batch not acknowledged");
                return Err(Status::unavailable(format!(
                    "the collector cannot read what the event log holds ({e}); resend later"
                )));
            }
        };
        self.check_sequence(held, &batch.events)?;
        // Sequence numbers strictly increase within a batch (validated), so
        // the already-held events are a prefix.
        let dup = batch.events.partition_point(|e| e.seq <= held);
        m.batches.fetch_add(1, Ordering::Relaxed);
        m.events_duplicate.fetch_add(dup as u64, Ordering::Relaxed);
        // Not empty: the frame check refuses empty batches.
        let last_seq = batch.events[batch.events.len() - 1].seq;
        let EventBatch {
            site,
            agent,
            events,
            queue_backlog: _,
        } = batch;
        let mut refused = Vec::new();
        let mut fresh_refused = 0usize;
        let mut stored = Vec::with_capacity(events.len() - dup);
        for (event, verdict) in events.into_iter().zip(verdicts) {
            let fresh = event.seq > held;
            match verdict {
                Some(reason) => {
                    fresh_refused += usize::from(fresh);
                    refused.push(Refused {
                        seq: event.seq,
                        reason,
                    });
                }
                None if fresh => stored.push(event),
                None => {}
            }
        }
        if !refused.is_empty() {
            let first = &refused[0];
            tracing::warn!(
                site = %identity.site,
                agent = %identity.agent,
                refused = refused.len(),
                already_held = refused.len() - fresh_refused,
                first_seq = first.seq,
                last_seq = refused[refused.len() - 1].seq,
                first_reason = %first.reason,
                "events refused for breaking a limit; the rest of the batch is stored and the agent sets these aside"
            );
        }
        if last_seq <= held {
            // A resend of what is held: nothing to append.
            return Ok(Ack {
                durable_seq: held,
                duplicates: dup as u32,
                refused,
            });
        }
        // With every new event refused this is a record without rows: it
        // carries the producer mark so that the log's high-water mark
        // covers what this ack answers for (see the module doc).
        let record = otwatch_proto::arrow::events_to_batch(&site, &agent, &stored, now_ns)
            .map_err(|e| Status::internal(format!("converting the batch to Arrow failed: {e}")))?;
        if let Err(e) = inner
            .log
            .append(
                Topic::Events,
                vec![Record {
                    batch: record,
                    producer: Some(ProducerMark { producer, last_seq }),
                }],
            )
            .await
        {
            m.append_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "event log append failed; batch not acknowledged");
            return Err(Status::unavailable(format!(
                "the collector could not store the batch durably ({e}); resend later"
            )));
        }
        m.events_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        m.events_refused
            .fetch_add(fresh_refused as u64, Ordering::Relaxed);
        Ok(Ack {
            durable_seq: last_seq,
            duplicates: dup as u32,
            refused,
        })
    }

    /// Serves the ingest service on `listener` until `shutdown` completes:
    /// over TLS with client certificates when `tls` is given, else plaintext
    /// (agents then name themselves with headers). Connections are admitted
    /// by the rules of [`connections`].
    ///
    /// When `shutdown` completes, the port closes, every open agent stream
    /// ends at once with `UNAVAILABLE` (a batch being appended is appended
    /// and acked first), and connections still open after
    /// [`connections::SHUTDOWN_GRACE`] are closed; then `serve` returns.
    /// Agents reconnect to the next collector and resend what is unacked.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<tls::Acceptor>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        use futures::FutureExt;
        let metrics = self.metrics();
        let config = &self.inner.config;
        let admission = connections::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            metrics.clone(),
        );
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(connections::MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(connections::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(connections::KEEPALIVE_TIMEOUT))
            .max_connection_age(connections::MAX_CONNECTION_AGE)
            .max_connection_age_grace(connections::MAX_CONNECTION_AGE_GRACE)
            .add_service(self.into_service());
        let (stopping, mut stopped) = tokio::sync::watch::channel(false);
        let drain = admission.clone();
        // tonic stops accepting and waits for open connections to end; agent
        // streams never end by themselves, so they are ended here.
        let signal = async move {
            shutdown.await;
            tracing::info!(
                open_connections = drain.open(),
                "shutting down: agent streams end now, connections are closed within {:?}",
                connections::SHUTDOWN_GRACE
            );
            drain.drain();
            stopping.send_replace(true);
        };
        let served = match tls {
            Some(acceptor) => router
                .serve_with_incoming_shutdown(
                    tls::tls_incoming(listener, acceptor, admission.clone(), metrics),
                    signal,
                )
                .boxed(),
            None => router
                .serve_with_incoming_shutdown(
                    connections::plain_incoming(listener, admission.clone()),
                    signal,
                )
                .boxed(),
        };
        // Connections whose peers do not close them after their streams ended.
        let force = async {
            let _ = stopped.wait_for(|&s| s).await;
            tokio::time::sleep(connections::SHUTDOWN_GRACE).await;
            admission.close_all();
            std::future::pending::<()>().await
        };
        tokio::select! {
            result = served => result,
            _ = force => unreachable!("the forced close never completes"),
        }
    }

    /// Who is on the other end: the verified certificate's identity on a TLS
    /// connection, the headers on a plaintext one.
    fn identity<T>(&self, request: &Request<T>) -> Result<AgentIdentity, Status> {
        let peer = request.extensions().get::<connections::PeerInfo>();
        if let Some(Some(identity)) = peer.map(|p| &p.identity) {
            let remote = peer.map(|p| p.remote);
            return identity.clone().map_err(|reason| {
                self.inner
                    .metrics
                    .streams_unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?remote, %reason, "client certificate names no agent; stream refused");
                Status::unauthenticated(reason)
            });
        }
        let get = |key: &str| -> Result<String, Status> {
            let value = request
                .metadata()
                .get(key)
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "no client certificate and no {key} header: the agent must identify itself"
                    ))
                })?
                .to_str()
                .map_err(|_| Status::invalid_argument(format!("{key} is not ASCII")))?;
            otwatch_proto::identity::check_id(key, value).map_err(Status::invalid_argument)?;
            Ok(value.to_string())
        };
        let identity = get(SITE_HEADER).and_then(|site| {
            Ok(AgentIdentity {
                site,
                agent: get(AGENT_HEADER)?,
            })
        });
        if identity.is_err() {
            self.inner
                .metrics
                .streams_unauthenticated
                .fetch_add(1, Ordering::Relaxed);
        }
        identity
    }
}

/// The agent's version header when it is usable
/// ([`otwatch_proto::identity::valid_version`]); anything else is logged and
/// ignored: the version only informs.
fn agent_version<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get(AGENT_VERSION_HEADER)?;
    match value.to_str() {
        Ok(v) if otwatch_proto::identity::valid_version(v) => Some(v.to_string()),
        _ => {
            tracing::debug!(
                len = value.len(),
                "{AGENT_VERSION_HEADER} is not 1 to {} printable ASCII characters; ignored",
                otwatch_proto::identity::MAX_VERSION_LEN
            );
            None
        }
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Ingest for Collector {
    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let identity = self.identity(&request)?;
        let peer = request.extensions().get::<connections::PeerInfo>().cloned();
        let remote = peer
            .as_ref()
            .map(|p| p.remote)
            .or_else(|| request.remote_addr());
        // Counted from here until the stream task ends: meanwhile the
        // connection is neither idle nor evictable.
        let open = peer.as_ref().map(|p| p.streams.stream_opened());
        let cert_not_after_ns = peer.as_ref().and_then(|p| p.cert_not_after_ns);
        let shutting_down = peer.map(|p| p.streams.shutting_down());
        let version = agent_version(&request);
        let mut inbound = request.into_inner();
        let span = tracing::info_span!("ingest", site = %identity.site, agent = %identity.agent, remote = ?remote);
        let metrics = self.inner.metrics.clone();
        metrics.streams_opened.fetch_add(1, Ordering::Relaxed);
        let held = match self
            .inner
            .log
            .producer_seq(Topic::Events, &identity.producer())
            .await
        {
            Ok(held) => held.unwrap_or(0),
            Err(e) => {
                span.in_scope(|| tracing::error!(error = %e, "cannot read the agent's sequence from the event log; stream refused"));
                return Err(Status::unavailable(format!(
                    "the collector cannot read what the event log holds ({e}); retry later"
                )));
            }
        };
        span.in_scope(|| {
            tracing::info!(
                durable_seq = held,
                version = version.as_deref().unwrap_or("unknown"),
                "agent connected"
            )
        });
        let status = agents::OpenStream::new(
            metrics.clone(),
            &identity,
            agents::StreamOpened {
                version,
                cert_not_after_ns,
                peer: remote.map(|r| r.to_string()),
            },
            now_ns(),
        );
        // Acks are few and small; a short buffer keeps a slow reader from
        // holding many and still lets the next batch be processed.
        let (tx, rx) = mpsc::channel(8);
        tx.send(Ok(Ack {
            durable_seq: held,
            duplicates: 0,
            refused: Vec::new(),
        }))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
        let collector = self.clone();
        tokio::spawn(
            async move {
                let _open = open;
                let status = status;
                let shutting_down = async move {
                    match shutting_down {
                        Some(signal) => signal.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(shutting_down);
                loop {
                    // Only the wait for the next batch is cut short by a
                    // shutdown: a batch being appended is finished and acked.
                    let next = tokio::select! {
                        next = inbound.message() => next,
                        _ = &mut shutting_down => {
                            metrics.streams_ended_by_shutdown.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("collector shutting down: stream ended; the agent resends what is unacked to the next collector");
                            let _ = tx
                                .send(Err(Status::unavailable(
                                    "the collector is shutting down: reconnect and resend what is unacknowledged",
                                )))
                                .await;
                            break;
                        }
                    };
                    let batch = match next {
                        Ok(Some(batch)) => batch,
                        Ok(None) => {
                            tracing::info!("agent closed the stream");
                            break;
                        }
                        Err(status) => {
                            if refused_before_decoding(&status) {
                                metrics.batches_invalid.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(code = ?status.code(), reason = status.message(), "batch refused before decoding");
                            } else {
                                tracing::info!(%status, "stream ended");
                            }
                            // The agent learns why (when it is still there).
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    };
                    status.batch_received(batch.queue_backlog, now_ns());
                    let reply = collector.ingest(&identity, batch, now_ns()).await;
                    let failed = reply.is_err();
                    if tx.send(reply).await.is_err() || failed {
                        break;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Whether `status`, from reading the next message of a stream, refuses the
/// batch itself: too large on the wire or decompressed (tonic), or refused
/// by the limits or unreadable ([`service`]). Anything else is the stream
/// ending (the agent went away).
fn refused_before_decoding(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    )
}
