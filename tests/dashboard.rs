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
//! Needs chromium and playwright-core, which `scripts/test.sh` installs
//! (playwright-core into `~/.cache/otwatch/browser`).

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn sql(data_dir: &Path, query: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_otwatch"))
        .args(["sql", "--format", "json", "--data-dir"])
        .arg(data_dir)
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
