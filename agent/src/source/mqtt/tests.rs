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
