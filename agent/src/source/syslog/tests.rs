use super::config::{Parser, SyslogSourceConfig, Timestamps};
use super::message::{parse, Frame, Framer, FramingError, Message};
use super::recognize::recognize;
use super::{Converter, RateLimiter, Verdict};
use crate::config::{AgentConfig, SourceConfig};
use otwatch_proto::limits::Limits;
use otwatch_proto::EventKind;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[test]
fn rfc5424_messages_parse_field_by_field() {
    // RFC 5424 section 6.5, examples 1 and 3.
    let m = parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8");
    assert_eq!(
        m,
        Message {
            facility: 4,
            severity: 2,
            rfc5424: true,
            ts_ns: Some(1_065_910_455_003_000_000),
            host: Some("mymachine.example.com".into()),
            app: Some("su".into()),
            procid: None,
            msgid: Some("ID47".into()),
            sd: None,
            msg: "'su root' failed for lonvick on /dev/pts/8".into(),
        }
    );
    let m = parse(br#"<165>1 2003-10-11T22:14:15.003-07:00 mymachine.example.com evntslog 1234 ID47 [exampleSDID@32473 iut="3" eventSource="Appl\"ic]ation" eventID="1011"][examplePriority@32473 class="high"] An application event log entry..."#);
    assert_eq!((m.facility, m.severity), (20, 5));
    assert_eq!(m.ts_ns, Some(1_065_935_655_003_000_000));
    assert_eq!(m.procid.as_deref(), Some("1234"));
    assert_eq!(
        m.sd.as_deref(),
        Some(
            r#"[exampleSDID@32473 iut="3" eventSource="Appl\"ic]ation" eventID="1011"][examplePriority@32473 class="high"]"#
        )
    );
    assert_eq!(m.msg, "An application event log entry...");
    // Every field nil, no MSG.
    let m = parse(b"<13>1 - - - - - -");
    assert_eq!(
        (m.ts_ns, &m.host, &m.app, &m.msg),
        (None, &None, &None, &String::new())
    );
}

#[test]
fn rfc3164_messages_and_what_devices_make_of_it_parse() {
    // RFC 3164 section 5.4.
    let m = parse(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8");
    assert_eq!((m.facility, m.severity, m.rfc5424), (4, 2, false));
    assert_eq!(m.host.as_deref(), Some("mymachine"));
    assert_eq!(m.app.as_deref(), Some("su"));
    assert_eq!(m.msg, "'su root' failed for lonvick on /dev/pts/8");
    // A space-padded day, a PID, a trailing newline.
    let m = parse(b"<38>Feb  5 17:32:18 hmi-01 sshd[4711]: Accepted password for op from 10.0.0.7 port 52811 ssh2\n");
    assert_eq!(m.host.as_deref(), Some("hmi-01"));
    assert_eq!(
        (m.app.as_deref(), m.procid.as_deref()),
        (Some("sshd"), Some("4711"))
    );
    assert_eq!(
        m.msg,
        "Accepted password for op from 10.0.0.7 port 52811 ssh2"
    );
    // No hostname: the tag comes right after the timestamp.
    let m = parse(b"<13>Feb  5 17:32:18 myapp: started");
    assert_eq!(
        (m.host, m.app.as_deref(), m.msg.as_str()),
        (None, Some("myapp"), "started")
    );
    // Cisco IOS: a sequence number and no timestamp in 3164's form.
    let m = parse(b"<189>42: *Mar  1 00:01:02.123: %SYS-5-CONFIG_I: Configured from console by admin on vty0 (10.1.1.9)");
    assert_eq!((m.facility, m.severity), (23, 5));
    assert_eq!(m.host, None);
    assert!(m.msg.ends_with("on vty0 (10.1.1.9)"), "{}", m.msg);
    // FortiGate: key=value right after the PRI.
    let m = parse(
        b"<189>date=2026-11-24 time=10:00:00 devname=\"fw-1\" logid=\"0100032001\" type=\"event\"",
    );
    assert_eq!(m.host, None);
    assert!(m.msg.starts_with("date=2026-11-24"));
    // Fractions of a second.
    let m = parse(b"<14>Nov 24 10:00:00.250 plc-7 cpu: mode RUN");
    assert_eq!(
        (m.host.as_deref(), m.app.as_deref()),
        (Some("plc-7"), Some("cpu"))
    );
    // No PRI at all: user.notice, everything is text; bad UTF-8 replaced.
    let m = parse(b"plain text \xff from a PLC");
    assert_eq!((m.facility, m.severity), (1, 5));
    assert_eq!(m.msg, "plain text \u{fffd} from a PLC");
    // A PRI out of range is not a PRI.
    assert_eq!(parse(b"<192>x").msg, "<192>x");
}

fn frames(framer: &mut Framer) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = framer.next_frame().unwrap() {
        out.push(f);
    }
    out
}

fn whole(bytes: &[u8]) -> Frame {
    Frame {
        bytes: bytes.to_vec(),
        truncated_from: None,
    }
}

#[test]
fn tcp_frames_are_octet_counted_or_newline_ended_even_mixed_and_split() {
    let counted = |msg: &str| format!("{} {msg}", msg.len());
    let stream = [
        counted("<13>1 - - - - - -"),
        "<14>Nov 24 10:00:00 a b: one\r\n\n".into(),
        counted("<13>counted\nwith newline"),
        counted("<13>1 - - - - - - x\n"),
        "<13>last\n".into(),
    ]
    .concat();
    let stream = stream.as_bytes();
    // Whole, then a byte at a time: the same frames.
    let expected = vec![
        whole(b"<13>1 - - - - - -"),
        whole(b"<14>Nov 24 10:00:00 a b: one"),
        whole(b"<13>counted\nwith newline"),
        whole(b"<13>1 - - - - - - x\n"),
        whole(b"<13>last"),
    ];
    let mut framer = Framer::new(480);
    framer.push(stream);
    assert_eq!(frames(&mut framer), expected);
    let mut framer = Framer::new(480);
    let mut got = Vec::new();
    for b in stream {
        framer.push(&[*b]);
        got.extend(frames(&mut framer));
    }
    assert_eq!(got, expected);
}

#[test]
fn long_frames_are_cut_at_the_limit_and_the_stream_goes_on() {
    let long = vec![b'x'; 2000];
    let mut stream = format!("{} ", long.len()).into_bytes();
    stream.extend(&long);
    stream.extend(b"5 <13>a");
    stream.extend(&long);
    stream.extend(b"\n<13>b\n");
    for step in [stream.len(), 7, 1] {
        let mut framer = Framer::new(500);
        let mut got = Vec::new();
        for chunk in stream.chunks(step) {
            framer.push(chunk);
            got.extend(frames(&mut framer));
        }
        assert_eq!(
            got,
            vec![
                Frame {
                    bytes: vec![b'x'; 500],
                    truncated_from: Some(2000)
                },
                whole(b"<13>a"),
                Frame {
                    bytes: vec![b'x'; 500],
                    truncated_from: Some(2000)
                },
                whole(b"<13>b"),
            ],
            "pushed {step} bytes at a time"
        );
        // The framer never holds much more than a frame's kept bytes.
        assert!(framer.next_frame().unwrap().is_none());
    }
}

#[test]
fn a_bad_octet_count_is_an_error_and_a_last_line_without_newline_is_kept() {
    let mut framer = Framer::new(480);
    framer.push(b"12x <13>hello");
    assert_eq!(
        framer.next_frame(),
        Err(FramingError::BadCount("12x".into()))
    );
    let mut framer = Framer::new(480);
    framer.push(b"12345678901 x");
    assert!(framer.next_frame().is_err());
    let mut framer = Framer::new(480);
    framer.push(b"<13>one\n<13>two");
    assert_eq!(frames(&mut framer), vec![whole(b"<13>one")]);
    assert_eq!(framer.finish(), Some(whole(b"<13>two")));
    // An octet-counted frame cut short by the end of the stream is not a message.
    let mut framer = Framer::new(480);
    framer.push(b"10 <13>");
    assert_eq!(frames(&mut framer), vec![]);
    assert_eq!(framer.finish(), None);
}

const ALL: [Parser; 3] = [Parser::CiscoIos, Parser::Openssh, Parser::Fortigate];

/// What a parser found: kind, name, attributes.
type Found = (EventKind, &'static str, Vec<(String, String)>);

fn found(app: Option<&str>, msg: &str) -> Option<Found> {
    recognize(&ALL, app, msg).map(|r| {
        (
            r.kind,
            r.name,
            r.attrs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    })
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn logins_and_configuration_changes_of_common_devices_are_recognised() {
    assert_eq!(
        found(None, "%SEC_LOGIN-5-LOGIN_SUCCESS: Login Success [user: admin] [Source: 10.1.1.9] [localport: 22] at 10:00:00 UTC Mon Nov 24 2026"),
        Some((EventKind::Access, "login", pairs(&[("user", "admin"), ("peer", "10.1.1.9")])))
    );
    assert_eq!(
        found(None, "%SEC_LOGIN-4-LOGIN_FAILED: Login failed [user: guest] [Source: 10.6.6.6] [localport: 23] [Reason: Login Authentication Failed] at 10:00:00 UTC"),
        Some((EventKind::Access, "login_failed", pairs(&[("user", "guest"), ("peer", "10.6.6.6")])))
    );
    assert_eq!(
        found(None, "42: *Mar  1 00:01:02.123: %SYS-5-CONFIG_I: Configured from console by admin on vty0 (10.1.1.9)"),
        Some((EventKind::Change, "config", pairs(&[("user", "admin"), ("peer", "10.1.1.9")])))
    );
    assert_eq!(
        found(
            None,
            "%PARSER-5-CFGLOG_LOGGEDCMD: User:netops  logged command:interface Gi1/0/3"
        ),
        Some((
            EventKind::Change,
            "config",
            pairs(&[("user", "netops"), ("command", "interface Gi1/0/3")])
        ))
    );
    assert_eq!(
        found(
            Some("sshd"),
            "Accepted publickey for op from 10.0.0.7 port 52811 ssh2: ED25519 SHA256:abc"
        ),
        Some((
            EventKind::Access,
            "login",
            pairs(&[
                ("user", "op"),
                ("peer", "10.0.0.7"),
                ("method", "publickey")
            ])
        ))
    );
    assert_eq!(
        found(
            Some("sshd"),
            "Failed password for invalid user root from 203.0.113.9 port 4242 ssh2"
        ),
        Some((
            EventKind::Access,
            "login_failed",
            pairs(&[
                ("user", "root"),
                ("peer", "203.0.113.9"),
                ("method", "password")
            ])
        ))
    );
    assert_eq!(
        found(Some("sshd"), "Invalid user plc from 203.0.113.9 port 4243"),
        Some((
            EventKind::Access,
            "login_failed",
            pairs(&[("user", "plc"), ("peer", "203.0.113.9")])
        ))
    );
    // The same words from another program are not an sshd login.
    assert_eq!(
        found(
            Some("myapp"),
            "Accepted password for op from 10.0.0.7 port 1 ssh2"
        ),
        None
    );
    assert_eq!(
        found(
            None,
            r#"date=2026-11-24 time=10:00:00 devname="fw-1" logid="0100032001" type="event" subtype="system" level="information" logdesc="Admin login successful" sn="1" user="admin" ui="https(10.2.2.2)" method="https" srcip=10.2.2.2 dstip=10.2.2.1 action="login" status="success" msg="Administrator admin logged in successfully from https(10.2.2.2)""#
        ),
        Some((
            EventKind::Access,
            "login",
            pairs(&[("user", "admin"), ("peer", "10.2.2.2"), ("method", "https")])
        ))
    );
    assert_eq!(
        found(
            None,
            r#"logid="0100032002" type="event" subtype="system" logdesc="Admin login failed" user="x" ui="ssh(10.6.6.6)" action="login" status="failed" reason="passwd_invalid""#
        ),
        Some((
            EventKind::Access,
            "login_failed",
            pairs(&[("user", "x"), ("peer", "10.6.6.6")])
        ))
    );
    assert_eq!(
        found(
            None,
            r#"logid="0100044547" type="event" subtype="system" logdesc="Object attribute configured" user="admin" ui="GUI(10.2.2.2)" action="Edit" cfgtid=1 cfgpath="firewall.policy" cfgobj="7" cfgattr="action[deny->accept]" msg="Edit firewall.policy 7""#
        ),
        Some((
            EventKind::Change,
            "config",
            pairs(&[
                ("user", "admin"),
                ("path", "firewall.policy"),
                ("action", "Edit"),
                ("peer", "10.2.2.2")
            ])
        ))
    );
    // A FortiGate traffic log is no login, whatever its fields say.
    assert_eq!(
        found(None, r#"logid="0000000013" type="traffic" action="login""#),
        None
    );
    assert_eq!(found(None, "link up on port 3"), None);
    // A parser left out of `parsers` recognises nothing.
    assert_eq!(
        recognize(
            &[Parser::Openssh],
            None,
            "%SYS-5-CONFIG_I: Configured from console by admin on vty0"
        ),
        None
    );
}

#[test]
fn each_sender_has_its_own_rate_and_drops_are_counted_by_episode() {
    let mut limiter = RateLimiter::new(10);
    let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let t0 = Instant::now();
    let verdicts: Vec<Verdict> = (0..13).map(|_| limiter.check(a, t0)).collect();
    assert!(verdicts[..10].iter().all(|v| *v == Verdict::Pass));
    assert_eq!(verdicts[10], Verdict::Drop { first: true });
    assert_eq!(verdicts[11], Verdict::Drop { first: false });
    // Another sender is not held back by the first.
    assert_eq!(limiter.check(b, t0), Verdict::Pass);
    // 100 ms later a has one message again, and hears of its 3 drops.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(limiter.check(a, t1), Verdict::PassAfterDrops(3));
    assert_eq!(limiter.check(a, t1), Verdict::Drop { first: true });
    // A second's rest fills the bucket, no more.
    let t2 = t1 + Duration::from_secs(5);
    let passed = (0..20)
        .filter(|_| limiter.check(a, t2) != Verdict::Drop { first: false })
        .count();
    assert_eq!(passed, 11, "10 pass, the 11th is the first drop");
}

fn converter() -> Converter {
    Converter {
        assets: BTreeMap::from([("10.0.3.7".parse().unwrap(), "line3/hmi-01".into())]),
        parsers: ALL.to_vec(),
        timestamps: Timestamps::Received,
        limits: Limits::default(),
    }
}

#[test]
fn messages_become_events_with_their_sender_asset_and_attributes() {
    let c = converter();
    let hmi: IpAddr = "10.0.3.7".parse().unwrap();
    let other: IpAddr = "10.0.9.9".parse().unwrap();
    let m = parse(b"<38>Feb  5 17:32:18 hmi-01 sshd[4711]: Accepted password for op from 10.0.0.7 port 52811 ssh2");
    let e = c.event(m.clone(), hmi, None, 42);
    assert_eq!(
        (e.kind(), e.name.as_str(), e.asset.as_str(), e.ts_ns),
        (EventKind::Access, "login", "line3/hmi-01", 42)
    );
    assert_eq!(e.attrs["sender"], "10.0.3.7");
    assert_eq!(e.attrs["peer"], "10.0.0.7");
    assert_eq!(e.attrs["user"], "op");
    assert_eq!(e.attrs["facility"], "auth");
    assert_eq!(e.attrs["severity"], "info");
    assert_eq!(e.attrs["procid"], "4711");
    // Unlisted sender: the message's hostname; no hostname: the address.
    assert_eq!(c.event(m, other, None, 42).asset, "hmi-01");
    let e = c.event(parse(b"<14>link up on port 3"), other, Some(9000), 42);
    assert_eq!(
        (e.kind(), e.name.as_str(), e.asset.as_str()),
        (EventKind::Log, "syslog", "10.0.9.9")
    );
    assert_eq!(e.text.as_deref(), Some("link up on port 3"));
    assert_eq!(e.attrs["truncated"], "9000");
    // A message's own time only when asked for, and only a 5424 one.
    let m = parse(b"<14>1 2026-11-24T10:00:00Z plc-7 cpu - - - mode RUN");
    assert_eq!(c.event(m.clone(), other, None, 42).ts_ns, 42);
    let c = Converter {
        timestamps: Timestamps::Message,
        ..converter()
    };
    let e = c.event(m, other, None, 42);
    assert_eq!(e.ts_ns, 1_795_514_400_000_000_000);
    assert_eq!((e.name.as_str(), e.asset.as_str()), ("cpu", "plc-7"));
    // Text and attributes are cut to the limits, at a character boundary.
    let c = Converter {
        limits: Limits {
            max_text_len: 10,
            max_attr_len: 5,
            ..Limits::default()
        },
        ..converter()
    };
    let e = c.event(
        parse("<14>1 - häääst app - - [a x=\"1\"] ééééééé".as_bytes()),
        other,
        None,
        42,
    );
    assert_eq!(e.text.as_deref(), Some("ééééé"));
    assert_eq!(e.attrs["host"], "hää");
    assert_eq!(e.attrs["sd"], "[a x=");
    let limits = Limits {
        max_text_len: 10,
        max_attr_len: 5,
        ..Limits::default()
    };
    assert_eq!(
        limits.check_event(0, &e, 42).map_err(|e| e.to_string()),
        Ok(())
    );
}

fn syslog_config(section: &str) -> Result<SyslogSourceConfig, String> {
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[[sources]]\ntype = \"syslog\"\n{section}"
    );
    let config = AgentConfig::parse(&text, "agent.toml").map_err(|e| e.to_string())?;
    match &config.sources[0] {
        SourceConfig::Syslog(s) => Ok(s.clone()),
        _ => panic!("not a syslog source"),
    }
}

#[test]
fn the_configuration_is_checked_naming_the_key() {
    let c = syslog_config("udp = \"0.0.0.0:514\"\ntcp = \"0.0.0.0:601\"\nassets = { \"10.0.3.7\" = \"line3/hmi-01\" }\nparsers = [\"openssh\"]\ntimestamps = \"message\"\n").unwrap();
    assert_eq!(c.parsers, vec![Parser::Openssh]);
    assert_eq!(c.max_message_bytes, 8192);
    assert_eq!(c.max_messages_per_second, 200);
    assert_eq!(
        syslog_config("udp = \"0.0.0.0:514\"").unwrap(),
        SyslogSourceConfig::new(Some("0.0.0.0:514".parse().unwrap()), None)
    );
    for (section, expected) in [
        ("", "neither udp nor tcp"),
        (
            "udp = \"0.0.0.0:514\"\nmax_message_bytes = 100",
            "max_message_bytes = 100",
        ),
        (
            "udp = \"0.0.0.0:514\"\nmax_messages_per_second = 0",
            "max_messages_per_second = 0",
        ),
        (
            "tcp = \"0.0.0.0:601\"\nmax_connections = 0",
            "max_connections = 0",
        ),
        (
            "udp = \"0.0.0.0:514\"\nassets = { \"hmi\" = \"x\" }",
            "assets key \"hmi\"",
        ),
        (
            "udp = \"0.0.0.0:514\"\nassets = { \"10.0.0.1\" = \" \" }",
            "assets.\"10.0.0.1\" is empty",
        ),
        ("udp = \"0.0.0.0:514\"\nparsers = [\"juniper\"]", "juniper"),
        ("udp = \"0.0.0.0:514\"\nport = 514", "port"),
        (
            "udp = \"localhost\"",
            "udp = \"localhost\" is not an IP address and port",
        ),
    ] {
        let err = syslog_config(section)
            .map(|c| format!("accepted: {c:?}"))
            .unwrap_or_else(|e| e);
        assert!(
            err.contains(expected) && !err.starts_with("accepted"),
            "{section:?}: {err}"
        );
    }
}
