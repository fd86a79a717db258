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
    otwatch_testkit::peer_installed("mosquitto", "/usr/sbin/mosquitto")
        && otwatch_testkit::peer_installed("mosquitto-clients", "/usr/bin/mosquitto_pub")
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

/// Makes a CA, a broker certificate for 127.0.0.1 and a client certificate
/// with `openssl` in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=otwatch test CA",
        ],
    ]
    .concat());
    // Extensions make them X.509 v3 certificates, the only kind rustls takes.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate() {
    if !mosquitto_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    // Mosquitto started as root reads its files as the `mosquitto` user.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(d).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let file = |name: &str| d.join(name).display().to_string();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\n",
            file("ca.pem"),
            file("server.pem"),
            file("server.key")
        ),
    )
    .unwrap();
    let _broker = Child::start(
        "/usr/sbin/mosquitto",
        &["-c", &file("mosquitto.conf")],
        &d.join("mosquitto.log"),
    );
    wait_listening(port).await;
    let collector = TestCollector::start(&d.join("collector"), CollectorConfig::default(), None);
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"otwatch-tls\"\n\
             tls = {{ ca = {ca:?}, cert = {cert:?}, key = {key:?} }}\n\
             [[sources.subscriptions]]\ntopic = \"plant/#\"\nasset = \"{{1}}\"\n",
            data = file("data"),
            url = collector.url(),
            ca = file("ca.pem"),
            cert = file("client.pem"),
            key = file("client.key"),
        ),
    )
    .unwrap();
    let agent_log = d.join("agent.log");
    let agent = start_agent(&config, &agent_log);
    let publish_tls = || {
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                "plant/press-9/x",
                "-m",
                r#"{"rpm": 1450}"#,
            ])
            .args([
                "--cafile",
                &file("ca.pem"),
                "--cert",
                &file("client.pem"),
                "--key",
                &file("client.key"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    wait_until("a message over TLS reaches the collector", async || {
        publish_tls();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        otwatch_testkit::log_events(collector.log.as_ref())
            .await
            .iter()
            .any(|e| e.asset == "press-9" && e.name == "rpm" && e.value == Some(1450.0))
    })
    .await;
    assert!(
        agent.terminate(),
        "{}",
        std::fs::read_to_string(&agent_log).unwrap()
    );
}
