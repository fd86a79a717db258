//! The `modbus` source: Modbus/TCP devices, polled read-only. It owns the
//! connection to each configured device, the reads of its tags (as few as
//! the protocol allows, see [`plan`]) and the turning of their values into
//! events; it keeps every promise of [`crate::source`] (read-only,
//! rate-limited, one device never stops the others, per-device metrics and
//! status lines).
//!
//! # Events
//!
//! Every event of a poll carries the device's `asset`, and as `ts` the
//! controller's clock when a `clock` tag is configured (Unix time in ms),
//! otherwise the agent's clock when the poll's last answer arrived.
//!
//! - **SAMPLE**, `name` = tag, `value` = raw × `scale` + `offset`, attribute
//!   `unit` when configured: each register tag, every poll
//!   (`samples = "every_poll"`), when it moved by more than its `deadband`
//!   (`"on_change"`), or when a cycle ends (`"on_cycle"`).
//! - **STATE**, `name` = tag, `text` = `ON` / `OFF`, `value` = 1 / 0: each
//!   coil and discrete input, when it changes (and at its first reading).
//! - **CYCLE**, `name` = `cycle.name` (`cycle`), `value` = duration in ms:
//!   each cycle the counter or done bit shows. The duration is the
//!   controller's (`cycle.duration`) when configured, otherwise the time
//!   between the polls that saw two cycles end: accurate to a
//!   `poll_interval`, and unknown (no event) for the first cycle after a
//!   (re)connection. A counter that moved by k ends k cycles (at most
//!   [`MAX_CYCLES_PER_POLL`] events, each with the mean duration).
//! - **STATE**, `name` = `mode.name` (`mode`), `text` = the mode's text:
//!   when the mode register changes (and at its first reading).
//!
//! Tags used as cycle counter, done bit, cycle duration, mode or clock are
//! reported through those events only. Values the limits refuse (a NaN, an infinite
//! float) are logged with the device and tag, counted and skipped.
//!
//! # Failures
//!
//! A connection that fails, a request that times out or an answer that
//! does not fit drops the connection; the device is reconnected after
//! `reconnect_min` .. `reconnect_max` (exponential, with jitter). An
//! exception answer (illegal address, device busy) fails that poll only.
//! Either way the device's other polls and every other device go on.

mod client;
pub mod config;
pub mod plan;
#[cfg(test)]
mod tests;

pub use config::ModbusSourceConfig;

use super::poll::{
    self, device_event, fail_and_back_off, now_ns, Backoff, CycleTracker, DeviceLink,
    DeviceMetrics, Pacer, TagReporter, TagValue,
};
use super::SourceMetrics;
use crate::handle::QueueHandle;
use client::{ModbusError, ReadOnlyClient, Values};
use config::{ByteOrder, DataType, ModbusDeviceConfig, SampleReport};
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventKind};
use plan::{decode, Plan, Slot};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use super::poll::MAX_CYCLES_PER_POLL;

/// The metrics of each configured device, in configuration order.
pub fn device_metrics(config: &ModbusSourceConfig) -> Vec<Arc<DeviceMetrics>> {
    poll::device_metrics("modbus", &config.devices)
}

/// Runs the source until `shutdown` turns true: one task per device. Fails
/// only when the queue stops for good.
pub async fn run(
    config: ModbusSourceConfig,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    devices: Vec<Arc<DeviceMetrics>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    poll::run_devices(
        "modbus",
        config.devices,
        devices,
        metrics,
        limits,
        queue,
        |device, link| poll_device(device, link, shutdown.clone()),
    )
    .await
}

/// Resolves and connects within the device's timeout.
async fn connect(device: &ModbusDeviceConfig) -> Result<ReadOnlyClient, String> {
    let attempt = async {
        let addr = tokio::net::lookup_host(&device.address)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "the name resolves to no address".to_string())?;
        ReadOnlyClient::connect(addr, device.unit_id)
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

/// Polls one device until `shutdown`, reconnecting as needed.
async fn poll_device(
    device: ModbusDeviceConfig,
    mut link: DeviceLink,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let plan = Plan::new(&device);
    let mut state = DeviceState::new(&device, &plan);
    let mut backoff = Backoff::new(device.reconnect_min, device.reconnect_max);
    let mut pacer = Pacer::new(device.max_requests_per_second);
    tracing::info!(
        address = %device.address,
        unit_id = device.unit_id,
        tags = device.tags.len(),
        requests_per_poll = plan.reads.len(),
        poll_interval = %humantime::format_duration(device.poll_interval),
        "polling modbus device"
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
            match read_all(&mut client, &plan, &mut pacer, device.timeout).await {
                Ok(values) => {
                    let latency = started.elapsed();
                    link.succeeded(latency);
                    backoff.reset();
                    let events = state.events(&values, now_ns());
                    link.take(events).await?;
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

/// Every read of the plan, paced, each within `timeout`.
async fn read_all(
    client: &mut ReadOnlyClient,
    plan: &Plan,
    pacer: &mut Pacer,
    timeout: Duration,
) -> Result<Vec<Values>, ModbusError> {
    let mut values = Vec::with_capacity(plan.reads.len());
    for read in &plan.reads {
        pacer.wait().await;
        let answer = tokio::time::timeout(timeout, client.read(read))
            .await
            .map_err(|_| {
                ModbusError::Transport(format!(
                    "no answer within timeout = {} to a read of {:?} {}..+{}",
                    humantime::format_duration(timeout),
                    read.kind,
                    read.start,
                    read.count
                ))
            })??;
        values.push(answer);
    }
    Ok(values)
}

/// What a tag is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reported on its own (SAMPLE, or STATE for a bit).
    Reported,
    /// The cycle marker, cycle duration or mode: reported through those.
    Used,
}

/// A tag, ready to be read out of the answers.
#[derive(Debug)]
struct Tag {
    name: String,
    slot: Slot,
    ty: DataType,
    order: ByteOrder,
    width: usize,
    scale: f64,
    offset: f64,
    unit: Option<String>,
    deadband: f64,
    role: Role,
}

impl Tag {
    /// The tag's value in `values` (after scale and offset; a bit is 0 or 1).
    fn value(&self, values: &[Values]) -> f64 {
        match &values[self.slot.read] {
            Values::Bits(bits) => f64::from(u8::from(bits[self.slot.offset])),
            Values::Words(words) => {
                let raw = decode(
                    &words[self.slot.offset..self.slot.offset + self.width],
                    self.ty,
                    self.order,
                );
                raw * self.scale + self.offset
            }
        }
    }
}

#[derive(Debug)]
struct CycleState {
    /// The tag whose readings mark cycles (counter, or done bit).
    marker: usize,
    duration: Option<usize>,
    tracker: CycleTracker,
}

#[derive(Debug)]
struct ModeState {
    tag: usize,
    table: BTreeMap<i64, String>,
    name: String,
    last: Option<String>,
}

/// A device's tags and what it last reported: turns each poll's answers
/// into events. No I/O: `tests.rs` drives it with answers of its own.
#[derive(Debug)]
struct DeviceState {
    asset: String,
    samples: SampleReport,
    tags: Vec<Tag>,
    reporter: TagReporter,
    cycle: Option<CycleState>,
    mode: Option<ModeState>,
    /// The tag holding the controller's clock (ms since the epoch).
    clock: Option<usize>,
}

impl DeviceState {
    fn new(device: &ModbusDeviceConfig, plan: &Plan) -> DeviceState {
        let index = |name: &str| device.tags.iter().position(|t| t.name == name);
        let cycle = device.cycle.as_ref().and_then(|c| {
            let marker = match (&c.counter, &c.done) {
                (Some(counter), _) => index(counter)?,
                (None, Some(done)) => index(done)?,
                (None, None) => return None,
            };
            Some(CycleState {
                marker,
                duration: c.duration.as_deref().and_then(index),
                tracker: CycleTracker::new(c),
            })
        });
        let mode = device.mode.as_ref().and_then(|m| {
            Some(ModeState {
                tag: index(&m.tag)?,
                table: m.table(),
                name: m.name.clone(),
                last: None,
            })
        });
        let mut used = Vec::new();
        if let Some(c) = &cycle {
            used.push(c.marker);
            used.extend(c.duration);
        }
        if let Some(m) = &mode {
            used.push(m.tag);
        }
        let clock = device.clock.as_deref().and_then(index);
        used.extend(clock);
        let tags = device
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ty = t.data_type();
                Tag {
                    name: t.name.clone(),
                    slot: plan.slots[i],
                    ty,
                    order: t.byte_order,
                    width: usize::from(ty.width()),
                    scale: t.scale,
                    offset: t.offset,
                    unit: t.unit.clone(),
                    deadband: t.deadband,
                    role: if used.contains(&i) {
                        Role::Used
                    } else {
                        Role::Reported
                    },
                }
            })
            .collect::<Vec<_>>();
        DeviceState {
            asset: device.asset.clone(),
            samples: device.samples,
            reporter: TagReporter::new(device.samples, tags.len()),
            tags,
            cycle,
            mode,
            clock,
        }
    }

    /// After a (re)connection: what happened while the device was not read
    /// is unknown, so the next cycle's start is too.
    fn connected(&mut self) {
        if let Some(c) = &mut self.cycle {
            c.tracker.connected();
        }
    }

    fn event(&self, ts_ns: i64, kind: EventKind, name: &str) -> ControllerEvent {
        device_event(&self.asset, ts_ns, kind, name)
    }

    /// The events of one poll's answers (one per read of the plan); `now`
    /// is the agent's clock, used unless the device has a clock tag.
    fn events(&mut self, values: &[Values], now: i64) -> Vec<ControllerEvent> {
        let now = self
            .clock
            .and_then(|tag| poll::controller_time_ns(self.tags[tag].value(values)))
            // A clock that reads nothing sensible: the agent's.
            .unwrap_or(now);
        let mut out = Vec::new();
        let cycle_ended = self.cycle_events(values, now, &mut out);
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.role == Role::Used {
                continue;
            }
            if self.samples == SampleReport::OnCycle && tag.ty != DataType::Bool && !cycle_ended {
                continue;
            }
            let value = TagValue {
                name: &tag.name,
                value: tag.value(values),
                bit: tag.ty == DataType::Bool,
                unit: tag.unit.as_deref(),
                deadband: tag.deadband,
            };
            self.reporter.report(&self.asset, now, i, value, &mut out);
        }
        if let Some(mode) = &self.mode {
            let number = self.tags[mode.tag].value(values);
            let text = mode
                .table
                .get(&(number as i64))
                .filter(|_| number.fract() == 0.0)
                .cloned()
                .unwrap_or_else(|| format!("UNKNOWN({number})"));
            if mode.last.as_deref() != Some(text.as_str()) {
                let mut e = self.event(now, EventKind::State, &mode.name);
                e.text = Some(text.clone());
                e.value = Some(number);
                out.push(e);
                self.mode.as_mut().expect("mode is configured").last = Some(text);
            }
        }
        out
    }

    /// The CYCLE events of a poll; returns whether a cycle ended (even one
    /// whose duration is unknown).
    fn cycle_events(
        &mut self,
        values: &[Values],
        now: i64,
        out: &mut Vec<ControllerEvent>,
    ) -> bool {
        let Some(cycle) = &mut self.cycle else {
            return false;
        };
        let marker = self.tags[cycle.marker].value(values);
        let controller_ms = cycle.duration.map(|d| self.tags[d].value(values));
        cycle
            .tracker
            .update(&self.asset, marker, controller_ms, now, out)
    }
}
