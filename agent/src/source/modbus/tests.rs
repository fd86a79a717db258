//! The `modbus` source's parts on their own: decoding against registers
//! packed by Python's `struct` (the values `agent/tests/peers/modbus_device.py`
//! serves, as pymodbus sent them), request planning, the events of a
//! sequence of answers, the configuration checks, and the scan for write
//! paths. End-to-end runs against a pymodbus device are in
//! `agent/tests/modbus.rs`.

use super::client::Values;
use super::config::{ByteOrder, DataType, ModbusDeviceConfig, RegisterKind};
use super::plan::{decode, Plan, Read};
use super::DeviceState;
use crate::config::{AgentConfig, SourceConfig};
use otwatch_proto::{ControllerEvent, EventKind};

#[test]
fn values_decode_as_python_packs_them_in_every_byte_order() {
    // Registers as pymodbus served them for modbus_device.py's constants.
    let cases: [(&[u16], DataType, ByteOrder, f64); 6] = [
        (&[16812, 0], DataType::F32, ByteOrder::ABCD, 21.5),
        (&[22136, 4660], DataType::U32, ByteOrder::CDAB, 305419896.0),
        (&[64302], DataType::I16, ByteOrder::ABCD, -1234.0),
        (
            &[28352, 59271, 17738, 50112],
            DataType::F64,
            ByteOrder::DCBA,
            -9876.54321,
        ),
        (
            &[0, 256, 0, 7],
            DataType::U64,
            ByteOrder::ABCD,
            (1u64 << 40) as f64 + 7.0,
        ),
        (&[65279, 24697], DataType::I32, ByteOrder::BADC, -100000.0),
    ];
    for (words, ty, order, expected) in cases {
        assert_eq!(decode(words, ty, order), expected, "{ty:?} {order:?}");
    }
    // One value in all four orders (0x11223344 as u32).
    for (order, words) in [
        (ByteOrder::ABCD, [0x1122, 0x3344]),
        (ByteOrder::CDAB, [0x3344, 0x1122]),
        (ByteOrder::BADC, [0x2211, 0x4433]),
        (ByteOrder::DCBA, [0x4433, 0x2211]),
    ] {
        assert_eq!(
            decode(&words, DataType::U32, order),
            287454020.0,
            "{order:?}"
        );
    }
    assert_eq!(decode(&[0x3412], DataType::U16, ByteOrder::DCBA), 4660.0);
    assert!(decode(&[0x7fc0, 0], DataType::F32, ByteOrder::ABCD).is_nan());
}

fn device(toml_tags: &str, extra: &str) -> ModbusDeviceConfig {
    let text = format!(
        "name = \"d\"\nasset = \"line1/press-01\"\naddress = \"127.0.0.1:502\"\n{extra}\ntags = [{toml_tags}]\n"
    );
    toml::from_str(&text).unwrap()
}

#[test]
fn adjacent_tags_share_a_read_up_to_the_protocol_limits() {
    let d = device(
        r#"{ name = "a", kind = "holding", address = 0 },
           { name = "b", kind = "holding", address = 1, type = "f32" },
           { name = "c", kind = "holding", address = 3, type = "u64" },
           { name = "far", kind = "holding", address = 10 },
           { name = "i", kind = "input", address = 3 },
           { name = "over", kind = "holding", address = 2 },
           { name = "x", kind = "coil", address = 5 },
           { name = "y", kind = "coil", address = 6 },
           { name = "z", kind = "discrete_input", address = 6 }"#,
        "",
    );
    let plan = Plan::new(&d);
    let read = |kind, start, count| Read { kind, start, count };
    assert_eq!(
        plan.reads,
        vec![
            read(RegisterKind::Holding, 0, 7),
            read(RegisterKind::Holding, 10, 1),
            read(RegisterKind::Input, 3, 1),
            read(RegisterKind::Coil, 5, 2),
            read(RegisterKind::DiscreteInput, 6, 1),
        ]
    );
    assert_eq!((plan.slots[2].read, plan.slots[2].offset), (0, 3));
    assert_eq!((plan.slots[5].read, plan.slots[5].offset), (0, 2));
    assert_eq!((plan.slots[7].read, plan.slots[7].offset), (3, 1));
    // A gap of up to max_gap unread registers joins two runs.
    let gapped = Plan::new(&ModbusDeviceConfig {
        max_gap: 3,
        ..d.clone()
    });
    assert_eq!(gapped.reads[0], read(RegisterKind::Holding, 0, 11));
    // 300 adjacent registers: 125 + 125 + 50; 4500 coils: 2000 + 2000 + 500.
    let many: Vec<String> = (0..300)
        .map(|a| format!("{{ name = \"h{a}\", kind = \"holding\", address = {a} }}"))
        .chain((0..4500).map(|a| format!("{{ name = \"c{a}\", kind = \"coil\", address = {a} }}")))
        .collect();
    let plan = Plan::new(&device(&many.join(","), ""));
    let counts: Vec<u16> = plan.reads.iter().map(|r| r.count).collect();
    assert_eq!(counts, [125, 125, 50, 2000, 2000, 500]);
    // A device that takes fewer per read gets smaller reads.
    let plan = Plan::new(&device(
        &many[..300].join(","),
        "max_registers_per_request = 100",
    ));
    assert_eq!(plan.reads.len(), 3);
    // A 32-bit value never straddles two reads.
    let straddle: Vec<String> = (0..63)
        .map(|a| {
            format!(
                "{{ name = \"f{a}\", kind = \"holding\", address = {}, type = \"f32\" }}",
                a * 2 + 1
            )
        })
        .chain(std::iter::once(
            "{ name = \"first\", kind = \"holding\", address = 0 }".to_string(),
        ))
        .collect();
    let plan = Plan::new(&device(&straddle.join(","), ""));
    assert_eq!(
        plan.reads.iter().map(|r| r.count).collect::<Vec<_>>(),
        [125, 2]
    );
}

fn kinds(events: &[ControllerEvent]) -> Vec<(EventKind, String, Option<f64>, Option<String>)> {
    events
        .iter()
        .map(|e| (e.kind(), e.name.clone(), e.value, e.text.clone()))
        .collect()
}

const SEC: i64 = 1_000_000_000;

#[test]
fn a_poll_sequence_gives_samples_cycles_modes_and_bit_changes() {
    let d = device(
        r#"{ name = "temp", kind = "holding", address = 0, scale = 0.1, offset = -10, unit = "C" },
           { name = "count", kind = "holding", address = 1 },
           { name = "mode", kind = "holding", address = 2 },
           { name = "door", kind = "coil", address = 0 }"#,
        "cycle = { counter = \"count\" }\nmode = { tag = \"mode\", modes = { \"1\" = \"RUN\", \"2\" = \"STOP\" } }",
    );
    let plan = Plan::new(&d);
    let mut state = DeviceState::new(&d, &plan);
    let answer = |temp: u16, count: u16, mode: u16, door: bool| {
        vec![
            Values::Words(vec![temp, count, mode]),
            Values::Bits(vec![door]),
        ]
    };
    let t0 = 1_700_000_000 * SEC;
    let first = state.events(&answer(300, 7, 1, false), t0);
    assert_eq!(
        kinds(&first),
        vec![
            (EventKind::Sample, "temp".into(), Some(20.0), None),
            (
                EventKind::State,
                "door".into(),
                Some(0.0),
                Some("OFF".into())
            ),
            (
                EventKind::State,
                "mode".into(),
                Some(1.0),
                Some("RUN".into())
            ),
        ]
    );
    assert_eq!(first[0].attrs["unit"], "C");
    assert!(first
        .iter()
        .all(|e| e.asset == "line1/press-01" && e.ts_ns == t0));
    // The counter moved once: a cycle ended, but its start is unknown.
    let second = state.events(&answer(301, 8, 1, false), t0 + SEC);
    assert_eq!(
        kinds(&second),
        vec![(EventKind::Sample, "temp".into(), Some(20.1), None)]
    );
    // Two cycles in 3 s: two of 1.5 s. The door opens, the mode changes.
    let third = state.events(&answer(301, 10, 2, true), t0 + 4 * SEC);
    assert_eq!(
        kinds(&third),
        [
            (EventKind::Cycle, "cycle".into(), Some(1500.0), None),
            (EventKind::Cycle, "cycle".into(), Some(1500.0), None),
            (EventKind::Sample, "temp".into(), Some(20.1), None),
            (
                EventKind::State,
                "door".into(),
                Some(1.0),
                Some("ON".into())
            ),
            (
                EventKind::State,
                "mode".into(),
                Some(2.0),
                Some("STOP".into())
            ),
        ]
    );
    // A reset counter ends no cycle, and the next cycle's start is unknown;
    // an unlisted mode is reported by number.
    let fourth = state.events(&answer(301, 0, 9, true), t0 + 5 * SEC);
    assert_eq!(
        kinds(&fourth)[1..],
        [(
            EventKind::State,
            "mode".into(),
            Some(9.0),
            Some("UNKNOWN(9)".into())
        )]
    );
    let fifth = state.events(&answer(301, 1, 9, true), t0 + 6 * SEC);
    assert_eq!(kinds(&fifth).len(), 1);
    let sixth = state.events(&answer(301, 2, 9, true), t0 + 8 * SEC);
    assert_eq!(
        kinds(&sixth)[0],
        (EventKind::Cycle, "cycle".into(), Some(2000.0), None)
    );
    // After a reconnection the counter's last value and the first cycle's
    // start are unknown again: two cycle ends are needed for a duration.
    state.connected();
    assert_eq!(
        state.events(&answer(301, 3, 9, true), t0 + 20 * SEC).len(),
        1
    );
    assert_eq!(
        state.events(&answer(301, 4, 9, true), t0 + 21 * SEC).len(),
        1
    );
    assert_eq!(
        state.events(&answer(301, 5, 9, true), t0 + 23 * SEC).len(),
        2
    );
}

#[test]
fn done_bits_controller_durations_and_on_change_samples() {
    let d = device(
        r#"{ name = "level", kind = "input", address = 0, deadband = 2 },
           { name = "last_ms", kind = "input", address = 1 },
           { name = "done", kind = "discrete_input", address = 3 }"#,
        "samples = \"on_change\"\ncycle = { done = \"done\", duration = \"last_ms\", name = \"press\" }",
    );
    let plan = Plan::new(&d);
    let mut state = DeviceState::new(&d, &plan);
    let answer = |level: u16, ms: u16, done: bool| {
        vec![Values::Words(vec![level, ms]), Values::Bits(vec![done])]
    };
    let names = |events: Vec<ControllerEvent>| -> Vec<(String, Option<f64>)> {
        events.into_iter().map(|e| (e.name, e.value)).collect()
    };
    assert_eq!(
        names(state.events(&answer(100, 0, true), 0)),
        [("level".to_string(), Some(100.0))]
    );
    // Within the deadband: nothing; a rising edge with the controller's duration.
    assert_eq!(names(state.events(&answer(102, 0, false), SEC)), []);
    assert_eq!(
        names(state.events(&answer(101, 812, true), 2 * SEC)),
        [("press".to_string(), Some(812.0))]
    );
    assert_eq!(
        names(state.events(&answer(97, 812, true), 3 * SEC)),
        [("level".to_string(), Some(97.0))]
    );
}

#[test]
fn on_cycle_samples_come_with_each_cycle_end_only() {
    let d = device(
        r#"{ name = "count", kind = "holding", address = 0 },
           { name = "current", kind = "holding", address = 1 },
           { name = "door", kind = "coil", address = 0 }"#,
        "samples = \"on_cycle\"\ncycle = { counter = \"count\" }",
    );
    let plan = Plan::new(&d);
    let mut state = DeviceState::new(&d, &plan);
    let answer = |count: u16, current: u16, door: bool| {
        vec![
            Values::Words(vec![count, current]),
            Values::Bits(vec![door]),
        ]
    };
    let names = |events: Vec<ControllerEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.name).collect()
    };
    // A bit is reported at once; the current waits for a cycle's end.
    assert_eq!(names(state.events(&answer(1, 10, false), 0)), ["door"]);
    assert_eq!(
        names(state.events(&answer(1, 11, false), SEC)),
        Vec::<String>::new()
    );
    assert_eq!(
        names(state.events(&answer(2, 12, false), 2 * SEC)),
        ["current"]
    );
    assert_eq!(
        names(state.events(&answer(3, 12, true), 3 * SEC)),
        ["cycle", "current", "door"]
    );
}

#[test]
fn a_clock_tag_stamps_the_events_with_the_controllers_time() {
    let d = device(
        r#"{ name = "clock_ms", kind = "holding", address = 0, type = "u64" },
           { name = "level", kind = "holding", address = 4 }"#,
        "clock = \"clock_ms\"",
    );
    let plan = Plan::new(&d);
    let mut state = DeviceState::new(&d, &plan);
    let answer = |ms: u64| {
        let mut words = ms
            .to_be_bytes()
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect::<Vec<_>>();
        words.push(7);
        vec![Values::Words(words)]
    };
    // Exact to the nanosecond, also where ms × 1e6 as a float would not be.
    for ms in [1_750_000_123_456u64, 1_764_075_545_966] {
        let events = state.events(&answer(ms), 42);
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Sample, "level".into(), Some(7.0), None)]
        );
        assert_eq!(events[0].ts_ns, ms as i64 * 1_000_000);
    }
    // A clock that reads 0 (not set yet): the agent's clock.
    assert_eq!(state.events(&answer(0), 42)[0].ts_ns, 42);
}

fn agent_config(source: &str) -> Result<AgentConfig, String> {
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[[sources]]\ntype = \"modbus\"\n{source}"
    );
    AgentConfig::parse(&text, "agent.toml").map_err(|e| e.to_string())
}

const DEVICE: &str = "[[sources.devices]]\nname = \"press\"\nasset = \"line1/press-01\"\naddress = \"10.0.0.9:502\"\n";

#[test]
fn the_configuration_is_checked_naming_the_device_and_key() {
    let good = format!("{DEVICE}tags = [{{ name = \"t\", kind = \"holding\", address = 0 }}]\n");
    let config = agent_config(&good).unwrap();
    let SourceConfig::Modbus(modbus) = &config.sources[0] else {
        panic!("not a modbus source");
    };
    let d = &modbus.devices[0];
    assert_eq!(
        (
            d.unit_id,
            d.poll_interval.as_secs(),
            d.max_requests_per_second
        ),
        (1, 1, 20)
    );
    let refused = |text: String, expected: &str| {
        let err = agent_config(&text).unwrap_err();
        assert!(err.contains(expected), "{text}\n=> {err}");
    };
    refused(format!("{good}polll = 1\n"), "unknown field `polll`");
    refused(
        format!(
            "{DEVICE}tags = [{{ name = \"t\", kind = \"holding\", address = 0, scael = 2 }}]\n"
        ),
        "unknown field `scael`",
    );
    refused(
        format!("{good}poll_interval = \"20ms\"\n"),
        "modbus device \"press\": poll_interval = 20ms is below the floor of 100ms",
    );
    // 30 separate registers every 500 ms: 60 requests/s.
    let scattered: Vec<String> = (0..30)
        .map(|a| {
            format!(
                "{{ name = \"t{a}\", kind = \"holding\", address = {} }}",
                a * 10
            )
        })
        .collect();
    refused(
        format!("{DEVICE}poll_interval = \"500ms\"\ntags = [{}]\n", scattered.join(",")),
        "one poll takes 30 request(s); every poll_interval = 500ms that is 60.0 requests/s, above max_requests_per_second = 20",
    );
    refused(
        format!(
            "{DEVICE}tags = [{{ name = \"t\", kind = \"coil\", address = 0, type = \"f32\" }}]\n"
        ),
        "tag \"t\": type F32 does not fit kind Coil",
    );
    refused(
        format!("{good}cycle = {{ counter = \"nope\" }}\n"),
        "cycle.counter \"nope\" is not one of its tags",
    );
    refused(
        format!("{good}cycle = {{ done = \"t\" }}\n"),
        "cycle.done \"t\" must be a coil or discrete input",
    );
    refused(
        format!("{good}mode = {{ tag = \"t\", modes = {{ \"run\" = \"RUN\" }} }}\n"),
        "mode.modes key \"run\" is not a whole number",
    );
    refused(
        good.replace("10.0.0.9:502", "10.0.0.9"),
        "address \"10.0.0.9\" is not host:port",
    );
    refused(
        format!("{good}max_registers_per_request = 126\n"),
        "max_registers_per_request = 126 must be 1 to 125",
    );
    refused(format!("{good}{good}"), "two devices are named \"press\"");
}

/// Names that would reach a write in tokio-modbus or in a hand-made frame:
/// the `Writer` trait and its methods, the generic `call`, and the write
/// function codes' request variants.
const MODBUS_WRITE_PATHS: [&str; 12] = [
    "Writer",
    "write_single",
    "write_multiple",
    "masked_write",
    "read_write_multiple",
    ".call(",
    "Request::Write",
    "Request::Masked",
    "Request::ReadWrite",
    "Request::Custom",
    "FunctionCode::Write",
    "prelude",
];

#[test]
fn no_write_path_exists_in_the_modbus_source() {
    for (file, line, code) in crate::source::code_lines("src/source/modbus") {
        for forbidden in MODBUS_WRITE_PATHS {
            assert!(
                !code.contains(forbidden),
                "{file}:{line} names {forbidden:?}, a way to write to a device: {code}"
            );
        }
    }
}
