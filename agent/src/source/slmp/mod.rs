//! The `slmp` source: MELSEC CPUs (iQ-R, Q, L, iQ-F/FX5) over SLMP, the MC
//! protocol's 3E frame in binary code, polled read-only. It owns the
//! connection to each configured CPU, the batch reads of its devices (as
//! few as the protocol allows: devices of one kind within `max_gap` of each
//! other share a read of up to 960 words or 7168 bits) and the events they
//! give; it keeps every promise of [`crate::source`]. The client
//! ([`client`]) can send batch reads and the CPU model read, nothing else.
//!
//! # Events
//!
//! `ts` is the CPU's clock when a `clock` tag is configured (Unix time in
//! ms), otherwise the agent's clock when the poll's answers arrived;
//! `asset` the device's.
//!
//! - **STATE** `mode`, `text` = `RUN`, `STOP` or `PAUSE` (SD203 bits 0-3;
//!   `UNKNOWN(n)` otherwise), `value` = that number: when it changes, and at
//!   the first reading after the agent starts (`status = true`).
//! - **CYCLE** `scan`, `value` = current scan time in ms (SD520 ms + SD521
//!   µs / 1000), every poll (`scan_time = true`). A new program usually
//!   scans in another time; a scan time far off its learned band is worth
//!   an alert.
//! - **CHANGE** `cpu_model`, `text` = `<model name> (<code, hex>)`: at the
//!   first model read ever, and whenever another model answers (a replaced
//!   CPU).
//! - **CHANGE** `program`, `text` = `crc32c:<8 hex digits>` of the
//!   `program_devices` words, attribute `previous` (the fingerprint before):
//!   at the first reading ever and whenever it differs. The last model and
//!   fingerprint are kept in `data_dir/sources/slmp-<crc32c of the device
//!   name>.json` (`{"cpu_model":"…","program":"crc32c:…"}`, replaced
//!   atomically once the CHANGE is in the queue), so a program downloaded
//!   while the agent was stopped is still reported, and a restart reports
//!   nothing new.
//! - **CYCLE** `cycle.name` (`cycle`), `value` = duration in ms: each
//!   machine cycle the `cycle` counter or done bit shows, as for Modbus
//!   (the duration from the `cycle.duration` tag when configured).
//! - **SAMPLE** per word tag (every poll, on change, or when a cycle ends),
//!   **STATE** `ON`/`OFF` per bit tag (on change), as for Modbus. Tags
//!   used as cycle counter, done bit, cycle duration or clock are reported
//!   through those events only.
//!
//! A CPU that goes to STOP for a program download and back to RUN shows as
//! `mode` RUN → STOP → RUN, then `program` CHANGE; a download while running
//! (online change) shows as the CHANGE alone.

mod client;
pub mod config;
pub mod frame;
pub mod server;
#[cfg(test)]
mod tests;

pub use config::SlmpSourceConfig;

use super::poll::{
    self, device_event, fail_and_back_off, now_ns, Backoff, CycleTracker, DeviceLink,
    DeviceMetrics, Pacer, SampleReport, TagReporter, TagValue,
};
use super::SourceMetrics;
use crate::handle::QueueHandle;
use client::{SlmpClient, SlmpError};
use config::{SlmpDeviceConfig, SlmpType};
use frame::{Device, MAX_READ_BITS, MAX_READ_WORDS};
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Operating status (bits 0-3: 0 RUN, 1 STOP, 2 PAUSE).
const STATUS_DEVICE: &str = "SD203";
/// Current scan time: ms, then µs (two words).
const SCAN_TIME_DEVICE: &str = "SD520";

/// The metrics of each configured CPU, in configuration order.
pub fn device_metrics(config: &SlmpSourceConfig) -> Vec<Arc<DeviceMetrics>> {
    poll::device_metrics("slmp", &config.devices)
}

/// Runs the source until `shutdown` turns true: one task per CPU. Fails
/// only when the queue stops for good or the state directory is unusable.
pub async fn run(
    config: SlmpSourceConfig,
    state_dir: PathBuf,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    devices: Vec<Arc<DeviceMetrics>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    otwatch_fs::create_dir_all_durable(&state_dir).map_err(|e| e.to_string())?;
    poll::run_devices(
        "slmp",
        config.devices,
        devices,
        metrics,
        limits,
        queue,
        |device, link| {
            let state_file = state_dir.join(format!(
                "slmp-{:08x}.json",
                crc32c::crc32c(device.name.as_bytes())
            ));
            poll_device(device, state_file, link, shutdown.clone())
        },
    )
    .await
}

/// One batch read of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub head: Device,
    pub count: u16,
}

/// The batch reads of one poll: every device the poll needs (tags, status,
/// scan time, program devices), joined per device kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub reads: Vec<Read>,
}

impl Plan {
    pub fn new(device: &SlmpDeviceConfig) -> Plan {
        let mut needs: Vec<(Device, u32)> = Vec::new();
        for tag in &device.tags {
            if let Ok(head) = Device::parse(&tag.device) {
                needs.push((head, u32::from(tag.data_type().words())));
            }
        }
        if device.status {
            needs.push((Device::parse(STATUS_DEVICE).expect("a device"), 1));
        }
        if device.scan_time {
            needs.push((Device::parse(SCAN_TIME_DEVICE).expect("a device"), 2));
        }
        for range in &device.program_devices {
            if let Ok(head) = Device::parse(&range.device) {
                needs.push((head, u32::from(range.count)));
            }
        }
        needs.sort();
        let mut reads: Vec<Read> = Vec::new();
        for (head, width) in needs {
            let max = u32::from(if head.ty.bit {
                MAX_READ_BITS
            } else {
                MAX_READ_WORDS
            });
            let joins = reads
                .last()
                .filter(|r| r.head.ty == head.ty)
                .is_some_and(|r| {
                    let end = r.head.number + u32::from(r.count);
                    head.number <= end + u32::from(device.max_gap)
                        && (head.number + width).max(end) - r.head.number <= max
                });
            if joins {
                let r = reads.last_mut().expect("joins a read");
                let end = (r.head.number + u32::from(r.count)).max(head.number + width);
                r.count = (end - r.head.number) as u16;
            } else {
                reads.push(Read {
                    head,
                    count: width as u16,
                });
            }
        }
        Plan { reads }
    }

    /// (read, offset) of `device`'s value in the answers.
    fn locate(&self, device: Device) -> (usize, usize) {
        self.reads
            .iter()
            .position(|r| {
                r.head.ty == device.ty
                    && device.number >= r.head.number
                    && device.number < r.head.number + u32::from(r.count)
            })
            .map(|i| (i, (device.number - self.reads[i].head.number) as usize))
            .expect("every device of the poll is in a read")
    }
}

/// What one read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Values {
    fn words(&self, offset: usize, n: usize) -> &[u16] {
        match self {
            Values::Words(w) => &w[offset..offset + n],
            Values::Bits(_) => &[],
        }
    }
}

/// The last CPU model and program fingerprint seen, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    program: Option<String>,
}

impl Saved {
    fn load(path: &Path) -> Saved {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable slmp state; the next model and program are reported as new");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        }
    }
}

/// Resolves and connects within the device's timeout.
async fn connect(device: &SlmpDeviceConfig) -> Result<SlmpClient, String> {
    let attempt = async {
        let addr = tokio::net::lookup_host(&device.address)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "the name resolves to no address".to_string())?;
        SlmpClient::connect(addr, device.series, device.timeout)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(device.timeout, attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", device.address)),
        Err(_) => Err(format!(
            "cannot connect to {}: no answer within timeout = {}",
            device.address,
            humantime::format_duration(device.timeout)
        )),
    }
}

/// Runs one request within `timeout`; a timeout breaks the connection.
async fn within<T>(
    timeout: Duration,
    what: &str,
    request: impl std::future::Future<Output = Result<T, SlmpError>>,
) -> Result<T, SlmpError> {
    tokio::time::timeout(timeout, request).await.map_err(|_| {
        SlmpError::Transport(format!(
            "no answer to the {what} within timeout = {}",
            humantime::format_duration(timeout)
        ))
    })?
}

/// Polls one CPU until `shutdown`, reconnecting as needed.
async fn poll_device(
    device: SlmpDeviceConfig,
    state_file: PathBuf,
    mut link: DeviceLink,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let plan = Plan::new(&device);
    let mut state = DeviceState::new(&device, &plan, Saved::load(&state_file));
    let mut backoff = Backoff::new(device.reconnect_min, device.reconnect_max);
    let mut pacer = Pacer::new(device.max_requests_per_second);
    tracing::info!(
        address = %device.address,
        series = ?device.series,
        tags = device.tags.len(),
        requests_per_poll = plan.reads.len(),
        poll_interval = %humantime::format_duration(device.poll_interval),
        "polling slmp device"
    );
    while !*shutdown.borrow() {
        pacer.wait().await;
        let mut client = match connect(&device).await {
            Ok(client) => client,
            Err(e) => {
                if fail_and_back_off(&mut link, &e, &mut backoff, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        state.connected();
        let mut identity_due = Some(Instant::now()).filter(|_| !device.identity_interval.is_zero());
        let mut ticker = tokio::time::interval(device.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let mut model = None;
            let mut result = Ok(Vec::new());
            if identity_due.is_some_and(|due| due <= started) {
                pacer.wait().await;
                match within(device.timeout, "CPU model read", client.read_type_name()).await {
                    Ok(m) => {
                        model = Some(m);
                        identity_due = Some(started + device.identity_interval);
                    }
                    Err(e) => result = Err(e),
                }
            }
            if result.is_ok() {
                result = read_all(&mut client, &plan, &mut pacer, device.timeout).await;
            }
            match result {
                Ok(values) => {
                    link.succeeded(started.elapsed());
                    backoff.reset();
                    let now = state.time(&values, now_ns());
                    let mut events = Vec::new();
                    if let Some((name, code)) = model {
                        state.model_events(&name, code, now, &mut events);
                    }
                    state.events(&values, now, &mut events);
                    link.take(events).await?;
                    state.save(&state_file);
                }
                Err(e) if e.breaks_connection() => {
                    if fail_and_back_off(&mut link, &e.to_string(), &mut backoff, &mut shutdown)
                        .await
                    {
                        return Ok(());
                    }
                    break;
                }
                Err(e) => link.failed(&e.to_string(), None),
            }
        }
    }
    Ok(())
}

/// Every batch read of the plan, paced, each within `timeout`.
async fn read_all(
    client: &mut SlmpClient,
    plan: &Plan,
    pacer: &mut Pacer,
    timeout: Duration,
) -> Result<Vec<Values>, SlmpError> {
    let mut values = Vec::with_capacity(plan.reads.len());
    for read in &plan.reads {
        pacer.wait().await;
        let what = format!("read of {} from {}", read.count, read.head);
        let answer = if read.head.ty.bit {
            Values::Bits(within(timeout, &what, client.read_bits(read.head, read.count)).await?)
        } else {
            Values::Words(within(timeout, &what, client.read_words(read.head, read.count)).await?)
        };
        values.push(answer);
    }
    Ok(values)
}

#[derive(Debug)]
struct Tag {
    name: String,
    at: (usize, usize),
    ty: SlmpType,
    scale: f64,
    offset: f64,
    unit: Option<String>,
    deadband: f64,
    /// Reported as SAMPLE or STATE events (not the cycle's or clock's).
    reported: bool,
}

impl Tag {
    /// The tag's value in a poll's answers, after scale and offset.
    fn value(&self, values: &[Values]) -> f64 {
        let (read, offset) = self.at;
        match &values[read] {
            Values::Bits(bits) => f64::from(u8::from(bits[offset])),
            Values::Words(words) => {
                let words = &words[offset..offset + usize::from(self.ty.words())];
                decode(words, self.ty) * self.scale + self.offset
            }
        }
    }
}

/// A device's machine cycles: which tags mark them, and what was seen.
#[derive(Debug)]
struct CycleState {
    marker: usize,
    duration: Option<usize>,
    tracker: CycleTracker,
}

/// The number in `words` (lowest word first) as `ty`.
fn decode(words: &[u16], ty: SlmpType) -> f64 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match ty {
        SlmpType::U16 => f64::from(words[0]),
        SlmpType::I16 => f64::from(words[0] as i16),
        SlmpType::U32 => f64::from(u32::from_le_bytes(bytes[..4].try_into().unwrap())),
        SlmpType::I32 => f64::from(i32::from_le_bytes(bytes[..4].try_into().unwrap())),
        SlmpType::F32 => f64::from(f32::from_le_bytes(bytes[..4].try_into().unwrap())),
        SlmpType::F64 => f64::from_le_bytes(bytes[..8].try_into().unwrap()),
        SlmpType::Bool => f64::from(u8::from(words[0] != 0)),
    }
}

/// A CPU's tags and what it last reported: turns answers into events. No
/// I/O but [`DeviceState::save`].
#[derive(Debug)]
struct DeviceState {
    asset: String,
    tags: Vec<Tag>,
    samples: SampleReport,
    reporter: TagReporter,
    cycle: Option<CycleState>,
    /// The tag holding the CPU's clock (ms since the epoch).
    clock: Option<usize>,
    status: Option<(usize, usize)>,
    last_mode: Option<String>,
    scan: Option<(usize, usize)>,
    program: Vec<(usize, usize, usize)>,
    saved: Saved,
    /// `saved` changed since it was last written.
    dirty: bool,
}

impl DeviceState {
    fn new(device: &SlmpDeviceConfig, plan: &Plan, saved: Saved) -> DeviceState {
        let fixed = |name: &str| plan.locate(Device::parse(name).expect("a device"));
        let index = |name: &str| device.tags.iter().position(|t| t.name == name);
        let cycle = device.cycle.as_ref().and_then(|c| {
            Some(CycleState {
                marker: index(c.counter.as_deref().or(c.done.as_deref())?)?,
                duration: c.duration.as_deref().and_then(index),
                tracker: CycleTracker::new(c),
            })
        });
        let clock = device.clock.as_deref().and_then(index);
        let mut used: Vec<usize> = clock.into_iter().collect();
        if let Some(c) = &cycle {
            used.push(c.marker);
            used.extend(c.duration);
        }
        let tags: Vec<Tag> = device
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| Tag {
                name: t.name.clone(),
                at: plan.locate(t.head()),
                ty: t.data_type(),
                scale: t.scale,
                offset: t.offset,
                unit: t.unit.clone(),
                deadband: t.deadband,
                reported: !used.contains(&i),
            })
            .collect();
        DeviceState {
            asset: device.asset.clone(),
            reporter: TagReporter::new(device.samples, tags.len()),
            tags,
            samples: device.samples,
            cycle,
            clock,
            status: device.status.then(|| fixed(STATUS_DEVICE)),
            last_mode: None,
            scan: device.scan_time.then(|| fixed(SCAN_TIME_DEVICE)),
            program: device
                .program_devices
                .iter()
                .map(|r| {
                    let (read, offset) = plan.locate(Device::parse(&r.device).expect("checked"));
                    (read, offset, usize::from(r.count))
                })
                .collect(),
            saved,
            dirty: false,
        }
    }

    fn event(&self, ts_ns: i64, kind: EventKind, name: &str) -> ControllerEvent {
        device_event(&self.asset, ts_ns, kind, name)
    }

    /// A CHANGE when the CPU model differs from the one last seen.
    fn model_events(&mut self, name: &str, code: u16, now: i64, out: &mut Vec<ControllerEvent>) {
        let model = format!("{name} ({code:04X})");
        if self.saved.cpu_model.as_deref() == Some(model.as_str()) {
            return;
        }
        let mut e = self.event(now, EventKind::Change, "cpu_model");
        e.text = Some(model.clone());
        if let Some(previous) = self.saved.cpu_model.replace(model) {
            e.attrs.insert("previous".into(), previous);
        }
        out.push(e);
        self.dirty = true;
    }

    /// The `ts` of a poll's events: the CPU's clock when a `clock` tag is
    /// configured and reads something sensible, else `now` (the agent's).
    fn time(&self, values: &[Values], now: i64) -> i64 {
        self.clock
            .and_then(|tag| poll::controller_time_ns(self.tags[tag].value(values)))
            .unwrap_or(now)
    }

    /// After a (re)connection: the cycle under way when the CPU was last
    /// read is unknown.
    fn connected(&mut self) {
        if let Some(c) = &mut self.cycle {
            c.tracker.connected();
        }
    }

    /// The events of one poll's answers (one per read of the plan), at
    /// `now` (see [`DeviceState::time`]). A cycle's CYCLE comes before the
    /// SAMPLEs it explains.
    fn events(&mut self, values: &[Values], now: i64, out: &mut Vec<ControllerEvent>) {
        let cycle_ended = match &mut self.cycle {
            Some(c) => {
                let marker = self.tags[c.marker].value(values);
                let controller_ms = c.duration.map(|d| self.tags[d].value(values));
                c.tracker
                    .update(&self.asset, marker, controller_ms, now, out)
            }
            None => false,
        };
        for (i, tag) in self.tags.iter().enumerate() {
            let bit = tag.ty == SlmpType::Bool;
            if !tag.reported || (self.samples == SampleReport::OnCycle && !bit && !cycle_ended) {
                continue;
            }
            let value = TagValue {
                name: &tag.name,
                value: tag.value(values),
                bit,
                unit: tag.unit.as_deref(),
                deadband: tag.deadband,
            };
            self.reporter.report(&self.asset, now, i, value, out);
        }
        if let Some((read, offset)) = self.status {
            let number = values[read].words(offset, 1)[0] & 0x0F;
            let text = match number {
                0 => "RUN".to_string(),
                1 => "STOP".to_string(),
                2 => "PAUSE".to_string(),
                n => format!("UNKNOWN({n})"),
            };
            if self.last_mode.as_deref() != Some(text.as_str()) {
                let mut e = self.event(now, EventKind::State, "mode");
                e.text = Some(text.clone());
                e.value = Some(f64::from(number));
                out.push(e);
                self.last_mode = Some(text);
            }
        }
        if let Some((read, offset)) = self.scan {
            let w = values[read].words(offset, 2);
            let mut e = self.event(now, EventKind::Cycle, "scan");
            e.value = Some(f64::from(w[0]) + f64::from(w[1]) / 1000.0);
            out.push(e);
        }
        if !self.program.is_empty() {
            let mut bytes = Vec::new();
            for &(read, offset, count) in &self.program {
                for w in values[read].words(offset, count) {
                    bytes.extend_from_slice(&w.to_le_bytes());
                }
            }
            let fingerprint = format!("crc32c:{:08x}", crc32c::crc32c(&bytes));
            if self.saved.program.as_deref() != Some(fingerprint.as_str()) {
                let mut e = self.event(now, EventKind::Change, "program");
                e.text = Some(fingerprint.clone());
                if let Some(previous) = self.saved.program.replace(fingerprint) {
                    e.attrs.insert("previous".into(), previous);
                }
                out.push(e);
                self.dirty = true;
            }
        }
    }

    /// Writes the model and fingerprint once their CHANGE is queued. A
    /// failure is logged: the CHANGE would then be reported again after a
    /// restart, never lost.
    fn save(&mut self, path: &Path) {
        if !self.dirty {
            return;
        }
        let text = serde_json::to_vec(&self.saved).expect("serializes");
        match otwatch_fs::write_atomic(path, &text) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the slmp state; retried after the next poll")
            }
        }
    }
}
