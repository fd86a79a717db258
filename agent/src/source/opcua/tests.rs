//! The `opcua` source without a server: configuration checks, the turning
//! of values and events into events, the monitored-item requests, and the
//! scan for any service that could change a server.

use super::config::OpcuaServerConfig;
use super::values::{create_requests, order_by_cycles, CycleWatch, Monitor, Refused};
use crate::config::{AgentConfig, SourceConfig};
use opcua::types::{
    DataChangeFilter, DataValue, DateTime, EventFilter, LocalizedText, StatusCode, Variant,
};
use otwatch_proto::EventKind;

const GOOD: &str = r#"
[[sources.servers]]
name = "press"
asset = "line1/press"
endpoint = "opc.tcp://10.0.0.9:4840"
items = [
  { name = "temp", node = "ns=2;s=Press.Temp", deadband = 0.5, unit = "C" },
  { name = "on", node = "ns=2;i=7" },
  { name = "mode", node = "ns=2;s=Mode", report = "state", states = { "1" = "RUN", "2" = "STOP" } },
  { name = "count", node = "ns=2;s=Count", report = "sample", sampling_interval = "250ms" },
]
events = [{ node = "i=2253", min_severity = 300 }]
"#;

fn load(servers: &str) -> Result<AgentConfig, String> {
    let text = format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n\
         [collector]\nurl = \"http://127.0.0.1:4317\"\n\
         [[sources]]\ntype = \"opcua\"\n{servers}"
    );
    AgentConfig::parse(&text, "agent.toml").map_err(|e| e.to_string())
}

fn server(servers: &str) -> OpcuaServerConfig {
    let config = load(servers).unwrap();
    match &config.sources[0] {
        SourceConfig::Opcua(o) => o.servers[0].clone(),
        other => panic!("{other:?}"),
    }
}

#[track_caller]
fn refused(servers: String, expected: &str) {
    let err = load(&servers).unwrap_err();
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

#[test]
fn a_good_configuration_loads_with_its_defaults() {
    let s = server(GOOD);
    assert_eq!(s.host_port().unwrap(), ("10.0.0.9".to_string(), 4840));
    assert_eq!(s.sampling_interval, std::time::Duration::from_secs(1));
    assert_eq!(s.queue_size, 10);
    assert_eq!(s.items.len(), 4);
    let v6 = server(&GOOD.replace("10.0.0.9:4840", "[fe80::1]:4841/ua"));
    assert_eq!(v6.host_port().unwrap(), ("fe80::1".to_string(), 4841));
    let no_port = server(&GOOD.replace("10.0.0.9:4840", "plc.local"));
    assert_eq!(
        no_port.host_port().unwrap(),
        ("plc.local".to_string(), 4840)
    );
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let good = GOOD.to_string();
    refused(
        good.replace("asset = ", "colour = \"red\"\nasset = "),
        "unknown field `colour`",
    );
    refused(
        good.replace("unit = \"C\"", "unit = \"C\", scale = 2"),
        "unknown field `scale`",
    );
    refused(
        good.replace("opc.tcp://10.0.0.9:4840", "http://10.0.0.9"),
        "does not start with opc.tcp://",
    );
    refused(
        good.replace("endpoint", "sampling_interval = \"50ms\"\nendpoint"),
        "opcua server \"press\": sampling_interval = 50ms is below the floor of 100ms",
    );
    refused(
        good.replace("endpoint", "publishing_interval = \"10ms\"\nendpoint"),
        "publishing_interval = 10ms is below the floor",
    );
    refused(
        good.replace(
            "sampling_interval = \"250ms\"",
            "sampling_interval = \"20ms\"",
        ),
        "items[3] (\"count\"): sampling_interval = 20ms is below the floor",
    );
    refused(
        good.replace("ns=2;i=7", "ns=two;i=7"),
        "items[1] (\"on\"): node \"ns=two;i=7\" is not a node id",
    );
    refused(
        good.replace("deadband = 0.5", "deadband = -1.0"),
        "deadband = -1 must be a number, 0 or more",
    );
    refused(
        good.replace("\"1\" = \"RUN\"", "\"one\" = \"RUN\""),
        "states key \"one\" is not a whole number",
    );
    refused(
        good.replace("endpoint", "security_policy = \"basic256sha256\"\nendpoint"),
        "security_policy = Basic256sha256 needs certificate",
    );
    refused(
        good.replace("endpoint", "security_policy = \"basic128\"\nendpoint"),
        "unknown variant `basic128`",
    );
    refused(
        good.replace("endpoint", "certificate = \"/a.der\"\nendpoint"),
        "certificate is set but security_policy is \"none\"",
    );
    refused(
        good.replace("endpoint", "username = \"u\"\nendpoint"),
        "username and a password (password_file or password_env) go together",
    );
    refused(
        good.replace("endpoint", "password = \"secret\"\nendpoint"),
        "unknown field `password`",
    );
    refused(
        good.replace("endpoint", "user_certificate = \"/u.der\"\nendpoint"),
        "user_certificate and user_private_key go together",
    );
    refused(
        good.replace("min_severity = 300", "min_severity = 0"),
        "events[0]: min_severity = 0 must be 1 to 1000",
    );
    refused(format!("{good}{good}"), "two servers are named \"press\"");
    refused(
        "[[sources.servers]]\nname = \"p\"\nasset = \"a\"\nendpoint = \"opc.tcp://h:1\"\n"
            .to_string(),
        "no items, no events and no cycle",
    );
}

#[test]
fn requests_carry_sampling_deadband_and_event_fields() {
    let s = server(GOOD);
    let requests = create_requests(&s);
    assert_eq!(requests.len(), 5);
    let handles: Vec<u32> = requests
        .iter()
        .map(|r| r.requested_parameters.client_handle)
        .collect();
    assert_eq!(handles, [1, 2, 3, 4, 5]);
    let temp = &requests[0].requested_parameters;
    assert_eq!(temp.sampling_interval, 1000.0);
    let filter: Box<DataChangeFilter> = temp.filter.clone().into_inner_as().unwrap();
    assert_eq!((filter.deadband_type, filter.deadband_value), (1, 0.5));
    let on: Box<DataChangeFilter> = requests[1]
        .requested_parameters
        .filter
        .clone()
        .into_inner_as()
        .unwrap();
    assert_eq!(on.deadband_type, 0);
    assert_eq!(requests[3].requested_parameters.sampling_interval, 250.0);
    let events: Box<EventFilter> = requests[4]
        .requested_parameters
        .filter
        .clone()
        .into_inner_as()
        .unwrap();
    assert_eq!(events.select_clauses.unwrap().len(), 7);
    assert_eq!(requests[4].item_to_monitor.attribute_id, 12);
}

fn value(v: Variant) -> DataValue {
    DataValue {
        value: Some(v),
        status: Some(StatusCode::Good),
        source_timestamp: Some(DateTime::now()),
        ..Default::default()
    }
}

#[test]
fn values_become_samples_and_states() {
    let s = server(GOOD);
    let mut monitors = Monitor::of(&s);
    let mut event = |i: usize, v: DataValue| match &mut monitors[i] {
        Monitor::Value(item) => item.event("line1/press", &v, 7),
        other => unreachable!("{other:?}"),
    };
    let temp = event(0, value(Variant::Float(21.5))).unwrap().unwrap();
    assert_eq!(temp.kind(), EventKind::Sample);
    assert_eq!((temp.value, temp.attrs["unit"].as_str()), (Some(21.5), "C"));
    assert_eq!(temp.attrs["node"], "ns=2;s=Press.Temp");
    // The controller's clock as ts.
    assert!(temp.ts_ns > 1_600_000_000_000_000_000, "{}", temp.ts_ns);
    let on = event(1, value(Variant::Boolean(true))).unwrap().unwrap();
    assert_eq!(on.kind(), EventKind::State);
    assert_eq!((on.text.as_deref(), on.value), (Some("ON"), Some(1.0)));
    // A state is reported when it changes only.
    assert_eq!(event(1, value(Variant::Boolean(true))), Ok(None));
    assert!(event(1, value(Variant::Boolean(false))).unwrap().is_some());
    let mode = event(2, value(Variant::Int32(2))).unwrap().unwrap();
    assert_eq!(mode.text.as_deref(), Some("STOP"));
    let odd = event(2, value(Variant::Int32(9))).unwrap().unwrap();
    assert_eq!(odd.text.as_deref(), Some("UNKNOWN(9)"));
    // A text on an item without report: a state; a number with no time: now.
    let text = event(
        1,
        DataValue::new_now(Variant::LocalizedText(Box::new(LocalizedText::new(
            "en", "MAINT",
        )))),
    )
    .unwrap()
    .unwrap();
    assert_eq!(text.text.as_deref(), Some("MAINT"));
    let mut no_time = value(Variant::UInt64(5));
    no_time.source_timestamp = None;
    no_time.status = Some(StatusCode::UncertainLastUsableValue);
    let count = event(3, no_time).unwrap().unwrap();
    assert_eq!((count.ts_ns, count.value), (7, Some(5.0)));
    assert_eq!(count.attrs["quality"], "uncertain");
    // A text on a sample item is refused; a bad status is unavailability.
    assert!(matches!(
        event(3, value(Variant::String("x".into()))),
        Err(Refused::Unsupported(_))
    ));
    let mut gone = value(Variant::Empty);
    gone.status = Some(StatusCode::BadNodeIdUnknown);
    assert_eq!(
        event(0, gone),
        Err(Refused::Unavailable("BadNodeIdUnknown".into()))
    );
    // A server with no value yet has nothing to say, and says no failure.
    let mut waiting = value(Variant::Empty);
    waiting.status = Some(StatusCode::BadWaitingForInitialData);
    assert_eq!(event(0, waiting), Ok(None));
}

#[test]
fn a_sample_sent_again_by_a_new_subscription_is_reported_once() {
    let s = server(GOOD);
    let mut monitors = Monitor::of(&s);
    let Monitor::Value(temp) = &mut monitors[0] else {
        panic!("items come first");
    };
    let written = at(1_000, Variant::Float(21.5));
    assert!(temp.event("a", &written, 7).unwrap().is_some());
    // The same write, as the current value of a re-created subscription.
    assert_eq!(temp.event("a", &written, 7), Ok(None));
    // The same value written again later is a new sample.
    let again = at(2_000, Variant::Float(21.5));
    let e = temp.event("a", &again, 7).unwrap().unwrap();
    assert_eq!((e.ts_ns, e.value), (ns(2_000), Some(21.5)));
}

#[test]
fn events_become_alarms_above_their_severity() {
    let s = server(GOOD);
    let monitors = Monitor::of(&s);
    let Monitor::Events(source) = &monitors[4] else {
        panic!()
    };
    let fields = |severity: u16, active: Variant| {
        vec![
            Variant::DateTime(Box::new(DateTime::now())),
            Variant::UInt16(severity),
            Variant::LocalizedText(Box::new(LocalizedText::new("en", "oil pressure low"))),
            Variant::String("press".into()),
            Variant::NodeId(Box::new(opcua::types::NodeId::new(0, 2915u32))),
            Variant::String("OilPressure".into()),
            active,
        ]
    };
    let alarm = source
        .event("line1/press", &fields(700, Variant::Boolean(true)), 7)
        .unwrap();
    assert_eq!(alarm.kind(), EventKind::Alarm);
    assert_eq!(alarm.name, "OilPressure");
    assert_eq!(alarm.text.as_deref(), Some("oil pressure low"));
    assert_eq!(alarm.value, Some(700.0));
    assert_eq!(alarm.attrs["source"], "press");
    assert_eq!(alarm.attrs["event_type"], "i=2915");
    // Below min_severity, or an alarm that cleared: left out.
    assert!(source
        .event("line1/press", &fields(200, Variant::Empty), 7)
        .is_none());
    assert!(source
        .event("line1/press", &fields(700, Variant::Boolean(false)), 7)
        .is_none());
    // A plain event (no condition name): named by its source.
    let mut plain = fields(300, Variant::Empty);
    plain[5] = Variant::Empty;
    assert_eq!(source.event("a", &plain, 7).unwrap().name, "press");
}

/// Names that would reach an OPC UA service changing the server or
/// running code on it, in async-opcua's session or its raw requests.
const OPCUA_WRITE_PATHS: [&str; 14] = [
    "write",
    ".call(",
    "call_one",
    "Write",
    "Call",
    "add_nodes",
    "delete_nodes",
    "add_references",
    "delete_references",
    "AddNodes",
    "DeleteNodes",
    "history_update",
    "HistoryUpdate",
    "services::",
];

#[test]
fn no_service_that_changes_a_server_is_named_in_the_opcua_source() {
    for (file, line, code) in crate::source::code_lines("src/source/opcua") {
        for forbidden in OPCUA_WRITE_PATHS {
            // `std::fs::write` keeps the agent's own copy of the trust list.
            let code = code.replace("std::fs::write", "");
            assert!(
                !code.contains(forbidden),
                "{file}:{line} names {forbidden:?}, a way to change a server: {code}"
            );
        }
    }
}

const CYCLE: &str = "cycle = { counter = \"ns=2;s=Press.Cycles\", duration = \"ns=2;s=Press.CycleTime\", unit = \"s\" }\n";

fn with_cycle(cycle: &str) -> OpcuaServerConfig {
    server(&GOOD.replace("events = ", &format!("{cycle}events = ")))
}

/// A value of a cycle variable written at `ms` (source time, ms).
fn at(ms: i64, v: Variant) -> DataValue {
    DataValue {
        value: Some(v),
        status: Some(StatusCode::Good),
        source_timestamp: Some(DateTime::from(
            opcua::types::DateTimeUtc::from_timestamp_millis(1_780_000_000_000 + ms).unwrap(),
        )),
        ..Default::default()
    }
}

fn ns(ms: i64) -> i64 {
    (1_780_000_000_000 + ms) * 1_000_000
}

#[test]
fn the_cycle_variables_are_monitored_first() {
    let s = with_cycle(CYCLE);
    let monitors = Monitor::of(&s);
    assert!(matches!(monitors[0], Monitor::CycleCounter));
    assert!(matches!(monitors[1], Monitor::CycleDuration));
    assert!(matches!(monitors[2], Monitor::Value(_)));
    assert!(matches!(monitors[6], Monitor::Events(_)));
    let requests = create_requests(&s);
    assert_eq!(requests.len(), 7);
    let trigger = |i: usize| {
        let f: Box<DataChangeFilter> = requests[i]
            .requested_parameters
            .filter
            .clone()
            .into_inner_as()
            .unwrap();
        f.trigger
    };
    // The counter's changes; the duration at every write, so that an
    // equal duration still comes.
    assert_eq!(trigger(0), opcua::types::DataChangeTrigger::StatusValue);
    assert_eq!(
        trigger(1),
        opcua::types::DataChangeTrigger::StatusValueTimestamp
    );
    assert_eq!(requests[1].requested_parameters.client_handle, 2);
    // An item may ask for every write too.
    let stamped = server(&GOOD.replace(
        "unit = \"C\" }",
        "unit = \"C\", trigger = \"status_value_timestamp\" }",
    ));
    let f: Box<DataChangeFilter> = create_requests(&stamped)[0]
        .requested_parameters
        .filter
        .clone()
        .into_inner_as()
        .unwrap();
    assert_eq!(
        f.trigger,
        opcua::types::DataChangeTrigger::StatusValueTimestamp
    );
    // A server may have a cycle and nothing else.
    let alone = server(
        "[[sources.servers]]\nname = \"p\"\nasset = \"a\"\nendpoint = \"opc.tcp://h:1\"\ncycle = { counter = \"ns=2;i=1\" }\n",
    );
    assert_eq!(create_requests(&alone).len(), 1);
}

#[test]
fn bad_cycle_options_are_refused_naming_the_key() {
    let good = GOOD.replace("events = ", &format!("{CYCLE}events = "));
    refused(
        good.replace("ns=2;s=Press.Cycles", "Press.Cycles"),
        "cycle.counter \"Press.Cycles\" is not a node id",
    );
    refused(
        good.replace("ns=2;s=Press.CycleTime", "time"),
        "cycle.duration \"time\" is not a node id",
    );
    refused(
        good.replace("unit = \"s\"", "unit = \"min\""),
        "unknown variant `min`",
    );
    refused(
        good.replace("unit = \"s\"", "unit = \"s\", done = \"ns=2;i=3\""),
        "unknown field `done`",
    );
    refused(
        good.replace("unit = \"s\"", "unit = \"s\", name = \" \""),
        "cycle.name is empty",
    );
    refused(
        good.replace("unit = \"C\" }", "unit = \"C\", trigger = \"always\" }"),
        "unknown variant `always`",
    );
}

/// (ts, duration in ms) of each CYCLE.
fn cycles(out: &[otwatch_proto::ControllerEvent]) -> Vec<(i64, f64)> {
    out.iter()
        .map(|e| {
            assert_eq!((e.kind(), e.name.as_str()), (EventKind::Cycle, "cycle"));
            (e.ts_ns, e.value.unwrap())
        })
        .collect()
}

#[test]
fn a_counter_change_takes_the_duration_written_with_it_in_either_order_or_is_measured() {
    let s = with_cycle(CYCLE);
    let mut watch = CycleWatch::new(s.cycle.as_ref().unwrap(), 10);
    let mut out = Vec::new();
    // No value yet: nothing.
    let waiting = DataValue {
        status: Some(StatusCode::BadWaitingForInitialData),
        ..at(0, Variant::Empty)
    };
    watch.counter("a", &waiting, 1, &mut out).unwrap();
    watch.duration("a", &waiting, 1, &mut out).unwrap();
    // The first values of a session: the cycle the server shows, with its
    // duration, and where the count stands.
    watch
        .counter("a", &at(0, Variant::UInt32(7)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    watch
        .duration("a", &at(0, Variant::Double(9.5)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(0), 9_500.0)]);
    out.clear();
    // Duration first, in the same notification: the counter finds it.
    watch
        .duration("a", &at(10_000, Variant::Double(10.0)), 1, &mut out)
        .unwrap();
    watch
        .counter("a", &at(10_000, Variant::UInt32(8)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(10_000), 10_000.0)]);
    out.clear();
    // Counter first: it waits for its duration, here in a later response,
    // and does not take the previous cycle's.
    watch
        .counter("a", &at(21_000, Variant::UInt32(9)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    watch
        .duration("a", &at(21_000, Variant::Double(11.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(21_000), 11_000.0)]);
    out.clear();
    // A duration older than the counter change is not its duration.
    watch
        .counter("a", &at(32_000, Variant::UInt32(10)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(31_000, Variant::Double(99.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    // The next counter change waits too (its duration may come first);
    // the next duration is a later one: the first change is measured
    // between the counter changes, the second takes its own.
    watch
        .counter("a", &at(44_000, Variant::UInt32(11)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    watch
        .duration("a", &at(44_000, Variant::Double(12.0)), 1, &mut out)
        .unwrap();
    assert_eq!(
        cycles(&out),
        [(ns(32_000), 11_000.0), (ns(44_000), 12_000.0)]
    );
    out.clear();
    // The duration written with a change never comes, a later one does:
    // the change is measured, the later one finds its own duration.
    watch
        .counter("a", &at(56_000, Variant::UInt32(12)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(69_000, Variant::Double(13.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(56_000), 12_000.0)]);
    out.clear();
    watch
        .counter("a", &at(69_000, Variant::UInt32(13)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(69_000), 13_000.0)]);
    out.clear();
    // A reset (the counter goes back) ends no cycle.
    watch
        .counter("a", &at(80_000, Variant::UInt32(0)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(80_000, Variant::Double(6.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    // A new session: the cycle the server shows, as it was not reported,
    // and the count stands where it is.
    watch.connected("a", &mut out);
    watch
        .counter("a", &at(90_000, Variant::UInt32(3)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(90_000, Variant::Double(7.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(90_000), 7_000.0)]);
    out.clear();
    // A session whose counter was read before a cycle ended and whose
    // duration after: the cycle the duration ends is shown, once.
    watch.connected("a", &mut out);
    watch
        .counter("a", &at(91_000, Variant::UInt32(5)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(92_000, Variant::Double(1.0)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(92_000), 1_000.0)]);
    out.clear();
    watch
        .counter("a", &at(92_000, Variant::UInt32(6)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    watch
        .duration("a", &at(93_000, Variant::Double(1.0)), 1, &mut out)
        .unwrap();
    watch
        .counter("a", &at(93_000, Variant::UInt32(7)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), [(ns(93_000), 1_000.0)]);
    out.clear();
    // A reconnection that finds the same cycle reports it once.
    watch.connected("a", &mut out);
    watch
        .duration("a", &at(93_000, Variant::Double(1.0)), 1, &mut out)
        .unwrap();
    watch
        .counter("a", &at(93_000, Variant::UInt32(7)), 1, &mut out)
        .unwrap();
    assert_eq!(cycles(&out), []);
    // Bad values are refused, naming why.
    let bad = DataValue {
        status: Some(StatusCode::BadNodeIdUnknown),
        ..at(95_000, Variant::UInt32(4))
    };
    assert!(matches!(
        watch.counter("a", &bad, 1, &mut out),
        Err(Refused::Unavailable(_))
    ));
    assert!(matches!(
        watch.duration("a", &at(95_000, Variant::from("x")), 1, &mut out),
        Err(Refused::Unsupported(r)) if r.contains("duration must be a number")
    ));
}

#[test]
fn without_a_duration_a_cycle_lasts_from_one_counter_change_to_the_next() {
    let s = with_cycle("cycle = { counter = \"ns=2;s=Press.Cycles\", name = \"stroke\" }\n");
    let mut watch = CycleWatch::new(s.cycle.as_ref().unwrap(), 10);
    let mut out = Vec::new();
    for (ms, count) in [(0, 1u16), (8_000, 2), (20_000, 4)] {
        watch
            .counter("a", &at(ms, Variant::UInt16(count)), 1, &mut out)
            .unwrap();
    }
    let got: Vec<(i64, f64, &str)> = out
        .iter()
        .map(|e| (e.ts_ns, e.value.unwrap(), e.name.as_str()))
        .collect();
    // The first change has no start; two cycles ended in the last 12 s.
    assert_eq!(
        got,
        [
            (ns(20_000), 6_000.0, "stroke"),
            (ns(20_000), 6_000.0, "stroke")
        ]
    );
}

#[test]
fn a_cycle_goes_before_the_samples_read_at_its_end() {
    let s = with_cycle(CYCLE);
    let mut monitors = Monitor::of(&s);
    let mut watch = CycleWatch::new(s.cycle.as_ref().unwrap(), 10);
    let mut sample = |ms: i64, v: f32| {
        let Monitor::Value(temp) = &mut monitors[2] else {
            panic!("the items follow the cycle");
        };
        temp.event("a", &at(ms, Variant::Float(v)), 1)
            .unwrap()
            .unwrap()
    };
    let what = |events: &[otwatch_proto::ControllerEvent]| -> Vec<(i64, EventKind)> {
        events.iter().map(|e| (e.ts_ns, e.kind())).collect()
    };
    let mut held = Vec::new();
    let mut out = Vec::new();
    watch
        .counter("a", &at(0, Variant::UInt32(1)), 1, &mut out)
        .unwrap();
    watch
        .duration("a", &at(0, Variant::Double(9.0)), 1, &mut out)
        .unwrap();
    assert_eq!(what(&out), [(ns(0), EventKind::Cycle)]);
    // One notification, the samples' items first: the CYCLE goes first.
    let mut out = vec![sample(10_000, 20.0)];
    watch
        .duration("a", &at(10_000, Variant::Double(10.0)), 1, &mut out)
        .unwrap();
    watch
        .counter("a", &at(10_000, Variant::UInt32(2)), 1, &mut out)
        .unwrap();
    order_by_cycles(&mut out, &mut held, watch.waiting_since());
    assert_eq!(
        what(&out),
        [
            (ns(10_000), EventKind::Cycle),
            (ns(10_000), EventKind::Sample)
        ]
    );
    // The counter without its duration: its samples wait for it, earlier
    // ones do not.
    let mut out = vec![sample(15_000, 21.0), sample(20_000, 22.0)];
    watch
        .counter("a", &at(20_000, Variant::UInt32(3)), 1, &mut out)
        .unwrap();
    order_by_cycles(&mut out, &mut held, watch.waiting_since());
    assert_eq!(what(&out), [(ns(15_000), EventKind::Sample)]);
    assert_eq!(what(&held), [(ns(20_000), EventKind::Sample)]);
    // The duration comes in the next response: the CYCLE, then its sample.
    let mut out = Vec::new();
    watch
        .duration("a", &at(20_000, Variant::Double(10.0)), 1, &mut out)
        .unwrap();
    order_by_cycles(&mut out, &mut held, watch.waiting_since());
    assert_eq!(
        what(&out),
        [
            (ns(20_000), EventKind::Cycle),
            (ns(20_000), EventKind::Sample)
        ]
    );
    assert!(held.is_empty());
}

/// What a publication carrying several cycles brings, in the order the
/// server lists its items: each sample's cycle is reported, with its own
/// duration, before the samples of its time.
#[test]
fn a_publication_with_several_cycles_reports_each_with_its_own_duration() {
    let s = with_cycle(CYCLE);
    let mut monitors = Monitor::of(&s);
    let mut watch = CycleWatch::new(s.cycle.as_ref().unwrap(), 10);
    let mut held = Vec::new();
    // One publication: the notifications of `values` (ms, what, value) in
    // this order, then the batch's events in the order they are queued.
    let mut publish = |watch: &mut CycleWatch,
                       held: &mut Vec<otwatch_proto::ControllerEvent>,
                       values: &[(i64, &str, f64)]| {
        let mut out = Vec::new();
        for &(ms, what, v) in values {
            match what {
                "counter" => watch
                    .counter("a", &at(ms, Variant::UInt32(v as u32)), 1, &mut out)
                    .unwrap(),
                "duration" => watch
                    .duration("a", &at(ms, Variant::Double(v)), 1, &mut out)
                    .unwrap(),
                _ => {
                    let Monitor::Value(temp) = &mut monitors[2] else {
                        panic!("the items follow the cycle");
                    };
                    out.extend(
                        temp.event("a", &at(ms, Variant::Float(v as f32)), 1)
                            .unwrap(),
                    );
                }
            }
        }
        order_by_cycles(&mut out, held, watch.waiting_since());
        out.iter()
            .map(|e| (e.ts_ns, e.kind(), e.value.unwrap()))
            .collect::<Vec<_>>()
    };
    let (cycle, sample) = (EventKind::Cycle, EventKind::Sample);
    // The first publication of a session comes late and carries the first
    // two cycles: each item's values in order, the durations listed first.
    let got = publish(
        &mut watch,
        &mut held,
        &[
            (10_000, "duration", 10.0),
            (21_000, "duration", 11.0),
            (10_000, "sample", 20.0),
            (21_000, "sample", 21.0),
            (10_000, "counter", 1.0),
            (21_000, "counter", 2.0),
        ],
    );
    assert_eq!(
        got,
        [
            (ns(10_000), cycle, 10_000.0),
            (ns(10_000), sample, 20.0),
            (ns(21_000), cycle, 11_000.0),
            (ns(21_000), sample, 21.0),
        ]
    );
    // Later, two cycles again, the durations first: the second cycle of
    // the publication is not taken for the first's.
    let got = publish(
        &mut watch,
        &mut held,
        &[
            (33_000, "duration", 12.0),
            (46_000, "duration", 13.0),
            (33_000, "counter", 3.0),
            (46_000, "counter", 4.0),
            (33_000, "sample", 22.0),
            (46_000, "sample", 23.0),
        ],
    );
    assert_eq!(
        got,
        [
            (ns(33_000), cycle, 12_000.0),
            (ns(33_000), sample, 22.0),
            (ns(46_000), cycle, 13_000.0),
            (ns(46_000), sample, 23.0),
        ]
    );
    // The counters first: both changes wait for their durations, and their
    // samples with them, across publications.
    let got = publish(
        &mut watch,
        &mut held,
        &[
            (60_000, "counter", 5.0),
            (75_000, "counter", 6.0),
            (60_000, "sample", 24.0),
            (75_000, "sample", 25.0),
        ],
    );
    assert_eq!(got, []);
    let got = publish(
        &mut watch,
        &mut held,
        &[(60_000, "duration", 14.0), (75_000, "duration", 15.0)],
    );
    assert_eq!(
        got,
        [
            (ns(60_000), cycle, 14_000.0),
            (ns(60_000), sample, 24.0),
            (ns(75_000), cycle, 15_000.0),
            (ns(75_000), sample, 25.0),
        ]
    );
    assert!(held.is_empty());
    // The connection is lost while a change waits for its duration: the
    // change is measured, and goes before its sample in the next batch.
    let got = publish(
        &mut watch,
        &mut held,
        &[(80_000, "counter", 7.0), (80_000, "sample", 25.5)],
    );
    assert_eq!(got, []);
    watch.connected("a", &mut held);
    // The new session's first publication brings the cycle the server
    // shows (not reported yet) and the next one.
    let got = publish(
        &mut watch,
        &mut held,
        &[
            (90_000, "duration", 9.0),
            (99_000, "duration", 9.0),
            (90_000, "counter", 8.0),
            (99_000, "counter", 9.0),
            (90_000, "sample", 26.0),
            (99_000, "sample", 27.0),
        ],
    );
    assert_eq!(
        got,
        [
            (ns(80_000), cycle, 5_000.0),
            (ns(80_000), sample, 25.5),
            (ns(90_000), cycle, 9_000.0),
            (ns(90_000), sample, 26.0),
            (ns(99_000), cycle, 9_000.0),
            (ns(99_000), sample, 27.0),
        ]
    );
}

#[test]
fn a_counter_change_waits_for_its_duration_within_bounds() {
    let s = with_cycle(CYCLE);
    let config = s.cycle.as_ref().unwrap();
    let counter = |watch: &mut CycleWatch, ms: i64, n: u32, out: &mut Vec<_>| {
        watch
            .counter("a", &at(ms, Variant::UInt32(n)), 1, out)
            .unwrap()
    };
    let duration = |watch: &mut CycleWatch, ms: i64, s: f64, out: &mut Vec<_>| {
        watch
            .duration("a", &at(ms, Variant::Double(s)), 1, out)
            .unwrap()
    };
    // A server that keeps one value per item sends one counter change per
    // publication: the next change measures the one still waiting.
    let mut watch = CycleWatch::new(config, 1);
    let mut out = Vec::new();
    for (ms, n) in [(0, 1), (4_000, 2)] {
        counter(&mut watch, ms, n, &mut out);
        duration(&mut watch, ms, 4.0, &mut out);
    }
    out.clear();
    counter(&mut watch, 10_000, 3, &mut out);
    counter(&mut watch, 22_000, 4, &mut out);
    assert_eq!(cycles(&out), [(ns(10_000), 6_000.0)]);
    out.clear();
    duration(&mut watch, 22_000, 12.0, &mut out);
    assert_eq!(cycles(&out), [(ns(22_000), 12_000.0)]);
    assert_eq!(watch.waiting_since(), None);
    // A duration the server cannot give: the waiting change is measured,
    // and so is every change until the duration is back.
    let mut watch = CycleWatch::new(config, 10);
    let mut out = Vec::new();
    for (ms, n) in [(0, 0), (4_000, 1)] {
        counter(&mut watch, ms, n, &mut out);
        duration(&mut watch, ms, 4.0, &mut out);
    }
    out.clear();
    counter(&mut watch, 10_000, 2, &mut out);
    assert_eq!(watch.waiting_since(), Some(ns(10_000)));
    let bad = DataValue {
        status: Some(StatusCode::BadNotReadable),
        ..at(10_000, Variant::Empty)
    };
    assert!(matches!(
        watch.duration("a", &bad, 1, &mut out),
        Err(Refused::Unavailable(_))
    ));
    assert_eq!(cycles(&out), [(ns(10_000), 6_000.0)]);
    assert_eq!(watch.waiting_since(), None);
    out.clear();
    counter(&mut watch, 21_000, 3, &mut out);
    assert_eq!(cycles(&out), [(ns(21_000), 11_000.0)]);
    out.clear();
    duration(&mut watch, 33_000, 12.0, &mut out);
    counter(&mut watch, 33_000, 4, &mut out);
    assert_eq!(cycles(&out), [(ns(33_000), 12_000.0)]);
    // A duration item the server refused at the session's start: every
    // change is measured, from the first one's end (where the count
    // starts; the cycle it ends has no known start).
    watch.connected("a", &mut out);
    watch.duration_refused();
    let mut out = Vec::new();
    counter(&mut watch, 40_000, 5, &mut out);
    counter(&mut watch, 48_000, 6, &mut out);
    counter(&mut watch, 57_000, 7, &mut out);
    assert_eq!(cycles(&out), [(ns(57_000), 9_000.0)]);
    assert_eq!(watch.waiting_since(), None);
}
