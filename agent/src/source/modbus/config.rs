//! The `modbus` source's options (`[[sources]] type = "modbus"` in
//! `agent.toml`) and their checks.
//!
//! ```toml
//! [[sources]]
//! type = "modbus"
//!
//! [[sources.devices]]
//! name = "press-07"                 # metrics and logs
//! asset = "line2/press-07"          # the events' asset
//! address = "192.168.10.21:502"
//! unit_id = 1
//! poll_interval = "1s"
//! tags = [
//!   { name = "oil_temp_c", kind = "holding", address = 100, type = "f32", byte_order = "CDAB" },
//!   { name = "pressure_bar", kind = "input", address = 4, type = "i16", scale = 0.1, unit = "bar" },
//!   { name = "cycles", kind = "holding", address = 200, type = "u32" },
//!   { name = "mode", kind = "holding", address = 210 },
//!   { name = "guard_closed", kind = "discrete_input", address = 0 },
//! ]
//! cycle = { counter = "cycles" }
//! mode = { tag = "mode", modes = { "1" = "RUN", "2" = "STOP", "3" = "MAINT" } }
//! ```

pub use super::super::poll::CycleConfig;
use super::super::poll::{self, PollSettings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The `modbus` source: Modbus/TCP devices, each polled read-only over its
/// own connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSourceConfig {
    /// The devices (`[[sources.devices]]`), at least one.
    pub devices: Vec<ModbusDeviceConfig>,
}

/// One Modbus/TCP device (a PLC, a gateway's unit id, a meter).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// The device's name in metrics (`device` label) and logs; unique within
    /// the source.
    pub name: String,
    /// The `asset` of the device's events, e.g. `line2/press-07`.
    pub asset: String,
    /// `host:port` of the device or of its Modbus/TCP gateway, e.g.
    /// `192.168.10.21:502`.
    pub address: String,
    /// Unit identifier (slave id) of the device behind the address. Default 1.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// How often the device is read. At least 100ms. Default 1s.
    #[serde(default = "poll::default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait for the connection and for each answer; a request that
    /// times out drops the connection. Default 2s.
    #[serde(default = "poll::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First wait before reconnecting a device that failed, doubled up to
    /// `reconnect_max` (with jitter). Defaults 1s and 60s.
    #[serde(default = "poll::default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "poll::default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Ceiling on requests per second to this device (1 to 100). A poll's
    /// requests are spaced by its inverse, and a configuration whose
    /// requests per poll exceed it is refused. Default 20.
    #[serde(default = "poll::default_max_requests_per_second")]
    pub max_requests_per_second: u32,
    /// Most registers one read asks for (1 to 125, the protocol's limit;
    /// some devices take fewer). Default 125.
    #[serde(default = "default_max_registers")]
    pub max_registers_per_request: u16,
    /// Most coils or discrete inputs one read asks for (1 to 2000, the
    /// protocol's limit). Default 2000.
    #[serde(default = "default_max_bits")]
    pub max_bits_per_request: u16,
    /// Unconfigured addresses one read may span to join two runs of tags
    /// into one request. Default 0: only adjacent addresses are joined, as
    /// many devices refuse a read that touches an unmapped address.
    #[serde(default)]
    pub max_gap: u16,
    /// When register tags become SAMPLE events: `every_poll` (default; the
    /// detector's models expect a steady cadence), `on_change` (when the
    /// value moved by more than the tag's `deadband`) or `on_cycle` (when a
    /// cycle ends; needs `cycle`).
    #[serde(default)]
    pub samples: SampleReport,
    /// The tags to read.
    pub tags: Vec<TagConfig>,
    /// Which tag marks machine cycles (CYCLE events).
    #[serde(default)]
    pub cycle: Option<CycleConfig>,
    /// Which tag holds the operating mode (STATE events).
    #[serde(default)]
    pub mode: Option<ModeConfig>,
    /// A register tag holding the controller's clock as Unix time in
    /// milliseconds (after scale: a clock in seconds takes `scale = 1000`).
    /// When set, a poll's events carry it as `ts` (when the controller says
    /// they happened) instead of the agent's clock. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
}

fn default_unit_id() -> u8 {
    1
}

fn default_max_registers() -> u16 {
    MAX_REGISTERS_PER_READ
}

fn default_max_bits() -> u16 {
    MAX_BITS_PER_READ
}

/// The protocol's limits on one read (function codes 3 and 4; 1 and 2).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
pub const MAX_BITS_PER_READ: u16 = 2000;

pub use crate::source::poll::SampleReport;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Holding registers (read with function 3).
    Holding,
    /// Input registers (function 4).
    Input,
    /// Coils (function 1).
    Coil,
    /// Discrete inputs (function 2).
    DiscreteInput,
}

impl RegisterKind {
    /// Coils and discrete inputs hold bits; the others 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }
}

/// How a tag's registers are read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    /// A coil or discrete input (the only type they take).
    Bool,
}

impl DataType {
    /// Registers the type takes (1 for a bit).
    pub fn width(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// A whole-number type (a counter or a mode may use it).
    pub fn is_integer(self) -> bool {
        !matches!(self, DataType::F32 | DataType::F64 | DataType::Bool)
    }
}

/// Order of a value's bytes in its registers, written as the bytes of the
/// big-endian value A B C D (A the most significant) appear in the
/// registers as read. 64-bit values extend the same rule to A..H:
/// `ABCD` = ABCDEFGH, `CDAB` = GHEFCDAB (words reversed), `BADC` =
/// BADCFEHG (bytes swapped in each word), `DCBA` = HGFEDCBA. For 16-bit
/// values, `BADC` and `DCBA` swap the two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ByteOrder {
    /// Big-endian words, most significant word first (the Modbus default).
    #[default]
    ABCD,
    /// Big-endian words, least significant word first (many PLCs).
    CDAB,
    /// Byte-swapped words, most significant word first.
    BADC,
    /// Little-endian throughout.
    DCBA,
}

/// One tag: where its value is and how to read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// The events' `name`, unique within the device.
    pub name: String,
    /// `holding`, `input`, `coil` or `discrete_input`.
    pub kind: RegisterKind,
    /// Address of its first register or bit, 0-based as on the wire
    /// (holding register 40001 in the 1-based convention is address 0).
    pub address: u16,
    /// `u16` (default for registers), `i16`, `u32`, `i32`, `f32`, `u64`,
    /// `i64`, `f64`; `bool` for coils and discrete inputs (their default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    /// Byte order of multi-register values: `ABCD` (default), `CDAB`,
    /// `BADC`, `DCBA`.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// The value reported is `raw * scale + offset`. Defaults 1 and 0.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit, reported in the events' `unit` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// With `samples = "on_change"`: how far (after scaling) the value must
    /// move from the last one reported to be reported again. Default 0.
    #[serde(default)]
    pub deadband: f64,
}

fn default_scale() -> f64 {
    1.0
}

impl TagConfig {
    /// The type in effect (the default where none is given).
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.kind.is_bit() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }
}

/// The operating mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeConfig {
    /// An integer register tag holding the mode's number.
    pub tag: String,
    /// Text of each mode number, e.g. `{ "1" = "RUN", "2" = "STOP" }`. A
    /// number not listed is reported as `UNKNOWN(<number>)`.
    pub modes: BTreeMap<String, String>,
    /// The STATE events' `name`. Default `mode`.
    #[serde(default = "default_mode_name")]
    pub name: String,
}

fn default_mode_name() -> String {
    "mode".into()
}

impl ModeConfig {
    /// The mode table with numeric keys (checked at load).
    pub fn table(&self) -> BTreeMap<i64, String> {
        self.modes
            .iter()
            .filter_map(|(k, v)| Some((k.trim().parse().ok()?, v.clone())))
            .collect()
    }
}

impl ModbusSourceConfig {
    /// Refuses values the source cannot work with, naming the device and key.
    pub fn check(&self) -> Result<(), String> {
        if self.devices.is_empty() {
            return Err(
                "modbus source: no [[sources.devices]]: configure at least one device".into(),
            );
        }
        let mut names = HashSet::new();
        for device in &self.devices {
            if !names.insert(device.name.as_str()) {
                return Err(format!(
                    "modbus source: two devices are named {:?}: names must be unique",
                    device.name
                ));
            }
            device.check()?;
        }
        Ok(())
    }
}

impl ModbusDeviceConfig {
    /// The polling options shared with other polled sources.
    pub fn poll_settings(&self) -> PollSettings {
        PollSettings {
            poll_interval: self.poll_interval,
            timeout: self.timeout,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            max_requests_per_second: self.max_requests_per_second,
        }
    }

    fn tag(&self, name: &str) -> Option<&TagConfig> {
        self.tags.iter().find(|t| t.name == name)
    }

    pub fn check(&self) -> Result<(), String> {
        let what = format!("modbus device {:?}", self.name);
        if self.name.trim().is_empty() {
            return Err("modbus device: name is empty".into());
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
                "{what}: address {:?} is not host:port (e.g. \"192.168.10.21:502\")",
                self.address
            ));
        }
        if !(1..=MAX_REGISTERS_PER_READ).contains(&self.max_registers_per_request) {
            return Err(format!(
                "{what}: max_registers_per_request = {} must be 1 to {MAX_REGISTERS_PER_READ}",
                self.max_registers_per_request
            ));
        }
        if !(1..=MAX_BITS_PER_READ).contains(&self.max_bits_per_request) {
            return Err(format!(
                "{what}: max_bits_per_request = {} must be 1 to {MAX_BITS_PER_READ}",
                self.max_bits_per_request
            ));
        }
        if self.tags.is_empty() {
            return Err(format!("{what}: no tags: configure at least one"));
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
            let ty = tag.data_type();
            if tag.kind.is_bit() != (ty == DataType::Bool) {
                return Err(format!(
                    "{tag_what}: type {ty:?} does not fit kind {:?}: coils and discrete inputs are bool, registers are numbers",
                    tag.kind
                ));
            }
            if u32::from(tag.address) + u32::from(ty.width()) > 65536 {
                return Err(format!(
                    "{tag_what}: address {} plus its {} register(s) is past 65535",
                    tag.address,
                    ty.width()
                ));
            }
            if !tag.kind.is_bit() && ty.width() > self.max_registers_per_request {
                return Err(format!(
                    "{tag_what}: a {ty:?} takes {} registers, more than max_registers_per_request = {}",
                    ty.width(),
                    self.max_registers_per_request
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
        if let Some(cycle) = &self.cycle {
            let marker = match (&cycle.counter, &cycle.done) {
                (Some(counter), None) => {
                    let tag = self.tag(counter).ok_or_else(|| {
                        format!("{what}: cycle.counter {counter:?} is not one of its tags")
                    })?;
                    if tag.kind.is_bit() || !tag.data_type().is_integer() {
                        return Err(format!(
                            "{what}: cycle.counter {counter:?} must be an integer register tag"
                        ));
                    }
                    counter
                }
                (None, Some(done)) => {
                    let tag = self.tag(done).ok_or_else(|| {
                        format!("{what}: cycle.done {done:?} is not one of its tags")
                    })?;
                    if !tag.kind.is_bit() {
                        return Err(format!(
                            "{what}: cycle.done {done:?} must be a coil or discrete input"
                        ));
                    }
                    done
                }
                _ => {
                    return Err(format!(
                        "{what}: cycle needs exactly one of counter (a register counting cycles) and done (a bit set at each cycle's end)"
                    ))
                }
            };
            if let Some(duration) = &cycle.duration {
                let tag = self.tag(duration).ok_or_else(|| {
                    format!("{what}: cycle.duration {duration:?} is not one of its tags")
                })?;
                if tag.kind.is_bit() || duration == marker {
                    return Err(format!(
                        "{what}: cycle.duration {duration:?} must be a register tag other than the cycle's marker"
                    ));
                }
            }
            if cycle.name.trim().is_empty() {
                return Err(format!("{what}: cycle.name is empty"));
            }
        }
        if let Some(mode) = &self.mode {
            let tag = self
                .tag(&mode.tag)
                .ok_or_else(|| format!("{what}: mode.tag {:?} is not one of its tags", mode.tag))?;
            if tag.kind.is_bit() || !tag.data_type().is_integer() {
                return Err(format!(
                    "{what}: mode.tag {:?} must be an integer register tag",
                    mode.tag
                ));
            }
            if mode.modes.is_empty() {
                return Err(format!(
                    "{what}: mode.modes is empty: give the text of each mode number, e.g. {{ \"1\" = \"RUN\" }}"
                ));
            }
            for (number, text) in &mode.modes {
                if number.trim().parse::<i64>().is_err() {
                    return Err(format!(
                        "{what}: mode.modes key {number:?} is not a whole number"
                    ));
                }
                if text.trim().is_empty() {
                    return Err(format!("{what}: mode.modes {number:?} has an empty text"));
                }
            }
            if mode.name.trim().is_empty() {
                return Err(format!("{what}: mode.name is empty"));
            }
        }
        if self.samples == SampleReport::OnCycle && self.cycle.is_none() {
            return Err(format!(
                "{what}: samples = \"on_cycle\" needs a cycle (counter or done tag)"
            ));
        }
        if let Some(clock) = &self.clock {
            let tag = self
                .tag(clock)
                .ok_or_else(|| format!("{what}: clock {clock:?} is not one of its tags"))?;
            if tag.kind.is_bit() {
                return Err(format!("{what}: clock {clock:?} must be a register tag"));
            }
        }
        let plan = super::plan::Plan::new(self);
        self.poll_settings().check(&what, plan.reads.len())
    }
}

impl crate::source::poll::Device for ModbusDeviceConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn asset(&self) -> &str {
        &self.asset
    }
}
