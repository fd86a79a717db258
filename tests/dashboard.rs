//! The dashboard in a real browser: Debian's chromium, driven by
//! playwright-core (`tests/browser/dashboard.mjs`), against `otwatch demo
//! --dashboard`. The analyst sees the demo's alerts, opens one with its
//! evidence, acks it (the ack reaches the `alerts` table, under the
//! analyst's name), and sees the asset's cycle-time plot with its learned
//! band; the viewer cannot ack, neither by the page nor by a forged
//! request. The page loads nothing from elsewhere.
//!
//! Prints what it measured (first paint, a 100,000-point plot, the page's
//! weight). With `OTWATCH_SCREENSHOTS=DIR` the screenshots go to DIR (the
//! README's come from there).
//!
//! The API is also checked against its OpenAPI file
//! (`docs/dashboard-api.yaml`) by schemathesis, signed in as an analyst of
//! `otwatch serve`: every answer must be documented and match its schema,
//! valid requests must be taken, invalid ones and ones without the session
//! refused.
//!
//! Needs chromium, playwright-core and schemathesis, which
//! `scripts/test.sh` installs (playwright-core into
//! `~/.cache/otwatch/browser`).

mod common;

use common::sql;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request, with the session cookie when given: (status,
/// headers, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    session: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let cookie = session
        .map(|s| format!("cookie: otwatch_session={s}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{cookie}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn the_api_answers_as_its_openapi_file_says_under_schemathesis() {
    let dir = tempfile::tempdir().unwrap();
    // An analyst made with the CLI, in a users file.
    let mut hash = Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args([
            "dashboard-user",
            "hash",
            "--name",
            "ana",
            "--role",
            "analyst",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(hash.stdin.take().unwrap(), "a long passphrase").unwrap();
    }
    let entry = hash.wait_with_output().unwrap();
    assert!(entry.status.success());
    let users = dir.path().join("dashboard-users.toml");
    std::fs::write(&users, &entry.stdout).unwrap();
    let config = format!(
        "dashboard_listen = \"127.0.0.1:0\"\n\n[history]\nflush_interval = \"1s\"\n\n[dashboard]\nusers_file = \"{}\"\n",
        users.display()
    );
    let (serve, channel, log) = common::start_serve_with_log(dir.path(), &config).await;
    let addr = loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("serve says where the dashboard listens");
        if let Some(rest) = line.split("url=http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Some history to read: 100,000 cycles of one asset, one a second up
    // to now.
    let mut stream = common::open_greeted(channel, "plant-a", "gw-1")
        .await
        .unwrap();
    const CYCLES: u64 = 100_000;
    let now = common::now_ns();
    for first in (1..=CYCLES).step_by(10_000) {
        let mut batch = common::batch("plant-a", "gw-1", first..=first + 9_999);
        for e in &mut batch.events {
            e.ts_ns = now - (CYCLES - e.seq) as i64 * 1_000_000_000;
            e.value = Some(10_000.0 + (e.seq % 101) as f64);
        }
        let ack = stream.send(batch).await.unwrap();
        assert!(ack.refused.is_empty(), "{ack:?}");
    }
    let (status, head, body) = http(
        &addr,
        "POST",
        "/api/signin",
        None,
        r#"{"user":"ana","password":"a long passphrase"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: otwatch_session="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    // The asset's whole series through the API, as the asset page asks
    // for it: how long the server takes to query and send 100,000 points.
    let now_ms = now / 1_000_000;
    let path = format!(
        "/api/series?site=plant-a&asset=line1/press-01&kind=CYCLE&name=cycle&from_ms={}&to_ms={}",
        now_ms - 2 * 86_400_000,
        now_ms + 1
    );
    let get = |path: &str| http(&addr, "GET", path, Some(&session), "").2;
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let started = Instant::now();
        let body = get(&path);
        let took = started.elapsed();
        let series: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if series["t"]
            .as_array()
            .is_some_and(|t| t.len() as u64 == CYCLES)
        {
            println!(
                "dashboard figures: /api/series of {CYCLES} points answered in {} ms ({} bytes of JSON)",
                took.as_millis(),
                body.len()
            );
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "the series never held every cycle: {}",
            &body[..body.len().min(300)]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let t = series["t"].as_array().unwrap();
    assert!(
        t.windows(2).all(|w| w[0].as_i64() < w[1].as_i64()),
        "oldest first"
    );
    // The fleet: the agent's stream is open, its backlog as its batches said.
    let fleet: Value = serde_json::from_str(&get("/api/fleet")).unwrap();
    let agent = &fleet["agents"][0];
    assert_eq!(agent["site"], "plant-a", "{fleet}");
    assert_eq!(agent["connected"], true, "{agent}");
    assert_eq!(agent["queue_backlog"], 0, "{agent}");
    assert_eq!(agent["last_seq"], CYCLES, "{agent}");
    assert!(
        agent["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{agent}"
    );

    let repo = common::repo_dir();
    let out = Command::new("schemathesis")
        .arg("--config-file")
        .arg(repo.join("tests/browser/schemathesis.toml"))
        .arg("run")
        .arg(repo.join("docs/dashboard-api.yaml"))
        .args(["--url", &format!("http://{addr}")])
        // Signing out would end the run's session; the live stream never ends.
        .args([
            "--exclude-path",
            "/api/signout",
            "--exclude-path",
            "/api/live",
        ])
        .args(["--checks", "all", "--max-examples", "25", "--no-color"])
        .args([
            "--seed",
            &std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "7".into()),
        ])
        .env("OTWATCH_SESSION", &session)
        .env("OTWATCH_CSRF", &csrf)
        .output()
        .expect("schemathesis runs (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found answers that differ from docs/dashboard-api.yaml:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing it sent broke a component.
    std::thread::sleep(Duration::from_secs(1));
    let errors: Vec<String> = log.try_iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    common::stop_serve(serve);
}

fn playwright_dir() -> PathBuf {
    std::env::var_os("PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/otwatch/browser")
        })
}

#[test]
fn in_chromium_the_analyst_sees_the_demo_alerts_and_acks_one_and_the_viewer_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args([
            "demo",
            "--dashboard",
            "127.0.0.1:0",
            "--duration",
            "10m",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The accounts and the address come first, then alerts as scenarios play.
    let (mut url, mut analyst, mut viewer, mut alerts) = (None, None, None, 0);
    let deadline = Instant::now() + Duration::from_secs(240);
    while alerts < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo printed {alerts} alert(s) in 240 s"));
        println!("demo: {line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["dashboard:", u] => url = Some(u.to_string()),
            ["sign", "in", "as", "analyst", "with", "password", p, ..] => {
                analyst = Some(p.to_string())
            }
            ["sign", "in", "as", "viewer", "with", "password", p, ..] => {
                viewer = Some(p.to_string())
            }
            ["ALERT", ..] => alerts += 1,
            _ => {}
        }
    }
    let (url, analyst, viewer) = (url.unwrap(), analyst.unwrap(), viewer.unwrap());
    // The history flushes every 2 s.
    std::thread::sleep(Duration::from_secs(3));

    let shots = std::env::var_os("OTWATCH_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(common::repo_dir().join("tests/browser/dashboard.mjs"))
        .args([&url, &analyst, &viewer])
        .arg(&shots)
        .env("PLAYWRIGHT_DIR", playwright_dir())
        .output()
        .expect("node runs (scripts/test.sh installs it with playwright-core and chromium)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("browser: {result}");
    println!(
        "dashboard figures: first paint {:.0} ms, page weight {} bytes, asset plot of {} points {:.0} ms (fetch and draw), 100,000-point plot drawn in {:.0} ms",
        result["first_paint_ms"].as_f64().unwrap(),
        result["page_bytes"],
        result["asset_plot"]["points"],
        result["asset_plot"]["ms"].as_f64().unwrap(),
        result["plot_100k_ms"].as_f64().unwrap(),
    );

    assert!(result["alert_rows"].as_u64().unwrap() >= 5, "{result}");
    assert!(result["evidence_rows"].as_u64().unwrap() >= 1, "{result}");
    assert!(
        result["asset_plot"]["points"].as_u64().unwrap() > 0,
        "{result}"
    );
    assert_eq!(result["fleet_rows"], 3, "{result}");
    for agent in result["fleet_cells"].as_array().unwrap() {
        assert_eq!(agent["Version"], env!("CARGO_PKG_VERSION"), "{agent}");
        assert!(
            agent["Connected"].as_str().unwrap().starts_with("since"),
            "{agent}"
        );
        // The demo's certificates are valid for 397 days.
        assert!(
            agent["Certificate expires"]
                .as_str()
                .unwrap()
                .contains("(39"),
            "{agent}"
        );
        assert_ne!(agent["Backlog"], "", "{agent}");
    }
    assert_eq!(result["requests_elsewhere"], 0, "{result}");
    assert_eq!(result["viewer_ack_disabled"], true, "{result}");
    assert_eq!(result["viewer_forced_ack_status"], 403, "{result}");

    // The click reached SQL: the alert's latest row is acked by the analyst.
    let id = result["acked_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = sql(
            &data,
            &format!(
                "SELECT state, state_by, comment FROM alerts WHERE id = '{id}' \
                 ORDER BY coalesce(state_at, ts) DESC LIMIT 1"
            ),
        );
        if rows.first().is_some_and(|r| r["state"] == "acked") {
            assert_eq!(rows[0]["state_by"], "dashboard:analyst", "{rows:?}");
            assert_eq!(rows[0]["comment"], "checked from the dashboard", "{rows:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert {id} not acked in SQL: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let audit = sql(
        &data,
        &format!("SELECT user FROM audit WHERE command = 'alert.ack' AND alert_id = '{id}'"),
    );
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["user"], "dashboard:analyst");
    // Screenshots of every page were taken.
    for page in ["signin", "alerts", "alert", "asset", "fleet", "overview"] {
        assert!(shots.join(format!("{page}.png")).exists(), "{page}.png");
    }
    let _ = demo.kill();
    let _ = demo.wait();
}
