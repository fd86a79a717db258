//! The real `otwatch-agent` binary subscribes to a real Mosquitto broker
//! (Debian's `mosquitto`; messages published with `mosquitto_pub`, QoS 1):
//! JSON payloads become SAMPLE and STATE events in a real collector; a bad
//! payload is logged and skipped; messages published while the agent is
//! stopped are delivered when it is back (persistent session).

#![cfg(feature = "mqtt")]

mod common;

use common::{free_port, start_agent, wait_listening, wait_until, Child, TestCollector};
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::path::Path;
use std::process::Command;

/// Whether Mosquitto and its clients are here; under `CI=true` they must be.
fn mosquitto_present() -> bool {
    let found = Path::new("/usr/sbin/mosquitto").exists()
        && Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mosquitto and mosquitto-clients are missing under CI=true: scripts/test.sh installs them"
        );
        eprintln!("skipped: mosquitto is not installed (scripts/test.sh installs it)");
    }
    found
}

fn publish(port: u16, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temps(events: &[ControllerEvent]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e.kind() == EventKind::Sample && e.name == "temp_c")
        .map(|e| e.value.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_messages_reach_the_collector_also_those_sent_while_the_agent_was_away() {
    if !mosquitto_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &broker_conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let _broker = Child::start(
        "/usr/sbin/mosquitto",
        &["-c", broker_conf.to_str().unwrap()],
        &dir.path().join("mosquitto.log"),
    );
    wait_listening(port).await;

    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"otwatch-plant-a-gw-1\"\n\
             [[sources.subscriptions]]\ntopic = \"plant/+/telemetry\"\nasset = \"line1/{{1}}\"\ntimestamp = \"/ts\"\n\
             samples = {{ \"/temp\" = \"temp_c\" }}\nstates = {{ \"/mode\" = \"mode\" }}\n",
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
        ),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;
    let ts = common::now_ns() / 1_000_000;
    let message = |temp: u32, mode: &str| {
        format!(
            r#"{{"ts": {}, "temp": {temp}, "mode": "{mode}"}}"#,
            ts + i64::from(temp)
        )
    };

    // Until the agent has subscribed, messages go nowhere: publish a first
    // one until it arrives.
    let agent = start_agent(&config, &agent_log);
    wait_until("the agent has subscribed", async || {
        publish(port, "plant/press-1/telemetry", &message(0, "RUN"));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        !temps(&stored().await).is_empty()
    })
    .await;
    for temp in 1..=5 {
        publish(port, "plant/press-1/telemetry", &message(temp, "RUN"));
    }
    publish(port, "plant/press-2/telemetry", "{not json");
    publish(port, "other/topic", &message(99, "RUN"));
    wait_until("messages 1 to 5", async || {
        temps(&stored().await).contains(&5.0)
    })
    .await;
    assert!(
        agent.terminate(),
        "{}",
        std::fs::read_to_string(&agent_log).unwrap()
    );

    // Published while the agent is stopped: the broker keeps them for its session.
    for temp in 6..=10 {
        publish(port, "plant/press-1/telemetry", &message(temp, "STOP"));
    }
    let agent = start_agent(&config, &agent_log);
    wait_until("messages 6 to 10, after the restart", async || {
        let seen = temps(&stored().await);
        (6..=10).all(|t| seen.contains(&f64::from(t)))
    })
    .await;
    assert!(
        agent.terminate(),
        "{}",
        std::fs::read_to_string(&agent_log).unwrap()
    );

    let events = stored().await;
    let mut seen: Vec<u32> = temps(&events)
        .iter()
        .map(|t| *t as u32)
        .filter(|t| *t > 0)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    for e in events.iter().filter(|e| e.name == "temp_c") {
        assert_eq!(e.asset, "line1/press-1");
        assert_eq!(e.attrs["topic"], "plant/press-1/telemetry");
        // The payload's own time.
        assert_eq!(e.ts_ns, (ts + e.value.unwrap() as i64) * 1_000_000);
    }
    let modes: Vec<&str> = events
        .iter()
        .filter(|e| e.kind() == EventKind::State)
        .map(|e| e.text.as_deref().unwrap())
        .collect();
    assert!(
        modes.contains(&"RUN") && modes.contains(&"STOP"),
        "{modes:?}"
    );
    // Nothing from the bad payload or the topic not subscribed.
    assert!(
        events.iter().all(|e| e.asset == "line1/press-1"),
        "{events:?}"
    );
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(log.contains("skipping an mqtt message"), "{log}");
    assert!(
        log.contains("session_present=true"),
        "the second start did not resume its session:\n{log}"
    );
}
