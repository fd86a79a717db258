//! The real `otwatch-agent` binary subscribes to an OPC UA server (an
//! asyncua server, `peers/opcua_server.py`, whose variables change over
//! time and which raises alarm events) and its events reach a real
//! collector. The server deletes an item while subscribed, then restarts
//! (dropping the session) without that item: the agent reports the item,
//! re-subscribes the others and keeps delivering. A second test runs the
//! session with Basic256Sha256 or Aes128-Sha256-RsaOaep, sign and encrypt,
//! a trusted server certificate and a user name and password; a server
//! whose certificate is not trusted is refused.

#![cfg(feature = "opcua")]

mod common;

use common::{
    free_port, http_get, metric, python_has, start_agent, wait_listening, wait_until, Child,
    TestCollector,
};
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::collections::BTreeSet;
use std::path::Path;

const ASSET: &str = "line1/press-ua";

/// The asyncua server on `port`, with `args`.
fn server(port: u16, args: &[&str], log: &Path) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/opcua_server.py");
    let port = port.to_string();
    let mut all = vec![script, "--port", &port];
    all.extend_from_slice(args);
    Child::start("python3", &all, log)
}

/// The items of `opcua_server.py`.
const ITEMS: &str = r#"
publishing_interval = "100ms"
sampling_interval = "100ms"
timeout = "3s"
keep_alive = "1s"
reconnect_min = "200ms"
reconnect_max = "1s"
items = [
  { name = "temp_c", node = "ns=2;s=press.temp", unit = "°C" },
  { name = "count", node = "ns=2;s=press.count", sampling_interval = "200ms" },
  { name = "temp_coarse", node = "ns=2;s=press.temp", deadband = 2.0 },
  { name = "running", node = "ns=2;s=press.running" },
  { name = "mode", node = "ns=2;s=press.mode" },
  { name = "doomed", node = "ns=2;s=press.doomed" },
  { name = "broken", node = "ns=2;s=press.broken" },
  { name = "level", node = "ns=2;s=press.level", report = "state", states = { "1" = "LOW", "2" = "MID" } },
]
events = [{ node = "i=2253", min_severity = 500 }]
"#;

fn agent_config(dir: &Path, url: &str, metrics_port: u16, server: &str) -> String {
    format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
         [[sources]]\ntype = \"opcua\"\n\
         [[sources.servers]]\nname = \"press-ua\"\nasset = \"{ASSET}\"\n{server}\n",
        data = dir.join("data").display().to_string(),
    )
}

fn named<'a>(
    events: &'a [ControllerEvent],
    kind: EventKind,
    name: &str,
) -> Vec<&'a ControllerEvent> {
    events
        .iter()
        .filter(|e| e.asset == ASSET && e.kind() == kind && e.name == name)
        .collect()
}

fn series(name: &str) -> String {
    format!("{name}{{site=\"plant-a\",agent=\"gw-1\",source=\"opcua\",device=\"press-ua\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_deleted_item_and_a_server_restart() {
    if !python_has(&["asyncua"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let (port, metrics_port) = (free_port(), free_port());
    let delete = dir.path().join("delete-doomed");
    let server_log = dir.path().join("server.log");
    let record = dir.path().join("requests");
    let record_arg = record.to_str().unwrap();
    let first = server(
        port,
        &[
            "--delete-when",
            delete.to_str().unwrap(),
            "--record",
            record_arg,
        ],
        &server_log,
    );
    wait_listening(port).await;

    let config = dir.path().join("agent.toml");
    let endpoint = format!("endpoint = \"opc.tcp://127.0.0.1:{port}/\"\n{ITEMS}");
    std::fs::write(
        &config,
        agent_config(dir.path(), &collector.url(), metrics_port, &endpoint),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = start_agent(&config, &agent_log);
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    wait_until(
        "samples, state changes and alarms of the server reach the collector",
        async || {
            let events = stored().await;
            named(&events, EventKind::Sample, "temp_c").len() >= 10
                && named(&events, EventKind::Sample, "doomed").len() == 1
                && named(&events, EventKind::State, "running").len() >= 2
                && named(&events, EventKind::State, "mode").len() >= 2
                && named(&events, EventKind::State, "level").len() >= 2
                && named(&events, EventKind::Alarm, "press").len() >= 2
        },
    )
    .await;

    // The server deletes an item while it is subscribed: reported, the
    // others go on.
    std::fs::write(&delete, "").unwrap();
    let unavailable = series("otwatch_agent_device_items_unavailable");
    wait_until("the deleted item is reported", async || {
        metric(&http_get(&metrics_addr, "/metrics").await, &unavailable) == Some(1)
    })
    .await;
    assert!(log().contains("opcua item unavailable"), "{}", log());
    assert!(log().contains("BadNodeIdUnknown"), "{}", log());
    let before = named(&stored().await, EventKind::Sample, "temp_c").len();
    wait_until("samples go on after the deletion", async || {
        named(&stored().await, EventKind::Sample, "temp_c").len() >= before + 10
    })
    .await;

    // The server restarts without the item: the session is lost, and the
    // agent opens a new one and subscribes every item again.
    drop(first);
    let down_at = common::now_ns();
    let up = series("otwatch_agent_device_up");
    wait_until("the agent sees the server down", async || {
        metric(&http_get(&metrics_addr, "/metrics").await, &up) == Some(0)
    })
    .await;
    let _second = server(
        port,
        &["--without", "doomed", "--record", record_arg],
        &server_log,
    );
    wait_until("samples resume after the restart", async || {
        let events = stored().await;
        named(&events, EventKind::Sample, "temp_c")
            .iter()
            .filter(|e| e.ts_ns > down_at)
            .count()
            >= 10
            && named(&events, EventKind::Alarm, "press")
                .iter()
                .any(|e| e.ts_ns > down_at)
    })
    .await;
    let text = http_get(&metrics_addr, "/metrics").await;
    assert_eq!(metric(&text, &up), Some(1), "{text}");
    assert_eq!(metric(&text, &unavailable), Some(1), "{text}");
    assert!(metric(&text, &series("otwatch_agent_device_errors_total")).unwrap() >= 1);
    assert!(metric(&text, &series("otwatch_agent_device_polls_total")).unwrap() >= 10);
    assert!(
        agent.terminate(),
        "the agent did not stop cleanly: {}",
        log()
    );

    let events = stored().await;
    let log = log();
    // Samples: the ramp moves, with its unit and node.
    let temps: Vec<&ControllerEvent> = named(&events, EventKind::Sample, "temp_c");
    let distinct: BTreeSet<u64> = temps.iter().map(|e| e.value.unwrap() as u64 * 2).collect();
    assert!(distinct.len() > 5, "{distinct:?}");
    assert!(temps
        .iter()
        .all(|e| (20.0..=30.0).contains(&e.value.unwrap())));
    assert_eq!(temps[0].attrs["unit"], "°C");
    assert_eq!(temps[0].attrs["node"], "ns=2;s=press.temp");
    // The server applied the deadband: the ramp climbs by 0.5 every 100 ms
    // and falls back by 9.5 every 2 s; only the falls (and each session's
    // first value) moved by more than 2. (asyncua compares with the
    // previous sample, not the last reported one.)
    let coarse: Vec<f64> = named(&events, EventKind::Sample, "temp_coarse")
        .iter()
        .map(|e| e.value.unwrap())
        .collect();
    assert!(coarse.len() >= 2, "{coarse:?}");
    assert!(
        coarse.len() * 5 < temps.len(),
        "deadband not applied: {coarse:?}"
    );
    let counts: Vec<f64> = named(&events, EventKind::Sample, "count")
        .iter()
        .map(|e| e.value.unwrap())
        .collect();
    assert!(counts.len() >= 5, "{counts:?}");
    // States: booleans ON/OFF, texts as they are, enumerations by table,
    // each only when it changes.
    for (name, allowed) in [
        ("running", &["ON", "OFF"][..]),
        ("mode", &["RUN", "STOP"][..]),
        ("level", &["LOW", "MID", "UNKNOWN(3)"][..]),
    ] {
        let texts: Vec<&str> = named(&events, EventKind::State, name)
            .iter()
            .map(|e| e.text.as_deref().unwrap())
            .collect();
        assert!(
            texts.iter().all(|t| allowed.contains(t)),
            "{name}: {texts:?}"
        );
        assert!(
            texts.windows(2).all(|w| w[0] != w[1]),
            "{name} repeated: {texts:?}"
        );
    }
    // Alarms: only those at or above min_severity, with message and source.
    let alarms = named(&events, EventKind::Alarm, "press");
    assert!(alarms.iter().all(|a| a.value == Some(800.0)), "{alarms:?}");
    assert_eq!(alarms[0].text.as_deref(), Some("oil pressure low"));
    assert_eq!(alarms[0].attrs["source"], "press");
    // The NaN is never queued; the deleted item's value came once, before.
    assert!(named(&events, EventKind::Sample, "broken").is_empty());
    assert!(log.contains("skipping a value the limits refuse"), "{log}");
    let doomed = named(&events, EventKind::Sample, "doomed");
    assert_eq!(doomed.len(), 1, "{doomed:?}");
    assert_eq!(doomed[0].value, Some(42.0));
    // The loss, the new session and the unknown item are in the log.
    assert!(
        log.contains("device failed; the other devices go on"),
        "{log}"
    );
    assert!(log.contains("device answers again"), "{log}");
    assert_eq!(
        log.matches("opcua session up, items subscribed").count(),
        2,
        "{log}"
    );
    // Only requests that read, browse or subscribe reached the server.
    let requests: BTreeSet<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        requests.contains("CreateMonitoredItemsRequest"),
        "{requests:?}"
    );
    for forbidden in [
        "WriteRequest",
        "CallRequest",
        "AddNodesRequest",
        "DeleteNodesRequest",
        "AddReferencesRequest",
        "DeleteReferencesRequest",
        "HistoryUpdateRequest",
    ] {
        assert!(!requests.contains(forbidden), "{forbidden}: {requests:?}");
    }
    eprintln!(
        "requests received: {requests:?}; {} events; temp samples {}, with a deadband {coarse:?}, counter samples {}, alarms {}",
        events.len(),
        temps.len(),
        counts.len(),
        alarms.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_encrypted_sessions_with_a_trust_list_and_a_password() {
    if !python_has(&["asyncua"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let (port, metrics_port) = (free_port(), free_port());
    let certs = dir.path().join("certs");
    let _server = server(
        port,
        &[
            "--secure",
            certs.to_str().unwrap(),
            "--user",
            "otwatch:s3cret-Pa55",
        ],
        &dir.path().join("server.log"),
    );
    wait_listening(port).await;
    // The server's certificate is trusted; another directory trusts nothing.
    let trusted = dir.path().join("trusted");
    let empty = dir.path().join("trusts-nothing");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(certs.join("server-cert.der"), trusted.join("press.der")).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-Pa55\n").unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "guess\n").unwrap();

    let section = |name: &str, policy: &str, trust: &Path, password: &Path| {
        format!(
            "[[sources.servers]]\nname = \"{name}\"\nasset = \"line1/{name}\"\n\
             endpoint = \"opc.tcp://127.0.0.1:{port}/\"\nsecurity_policy = \"{policy}\"\n\
             certificate = {cert:?}\nprivate_key = {key:?}\ntrusted_server_certs = {trust:?}\n\
             username = \"otwatch\"\npassword_file = {password:?}\n\
             publishing_interval = \"200ms\"\nsampling_interval = \"100ms\"\n\
             reconnect_min = \"200ms\"\nreconnect_max = \"1s\"\n\
             items = [{{ name = \"temp_c\", node = \"ns=2;s=press.temp\" }}]\n",
            cert = certs.join("client-cert.der").display().to_string(),
            key = certs.join("client-key.pem").display().to_string(),
            trust = trust.display().to_string(),
            password = password.display().to_string(),
        )
    };
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"opcua\"\n{}{}{}{}",
            section("b256", "basic256sha256", &trusted, &password),
            section("aes", "aes128_sha256_rsa_oaep", &trusted, &password),
            section("stranger", "basic256sha256", &empty, &password),
            section("intruder", "basic256sha256", &trusted, &wrong),
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
        ),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = start_agent(&config, &agent_log);
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;
    let of = |events: &[ControllerEvent], asset: &str| {
        events
            .iter()
            .filter(|e| e.asset == asset && e.kind() == EventKind::Sample)
            .count()
    };
    let errors = |device: &str| {
        format!("otwatch_agent_device_errors_total{{site=\"plant-a\",agent=\"gw-1\",source=\"opcua\",device=\"{device}\"}}")
    };
    wait_until(
        "both trusted sessions deliver, the untrusted server and the wrong password are refused",
        async || {
            let events = stored().await;
            let text = http_get(&metrics_addr, "/metrics").await;
            of(&events, "line1/b256") >= 10
                && of(&events, "line1/aes") >= 10
                && metric(&text, &errors("stranger")).unwrap_or(0) >= 2
                && metric(&text, &errors("intruder")).unwrap_or(0) >= 2
        },
    )
    .await;
    assert!(agent.terminate(), "{}", log());
    let events = stored().await;
    assert_eq!(of(&events, "line1/stranger"), 0);
    assert_eq!(of(&events, "line1/intruder"), 0);
    let log = log();
    // The refused certificate is named, with what to do about it.
    assert!(
        log.contains("the server's certificate is not trusted")
            && log.contains("copy it into trusted_server_certs"),
        "{log}"
    );
    assert!(
        log.contains("BadUserAccessDenied")
            || log.contains("BadIdentityTokenRejected")
            || log.contains("BadIdentityTokenInvalid"),
        "{log}"
    );
    // The password never reaches the log.
    assert!(!log.contains("s3cret"), "{log}");
}
