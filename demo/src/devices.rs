//! Simulated controllers for `otwatch demo --sources`: every asset of a
//! simulated site ([`SimSite`]) is a device on its own loopback port that
//! the site's agent reads with one of its protocol sources, and the
//! controllers send syslog to the agent's `syslog` source, instead of the
//! agent running the simulator itself. A newcomer sees real protocols end
//! to end: registers, device memory and OPC UA variables on the wire,
//! decoded by the agent's tag maps, and log lines recognised by its syslog
//! parsers.
//!
//! Which protocol a site's machines speak is fixed by the site's position
//! ([`Protocol::of_site`]): the first site Modbus/TCP, the second MELSEC
//! SLMP (MC protocol 3E binary), the third OPC UA, then again in that
//! order. Whatever the protocol, a machine shows the same things
//! ([`Machine`]), updated as simulated time passes:
//!
//! | what | Modbus holding registers (function 3) | SLMP devices (batch read) | OPC UA variables (`ns=N;s=...`) |
//! |---|---|---|---|
//! | the controller's clock, Unix time in ms (simulated time) | 0-3, u64 | D0-D3, f64 | - (each value's source timestamp) |
//! | cycle counter, +1 at each cycle's end | 4, u16 | D4, u16 | `Machine.Cycles`, UInt32 |
//! | duration of the last cycle, ms | 5-6, u32 | D5-D6, u32 | `Machine.CycleTime`, UInt32 |
//! | mode | 7: 1 RUN, 2 STOP, 3 MAINT | SD203: 0 RUN, 1 STOP, 2 PAUSE (for MAINT) | `Machine.Mode`, Int32: 1 RUN, 2 STOP, 3 MAINT |
//! | motor_current_a, temperature_c, supply_voltage_v | 8-13, f32 | D8-D13, f32 | `Machine.MotorCurrent`, `.Temperature`, `.SupplyVoltage`, Float |
//! | program version (what the program keeps of itself) | - | D20-D21, u32 | - |
//!
//! Modbus words are big-endian, highest word first; SLMP words lowest
//! first, as MELSEC CPUs store them. The agent reads the SLMP model (R04CPU)
//! too; any other Modbus function or SLMP command is refused. A
//! `controller_silence` device stops answering for the scenario's length,
//! as a controller that fails does.
//!
//! Each OPC UA machine is a server of its own (async-opcua; endpoint
//! SecurityPolicy None, anonymous, no certificate: the demo stays on
//! loopback, and a server on another host should sign and encrypt). A
//! value is written when the simulator changes it, stamped with simulated
//! time as its source timestamp: at a cycle's end the counter and the
//! duration in one update, with the three process values of the same
//! time, which the agent's `opcua` source turns into the CYCLE and its
//! samples (the `cycle` and items with `trigger =
//! "status_value_timestamp"`, so every cycle's values are reported, as the
//! polled devices' `samples = "on_cycle"`); the cycle and process
//! variables read `BadWaitingForInitialData` until the first cycle ends. The agent
//! connects through a gate, a TCP relay in front of the server: during
//! `controller_silence` it cuts the agent's connection and refuses new
//! ones, so the session fails and nothing comes from the machine.
//!
//! What device memory cannot carry goes as syslog (RFC 5424 over TCP,
//! octet-counted, stamped with simulated time; the agent's source takes the
//! message's timestamp) from each controller, its hostname the asset:
//!
//! | simulated event | syslog line (APP-NAME: MSG) | agent's event |
//! |---|---|---|
//! | ACCESS `login` (the operator from the HMI) | `sshd: Accepted password for operator from PEER port N ssh2` | ACCESS `login` |
//! | ACCESS `connect` (`polling_burst`) | `sshd: Failed password for invalid user admin from PEER port N ssh2` | ACCESS `login_failed` |
//! | CHANGE `program` (`program_download`) on a Modbus or OPC UA machine | `ios: %PARSER-5-CFGLOG_LOGGEDCMD: User:engineer  logged command:program download VERSION` | CHANGE `config` |
//!
//! On an SLMP machine a program download changes D20-D21 instead, which
//! the agent's `program_devices` fingerprint reports as CHANGE `program`.
//! So every scenario is carried ([`NOT_CARRIED`] is empty).

use opcua::nodes::Variable;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, SubscriptionCache};
use opcua::types::{DataValue, NodeId, ObjectId, StatusCode, Variant};
use otwatch_agent::config::SourceConfig;
use otwatch_agent::sim::{ScenarioTruth, SimConfig, SimSite};
use otwatch_agent::source::modbus::config::{
    ByteOrder, CycleConfig, DataType, ModbusDeviceConfig, ModeConfig, RegisterKind, TagConfig,
};
use otwatch_agent::source::modbus::ModbusSourceConfig;
use otwatch_agent::source::opcua::config::{
    DurationUnit, ItemConfig, OpcuaCycleConfig, OpcuaServerConfig, Report, SecurityPolicy, Trigger,
};
use otwatch_agent::source::opcua::OpcuaSourceConfig;
use otwatch_agent::source::poll::SampleReport;
use otwatch_agent::source::slmp::config::{DeviceRange, SlmpDeviceConfig, SlmpTagConfig, SlmpType};
use otwatch_agent::source::slmp::frame::Series;
use otwatch_agent::source::slmp::server::SlmpServer;
use otwatch_agent::source::slmp::SlmpSourceConfig;
use otwatch_agent::source::syslog::config::Timestamps;
use otwatch_agent::source::syslog::SyslogSourceConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// Scenarios whose events no protocol of a `--sources` run carries, with
/// why: none since the controllers send syslog.
pub const NOT_CARRIED: [(&str, &str); 0] = [];

/// How often the devices follow simulated time (wall clock).
const TICK: Duration = Duration::from_millis(20);
/// Registers a Modbus device serves.
const REGISTERS: usize = 14;
/// The program version an SLMP machine starts with, before any download.
const INITIAL_PROGRAM: u32 = 0x2026_0101;
/// The SLMP devices holding the program version.
const PROGRAM_DEVICE: &str = "D20";
/// The namespace of a machine's OPC UA variables.
const OPCUA_NAMESPACE: &str = "urn:otwatch:demo:machine";
/// A machine's OPC UA variables (string node ids in [`OPCUA_NAMESPACE`],
/// under the folder `Machine` of the Objects folder).
const OPCUA_CYCLES: &str = "Machine.Cycles";
const OPCUA_CYCLE_TIME: &str = "Machine.CycleTime";
const OPCUA_MODE: &str = "Machine.Mode";
/// The sample tags and their variables.
const OPCUA_SAMPLES: [(&str, &str); 3] = [
    ("motor_current_a", "Machine.MotorCurrent"),
    ("temperature_c", "Machine.Temperature"),
    ("supply_voltage_v", "Machine.SupplyVoltage"),
];

/// The protocol a site's machines speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Modbus,
    Slmp,
    Opcua,
}

impl Protocol {
    /// The protocol of the site at `index`: Modbus, SLMP, OPC UA, Modbus, ...
    pub fn of_site(index: usize) -> Protocol {
        [Protocol::Modbus, Protocol::Slmp, Protocol::Opcua][index % 3]
    }

    /// How the start line names it.
    pub fn describe(self) -> &'static str {
        match self {
            Protocol::Modbus => "Modbus/TCP devices (the agent's modbus source)",
            Protocol::Slmp => "MELSEC CPUs over SLMP 3E binary (the agent's slmp source)",
            Protocol::Opcua => {
                "OPC UA servers, SecurityPolicy None (the agent's opcua source, subscribed)"
            }
        }
    }

    /// How the agent reads the machines, for the start line.
    pub fn reading(self) -> &'static str {
        match self {
            Protocol::Opcua => "subscribed at 100 ms sampling and publishing",
            Protocol::Modbus | Protocol::Slmp => "polled every 100 ms",
        }
    }

    /// Whether device memory carries a program change (else syslog does).
    pub fn carries_program(self) -> bool {
        self == Protocol::Slmp
    }
}

/// What one simulated controller shows, whatever protocol serves it.
#[derive(Debug, Clone, PartialEq)]
struct Machine {
    clock_ms: u64,
    cycles: u16,
    cycle_ms: u32,
    mode: Mode,
    motor_current_a: f32,
    temperature_c: f32,
    supply_voltage_v: f32,
    program: u32,
    /// Answers nobody (`controller_silence`).
    silent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Stop,
    Maint,
}

impl Mode {
    /// The value of the OPC UA `Machine.Mode` variable: 1 RUN, 2 STOP,
    /// 3 MAINT.
    fn opcua(self) -> i32 {
        match self {
            Mode::Run => 1,
            Mode::Stop => 2,
            Mode::Maint => 3,
        }
    }
}

impl Machine {
    fn new(clock_ns: i64) -> Machine {
        Machine {
            clock_ms: (clock_ns / 1_000_000) as u64,
            cycles: 0,
            cycle_ms: 0,
            mode: Mode::Run,
            motor_current_a: 0.0,
            temperature_c: 0.0,
            supply_voltage_v: 0.0,
            program: INITIAL_PROGRAM,
            silent: false,
        }
    }

    /// Takes a simulated event into the controller's memory; returns
    /// whether it did (the others are for syslog).
    fn apply(&mut self, e: &ControllerEvent, protocol: Protocol) -> bool {
        match e.kind() {
            EventKind::Cycle => {
                self.cycles = self.cycles.wrapping_add(1);
                self.cycle_ms = e.value.unwrap_or(0.0).round() as u32;
            }
            EventKind::State => {
                self.mode = match e.text.as_deref() {
                    Some("RUN") => Mode::Run,
                    Some("STOP") => Mode::Stop,
                    _ => Mode::Maint,
                };
            }
            EventKind::Sample => {
                let v = e.value.unwrap_or(0.0) as f32;
                match e.name.as_str() {
                    "motor_current_a" => self.motor_current_a = v,
                    "temperature_c" => self.temperature_c = v,
                    _ => self.supply_voltage_v = v,
                }
            }
            EventKind::Change if protocol.carries_program() => {
                // The simulator names the new program by a hex number.
                self.program = e
                    .text
                    .as_deref()
                    .and_then(|t| u32::from_str_radix(t, 16).ok())
                    .unwrap_or(!self.program);
            }
            _ => return false,
        }
        true
    }

    /// The Modbus holding registers 0-13, big-endian, highest word first.
    fn modbus_registers(&self) -> [u16; REGISTERS] {
        let mut r = [0u16; REGISTERS];
        for (w, chunk) in self.clock_ms.to_be_bytes().chunks(2).enumerate() {
            r[w] = u16::from_be_bytes([chunk[0], chunk[1]]);
        }
        r[4] = self.cycles;
        r[5] = (self.cycle_ms >> 16) as u16;
        r[6] = self.cycle_ms as u16;
        r[7] = match self.mode {
            Mode::Run => 1,
            Mode::Stop => 2,
            Mode::Maint => 3,
        };
        for (at, v) in [
            (8, self.motor_current_a),
            (10, self.temperature_c),
            (12, self.supply_voltage_v),
        ] {
            let b = v.to_be_bytes();
            r[at] = u16::from_be_bytes([b[0], b[1]]);
            r[at + 1] = u16::from_be_bytes([b[2], b[3]]);
        }
        r
    }

    /// The OPC UA variables a simulated event changed (after [`Machine::apply`])
    /// with their new values: a cycle's end writes the counter and the
    /// duration together, so that one update carries both.
    fn opcua_values(&self, e: &ControllerEvent) -> Vec<(&'static str, Variant)> {
        match e.kind() {
            EventKind::Cycle => vec![
                (OPCUA_CYCLES, Variant::UInt32(u32::from(self.cycles))),
                (OPCUA_CYCLE_TIME, Variant::UInt32(self.cycle_ms)),
            ],
            EventKind::State => vec![(OPCUA_MODE, Variant::Int32(self.mode.opcua()))],
            EventKind::Sample => OPCUA_SAMPLES
                .iter()
                .zip([
                    self.motor_current_a,
                    self.temperature_c,
                    self.supply_voltage_v,
                ])
                .filter(|((tag, _), _)| *tag == e.name)
                .map(|((_, node), v)| (*node, Variant::Float(v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The SLMP device memory: (head device, words), lowest word first.
    fn slmp_words(&self) -> [(&'static str, Vec<u16>); 3] {
        let words = |bytes: &[u8]| -> Vec<u16> {
            bytes
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let mut d = words(&(self.clock_ms as f64).to_le_bytes());
        d.push(self.cycles);
        d.extend(words(&self.cycle_ms.to_le_bytes()));
        d.push(0);
        for v in [
            self.motor_current_a,
            self.temperature_c,
            self.supply_voltage_v,
        ] {
            d.extend(words(&v.to_le_bytes()));
        }
        let status = match self.mode {
            Mode::Run => 0,
            Mode::Stop => 1,
            Mode::Maint => 2,
        };
        [
            ("D0", d),
            (PROGRAM_DEVICE, words(&self.program.to_le_bytes())),
            ("SD203", vec![status]),
        ]
    }
}

/// The RFC 5424 line a controller sends for a simulated event its device
/// memory does not carry (see the module's table), or `None`.
fn syslog_line(e: &ControllerEvent) -> Option<String> {
    // RFC 5424 timestamps stop at microseconds: rounded up, so the line
    // never says an event happened before the simulator played it.
    let micros = e.ts_ns.div_euclid(1000) + i64::from(e.ts_ns.rem_euclid(1000) != 0);
    let ts = chrono::DateTime::from_timestamp_nanos(micros * 1000)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let peer = e.attrs.get("peer").map_or("-", String::as_str);
    // The peer's source port: any ephemeral port, the same for the same event.
    let port = 49152 + (e.ts_ns / 1_000_000).rem_euclid(16384);
    // PRI: facility auth (4) or local7 (23), severity info (6) or notice (5).
    let (pri, app, msg) = match (e.kind(), e.name.as_str()) {
        (EventKind::Access, "login") => (
            4 * 8 + 6,
            "sshd",
            format!(
                "Accepted password for {} from {peer} port {port} ssh2",
                e.attrs.get("user").map_or("operator", String::as_str)
            ),
        ),
        (EventKind::Access, _) => (
            4 * 8 + 5,
            "sshd",
            format!("Failed password for invalid user admin from {peer} port {port} ssh2"),
        ),
        (EventKind::Change, _) => (
            23 * 8 + 5,
            "ios",
            format!(
                "%PARSER-5-CFGLOG_LOGGEDCMD: User:engineer  logged command:{} download {}",
                e.name,
                e.text.as_deref().unwrap_or("-")
            ),
        ),
        _ => return None,
    };
    Some(format!("<{pri}>1 {ts} {} {app} - - - {msg}", e.asset))
}

/// Sends `lines` to the syslog receiver at `addr` over TCP, octet-counted,
/// reconnecting until it listens; a line is sent again after a failed write.
async fn send_syslog(addr: SocketAddr, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut pending: Option<String> = None;
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let line = match pending.take() {
                Some(line) => line,
                None => match lines.recv().await {
                    Some(line) => line,
                    None => return,
                },
            };
            let frame = format!("{} {line}", line.len());
            if stream.write_all(frame.as_bytes()).await.is_err() {
                pending = Some(line);
                break;
            }
        }
    }
}

struct ModbusDevice {
    machine: Arc<Mutex<Machine>>,
}

impl tokio_modbus::server::Service for ModbusDevice {
    type Request = tokio_modbus::Request<'static>;
    type Response = Option<tokio_modbus::Response>;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let machine = self.machine.lock().unwrap();
        if machine.silent {
            // A controller that fails does not answer at all.
            return std::future::ready(Ok(None));
        }
        std::future::ready(match request {
            tokio_modbus::Request::ReadHoldingRegisters(addr, count) => {
                let (start, end) = (usize::from(addr), usize::from(addr) + usize::from(count));
                if end <= REGISTERS {
                    Ok(Some(tokio_modbus::Response::ReadHoldingRegisters(
                        machine.modbus_registers()[start..end].to_vec(),
                    )))
                } else {
                    Err(tokio_modbus::ExceptionCode::IllegalDataAddress)
                }
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

/// The OPC UA server of one machine: its variables, and the gate in front
/// of it (the address the agent connects to), which a silent controller
/// closes.
struct OpcuaMachine {
    manager: Arc<SimpleNodeManager>,
    subscriptions: Arc<SubscriptionCache>,
    namespace: u16,
    /// Whether the controller is silent: the gate drops every connection
    /// and refuses new ones.
    silent: watch::Sender<bool>,
}

/// Values of one OPC UA machine (by index) at one simulated time (ns),
/// written in one update.
type OpcuaWrite = (usize, i64, Vec<(&'static str, Variant)>);

/// OPC UA's time of a simulated event, rounded up to its 100 ns ticks, so
/// that a value never says it changed before the simulator played it.
fn opcua_time(ts_ns: i64) -> opcua::types::DateTime {
    let ticks = ts_ns.div_euclid(100) + i64::from(ts_ns.rem_euclid(100) != 0);
    opcua::types::DateTime::from(chrono::DateTime::from_timestamp_nanos(ticks * 100))
}

impl OpcuaMachine {
    /// Serves a machine's variables over OPC UA (SecurityPolicy None,
    /// anonymous: a loopback demo, no certificate to make), behind a gate
    /// on a port of its own; its certificate store (empty) under `pki`.
    /// Returns the machine, the gate's address and the tasks serving them.
    async fn start(
        asset: &str,
        machine: &Machine,
        start_ns: i64,
        pki: &Path,
    ) -> std::io::Result<(OpcuaMachine, SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
        let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gate_addr = gate.local_addr()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server_addr = listener.local_addr()?;
        // The server names the gate as its endpoint: the agent connects
        // there and finds the endpoint it asked for.
        let (server, handle) = ServerBuilder::new_anonymous(format!("otwatch demo {asset}"))
            .application_uri(format!("urn:otwatch:demo:{asset}"))
            .product_uri("urn:otwatch:demo")
            .host("127.0.0.1")
            .port(gate_addr.port())
            .discovery_urls(vec![format!("opc.tcp://{gate_addr}/")])
            .pki_dir(pki)
            .create_sample_keypair(false)
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: OPCUA_NAMESPACE.to_string(),
                    ..Default::default()
                },
                "machine",
            ))
            .build()
            .map_err(|e| std::io::Error::other(format!("OPC UA server of {asset}: {e}")))?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or_else(|| std::io::Error::other("the OPC UA server has no machine variables"))?;
        let namespace = handle
            .get_namespace_index(OPCUA_NAMESPACE)
            .ok_or_else(|| std::io::Error::other("the OPC UA server has no machine namespace"))?;
        let id = |name: &str| NodeId::new(namespace, name);
        {
            let mut space = manager.address_space().write();
            let folder = id("Machine");
            space.add_folder(
                &folder,
                "Machine",
                "Machine",
                &ObjectId::ObjectsFolder.into(),
            );
            let mut variables = vec![
                Variable::new(&id(OPCUA_CYCLES), "Cycles", "Cycles", 0u32),
                Variable::new(&id(OPCUA_CYCLE_TIME), "CycleTime", "CycleTime", 0u32),
                Variable::new(&id(OPCUA_MODE), "Mode", "Mode", 0i32),
            ];
            for (_, node) in OPCUA_SAMPLES {
                let name = node.trim_start_matches("Machine.");
                variables.push(Variable::new(&id(node), name, name, 0f32));
            }
            space.add_variables(variables, &folder);
        }
        let subscriptions = handle.subscriptions().clone();
        let opcua = OpcuaMachine {
            manager,
            subscriptions,
            namespace,
            silent: watch::channel(false).0,
        };
        // The mode the machine starts with; no cycle has ended yet, so
        // the cycle and process variables have no value until the first
        // cycle's end.
        opcua.write(
            &[(OPCUA_MODE, Variant::Int32(machine.mode.opcua()))],
            start_ns,
        );
        // A value (empty) is needed for the server to send the status.
        let waiting = DataValue {
            value: Some(Variant::Empty),
            status: Some(StatusCode::BadWaitingForInitialData),
            source_timestamp: Some(opcua_time(start_ns)),
            server_timestamp: Some(opcua::types::DateTime::now()),
            ..Default::default()
        };
        let not_yet: Vec<NodeId> = [OPCUA_CYCLES, OPCUA_CYCLE_TIME]
            .into_iter()
            .chain(OPCUA_SAMPLES.iter().map(|(_, node)| *node))
            .map(id)
            .collect();
        opcua
            .manager
            .set_values(
                &opcua.subscriptions,
                not_yet.iter().map(|node| (node, None, waiting.clone())),
            )
            .map_err(|e| std::io::Error::other(format!("OPC UA server of {asset}: {e}")))?;
        let tasks = vec![
            tokio::spawn(async move {
                // Ends with the task (dropping the handle's token keeps it
                // running; the abort stops it).
                let _handle = handle;
                let _ = server.run_with(listener).await;
            }),
            tokio::spawn(gate_connections(
                gate,
                server_addr,
                opcua.silent.subscribe(),
            )),
        ];
        Ok((opcua, gate_addr, tasks))
    }

    /// Writes `values` in one update, stamped `ts_ns` (simulated time), so
    /// that the values of one event reach a subscription together.
    fn write(&self, values: &[(&'static str, Variant)], ts_ns: i64) {
        let ids: Vec<NodeId> = values
            .iter()
            .map(|(node, _)| NodeId::new(self.namespace, *node))
            .collect();
        let source = opcua_time(ts_ns);
        let server = opcua::types::DateTime::now();
        let updates = ids.iter().zip(values).map(|(id, (_, value))| {
            let value = DataValue {
                value: Some(value.clone()),
                status: Some(StatusCode::Good),
                source_timestamp: Some(source),
                server_timestamp: Some(server),
                ..Default::default()
            };
            (id, None, value)
        });
        // The variables exist from the start: nothing can fail here.
        let _ = self.manager.set_values(&self.subscriptions, updates);
    }
}

/// Forwards the connections to a machine's OPC UA server while the
/// controller answers; when it falls silent every connection is cut and new
/// ones are closed at once, so the agent's session fails as with a
/// controller that fails.
async fn gate_connections(
    gate: tokio::net::TcpListener,
    server: SocketAddr,
    silent: watch::Receiver<bool>,
) {
    loop {
        let Ok((mut client, _)) = gate.accept().await else {
            continue;
        };
        if *silent.borrow() {
            continue;
        }
        let mut silent = silent.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = silent.wait_for(|silent| *silent) => {}
            }
        });
    }
}

/// The devices of one simulated site, served until dropped.
pub struct SiteDevices {
    pub protocol: Protocol,
    /// (asset, address) of each device.
    pub devices: Vec<(String, SocketAddr)>,
    /// The namespace index of the machines' variables (OPC UA; 0 for the
    /// other protocols).
    pub namespace: u16,
    /// Where the controllers send syslog: the agent's `syslog` source.
    pub syslog: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SiteDevices {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A free TCP port on loopback for the agent's syslog receiver: bound, then
/// released for the agent to bind.
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Serves the assets of `site` as devices of `protocol` on loopback ports
/// and sends their syslog to a port kept for the agent's `syslog` source;
/// simulated time starts at `start_ns` and runs `speed` times the wall
/// clock. OPC UA servers keep their certificate stores under `work_dir`.
pub async fn serve_site(
    site: &str,
    protocol: Protocol,
    config: &SimConfig,
    start_ns: i64,
    speed: f64,
    work_dir: &Path,
) -> std::io::Result<SiteDevices> {
    let mut sim = SimSite::new(site, config, start_ns);
    let assets: Vec<String> = sim.assets().iter().map(|a| a.to_string()).collect();
    let silences: Vec<ScenarioTruth> = sim
        .scenarios()
        .iter()
        .filter(|s| s.name == "controller_silence")
        .cloned()
        .collect();
    // The clock is set before the first poll, so no event is stamped
    // with the agent's own clock.
    let machines: Vec<Arc<Mutex<Machine>>> = assets
        .iter()
        .map(|_| Arc::new(Mutex::new(Machine::new(start_ns))))
        .collect();
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    let mut slmp = Vec::new();
    let mut opcua = Vec::new();
    let mut namespace = 0;
    for (asset, machine) in assets.iter().zip(&machines) {
        match protocol {
            Protocol::Modbus => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                devices.push((asset.clone(), listener.local_addr()?));
                let machine = machine.clone();
                tasks.push(tokio::spawn(async move {
                    let server = tokio_modbus::server::tcp::Server::new(listener);
                    let on_connected = |stream, _addr| {
                        let service = ModbusDevice {
                            machine: machine.clone(),
                        };
                        async move { Ok(Some((service, stream))) }
                    };
                    let _ = server.serve(&on_connected, |_| {}).await;
                }));
            }
            Protocol::Slmp => {
                let server = SlmpServer::start("127.0.0.1:0".parse().unwrap()).await?;
                for (head, words) in machine.lock().unwrap().slmp_words() {
                    server.set_words(head, &words);
                }
                devices.push((asset.clone(), server.addr));
                slmp.push(server);
            }
            Protocol::Opcua => {
                let pki = work_dir.join(asset.replace('/', "-"));
                let shown = machine.lock().unwrap().clone();
                let (server, addr, served) =
                    OpcuaMachine::start(asset, &shown, start_ns, &pki).await?;
                namespace = server.namespace;
                devices.push((asset.clone(), addr));
                tasks.extend(served);
                opcua.push(server);
            }
        }
    }
    let syslog = free_loopback_port()?;
    let (lines, to_send) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn(send_syslog(syslog, to_send)));
    // Simulated time drives the controllers. The SLMP CPUs and the OPC UA
    // machines' variables live in this task: they close with it.
    let servers = slmp;
    tasks.push(tokio::spawn(async move {
        let wall = Instant::now();
        let mut buf = Vec::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            ticker.tick().await;
            let now = start_ns + (wall.elapsed().as_secs_f64() * speed * 1e9) as i64;
            sim.advance(now, &mut buf);
            // An OPC UA machine's values of one simulated time, written
            // together: (machine, time, values).
            let mut writes: Vec<OpcuaWrite> = Vec::new();
            for e in buf.drain(..) {
                let Some(i) = assets.iter().position(|a| *a == e.asset) else {
                    continue;
                };
                let mut machine = machines[i].lock().unwrap();
                if !machine.apply(&e, protocol) {
                    if let Some(line) = syslog_line(&e) {
                        let _ = lines.send(line);
                    }
                } else if i < opcua.len() {
                    let values = machine.opcua_values(&e);
                    match writes.last_mut() {
                        Some((at, ts, pending)) if *at == i && *ts == e.ts_ns => {
                            pending.retain(|(node, _)| values.iter().all(|(n, _)| n != node));
                            pending.extend(values);
                        }
                        _ => writes.push((i, e.ts_ns, values)),
                    }
                }
            }
            for (i, ts, values) in writes {
                opcua[i].write(&values, ts);
            }
            for (i, machine) in machines.iter().enumerate() {
                let mut machine = machine.lock().unwrap();
                machine.clock_ms = (now / 1_000_000) as u64;
                machine.silent = silences
                    .iter()
                    .any(|s| s.asset == assets[i] && (s.start_ns..s.end_ns).contains(&now));
                if let Some(server) = servers.get(i) {
                    for (head, words) in machine.slmp_words() {
                        server.set_words(head, &words);
                    }
                    server.set_answering(!machine.silent);
                }
                if let Some(server) = opcua.get(i) {
                    server.silent.send_if_modified(|silent| {
                        std::mem::replace(silent, machine.silent) != machine.silent
                    });
                }
            }
        }
    }));
    Ok(SiteDevices {
        protocol,
        devices,
        namespace,
        syslog,
        tasks,
    })
}

/// The agent's sources for a site's devices: the protocol source below
/// and a `syslog` source receiving the controllers' lines.
pub fn site_sources(site: &SiteDevices) -> Vec<SourceConfig> {
    let protocol = match site.protocol {
        Protocol::Modbus => modbus_source(site),
        Protocol::Slmp => slmp_source(site),
        Protocol::Opcua => opcua_source(site),
    };
    let mut syslog = SyslogSourceConfig::new(None, Some(site.syslog));
    // The controllers stamp their lines with simulated time.
    syslog.timestamps = Timestamps::Message;
    // All controllers send from 127.0.0.1, and a `polling_burst` plays 30
    // simulated seconds of connections in half a second.
    syslog.max_messages_per_second = 10_000;
    vec![protocol, SourceConfig::Syslog(syslog)]
}

/// The agent's `modbus` source for a site's devices: the register map
/// above, polled at the floor (100 ms: 6 simulated seconds at the demo's
/// speed of 60), events stamped with the device's clock, samples reported
/// with each cycle's end as the simulator reports them.
fn modbus_source(site: &SiteDevices) -> SourceConfig {
    let register = |name: &str, address: u16, data_type: DataType| TagConfig {
        name: name.into(),
        kind: RegisterKind::Holding,
        address,
        data_type: Some(data_type),
        byte_order: ByteOrder::ABCD,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        deadband: 0.0,
    };
    let devices = site
        .devices
        .iter()
        .map(|(asset, addr)| ModbusDeviceConfig {
            name: asset.replace('/', "-"),
            asset: asset.clone(),
            address: addr.to_string(),
            unit_id: 1,
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(2),
            max_requests_per_second: 20,
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 0,
            samples: SampleReport::OnCycle,
            tags: vec![
                register("clock_ms", 0, DataType::U64),
                register("cycles", 4, DataType::U16),
                register("cycle_ms", 5, DataType::U32),
                register("mode", 7, DataType::U16),
                register("motor_current_a", 8, DataType::F32),
                register("temperature_c", 10, DataType::F32),
                register("supply_voltage_v", 12, DataType::F32),
            ],
            cycle: Some(cycle()),
            mode: Some(ModeConfig {
                tag: "mode".into(),
                modes: BTreeMap::from([
                    ("1".into(), "RUN".into()),
                    ("2".into(), "STOP".into()),
                    ("3".into(), "MAINT".into()),
                ]),
                name: "mode".into(),
            }),
            clock: Some("clock_ms".into()),
        })
        .collect();
    SourceConfig::Modbus(ModbusSourceConfig { devices })
}

fn cycle() -> CycleConfig {
    CycleConfig {
        counter: Some("cycles".into()),
        done: None,
        duration: Some("cycle_ms".into()),
        name: "cycle".into(),
    }
}

/// The agent's `opcua` source for a site's machines, one server each:
/// SecurityPolicy None (loopback), sampled and published every 100 ms
/// like the polled devices, the mode as a STATE, the three tags as
/// SAMPLEs and the cycle counter with its duration as CYCLE events. Every
/// value is stamped by the server with simulated time; the samples are
/// written once per cycle with the cycle's end as their time, and the
/// trigger `status_value_timestamp` reports each write even when the value
/// did not change, so that the agent sends what the `on_cycle` samples of
/// the polled devices send: each cycle's values at its end.
fn opcua_source(site: &SiteDevices) -> SourceConfig {
    let node = |name: &str| format!("ns={};s={name}", site.namespace);
    let item = |name: &str, variable: &str| ItemConfig {
        name: name.into(),
        node: node(variable),
        sampling_interval: None,
        deadband: 0.0,
        report: Some(Report::Sample),
        unit: None,
        states: BTreeMap::new(),
        trigger: Trigger::StatusValueTimestamp,
    };
    let mut items = vec![ItemConfig {
        report: Some(Report::State),
        states: BTreeMap::from([
            ("1".into(), "RUN".into()),
            ("2".into(), "STOP".into()),
            ("3".into(), "MAINT".into()),
        ]),
        trigger: Trigger::StatusValue,
        ..item("mode", OPCUA_MODE)
    }];
    items.extend(
        OPCUA_SAMPLES
            .iter()
            .map(|(tag, variable)| item(tag, variable)),
    );
    let servers = site
        .devices
        .iter()
        .map(|(asset, addr)| OpcuaServerConfig {
            name: asset.replace('/', "-"),
            asset: asset.clone(),
            endpoint: format!("opc.tcp://{addr}/"),
            security_policy: SecurityPolicy::None,
            certificate: None,
            private_key: None,
            trusted_server_certs: None,
            application_uri: "urn:otwatch:agent".into(),
            username: None,
            password_file: None,
            password_env: None,
            user_certificate: None,
            user_private_key: None,
            publishing_interval: Duration::from_millis(100),
            sampling_interval: Duration::from_millis(100),
            // A polling burst or a slow queue must not drop a cycle's values.
            queue_size: 100,
            timeout: Duration::from_secs(2),
            keep_alive: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(2),
            items: items.clone(),
            events: Vec::new(),
            cycle: Some(OpcuaCycleConfig {
                counter: node(OPCUA_CYCLES),
                duration: Some(node(OPCUA_CYCLE_TIME)),
                unit: DurationUnit::Ms,
                name: "cycle".into(),
            }),
        })
        .collect();
    SourceConfig::Opcua(OpcuaSourceConfig { servers })
}

/// The agent's `slmp` source for a site's CPUs: the device map above, the
/// CPU's status as `mode`, D20-D21 as the program fingerprint, polled
/// every 100 ms like the Modbus devices (two batch reads and, each minute,
/// the model read: 40 requests a second allowed), events stamped with the
/// CPU's clock, samples with each cycle's end. The scan time is not read:
/// the simulated machines have cycles, not scans.
fn slmp_source(site: &SiteDevices) -> SourceConfig {
    let tag = |name: &str, device: &str, data_type: SlmpType| SlmpTagConfig {
        name: name.into(),
        device: device.into(),
        data_type: Some(data_type),
        scale: 1.0,
        offset: 0.0,
        unit: None,
        deadband: 0.0,
    };
    let devices = site
        .devices
        .iter()
        .map(|(asset, addr)| SlmpDeviceConfig {
            name: asset.replace('/', "-"),
            asset: asset.clone(),
            address: addr.to_string(),
            series: Series::Q,
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(2),
            max_requests_per_second: 40,
            max_gap: 32,
            status: true,
            scan_time: false,
            identity_interval: Duration::from_secs(60),
            program_devices: vec![DeviceRange {
                device: PROGRAM_DEVICE.into(),
                count: 2,
            }],
            samples: SampleReport::OnCycle,
            tags: vec![
                tag("clock_ms", "D0", SlmpType::F64),
                tag("cycles", "D4", SlmpType::U16),
                tag("cycle_ms", "D5", SlmpType::U32),
                tag("motor_current_a", "D8", SlmpType::F32),
                tag("temperature_c", "D10", SlmpType::F32),
                tag("supply_voltage_v", "D12", SlmpType::F32),
            ],
            cycle: Some(cycle()),
            clock: Some("clock_ms".into()),
        })
        .collect();
    SourceConfig::Slmp(SlmpSourceConfig { devices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use otwatch_agent::source::syslog::config::Parser;
    use otwatch_agent::source::syslog::{message, recognize};
    use tokio_modbus::client::Reader;

    const START: i64 = 1_750_000_000_000_000_000;

    fn event(
        kind: EventKind,
        name: &str,
        value: Option<f64>,
        text: Option<&str>,
    ) -> ControllerEvent {
        ControllerEvent {
            ts_ns: START + 1_500_000,
            asset: "line1/press-01".into(),
            kind: kind as i32,
            name: name.into(),
            value,
            text: text.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn protocols_take_turns_over_the_sites() {
        let protocols: Vec<Protocol> = (0..5).map(Protocol::of_site).collect();
        assert_eq!(
            protocols,
            [
                Protocol::Modbus,
                Protocol::Slmp,
                Protocol::Opcua,
                Protocol::Modbus,
                Protocol::Slmp
            ]
        );
    }

    #[test]
    fn a_machine_shows_its_events_in_both_memory_maps() {
        let mut m = Machine::new(START);
        for (kind, name, value, text) in [
            (EventKind::Cycle, "cycle", Some(12_345.4), None),
            (EventKind::Sample, "motor_current_a", Some(4.5), None),
            (EventKind::Sample, "temperature_c", Some(41.25), None),
            (EventKind::Sample, "supply_voltage_v", Some(230.5), None),
            (EventKind::State, "mode", None, Some("MAINT")),
        ] {
            assert!(m.apply(&event(kind, name, value, text), Protocol::Modbus));
        }
        let r = m.modbus_registers();
        let clock = r[..4].iter().fold(0u64, |c, w| (c << 16) | u64::from(*w));
        assert_eq!(clock, (START / 1_000_000) as u64);
        assert_eq!(r[4], 1);
        assert_eq!((u32::from(r[5]) << 16) | u32::from(r[6]), 12_345);
        assert_eq!(r[7], 3);
        let f32_at = |at: usize| {
            let [a, b] = r[at].to_be_bytes();
            let [c, d] = r[at + 1].to_be_bytes();
            f32::from_be_bytes([a, b, c, d])
        };
        assert_eq!((f32_at(8), f32_at(10), f32_at(12)), (4.5, 41.25, 230.5));

        let [(d0, d), (program, p), (sd203, status)] = m.slmp_words();
        assert_eq!((d0, program, sd203), ("D0", "D20", "SD203"));
        let bytes: Vec<u8> = d.iter().flat_map(|w| w.to_le_bytes()).collect();
        let f64_at = |at: usize| f64::from_le_bytes(bytes[2 * at..2 * at + 8].try_into().unwrap());
        let f32_at = |at: usize| f32::from_le_bytes(bytes[2 * at..2 * at + 4].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[2 * at..2 * at + 4].try_into().unwrap());
        assert_eq!(f64_at(0), (START / 1_000_000) as f64);
        assert_eq!((d[4], u32_at(5)), (1, 12_345));
        assert_eq!((f32_at(8), f32_at(10), f32_at(12)), (4.5, 41.25, 230.5));
        assert_eq!(status, [2], "MAINT is PAUSE");
        assert_eq!((u32::from(p[1]) << 16) | u32::from(p[0]), INITIAL_PROGRAM);

        // A program download changes the SLMP program words; a Modbus
        // machine leaves it to syslog.
        let download = event(EventKind::Change, "program", None, Some("0badc0de"));
        assert!(!m.apply(&download, Protocol::Modbus));
        assert!(m.apply(&download, Protocol::Slmp));
        let [_, (_, p), _] = m.slmp_words();
        assert_eq!((u32::from(p[1]) << 16) | u32::from(p[0]), 0x0bad_c0de);
        let login = event(EventKind::Access, "login", None, None);
        assert!(!m.apply(&login, Protocol::Slmp));
        // OPC UA leaves the program download to syslog too.
        assert!(!m.apply(&download, Protocol::Opcua));
    }

    #[test]
    fn a_machine_shows_its_events_as_opcua_variables() {
        let mut m = Machine::new(START);
        let mut shown = |kind, name: &str, value, text| {
            let e = event(kind, name, value, text);
            assert!(m.apply(&e, Protocol::Opcua), "{name}");
            m.opcua_values(&e)
        };
        // A cycle's end: the counter and its duration, in one update.
        assert_eq!(
            shown(EventKind::Cycle, "cycle", Some(12_345.4), None),
            [
                (OPCUA_CYCLES, Variant::UInt32(1)),
                (OPCUA_CYCLE_TIME, Variant::UInt32(12_345))
            ]
        );
        assert_eq!(
            shown(EventKind::Cycle, "cycle", Some(9_000.0), None),
            [
                (OPCUA_CYCLES, Variant::UInt32(2)),
                (OPCUA_CYCLE_TIME, Variant::UInt32(9_000))
            ]
        );
        for (tag, node, value) in [
            ("motor_current_a", "Machine.MotorCurrent", 4.5),
            ("temperature_c", "Machine.Temperature", 41.25),
            ("supply_voltage_v", "Machine.SupplyVoltage", 230.5),
        ] {
            assert_eq!(
                shown(EventKind::Sample, tag, Some(value), None),
                [(node, Variant::Float(value as f32))]
            );
        }
        for (mode, value) in [("STOP", 2), ("MAINT", 3), ("RUN", 1)] {
            assert_eq!(
                shown(EventKind::State, "mode", None, Some(mode)),
                [(OPCUA_MODE, Variant::Int32(value))]
            );
        }
        // The agent's items name the same variables and modes.
        let site = SiteDevices {
            protocol: Protocol::Opcua,
            devices: vec![("line1/press-01".into(), "127.0.0.1:4840".parse().unwrap())],
            namespace: 2,
            syslog: "127.0.0.1:5140".parse().unwrap(),
            tasks: Vec::new(),
        };
        let SourceConfig::Opcua(source) = &site_sources(&site)[0] else {
            panic!("no opcua source");
        };
        let server = &source.servers[0];
        assert_eq!(server.endpoint, "opc.tcp://127.0.0.1:4840/");
        let items: Vec<(&str, &str)> = server
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.node.as_str()))
            .collect();
        assert_eq!(
            items,
            [
                ("mode", "ns=2;s=Machine.Mode"),
                ("motor_current_a", "ns=2;s=Machine.MotorCurrent"),
                ("temperature_c", "ns=2;s=Machine.Temperature"),
                ("supply_voltage_v", "ns=2;s=Machine.SupplyVoltage"),
            ]
        );
        assert_eq!(server.items[0].states["3"], "MAINT");
        let cycle = server.cycle.as_ref().unwrap();
        assert_eq!(
            (cycle.counter.as_str(), cycle.duration.as_deref()),
            ("ns=2;s=Machine.Cycles", Some("ns=2;s=Machine.CycleTime"))
        );
    }

    /// The value and source time (ns) of a machine's OPC UA variable.
    fn opcua_value(machine: &OpcuaMachine, node: &str) -> (Option<Variant>, StatusCode, i64) {
        let space = machine.manager.address_space().read();
        let Some(opcua::nodes::NodeType::Variable(v)) =
            space.find(&NodeId::new(machine.namespace, node))
        else {
            panic!("no variable {node}");
        };
        let value = v.value(
            opcua::types::TimestampsToReturn::Both,
            &Default::default(),
            &Default::default(),
            0.0,
        );
        let ts = value
            .source_timestamp
            .unwrap()
            .as_chrono()
            .timestamp_nanos_opt()
            .unwrap();
        (value.value, value.status.unwrap_or(StatusCode::Good), ts)
    }

    #[tokio::test]
    async fn an_opcua_machine_serves_its_values_and_falls_silent_at_its_gate() {
        let dir = tempfile::tempdir().unwrap();
        let m = Machine::new(START);
        let (server, gate, _tasks) = OpcuaMachine::start("line1/press-01", &m, START, dir.path())
            .await
            .unwrap();
        // The mode from the start; no cycle nor sample before the first
        // cycle's end.
        let (_, status, _) = opcua_value(&server, OPCUA_CYCLES);
        assert_eq!(status, StatusCode::BadWaitingForInitialData);
        assert_eq!(opcua_value(&server, OPCUA_MODE).0, Some(Variant::Int32(1)));
        let (_, status, _) = opcua_value(&server, "Machine.Temperature");
        assert_eq!(status, StatusCode::BadWaitingForInitialData);
        // Written with simulated time, rounded up to OPC UA's 100 ns.
        server.write(
            &[
                (OPCUA_CYCLES, Variant::UInt32(1)),
                (OPCUA_CYCLE_TIME, Variant::UInt32(9_000)),
            ],
            START + 9_000_000_001,
        );
        assert_eq!(
            opcua_value(&server, OPCUA_CYCLE_TIME),
            (
                Some(Variant::UInt32(9_000)),
                StatusCode::Good,
                START + 9_000_000_100
            )
        );
        // A connection through the gate reaches the server, which waits
        // for the client's Hello; when the controller falls silent the
        // gate cuts it, and closes what connects after at once.
        use tokio::io::AsyncReadExt;
        let mut open = tokio::net::TcpStream::connect(gate).await.unwrap();
        let mut buf = [0u8; 8];
        let cut = tokio::spawn(async move { open.read(&mut buf).await.map_err(|e| e.kind()) });
        tokio::task::yield_now().await;
        server.silent.send_replace(true);
        let read = cut.await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "{read:?}"
        );
        let mut stream = tokio::net::TcpStream::connect(gate).await.unwrap();
        let read = stream.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    /// What the agent's syslog source makes of a line.
    struct Received {
        /// Kind and name, when a parser recognised it.
        what: Option<(EventKind, &'static str)>,
        /// `user=` and `peer=` attributes found.
        attrs: Vec<String>,
        ts: Option<i64>,
        host: String,
    }

    fn received(line: &str) -> Received {
        let m = message::parse(line.as_bytes());
        let parsers = [Parser::CiscoIos, Parser::Openssh, Parser::Fortigate];
        let r = recognize::recognize(&parsers, m.app.as_deref(), &m.msg);
        let attrs = r
            .as_ref()
            .map(|r| {
                r.attrs
                    .iter()
                    .filter(|(k, _)| *k == "user" || *k == "peer")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        Received {
            what: r.map(|r| (r.kind, r.name)),
            attrs,
            ts: m.ts_ns,
            host: m.host.unwrap_or_default(),
        }
    }

    #[test]
    fn syslog_lines_are_recognised_by_the_agents_parsers() {
        let mut login = event(EventKind::Access, "login", None, None);
        login.attrs.insert("peer".into(), "10.1.1.20".into());
        login.attrs.insert("user".into(), "operator".into());
        let Received {
            what,
            attrs,
            ts,
            host,
        } = received(&syslog_line(&login).unwrap());
        assert_eq!(what, Some((EventKind::Access, "login")));
        assert_eq!(attrs, ["user=operator", "peer=10.1.1.20"]);
        assert_eq!(ts, Some(login.ts_ns));
        // A time between microseconds is rounded up, never down.
        login.ts_ns += 1;
        let ts = received(&syslog_line(&login).unwrap()).ts;
        assert_eq!(ts, Some(login.ts_ns - 1 + 1000));
        assert_eq!(host, "line1/press-01");

        let mut connect = event(EventKind::Access, "connect", None, None);
        connect.attrs.insert("peer".into(), "10.1.66.7".into());
        let failed = received(&syslog_line(&connect).unwrap());
        assert_eq!(failed.what, Some((EventKind::Access, "login_failed")));
        assert_eq!(failed.attrs, ["user=admin", "peer=10.1.66.7"]);

        let download = event(EventKind::Change, "program", None, Some("0badc0de"));
        let line = syslog_line(&download).unwrap();
        let change = received(&line);
        assert_eq!(change.what, Some((EventKind::Change, "config")));
        assert_eq!(change.attrs, ["user=engineer"]);
        assert_eq!(change.ts, Some(download.ts_ns));
        assert!(line.ends_with("program download 0badc0de"), "{line}");

        // Device memory carries the rest.
        let cycle = event(EventKind::Cycle, "cycle", Some(1.0), None);
        assert_eq!(syslog_line(&cycle), None);
    }

    #[test]
    fn the_agents_sources_pass_the_agents_own_checks() {
        for protocol in [Protocol::Modbus, Protocol::Slmp, Protocol::Opcua] {
            let site = SiteDevices {
                protocol,
                devices: vec![
                    ("line1/press-01".into(), "127.0.0.1:5020".parse().unwrap()),
                    ("line1/press-02".into(), "127.0.0.1:5021".parse().unwrap()),
                ],
                namespace: 2,
                syslog: "127.0.0.1:5140".parse().unwrap(),
                tasks: Vec::new(),
            };
            let sources = site_sources(&site);
            assert_eq!(sources.len(), 2);
            let checked = match (&sources[0], protocol) {
                (SourceConfig::Modbus(modbus), Protocol::Modbus) => modbus.check(),
                (SourceConfig::Slmp(slmp), Protocol::Slmp) => slmp.check(),
                (SourceConfig::Opcua(opcua), Protocol::Opcua) => opcua.check(),
                _ => panic!("{protocol:?} gave another source"),
            };
            assert_eq!(checked, Ok(()), "{protocol:?}");
            let SourceConfig::Syslog(syslog) = &sources[1] else {
                panic!("no syslog source");
            };
            assert_eq!(syslog.check(), Ok(()));
            assert_eq!(syslog.tcp_addr(), Ok(Some(site.syslog)));
            assert_eq!(syslog.timestamps, Timestamps::Message);
        }
    }

    #[tokio::test]
    async fn the_devices_registers_follow_simulated_time() {
        let site = serve_site(
            "plant-lyon",
            Protocol::Modbus,
            &SimConfig::default(),
            START,
            600.0,
            Path::new("/nonexistent"),
        )
        .await
        .unwrap();
        assert_eq!(site.devices.len(), 4);
        let (asset, addr) = site.devices[0].clone();
        assert_eq!(asset, "line1/press-01");
        let mut client = tokio_modbus::client::tcp::connect(addr).await.unwrap();
        let read = async |client: &mut tokio_modbus::client::Context| {
            client.read_holding_registers(0, 14).await.unwrap().unwrap()
        };
        let clock = |r: &[u16]| r[..4].iter().fold(0u64, |c, w| (c << 16) | u64::from(*w));
        let first = read(&mut client).await;
        assert!(clock(&first) >= (START / 1_000_000) as u64);
        // Until a few cycles have ended (8-20 s simulated each, 600x).
        let mut last = first.clone();
        for _ in 0..500 {
            if last[4] >= first[4] + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = read(&mut client).await;
        }
        assert!(last[4] >= first[4] + 2, "no cycle ended: {last:?}");
        assert!(clock(&last) > clock(&first));
        assert_eq!(last[7], 1, "the press runs");
        let cycle_ms = (u32::from(last[5]) << 16) | u32::from(last[6]);
        assert!((1000..60_000).contains(&cycle_ms), "{cycle_ms}");
        let current = f32::from_be_bytes({
            let [a, b] = last[8].to_be_bytes();
            let [c, d] = last[9].to_be_bytes();
            [a, b, c, d]
        });
        assert!(current > 0.0, "{current}");
        // Only holding registers are served.
        assert!(client.read_coils(0, 1).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn the_controllers_send_their_logins_as_syslog() {
        let site = serve_site(
            "plant-porto",
            Protocol::Slmp,
            &SimConfig::default(),
            START,
            600.0,
            Path::new("/nonexistent"),
        )
        .await
        .unwrap();
        assert_eq!(site.devices.len(), 4);
        // The agent's receiver is not there yet: the lines wait for it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = tokio::net::TcpListener::bind(site.syslog).await.unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut framer = message::Framer::new(8192);
        let mut buf = vec![0u8; 4096];
        // The HMI logs in within its first 2 simulated minutes (0.2 s here).
        let line = loop {
            use tokio::io::AsyncReadExt;
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the controllers closed the connection");
            framer.push(&buf[..n]);
            if let Some(frame) = framer.next_frame().unwrap() {
                break String::from_utf8(frame.bytes).unwrap();
            }
        };
        let login = received(&line);
        assert_eq!(login.what, Some((EventKind::Access, "login")), "{line}");
        assert!(login.ts.unwrap() >= START);
        assert!(login.host.starts_with("line"), "{line}");
    }
}
