//! What the polled sources share (`modbus`, `slmp`, and any source that asks
//! a controller for values on a schedule): the options every polled device
//! has and their checks, the pacing that keeps a device below its request
//! ceiling, reconnect backoff, per-device metrics, and the device's status
//! lines and value checks on the way to the queue.
//!
//! Promises (see the module documentation of [`crate::source`]):
//!
//! - `poll_interval` is at least [`MIN_POLL_INTERVAL`]; `max_requests_per_second`
//!   is 1 to [`MAX_REQUESTS_PER_SECOND`]; a device whose requests per poll
//!   divided by its `poll_interval` exceed its `max_requests_per_second` is
//!   refused at load ([`PollSettings::check`]);
//! - at run time, [`Pacer`] spaces a device's requests at least
//!   `1 / max_requests_per_second` apart, whatever the configuration and
//!   however often a poll is retried;
//! - a failure is logged once when it starts (and again when the error
//!   changes), a recovery once with the outage's length and failed attempts,
//!   and [`DeviceMetrics`] count everything for `/metrics` and the periodic
//!   status line.

use super::SourceMetrics;
use crate::handle::QueueHandle;
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventKind};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Shortest `poll_interval` a device may have: a controller's
/// communication processor serves its HMIs and engineering tools too.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Highest `max_requests_per_second` a device may be given.
pub const MAX_REQUESTS_PER_SECOND: u32 = 100;
/// Default `max_requests_per_second`.
pub const DEFAULT_MAX_REQUESTS_PER_SECOND: u32 = 20;

pub fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

pub fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

pub fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}

pub fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}

pub fn default_max_requests_per_second() -> u32 {
    DEFAULT_MAX_REQUESTS_PER_SECOND
}

/// When a polled device's numeric values become SAMPLE events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleReport {
    /// Every poll (the default: the detector's models expect a steady
    /// cadence, and a silent tag looks like a silent controller).
    #[default]
    EveryPoll,
    /// When the value moved by more than the tag's `deadband` since it was
    /// last reported (and at its first reading).
    OnChange,
    /// When a machine cycle ends (devices with a `cycle` only): the values
    /// a controller holds at each cycle's end, once per cycle, with the
    /// cycle's CYCLE event.
    OnCycle,
}

/// The options every polled device has (each protocol's device section
/// carries them as keys of its own; serde cannot flatten them into a
/// section that refuses unknown keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollSettings {
    /// How often the device is read.
    pub poll_interval: Duration,
    /// Longest wait for a connection or an answer; a request that times out
    /// drops the connection (a late answer would be taken for the next one).
    pub timeout: Duration,
    /// First wait before reconnecting after a failure, doubled up to
    /// `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Ceiling on the requests the device gets per second.
    pub max_requests_per_second: u32,
}

impl PollSettings {
    /// Refuses settings that could load a controller or cannot work; `what`
    /// names the device in the message (`modbus device "press-07"`) and
    /// `requests_per_poll` is how many requests one poll takes.
    pub fn check(&self, what: &str, requests_per_poll: usize) -> Result<(), String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.poll_interval < MIN_POLL_INTERVAL {
            return Err(format!(
                "{what}: poll_interval = {} is below the floor of {}: a controller must not be polled faster",
                fmt(self.poll_interval),
                fmt(MIN_POLL_INTERVAL)
            ));
        }
        if self.max_requests_per_second == 0
            || self.max_requests_per_second > MAX_REQUESTS_PER_SECOND
        {
            return Err(format!(
                "{what}: max_requests_per_second = {} must be 1 to {MAX_REQUESTS_PER_SECOND}",
                self.max_requests_per_second
            ));
        }
        let per_second = requests_per_poll as f64 / self.poll_interval.as_secs_f64();
        if per_second > f64::from(self.max_requests_per_second) {
            return Err(format!(
                "{what}: one poll takes {requests_per_poll} request(s); every poll_interval = {} that is {per_second:.1} requests/s, \
                 above max_requests_per_second = {}: raise poll_interval, read fewer or more contiguous addresses, or raise max_requests_per_second",
                fmt(self.poll_interval),
                self.max_requests_per_second
            ));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(format!(
                "{what}: timeout = {} must be at least 10ms",
                fmt(self.timeout)
            ));
        }
        check_reconnect(what, self.reconnect_min, self.reconnect_max)
    }
}

/// Refuses a reconnect backoff that would retry a dead device in a tight
/// loop (`reconnect_min` below [`MIN_POLL_INTERVAL`]) or that cannot grow
/// (`reconnect_min` above `reconnect_max`); `what` names the device.
pub fn check_reconnect(what: &str, min: Duration, max: Duration) -> Result<(), String> {
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    if min < MIN_POLL_INTERVAL {
        return Err(format!(
            "{what}: reconnect_min = {} is below {}: a dead device would be retried in a tight loop",
            fmt(min),
            fmt(MIN_POLL_INTERVAL)
        ));
    }
    if min > max {
        return Err(format!(
            "{what}: reconnect_min ({}) is above reconnect_max ({})",
            fmt(min),
            fmt(max)
        ));
    }
    Ok(())
}

/// Spaces one device's requests at least `1 / max_requests_per_second`
/// apart.
#[derive(Debug)]
pub struct Pacer {
    gap: Duration,
    last: Option<tokio::time::Instant>,
}

impl Pacer {
    pub fn new(max_requests_per_second: u32) -> Pacer {
        Pacer {
            gap: Duration::from_secs_f64(1.0 / f64::from(max_requests_per_second.max(1))),
            last: None,
        }
    }

    /// Waits until the next request may go out, and counts it as sent.
    pub async fn wait(&mut self) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + self.gap).await;
        }
        self.last = Some(tokio::time::Instant::now());
    }
}

/// Exponential backoff with jitter between `reconnect_min` and
/// `reconnect_max`, so devices that fail together do not reconnect together.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt (half to all of the current step),
    /// doubling the step for the one after.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        rand::rng().random_range(step / 2..=step)
    }

    /// After a success: the next failure waits `reconnect_min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Counters of one polled device, on `/metrics` labelled by source and
/// device, and in the periodic status line.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// `modbus`, `slmp`, ...
    pub source: &'static str,
    /// The device's `name` in the configuration.
    pub device: String,
    /// Polls that read every value.
    pub polls: AtomicU64,
    /// Failed connections, polls and requests.
    pub errors: AtomicU64,
    /// Values refused by the limits (each logged with its tag).
    pub rejected: AtomicU64,
    /// Events handed to the queue.
    pub events: AtomicU64,
    /// The last poll succeeded.
    pub up: AtomicBool,
    /// Unix time of the last successful poll, in milliseconds (0: none yet).
    pub last_success_unix_ms: AtomicU64,
    /// Latency of the last successful poll (all its requests), in µs.
    pub last_latency_us: AtomicU64,
    /// Sum of the latencies of the successful polls, in µs: divided by
    /// `polls`, the mean latency.
    pub latency_us_total: AtomicU64,
    /// Subscribed items the device does not serve now (an unknown node, a
    /// bad status), each logged (`opcua`; 0 for the polled sources).
    pub items_unavailable: AtomicU64,
}

impl DeviceMetrics {
    pub fn new(source: &'static str, device: &str) -> DeviceMetrics {
        DeviceMetrics {
            source,
            device: device.to_string(),
            ..DeviceMetrics::default()
        }
    }

    /// Logs the device's status line (the agent's periodic status).
    pub fn log_status(&self) {
        let r = Ordering::Relaxed;
        let last_success_ms = self.last_success_unix_ms.load(r);
        let since_success = (last_success_ms > 0).then(|| {
            let now = now_ns() / 1_000_000;
            humantime::format_duration(Duration::from_secs(
                (now as u64).saturating_sub(last_success_ms) / 1000,
            ))
            .to_string()
        });
        tracing::info!(
            source = self.source,
            device = %self.device,
            up = self.up.load(r),
            polls = self.polls.load(r),
            errors = self.errors.load(r),
            rejected = self.rejected.load(r),
            events = self.events.load(r),
            last_success_ago = since_success.as_deref().unwrap_or("never"),
            last_latency_ms = self.last_latency_us.load(r) as f64 / 1000.0,
            items_unavailable = self.items_unavailable.load(r),
            "device status"
        );
    }
}

/// Nanoseconds since the epoch, now (the `ts` of polled events).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `ts` of a poll's events from a controller clock reading (Unix time in
/// ms): whole milliseconds first, as ms × 1e6 in a float would round to a
/// multiple of 128 ns (f64 holds 53 bits). `None` for a clock that reads
/// nothing sensible (0 before it is set, a NaN, beyond the range of `ts`):
/// the caller then uses the agent's clock.
pub fn controller_time_ns(ms: f64) -> Option<i64> {
    (ms.is_finite() && ms > 0.0 && ms < (i64::MAX / 1_000_000) as f64)
        .then(|| (ms.round() as i64) * 1_000_000)
}

/// Most CYCLE events one poll reports for a counter that jumped.
pub const MAX_CYCLES_PER_POLL: u64 = 100;

/// Machine cycles of a polled device (`cycle = { ... }`). Exactly one of
/// `counter` and `done`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleConfig {
    /// An integer tag the controller increments once per cycle: each
    /// increase by k ends k cycles. A decrease is a reset (no cycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
    /// A bit tag the controller sets when a cycle is done: each rising
    /// edge ends a cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// A number tag holding the last cycle's duration in milliseconds
    /// (after scale), measured by the controller. Without it, the duration
    /// is the time between the polls that saw two cycles end, accurate to a
    /// `poll_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The CYCLE events' `name`. Default `cycle`.
    #[serde(default = "default_cycle_name")]
    pub name: String,
}

fn default_cycle_name() -> String {
    "cycle".into()
}

/// Turns the readings of a cycle's marker (counter, or done bit as 0/1)
/// into CYCLE events, the same way for every polled source.
#[derive(Debug, Clone)]
pub struct CycleTracker {
    is_counter: bool,
    name: String,
    /// The marker's last reading.
    last: Option<f64>,
    /// When the last cycle was seen to end (ns), if known.
    last_end: Option<i64>,
}

impl CycleTracker {
    pub fn new(config: &CycleConfig) -> CycleTracker {
        CycleTracker {
            is_counter: config.counter.is_some(),
            name: config.name.clone(),
            last: None,
            last_end: None,
        }
    }

    /// After a (re)connection: what happened while the device was not read
    /// is unknown, so the next cycle's start is too.
    pub fn connected(&mut self) {
        self.last = None;
        self.last_end = None;
    }

    /// The CYCLE events of a poll that read `marker` (and the controller's
    /// `controller_ms` of the last cycle, when configured) at `now`;
    /// returns whether a cycle ended (even one whose duration is unknown).
    pub fn update(
        &mut self,
        asset: &str,
        marker: f64,
        controller_ms: Option<f64>,
        now: i64,
        out: &mut Vec<ControllerEvent>,
    ) -> bool {
        let ended = match self.last {
            None => 0,
            Some(last) if self.is_counter && marker >= last => (marker - last) as u64,
            // A counter that went back was reset: no cycle, and the next
            // one's start is unknown.
            Some(_) if self.is_counter => u64::MAX,
            Some(last) => u64::from(last == 0.0 && marker != 0.0),
        };
        self.last = Some(marker);
        if ended == u64::MAX {
            self.last_end = None;
            return false;
        }
        if ended == 0 {
            return false;
        }
        let measured = self
            .last_end
            .map(|start| (now - start) as f64 / 1e6 / ended as f64);
        self.last_end = Some(now);
        let (duration, count) = match controller_ms {
            // The controller knows the last cycle only.
            Some(ms) => (ms, 1),
            None => match measured {
                Some(ms) => (ms, ended.min(MAX_CYCLES_PER_POLL)),
                None => return true,
            },
        };
        for _ in 0..count {
            let mut e = device_event(asset, now, EventKind::Cycle, &self.name);
            e.value = Some(duration);
            out.push(e);
        }
        true
    }
}

/// A configured device of a source that runs one task per device (a
/// Modbus device, a MELSEC CPU, an OPC UA server).
pub trait Device: Send + 'static {
    /// Its name in metrics (`device` label) and logs.
    fn name(&self) -> &str;
    /// The `asset` of its events.
    fn asset(&self) -> &str;
}

/// The metrics of each device, in configuration order.
pub fn device_metrics<D: Device>(source: &'static str, devices: &[D]) -> Vec<Arc<DeviceMetrics>> {
    devices
        .iter()
        .map(|d| Arc::new(DeviceMetrics::new(source, d.name())))
        .collect()
}

/// Runs `serve` for every device in a task of its own, inside a `device`
/// span (source, device, asset) and with its own [`DeviceLink`], so that a
/// dead or slow device costs only its own task. Returns when every task has
/// ended; the first task that fails (a queue that stopped for good) ends
/// the source.
pub async fn run_devices<D, F, Fut>(
    source: &'static str,
    devices: Vec<D>,
    device_metrics: Vec<Arc<DeviceMetrics>>,
    source_metrics: Arc<SourceMetrics>,
    limits: Limits,
    queue: QueueHandle,
    mut serve: F,
) -> Result<(), String>
where
    D: Device,
    F: FnMut(D, DeviceLink) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (device, metrics) in devices.into_iter().zip(device_metrics) {
        let span = tracing::info_span!(
            "device",
            source,
            device = %device.name(),
            asset = %device.asset()
        );
        let link = DeviceLink::new(
            metrics,
            source_metrics.clone(),
            limits.clone(),
            queue.clone(),
        );
        tasks.spawn(serve(device, link).instrument(span));
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("a {source} device task failed: {e}")),
        }
    }
    Ok(())
}

/// One device's way to the queue: checks its events, appends them, counts
/// and logs its failures and recoveries. Runs inside the device's span
/// (source, device, asset).
pub struct DeviceLink {
    pub metrics: Arc<DeviceMetrics>,
    source_metrics: Arc<SourceMetrics>,
    limits: Limits,
    queue: QueueHandle,
    /// Since when the device fails, how many attempts failed, and the error
    /// last logged.
    outage: Option<(Instant, u64, String)>,
    /// Tags whose value is currently refused, with the reason logged.
    bad_tags: HashMap<String, String>,
}

impl DeviceLink {
    pub fn new(
        metrics: Arc<DeviceMetrics>,
        source_metrics: Arc<SourceMetrics>,
        limits: Limits,
        queue: QueueHandle,
    ) -> DeviceLink {
        DeviceLink {
            metrics,
            source_metrics,
            limits,
            queue,
            outage: None,
            bad_tags: HashMap::new(),
        }
    }

    /// A poll that read every value, in `latency`.
    pub fn succeeded(&mut self, latency: Duration) {
        let m = &self.metrics;
        let r = Ordering::Relaxed;
        let us = latency.as_micros() as u64;
        m.polls.fetch_add(1, r);
        m.last_latency_us.store(us, r);
        m.latency_us_total.fetch_add(us, r);
        m.last_success_unix_ms
            .store((now_ns() / 1_000_000) as u64, r);
        m.up.store(true, r);
        if let Some((since, failures, _)) = self.outage.take() {
            tracing::info!(
                down_for = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                failed_attempts = failures,
                "device answers again"
            );
        }
    }

    /// A failed connection, request or poll. Logged at its first occurrence
    /// in an outage and whenever the error changes, counted always.
    pub fn failed(&mut self, error: &str, retry_in: Option<Duration>) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.up.store(false, Ordering::Relaxed);
        let log = match &mut self.outage {
            None => {
                self.outage = Some((Instant::now(), 1, error.to_string()));
                true
            }
            Some((_, failures, last)) => {
                *failures += 1;
                let changed = last != error;
                if changed {
                    *last = error.to_string();
                }
                changed
            }
        };
        if log {
            let retry_in = retry_in.map(|d| humantime::format_duration(d).to_string());
            tracing::warn!(
                %error,
                retry_in = retry_in.as_deref().unwrap_or("next poll"),
                "device failed; the other devices go on"
            );
        }
    }

    /// Checks each event against the limits (a refused value is logged when
    /// its tag turns bad, counted each time, and skipped) and appends the
    /// rest to the queue in one all-or-nothing append. Errs only when the
    /// queue has stopped for good.
    pub async fn take(&mut self, events: Vec<ControllerEvent>) -> Result<(), String> {
        let now = now_ns();
        let mut good = Vec::with_capacity(events.len());
        for event in events {
            match self.limits.check_event(0, &event, now) {
                Ok(()) => {
                    if !self.bad_tags.is_empty() {
                        if let Some(reason) = self.bad_tags.remove(&event.name) {
                            tracing::info!(tag = %event.name, was = %reason, "tag has a valid value again");
                        }
                    }
                    good.push(event);
                }
                Err(e) => {
                    self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    self.source_metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    let reason = e.to_string().replacen("event 0: ", "", 1);
                    if self.bad_tags.get(&event.name) != Some(&reason) {
                        tracing::warn!(tag = %event.name, %reason, "skipping a value the limits refuse (logged once until the tag is valid again; counted each time)");
                        self.bad_tags.insert(event.name.clone(), reason);
                    }
                }
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        let n = good.len() as u64;
        self.queue.append(good).await.map_err(|e| e.to_string())?;
        self.metrics.events.fetch_add(n, Ordering::Relaxed);
        self.source_metrics.events.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// An event of `asset` at `ts_ns` (the fields polled sources fill first).
pub fn device_event(asset: &str, ts_ns: i64, kind: EventKind, name: &str) -> ControllerEvent {
    ControllerEvent {
        ts_ns,
        asset: asset.to_string(),
        kind: kind as i32,
        name: name.to_string(),
        ..Default::default()
    }
}

/// Turns a device's tag values into events, the same way for every polled
/// source: a number becomes a SAMPLE (every poll, or when it moved by more
/// than the tag's deadband: [`SampleReport`]), a bit a STATE `ON` / `OFF`
/// when it changes (and at its first reading).
#[derive(Debug)]
pub struct TagReporter {
    samples: SampleReport,
    /// Per tag (by index), the value last reported.
    last: Vec<Option<f64>>,
}

/// What [`TagReporter::report`] needs to know of a tag.
#[derive(Debug, Clone, Copy)]
pub struct TagValue<'a> {
    pub name: &'a str,
    pub value: f64,
    /// A coil, input or bit device: reported as STATE on change.
    pub bit: bool,
    pub unit: Option<&'a str>,
    pub deadband: f64,
}

impl TagReporter {
    pub fn new(samples: SampleReport, tags: usize) -> TagReporter {
        TagReporter {
            samples,
            last: vec![None; tags],
        }
    }

    /// The event tag `index` gives with this value, if any.
    pub fn report(
        &mut self,
        asset: &str,
        now: i64,
        index: usize,
        tag: TagValue<'_>,
        out: &mut Vec<ControllerEvent>,
    ) {
        let last = self.last[index];
        let value = tag.value;
        let report = match (tag.bit, self.samples, last) {
            (true, _, last) => last != Some(value),
            // With on_cycle the caller reports only when a cycle ended.
            (false, SampleReport::EveryPoll | SampleReport::OnCycle, _) | (false, _, None) => true,
            // A NaN is reported (and refused, logged and counted downstream).
            (false, SampleReport::OnChange, Some(last)) => matches!(
                (value - last).abs().partial_cmp(&tag.deadband),
                Some(std::cmp::Ordering::Greater) | None
            ),
        };
        if !report {
            return;
        }
        let mut e = if tag.bit {
            let mut e = device_event(asset, now, EventKind::State, tag.name);
            e.text = Some(if value != 0.0 { "ON" } else { "OFF" }.into());
            e
        } else {
            device_event(asset, now, EventKind::Sample, tag.name)
        };
        e.value = Some(value);
        if let Some(unit) = tag.unit {
            e.attrs.insert("unit".to_string(), unit.to_string());
        }
        out.push(e);
        self.last[index] = Some(value);
    }
}

/// Records a failure of `link` and waits the next pause of `backoff` before
/// the device is tried again (less if `shutdown` turns true): returns
/// whether to stop.
pub async fn fail_and_back_off(
    link: &mut DeviceLink,
    error: &str,
    backoff: &mut Backoff,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let wait = backoff.next_wait();
    link.failed(error, Some(wait));
    sleep_or_stop(wait, shutdown).await
}

/// Sleeps `wait`, or less if `shutdown` turns true: returns whether it did.
pub async fn sleep_or_stop(
    wait: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.changed() => {}
    }
    *shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PollSettings {
        PollSettings {
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            max_requests_per_second: 20,
        }
    }

    #[test]
    fn rates_that_could_load_a_controller_are_refused_naming_the_key() {
        let ok = settings();
        ok.check("d", 20).unwrap();
        let fast = PollSettings {
            poll_interval: Duration::from_millis(50),
            ..ok
        };
        let err = fast.check("modbus device \"a\"", 1).unwrap_err();
        assert!(
            err.contains("modbus device \"a\": poll_interval = 50ms is below the floor of 100ms"),
            "{err}"
        );
        let err = ok.check("d", 21).unwrap_err();
        assert!(err.contains("21 request(s)"), "{err}");
        assert!(err.contains("max_requests_per_second = 20"), "{err}");
        for rps in [0, MAX_REQUESTS_PER_SECOND + 1] {
            let err = PollSettings {
                max_requests_per_second: rps,
                ..ok
            }
            .check("d", 1)
            .unwrap_err();
            assert!(err.contains("max_requests_per_second"), "{err}");
        }
        let err = PollSettings {
            reconnect_min: Duration::from_millis(10),
            ..ok
        }
        .check("d", 1)
        .unwrap_err();
        assert!(err.contains("reconnect_min"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_requests_by_the_ceiling() {
        let mut pacer = Pacer::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // Five requests at 10/s: the fifth goes out 400 ms after the first
        // (paused clock: exact).
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        for (wait, step) in waits.iter().zip([1, 2, 4, 4, 4]) {
            let step = Duration::from_secs(step);
            assert!(*wait >= step / 2 && *wait <= step, "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
