//! The `slmp` source's options (`[[sources]] type = "slmp"` in
//! `agent.toml`) and their checks.
//!
//! ```toml
//! [[sources]]
//! type = "slmp"
//!
//! [[sources.devices]]
//! name = "plc-3"
//! asset = "line3/plc-01"
//! address = "192.168.3.39:5007"     # the CPU's or Ethernet module's SLMP port
//! series = "iq-r"                   # "q" for Q, L, iQ-F (FX5)
//! poll_interval = "1s"
//! program_devices = [{ device = "D9000", count = 4 }]
//! cycle = { counter = "strokes", duration = "stroke_ms" }
//! samples = "on_cycle"
//! tags = [
//!   { name = "oil_temp_c", device = "D100", type = "f32" },
//!   { name = "strokes", device = "D200", type = "u32" },
//!   { name = "stroke_ms", device = "D202", type = "u32" },
//!   { name = "guard_closed", device = "X10" },
//! ]
//! ```

use super::frame::{Device, Series};
use crate::source::poll::{self, PollSettings};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// The `slmp` source: MELSEC CPUs over SLMP (MC protocol 3E binary), each
/// polled read-only over its own connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlmpSourceConfig {
    /// The CPUs (`[[sources.devices]]`), at least one.
    pub devices: Vec<SlmpDeviceConfig>,
}

/// One MELSEC CPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlmpDeviceConfig {
    /// The CPU's name in metrics (`device` label) and logs; unique within
    /// the source.
    pub name: String,
    /// The `asset` of its events, e.g. `line3/plc-01`.
    pub asset: String,
    /// `host:port` of the CPU's SLMP (MC protocol, TCP, binary) port, e.g.
    /// `192.168.3.39:5007`.
    pub address: String,
    /// `q` (default: Q, L, iQ-F/FX5, and iQ-R in compatible mode) or `iq-r`:
    /// how devices are addressed in requests.
    #[serde(default)]
    pub series: Series,
    /// How often the CPU is read. At least 100ms. Default 1s.
    #[serde(default = "poll::default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait for the connection and each answer (also the CPU's
    /// monitoring timer); a request that times out drops the connection.
    /// Default 2s.
    #[serde(default = "poll::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First wait before reconnecting a CPU that failed, doubled up to
    /// `reconnect_max` (with jitter). Defaults 1s and 60s.
    #[serde(default = "poll::default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "poll::default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Ceiling on requests per second to this CPU (1 to 100). Default 20.
    #[serde(default = "poll::default_max_requests_per_second")]
    pub max_requests_per_second: u32,
    /// Unconfigured devices one batch read may span to join two runs of
    /// tags (reading a few more words costs less than another request; any
    /// device number within the CPU's range can be read). Default 32.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Report the operating status (SD203: RUN, STOP, PAUSE) as STATE
    /// events named `mode`, when it changes. Default true.
    #[serde(default = "yes")]
    pub status: bool,
    /// Report the current scan time (SD520 ms + SD521 µs) as a CYCLE event
    /// named `scan` every poll. Default true.
    #[serde(default = "yes")]
    pub scan_time: bool,
    /// Read the CPU model (name and code) at every connection and every
    /// `identity_interval`; a new model is a CHANGE named `cpu_model`.
    /// Default 1m; `0s` never reads it.
    #[serde(default = "default_identity_interval", with = "humantime_serde")]
    pub identity_interval: Duration,
    /// Devices whose contents identify the program and its parameters (a
    /// version or checksum the program keeps, the parameter registers that
    /// matter): their CRC32C is the program fingerprint, and a new one is a
    /// CHANGE named `program`. The last fingerprint seen is kept in
    /// `data_dir/sources/`, so a change while the agent was stopped is
    /// reported too. Default: none.
    #[serde(default)]
    pub program_devices: Vec<DeviceRange>,
    /// When word tags become SAMPLE events: `every_poll` (default),
    /// `on_change` (moved by more than the tag's `deadband`) or `on_cycle`
    /// (when a cycle ends; needs `cycle`).
    #[serde(default)]
    pub samples: poll::SampleReport,
    /// Which tags mark machine cycles (CYCLE events): `counter` (an integer
    /// word tag the program increments once per cycle) or `done` (a bit
    /// tag set at each cycle's end), and optionally `duration` (a word tag
    /// with the last cycle's duration in ms, after scale). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<poll::CycleConfig>,
    /// A word tag holding the CPU's clock as Unix time in milliseconds
    /// (after scale: a clock in seconds takes `scale = 1000`). When set, a
    /// poll's events carry it as `ts` (when the CPU says they happened)
    /// instead of the agent's clock. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
    /// The tags to read.
    #[serde(default)]
    pub tags: Vec<SlmpTagConfig>,
}

fn yes() -> bool {
    true
}

fn default_max_gap() -> u16 {
    32
}

fn default_identity_interval() -> Duration {
    Duration::from_secs(60)
}

/// `count` devices from `device` on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRange {
    /// The first device, e.g. `D9000`.
    pub device: String,
    /// How many words from it (1 to 960). Default 1.
    #[serde(default = "one")]
    pub count: u16,
}

fn one() -> u16 {
    1
}

/// How a tag's words are read as a number. 32- and 64-bit values take two
/// and four consecutive words, lowest word first, as MELSEC CPUs store them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlmpType {
    U16,
    I16,
    U32,
    I32,
    F32,
    F64,
    /// A bit device (X, Y, M, L, F, B, SM, SB): the default and only type
    /// for them.
    Bool,
}

impl SlmpType {
    pub fn words(self) -> u16 {
        match self {
            SlmpType::U16 | SlmpType::I16 | SlmpType::Bool => 1,
            SlmpType::U32 | SlmpType::I32 | SlmpType::F32 => 2,
            SlmpType::F64 => 4,
        }
    }
}

/// One tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlmpTagConfig {
    /// The events' `name`, unique within the device.
    pub name: String,
    /// Its (first) device: `D100`, `W1A0`, `SD520`, `M8000`, `X1F`, ...
    pub device: String,
    /// `u16`, `i16` (default for word devices), `u32`, `i32`, `f32`, `f64`;
    /// `bool` for bit devices (their default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub data_type: Option<SlmpType>,
    /// The value reported is `raw * scale + offset`. Defaults 1 and 0.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit, in the events' `unit` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// With `samples = "on_change"`: how far the value must move to be
    /// reported again. Default 0.
    #[serde(default)]
    pub deadband: f64,
}

fn default_scale() -> f64 {
    1.0
}

impl SlmpTagConfig {
    /// The device (checked at load).
    pub fn head(&self) -> Device {
        Device::parse(&self.device).expect("checked at load")
    }

    pub fn data_type(&self) -> SlmpType {
        self.data_type.unwrap_or(if self.head().ty.bit {
            SlmpType::Bool
        } else {
            SlmpType::I16
        })
    }
}

impl SlmpSourceConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.devices.is_empty() {
            return Err("slmp source: no [[sources.devices]]: configure at least one CPU".into());
        }
        let mut names = HashSet::new();
        for device in &self.devices {
            if !names.insert(device.name.as_str()) {
                return Err(format!(
                    "slmp source: two devices are named {:?}: names must be unique",
                    device.name
                ));
            }
            device.check()?;
        }
        Ok(())
    }
}

impl SlmpDeviceConfig {
    pub fn poll_settings(&self) -> PollSettings {
        PollSettings {
            poll_interval: self.poll_interval,
            timeout: self.timeout,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            max_requests_per_second: self.max_requests_per_second,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let what = format!("slmp device {:?}", self.name);
        if self.name.trim().is_empty() {
            return Err("slmp device: name is empty".into());
        }
        if self.asset.trim().is_empty() {
            return Err(format!("{what}: asset is empty"));
        }
        let port_ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "{what}: address {:?} is not host:port (e.g. \"192.168.3.39:5007\")",
                self.address
            ));
        }
        let mut names = HashSet::new();
        for tag in &self.tags {
            let tag_what = format!("{what}: tag {:?}", tag.name);
            if tag.name.trim().is_empty() {
                return Err(format!("{what}: a tag has an empty name"));
            }
            if !names.insert(tag.name.as_str()) {
                return Err(format!("{tag_what} is configured twice"));
            }
            let head = Device::parse(&tag.device).map_err(|e| format!("{tag_what}: device {e}"))?;
            let ty = tag.data_type();
            if head.ty.bit != (ty == SlmpType::Bool) {
                return Err(format!(
                    "{tag_what}: type {ty:?} does not fit device {}: bit devices are bool, word devices numbers",
                    tag.device
                ));
            }
            if !(tag.scale.is_finite() && tag.scale != 0.0 && tag.offset.is_finite()) {
                return Err(format!(
                    "{tag_what}: scale must be a finite number other than 0, offset a finite number"
                ));
            }
            if !(tag.deadband.is_finite() && tag.deadband >= 0.0) {
                return Err(format!(
                    "{tag_what}: deadband must be a number of at least 0"
                ));
            }
        }
        for range in &self.program_devices {
            let head = Device::parse(&range.device)
                .map_err(|e| format!("{what}: program_devices device {e}"))?;
            if head.ty.bit {
                return Err(format!(
                    "{what}: program_devices {:?} is a bit device: give word devices (D, W, R, SD, SW)",
                    range.device
                ));
            }
            if !(1..=super::frame::MAX_READ_WORDS).contains(&range.count) {
                return Err(format!(
                    "{what}: program_devices {:?} count = {} must be 1 to {}",
                    range.device,
                    range.count,
                    super::frame::MAX_READ_WORDS
                ));
            }
        }
        let tag = |role: &str, name: &str| {
            self.tags
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| format!("{what}: {role} {name:?} is not one of its tags"))
        };
        if let Some(cycle) = &self.cycle {
            let marker = match (&cycle.counter, &cycle.done) {
                (Some(counter), None) => {
                    let ty = tag("cycle.counter", counter)?.data_type();
                    if !matches!(ty, SlmpType::U16 | SlmpType::I16 | SlmpType::U32 | SlmpType::I32) {
                        return Err(format!(
                            "{what}: cycle.counter {counter:?} must be an integer word tag (u16, i16, u32, i32)"
                        ));
                    }
                    counter
                }
                (None, Some(done)) => {
                    if tag("cycle.done", done)?.data_type() != SlmpType::Bool {
                        return Err(format!("{what}: cycle.done {done:?} must be a bit tag"));
                    }
                    done
                }
                _ => {
                    return Err(format!(
                        "{what}: cycle needs exactly one of counter (a word counting cycles) and done (a bit set at each cycle's end)"
                    ))
                }
            };
            if let Some(duration) = &cycle.duration {
                if tag("cycle.duration", duration)?.data_type() == SlmpType::Bool
                    || duration == marker
                {
                    return Err(format!(
                        "{what}: cycle.duration {duration:?} must be a word tag other than the cycle's marker"
                    ));
                }
            }
            if cycle.name.trim().is_empty() {
                return Err(format!("{what}: cycle.name is empty"));
            }
        }
        if self.samples == poll::SampleReport::OnCycle && self.cycle.is_none() {
            return Err(format!(
                "{what}: samples = \"on_cycle\" needs a cycle (counter or done tag)"
            ));
        }
        if let Some(clock) = &self.clock {
            if tag("clock", clock)?.data_type() == SlmpType::Bool {
                return Err(format!("{what}: clock {clock:?} must be a word tag"));
            }
        }
        if self.tags.is_empty()
            && !self.status
            && !self.scan_time
            && self.program_devices.is_empty()
        {
            return Err(format!(
                "{what}: nothing to read: configure tags, program_devices, status or scan_time"
            ));
        }
        if !self.identity_interval.is_zero() && self.identity_interval < self.poll_interval {
            return Err(format!(
                "{what}: identity_interval = {} is below poll_interval: give at least the poll interval, or 0s",
                humantime::format_duration(self.identity_interval)
            ));
        }
        let plan = super::Plan::new(self);
        // The model read, when due, comes on top of a poll's batch reads.
        let per_poll = plan.reads.len() + usize::from(!self.identity_interval.is_zero());
        self.poll_settings().check(&what, per_poll)
    }
}

impl crate::source::poll::Device for SlmpDeviceConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn asset(&self) -> &str {
        &self.asset
    }
}
