//! The Splunk HEC output against a real HTTP server (hyper, on loopback)
//! that checks requests the way HEC does: the endpoint, `Authorization:
//! Splunk <token>`, and a body of event objects each with `time`, `host`,
//! `source`, `sourcetype` and `event`; it answers as HEC answers.

use super::*;
use crate::outputs::testing::{alerts, Answer, HttpReceiver, Received, Running};
use crate::outputs::OutputConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "5f3c2a1e-9b7d-4c6e-8a0f-1d2e3f4a5b6c";

/// HEC's own checks, and its answers.
fn hec(received: &Received) -> (u16, String) {
    if received.path != "/services/collector/event" {
        return (
            404,
            r#"{"text":"The requested URL was not found on this server.","code":404}"#.into(),
        );
    }
    if received.header("authorization") != Some(&format!("Splunk {TOKEN}")) {
        return (403, r#"{"text":"Invalid token","code":4}"#.into());
    }
    let events: Result<Vec<serde_json::Value>, _> =
        serde_json::Deserializer::from_slice(&received.body)
            .into_iter::<serde_json::Value>()
            .collect();
    let Ok(events) = events else {
        return (400, r#"{"text":"Invalid data format","code":6}"#.into());
    };
    for event in &events {
        let well_formed = event["time"].is_f64()
            && event["host"].is_string()
            && event["source"].is_string()
            && event["sourcetype"].is_string()
            && event["event"].is_object();
        if !well_formed {
            return (400, r#"{"text":"Invalid data format","code":6}"#.into());
        }
    }
    if events.is_empty() {
        return (400, r#"{"text":"No data","code":5}"#.into());
    }
    (200, r#"{"text":"Success","code":0}"#.into())
}

fn events(received: &Received) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(&received.body)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

fn config(base: String, token_file: &Path) -> SplunkHecConfig {
    SplunkHecConfig {
        name: Some("splunk".into()),
        url: base,
        token_file: Some(token_file.to_path_buf()),
        token_env: None,
        index: Some("ot_security".into()),
        source: "otwatch".into(),
        sourcetype: "otwatch:alert".into(),
        host: Some("otwatch-central".into()),
        max_events_per_request: 2,
        timeout: Duration::from_secs(5),
        insecure_http: false,
        tls: Default::default(),
    }
}

fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("hec.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn open(config: &SplunkHecConfig) -> (OutputConfig, Box<dyn AlertOutput>) {
    let output = OutputConfig::SplunkHec(config.clone());
    let opened = output.open(Path::new("/nonexistent")).unwrap();
    (output, opened)
}

#[tokio::test]
async fn batches_of_events_reach_hec_in_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let answer: Answer = Arc::new(|r, _| Some(hec(r)));
    let receiver = HttpReceiver::start(None, answer).await;
    let config = config(
        format!("http://{}", receiver.addr),
        &token_file(dir.path(), TOKEN),
    );
    let (output, opened) = open(&config);
    let sent = alerts(0, 5);
    let running = Running::start(&output, opened, &[&sent]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let requests = receiver.requests();
    // Five alerts, at most two per request.
    assert_eq!(requests.len(), 3, "{requests:?}");
    let got: Vec<serde_json::Value> = requests.iter().flat_map(events).collect();
    assert_eq!(got.len(), 5);
    for (event, alert) in got.iter().zip(&sent) {
        assert_eq!(event["host"], "otwatch-central");
        assert_eq!(event["source"], "otwatch");
        assert_eq!(event["sourcetype"], "otwatch:alert");
        assert_eq!(event["index"], "ot_security");
        let time = event["time"].as_f64().unwrap();
        assert_eq!((time * 1000.0).round() as i64, alert.ts_ns / 1_000_000);
        assert_eq!(event["event"], crate::outputs::alert_json(alert));
    }
    running.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_retried_with_hecs_reason_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let answer: Answer = Arc::new(|r, _| Some(hec(r)));
    let receiver = HttpReceiver::start(None, answer).await;
    let wrong = "not-the-token-0000";
    let mut config = config(
        format!("http://{}", receiver.addr),
        &token_file(dir.path(), wrong),
    );
    config.name = Some("splunk-bad-token".into());
    let (output, opened) = open(&config);
    let running = Running::start(&output, opened, &[&alerts(0, 1)]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("403"), "{error}");
    assert!(error.contains("Invalid token"), "{error}");
    assert!(!error.contains(wrong), "{error}");
    assert_eq!(running.committed().await, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_busy_indexer_is_retried_without_sending_taken_requests_again() {
    let dir = tempfile::tempdir().unwrap();
    // The second request is refused twice as HEC does when its queue is
    // full, then taken.
    let answer: Answer = Arc::new(|r, n| {
        Some(if n == 1 || n == 2 {
            (503, r#"{"text":"Server is busy","code":9}"#.into())
        } else {
            hec(r)
        })
    });
    let receiver = HttpReceiver::start(None, answer).await;
    let mut config = config(
        format!("http://{}", receiver.addr),
        &token_file(dir.path(), TOKEN),
    );
    config.name = Some("splunk-busy".into());
    let (output, opened) = open(&config);
    let sent = alerts(0, 6);
    let running = Running::start(&output, opened, &[&sent]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("Server is busy"), "{error}");
    assert!(running.wait_committed_all(Duration::from_secs(60)).await);
    let requests = receiver.requests();
    let taken: Vec<String> = requests
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != 1 && *n != 2)
        .flat_map(|(_, r)| events(r))
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    let ids: Vec<String> = sent.iter().map(|a| a.id.clone()).collect();
    assert_eq!(taken, ids, "every alert taken once, in order");
    running.stop().await;
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), TOKEN);
    let refused = |text: String| {
        let c: OutputConfig = toml::from_str(&text).unwrap();
        format!(
            "{:#}",
            crate::outputs::validate(std::slice::from_ref(&c)).unwrap_err()
        )
    };
    let err =
        refused("type = \"splunk_hec\"\nname = \"s\"\nurl = \"https://splunk:8088\"\n".into());
    assert!(
        err.contains("outputs.s: token_file or token_env is required"),
        "{err}"
    );
    let err = refused(format!(
        "type = \"splunk_hec\"\nname = \"s\"\nurl = \"splunk:8088\"\ntoken_file = \"{}\"\n",
        token.display()
    ));
    assert!(err.starts_with("outputs.s.url"), "{err}");
    let err = refused(
        "type = \"splunk_hec\"\nname = \"s\"\nurl = \"https://splunk:8088\"\ntoken_env = \"OTWATCH_TEST_UNSET_HEC_TOKEN\"\n".into(),
    );
    assert!(err.starts_with("outputs.s.token_env"), "{err}");
    let err = refused(format!(
        "type = \"splunk_hec\"\nname = \"s\"\nurl = \"https://splunk:8088\"\ntoken_file = \"{}\"\nmax_events_per_request = 0\n",
        token.display()
    ));
    assert!(err.starts_with("outputs.s.max_events_per_request"), "{err}");
    let err = toml::from_str::<OutputConfig>(
        "type = \"splunk_hec\"\nurl = \"https://x\"\ntoken = \"inline\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `token`"), "{err}");
    let err = toml::from_str::<OutputConfig>("type = \"splunk\"\nurl = \"https://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `splunk`"), "{err}");

    let c = SplunkHecConfig {
        url: "https://splunk.example.net:8088".into(),
        ..config(String::new(), &token)
    };
    assert_eq!(
        c.check("s").unwrap().0.as_str(),
        "https://splunk.example.net:8088/services/collector/event"
    );
    let c = SplunkHecConfig {
        url: "https://splunk.example.net/custom/hec".into(),
        ..c
    };
    assert_eq!(c.check("s").unwrap().0.path(), "/custom/hec");
    assert!(!format!("{c:?}").contains(TOKEN));
}
