//! The SQL endpoint with the clients analysts use: `psql` (the simple query
//! protocol, and the catalog queries behind `\dt` and `\d`) and psycopg 3
//! (the extended protocol with bound parameters), over a history written by
//! the history writer, through TLS and SCRAM-SHA-256 logins.
//!
//! The peers are installed by `scripts/test.sh` (Debian `postgresql-client`,
//! PyPI `psycopg[binary]`). Without them a test says so and passes, except
//! under CI, where a missing peer is a failure.

use otwatch_history::{Table, TableWriter};
use otwatch_pgwire::{hash_password, SqlEndpoint, SqlEndpointConfig, SqlTlsConfig, SqlUser};
use otwatch_proto::{Alert, ControllerEvent, EventKind, Severity};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// 2026-11-22T10:00:00Z.
const T0_S: i64 = 1_795_341_600;
const SITES: [&str; 2] = ["plant-lyon", "plant-porto"];
const PRESSES: [&str; 2] = ["line1/press-01", "line1/press-02"];
const ANALYST: (&str, &str) = ("analyst", "correct horse battery");
const LYON: (&str, &str) = ("lyon", "lyon's own password");

// ---------------------------------------------------------------- the data

/// The events of one site: every 10 s for 10 minutes, a CYCLE of each
/// press (value 10000 + 1000·site + 100·press + k ms), and 3 + site
/// ACCESS events from two peers.
fn site_events(site_index: usize) -> Vec<ControllerEvent> {
    let mut events = Vec::new();
    for k in 0..60i64 {
        for (p, asset) in PRESSES.iter().enumerate() {
            events.push(ControllerEvent {
                ts_ns: (T0_S + 10 * k + p as i64) * 1_000_000_000,
                asset: asset.to_string(),
                kind: EventKind::Cycle as i32,
                name: "cycle".into(),
                value: Some((10_000 + 1000 * site_index + 100 * p) as f64 + k as f64),
                ..Default::default()
            });
        }
    }
    for j in 0..3 + site_index as i64 {
        events.push(ControllerEvent {
            ts_ns: (T0_S + 60 * j + 5) * 1_000_000_000,
            asset: "line1/plc-01".into(),
            kind: EventKind::Access as i32,
            name: "connect".into(),
            attrs: HashMap::from([("peer".into(), format!("10.0.{site_index}.{}", j % 2))]),
            ..Default::default()
        });
    }
    events.sort_by_key(|e| e.ts_ns);
    for (seq, e) in events.iter_mut().enumerate() {
        e.seq = seq as u64 + 1;
    }
    events
}

fn alert(site: &str) -> Alert {
    Alert {
        id: format!("alert-{site}"),
        ts_ns: (T0_S + 300) * 1_000_000_000,
        site: site.into(),
        asset: "line1/press-02".into(),
        detector: "cycle".into(),
        name: "cycle".into(),
        severity: Severity::High as i32,
        score: 9.0,
        observed: 12_000.0,
        expected_low: 10_000.0,
        expected_high: 11_000.0,
        message: "cycle time outlier".into(),
        agent: "gw-1".into(),
        first_seq: 10,
        last_seq: 19,
        event_count: 10,
        technique: "T0836".into(),
        // Raised open, as the detector raises alerts.
        state: "open".into(),
        ..Default::default()
    }
}

/// Writes both sites' events and one alert per site, as the history
/// writers do.
fn write_history(root: &Path) {
    let mut events = TableWriter::open(root, Table::Events).unwrap();
    let batches: Vec<_> = SITES
        .iter()
        .enumerate()
        .map(|(i, site)| {
            otwatch_proto::arrow::events_to_batch(
                site,
                "gw-1",
                &site_events(i),
                T0_S * 1_000_000_000,
            )
            .unwrap()
        })
        .collect();
    events.write(&batches, 1).unwrap();
    let mut alerts = TableWriter::open(root, Table::Alerts).unwrap();
    let batch = otwatch_proto::arrow::alerts_to_batch(&SITES.map(alert)).unwrap();
    alerts.write(&[batch], 1).unwrap();
}

// ------------------------------------------------------------ the endpoint

/// An endpoint over the test history, serving on a loopback port until
/// dropped.
struct Endpoint {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

fn pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    otwatch_pki::init(&pki).unwrap();
    otwatch_pki::issue(
        &pki,
        &otwatch_pki::Subject::Collector {
            hosts: vec!["localhost".into()],
        },
        Duration::from_secs(86_400),
    )
    .unwrap();
    pki
}

fn user(name: &str, password: &str, sites: Option<&[&str]>) -> SqlUser {
    SqlUser {
        name: name.into(),
        password_hash: hash_password(password, 4096),
        sites: sites.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

impl Endpoint {
    /// TLS required, the two users, defaults edited by `edit`.
    fn start(edit: impl FnOnce(&mut SqlEndpointConfig)) -> Endpoint {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        write_history(&history);
        let pki = pki(dir.path());
        let mut config = SqlEndpointConfig {
            tls: Some(SqlTlsConfig {
                cert: pki.join(otwatch_pki::COLLECTOR_CERT),
                key: pki.join(otwatch_pki::COLLECTOR_KEY),
            }),
            users: vec![
                user(ANALYST.0, ANALYST.1, None),
                user(LYON.0, LYON.1, Some(&["plant-lyon"])),
            ],
            ..Default::default()
        };
        edit(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (endpoint, listener) = runtime.block_on(async {
            let endpoint = SqlEndpoint::open(&config, &history).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            (endpoint, listener)
        });
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = runtime.spawn(endpoint.serve(listener, async {
            let _ = stopped.await;
        }));
        Endpoint {
            dir,
            addr,
            stop: Some(stop),
            served: Some(served),
            runtime,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("pki").join(otwatch_pki::CA_CERT)
    }

    /// A libpq connection string; `sslmode` verify-full checks the
    /// endpoint's certificate against the deployment's CA.
    fn conninfo(&self, user: &str, sslmode: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname=otwatch sslmode={sslmode} sslrootcert={} connect_timeout=10 application_name=otwatch-tests",
            self.addr.port(),
            self.ca().display()
        )
    }

    /// Runs `commands` with psql (each its own `-c`, stopping at the first
    /// error); unaligned output, `|` between fields, no headers.
    fn psql(&self, (user, password): (&str, &str), sslmode: &str, commands: &[&str]) -> Psql {
        let mut cmd = Command::new("psql");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PGPASSWORD", password)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "|", "-d"])
            .arg(self.conninfo(user, sslmode));
        for c in commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.output().expect("psql runs");
        Psql {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `requests` with psycopg (see tests/psycopg_client.py).
    fn psycopg(&self, (user, password): (&str, &str), requests: Value) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/psycopg_client.py");
        let conninfo = format!(
            "{} password='{}'",
            self.conninfo(user, "verify-full"),
            password.replace('\'', "\\'")
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(conninfo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(requests.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psycopg client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), served).await });
        }
    }
}

struct Psql {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Psql {
    #[track_caller]
    fn rows(&self) -> Vec<Vec<String>> {
        assert!(self.ok, "psql failed: {}", self.stderr);
        self.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(String::from).collect())
            .collect()
    }

    #[track_caller]
    fn refused(&self, expected: &str) {
        assert!(!self.ok, "psql succeeded: {}", self.stdout);
        assert!(
            self.stderr.contains(expected),
            "expected {expected:?} in: {}",
            self.stderr
        );
    }
}

/// Whether a peer program is installed; under CI a missing one fails.
fn have_psql() -> bool {
    otwatch_testkit::peer_installed("psql (Debian postgresql-client)", "/usr/bin/psql")
}

fn have_psycopg() -> bool {
    otwatch_testkit::python_has(&["psycopg"])
}

fn num(text: &str) -> f64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a second of the test's day (2026-11-22).
fn rfc3339(epoch_s: i64) -> String {
    let of_day = epoch_s - (T0_S - 10 * 3600);
    assert!((0..86_400).contains(&of_day));
    format!(
        "2026-11-22T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

// ------------------------------------------------------------------- tests

#[test]
fn psql_lists_the_tables_and_runs_the_readme_queries() {
    if !have_psql() {
        return;
    }
    let endpoint = Endpoint::start(|_| {});
    let tables = endpoint.psql(ANALYST, "verify-full", &["\\dt"]).rows();
    let names: Vec<&str> = tables.iter().map(|r| r[1].as_str()).collect();
    assert!(
        names.contains(&"events") && names.contains(&"alerts"),
        "{tables:?}"
    );

    let columns = endpoint
        .psql(ANALYST, "verify-full", &["\\d events"])
        .rows();
    let columns: Vec<&str> = columns.iter().map(|r| r[0].as_str()).collect();
    for c in [
        "site", "agent", "seq", "ts", "asset", "kind", "value", "attrs", "date", "hour",
    ] {
        assert!(
            columns.contains(&c),
            "{c} missing from \\d events: {columns:?}"
        );
    }

    // README, "SQL": cycle time per asset, today.
    let cycles = endpoint
        .psql(
            ANALYST,
            "verify-full",
            &["SELECT site, asset, count(*) AS cycles, avg(value) AS mean_ms, stddev(value) AS sd_ms \
               FROM events WHERE kind = 'CYCLE' AND date = '2026-11-22' GROUP BY site, asset ORDER BY site, asset"],
        )
        .rows();
    assert_eq!(cycles.len(), 4, "{cycles:?}");
    for (row, (s, p)) in cycles.iter().zip([(0, 0), (0, 1), (1, 0), (1, 1)]) {
        assert_eq!(row[0], SITES[s]);
        assert_eq!(row[1], PRESSES[p]);
        assert_eq!(row[2], "60");
        assert_eq!(num(&row[3]), (10_000 + 1000 * s + 100 * p) as f64 + 29.5);
        // The sample standard deviation of 0..59.
        assert!((num(&row[4]) - 305f64.sqrt()).abs() < 1e-9, "{row:?}");
    }

    // The events behind an alert.
    let behind = endpoint
        .psql(
            ANALYST,
            "verify-full",
            &["SELECT e.seq, e.kind, e.name, e.value, e.text \
               FROM alerts a JOIN events e \
                 ON e.site = a.site AND e.agent = a.agent AND e.seq BETWEEN a.first_seq AND a.last_seq \
               WHERE a.id = 'alert-plant-lyon' ORDER BY e.seq"],
        )
        .rows();
    let lyon = site_events(0);
    let expected: Vec<String> = lyon[9..19].iter().map(|e| e.seq.to_string()).collect();
    let seqs: Vec<String> = behind.iter().map(|r| r[0].clone()).collect();
    assert_eq!(seqs, expected);

    // Who connected to the controllers, and how often.
    let access = endpoint
        .psql(
            ANALYST,
            "verify-full",
            &["SELECT site, asset, attrs['peer'] AS peer, count(*) FROM events WHERE kind = 'ACCESS' GROUP BY 1, 2, 3 ORDER BY 1, 3"],
        )
        .rows();
    let access: Vec<String> = access.iter().map(|r| r.join("|")).collect();
    assert_eq!(
        access,
        [
            "plant-lyon|line1/plc-01|10.0.0.0|2",
            "plant-lyon|line1/plc-01|10.0.0.1|1",
            "plant-porto|line1/plc-01|10.0.1.0|2",
            "plant-porto|line1/plc-01|10.0.1.1|2",
        ]
    );
}

#[test]
fn psycopg_binds_parameters() {
    if !have_psycopg() {
        return;
    }
    let endpoint = Endpoint::start(|_| {});
    let from = rfc3339(T0_S + 120).replace('Z', "+00:00");
    let to = rfc3339(T0_S + 240).replace('Z', "+00:00");
    let got = endpoint.psycopg(
        ANALYST,
        json!([
            {"name": "by_site_and_kind",
             "sql": "SELECT count(*) FROM events WHERE site = %s AND kind = %s",
             "params": ["plant-lyon", "CYCLE"]},
            {"name": "by_time",
             "sql": "SELECT count(*) FROM events WHERE site = %s AND ts >= %s AND ts < %s",
             "params": ["plant-porto", {"ts": from}, {"ts": to}]},
            {"name": "by_value",
             "sql": "SELECT count(*) FROM events WHERE value > %s",
             "params": [{"float": 11_150.5}]},
            {"name": "by_attr",
             "sql": "SELECT site, count(*) FROM events WHERE attrs['peer'] = %s GROUP BY site",
             "params": ["10.0.1.1"]},
            {"name": "alert_rows",
             "sql": "SELECT id, severity, technique, first_seq FROM alerts WHERE site = %s",
             "params": ["plant-porto"]},
        ]),
    );
    assert_eq!(got["by_site_and_kind"]["rows"], json!([[120]]), "{got}");
    let porto = site_events(1);
    let in_window = porto
        .iter()
        .filter(|e| (T0_S + 120..T0_S + 240).contains(&(e.ts_ns / 1_000_000_000)))
        .count();
    assert_eq!(got["by_time"]["rows"], json!([[in_window]]), "{got}");
    let above = [site_events(0), porto.clone()]
        .concat()
        .iter()
        .filter(|e| e.value.is_some_and(|v| v > 11_150.5))
        .count();
    assert_eq!(got["by_value"]["rows"], json!([[above]]), "{got}");
    assert_eq!(got["by_attr"]["rows"], json!([["plant-porto", 2]]), "{got}");
    assert_eq!(
        got["alert_rows"]["rows"],
        json!([["alert-plant-porto", "high", "T0836", 10]]),
        "{got}"
    );
}

/// What Grafana's PostgreSQL data source sends: its table and column
/// pickers, and time-series panels with `$__timeFilter`,
/// `$__timeGroupAlias` and `date_trunc` expanded as Grafana expands them.
fn grafana_queries() -> Vec<(&'static str, String)> {
    let from = rfc3339(T0_S + 120);
    let to = rfc3339(T0_S + 240);
    vec![
        ("tables", "SELECT quote_ident(table_name) AS \"table\" FROM information_schema.tables \
            WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog', '_timescaledb_cache', \
            '_timescaledb_catalog', '_timescaledb_internal', '_timescaledb_config', 'timescaledb_information', \
            'timescaledb_experimental') AND table_schema = 'public' ORDER BY 1".to_string()),
        ("columns", "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" \
            FROM information_schema.columns WHERE quote_ident(table_name) = 'events' ORDER BY ordinal_position".to_string()),
        // $__timeFilter(ts)
        ("time_filter", format!(
            "SELECT count(*) FROM events WHERE ts BETWEEN '{from}' AND '{to}' AND site = 'plant-lyon' AND kind = 'CYCLE'")),
        // $__timeGroupAlias(ts, 1m), one series per site
        ("time_group", format!(
            "SELECT floor(extract(epoch from ts)/60)*60 AS \"time\", site AS metric, count(*) AS value \
             FROM events WHERE ts BETWEEN '{}' AND '{}' AND kind = 'CYCLE' GROUP BY 1, 2 ORDER BY 1, 2",
            rfc3339(T0_S), rfc3339(T0_S + 599))),
        // date_trunc bucketing of a value
        ("date_trunc", format!(
            "SELECT date_trunc('minute', ts) AS \"time\", avg(value) AS cycle_ms FROM events \
             WHERE ts BETWEEN '{}' AND '{}' AND site = 'plant-lyon' AND asset = 'line1/press-01' AND kind = 'CYCLE' \
             GROUP BY 1 ORDER BY 1",
            rfc3339(T0_S), rfc3339(T0_S + 599))),
    ]
}

/// Checks the Grafana answers, given as text rows.
fn check_grafana(answers: &BTreeMap<&str, Vec<Vec<String>>>) {
    let tables: Vec<&str> = answers["tables"].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(tables, ["alerts", "audit", "events"]);
    let columns: Vec<&str> = answers["columns"].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(&columns[..4], ["site", "agent", "seq", "ts"], "{columns:?}");

    // Inclusive bounds, as BETWEEN: press-01 at 120 s..=240 s (13 cycles),
    // press-02 one second later (12).
    let lyon = site_events(0);
    let expected = lyon
        .iter()
        .filter(|e| e.kind == EventKind::Cycle as i32)
        .filter(|e| (T0_S + 120..=T0_S + 240).contains(&(e.ts_ns / 1_000_000_000)))
        .count();
    assert_eq!(expected, 25);
    assert_eq!(answers["time_filter"], [[expected.to_string()]]);

    // Twelve cycles a minute per site, ten minutes.
    let groups = &answers["time_group"];
    assert_eq!(groups.len(), 20, "{groups:?}");
    for (i, row) in groups.iter().enumerate() {
        assert_eq!(num(&row[0]), (T0_S + 60 * (i as i64 / 2)) as f64, "{row:?}");
        assert_eq!(row[1], SITES[i % 2]);
        assert_eq!(row[2], "12");
    }

    // Minute m holds k = 6m..6m+5: a mean of 10000 + 6m + 2.5.
    let minutes = &answers["date_trunc"];
    assert_eq!(minutes.len(), 10, "{minutes:?}");
    for (m, row) in minutes.iter().enumerate() {
        let hhmm = format!("10:{m:02}:00");
        assert!(row[0].contains(&hhmm), "{row:?} is not minute {hhmm}");
        assert_eq!(num(&row[1]), 10_000.0 + 6.0 * m as f64 + 2.5, "{row:?}");
    }
}

#[test]
fn grafana_panel_queries_return_the_right_buckets_over_both_protocols() {
    let (psql, psycopg) = (have_psql(), have_psycopg());
    let endpoint = Endpoint::start(|_| {});
    let queries = grafana_queries();
    if psql {
        let answers = queries
            .iter()
            .map(|(name, sql)| (*name, endpoint.psql(ANALYST, "verify-full", &[sql]).rows()))
            .collect();
        check_grafana(&answers);
    }
    if psycopg {
        let requests: Vec<Value> = queries
            .iter()
            .map(|(name, sql)| json!({"name": name, "sql": sql}))
            .collect();
        let got = endpoint.psycopg(ANALYST, Value::Array(requests));
        let answers = queries
            .iter()
            .map(|(name, _)| {
                let rows = got[name]["rows"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: {}", got[name]))
                    .iter()
                    .map(|row| {
                        row.as_array()
                            .unwrap()
                            .iter()
                            .map(|v| match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .collect();
                (*name, rows)
            })
            .collect();
        check_grafana(&answers);
    }
}

#[test]
fn logins_without_the_right_password_or_tls_are_refused() {
    if !have_psql() {
        return;
    }
    let endpoint = Endpoint::start(|_| {});
    endpoint
        .psql(
            (ANALYST.0, "not the password"),
            "verify-full",
            &["SELECT 1"],
        )
        .refused("password authentication failed for user \"analyst\"");
    // An unknown user reads the same.
    endpoint
        .psql(("mallory", ANALYST.1), "verify-full", &["SELECT 1"])
        .refused("password authentication failed for user \"mallory\"");
    endpoint
        .psql(ANALYST, "disable", &["SELECT 1"])
        .refused("requires TLS: connect with sslmode=require");
    // The right password over TLS gets in.
    assert_eq!(
        endpoint.psql(ANALYST, "require", &["SELECT 1"]).rows(),
        [["1"]]
    );
}

#[test]
fn writes_and_engine_settings_are_refused() {
    if !have_psql() {
        return;
    }
    let endpoint = Endpoint::start(|_| {});
    let file = endpoint.dir.path().join("out.csv");
    for (sql, expected) in [
        ("COPY events TO STDOUT".to_string(), "cannot execute COPY"),
        (
            format!("COPY (SELECT 1) TO '{}'", file.display()),
            "cannot execute COPY",
        ),
        ("CREATE TABLE t AS SELECT 1".into(), "cannot execute CREATE"),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp'".into(),
            "cannot execute CREATE",
        ),
        (
            "INSERT INTO events (site) VALUES ('x')".into(),
            "cannot execute INSERT",
        ),
        ("SELECT * INTO t FROM events".into(), "read-only"),
        ("DROP TABLE events".into(), "cannot execute DROP"),
        (
            "SET datafusion.runtime.memory_limit = '100G'".into(),
            "only takes SET of the client settings",
        ),
        (
            "DECLARE c CURSOR FOR SELECT 1".into(),
            "cannot execute DECLARE",
        ),
    ] {
        endpoint
            .psql(ANALYST, "verify-full", &[&sql])
            .refused(expected);
    }
    assert!(!file.exists());
    // Client settings still work, and the session goes on after a refusal.
    let after = endpoint.psql(
        ANALYST,
        "verify-full",
        &[
            "SET statement_timeout = '30s'",
            "SHOW statement_timeout",
            "SELECT count(*) FROM alerts",
        ],
    );
    assert_eq!(
        after.rows(),
        [["SET"], ["30000ms"], ["2"]].map(|r| r.map(String::from))
    );
}

#[test]
fn a_user_limited_to_a_site_sees_only_its_rows() {
    let (psql, psycopg) = (have_psql(), have_psycopg());
    let endpoint = Endpoint::start(|_| {});
    let lyon_events = site_events(0).len().to_string();
    if psql {
        let run = |sql: &str| endpoint.psql(LYON, "verify-full", &[sql]);
        assert_eq!(
            run("SELECT DISTINCT site FROM events").rows(),
            [["plant-lyon"]]
        );
        assert_eq!(
            run("SELECT count(*) FROM events").rows(),
            [[lyon_events.clone()]]
        );
        assert_eq!(run("SELECT count(*) FROM alerts").rows(), [["1"]]);
        assert_eq!(
            run("SELECT count(*) FROM events WHERE kind = 'CYCLE' OR true").rows(),
            [[lyon_events.clone()]]
        );
        // Naming another site is refused, however it is written.
        for sql in [
            "SELECT count(*) FROM events WHERE site = 'plant-porto'",
            "SELECT * FROM alerts WHERE site IN ('plant-lyon', 'plant-porto')",
            "SELECT count(*) FROM events WHERE 'plant-porto' = site OR true",
            "WITH p AS (SELECT * FROM events WHERE site = 'plant-porto') SELECT count(*) FROM p",
        ] {
            run(sql).refused(
                "user \"lyon\" may read sites plant-lyon only; \"plant-porto\" is not one of them",
            );
        }
        // Other ways to reach porto's rows find none.
        for sql in [
            "SELECT count(*) FROM events WHERE lower(site) LIKE '%porto%'",
            "SELECT count(*) FROM (SELECT * FROM events UNION ALL SELECT * FROM events) u WHERE u.agent = 'gw-1' AND u.site <> 'plant-lyon'",
            "SELECT count(*) FROM events e JOIN alerts a ON e.site <> a.site",
        ] {
            assert_eq!(run(sql).rows(), [["0"]], "{sql}");
        }
        // The files themselves cannot be named.
        let file = walk(&endpoint.dir.path().join("history/events"))
            .into_iter()
            .find(|p| {
                p.to_string_lossy().contains("plant-porto")
                    && p.extension().is_some_and(|e| e == "parquet")
            })
            .expect("a porto file");
        run(&format!("SELECT count(*) FROM '{}'", file.display())).refused("not found");
        run("SELECT * FROM datafusion.public.events WHERE site = 'plant-porto'")
            .refused("may read sites");
        // The unlimited analyst sees both sites.
        let both = endpoint.psql(
            ANALYST,
            "verify-full",
            &["SELECT count(DISTINCT site) FROM events"],
        );
        assert_eq!(both.rows(), [["2"]]);
    }
    if psycopg {
        let got = endpoint.psycopg(
            LYON,
            json!([
                {"name": "bound", "sql": "SELECT count(*) FROM events WHERE site = %s", "params": ["plant-porto"]},
                {"name": "own", "sql": "SELECT count(*) FROM events WHERE site = %s", "params": ["plant-lyon"]},
            ]),
        );
        assert_eq!(got["bound"]["error"]["sqlstate"], "42501", "{got}");
        assert_eq!(got["own"]["rows"], json!([[site_events(0).len()]]), "{got}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn statements_past_a_limit_fail_naming_it() {
    if !have_psql() {
        return;
    }
    let endpoint = Endpoint::start(|c| {
        c.max_rows = 5;
        c.query_timeout = Duration::from_secs(1);
        c.memory_limit = 4 << 20;
    });
    let run = |sql: &str| endpoint.psql(ANALYST, "verify-full", &[sql]);
    assert_eq!(run("SELECT seq FROM events LIMIT 5").rows().len(), 5);
    run("SELECT seq FROM events LIMIT 6").refused("the result has more than sql.max_rows = 5 rows");
    // Would run for hours.
    run("SELECT sum(value) FROM generate_series(1, 100000000000) AS t(value)")
        .refused("it ran longer than sql.query_timeout = 1s");
    // A join whose build side holds 2 million rows.
    run("SELECT count(*) FROM generate_series(1, 2000000) AS a(v) JOIN generate_series(1, 2000000) AS b(v) ON a.v = b.v")
        .refused("query needs more memory than sql.memory_limit");
    // The connection and the endpoint carry on.
    assert_eq!(run("SELECT count(*) FROM alerts").rows(), [["2"]]);
}

#[test]
fn a_cancel_request_stops_the_running_statement() {
    if !have_psycopg() {
        return;
    }
    let endpoint = Endpoint::start(|_| {});
    let got = endpoint.psycopg(
        ANALYST,
        json!([
            {"name": "long", "cancel": true,
             "sql": "SELECT sum(value) FROM generate_series(1, 100000000000) AS t(value)"},
            {"name": "after", "sql": "SELECT count(*) FROM alerts"},
        ]),
    );
    assert_eq!(got["long"]["error"]["sqlstate"], "57014", "{got}");
    assert!(
        got["long"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("canceling statement due to user request"),
        "{got}"
    );
    assert_eq!(got["after"]["rows"], json!([[2]]), "{got}");
}

#[test]
fn a_connection_beyond_max_connections_is_told_so() {
    if !have_psql() {
        return;
    }
    let endpoint = Endpoint::start(|c| c.max_connections = 1);
    // A client that connected and sent nothing yet holds the only slot.
    let held = std::net::TcpStream::connect(endpoint.addr).unwrap();
    endpoint
        .psql(ANALYST, "verify-full", &["SELECT 1"])
        .refused(
            "too many connections: the otwatch SQL endpoint serves sql.max_connections = 1 at once",
        );
    drop(held);
    // The slot comes back once that client is gone.
    let mut last = None;
    for _ in 0..100 {
        let out = endpoint.psql(ANALYST, "verify-full", &["SELECT 1"]);
        if out.ok {
            return;
        }
        last = Some(out.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the slot never came back: {last:?}");
}

#[test]
fn stopping_closes_open_connections() {
    if !have_psycopg() {
        return;
    }
    let mut endpoint = Endpoint::start(|_| {});
    // A client that logs in, says so, and queries again when told.
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("SELECT 1")
print("connected", flush=True)
sys.stdin.readline()
try:
    conn.execute("SELECT 1")
    print("still open")
except psycopg.OperationalError as e:
    print("closed:", e)
"#;
    let conninfo = format!(
        "{} password='{}'",
        endpoint.conninfo(ANALYST.0, "verify-full"),
        ANALYST.1
    );
    let mut child = Command::new("python3")
        .args(["-c", script, &conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    // Stopping returns although the client is connected.
    endpoint.stop.take().unwrap().send(()).unwrap();
    let served = endpoint.served.take().unwrap();
    endpoint
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), served).await })
        .expect("serve returned")
        .unwrap();
    writeln!(child.stdin.take().unwrap()).unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("closed:"), "{line}");
    child.wait().unwrap();
}

#[test]
fn the_endpoint_does_not_start_with_files_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let open = |config: SqlEndpointConfig| {
        runtime
            .block_on(SqlEndpoint::open(&config, &dir.path().join("history")))
            .err()
            .map(|e| e.to_string())
    };
    let good = SqlEndpointConfig {
        tls: Some(SqlTlsConfig {
            cert: pki.join(otwatch_pki::COLLECTOR_CERT),
            key: pki.join(otwatch_pki::COLLECTOR_KEY),
        }),
        users: vec![user(ANALYST.0, ANALYST.1, None)],
        ..Default::default()
    };
    assert_eq!(open(good.clone()), None);
    let mut no_key = good.clone();
    no_key.tls.as_mut().unwrap().key = pki.join("gone-key.pem");
    let err = open(no_key).unwrap();
    assert!(
        err.contains("private key") && err.contains("gone-key.pem"),
        "{err}"
    );
    let mut no_users = good.clone();
    no_users.users_file = Some(dir.path().join("sql-users.toml"));
    let err = open(no_users).unwrap();
    assert!(err.contains("sql-users.toml"), "{err}");
    let mut nobody = good;
    nobody.users.clear();
    assert!(open(nobody).unwrap().contains("sql.users"));
}
