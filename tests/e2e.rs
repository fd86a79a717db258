//! End to end, across processes: the `otwatch` and `otwatch-agent` binaries,
//! real gRPC on loopback, Parquet read back by SQL and by independent readers
//! (pyarrow, DuckDB).

mod common;

use common::{agent_binary, sql};

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn otwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otwatch"))
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn read_with_python(history: &Path) -> Value {
    run_json(
        Command::new("python3")
            .arg(common::repo_dir().join("tests/read_history.py"))
            .arg(history),
    )
}

fn demo(dir: &Path, args: &[&str]) -> Value {
    let report = dir.join("report.json");
    let out = otwatch()
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--report")
        .arg(&report)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scorecard"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    // Live output reads in order: no alert on a scenario's asset is printed
    // before that scenario's announcement.
    let lines: Vec<&str> = stdout.lines().collect();
    for s in report["scenarios"].as_array().unwrap() {
        let place = format!(
            "{}/{}",
            s["site"].as_str().unwrap(),
            s["asset"].as_str().unwrap()
        );
        let announced = format!(
            ">>> scenario {} starts on {place} ",
            s["name"].as_str().unwrap()
        );
        let first_alert = lines
            .iter()
            .position(|l| l.starts_with("ALERT ") && l.contains(&format!(" {place} ")));
        if let Some(alert) = first_alert {
            let announcement = lines.iter().position(|l| l.contains(&announced));
            assert!(
                announcement.is_some_and(|a| a < alert),
                "alert printed before the announcement of {place}:\n{stdout}"
            );
        }
    }
    report
}

#[test]
fn demo_stores_every_event_once_and_detects_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo(
        dir.path(),
        &["--duration", "45s", "--speed", "120", "--sites", "3"],
    );
    let sent = report["events_sent"].as_u64().unwrap();
    assert!(sent > 10_000, "{report}");
    assert_eq!(report["events_stored"].as_u64().unwrap(), sent, "{report}");
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 7, "{report}");
    for s in scenarios {
        assert_eq!(s["detected"], true, "scenario not detected: {s}\n{report}");
    }
    assert_eq!(report["false_alerts"], 0, "{report}");

    // Exactly once, by SQL.
    let data = dir.path().join("data");
    let rows = sql(
        &data,
        "SELECT count(*) AS n, count(DISTINCT concat(site, '/', agent, '/', CAST(seq AS VARCHAR))) AS d FROM events",
    );
    assert_eq!(rows[0]["n"].as_u64().unwrap(), sent);
    assert_eq!(rows[0]["d"].as_u64().unwrap(), sent);
    let alerts = sql(&data, "SELECT count(*) AS n FROM alerts");
    assert_eq!(alerts[0]["n"], report["alerts"]);

    // The same files, read by pyarrow and DuckDB.
    let seen = read_with_python(&data.join("history"));
    assert_eq!(
        seen["events_pyarrow_rows"].as_u64().unwrap(),
        sent,
        "{seen}"
    );
    assert_eq!(seen["events_duckdb_rows"].as_u64().unwrap(), sent, "{seen}");
    assert_eq!(
        seen["events_duckdb_distinct"].as_u64().unwrap(),
        sent,
        "{seen}"
    );
    assert_eq!(seen["alerts_duckdb_rows"], report["alerts"], "{seen}");
}

#[test]
fn a_calm_factory_raises_no_alert_after_learning() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo(
        dir.path(),
        &[
            "--calm",
            "--duration",
            "30s",
            "--speed",
            "180",
            "--sites",
            "2",
            "--seed",
            "11",
        ],
    );
    assert_eq!(report["scenarios"].as_array().unwrap().len(), 0);
    assert_eq!(report["alerts"], 0, "{report}");
    assert_eq!(report["events_sent"], report["events_stored"], "{report}");
}

/// `otwatch demo --sources`: the first site's machines are Modbus/TCP
/// devices, the second's MELSEC CPUs over SLMP, the third's OPC UA
/// servers, and every controller sends syslog; everything stored arrived
/// through those protocols, and every scenario is detected.
#[test]
fn demo_over_modbus_slmp_opcua_and_syslog_stores_what_the_devices_send_and_detects_every_scenario()
{
    let dir = tempfile::tempdir().unwrap();
    let report = demo(
        dir.path(),
        &["--sources", "--duration", "90s", "--sites", "3"],
    );
    let sent = report["events_sent"].as_u64().unwrap();
    assert_eq!(report["events_stored"].as_u64().unwrap(), sent, "{report}");
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cycle_drift",
            "extreme_cycle",
            "unplanned_stop",
            "program_download",
            "controller_silence",
            "polling_burst",
            "tag_relationship"
        ],
        "{report}"
    );
    for s in scenarios {
        assert_eq!(s["detected"], true, "scenario not detected: {s}\n{report}");
    }
    assert_eq!(report["false_alerts"], 0, "{report}");
    let place = |name: &str| {
        let s = scenarios.iter().find(|s| s["name"] == name).unwrap();
        (
            s["site"].as_str().unwrap().to_string(),
            s["asset"].as_str().unwrap().to_string(),
        )
    };

    // By SQL: exactly once.
    let data = dir.path().join("data");
    let rows = sql(
        &data,
        "SELECT count(*) AS n, count(DISTINCT concat(site, '/', agent, '/', CAST(seq AS VARCHAR))) AS d FROM events",
    );
    assert_eq!(rows[0]["n"].as_u64().unwrap(), sent);
    assert_eq!(rows[0]["d"].as_u64().unwrap(), sent);
    // What each site's protocols carry, and from how many of its four
    // machines: the register map (Modbus) or device memory (SLMP, whose
    // source alone reads the CPU model and program fingerprint) from every
    // machine, syslog (APP-NAME in `app`) for logins, the burst's failed
    // logins and the Modbus machine's program download. Nothing else: the
    // simulator inside an agent would send ACCESS `connect` and CHANGE
    // `program` of its own.
    let kinds = sql(
        &data,
        "SELECT site, kind, name, coalesce(attrs['app'], '') AS app, count(DISTINCT asset) AS assets FROM events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    );
    let kinds: Vec<(String, String, u64)> = kinds
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap().to_string();
            let assets = r["assets"].as_u64().unwrap();
            (
                format!(
                    "{} {} {} {}",
                    text("site"),
                    text("kind"),
                    text("name"),
                    text("app")
                ),
                text("kind"),
                assets,
            )
        })
        .collect();
    let (download_site, download_asset) = place("program_download");
    let (burst_site, burst_asset) = place("polling_burst");
    let mut expected: Vec<String> = Vec::new();
    for site in ["plant-brno", "plant-lyon", "plant-porto"] {
        expected.push(format!("{site} ACCESS login sshd"));
        if site == burst_site {
            expected.push(format!("{site} ACCESS login_failed sshd"));
        }
        if site == download_site {
            expected.push(format!("{site} CHANGE config ios"));
        }
        if site == "plant-porto" {
            expected.push(format!("{site} CHANGE cpu_model "));
            expected.push(format!("{site} CHANGE program "));
        }
        for polled in [
            "CYCLE cycle",
            "SAMPLE motor_current_a",
            "SAMPLE supply_voltage_v",
            "SAMPLE temperature_c",
            "STATE mode",
        ] {
            expected.push(format!("{site} {polled} "));
        }
    }
    let got: Vec<&str> = kinds.iter().map(|(k, ..)| k.as_str()).collect();
    assert_eq!(got, expected);
    for (what, kind, assets) in &kinds {
        // Every machine is read; logins go to any of them, the scenarios'
        // lines come from their one machine.
        let all = !(kind == "ACCESS" || what.ends_with("CHANGE config ios"));
        assert!(!all || *assets == 4, "{what} from {assets} machine(s)");
    }
    // The program download reached the scenario's machine over syslog,
    // and the burst's failed logins came from one address outside the
    // site's HMI.
    let download = sql(
        &data,
        "SELECT site, asset, attrs['command'] AS command FROM events WHERE kind = 'CHANGE' AND name = 'config'",
    );
    assert_eq!(download.len(), 1);
    assert_eq!(download[0]["site"], download_site.as_str());
    assert_eq!(download[0]["asset"], download_asset.as_str());
    assert!(
        download[0]["command"]
            .as_str()
            .unwrap()
            .starts_with("program download "),
        "{download:?}"
    );
    let burst = sql(
        &data,
        "SELECT site, asset, attrs['peer'] AS peer FROM events WHERE name = 'login_failed' GROUP BY 1, 2, 3",
    );
    assert_eq!(burst.len(), 1, "{burst:?}");
    assert_eq!(burst[0]["site"], burst_site.as_str());
    assert_eq!(burst[0]["asset"], burst_asset.as_str());
    assert!(
        burst[0]["peer"].as_str().unwrap().contains(".66."),
        "{burst:?}"
    );
    // Every CPU of the SLMP site answered the model read.
    let models = sql(
        &data,
        "SELECT DISTINCT text FROM events WHERE site = 'plant-porto' AND name = 'cpu_model'",
    );
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["text"], "R04CPU (4800)");
    // Stamped by the devices' clocks and the lines' timestamps (simulated
    // time, which began 90 simulated minutes before the run's end), not by
    // the agents' clock: logins of the learning window (its first 30
    // simulated minutes, played in the run's first 30 seconds) are early.
    let span = sql(
        &data,
        "SELECT CAST(date_part('epoch', max(ts)) - date_part('epoch', min(ts)) AS BIGINT) AS s FROM events",
    );
    let span = span[0]["s"].as_i64().unwrap();
    assert!(span > 60 * 60, "events span only {span} s");
    for site in ["plant-brno", "plant-lyon", "plant-porto"] {
        let early = sql(
            &data,
            &format!(
                "SELECT count(*) AS n FROM events WHERE site = '{site}' AND kind = 'ACCESS' \
                 AND ts < (SELECT min(ts) FROM events) + INTERVAL '30 minutes'"
            ),
        );
        assert!(
            early[0]["n"].as_u64().unwrap() > 0,
            "{site}: no early login"
        );
    }
    // The OPC UA site's machines came through the opcua source's
    // subscriptions: its SAMPLE and STATE events name their node, no other
    // site's do; its CYCLE events carry the controllers' durations (8 to
    // 20 s, three times that in an extreme cycle); and the scenarios it
    // plays are detected.
    let by_source = sql(
        &data,
        "SELECT site, kind, count(*) AS n, count(attrs['node']) AS with_node FROM events \
         WHERE kind IN ('CYCLE', 'SAMPLE', 'STATE') GROUP BY 1, 2 ORDER BY 1, 2",
    );
    assert_eq!(by_source.len(), 9, "{by_source:?}");
    for row in &by_source {
        let (n, with_node) = (
            row["n"].as_u64().unwrap(),
            row["with_node"].as_u64().unwrap(),
        );
        let expected = if row["site"] == "plant-brno" && row["kind"] != "CYCLE" {
            n
        } else {
            0
        };
        assert!(n > 0, "{row}");
        assert_eq!(with_node, expected, "{row}");
    }
    let cycles = sql(
        &data,
        "SELECT count(*) AS n, min(value) AS lo, max(value) AS hi, count(DISTINCT asset) AS assets \
         FROM events WHERE site = 'plant-brno' AND kind = 'CYCLE'",
    );
    assert!(cycles[0]["n"].as_u64().unwrap() > 100, "{cycles:?}");
    assert_eq!(cycles[0]["assets"], 4, "{cycles:?}");
    let (lo, hi) = (
        cycles[0]["lo"].as_f64().unwrap(),
        cycles[0]["hi"].as_f64().unwrap(),
    );
    assert!(lo >= 5_000.0 && hi <= 80_000.0, "{cycles:?}");
    // Each CYCLE carries its own cycle's duration, never a neighbour's: the
    // simulated machine's cycles follow one another, so it is the time
    // since the machine's previous CYCLE (unless a stop lies between).
    let mispaired = sql(
        &data,
        "SELECT count(*) AS n FROM (SELECT value, (date_part('epoch', ts) - date_part('epoch', \
         lag(ts) OVER (PARTITION BY asset ORDER BY ts))) * 1000 AS since FROM events \
         WHERE site = 'plant-brno' AND kind = 'CYCLE') WHERE since < value * 1.5 AND abs(since - value) > 2",
    );
    assert_eq!(mispaired[0]["n"], 0, "{mispaired:?}");
    let on_opcua: Vec<&Value> = scenarios
        .iter()
        .filter(|s| s["site"] == "plant-brno")
        .collect();
    let names: Vec<&str> = on_opcua
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["unplanned_stop", "polling_burst"], "{report}");
    assert!(on_opcua.iter().all(|s| s["detected"] == true), "{report}");
    // A cycle's samples share its end's timestamp, as the values were read
    // with the cycle counter (Modbus, SLMP) or written with it (OPC UA,
    // where a notification may carry several cycles, the items in any
    // order: each cycle is still reported with its own duration).
    let unmatched = sql(
        &data,
        "SELECT s.site, s.asset, s.name, CAST(s.ts AS VARCHAR) AS ts, s.seq FROM events s WHERE s.kind = 'SAMPLE' \
         AND NOT EXISTS (SELECT 1 FROM events c WHERE c.kind = 'CYCLE' AND c.site = s.site AND c.asset = s.asset AND c.ts = s.ts) \
         ORDER BY 1, 2, 4 LIMIT 10",
    );
    assert_eq!(unmatched, Vec::<Value>::new());
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn event_line(i: u64, now_ns: i64) -> String {
    format!(
        r#"{{"asset":"line1/press-0{}","kind":"CYCLE","name":"cycle","ts_ns":{},"value":{}}}"#,
        i % 3,
        now_ns + i as i64 * 1_000_000,
        1000 + i % 17
    )
}

fn count_events(data: &Path) -> u64 {
    if !data.join("history").exists() {
        return 0;
    }
    sql(data, "SELECT count(*) AS n FROM events")[0]["n"]
        .as_u64()
        .unwrap()
}

#[test]
fn serve_and_agent_processes_lose_and_duplicate_nothing_across_an_agent_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("central");
    let port = free_port();
    let central_metrics = format!("127.0.0.1:{}", free_port());
    let _serve = Killed(
        otwatch()
            .args([
                "serve",
                "--insecure-loopback",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &central_metrics,
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let input = dir.path().join("events.jsonl");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&event_line(i, now));
        text.push('\n');
        if i == 1234 {
            text.push_str("{\"asset\": \"broken\n"); // a bad line is skipped, not fatal
        }
    }
    std::fs::write(&input, &text).unwrap();
    let config = dir.path().join("agent.toml");
    let metrics_port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
site = "plant-test"
agent = "gw-1"
data_dir = "{}"
metrics_listen = "127.0.0.1:{metrics_port}"
[collector]
url = "http://127.0.0.1:{port}"
batch_max_events = 250
[[sources]]
type = "file"
path = "{}"
poll_interval = "50ms"
"#,
            dir.path().join("agent").display(),
            input.display()
        ),
    )
    .unwrap();
    let check = Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let agent = Killed(
        Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "3000 events in the history",
        Duration::from_secs(60),
        || count_events(&data) == 3000,
    );
    // SIGKILL the agent, feed more, restart: nothing lost, nothing twice.
    drop(agent);
    let mut more = String::new();
    for i in 3000..5000 {
        more.push_str(&event_line(i, now));
        more.push('\n');
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .and_then(|mut f| std::io::Write::write_all(&mut f, more.as_bytes()))
        .unwrap();
    let _agent = Killed(
        Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "5000 events in the history",
        Duration::from_secs(60),
        || count_events(&data) == 5000,
    );
    std::thread::sleep(Duration::from_secs(3));
    let rows = sql(
        &data,
        "SELECT count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM events WHERE site = 'plant-test' AND agent = 'gw-1'",
    );
    assert_eq!(rows[0]["n"], 5000);
    assert_eq!(rows[0]["d"], 5000);
    assert_eq!(rows[0]["lo"], 1);
    assert_eq!(rows[0]["hi"], 5000);

    // The agent's counters, as a Prometheus scraper sees them.
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    let labels = r#"{site="plant-test",agent="gw-1"}"#;
    for line in [
        format!("otwatch_agent_acked_seq{labels} 5000"),
        format!("otwatch_agent_last_seq{labels} 5000"),
        format!("otwatch_agent_events_taken_total{labels} 2000"),
        format!("otwatch_agent_dropped_total{labels} 0"),
        format!("otwatch_agent_connected{labels} 1"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // The central service's, likewise: every event stored once, the history
    // caught up, the agent's connection counted.
    let metrics = http_get(&central_metrics, "/metrics");
    for line in [
        "otwatch_collector_events_stored_total 5000",
        "otwatch_collector_batches_invalid_total 0",
        "otwatch_collector_connections_open 1",
        "otwatch_component_lag_records{component=\"history-events\"} 0",
        "otwatch_component_up{component=\"detector\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    let health = http_get(&central_metrics, "/healthz");
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(health.contains("history-events: running"), "{health}");
    let ready = http_get(&central_metrics, "/readyz");
    assert!(ready.starts_with("ready\n"), "{ready}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split("\r\n\r\n").nth(1).unwrap().to_string()
}

#[test]
fn bad_configs_and_queries_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("otwatch.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\ndatadir = \"x\"\n").unwrap();
    let out = otwatch()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `datadir`"), "{err}");

    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        "site = \"a\"\nagent = \"b\"\ndata_dir = \"/tmp/x\"\nsources = []\n",
    )
    .unwrap();
    let out = Command::new(agent_binary())
        .arg("--config")
        .arg(&agent_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("configure at least one source"));

    let out = otwatch()
        .args(["sql", "--data-dir"])
        .arg(dir.path())
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no history in"));
}
