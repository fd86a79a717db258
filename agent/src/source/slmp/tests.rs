//! The `slmp` source's parts: frames byte for byte, device names, the
//! client against the test server in both device formats, the events of a
//! sequence of answers (mode, scan time, program and model changes kept
//! across a restart), the configuration checks, and the scan for write
//! paths. pymcprotocol against the server, and the real agent against it,
//! are in `agent/tests/slmp.rs`.

use super::client::{SlmpClient, SlmpError};
use super::config::SlmpDeviceConfig;
use super::frame::{self, Device, ReadRequest, Series};
use super::server::SlmpServer;
use super::{DeviceState, Plan, Read, Saved, Values};
use crate::config::AgentConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::time::Duration;

#[test]
fn requests_are_encoded_byte_for_byte() {
    let d100 = Device::parse("D100").unwrap();
    assert_eq!(
        ReadRequest::Words {
            head: d100,
            count: 3
        }
        .encode(Series::Q, 4),
        [
            0x50, 0x00, 0x00, 0xFF, 0xFF, 0x03, 0x00, 0x0C, 0x00, 0x04, 0x00, 0x01, 0x04, 0x00,
            0x00, 0x64, 0x00, 0x00, 0xA8, 0x03, 0x00
        ]
    );
    let x1f = Device::parse("X1F").unwrap();
    assert_eq!(
        ReadRequest::Bits {
            head: x1f,
            count: 2
        }
        .encode(Series::IqR, 8)[7..],
        [
            0x0E, 0x00, 0x08, 0x00, 0x01, 0x04, 0x03, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x9C, 0x00,
            0x02, 0x00
        ]
    );
    assert_eq!(
        ReadRequest::TypeName.encode(Series::Q, 4)[7..],
        [0x06, 0x00, 0x04, 0x00, 0x01, 0x01, 0x00, 0x00]
    );
}

#[test]
fn device_names_parse_in_their_radix() {
    let parse = |t: &str| Device::parse(t).map(|d| (d.ty.name, d.number));
    assert_eq!(parse("D100"), Ok(("D", 100)));
    assert_eq!(parse("sd203"), Ok(("SD", 203)));
    assert_eq!(parse("X1F"), Ok(("X", 31)));
    assert_eq!(parse("W1A0"), Ok(("W", 0x1A0)));
    assert_eq!(parse("SM400"), Ok(("SM", 400)));
    assert_eq!(Device::parse("X1F").unwrap().to_string(), "X1F");
    for bad in ["D", "Q100", "D1A", "D99999999", ""] {
        assert!(Device::parse(bad).is_err(), "{bad}");
    }
    let bits = [true, false, false, true, true];
    assert_eq!(frame::encode_bits(&bits), [0x10, 0x01, 0x10]);
    assert_eq!(
        frame::decode_bits(&frame::encode_bits(&bits), 5).unwrap(),
        bits
    );
}

#[test]
fn the_client_can_express_nothing_but_reads() {
    let head = Device::parse("D0").unwrap();
    for series in [Series::Q, Series::IqR] {
        for request in [
            ReadRequest::Words { head, count: 1 },
            ReadRequest::Bits { head, count: 1 },
            ReadRequest::TypeName,
        ] {
            let command = request.command(series);
            assert!(
                matches!(command, (0x0401, 0x0000..=0x0003) | (0x0101, 0x0000)),
                "{request:?} is {command:04X?}"
            );
        }
    }
}

async fn server() -> SlmpServer {
    SlmpServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_client_reads_what_the_server_holds_in_both_device_formats() {
    let server = server().await;
    server.set_words("D100", &[1, 0xFFFF, 0x1234]);
    server.set_bits("X1E", &[true, false, true]);
    server.set_words("M16", &[0b1010]);
    server.set_model("Q03UDVCPU", 0x0366);
    for series in [Series::Q, Series::IqR] {
        let mut client = SlmpClient::connect(server.addr, series, Duration::from_secs(2))
            .await
            .unwrap();
        let d = |t: &str| Device::parse(t).unwrap();
        assert_eq!(
            client.read_words(d("D100"), 4).await.unwrap(),
            [1, 0xFFFF, 0x1234, 0]
        );
        assert_eq!(
            client.read_bits(d("X1E"), 3).await.unwrap(),
            [true, false, true]
        );
        assert_eq!(
            client.read_bits(d("M16"), 4).await.unwrap(),
            [false, true, false, true]
        );
        assert_eq!(
            client.read_type_name().await.unwrap(),
            ("Q03UDVCPU".to_string(), 0x0366)
        );
        // A word read of a bit device the server refuses in bit units only;
        // a read beyond the protocol's points is refused with an end code
        // and the connection stays usable.
        let refused = client.read_words(d("D0"), 961).await.unwrap_err();
        assert!(
            matches!(
                refused,
                SlmpError::Refused {
                    end_code: 0xC051,
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(client.read_words(d("D101"), 1).await.unwrap(), [0xFFFF]);
    }
    assert_eq!(
        server.commands(),
        [
            (0x0401, 0),
            (0x0401, 1),
            (0x0101, 0),
            (0x0401, 2),
            (0x0401, 3)
        ]
    );
}

#[tokio::test]
async fn the_server_refuses_and_records_a_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server().await;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Batch write (1401) of one word to D0: the server has no write.
    let write = [
        0x50, 0x00, 0x00, 0xFF, 0xFF, 0x03, 0x00, 0x0E, 0x00, 0x04, 0x00, 0x01, 0x14, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xA8, 0x01, 0x00, 0x2A, 0x00,
    ];
    raw.write_all(&write).await.unwrap();
    let mut answer = [0u8; 11];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[..2], [0xD0, 0x00]);
    assert_eq!(
        u16::from_le_bytes([answer[9], answer[10]]),
        frame::END_CODE_BAD_COMMAND
    );
    assert_eq!(server.commands(), [(0x1401, 0)]);
}

fn device(extra: &str) -> SlmpDeviceConfig {
    toml::from_str(&format!(
        "name = \"plc\"\nasset = \"line3/plc-01\"\naddress = \"127.0.0.1:5007\"\n{extra}"
    ))
    .unwrap()
}

#[test]
fn reads_are_joined_per_device_kind() {
    let d = device(
        r#"program_devices = [{ device = "D9000", count = 4 }]
           tags = [{ name = "t", device = "D100", type = "f32" }, { name = "u", device = "D110" },
                   { name = "x", device = "X10" }, { name = "y", device = "X12" }]"#,
    );
    let plan = Plan::new(&d);
    let read = |t: &str, count| Read {
        head: Device::parse(t).unwrap(),
        count,
    };
    assert_eq!(
        plan.reads,
        [
            read("D100", 11),
            read("D9000", 4),
            read("SD203", 1),
            read("SD520", 2),
            read("X10", 3),
        ]
    );
}

fn summary(events: &[ControllerEvent]) -> Vec<(EventKind, &str, Option<f64>, Option<&str>)> {
    events
        .iter()
        .map(|e| (e.kind(), e.name.as_str(), e.value, e.text.as_deref()))
        .collect()
}

#[test]
fn answers_become_mode_scan_program_and_model_events_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("slmp.json");
    let d = device(
        r#"program_devices = [{ device = "D9000", count = 2 }]
           tags = [{ name = "temp", device = "D100", type = "f32", unit = "C" }, { name = "guard", device = "X10" }]"#,
    );
    let plan = Plan::new(&d);
    let answers = |status: u16, ms: u16, us: u16, program: [u16; 2], guard: bool| {
        let [lo, hi]: [u16; 2] = {
            let b = 21.5f32.to_le_bytes();
            [
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
            ]
        };
        // In the plan's order: D100, D9000, SD203, SD520, X10.
        vec![
            Values::Words(vec![lo, hi]),
            Values::Words(program.to_vec()),
            Values::Words(vec![status]),
            Values::Words(vec![ms, us]),
            Values::Bits(vec![guard]),
        ]
    };
    let mut state = DeviceState::new(&d, &plan, Saved::load(&state_file));
    let mut out = Vec::new();
    state.model_events("R04CPU", 0x4800, 1, &mut out);
    state.events(&answers(0, 12, 300, [7, 1], true), 1, &mut out);
    let first_program = out.last().unwrap().text.clone().unwrap();
    assert_eq!(
        summary(&out),
        [
            (EventKind::Change, "cpu_model", None, Some("R04CPU (4800)")),
            (EventKind::Sample, "temp", Some(21.5), None),
            (EventKind::State, "guard", Some(1.0), Some("ON")),
            (EventKind::State, "mode", Some(0.0), Some("RUN")),
            (EventKind::Cycle, "scan", Some(12.3), None),
            (
                EventKind::Change,
                "program",
                None,
                Some(first_program.as_str())
            ),
        ]
    );
    assert!(first_program.starts_with("crc32c:") && first_program.len() == 15);
    state.save(&state_file);
    // STOP, then RUN with another program: mode changes and a CHANGE
    // naming the fingerprint before.
    let mut out = Vec::new();
    state.events(&answers(1, 0, 0, [7, 1], true), 2, &mut out);
    state.events(&answers(0, 13, 0, [8, 1], true), 3, &mut out);
    let kinds: Vec<_> = summary(&out)
        .into_iter()
        .filter(|(k, ..)| *k != EventKind::Sample && *k != EventKind::Cycle)
        .map(|(_, n, _, t)| (n, t.unwrap().to_string()))
        .collect();
    assert_eq!(
        kinds[..2],
        [("mode", "STOP".into()), ("mode", "RUN".into())]
    );
    assert_eq!(kinds[2].0, "program");
    assert_ne!(kinds[2].1, first_program);
    assert_eq!(out.last().unwrap().attrs["previous"], first_program);
    state.save(&state_file);
    // A restart reads the same model and program: nothing new to report
    // but the mode (unknown to the new process) and the readings.
    let mut restarted = DeviceState::new(&d, &plan, Saved::load(&state_file));
    let mut out = Vec::new();
    restarted.model_events("R04CPU", 0x4800, 4, &mut out);
    restarted.events(&answers(0, 13, 0, [8, 1], true), 4, &mut out);
    assert!(
        !out.iter().any(|e| e.kind() == EventKind::Change),
        "{:?}",
        summary(&out)
    );
    // Another CPU model is a change.
    restarted.model_events("R08CPU", 0x4801, 5, &mut out);
    assert_eq!(out.last().unwrap().attrs["previous"], "R04CPU (4800)");
}

#[test]
fn a_cycle_counter_and_clock_give_cycles_with_their_samples_at_the_cpus_time() {
    let d = device(
        r#"status = false
           scan_time = false
           identity_interval = "0s"
           samples = "on_cycle"
           cycle = { counter = "cycles", duration = "cycle_ms" }
           clock = "clock_ms"
           tags = [{ name = "clock_ms", device = "D0", type = "f64" },
                   { name = "cycles", device = "D4", type = "u16" },
                   { name = "cycle_ms", device = "D5", type = "u32" },
                   { name = "current", device = "D8", type = "f32" }]"#,
    );
    let plan = Plan::new(&d);
    assert_eq!(plan.reads.len(), 1, "{plan:?}");
    // D0-D9, lowest word first.
    let answers = |clock_ms: f64, cycles: u16, cycle_ms: u32, current: f32| {
        let mut words: Vec<u16> = clock_ms
            .to_le_bytes()
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        words.push(cycles);
        words.extend([cycle_ms as u16, (cycle_ms >> 16) as u16, 0]);
        let c = current.to_le_bytes();
        words.extend([
            u16::from_le_bytes([c[0], c[1]]),
            u16::from_le_bytes([c[2], c[3]]),
        ]);
        vec![Values::Words(words)]
    };
    let mut state = DeviceState::new(&d, &plan, Saved::default());
    let agent_now = 99;
    let poll = |state: &mut DeviceState, values: Vec<Values>| {
        let mut out = Vec::new();
        let now = state.time(&values, agent_now);
        state.events(&values, now, &mut out);
        out
    };
    // The first reading knows no cycle yet: nothing but the clock.
    assert_eq!(
        poll(&mut state, answers(1_750_000_000_000.0, 7, 11_000, 4.5)),
        []
    );
    // No cycle ended: no sample either.
    assert_eq!(
        poll(&mut state, answers(1_750_000_006_000.0, 7, 11_000, 4.6)),
        []
    );
    // A cycle ended: its CYCLE (the CPU's duration), then the sample, both
    // at the CPU's time; counter, duration and clock are not samples.
    let out = poll(&mut state, answers(1_750_000_012_000.0, 8, 12_500, 4.7));
    assert_eq!(
        summary(&out),
        [
            (EventKind::Cycle, "cycle", Some(12_500.0), None),
            (EventKind::Sample, "current", Some(f64::from(4.7f32)), None),
        ]
    );
    assert!(out.iter().all(|e| e.ts_ns == 1_750_000_012_000_000_000));
    // A clock that reads 0 (not set yet): the agent's clock.
    let out = poll(&mut state, answers(0.0, 9, 12_600, 4.7));
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| e.ts_ns == agent_now));
    // After a reconnection the counter's last reading is unknown: the
    // next poll ends no cycle.
    state.connected();
    assert_eq!(
        poll(&mut state, answers(1_750_000_030_000.0, 11, 12_700, 4.8)),
        []
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_leaves_the_client_waiting() {
    let server = SlmpServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.set_words("D0", &[42]);
    let mut client = SlmpClient::connect(server.addr, Series::Q, Duration::from_secs(2))
        .await
        .unwrap();
    let d0 = Device::parse("D0").unwrap();
    assert_eq!(client.read_words(d0, 1).await.unwrap(), [42]);
    server.set_answering(false);
    let hung = tokio::time::timeout(Duration::from_millis(200), client.read_words(d0, 1)).await;
    assert!(hung.is_err(), "answered while silent: {hung:?}");
    server.set_answering(true);
    let mut client = SlmpClient::connect(server.addr, Series::Q, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(client.read_words(d0, 1).await.unwrap(), [42]);
}

fn agent_config(devices: &str) -> Result<AgentConfig, String> {
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[[sources]]\ntype = \"slmp\"\n{devices}"
    );
    AgentConfig::parse(&text, "agent.toml").map_err(|e| e.to_string())
}

#[test]
fn the_configuration_is_checked_naming_the_device_and_key() {
    let base =
        "[[sources.devices]]\nname = \"plc\"\nasset = \"l/plc\"\naddress = \"10.0.0.3:5007\"\n";
    agent_config(base).unwrap();
    let refused = |extra: &str, expected: &str| {
        let err = agent_config(&format!("{base}{extra}")).unwrap_err();
        assert!(err.contains(expected), "{extra}\n=> {err}");
    };
    refused("serie = \"q\"\n", "unknown field `serie`");
    refused("series = \"fx\"\n", "unknown variant `fx`");
    refused(
        "poll_interval = \"10ms\"\n",
        "slmp device \"plc\": poll_interval = 10ms is below the floor",
    );
    refused(
        "tags = [{ name = \"t\", device = \"Q5\" }]\n",
        "tag \"t\": device \"Q5\" is not a device this agent reads",
    );
    refused(
        "tags = [{ name = \"t\", device = \"X5\", type = \"f32\" }]\n",
        "type F32 does not fit device X5",
    );
    refused(
        "program_devices = [{ device = \"M0\" }]\n",
        "program_devices \"M0\" is a bit device",
    );
    refused("status = false\nscan_time = false\n", "nothing to read");
    refused(
        "samples = \"on_cycle\"\n",
        "samples = \"on_cycle\" needs a cycle",
    );
    refused(
        "cycle = { counter = \"n\" }\ntags = [{ name = \"n\", device = \"D0\", type = \"f32\" }]\n",
        "cycle.counter \"n\" must be an integer word tag",
    );
    refused(
        "cycle = { done = \"n\" }\n",
        "cycle.done \"n\" is not one of its tags",
    );
    refused(
        "clock = \"c\"\ntags = [{ name = \"c\", device = \"M0\" }]\n",
        "clock \"c\" must be a word tag",
    );
    let scattered: Vec<String> = (0..25)
        .map(|i| format!("{{ name = \"t{i}\", device = \"D{}\" }}", i * 1000))
        .collect();
    refused(
        &format!("tags = [{}]\n", scattered.join(",")),
        "above max_requests_per_second = 20",
    );
}

/// Command codes of the MC protocol that write or control a CPU: batch and
/// random writes, remote RUN/STOP/PAUSE/latch clear/reset, file writes and
/// deletes, password unlock. None may appear in the source's code.
const SLMP_WRITE_COMMANDS: [&str; 20] = [
    "0x1401", "0x1402", "0x1403", "0x1406", "0x1001", "0x1002", "0x1003", "0x1005", "0x1006",
    "0x1203", "0x1204", "0x1205", "0x1206", "0x1822", "0x1824", "0x1827", "0x1828", "0x1829",
    "0x1630", "0x1631",
];

#[test]
fn no_write_path_exists_in_the_slmp_source() {
    for (file, line, code) in crate::source::code_lines("src/source/slmp") {
        let lower = code.to_ascii_lowercase();
        for forbidden in SLMP_WRITE_COMMANDS {
            assert!(
                !lower.contains(&forbidden.to_ascii_lowercase()),
                "{file}:{line} names command {forbidden}, a write or remote control: {code}"
            );
        }
        // Frames are built in one place only: ReadRequest::encode.
        if code.contains("REQUEST_SUBHEADER") && file != "frame.rs" && file != "server.rs" {
            panic!("{file}:{line} builds a request frame outside ReadRequest::encode: {code}");
        }
    }
}
