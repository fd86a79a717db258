//! The real `otwatch-agent` binary polls two Modbus/TCP devices (pymodbus
//! servers, `peers/modbus_device.py`, whose registers change over time) and
//! its events reach a real collector. One device dies and comes back while
//! the other keeps answering; the values decode as Python packed them; only
//! read function codes reach the devices.

#![cfg(feature = "modbus")]

mod common;

use common::{
    free_port, http_get, metric, python_has, start_agent, wait_listening, wait_until, Child,
    TestCollector,
};
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::BTreeSet;
use std::path::Path;

/// A pymodbus device on `port`, recording the function codes it receives
/// in `record`.
fn device(port: u16, record: &Path, log: &Path) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus_device.py");
    Child::start(
        "python3",
        &[
            script,
            "--port",
            &port.to_string(),
            "--record",
            record.to_str().unwrap(),
        ],
        log,
    )
}

/// The tag map of `modbus_device.py`.
const TAGS: &str = r#"
max_gap = 8
poll_interval = "200ms"
timeout = "500ms"
reconnect_min = "200ms"
reconnect_max = "1s"
tags = [
  { name = "cycles", kind = "holding", address = 0 },
  { name = "mode", kind = "holding", address = 1 },
  { name = "temp_c", kind = "holding", address = 10, type = "f32" },
  { name = "serial", kind = "holding", address = 12, type = "u32", byte_order = "CDAB" },
  { name = "offset_mm", kind = "holding", address = 14, type = "i16", scale = 0.1 },
  { name = "ramp", kind = "holding", address = 15 },
  { name = "energy_wh", kind = "holding", address = 16, type = "f64", byte_order = "DCBA" },
  { name = "strokes", kind = "holding", address = 20, type = "u64" },
  { name = "position", kind = "holding", address = 24, type = "i32", byte_order = "BADC" },
  { name = "broken", kind = "holding", address = 26, type = "f32" },
  { name = "voltage", kind = "input", address = 0, scale = 0.1, unit = "V" },
  { name = "door", kind = "coil", address = 0 },
  { name = "estop_ok", kind = "discrete_input", address = 0 },
]
cycle = { counter = "cycles" }
mode = { tag = "mode", modes = { "1" = "RUN", "2" = "STOP" } }
"#;

fn of<'a>(events: &'a [ControllerEvent], asset: &str) -> Vec<&'a ControllerEvent> {
    events.iter().filter(|e| e.asset == asset).collect()
}

fn count(events: &[ControllerEvent], asset: &str, kind: EventKind) -> usize {
    of(events, asset)
        .iter()
        .filter(|e| e.kind() == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_one_dies_and_comes_back_while_the_other_keeps_answering() {
    if !python_has(&["pymodbus"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let (port_a, port_b, metrics_port) = (free_port(), free_port(), free_port());
    let (record_a, record_b) = (dir.path().join("a.fc"), dir.path().join("b.fc"));
    let _a = device(port_a, &record_a, &dir.path().join("a.log"));
    let b = device(port_b, &record_b, &dir.path().join("b.log"));
    wait_listening(port_a).await;
    wait_listening(port_b).await;

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"modbus\"\n\
             [[sources.devices]]\nname = \"press-a\"\nasset = \"line1/press-a\"\naddress = \"127.0.0.1:{port_a}\"\n{TAGS}\n\
             [[sources.devices]]\nname = \"press-b\"\nasset = \"line1/press-b\"\naddress = \"127.0.0.1:{port_b}\"\n{TAGS}\n",
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
        ),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = start_agent(&config, &agent_log);
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;

    wait_until(
        "both devices' samples, cycles, mode and door changes reach the collector",
        async || {
            let events = stored().await;
            let changes = |asset: &str, name: &str| {
                of(&events, asset)
                    .iter()
                    .filter(|e| e.kind() == EventKind::State && e.name == name)
                    .count()
            };
            ["line1/press-a", "line1/press-b"].iter().all(|a| {
                count(&events, a, EventKind::Sample) >= 20
                    && count(&events, a, EventKind::Cycle) >= 1
                    && changes(a, "mode") >= 2
                    && changes(a, "door") >= 2
            })
        },
    )
    .await;

    // Device B dies (its process is killed): A goes on.
    drop(b);
    let killed_at = common::now_ns();
    let a_before = count(&stored().await, "line1/press-a", EventKind::Sample);
    let down = "otwatch_agent_device_up{site=\"plant-a\",agent=\"gw-1\",source=\"modbus\",device=\"press-b\"}";
    let b_errors = "otwatch_agent_device_errors_total{site=\"plant-a\",agent=\"gw-1\",source=\"modbus\",device=\"press-b\"}";
    wait_until(
        "the agent counts press-b's failures while press-a's samples keep coming",
        async || {
            let text = http_get(&metrics_addr, "/metrics").await;
            metric(&text, down) == Some(0)
                && metric(&text, b_errors).unwrap_or(0) >= 3
                && count(&stored().await, "line1/press-a", EventKind::Sample) >= a_before + 50
        },
    )
    .await;
    let b_down = count(&stored().await, "line1/press-b", EventKind::Sample);

    // B comes back on its port: the agent reconnects by itself.
    let _b = device(port_b, &record_b, &dir.path().join("b.log"));
    let back_at = common::now_ns();
    wait_until("press-b's samples resume", async || {
        count(&stored().await, "line1/press-b", EventKind::Sample) >= b_down + 20
    })
    .await;
    let text = http_get(&metrics_addr, "/metrics").await;
    assert_eq!(metric(&text, down), Some(1), "{text}");
    assert!(
        agent.terminate(),
        "the agent did not stop cleanly: {}",
        std::fs::read_to_string(&agent_log).unwrap()
    );

    let events = stored().await;
    let log = std::fs::read_to_string(&agent_log).unwrap();
    for asset in ["line1/press-a", "line1/press-b"] {
        let mine = of(&events, asset);
        let samples = |name: &str| -> Vec<f64> {
            mine.iter()
                .filter(|e| e.kind() == EventKind::Sample && e.name == name)
                .map(|e| e.value.unwrap())
                .collect()
        };
        // Constants decode exactly as Python's struct packed them.
        for (tag, expected) in [
            ("temp_c", 21.5),
            ("serial", 305419896.0),
            ("energy_wh", -9876.54321),
            ("strokes", (1u64 << 40) as f64 + 7.0),
            ("position", -100000.0),
        ] {
            let values = samples(tag);
            assert!(
                !values.is_empty() && values.iter().all(|v| *v == expected),
                "{asset} {tag}: {values:?}"
            );
        }
        assert!(samples("offset_mm")
            .iter()
            .all(|v| (v + 123.4).abs() < 1e-9));
        assert!(samples("voltage").iter().all(|v| (v - 230.5).abs() < 1e-9));
        let voltage = mine.iter().find(|e| e.name == "voltage").unwrap();
        assert_eq!(voltage.attrs["unit"], "V");
        // The NaN is never queued; tags used for cycles and modes are not samples.
        for hidden in ["broken", "cycles", "mode"] {
            assert!(
                samples(hidden).is_empty(),
                "{asset}: {hidden} reported as a sample"
            );
        }
        // The ramp moves over time.
        let ramp: BTreeSet<u64> = samples("ramp").iter().map(|v| *v as u64).collect();
        assert!(ramp.len() > 1, "{asset} ramp {ramp:?}");
        // Bits and modes are reported when they change, never twice alike.
        for (name, texts) in [("door", ["ON", "OFF"]), ("mode", ["RUN", "STOP"])] {
            let states: Vec<&str> = mine
                .iter()
                .filter(|e| e.kind() == EventKind::State && e.name == name)
                .map(|e| e.text.as_deref().unwrap())
                .collect();
            assert!(states.len() >= 2, "{asset} {name}: {states:?}");
            assert!(
                states.iter().all(|s| texts.contains(s)),
                "{asset} {name}: {states:?}"
            );
            assert!(
                states.windows(2).all(|w| w[0] != w[1]),
                "{asset} {name} repeated: {states:?}"
            );
        }
        let estop = mine.iter().filter(|e| e.name == "estop_ok").count();
        assert_eq!(estop, 1, "{asset}: a constant input is reported once");
        let cycles: Vec<f64> = mine
            .iter()
            .filter(|e| e.kind() == EventKind::Cycle)
            .map(|e| e.value.unwrap())
            .collect();
        assert!(
            !cycles.is_empty() && cycles.iter().all(|c| *c > 0.0),
            "{asset}: {cycles:?}"
        );
        eprintln!(
            "{asset}: {} events, cycle durations measured (ms): {cycles:?}",
            mine.len()
        );
    }
    // press-a answered all along: it has samples from B's outage.
    let during = of(&events, "line1/press-a")
        .iter()
        .filter(|e| e.ts_ns > killed_at && e.ts_ns < back_at)
        .count();
    assert!(during > 0, "press-a stopped while press-b was down");
    // The outage and the recovery are in the log, once each per outage.
    assert!(
        log.contains("device failed; the other devices go on"),
        "{log}"
    );
    assert!(log.contains("device answers again"), "{log}");
    assert!(log.contains("skipping a value the limits refuse"), "{log}");
    // Only the four read functions ever reached the devices.
    for record in [&record_a, &record_b] {
        let codes: BTreeSet<u8> = std::fs::read_to_string(record)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert!(!codes.is_empty());
        assert!(
            codes.is_subset(&BTreeSet::from([1, 2, 3, 4])),
            "function codes received: {codes:?}"
        );
    }
}
