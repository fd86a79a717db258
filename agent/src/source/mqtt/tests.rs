use super::config::{MqttSourceConfig, SubscriptionConfig};
use super::{asset, events, matches};
use crate::config::{AgentConfig, SourceConfig};
use otwatch_proto::EventKind;

#[test]
fn topic_filters_match_as_mqtt_says() {
    assert!(matches("plant/+/telemetry", "plant/press-1/telemetry"));
    assert!(!matches("plant/+/telemetry", "plant/a/b/telemetry"));
    assert!(matches("plant/#", "plant/a/b/c"));
    assert!(matches("plant/#", "plant"));
    assert!(!matches("plant/a", "plant/a/b"));
    assert!(!matches("plant/a/b", "plant/a"));
    assert_eq!(
        asset("{1}/{3}", "plant/line2/press/07/telemetry"),
        "line2/07"
    );
    assert_eq!(asset("line1/{1}", "plant/press-1"), "line1/press-1");
    assert_eq!(asset("fixed", "a/b"), "fixed");
}

fn sub(extra: &str) -> SubscriptionConfig {
    toml::from_str(&format!(
        "topic = \"plant/+/t\"\nasset = \"line1/{{1}}\"\n{extra}"
    ))
    .unwrap()
}

type Seen = (EventKind, String, Option<f64>, Option<String>, i64);

fn seen(sub: &SubscriptionConfig, payload: &str) -> Result<Vec<Seen>, String> {
    events(sub, "plant/press-1/t", payload.as_bytes(), 42).map(|events| {
        events
            .into_iter()
            .map(|e| {
                assert_eq!(e.asset, "line1/press-1");
                assert_eq!(e.attrs["topic"], "plant/press-1/t");
                (e.kind(), e.name, e.value, e.text, e.ts_ns)
            })
            .collect()
    })
}

#[test]
fn json_payloads_map_to_samples_and_states() {
    let s = sub("timestamp = \"/ts\"\nsamples = { \"/temp\" = \"temp_c\", \"/m/p\" = \"pressure_bar\", \"/on\" = \"running\" }\nstates = { \"/mode\" = \"mode\" }");
    assert_eq!(
        seen(
            &s,
            r#"{"ts": 1764000000123, "temp": 21.5, "m": {"p": 3}, "on": true, "mode": "RUN", "other": 1}"#
        ),
        Ok(vec![
            (
                EventKind::Sample,
                "pressure_bar".into(),
                Some(3.0),
                None,
                1_764_000_000_123_000_000
            ),
            (
                EventKind::Sample,
                "running".into(),
                Some(1.0),
                None,
                1_764_000_000_123_000_000
            ),
            (
                EventKind::Sample,
                "temp_c".into(),
                Some(21.5),
                None,
                1_764_000_000_123_000_000
            ),
            (
                EventKind::State,
                "mode".into(),
                None,
                Some("RUN".into()),
                1_764_000_000_123_000_000
            ),
        ])
    );
    // Missing fields are no events; an RFC 3339 time is a time too.
    assert_eq!(
        seen(&s, r#"{"ts": "2026-11-24T10:00:00Z", "mode": 2}"#),
        Ok(vec![(
            EventKind::State,
            "mode".into(),
            None,
            Some("2".into()),
            1_795_514_400_000_000_000
        )])
    );
    // Wrong payloads say what is wrong.
    for (payload, why) in [
        ("not json", "payload is not JSON"),
        (
            r#"{"ts": -5, "temp": 1}"#,
            "/ts = -5 is not Unix time in ms",
        ),
        (
            r#"{"ts": 1764000000123, "temp": "hot"}"#,
            "/temp = \"hot\" is not a number",
        ),
        (r#"{"temp": 1}"#, "/ts (the timestamp) is missing"),
        (
            r#"{"ts": 1764000000123, "mode": [1]}"#,
            "/mode = [1] is not a state",
        ),
    ] {
        let err = seen(&s, payload).unwrap_err();
        assert!(err.contains(why), "{payload}: {err}");
    }
    // No mapping: every top-level number, the agent's clock.
    assert_eq!(
        seen(&sub(""), r#"{"a": 1, "b": "x", "c": 2.5}"#),
        Ok(vec![
            (EventKind::Sample, "a".into(), Some(1.0), None, 42),
            (EventKind::Sample, "c".into(), Some(2.5), None, 42),
        ])
    );
}

fn mqtt_config(section: &str) -> Result<MqttSourceConfig, String> {
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[[sources]]\ntype = \"mqtt\"\n{section}"
    );
    let config = AgentConfig::parse(&text, "agent.toml").map_err(|e| e.to_string())?;
    match &config.sources[0] {
        SourceConfig::Mqtt(m) => Ok(m.clone()),
        _ => panic!("not an mqtt source"),
    }
}

#[test]
fn the_configuration_is_checked_naming_the_key() {
    let base = "broker = \"127.0.0.1:1883\"\nclient_id = \"gw-1\"\n";
    let subs = "[[sources.subscriptions]]\ntopic = \"plant/+/t\"\nasset = \"{1}\"\n";
    let c = mqtt_config(&format!("{base}{subs}")).unwrap();
    assert!(!c.clean_session);
    assert_eq!(c.host_port().unwrap(), ("127.0.0.1".into(), 1883));
    for (section, expected) in [
        (format!("broker = \"x\"\nclient_id = \"a\"\n{subs}"), "broker = \"x\" is not host:port"),
        (format!("{base}keep_alive = \"1s\"\n{subs}"), "keep_alive = 1s is below 5s"),
        (format!("{base}password_env = \"P\"\n{subs}"), "a password is set but no username"),
        (format!("{base}tls = {{ ca = \"a\", cert = \"b\" }}\n{subs}"), "tls.cert and tls.key go together"),
        (base.to_string(), "missing field `subscriptions`"),
        (format!("{base}subscriptions = []"), "give at least one topic"),
        (format!("{base}[[sources.subscriptions]]\ntopic = \"a/#/b\"\nasset = \"x\"\n"), "subscriptions[0] (\"a/#/b\"): topic"),
        (format!("{base}[[sources.subscriptions]]\ntopic = \"a/+\"\nasset = \"{{5}}\"\n"), "names topic level 5"),
        (format!("{base}[[sources.subscriptions]]\ntopic = \"a/+\"\nasset = \"{{x}}\"\n"), "{x} is not a topic level"),
        (format!("{base}[[sources.subscriptions]]\ntopic = \"a\"\nasset = \"x\"\nsamples = {{ \"temp\" = \"t\" }}\n"), "\"temp\" is not a JSON pointer"),
        (format!("{base}{subs}qos = 2\n"), "qos"),
    ] {
        let err = mqtt_config(&section)
            .map(|c| format!("accepted: {c:?}"))
            .unwrap_or_else(|e| e);
        assert!(err.contains(expected) && !err.starts_with("accepted"), "{section:?}: {err}");
    }
}

// Sparkplug B.

use super::sparkplug::{datatype, Metric, MetricValue, Payload, Sparkplug};
use crate::source::SourceMetrics;
use otwatch_proto::ControllerEvent;
use prost::Message;
use std::sync::atomic::Ordering;

type Got = (String, EventKind, String, Option<f64>, Option<String>, i64);

fn got(events: Vec<ControllerEvent>) -> Vec<Got> {
    events
        .into_iter()
        .map(|e| {
            assert_eq!(e.attrs["group"], "plant-a", "{e:?}");
            (e.asset.clone(), e.kind(), e.name, e.value, e.text, e.ts_ns)
        })
        .collect()
}

const T: u64 = 1_764_000_000_000;
const T_NS: i64 = 1_764_000_000_000_000_000;

fn sample(asset: &str, name: &str, v: f64, ts_ns: i64) -> Got {
    (
        asset.into(),
        EventKind::Sample,
        name.into(),
        Some(v),
        None,
        ts_ns,
    )
}

fn state(asset: &str, text: &str, ts_ns: i64) -> Got {
    (
        asset.into(),
        EventKind::State,
        "sparkplug".into(),
        None,
        Some(text.into()),
        ts_ns,
    )
}

/// An edge node `gw-7` born with `bdSeq` 3 and two metrics, its device
/// `press-1` born with four.
fn born(sp: &mut Sparkplug, m: &SourceMetrics) -> Vec<Got> {
    let mut out = got(sp
        .message(
            "spBv1.0/plant-a/NBIRTH/gw-7",
            &Payload::encoded(
                T,
                Some(0),
                vec![
                    Metric::bd_seq(3),
                    Metric::named(
                        "Node Control/Rebirth",
                        1,
                        datatype::BOOLEAN,
                        MetricValue::BooleanValue(false),
                    ),
                    Metric::named("uptime_s", 2, datatype::UINT32, MetricValue::LongValue(120)),
                ],
            ),
            42,
            m,
        )
        .unwrap());
    out.extend(got(sp
        .message(
            "spBv1.0/plant-a/DBIRTH/gw-7/press-1",
            &Payload::encoded(
                T + 1,
                Some(1),
                vec![
                    Metric::named("temp_c", 10, datatype::FLOAT, MetricValue::FloatValue(21.5)),
                    Metric::named(
                        "running",
                        11,
                        datatype::BOOLEAN,
                        MetricValue::BooleanValue(true),
                    ),
                    Metric::named(
                        "offset",
                        12,
                        datatype::INT16,
                        MetricValue::IntValue(0xFFFF_FFFE),
                    ),
                    Metric::named(
                        "recipe",
                        13,
                        datatype::STRING,
                        MetricValue::StringValue("A-12".into()),
                    ),
                ],
            ),
            42,
            m,
        )
        .unwrap()));
    out
}

#[test]
fn sparkplug_births_announce_aliases_that_data_messages_use() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    assert_eq!(
        born(&mut sp, &m),
        vec![
            state("gw-7", "ONLINE", T_NS),
            sample("gw-7", "uptime_s", 120.0, T_NS),
            state("gw-7/press-1", "ONLINE", T_NS + 1_000_000),
            sample("gw-7/press-1", "temp_c", 21.5, T_NS + 1_000_000),
            sample("gw-7/press-1", "running", 1.0, T_NS + 1_000_000),
            // Int16 -2, two's complement in the uint32 field.
            sample("gw-7/press-1", "offset", -2.0, T_NS + 1_000_000),
            (
                "gw-7/press-1".into(),
                EventKind::Sample,
                "recipe".into(),
                None,
                Some("A-12".into()),
                T_NS + 1_000_000
            ),
        ]
    );
    // DATA by alias: the metric's own time first, then the payload's.
    let mut temp = Metric::aliased(10, MetricValue::FloatValue(22.25));
    temp.timestamp = Some(T + 500);
    let data = Payload::encoded(
        T + 600,
        Some(2),
        vec![
            temp,
            Metric::aliased(11, MetricValue::BooleanValue(false)),
            Metric::aliased(13, MetricValue::StringValue("B-3".into())),
            // Transient and null values are no events.
            Metric {
                is_transient: Some(true),
                ..Metric::aliased(10, MetricValue::FloatValue(1.0))
            },
            Metric {
                is_null: Some(true),
                ..Metric::aliased(12, MetricValue::IntValue(0))
            },
        ],
    );
    assert_eq!(
        got(sp
            .message("spBv1.0/plant-a/DDATA/gw-7/press-1", &data, 42, &m)
            .unwrap()),
        vec![
            sample("gw-7/press-1", "temp_c", 22.25, T_NS + 500_000_000),
            sample("gw-7/press-1", "running", 0.0, T_NS + 600_000_000),
            (
                "gw-7/press-1".into(),
                EventKind::Sample,
                "recipe".into(),
                None,
                Some("B-3".into()),
                T_NS + 600_000_000
            ),
        ]
    );
    // NDATA by name, no timestamp at all: the agent's clock.
    let ndata = Payload {
        seq: Some(3),
        metrics: vec![Metric {
            name: Some("uptime_s".into()),
            value: Some(MetricValue::LongValue(121)),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        got(sp
            .message("spBv1.0/plant-a/NDATA/gw-7", &ndata.encode_to_vec(), 42, &m)
            .unwrap()),
        vec![sample("gw-7", "uptime_s", 121.0, 42)]
    );
    for counter in [
        &m.sparkplug_unknown_aliases,
        &m.sparkplug_seq_gaps,
        &m.sparkplug_stale_deaths,
        &m.sparkplug_unsupported,
        &m.rejected,
    ] {
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn sparkplug_values_of_every_datatype_the_agent_maps() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    use MetricValue::*;
    let metrics = vec![
        Metric::named("i8", 1, datatype::INT8, IntValue(0xFF)),
        Metric::named("i32", 2, datatype::INT32, IntValue((-7i32) as u32)),
        Metric::named("i64", 3, datatype::INT64, LongValue((-9i64) as u64)),
        Metric::named("u8", 4, datatype::UINT8, IntValue(200)),
        Metric::named("u32", 5, datatype::UINT32, LongValue(4_000_000_000)),
        Metric::named("u64", 6, datatype::UINT64, LongValue(1 << 40)),
        Metric::named("f64", 7, datatype::DOUBLE, DoubleValue(0.125)),
        Metric::named("on", 8, datatype::BOOLEAN, BooleanValue(true)),
        Metric::named("note", 9, datatype::TEXT, StringValue("oil low".into())),
        Metric::named("since", 10, datatype::DATETIME, LongValue(T)),
        // A DataSet (16) and a mismatched value are skipped and counted.
        Metric::named("table", 11, 16, BytesValue(vec![1])),
        Metric::named("wrong", 12, datatype::BOOLEAN, StringValue("yes".into())),
        // Neither name nor alias: skipped and counted.
        Metric {
            value: Some(IntValue(1)),
            ..Default::default()
        },
    ];
    let events = sp
        .message(
            "spBv1.0/plant-a/NBIRTH/gw-1",
            &Payload::encoded(T, Some(0), metrics),
            42,
            &m,
        )
        .unwrap();
    let values: Vec<(String, Option<f64>, Option<String>)> = events
        .into_iter()
        .skip(1)
        .map(|e| (e.name, e.value, e.text))
        .collect();
    let n = |name: &str, v: f64| (name.to_string(), Some(v), None);
    assert_eq!(
        values,
        vec![
            n("i8", -1.0),
            n("i32", -7.0),
            n("i64", -9.0),
            n("u8", 200.0),
            n("u32", 4e9),
            n("u64", (1u64 << 40) as f64),
            n("f64", 0.125),
            n("on", 1.0),
            ("note".into(), None, Some("oil low".into())),
            (
                "since".into(),
                None,
                Some("2025-11-24T16:00:00.000Z".into())
            ),
        ]
    );
    assert_eq!(m.sparkplug_unsupported.load(Ordering::Relaxed), 1);
    assert_eq!(m.rejected.load(Ordering::Relaxed), 2);
}

#[test]
fn sparkplug_an_unknown_alias_is_counted_and_skipped() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    born(&mut sp, &m);
    let data = Payload::encoded(
        T + 5,
        Some(2),
        vec![
            Metric::aliased(99, MetricValue::FloatValue(1.0)),
            Metric::aliased(10, MetricValue::FloatValue(23.0)),
        ],
    );
    assert_eq!(
        got(sp
            .message("spBv1.0/plant-a/DDATA/gw-7/press-1", &data, 42, &m)
            .unwrap()),
        vec![sample("gw-7/press-1", "temp_c", 23.0, T_NS + 5_000_000)]
    );
    assert_eq!(m.sparkplug_unknown_aliases.load(Ordering::Relaxed), 1);
    // A device whose birth the agent never saw: every alias is unknown.
    let data = Payload::encoded(
        T + 6,
        Some(3),
        vec![Metric::aliased(10, MetricValue::FloatValue(1.0))],
    );
    assert!(sp
        .message("spBv1.0/plant-a/DDATA/gw-7/press-2", &data, 42, &m)
        .unwrap()
        .is_empty());
    assert_eq!(m.sparkplug_unknown_aliases.load(Ordering::Relaxed), 2);
    assert_eq!(m.sparkplug_seq_gaps.load(Ordering::Relaxed), 0);
}

#[test]
fn sparkplug_seq_gaps_are_counted_and_wrap_at_256() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    born(&mut sp, &m);
    let ndata = |seq| {
        Payload::encoded(
            T,
            Some(seq),
            vec![Metric::aliased(2, MetricValue::LongValue(1))],
        )
    };
    let mut send = |seq| {
        sp.message("spBv1.0/plant-a/NDATA/gw-7", &ndata(seq), 42, &m)
            .unwrap()
    };
    // Births took 0 and 1.
    for seq in 2..=255 {
        send(seq);
    }
    send(0);
    send(1);
    assert_eq!(m.sparkplug_seq_gaps.load(Ordering::Relaxed), 0);
    // 2 and 3 are lost.
    assert_eq!(send(4).len(), 1, "the values after a gap are still taken");
    assert_eq!(m.sparkplug_seq_gaps.load(Ordering::Relaxed), 1);
    send(5);
    assert_eq!(m.sparkplug_seq_gaps.load(Ordering::Relaxed), 1);
    // A new birth starts the count again.
    born(&mut sp, &m);
    assert_eq!(m.sparkplug_seq_gaps.load(Ordering::Relaxed), 1);
}

#[test]
fn sparkplug_deaths_and_a_stale_bd_seq() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    born(&mut sp, &m);
    // A will of an earlier session (bdSeq 2) arrives late: ignored.
    let death = |bd| {
        Payload {
            metrics: vec![Metric::bd_seq(bd)],
            ..Default::default()
        }
        .encode_to_vec()
    };
    assert!(sp
        .message("spBv1.0/plant-a/NDEATH/gw-7", &death(2), 42, &m)
        .unwrap()
        .is_empty());
    assert_eq!(m.sparkplug_stale_deaths.load(Ordering::Relaxed), 1);
    // The device dies alone, then the node with the current bdSeq: the
    // node goes offline (its device said so already).
    assert_eq!(
        got(sp
            .message(
                "spBv1.0/plant-a/DDEATH/gw-7/press-1",
                &Payload::encoded(T + 9, Some(2), vec![]),
                42,
                &m
            )
            .unwrap()),
        vec![state("gw-7/press-1", "OFFLINE", T_NS + 9_000_000)]
    );
    born(&mut sp, &m);
    assert_eq!(
        got(sp
            .message("spBv1.0/plant-a/NDEATH/gw-7", &death(3), 42, &m)
            .unwrap()),
        vec![
            state("gw-7/press-1", "OFFLINE", 42),
            state("gw-7", "OFFLINE", 42)
        ]
    );
    // Delivered twice: nothing new. Its aliases are gone with it.
    assert!(sp
        .message("spBv1.0/plant-a/NDEATH/gw-7", &death(3), 42, &m)
        .unwrap()
        .is_empty());
    assert!(sp
        .message(
            "spBv1.0/plant-a/NDATA/gw-7",
            &Payload::encoded(
                T,
                Some(7),
                vec![Metric::aliased(2, MetricValue::LongValue(1))]
            ),
            42,
            &m
        )
        .unwrap()
        .is_empty());
    assert_eq!(m.sparkplug_unknown_aliases.load(Ordering::Relaxed), 1);
    assert_eq!(m.sparkplug_stale_deaths.load(Ordering::Relaxed), 1);
    // A node never seen born: its death is taken.
    assert_eq!(
        got(sp
            .message("spBv1.0/plant-a/NDEATH/gw-9", &death(0), 42, &m)
            .unwrap()),
        vec![state("gw-9", "OFFLINE", 42)]
    );
}

#[test]
fn sparkplug_bad_topics_and_payloads_are_refused_with_the_reason() {
    let (mut sp, m) = (Sparkplug::default(), SourceMetrics::default());
    for (topic, payload, why) in [
        (
            "spBv1.0/plant-a/NDATA/gw-7",
            &b"\xff\xff\xff"[..],
            "payload is not Sparkplug B protobuf",
        ),
        ("spBv1.0/plant-a/NDATA", &b""[..], "not spBv1.0/<group_id>"),
        (
            "spBv1.0/plant-a/DDATA/gw-7",
            &b""[..],
            "DDATA needs a device id",
        ),
        (
            "spBv1.0/plant-a/NDATA/gw-7/d",
            &b""[..],
            "NDATA takes no device id",
        ),
        (
            "spBv1.0/plant-a/XDATA/gw-7",
            &b""[..],
            "\"XDATA\" is not a Sparkplug message type",
        ),
    ] {
        let err = sp.message(topic, payload, 42, &m).unwrap_err();
        assert!(err.contains(why), "{topic}: {err}");
    }
    // Commands and host states are no events (and never sent by the agent).
    for topic in [
        "spBv1.0/plant-a/NCMD/gw-7",
        "spBv1.0/plant-a/DCMD/gw-7/press-1",
        "spBv1.0/STATE/scada-1",
    ] {
        assert_eq!(sp.message(topic, b"{\"online\": true}", 42, &m), Ok(vec![]));
    }
}

/// Ways to send on MQTT: the source must name none of them.
const MQTT_WRITE_PATHS: &[&str] = &[
    "publish(",
    "publish_bytes",
    "try_publish",
    "LastWill",
    "set_last_will",
];

#[test]
fn the_mqtt_source_never_publishes() {
    for (file, line, code) in crate::source::code_lines("src/source/mqtt") {
        for forbidden in MQTT_WRITE_PATHS {
            assert!(
                !code.contains(forbidden),
                "{file}:{line} names {forbidden:?}, a way to publish: {code}"
            );
        }
    }
}

#[test]
fn sparkplug_subscriptions_are_checked() {
    let base = "broker = \"127.0.0.1:1883\"\nclient_id = \"gw-1\"\n[[sources.subscriptions]]\n";
    let c = mqtt_config(&format!(
        "{base}format = \"sparkplug_b\"\ngroup = \"plant-a\"\n"
    ))
    .unwrap();
    assert_eq!(c.subscriptions[0].filter(), "spBv1.0/plant-a/#");
    let c = mqtt_config(&format!("{base}format = \"sparkplug_b\"\ngroup = \"+\"\n")).unwrap();
    assert_eq!(c.subscriptions[0].filter(), "spBv1.0/+/#");
    for (section, expected) in [
        ("format = \"sparkplug_b\"\n", "group is required"),
        (
            "format = \"sparkplug_b\"\ngroup = \"a/b\"\n",
            "group = \"a/b\" is not a Sparkplug group id",
        ),
        (
            "format = \"sparkplug_b\"\ngroup = \"a+\"\n",
            "is not a Sparkplug group id",
        ),
        (
            "format = \"sparkplug_b\"\ngroup = \"a\"\ntopic = \"x/#\"\n",
            "topic is for format = \"json\"",
        ),
        (
            "format = \"sparkplug_b\"\ngroup = \"a\"\nsamples = { \"/t\" = \"t\" }\n",
            "samples is for format",
        ),
        (
            "format = \"protobuf\"\ngroup = \"a\"\n",
            "unknown variant `protobuf`",
        ),
        (
            "topic = \"a/+\"\nasset = \"{1}\"\ngroup = \"a\"\n",
            "group = \"a\" is for format = \"sparkplug_b\" only",
        ),
        ("asset = \"x\"\n", "topic is required"),
        ("topic = \"a/+\"\n", "asset is required"),
    ] {
        let err = mqtt_config(&format!("{base}{section}"))
            .map(|c| format!("accepted: {c:?}"))
            .unwrap_or_else(|e| e);
        assert!(
            err.contains(expected) && !err.starts_with("accepted"),
            "{section:?}: {err}"
        );
    }
}

#[test]
fn sparkplug_counters_are_on_the_agent_metrics() {
    let counts = crate::AgentCounts {
        sparkplug_unknown_aliases: 4,
        sparkplug_seq_gaps: 3,
        sparkplug_stale_deaths: 2,
        sparkplug_unsupported_metrics: 1,
        ..crate::AgentCounts::default()
    };
    let text = crate::metrics::render(&counts, "plant-a", "gw-1");
    for line in [
        "otwatch_agent_sparkplug_unknown_aliases_total{site=\"plant-a\",agent=\"gw-1\"} 4",
        "otwatch_agent_sparkplug_seq_gaps_total{site=\"plant-a\",agent=\"gw-1\"} 3",
        "otwatch_agent_sparkplug_stale_deaths_total{site=\"plant-a\",agent=\"gw-1\"} 2",
        "otwatch_agent_sparkplug_unsupported_metrics_total{site=\"plant-a\",agent=\"gw-1\"} 1",
    ] {
        assert!(text.contains(line), "{text}");
    }
}
