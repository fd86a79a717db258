//! The real `otwatch-agent` binary subscribes to a real Mosquitto broker
//! (Debian's `mosquitto`; messages published with `mosquitto_pub`, QoS 1):
//! JSON payloads become SAMPLE and STATE events in a real collector; a bad
//! payload is logged and skipped; messages published while the agent is
//! stopped are delivered when it is back (persistent session); Sparkplug B
//! edge nodes and devices (births, data by alias, deaths) become STATE and
//! SAMPLE events, and the agent publishes nothing.

#![cfg(feature = "mqtt")]

mod common;

use common::{
    free_port, http_get, metric, start_agent, wait_listening, wait_until, Child, TestCollector,
};
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::path::Path;
use std::process::Command;

/// Whether Mosquitto and its clients are here; under `CI=true` they must be.
fn mosquitto_present() -> bool {
    otwatch_testkit::peer_installed("mosquitto", "/usr/sbin/mosquitto")
        && otwatch_testkit::peer_installed("mosquitto-clients", "/usr/bin/mosquitto_pub")
}

/// Mosquitto on loopback `port`, anonymous, with `extra` lines of
/// configuration; its log is `dir/mosquitto.log`. Returns once it listens.
async fn start_broker(dir: &std::path::Path, port: u16, extra: &str) -> Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}"),
    )
    .unwrap();
    let broker = Child::start(
        "/usr/sbin/mosquitto",
        &["-c", conf.to_str().unwrap()],
        &dir.join("mosquitto.log"),
    );
    wait_listening(port).await;
    broker
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
    let _broker = start_broker(dir.path(), port, "").await;

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

mod sparkplug {
    use super::*;
    use otwatch_agent::source::mqtt::sparkplug::{datatype, Metric, MetricValue, Payload};
    use prost::Message;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use std::sync::{Arc, Mutex};

    type Seen = (EventKind, String, Option<f64>, Option<String>);

    fn of(events: &[ControllerEvent], asset: &str) -> Vec<Seen> {
        events
            .iter()
            .filter(|e| e.asset == asset)
            .map(|e| (e.kind(), e.name.clone(), e.value, e.text.clone()))
            .collect()
    }

    fn state(text: &str) -> Seen {
        (
            EventKind::State,
            "sparkplug".into(),
            None,
            Some(text.into()),
        )
    }

    fn sample(name: &str, v: f64) -> Seen {
        (EventKind::Sample, name.into(), Some(v), None)
    }

    fn text(name: &str, t: &str) -> Seen {
        (EventKind::Sample, name.into(), None, Some(t.into()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sparkplug_b_births_data_and_deaths_reach_the_collector_and_the_agent_publishes_nothing(
    ) {
        if !mosquitto_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics_port) = (free_port(), free_port());
        let broker_log = dir.path().join("mosquitto.log");
        // `log_type all` logs every PUBLISH the broker receives, with its sender.
        let _broker = super::start_broker(dir.path(), port, "log_type all\n").await;
        let collector = TestCollector::start(
            &dir.path().join("collector"),
            CollectorConfig::default(),
            None,
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
                 [[sources]]\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"otwatch-sparkplug\"\n\
                 [[sources.subscriptions]]\nformat = \"sparkplug_b\"\ngroup = \"plant-a\"\n",
                data = dir.path().join("data").display().to_string(),
                url = collector.url(),
            ),
        )
        .unwrap();
        let agent_log = dir.path().join("agent.log");
        let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;

        // The edge node: publishes its messages, and sees every message
        // on the broker (its subscription to `#`).
        let (edge, mut eventloop) =
            AsyncClient::new(MqttOptions::new("edge-gw-7", "127.0.0.1", port), 100);
        let on_broker = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = on_broker.clone();
        let loop_task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        seen.lock().unwrap().push(p.topic.clone())
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        });
        edge.subscribe("#", QoS::AtLeastOnce).await.unwrap();
        let published = Arc::new(Mutex::new(Vec::<String>::new()));
        let send = async |topic: &str, payload: Vec<u8>| {
            published.lock().unwrap().push(topic.to_string());
            edge.publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        };
        let ts = common::now_ns() / 1_000_000;
        let ts_ns = |ms: i64| ms * 1_000_000;

        // Until the agent has subscribed, messages go nowhere: the node is
        // born until its birth arrives.
        let agent = start_agent(&config, &agent_log);
        let nbirth = Payload::encoded(
            ts as u64,
            Some(0),
            vec![
                Metric::bd_seq(1),
                Metric::named(
                    "Node Control/Rebirth",
                    1,
                    datatype::BOOLEAN,
                    MetricValue::BooleanValue(false),
                ),
                Metric::named("uptime_s", 2, datatype::INT64, MetricValue::LongValue(60)),
            ],
        );
        wait_until("the agent has subscribed", async || {
            send("spBv1.0/plant-a/NBIRTH/gw-7", nbirth.clone()).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            of(&stored().await, "gw-7").contains(&state("ONLINE"))
        })
        .await;
        let device = "spBv1.0/plant-a/DDATA/gw-7/press-1";
        send(
            "spBv1.0/plant-a/DBIRTH/gw-7/press-1",
            Payload::encoded(
                (ts + 1) as u64,
                Some(1),
                vec![
                    Metric::named("temp_c", 10, datatype::FLOAT, MetricValue::FloatValue(20.0)),
                    Metric::named(
                        "running",
                        11,
                        datatype::BOOLEAN,
                        MetricValue::BooleanValue(true),
                    ),
                    Metric::named(
                        "recipe",
                        12,
                        datatype::STRING,
                        MetricValue::StringValue("A-12".into()),
                    ),
                ],
            ),
        )
        .await;
        let mut temp = Metric::aliased(10, MetricValue::FloatValue(21.5));
        temp.timestamp = Some((ts + 10) as u64);
        send(
            device,
            Payload::encoded(
                (ts + 20) as u64,
                Some(2),
                vec![
                    temp,
                    Metric::aliased(11, MetricValue::BooleanValue(false)),
                    Metric::aliased(12, MetricValue::StringValue("B-3".into())),
                ],
            ),
        )
        .await;
        // An alias no birth announced: skipped, counted; no rebirth asked.
        send(
            device,
            Payload::encoded(
                (ts + 30) as u64,
                Some(3),
                vec![
                    Metric::aliased(99, MetricValue::FloatValue(1.0)),
                    Metric::aliased(10, MetricValue::FloatValue(22.0)),
                ],
            ),
        )
        .await;
        // seq 4 is lost.
        send(
            device,
            Payload::encoded(
                (ts + 40) as u64,
                Some(5),
                vec![Metric::aliased(10, MetricValue::FloatValue(23.0))],
            ),
        )
        .await;
        send(device, vec![0xff, 0xff, 0xff]).await;
        send(
            "spBv1.0/plant-a/DDEATH/gw-7/press-1",
            Payload::encoded((ts + 50) as u64, Some(6), vec![]),
        )
        .await;
        // The will of an earlier session, delivered late: ignored.
        let death = |bd| {
            Payload {
                timestamp: Some((ts + 60) as u64),
                metrics: vec![Metric::bd_seq(bd)],
                ..Default::default()
            }
            .encode_to_vec()
        };
        send("spBv1.0/plant-a/NDEATH/gw-7", death(0)).await;
        // Another group is not read.
        send(
            "spBv1.0/plant-b/NBIRTH/gw-8",
            Payload::encoded(ts as u64, Some(0), vec![Metric::bd_seq(0)]),
        )
        .await;
        send("spBv1.0/plant-a/NDEATH/gw-7", death(1)).await;
        wait_until("the node's death", async || {
            of(&stored().await, "gw-7").contains(&state("OFFLINE"))
        })
        .await;

        let exposed = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics").await;
        let count = |name: &str| {
            metric(
                &exposed,
                &format!("{name}{{site=\"plant-a\",agent=\"gw-1\"}}"),
            )
        };
        assert_eq!(
            count("otwatch_agent_sparkplug_unknown_aliases_total"),
            Some(1),
            "{exposed}"
        );
        assert_eq!(
            count("otwatch_agent_sparkplug_seq_gaps_total"),
            Some(1),
            "{exposed}"
        );
        assert_eq!(
            count("otwatch_agent_sparkplug_stale_deaths_total"),
            Some(1),
            "{exposed}"
        );
        assert_eq!(
            count("otwatch_agent_inputs_rejected_total"),
            Some(1),
            "{exposed}"
        );
        assert!(
            agent.terminate(),
            "{}",
            std::fs::read_to_string(&agent_log).unwrap()
        );
        loop_task.abort();

        let events = stored().await;
        assert_eq!(
            of(&events, "gw-7/press-1"),
            vec![
                state("ONLINE"),
                sample("temp_c", 20.0),
                sample("running", 1.0),
                text("recipe", "A-12"),
                sample("temp_c", 21.5),
                sample("running", 0.0),
                text("recipe", "B-3"),
                sample("temp_c", 22.0),
                sample("temp_c", 23.0),
                state("OFFLINE"),
            ]
        );
        let node = of(&events, "gw-7");
        assert_eq!(node.last(), Some(&state("OFFLINE")));
        assert_eq!(
            node.iter().filter(|e| **e == state("OFFLINE")).count(),
            1,
            "the stale death was taken: {node:?}"
        );
        assert!(node.contains(&sample("uptime_s", 60.0)), "{node:?}");
        for e in &events {
            assert_eq!(e.attrs["group"], "plant-a", "{e:?}");
            assert!(e.asset == "gw-7" || e.asset == "gw-7/press-1", "{e:?}");
            assert!(
                e.name != "bdSeq" && !e.name.starts_with("Node Control/"),
                "{e:?}"
            );
        }
        // The metric's own time first, else the payload's.
        let times: Vec<i64> = events
            .iter()
            .filter(|e| e.asset == "gw-7/press-1" && e.name == "temp_c")
            .map(|e| e.ts_ns)
            .collect();
        assert_eq!(
            times,
            vec![
                ts_ns(ts + 1),
                ts_ns(ts + 10),
                ts_ns(ts + 30),
                ts_ns(ts + 40)
            ]
        );

        let log = std::fs::read_to_string(&agent_log).unwrap();
        for line in [
            "skipping an mqtt message",
            "alias no birth announced",
            "Sparkplug seq gap",
            "NDEATH of an earlier session",
        ] {
            assert!(log.contains(line), "{line:?} is not in the log:\n{log}");
        }
        // Read-only: the broker received no message from the agent, and
        // every message on it is one the edge node published.
        let broker = std::fs::read_to_string(&broker_log).unwrap();
        assert!(
            broker.contains("Received PUBLISH from edge-gw-7"),
            "the broker does not log publishes:\n{broker}"
        );
        assert!(
            broker.contains("Received SUBSCRIBE from otwatch-sparkplug"),
            "{broker}"
        );
        assert!(
            !broker.contains("Received PUBLISH from otwatch-sparkplug"),
            "the agent published:\n{broker}"
        );
        let published = published.lock().unwrap().clone();
        let on_broker = on_broker.lock().unwrap().clone();
        assert!(!on_broker.is_empty());
        for topic in &on_broker {
            assert!(
                published.contains(topic) && !topic.contains("CMD"),
                "{topic} was not published by the edge node"
            );
        }
    }
}
