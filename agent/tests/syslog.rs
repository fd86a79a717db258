//! The real `otwatch-agent` binary receives syslog from util-linux's
//! `logger` (UDP and RFC 3164; TCP and RFC 5424, octet-counted and
//! newline-framed) and from a socket sender (device messages, a message
//! over the size limit, a sender over its rate, a stream with broken
//! framing); the events are checked where they are stored, in a real
//! collector's log.

#![cfg(feature = "syslog")]

mod common;

use common::{free_port, http_get, metric, start_agent, wait_listening, wait_until, TestCollector};
use otwatch_collector::CollectorConfig;
use otwatch_proto::{ControllerEvent, EventKind};
use std::process::Command;
use tokio::io::AsyncWriteExt;

/// Whether `logger` (util-linux, Debian's bsdutils) is here; under
/// `CI=true` it must be.
fn logger_present() -> bool {
    otwatch_testkit::peer_installed("logger (util-linux)", "/usr/bin/logger")
}

fn logger(args: &[&str]) {
    let out = Command::new("logger").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn from<'a>(events: &'a [ControllerEvent], sender: &str) -> Vec<&'a ControllerEvent> {
    events
        .iter()
        .filter(|e| e.attrs.get("sender").map(String::as_str) == Some(sender))
        .collect()
}

fn find<'a>(events: &'a [ControllerEvent], text: &str) -> Option<&'a ControllerEvent> {
    events
        .iter()
        .find(|e| e.text.as_deref().is_some_and(|t| t.contains(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_and_device_messages_over_udp_and_tcp_reach_the_collector() {
    if !logger_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(
        &dir.path().join("collector"),
        CollectorConfig::default(),
        None,
    );
    let (udp, tcp, metrics_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = {data:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             [collector]\nurl = {url:?}\nbatch_max_delay = \"20ms\"\n\
             [[sources]]\ntype = \"syslog\"\nudp = \"127.0.0.1:{udp}\"\ntcp = \"127.0.0.1:{tcp}\"\n\
             max_message_bytes = 1024\nmax_messages_per_second = 10\n\
             assets = {{ \"127.0.0.3\" = \"net/core-sw-1\" }}\n",
            data = dir.path().join("data").display().to_string(),
            url = collector.url(),
        ),
    )
    .unwrap();
    let agent_log = dir.path().join("agent.log");
    let agent = start_agent(&config, &agent_log);
    wait_listening(tcp).await;
    let stored = async || otwatch_testkit::log_events(collector.log.as_ref()).await;
    let (udp_s, tcp_s) = (udp.to_string(), tcp.to_string());

    // logger: RFC 3164 over UDP; RFC 5424 over TCP, octet-counted and not.
    logger(&[
        "--udp",
        "--rfc3164",
        "-n",
        "127.0.0.1",
        "-P",
        &udp_s,
        "-t",
        "plc-cpu",
        "-p",
        "local4.warning",
        "CPU mode changed to STOP",
    ]);
    logger(&[
        "--tcp",
        "--rfc5424",
        "--octet-count",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp_s,
        "-t",
        "sshd",
        "-p",
        "auth.info",
        "Accepted password for op from 10.0.0.7 port 52811 ssh2",
    ]);
    logger(&[
        "--tcp",
        "--rfc5424",
        "--msgid",
        "ID47",
        "--sd-id",
        "origin@32473",
        "--sd-param",
        "ip=\"10.9.9.9\"",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp_s,
        "-t",
        "hmi",
        "newline framed from the HMI",
    ]);

    // A switch and a firewall over one TCP connection from 127.0.0.3: a
    // configuration change, a firewall login, a message over the limit,
    // one after it, then framing that cannot be read on.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{tcp}").parse().unwrap())
        .await
        .unwrap();
    let frames = [
        "<189>Nov 24 10:00:00 core-sw-1 42: %SYS-5-CONFIG_I: Configured from console by admin on vty0 (10.1.1.9)\n".to_string(),
        "<189>date=2026-11-24 time=10:00:00 devname=\"fw-1\" logid=\"0100032001\" type=\"event\" subtype=\"system\" user=\"admin\" ui=\"https(10.2.2.2)\" method=\"https\" srcip=10.2.2.2 action=\"login\" status=\"success\"\n".to_string(),
        {
            let long = format!("<14>Nov 24 10:00:00 core-sw-1 big: {}", "x".repeat(3000));
            format!("{} {long}", long.len())
        },
        "<14>Nov 24 10:00:00 core-sw-1 after: after the long one\n".to_string(),
        "12x <14>lost".to_string(),
    ];
    stream.write_all(frames.concat().as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();

    // A sender over its rate (10/s) by UDP from 127.0.0.2: 300 messages,
    // 20 at once (more at once would overflow the socket's buffer, and the
    // kernel would drop them before the agent sees them).
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let limited = "otwatch_agent_messages_rate_limited_total{site=\"plant-a\",agent=\"gw-1\"}";
    let accounted = async || {
        let text = http_get(&metrics_addr, "/metrics").await;
        let dropped = metric(&text, limited).unwrap_or(0) as usize;
        from(&stored().await, "127.0.0.2").len() + dropped
    };
    let flood = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    for chunk in 0..15 {
        for i in chunk * 20..(chunk + 1) * 20 {
            let line = format!("<14>Nov 24 10:00:00 noisy app: flood {i}");
            flood.send_to(line.as_bytes(), ("127.0.0.1", udp)).unwrap();
        }
        wait_until(
            "the flood's messages are stored or counted as dropped",
            async || accounted().await == (chunk + 1) * 20,
        )
        .await;
    }
    // Meanwhile another sender is not held back.
    logger(&[
        "--udp",
        "--rfc3164",
        "-n",
        "127.0.0.1",
        "-P",
        &udp_s,
        "-t",
        "plc-cpu",
        "CPU mode changed to RUN",
    ]);

    wait_until("every message sent is stored", async || {
        let events = stored().await;
        find(&events, "CPU mode changed to RUN").is_some()
            && find(&events, "after the long one").is_some()
            && find(&events, "newline framed").is_some()
            && find(&events, "Accepted password").is_some()
    })
    .await;
    let text = http_get(&metrics_addr, "/metrics").await;
    assert!(
        agent.terminate(),
        "the agent did not stop cleanly: {}",
        std::fs::read_to_string(&agent_log).unwrap()
    );
    let events = stored().await;
    let log = std::fs::read_to_string(&agent_log).unwrap();

    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    let host = host.trim();
    // RFC 3164 over UDP: a LOG, named by its tag, from the sending host.
    let stop = find(&events, "CPU mode changed to STOP").unwrap();
    assert_eq!(
        (stop.kind(), stop.name.as_str()),
        (EventKind::Log, "plc-cpu")
    );
    assert_eq!(stop.attrs["facility"], "local4");
    assert_eq!(stop.attrs["severity"], "warning");
    assert_eq!(stop.attrs["sender"], "127.0.0.1");
    assert!(
        host.starts_with(&stop.asset) || stop.asset == host,
        "{} vs {host}",
        stop.asset
    );
    // RFC 5424, octet-counted: sshd's login became an ACCESS.
    let login = find(&events, "Accepted password").unwrap();
    assert_eq!(
        (login.kind(), login.name.as_str()),
        (EventKind::Access, "login")
    );
    assert_eq!(login.attrs["user"], "op");
    assert_eq!(login.attrs["peer"], "10.0.0.7");
    assert_eq!(login.attrs["facility"], "auth");
    // RFC 5424, newline-framed, with a message id and structured data.
    let hmi = find(&events, "newline framed from the HMI").unwrap();
    assert_eq!((hmi.kind(), hmi.name.as_str()), (EventKind::Log, "hmi"));
    assert_eq!(hmi.attrs["msgid"], "ID47");
    assert!(
        hmi.attrs["sd"].contains("origin@32473") && hmi.attrs["sd"].contains("10.9.9.9"),
        "{:?}",
        hmi.attrs
    );
    // The switch and the firewall, under the asset configured for 127.0.0.3.
    let switch = from(&events, "127.0.0.3");
    assert!(
        switch.iter().all(|e| e.asset == "net/core-sw-1"),
        "{switch:?}"
    );
    let change = find(&events, "%SYS-5-CONFIG_I").unwrap();
    assert_eq!(
        (change.kind(), change.name.as_str()),
        (EventKind::Change, "config")
    );
    assert_eq!(change.attrs["user"], "admin");
    let fw = find(&events, "logid=\"0100032001\"").unwrap();
    assert_eq!((fw.kind(), fw.name.as_str()), (EventKind::Access, "login"));
    assert_eq!(fw.attrs["peer"], "10.2.2.2");
    // Over the limit: cut at 1024 bytes, its length kept; the next one whole.
    let big = events.iter().find(|e| e.name == "big").unwrap();
    assert_eq!(big.attrs["truncated"], frames[2].split_once(' ').unwrap().0);
    assert!(big.text.as_deref().unwrap().len() < 1024);
    assert_eq!(find(&events, "after the long one").unwrap().name, "after");
    // The broken count closed the stream: what followed it is not a message.
    assert!(find(&events, "lost").is_none());
    assert!(log.contains("framing cannot be read on"), "{log}");
    // The flood: some passed, the rest were counted, and the logs say so.
    let passed = from(&events, "127.0.0.2").len();
    assert!((10..300).contains(&passed), "{passed} of the flood passed");
    assert_eq!(metric(&text, limited), Some(300 - passed as u64), "{text}");
    assert_eq!(
        metric(
            &text,
            "otwatch_agent_messages_truncated_total{site=\"plant-a\",agent=\"gw-1\"}"
        ),
        Some(1)
    );
    assert!(
        log.contains("syslog sender over max_messages_per_second"),
        "{log}"
    );
    // Every event was stored once.
    let seqs: std::collections::BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), events.len());
}
