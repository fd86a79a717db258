//! The syslog output against a real receiver: rsyslog (Debian's `rsyslog`
//! and `rsyslog-gnutls`, installed by `scripts/test.sh`) started on
//! loopback by each test, over TCP, TLS with client certificates, and UDP.
//! The tests parse what rsyslog wrote to its file: its own parse of each
//! record (PRI, HOSTNAME, APP-NAME, MSGID, structured data, MSG) and the
//! raw record, so framing, header and escaping are checked by the receiver
//! and by an independent CEF reader here.

use super::cef::{cef, cef_severity, escape_extension, escape_header};
use super::*;
use crate::outputs::testing::{self, alert, alerts, Pki, Running};
use crate::outputs::OutputConfig;
use otwatch_proto::Severity;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// One rsyslogd, listening on loopback, writing every record it takes to
/// `out.log` as one tab-separated line of the fields it parsed.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    tcp: u16,
    tls: u16,
    udp: u16,
}

/// What rsyslog made of one record.
#[derive(Debug)]
struct Received {
    pri: u8,
    hostname: String,
    app_name: String,
    msgid: String,
    structured_data: String,
    msg: String,
    raw: String,
}

impl Rsyslog {
    /// Starts rsyslogd with a TCP, a TLS (client certificate required,
    /// from `pki`'s CA) and a UDP input, on the given ports or free ones.
    fn start(pki: &Pki, ports: Option<(u16, u16, u16)>) -> Option<Rsyslog> {
        if !testing::peer_installed("rsyslog", RSYSLOGD)
            || !testing::peer_installed("rsyslog-gnutls", &gtls_module())
        {
            return None;
        }
        let (tcp, tls, udp) = ports.unwrap_or_else(|| {
            (
                testing::free_port(false),
                testing::free_port(false),
                testing::free_port(true),
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (cert, key) = pki.server();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let conf = format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" maxSessions="20")
module(load="imudp")
template(name="fields" type="string"
         string="%pri%\t%hostname%\t%app-name%\t%msgid%\t%structured-data%\t%msg%\t%rawmsg%\n")
ruleset(name="out") {{
  action(type="omfile" file="{d}/out.log" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="out")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="out"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="out")
"#,
            ca = pki.ca().display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("rsyslogd starts");
        let rsyslog = Rsyslog {
            child,
            dir,
            tcp,
            tls,
            udp,
        };
        // Its inputs open together: once both TCP ports take connections,
        // the UDP one listens too.
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [tcp, tls] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd did not listen on {port}: {}",
                    rsyslog.stderr()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(rsyslog)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// The records received so far.
    fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.out()).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.splitn(7, '\t').collect();
                assert_eq!(f.len(), 7, "unexpected line from rsyslog: {line}");
                Received {
                    pri: f[0].parse().unwrap(),
                    hostname: f[1].into(),
                    app_name: f[2].into(),
                    msgid: f[3].into(),
                    structured_data: f[4].into(),
                    msg: f[5].trim_start().into(),
                    raw: f[6].into(),
                }
            })
            .collect()
    }

    /// Waits until `n` records were received, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog received {} of {n} records: {}",
                got.len(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where rsyslog's GnuTLS driver is (`/usr/lib/<multiarch>/rsyslog/`).
fn gtls_module() -> String {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("rsyslog/lmnsd_gtls.so"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/rsyslog/lmnsd_gtls.so"))
        .display()
        .to_string()
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(address: String, transport: Transport, format: SyslogFormat) -> SyslogConfig {
    SyslogConfig {
        name: Some("siem".into()),
        address,
        transport,
        format,
        facility: "local4".into(),
        hostname: Some("otwatch-central".into()),
        app_name: "otwatch".into(),
        sd_id: "otwatch@32473".into(),
        server_name: None,
        timeout: Duration::from_secs(5),
        tls: Default::default(),
    }
}

fn start_output(config: &SyslogConfig) -> (OutputConfig, Box<dyn AlertOutput>) {
    let output = OutputConfig::Syslog(config.clone());
    let opened = output.open(Path::new("/nonexistent")).unwrap();
    (output, opened)
}

/// A CEF reader written from the spec, independent of the writer: the
/// seven header fields (`\|` and `\\` unescaped) and the extension as a
/// map (`\=`, `\\`, `\n`, `\r` unescaped; a value runs up to the space
/// before the next `key=`).
fn parse_cef(text: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let body = text.strip_prefix("CEF:").expect("starts with CEF:");
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = body.chars();
    while header.len() < 7 {
        match chars.next().expect("seven header fields") {
            '\\' => field.push(chars.next().unwrap()),
            '|' => header.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    let ext: String = chars.collect();
    // Split at unescaped '=': the key is the word before it.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut raw = String::new();
    let mut it = ext.chars().peekable();
    let mut current_key: Option<String> = None;
    while let Some(c) = it.next() {
        match c {
            '\\' => {
                let n = it.next().unwrap();
                raw.push('\\');
                raw.push(n);
            }
            '=' => {
                let (value, key) = match raw.rfind(' ') {
                    Some(i) => (raw[..i].to_string(), raw[i + 1..].to_string()),
                    None => (String::new(), raw.clone()),
                };
                if let Some(k) = current_key.take() {
                    pairs.push((k, value));
                }
                current_key = Some(key);
                raw.clear();
            }
            c => raw.push(c),
        }
    }
    if let Some(k) = current_key {
        pairs.push((k, raw));
    }
    let unescape = |v: &str| {
        let mut out = String::new();
        let mut it = v.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next().unwrap() {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    o => out.push(o),
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    (
        header,
        pairs.into_iter().map(|(k, v)| (k, unescape(&v))).collect(),
    )
}

/// The custom field labelled `label` (`cs1Label=label` → `cs1`'s value).
fn labelled<'a>(ext: &'a BTreeMap<String, String>, label: &str) -> &'a str {
    let key = ext
        .iter()
        .find(|(k, v)| k.ends_with("Label") && v.as_str() == label)
        .map(|(k, _)| k.trim_end_matches("Label").to_string())
        .unwrap_or_else(|| panic!("no field labelled {label}: {ext:?}"));
    &ext[&key]
}

fn check_cef(received: &Received, alert: &Alert) {
    let (header, ext) = parse_cef(&received.msg);
    assert_eq!(header[0], "0");
    assert_eq!(header[1], "otwatch");
    assert_eq!(header[2], "otwatch");
    assert_eq!(header[3], env!("CARGO_PKG_VERSION"));
    assert_eq!(header[4], format!("{}:{}", alert.detector, alert.name));
    assert_eq!(
        header[5],
        format!(
            "{} anomaly on {} (T0836 Modify Parameter)",
            alert.detector, alert.name
        )
    );
    assert_eq!(header[6], cef_severity(alert.severity()).to_string());
    assert_eq!(ext["rt"], (alert.ts_ns / 1_000_000).to_string());
    assert_eq!(ext["dvchost"], "otwatch-central");
    assert_eq!(ext["externalId"], alert.id);
    assert_eq!(ext["cat"], "cycle");
    assert_eq!(ext["msg"], alert.message);
    assert_eq!(ext["cnt"], alert.event_count.to_string());
    assert_eq!(labelled(&ext, "ATT&CK for ICS technique"), "T0836");
    assert_eq!(
        labelled(&ext, "ATT&CK for ICS tactic"),
        "Impair Process Control"
    );
    assert_eq!(
        labelled(&ext, "ATT&CK for ICS technique name"),
        "Modify Parameter"
    );
    assert_eq!(labelled(&ext, "Site"), alert.site);
    assert_eq!(labelled(&ext, "Asset"), alert.asset);
    assert_eq!(labelled(&ext, "Name"), alert.name);
    assert_eq!(labelled(&ext, "Agent"), alert.agent);
    assert_eq!(labelled(&ext, "First seq"), alert.first_seq.to_string());
    assert_eq!(labelled(&ext, "Last seq"), alert.last_seq.to_string());
    assert_eq!(labelled(&ext, "Observed"), alert.observed.to_string());
    assert_eq!(
        labelled(&ext, "Expected low"),
        alert.expected_low.to_string()
    );
    assert_eq!(
        labelled(&ext, "Expected high"),
        alert.expected_high.to_string()
    );
    assert_eq!(labelled(&ext, "Score"), alert.score.to_string());
    // local4 (20) * 8 + the alert's syslog severity.
    assert_eq!(
        received.pri,
        20 * 8 + rfc5424::syslog_severity(alert.severity())
    );
    assert_eq!(received.hostname, "otwatch-central");
    assert_eq!(received.app_name, "otwatch");
    assert_eq!(received.msgid, "alert");
    assert_eq!(received.structured_data, "-");
}

/// The params of rsyslog's `%structured-data%`, `[id k="v" …]`, unescaped.
fn parse_sd(sd: &str) -> (String, BTreeMap<String, String>) {
    let inner = sd
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("one SD element: {sd}"));
    let (id, mut rest) = inner.split_once(' ').unwrap();
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '\\' => value.push(chars.next().unwrap().1),
                '"' => break i,
                c => value.push(c),
            }
        };
        params.insert(name.trim().to_string(), value);
        rest = after[end + 1..].trim_start();
    }
    (id.to_string(), params)
}

#[tokio::test]
async fn cef_over_tcp_reaches_rsyslog_framed_and_escaped() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let config = config(
        format!("127.0.0.1:{}", rsyslog.tcp),
        Transport::Tcp,
        SyslogFormat::Cef,
    );
    let (output, opened) = start_output(&config);
    let sent = alerts(0, 5);
    let running = Running::start(&output, opened, &[&sent[..2], &sent[2..]]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let received = rsyslog.wait_for(5).await;
    assert_eq!(received.len(), 5, "{received:?}");
    for (r, a) in received.iter().zip(&sent) {
        check_cef(r, a);
        // The raw record is exactly what was framed: nothing cut or merged.
        assert_eq!(
            r.raw,
            rfc5424::record(&super::header(&config), a).replace('\n', " ")
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn rfc5424_over_tls_with_a_client_certificate_is_parsed_by_rsyslog() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let mut config = config(
        format!("localhost:{}", rsyslog.tls),
        Transport::Tls,
        SyslogFormat::Rfc5424,
    );
    config.tls = pki.tls_files();
    let (output, opened) = start_output(&config);
    let sent = alerts(0, 4);
    let running = Running::start(&output, opened, &[&sent]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let received = rsyslog.wait_for(4).await;
    for (r, a) in received.iter().zip(&sent) {
        let (id, params) = parse_sd(&r.structured_data);
        assert_eq!(id, "otwatch@32473");
        assert_eq!(params["id"], a.id);
        assert_eq!(params["site"], a.site);
        assert_eq!(params["asset"], a.asset);
        assert_eq!(params["detector"], a.detector);
        assert_eq!(params["name"], a.name);
        assert_eq!(
            params["severity"],
            otwatch_proto::severity_name(a.severity())
        );
        assert_eq!(params["observed"], a.observed.to_string());
        assert_eq!(params["expected_low"], a.expected_low.to_string());
        assert_eq!(params["expected_high"], a.expected_high.to_string());
        assert_eq!(params["agent"], a.agent);
        assert_eq!(params["first_seq"], a.first_seq.to_string());
        assert_eq!(params["last_seq"], a.last_seq.to_string());
        assert_eq!(params["event_count"], a.event_count.to_string());
        assert_eq!(params["technique"], "T0836");
        assert_eq!(params["tactic"], "Impair Process Control");
        assert_eq!(r.msg, a.message.replace('\n', " "));
        assert_eq!(r.pri, 20 * 8 + rfc5424::syslog_severity(a.severity()));
        assert_eq!(r.msgid, "alert");
    }
    running.stop().await;
}

#[tokio::test]
async fn tls_refuses_a_receiver_whose_certificate_names_another_host() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let mut wrong = config(
        format!("127.0.0.1:{}", rsyslog.tls),
        Transport::Tls,
        SyslogFormat::Cef,
    );
    wrong.tls = pki.tls_files();
    wrong.server_name = Some("siem.example.net".into());
    let (output, opened) = start_output(&wrong);
    let running = Running::start(&output, opened, &[&alerts(0, 1)]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(error.contains("not valid for name"), "{error}");
    assert_eq!(running.committed().await, 0);
    assert!(rsyslog.received().is_empty());
    running.stop().await;

    // Without the client certificate rsyslog refuses the connection: the
    // output retries, nothing is committed.
    let mut anonymous = config(
        format!("localhost:{}", rsyslog.tls),
        Transport::Tls,
        SyslogFormat::Cef,
    );
    anonymous.tls = crate::outputs::tls::TlsFiles {
        ca: Some(pki.ca()),
        client_cert: None,
        client_key: None,
    };
    let (output, opened) = start_output(&anonymous);
    let running = Running::start(&output, opened, &[&alerts(0, 1)]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("right after accepting it"), "{error}");
    assert_eq!(running.committed().await, 0);
    running.stop().await;
}

#[tokio::test]
async fn udp_records_reach_rsyslog() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let config = config(
        format!("127.0.0.1:{}", rsyslog.udp),
        Transport::Udp,
        SyslogFormat::Cef,
    );
    let (output, opened) = start_output(&config);
    let sent = alerts(0, 3);
    let running = Running::start(&output, opened, &[&sent]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let received = rsyslog.wait_for(3).await;
    for (r, a) in received.iter().zip(&sent) {
        check_cef(r, a);
    }
    running.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retried_and_a_restarted_one_gets_the_rest() {
    let pki = Pki::new();
    if !testing::peer_installed("rsyslog", RSYSLOGD) {
        return;
    }
    let ports = (
        testing::free_port(false),
        testing::free_port(false),
        testing::free_port(true),
    );
    let config = config(
        format!("127.0.0.1:{}", ports.0),
        Transport::Tcp,
        SyslogFormat::Cef,
    );
    let (output, opened) = start_output(&config);
    let sent = alerts(0, 6);
    let running = Running::start(&output, opened, &[&sent[..2]]).await;
    // Nobody listens: the output retries and commits nothing.
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("cannot connect"), "{error}");
    assert_eq!(running.committed().await, 0);

    let Some(rsyslog) = Rsyslog::start(&pki, Some(ports)) else {
        return;
    };
    assert!(running.wait_committed_all(Duration::from_secs(60)).await);
    let received = rsyslog.wait_for(2).await;
    check_cef(&received[0], &sent[0]);
    check_cef(&received[1], &sent[1]);
    drop(rsyslog);

    // The receiver restarts: the connection the output holds is dead. The
    // next alerts still arrive, on a new connection.
    let rsyslog = Rsyslog::start(&pki, Some(ports)).unwrap();
    running.append(&sent[2..]).await;
    assert!(running.wait_committed_all(Duration::from_secs(60)).await);
    let received = rsyslog.wait_for(4).await;
    let ids: Vec<String> = received
        .iter()
        .map(|r| parse_cef(&r.msg).1["externalId"].clone())
        .collect();
    for a in &sent[2..] {
        assert!(ids.contains(&a.id), "{} missing from {ids:?}", a.id);
    }
    running.stop().await;
}

/// An alert raised (open), one raised while suppressed, and the first
/// one again, acked: what the detector appends in the alert lifecycle.
fn lifecycle() -> (Alert, Alert, Alert) {
    use otwatch_proto::arrow::state;
    let raised = Alert {
        state: state::OPEN.into(),
        ..alert(0)
    };
    let suppressed = Alert {
        state: state::SUPPRESSED.into(),
        state_by: "alice".into(),
        comment: "die change".into(),
        ..alert(1)
    };
    let acked = Alert {
        state: state::ACKED.into(),
        state_by: "bob".into(),
        state_at_ns: raised.ts_ns + 60_000_000_000,
        comment: "checking = with \\ the plant".into(),
        ..raised.clone()
    };
    (raised, suppressed, acked)
}

#[tokio::test]
async fn cef_updates_carry_the_state_and_suppressed_alerts_are_not_sent() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let config = config(
        format!("127.0.0.1:{}", rsyslog.tcp),
        Transport::Tcp,
        SyslogFormat::Cef,
    );
    let (output, opened) = start_output(&config);
    let (raised, suppressed, acked) = lifecycle();
    let (before, after) = (vec![raised.clone(), suppressed], vec![acked.clone()]);
    let running = Running::start(&output, opened, &[&before, &after]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let received = rsyslog.wait_for(2).await;
    assert_eq!(received.len(), 2, "{received:?}");
    let (_, first) = parse_cef(&received[0].msg);
    let (_, update) = parse_cef(&received[1].msg);
    assert_eq!(first["externalId"], raised.id);
    assert!(
        !first.contains_key("act"),
        "a new alert is not an update: {first:?}"
    );
    assert_eq!(update["externalId"], raised.id);
    assert_eq!(update["act"], "acked");
    assert_eq!(update["suser"], "bob");
    assert_eq!(update["reason"], acked.comment);
    assert_eq!(
        labelled(&update, "State changed at"),
        (acked.state_at_ns / 1_000_000).to_string()
    );
    running.stop().await;
}

#[tokio::test]
async fn rfc5424_updates_carry_the_state_and_suppressed_alerts_are_not_sent() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let config = config(
        format!("127.0.0.1:{}", rsyslog.tcp),
        Transport::Tcp,
        SyslogFormat::Rfc5424,
    );
    let (output, opened) = start_output(&config);
    let (raised, suppressed, acked) = lifecycle();
    let all = vec![raised.clone(), suppressed, acked.clone()];
    let running = Running::start(&output, opened, &[&all]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let received = rsyslog.wait_for(2).await;
    assert_eq!(received.len(), 2, "{received:?}");
    let (_, first) = parse_sd(&received[0].structured_data);
    let (_, update) = parse_sd(&received[1].structured_data);
    assert_eq!(first["id"], raised.id);
    assert!(!first.contains_key("state"), "{first:?}");
    assert_eq!(update["id"], raised.id);
    assert_eq!(update["state"], "acked");
    assert_eq!(update["state_by"], "bob");
    assert_eq!(update["comment"], acked.comment);
    assert_eq!(
        update["state_at"],
        chrono::DateTime::from_timestamp_nanos(acked.state_at_ns)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    );
    running.stop().await;
}

#[test]
fn cef_escapes_the_header_and_the_extension_as_the_spec_says() {
    assert_eq!(escape_header(r"a|b\c"), r"a\|b\\c");
    assert_eq!(escape_header("two\nlines"), "two lines");
    assert_eq!(escape_extension("a=b\\c|d\ne\rf"), "a\\=b\\\\c|d\\ne\\rf");
    assert_eq!(cef_severity(Severity::Low), 3);
    assert_eq!(cef_severity(Severity::Medium), 5);
    assert_eq!(cef_severity(Severity::High), 8);
    assert_eq!(cef_severity(Severity::Critical), 10);
    let mut a = alert(1);
    a.technique = String::new();
    let text = cef(&a, "h");
    assert!(
        text.contains("|cycle anomaly on press\\|cycle|5|"),
        "{text}"
    );
    assert!(!text.contains("cs1Label"), "{text}");
    // One line, whatever the message holds.
    assert!(!text.contains('\n'));
    let (header, ext) = parse_cef(&text);
    assert_eq!(header[4], "cycle:press|cycle");
    assert_eq!(ext["msg"], a.message);
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let refused = |text: &str| {
        let c: OutputConfig = toml::from_str(text).unwrap();
        format!(
            "{:#}",
            crate::outputs::validate(std::slice::from_ref(&c)).unwrap_err()
        )
    };
    let base = "type = \"syslog\"\nname = \"siem\"\n";
    let err = refused(&format!("{base}address = \"siem.example.net\"\n"));
    assert!(err.starts_with("outputs.siem.address"), "{err}");
    let err = refused(&format!(
        "{base}address = \"siem:514\"\ntransport = \"tcp\"\nfacility = \"local9\"\n"
    ));
    assert!(err.starts_with("outputs.siem.facility"), "{err}");
    let err = refused(&format!(
        "{base}address = \"siem:6514\"\n[tls]\nca = \"/nonexistent/ca.pem\"\n"
    ));
    assert!(err.starts_with("outputs.siem.tls.ca"), "{err}");
    let err = refused(&format!(
        "{base}address = \"siem:514\"\ntransport = \"udp\"\n[tls]\nca = \"/x\"\n"
    ));
    assert!(err.contains("transport is not \"tls\""), "{err}");
    let err = refused(&format!("{base}address = \"siem:514\"\nsd_id = \"a b\"\n"));
    assert!(err.starts_with("outputs.siem.sd_id"), "{err}");
    let err = toml::from_str::<OutputConfig>(&format!(
        "{base}address = \"siem:514\"\nformat = \"leef\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown variant `leef`"), "{err}");
    let err = toml::from_str::<OutputConfig>(&format!("{base}address = \"siem:514\"\nport = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `port`"), "{err}");
    let ipv6: OutputConfig = toml::from_str(&format!(
        "{base}address = \"[fd00::5]:514\"\ntransport = \"tcp\"\n"
    ))
    .unwrap();
    crate::outputs::validate(&[ipv6]).unwrap();
}

/// Throughput to a real rsyslog, for the README's figures (not a pass or
/// fail criterion): `cargo test -p otwatch-runtime --lib
/// syslog_throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn syslog_throughput() {
    let pki = Pki::new();
    let Some(rsyslog) = Rsyslog::start(&pki, None) else {
        return;
    };
    let n: u64 = 20_000;
    let mut total = 0;
    for (transport, port) in [(Transport::Tcp, rsyslog.tcp), (Transport::Tls, rsyslog.tls)] {
        let mut config = config(format!("localhost:{port}"), transport, SyslogFormat::Cef);
        config.tls = if transport == Transport::Tls {
            pki.tls_files()
        } else {
            Default::default()
        };
        let (output, opened) = start_output(&config);
        let sent = alerts(0, n);
        let records: Vec<&[Alert]> = sent.chunks(64).collect();
        // The log holds them all before the output starts.
        let dir = Running::start(&output, opened, &records).await;
        let started = Instant::now();
        assert!(dir.wait_committed_all(Duration::from_secs(600)).await);
        total += n as usize;
        rsyslog.wait_for(total).await;
        let took = started.elapsed();
        println!(
            "syslog {transport:?} CEF to rsyslog: {n} alerts in {:.2} s, {:.0} alerts/s (first connection's 1 s settle included)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        dir.stop().await;
    }
}
