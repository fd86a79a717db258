//! SLMP end to end. pymcprotocol, a second implementation of the client
//! side, reads from the agent's test server (`source::slmp::server`), so
//! the server answers as MELSEC clients expect; then the real
//! `otwatch-agent` binary polls that server and its events reach a real
//! collector: operating mode, scan time, tags, program and CPU model
//! changes (also across an agent restart), and nothing but reads arrives.

#![cfg(feature = "slmp")]

mod common;

use common::{free_port, python_has, start_agent, wait_until, TestCollector};
use otwatch_agent::source::slmp::server::SlmpServer;
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};

/// Reads through pymcprotocol and prints what it got as JSON.
const PYMCPROTOCOL_READS: &str = r#"
import json, sys
import pymcprotocol
plc = pymcprotocol.Type3E(plctype=sys.argv[1])
plc.connect("127.0.0.1", int(sys.argv[2]))
out = {
    "words": plc.batchread_wordunits(headdevice="D100", readsize=4),
    "sd": plc.batchread_wordunits(headdevice="SD520", readsize=2),
    "x": plc.batchread_bitunits(headdevice="X1E", readsize=3),
    "m": plc.batchread_bitunits(headdevice="M16", readsize=5),
    "w": plc.batchread_wordunits(headdevice="W1A0", readsize=1),
    "cpu": list(plc.read_cputype()),
}
plc.close()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymcprotocol_reads_what_the_test_server_holds() {
    if !python_has(&["pymcprotocol"]) {
        return;
    }
    let server = SlmpServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.set_words("D100", &[1, 0xFFFF, 0x1234]);
    server.set_words("SD520", &[12, 300]);
    server.set_bits("X1E", &[true, false, true]);
    server.set_bits("M16", &[false, true, true, false, true]);
    server.set_words("W1A0", &[0x7FFF]);
    server.set_model("R04CPU", 0x4800);
    let port = server.addr.port().to_string();
    for plctype in ["Q", "iQ-R"] {
        let args = ["-c", PYMCPROTOCOL_READS, plctype, &port].map(String::from);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{plctype}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // pymcprotocol reads words as signed.
        assert_eq!(
            got["words"],
            serde_json::json!([1, -1, 0x1234, 0]),
            "{plctype}"
        );
        assert_eq!(got["sd"], serde_json::json!([12, 300]), "{plctype}");
        assert_eq!(got["x"], serde_json::json!([1, 0, 1]), "{plctype}");
        assert_eq!(got["m"], serde_json::json!([0, 1, 1, 0, 1]), "{plctype}");
        assert_eq!(got["w"], serde_json::json!([0x7FFF]), "{plctype}");
        assert_eq!(
            got["cpu"],
            serde_json::json!(["R04CPU", "4800"]),
            "{plctype}"
        );
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

fn named<'a>(
    events: &'a [ControllerEvent],
    kind: EventKind,
    name: &str,
) -> Vec<&'a ControllerEvent> {
    events
        .iter()
        .filter(|e| e.kind() == kind && e.name == name)
        .collect()
}

fn texts(events: &[ControllerEvent], kind: EventKind, name: &str) -> Vec<String> {
    named(events, kind, name)
        .iter()
        .map(|e| e.text.clone().unwrap())
        .collect()
}

fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_le_bytes();
    [
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_a_cpus_mode_scan_time_tags_and_program_changes() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let server = SlmpServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.set_model("Q03UDVCPU", 0x0366);
    server.set_words("SD203", &[0]);
    server.set_words("SD520", &[12, 300]);
    server.set_words("D100", &f32_words(21.5));
    server.set_words("D102", &[0xFFFE, 0x0001]);
    server.set_words("D9000", &[3, 1, 4, 1]);
    server.set_bits("X10", &[true]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"slmp\"\n\
             [[sources.devices]]\nname = \"plc-3\"\nasset = \"line3/plc-01\"\naddress = \"127.0.0.1:{port}\"\n\
             poll_interval = \"200ms\"\nidentity_interval = \"1s\"\nreconnect_min = \"200ms\"\nmax_requests_per_second = 50\n\
             program_devices = [{{ device = \"D9000\", count = 4 }}]\n\
             tags = [{{ name = \"temp_c\", device = \"D100\", type = \"f32\", unit = \"C\" }},\n\
                     {{ name = \"strokes\", device = \"D102\", type = \"u32\" }},\n\
                     {{ name = \"guard\", device = \"X10\" }}]\n",
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
            port = server.addr.port(),
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;

    let agent = start_agent(&config, &log);
    wait_until("the first readings arrive", async || {
        let events = stored().await;
        !named(&events, EventKind::Change, "program").is_empty()
            && !named(&events, EventKind::Cycle, "scan").is_empty()
            && !named(&events, EventKind::Sample, "strokes").is_empty()
    })
    .await;
    // A program download: STOP, other program words, RUN.
    server.set_words("SD203", &[1]);
    wait_until("the CPU is seen in STOP", async || {
        texts(&stored().await, EventKind::State, "mode") == ["RUN", "STOP"]
    })
    .await;
    server.set_words("D9000", &[3, 1, 4, 2]);
    server.set_words("SD203", &[0]);
    wait_until("RUN again and the new program", async || {
        let events = stored().await;
        texts(&events, EventKind::State, "mode") == ["RUN", "STOP", "RUN"]
            && named(&events, EventKind::Change, "program").len() == 2
    })
    .await;
    assert!(
        agent.terminate(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let before_restart = stored().await.len();

    // A restart knows the model and program it saw: no CHANGE again.
    let agent = start_agent(&config, &log);
    wait_until("readings after the restart", async || {
        stored().await.len() > before_restart + 20
    })
    .await;
    assert!(agent.terminate());

    let events = stored().await;
    assert!(events.iter().all(|e| e.asset == "line3/plc-01"));
    let programs = named(&events, EventKind::Change, "program");
    assert_eq!(programs.len(), 2, "{programs:?}");
    assert_eq!(
        programs[1].attrs["previous"],
        programs[0].text.clone().unwrap()
    );
    assert_eq!(
        texts(&events, EventKind::Change, "cpu_model"),
        ["Q03UDVCPU (0366)"]
    );
    // The mode again after the restart (a new process does not know it).
    assert_eq!(
        texts(&events, EventKind::State, "mode"),
        ["RUN", "STOP", "RUN", "RUN"]
    );
    assert!(named(&events, EventKind::Cycle, "scan")
        .iter()
        .all(|e| e.value == Some(12.3)));
    let temps = named(&events, EventKind::Sample, "temp_c");
    assert!(temps
        .iter()
        .all(|e| e.value == Some(21.5) && e.attrs["unit"] == "C"));
    assert!(named(&events, EventKind::Sample, "strokes")
        .iter()
        .all(|e| e.value == Some(131070.0)));
    assert_eq!(texts(&events, EventKind::State, "guard"), ["ON", "ON"]);
    // Nothing but batch reads (Q format) and the model read reached the CPU.
    assert_eq!(server.commands(), [(0x0101, 0), (0x0401, 0), (0x0401, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_that_is_unreachable_is_retried_without_stopping_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"slmp\"\n\
             [[sources.devices]]\nname = \"plc-9\"\nasset = \"line9/plc\"\naddress = \"127.0.0.1:{port}\"\n\
             poll_interval = \"200ms\"\nreconnect_min = \"200ms\"\nreconnect_max = \"400ms\"\n",
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let agent = start_agent(&config, &log);
    wait_until("the failure is logged", async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("device failed")
    })
    .await;
    // The CPU comes up on its port: the agent connects by itself.
    let server = SlmpServer::start(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    wait_until("events arrive once the CPU answers", async || {
        !otwatch_testkit::log_events(collector.log.as_ref())
            .await
            .is_empty()
    })
    .await;
    assert!(agent.terminate());
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("device failed").count(),
        1,
        "one line per outage: {log}"
    );
    assert!(log.contains("device answers again"), "{log}");
    drop(server);
}
