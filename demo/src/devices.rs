//! Simulated controllers for `otwatch demo --sources`: every asset of a
//! simulated site ([`SimSite`]) is a Modbus/TCP device on its own loopback
//! port, and the site's agent polls them with its `modbus` source instead
//! of running the simulator itself. A newcomer sees a real protocol end to
//! end: registers on the wire, decoded by the agent's tag map.
//!
//! Each device serves holding registers (read with function 3; anything
//! else is refused with an exception), updated as simulated time passes:
//!
//! | address | type | what |
//! |---|---|---|
//! | 0-3 | u64 | the controller's clock, Unix time in ms (simulated time) |
//! | 4 | u16 | cycle counter, +1 at each cycle's end |
//! | 5-6 | u32 | duration of the last cycle, ms |
//! | 7 | u16 | mode: 1 RUN, 2 STOP, 3 MAINT |
//! | 8-9 | f32 | motor_current_a |
//! | 10-11 | f32 | temperature_c |
//! | 12-13 | f32 | supply_voltage_v |
//!
//! What registers cannot carry: ACCESS events (logins, the connections of
//! `polling_burst`) and CHANGE events (the checksum of `program_download`)
//! are not register values; those two scenarios are left out of a
//! `--sources` run. A `controller_silence` device stops answering for the
//! scenario's length, as a controller that fails does.

use otwatch_agent::config::SourceConfig;
use otwatch_agent::sim::{ScenarioTruth, SimConfig, SimSite};
use otwatch_agent::source::modbus::config::{
    ByteOrder, CycleConfig, DataType, ModbusDeviceConfig, ModeConfig, RegisterKind, TagConfig,
};
use otwatch_agent::source::modbus::ModbusSourceConfig;
use otwatch_agent::source::poll::SampleReport;
use otwatch_proto::EventKind;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scenarios whose events registers cannot carry.
pub const NOT_CARRIED: [(&str, &str); 2] = [
    (
        "program_download",
        "a program checksum is a CHANGE event, not a register value",
    ),
    (
        "polling_burst",
        "connections are ACCESS events, not register values",
    ),
];

/// How often the devices' registers follow simulated time (wall clock).
const TICK: Duration = Duration::from_millis(20);
/// Registers a device serves.
const REGISTERS: usize = 14;

/// One device's registers and whether it answers.
#[derive(Debug, Default)]
struct Image {
    registers: [u16; REGISTERS],
    silent: bool,
}

impl Image {
    fn set_f32(&mut self, at: usize, v: f32) {
        let b = v.to_be_bytes();
        self.registers[at] = u16::from_be_bytes([b[0], b[1]]);
        self.registers[at + 1] = u16::from_be_bytes([b[2], b[3]]);
    }
}

struct Device {
    image: Arc<Mutex<Image>>,
}

impl tokio_modbus::server::Service for Device {
    type Request = tokio_modbus::Request<'static>;
    type Response = Option<tokio_modbus::Response>;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let image = self.image.lock().unwrap();
        if image.silent {
            // A controller that fails does not answer at all.
            return std::future::ready(Ok(None));
        }
        std::future::ready(match request {
            tokio_modbus::Request::ReadHoldingRegisters(addr, count) => {
                let (start, end) = (usize::from(addr), usize::from(addr) + usize::from(count));
                if end <= REGISTERS {
                    Ok(Some(tokio_modbus::Response::ReadHoldingRegisters(
                        image.registers[start..end].to_vec(),
                    )))
                } else {
                    Err(tokio_modbus::ExceptionCode::IllegalDataAddress)
                }
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

/// The devices of one simulated site, served until dropped.
pub struct SiteDevices {
    /// (asset, address) of each device.
    pub devices: Vec<(String, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SiteDevices {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves the assets of `site` as Modbus/TCP devices on loopback ports;
/// simulated time starts at `start_ns` and runs `speed` times the wall clock.
pub async fn serve_site(
    site: &str,
    config: &SimConfig,
    start_ns: i64,
    speed: f64,
) -> std::io::Result<SiteDevices> {
    let mut sim = SimSite::new(site, config, start_ns);
    let assets: Vec<String> = sim.assets().iter().map(|a| a.to_string()).collect();
    let silences: Vec<ScenarioTruth> = sim
        .scenarios()
        .iter()
        .filter(|s| s.name == "controller_silence")
        .cloned()
        .collect();
    let images: Vec<Arc<Mutex<Image>>> = assets.iter().map(|_| Arc::default()).collect();
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for (asset, image) in assets.iter().zip(&images) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        devices.push((asset.clone(), listener.local_addr()?));
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, _addr| {
                let service = Device {
                    image: image.clone(),
                };
                async move { Ok(Some((service, stream))) }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        }));
    }
    // Simulated time drives the registers.
    tasks.push(tokio::spawn(async move {
        let wall = Instant::now();
        let mut buf = Vec::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            ticker.tick().await;
            let now = start_ns + (wall.elapsed().as_secs_f64() * speed * 1e9) as i64;
            sim.advance(now, &mut buf);
            for e in buf.drain(..) {
                let Some(i) = assets.iter().position(|a| *a == e.asset) else {
                    continue;
                };
                let mut image = images[i].lock().unwrap();
                let r = &mut image.registers;
                match e.kind() {
                    EventKind::Cycle => {
                        r[4] = r[4].wrapping_add(1);
                        let ms = e.value.unwrap_or(0.0).round() as u32;
                        r[5] = (ms >> 16) as u16;
                        r[6] = ms as u16;
                    }
                    EventKind::State => {
                        r[7] = match e.text.as_deref() {
                            Some("RUN") => 1,
                            Some("STOP") => 2,
                            _ => 3,
                        };
                    }
                    EventKind::Sample => {
                        let at = match e.name.as_str() {
                            "motor_current_a" => 8,
                            "temperature_c" => 10,
                            _ => 12,
                        };
                        image.set_f32(at, e.value.unwrap_or(0.0) as f32);
                    }
                    _ => {}
                }
            }
            let clock_ms = (now / 1_000_000) as u64;
            for (i, image) in images.iter().enumerate() {
                let mut image = image.lock().unwrap();
                for (w, chunk) in clock_ms.to_be_bytes().chunks(2).enumerate() {
                    image.registers[w] = u16::from_be_bytes([chunk[0], chunk[1]]);
                }
                image.silent = silences
                    .iter()
                    .any(|s| s.asset == assets[i] && (s.start_ns..s.end_ns).contains(&now));
            }
        }
    }));
    Ok(SiteDevices { devices, tasks })
}

/// The agent's `modbus` source for a site's devices: the register map
/// above, polled at the floor (100 ms: 6 simulated seconds at the demo's
/// speed of 60), events stamped with the device's clock, samples reported
/// with each cycle's end as the simulator reports them.
pub fn modbus_source(devices: &SiteDevices) -> SourceConfig {
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
    let devices = devices
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
            cycle: Some(CycleConfig {
                counter: Some("cycles".into()),
                done: None,
                duration: Some("cycle_ms".into()),
                name: "cycle".into(),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_modbus::client::Reader;

    #[tokio::test]
    async fn the_devices_registers_follow_simulated_time() {
        let start = 1_750_000_000_000_000_000;
        let site = serve_site("plant-lyon", &SimConfig::default(), start, 600.0)
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
        // The registers are set at the simulator's first tick.
        let mut first = read(&mut client).await;
        for _ in 0..1000 {
            if clock(&first) != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            first = read(&mut client).await;
        }
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
        assert!(clock(&last) > clock(&first) && clock(&first) >= (start / 1_000_000) as u64);
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
}
