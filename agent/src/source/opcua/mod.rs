//! The `opcua` source: OPC UA servers (async-opcua client, pure Rust),
//! their values and events taken through subscriptions, never by polling.
//! It owns one session per configured server, the subscription and
//! monitored items on it, and the turning of notifications into events
//! ([`values`]); it keeps every promise of [`crate::source`].
//!
//! # Read-only
//!
//! The source creates sessions, subscriptions and monitored items, and
//! receives what the server publishes. It never calls a service that
//! changes the server or runs code on it: no Write, no Call, no
//! AddNodes/DeleteNodes, no HistoryUpdate. `tests.rs` scans this folder for
//! any of them.
//!
//! # Load on the controller
//!
//! The server samples each item at its `sampling_interval` (at least
//! 100 ms, [`crate::source::poll::MIN_POLL_INTERVAL`]) and publishes the
//! changes every `publishing_interval` (the same floor); a numeric item's
//! `deadband` is applied by the server, so a value that barely moves costs
//! nothing on the wire.
//!
//! # Events
//!
//! See [`values`]: data changes become SAMPLE (numbers) or STATE
//! (booleans, texts, enumerations), events and alarms of the configured
//! notifiers become ALARM. Every event passes the shared validation
//! ([`DeviceLink::take`]) before it is queued; a value the limits refuse
//! (a NaN) or of a type an item cannot report is logged with the server
//! and item (once until it is good again), counted and skipped.
//!
//! # Machine cycles
//!
//! With `cycle = { counter, duration }`, each increase of the counter is a
//! CYCLE event (an increase by k ends k cycles, a decrease is a reset),
//! stamped with the counter's source timestamp and counted by the polled
//! sources' own [`poll::CycleTracker`]. A subscription gives no order
//! between two items: the server samples each on its own and a publish
//! response may carry the counter's change before, after or without the
//! duration written with it, the duration may come in the next response,
//! and an unchanged value is not sent at all. So:
//!
//! - the duration is monitored with the trigger `StatusValueTimestamp`: a
//!   cycle as long as the one before is sent again, with its new source
//!   timestamp;
//! - a counter change at source time T takes the duration with the same
//!   source timestamp T, written with it in one update, whichever of the
//!   two arrives first ([`values::CycleWatch`]); it waits for it, across
//!   responses, and is reported when it arrives;
//! - a response may carry several cycles (cycles shorter than the
//!   publishing interval, or a response that comes late, as the first
//!   ones of a subscription often do), each item's values in the order
//!   they were written but the items in any order: every duration is kept
//!   by its time until its counter change comes, and the changes wait for
//!   their own durations, reported in the counter's order;
//! - a change whose duration does not come (a duration of a later time
//!   arrives instead, as when a server drops or re-stamps a value it
//!   samples faster than its sampling interval allows; more changes wait
//!   than a response can carry, `queue_size`; or the duration is
//!   unavailable) is reported with the duration measured between the
//!   counter changes by their source timestamps: a CYCLE never carries
//!   another cycle's duration.
//!
//! The cycle's items are created before the other items: the server takes
//! each item's current value when it creates it, so the first value of a
//! sample is never older than the counter's first value, and the cycle it
//! was read at is reported (a SAMPLE always has its CYCLE).
//!
//! So the controller should write the counter and the duration in one
//! update with one source timestamp, as PLC servers do for the variables
//! of one scan. Without `duration`, each CYCLE carries the time between
//! two counter changes. At a new session the first counter value is the
//! cycle the server shows now (or the newer one whose duration arrives
//! first, when a cycle ended while the items were created): reported with
//! its duration unless it is the cycle last reported (a reconnection); no
//! cycle is reported twice, and cycles that ended while the agent was away
//! are unknown and not counted.
//!
//! The detector relates each SAMPLE to the asset's latest CYCLE, as the
//! polled sources send them with `samples = "on_cycle"` (the CYCLE, then
//! the values read at its end). So the events of each batch of
//! notifications go to the queue by source time, a CYCLE before the
//! SAMPLEs of the same time, and SAMPLEs at or after a counter change that
//! waits for its duration wait with it ([`values::order_by_cycles`]).
//!
//! # Failures
//!
//! A server that cannot be reached, refuses the session or drops it is
//! reconnected after `reconnect_min` .. `reconnect_max` (exponential, with
//! jitter) with a new session, a new subscription and every item created
//! again. An item the server does not know (deleted, renamed, a server
//! restarted with another address space), or whose value turns bad, is
//! logged once with its status, counted on `/metrics`
//! (`otwatch_agent_device_items_unavailable`) and skipped; every other item
//! goes on, and the item is asked for again at the next session. The
//! server is one "device" on `/metrics` (`source="opcua"`, `device` = its
//! `name`): polls count notification messages, errors failed sessions,
//! latency is the age of the newest value when it arrived (by the
//! server's clock).
//!
//! # Security
//!
//! `security_policy = "none"` sends everything in clear; the two policies
//! sign and encrypt with the agent's certificate, and accept a server only
//! if its certificate is in `trusted_server_certs` (the agent keeps its
//! own copy of that list under `data_dir`, made anew at each connection:
//! adding a certificate to the directory is enough). A refused server
//! certificate is named in the log. The password is read from its file or
//! variable at each connection and never logged.

pub mod config;
#[cfg(test)]
mod tests;
pub mod values;

pub use config::OpcuaSourceConfig;

use super::poll::{self, fail_and_back_off, now_ns, Backoff, DeviceLink, DeviceMetrics};
use super::SourceMetrics;
use crate::handle::QueueHandle;
use config::{OpcuaServerConfig, SecurityPolicy};
use opcua::client::{
    Client, ClientBuilder, IdentityToken, MonitoredItem, OnSubscriptionNotification,
    SessionPollResult,
};
use opcua::crypto::CertificateStore;
use opcua::types::{
    DataValue, EndpointDescription, MessageSecurityMode, StatusChangeNotification,
    TimestampsToReturn, UserTokenPolicy, Variant,
};
use otwatch_proto::limits::Limits;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use values::{CycleWatch, Monitor, Refused};

/// Notifications one server may have waiting for the queue; beyond, they
/// are dropped, counted and logged (the queue is full and blocking).
const PENDING_NOTIFICATIONS: usize = 65_536;
/// Notifications turned into events and appended together.
const BATCH: usize = 1024;
/// Publishing intervals without a notification after which the server
/// sends a keep-alive, and after which it drops a subscription nobody
/// asks for.
const KEEP_ALIVE_COUNT: u32 = 10;
const LIFETIME_COUNT: u32 = 60;

/// The metrics of each configured server, in configuration order.
pub fn device_metrics(config: &OpcuaSourceConfig) -> Vec<Arc<DeviceMetrics>> {
    poll::device_metrics("opcua", &config.servers)
}

/// Runs the source until `shutdown` turns true: one task per server, each
/// with its certificate store under `state_dir`. Fails only when the queue
/// stops for good.
pub async fn run(
    config: OpcuaSourceConfig,
    state_dir: PathBuf,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    devices: Vec<Arc<DeviceMetrics>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    poll::run_devices(
        "opcua",
        config.servers,
        devices,
        metrics.clone(),
        limits,
        queue,
        |server, link| {
            let pki = state_dir.join(format!("opcua-{}", file_safe(&server.name)));
            serve(server, pki, link, metrics.clone(), shutdown.clone())
        },
    )
    .await
}

/// A server name as a directory name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the subscription's callbacks hand over.
#[derive(Debug)]
enum Note {
    Data(u32, DataValue),
    Event(u32, Option<Vec<Variant>>),
    Status(StatusChangeNotification),
}

/// The subscription's callbacks: they run inside the session's event loop
/// and must not wait, so they hand each notification to the server's task.
struct Notifier {
    tx: mpsc::Sender<Note>,
    dropped: Arc<AtomicU64>,
}

impl Notifier {
    fn send(&self, note: Note) {
        if self.tx.try_send(note).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl OnSubscriptionNotification for Notifier {
    fn on_subscription_status_change(&mut self, notification: StatusChangeNotification) {
        self.send(Note::Status(notification));
    }

    fn on_data_value(&mut self, value: DataValue, item: &MonitoredItem) {
        self.send(Note::Data(item.client_handle(), value));
    }

    fn on_event(&mut self, fields: Option<Vec<Variant>>, item: &MonitoredItem) {
        self.send(Note::Event(item.client_handle(), fields));
    }
}

/// How a session ended.
enum Ended {
    /// The agent stops.
    Shutdown,
    /// The connection or the session was lost.
    Lost(String),
}

/// Aborts the session's event loop task when the session is given up.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one server's task keeps across sessions.
struct ServerState {
    asset: String,
    monitors: Vec<Monitor>,
    /// Items (by client handle) the server cannot give now, with the
    /// status logged.
    unavailable: HashMap<u32, String>,
    /// Items whose values are refused, with the reason logged.
    refused: HashMap<u32, String>,
    /// The machine's cycles (`cycle`), if configured.
    cycle: Option<CycleWatch>,
    /// SAMPLEs waiting for the CYCLE they were read at
    /// ([`values::order_by_cycles`]).
    held: Vec<otwatch_proto::ControllerEvent>,
    source_metrics: Arc<SourceMetrics>,
}

impl ServerState {
    fn set_unavailable(&mut self, link: &DeviceLink, handle: u32, status: String) {
        let Some(monitor) = self.monitors.get(handle as usize - 1) else {
            return;
        };
        if self.unavailable.get(&handle) != Some(&status) {
            tracing::warn!(
                item = %monitor.label(),
                %status,
                "opcua item unavailable: skipped, the other items go on (asked for again at the next session)"
            );
            self.unavailable.insert(handle, status);
        }
        link.metrics
            .items_unavailable
            .store(self.unavailable.len() as u64, Ordering::Relaxed);
    }

    fn set_available(&mut self, link: &DeviceLink, handle: u32) {
        if let Some(was) = self.unavailable.remove(&handle) {
            if let Some(monitor) = self.monitors.get(handle as usize - 1) {
                tracing::info!(item = %monitor.label(), %was, "opcua item available again");
            }
            link.metrics
                .items_unavailable
                .store(self.unavailable.len() as u64, Ordering::Relaxed);
        }
    }

    /// The events of a batch of notifications, the age of its newest
    /// value, and the status of a subscription the server ended.
    fn events(
        &mut self,
        link: &DeviceLink,
        notes: Vec<Note>,
    ) -> (
        Vec<otwatch_proto::ControllerEvent>,
        Duration,
        Option<String>,
    ) {
        let now = now_ns();
        let mut out = Vec::with_capacity(notes.len());
        let mut newest: Option<i64> = None;
        let mut ended = None;
        for note in notes {
            match note {
                Note::Status(status) => {
                    // The server ended the subscription (its lifetime ran
                    // out, it was closed): the session must subscribe again.
                    if status.status.is_bad() {
                        ended = Some(values::status_name(status.status));
                    }
                }
                Note::Data(handle, value) => {
                    if let Some(ts) = value
                        .server_timestamp
                        .as_ref()
                        .and_then(|t| t.as_chrono().timestamp_nanos_opt())
                    {
                        newest = Some(newest.map_or(ts, |n| n.max(ts)));
                    }
                    let result = match self.monitors.get_mut((handle as usize).wrapping_sub(1)) {
                        Some(Monitor::Value(item)) => item
                            .event(&self.asset, &value, now)
                            .map(|event| out.extend(event)),
                        Some(Monitor::CycleCounter) => match &mut self.cycle {
                            Some(cycle) => cycle.counter(&self.asset, &value, now, &mut out),
                            None => continue,
                        },
                        Some(Monitor::CycleDuration) => match &mut self.cycle {
                            Some(cycle) => cycle.duration(&self.asset, &value, now, &mut out),
                            None => continue,
                        },
                        _ => continue,
                    };
                    match result {
                        Ok(()) => {
                            self.set_available(link, handle);
                            if let Some(was) = self.refused.remove(&handle) {
                                let label = self.monitors[handle as usize - 1].label();
                                tracing::info!(item = %label, %was, "opcua item has valid values again");
                            }
                        }
                        Err(Refused::Unavailable(status)) => {
                            self.set_unavailable(link, handle, status)
                        }
                        Err(Refused::Unsupported(reason)) => {
                            link.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                            self.source_metrics.rejected.fetch_add(1, Ordering::Relaxed);
                            if self.refused.get(&handle) != Some(&reason) {
                                let label = self.monitors[handle as usize - 1].label();
                                tracing::warn!(item = %label, %reason, "skipping an opcua value (logged once until the item is valid again; counted each time)");
                                self.refused.insert(handle, reason);
                            }
                        }
                    }
                }
                Note::Event(handle, fields) => {
                    let Some(Monitor::Events(source)) =
                        self.monitors.get((handle as usize).wrapping_sub(1))
                    else {
                        continue;
                    };
                    out.extend(source.event(&self.asset, fields.as_deref().unwrap_or(&[]), now));
                }
            }
        }
        if let Some(cycle) = &self.cycle {
            values::order_by_cycles(&mut out, &mut self.held, cycle.waiting_since());
        }
        let age = newest
            .map(|ts| {
                Duration::from_nanos(now.saturating_sub(ts).clamp(0, 3_600_000_000_000) as u64)
            })
            .unwrap_or_default();
        (out, age, ended)
    }
}

/// Serves one server until `shutdown`, a new session after each loss.
async fn serve(
    server: OpcuaServerConfig,
    pki: PathBuf,
    mut link: DeviceLink,
    source_metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut backoff = Backoff::new(server.reconnect_min, server.reconnect_max);
    let mut state = ServerState {
        asset: server.asset.clone(),
        monitors: Monitor::of(&server),
        unavailable: HashMap::new(),
        refused: HashMap::new(),
        cycle: server
            .cycle
            .as_ref()
            .map(|cycle| CycleWatch::new(cycle, server.queue_size)),
        held: Vec::new(),
        source_metrics,
    };
    tracing::info!(
        endpoint = %server.endpoint,
        security_policy = ?server.security_policy,
        items = server.items.len(),
        event_sources = server.events.len(),
        sampling_interval = %humantime::format_duration(server.sampling_interval),
        publishing_interval = %humantime::format_duration(server.publishing_interval),
        "subscribing to opcua server"
    );
    if server.security_policy == SecurityPolicy::None {
        if let Ok((host, _)) = server.host_port() {
            if !crate::config::is_loopback(&host) {
                tracing::warn!(endpoint = %server.endpoint, "security_policy = \"none\": the session to this server is neither signed nor encrypted");
            }
        }
    }
    let mut client = None;
    while !*shutdown.borrow() {
        let attempt = async {
            prepare_pki(&pki, &server)?;
            if client.is_none() {
                client = Some(build_client(&server, &pki)?);
            }
            let identity = identity(&server)?;
            Ok::<_, String>(identity)
        }
        .await;
        let identity = match attempt {
            Ok(identity) => identity,
            Err(e) => {
                if fail_and_back_off(&mut link, &e, &mut backoff, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let client = client.as_mut().expect("built above");
        match session(
            client,
            &server,
            identity,
            &mut state,
            &mut link,
            &mut backoff,
            &mut shutdown,
        )
        .await
        {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::Lost(e)) | Err(SessionError::Failed(e)) => {
                let e = explain_rejection(&pki, &e);
                if fail_and_back_off(&mut link, &e, &mut backoff, &mut shutdown).await {
                    break;
                }
            }
            Err(SessionError::Queue(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Why a session ended badly: the server (retried), or the queue (fatal).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Failed(String),
    #[error("the queue stopped: {0}")]
    Queue(String),
}

impl From<String> for SessionError {
    fn from(e: String) -> Self {
        SessionError::Failed(e)
    }
}

/// One session: connects, subscribes every item, then hands the
/// notifications to the queue until the session is lost or the agent
/// stops.
async fn session(
    client: &mut Client,
    server: &OpcuaServerConfig,
    identity: IdentityToken,
    state: &mut ServerState,
    link: &mut DeviceLink,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended, SessionError> {
    let started = std::time::Instant::now();
    let mode = match server.security_policy {
        SecurityPolicy::None => MessageSecurityMode::None,
        _ => MessageSecurityMode::SignAndEncrypt,
    };
    let endpoint: EndpointDescription = (
        server.endpoint.as_str(),
        server.security_policy.uri(),
        mode,
        UserTokenPolicy::anonymous(),
    )
        .into();
    let (session, event_loop) = within(
        server.timeout,
        "the server's endpoints",
        client.connect_to_matching_endpoint(endpoint, identity),
    )
    .await?
    .map_err(|e| {
        format!(
            "cannot open a session to {} with security_policy = {:?}: {e}",
            server.endpoint, server.security_policy
        )
    })?;
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let driver = AbortOnDrop(tokio::spawn(
        async move {
            use futures::StreamExt;
            let stream = event_loop.enter();
            futures::pin_mut!(stream);
            while let Some(polled) = stream.next().await {
                match polled {
                    Ok(SessionPollResult::Reconnected(_)) => {
                        let _ = up_tx.send(Ok(()));
                    }
                    Ok(SessionPollResult::ConnectionLost(status)) => {
                        let _ = up_tx.send(Err(format!("connection lost: {status}")));
                        return;
                    }
                    Err(status) => {
                        let _ = up_tx.send(Err(format!("session failed: {status}")));
                        return;
                    }
                    Ok(_) => {}
                }
            }
            let _ = up_tx.send(Err("session closed".to_string()));
        }
        .in_current_span(),
    ));
    match tokio::time::timeout(server.timeout, up_rx.recv()).await {
        Ok(Some(Ok(()))) => {}
        Ok(Some(Err(e))) => return Err(format!("{}: {e}", server.endpoint).into()),
        Ok(None) => return Err(format!("{}: session closed", server.endpoint).into()),
        Err(_) => {
            return Err(format!(
                "{}: no session within timeout = {}",
                server.endpoint,
                humantime::format_duration(server.timeout)
            )
            .into())
        }
    }
    let (tx, mut rx) = mpsc::channel(PENDING_NOTIFICATIONS);
    let dropped = Arc::new(AtomicU64::new(0));
    let notifier = Notifier {
        tx,
        dropped: dropped.clone(),
    };
    let subscription = within(
        server.timeout,
        "CreateSubscription",
        session.create_subscription(
            server.publishing_interval,
            LIFETIME_COUNT,
            KEEP_ALIVE_COUNT,
            0,
            0,
            true,
            notifier,
        ),
    )
    .await?
    .map_err(|e| format!("CreateSubscription: {e}"))?;
    if let Some(cycle) = &mut state.cycle {
        // The cycles of the last session still waiting go with the samples
        // held for them, in the next batch.
        cycle.connected(&state.asset, &mut state.held);
    }
    let requests = values::create_requests(server);
    let created = within(
        server.timeout,
        "CreateMonitoredItems",
        session.create_monitored_items(subscription, TimestampsToReturn::Both, requests),
    )
    .await?
    .map_err(|e| format!("CreateMonitoredItems: {e}"))?;
    let mut monitored = 0;
    for (i, item) in created.iter().enumerate() {
        let handle = i as u32 + 1;
        if item.result.status_code.is_bad() {
            if let (Some(Monitor::CycleDuration), Some(cycle)) =
                (state.monitors.get(i), &mut state.cycle)
            {
                cycle.duration_refused();
            }
            state.set_unavailable(link, handle, values::status_name(item.result.status_code));
        } else {
            monitored += 1;
            state.set_available(link, handle);
        }
    }
    backoff.reset();
    link.succeeded(started.elapsed());
    tracing::info!(
        endpoint = %server.endpoint,
        monitored,
        unavailable = state.unavailable.len(),
        "opcua session up, items subscribed"
    );
    // Whether the connection still stands when the loop ends.
    let mut connected = true;
    let ended = loop {
        tokio::select! {
            note = rx.recv() => {
                let Some(note) = note else {
                    break Ended::Lost("the subscription ended".into());
                };
                let mut notes = vec![note];
                while notes.len() < BATCH {
                    match rx.try_recv() {
                        Ok(note) => notes.push(note),
                        Err(_) => break,
                    }
                }
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    link.metrics.errors.fetch_add(lost, Ordering::Relaxed);
                    tracing::warn!(dropped = lost, "opcua notifications dropped: the queue did not take them in time");
                }
                let (events, age, ended) = state.events(link, notes);
                link.take(events).await.map_err(SessionError::Queue)?;
                if let Some(status) = ended {
                    break Ended::Lost(format!("{}: the server ended the subscription: {status}", server.endpoint));
                }
                link.succeeded(age);
            }
            lost = up_rx.recv() => {
                match lost {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        connected = false;
                        break Ended::Lost(format!("{}: {e}", server.endpoint));
                    }
                    None => {
                        connected = false;
                        break Ended::Lost(format!("{}: session closed", server.endpoint));
                    }
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ended::Shutdown;
                }
            }
        }
    };
    if connected {
        // Deletes the subscription and closes the session, so the server
        // frees them now rather than at their timeout.
        let _ = tokio::time::timeout(server.timeout, session.disconnect()).await;
    }
    drop(driver);
    Ok(ended)
}

/// Runs `request` within `timeout`.
async fn within<T>(
    timeout: Duration,
    what: &str,
    request: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, request).await.map_err(|_| {
        format!(
            "{what}: no answer within timeout = {}",
            humantime::format_duration(timeout)
        )
    })
}

/// The client of one server: its application identity and certificate
/// store; no session of its own (each session reconnects from scratch).
fn build_client(server: &OpcuaServerConfig, pki: &Path) -> Result<Client, String> {
    let mut builder = ClientBuilder::new()
        .application_name("otwatch-agent")
        .application_uri(server.application_uri.trim())
        .product_uri("urn:otwatch:agent")
        .create_sample_keypair(false)
        .pki_dir(pki)
        .trust_server_certs(false)
        .verify_server_certs(true)
        // The source reconnects by itself, with a new session.
        .session_retry_limit(0)
        .request_timeout(server.timeout)
        .keep_alive_interval(server.keep_alive)
        .max_failed_keep_alive_count(3)
        .session_timeout(60_000)
        .session_name(format!("otwatch {}", server.name));
    if let (Some(cert), Some(key)) = (&server.certificate, &server.private_key) {
        CertificateStore::read_cert(cert)
            .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
        CertificateStore::read_pkey(key)
            .map_err(|e| format!("private_key {}: {e}", key.display()))?;
        builder = builder.certificate_path(cert).private_key_path(key);
    }
    builder
        .client()
        .map_err(|errors| format!("opcua client: {}", errors.join("; ")))
}

/// Makes the certificate store of a server anew: its trusted list is a
/// copy of `trusted_server_certs` (under the names the store looks for),
/// its rejected list empty.
fn prepare_pki(pki: &Path, server: &OpcuaServerConfig) -> Result<(), String> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let trusted = pki.join("trusted");
    for dir in [trusted.clone(), pki.join("rejected")] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    let Some(source) = &server.trusted_server_certs else {
        return Ok(());
    };
    let entries = std::fs::read_dir(source)
        .map_err(|e| format!("trusted_server_certs {}: {e}", source.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| io(source, e))?.path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("der" | "pem")
        ) {
            continue;
        }
        let cert = match CertificateStore::read_cert(&path) {
            Ok(cert) => cert,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping a file of trusted_server_certs that is no certificate");
                continue;
            }
        };
        let der = cert
            .to_der()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let copy = trusted.join(CertificateStore::cert_file_name(&cert));
        std::fs::write(&copy, der).map_err(|e| io(&copy, e))?;
    }
    Ok(())
}

/// Adds to a failed session's error the server certificate the store
/// refused, if any, and how to trust it.
fn explain_rejection(pki: &Path, error: &str) -> String {
    let rejected: Vec<String> = std::fs::read_dir(pki.join("rejected"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    if rejected.is_empty() {
        error.to_string()
    } else {
        format!(
            "{error}; the server's certificate is not trusted: {} (copy it into trusted_server_certs to trust it)",
            rejected.join(", ")
        )
    }
}

/// The session's user identity; the password read now from its file or
/// variable.
fn identity(server: &OpcuaServerConfig) -> Result<IdentityToken, String> {
    if let (Some(cert), Some(key)) = (&server.user_certificate, &server.user_private_key) {
        return IdentityToken::new_x509_path(cert, key).map_err(|e| {
            format!(
                "user_certificate {} / user_private_key {}: {e}",
                cert.display(),
                key.display()
            )
        });
    }
    let Some(user) = &server.username else {
        return Ok(IdentityToken::Anonymous);
    };
    let password = super::read_password(
        server.password_file.as_deref(),
        server.password_env.as_deref(),
    )?
    .unwrap_or_default();
    Ok(IdentityToken::new_user_name(user.clone(), password))
}
