//! The webhook output against a real HTTP server (hyper, on loopback,
//! plain and TLS): signed bodies, a receiver that fails a few times, one
//! that never answers, certificate checks, refused options.

use super::*;
use crate::outputs::testing::{alerts, Answer, HttpReceiver, Pki, Running};
use crate::outputs::{stats, OutputConfig};
use otwatch_eventlog::EventLog;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "0123456789abcdef-shared-webhook-key";

fn config(url: String, key_file: &Path) -> WebhookConfig {
    WebhookConfig {
        name: Some("soar".into()),
        url,
        hmac_key_file: Some(key_file.to_path_buf()),
        hmac_key_env: None,
        signature_header: "X-Otwatch-Signature".into(),
        bearer_token_file: None,
        bearer_token_env: None,
        headers: [("X-Tenant".to_string(), "plant-a".to_string())].into(),
        timeout: Duration::from_secs(2),
        insecure_http: false,
        tls: Default::default(),
    }
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("hmac.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

fn accept_all() -> Answer {
    Arc::new(|_, _| Some((200, "{}".into())))
}

fn open(config: &WebhookConfig) -> (OutputConfig, Box<dyn AlertOutput>) {
    let output = OutputConfig::Webhook(config.clone());
    let opened = output.open(Path::new("/nonexistent")).unwrap();
    (output, opened)
}

#[test]
fn the_signature_is_hmac_sha256_as_rfc_4231_defines_it() {
    // RFC 4231, test case 2.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
    assert_eq!(
        signature(&key, b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[tokio::test]
async fn signed_alerts_reach_the_receiver_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(None, accept_all()).await;
    let config = config(
        format!("http://{}/hooks/otwatch", receiver.addr),
        &key_file(dir.path()),
    );
    let (output, opened) = open(&config);
    let sent = alerts(0, 3);
    let running = Running::start(&output, opened, &[&sent[..1], &sent[1..]]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 3);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    for (request, alert) in got.iter().zip(&sent) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/otwatch");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-tenant"), Some("plant-a"));
        assert_eq!(
            request.header("x-otwatch-alert-id"),
            Some(alert.id.as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, crate::outputs::alert_json(alert));
        // The receiver's check: HMAC over the raw body, constant time.
        let sig = request.header("x-otwatch-signature").unwrap();
        let hex = sig.strip_prefix("sha256=").unwrap();
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, &request.body, &tag).expect("signature verifies");
    }
    let figures = stats::get("soar").unwrap();
    assert_eq!(
        figures.delivered.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    running.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_it_accepts_and_nothing_is_committed_before() {
    let dir = tempfile::tempdir().unwrap();
    // The first three requests fail (503), then every one is accepted.
    let receiver = HttpReceiver::start(
        None,
        Arc::new(|_, n| {
            Some(if n < 3 {
                (503, "{\"error\":\"maintenance\"}".into())
            } else {
                (202, "{}".into())
            })
        }),
    )
    .await;
    let mut config = config(
        format!("http://{}/hook", receiver.addr),
        &key_file(dir.path()),
    );
    config.name = Some("flaky".into());
    let (output, opened) = open(&config);
    let sent = alerts(0, 4);
    let running = Running::start(&output, opened, &[&sent]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("503"), "{error}");
    assert!(error.contains("maintenance"), "{error}");
    assert_eq!(running.committed().await, 0);
    assert!(running.wait_committed_all(Duration::from_secs(60)).await);
    // Each alert was taken exactly once: one retried until it went through,
    // none of those taken sent again.
    let accepted: Vec<String> = receiver.requests()[3..]
        .iter()
        .map(|r| r.header("x-otwatch-alert-id").unwrap().to_string())
        .collect();
    let ids: Vec<String> = sent.iter().map(|a| a.id.clone()).collect();
    assert_eq!(accepted, ids);
    let figures = stats::get("flaky").unwrap();
    assert_eq!(
        figures
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(
        figures.delivered.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    let text = otwatch_metrics::render_families(&stats::families(running.log.as_ref()));
    for line in [
        "otwatch_output_alerts_delivered_total{output=\"flaky\"} 4",
        "otwatch_output_failed_attempts_total{output=\"flaky\"} 3",
        "otwatch_output_retrying{output=\"flaky\"} 0",
        "otwatch_output_lag_records{output=\"flaky\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_holds_only_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let silent = HttpReceiver::start(None, Arc::new(|_, _| None)).await;
    let mut stuck = config(
        format!("http://{}/hook", silent.addr),
        &key_file(dir.path()),
    );
    stuck.name = Some("silent".into());
    stuck.timeout = Duration::from_millis(500);
    let (output, opened) = open(&stuck);
    let mut running = Running::start(&output, opened, &[&alerts(0, 2)]).await;

    // A second output over the same log, as the service runs them.
    let healthy = HttpReceiver::start(None, accept_all()).await;
    let mut other = config(
        format!("http://{}/hook", healthy.addr),
        &key_file(dir.path()),
    );
    other.name = Some("healthy".into());
    let (other_output, other_opened) = open(&other);
    running.spawn_also(&other_output, other_opened);

    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.contains("timed out"), "{error}");
    // The detector's side: alerts still go into the log, and the healthy
    // output delivers them all while the silent one is stuck.
    running.append(&alerts(2, 3)).await;
    let end = running.log.end_offset(otwatch_eventlog::Topic::Alerts);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running.committed_by(&other_output.group()).await < end {
        assert!(
            std::time::Instant::now() < deadline,
            "the healthy output was held up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(healthy.requests().len(), 5);
    assert_eq!(running.committed().await, 0);
    let text = otwatch_metrics::render_families(&stats::families(running.log.as_ref()));
    for line in [
        "otwatch_output_retrying{output=\"silent\"} 1",
        "otwatch_output_lag_records{output=\"silent\"} 2",
        "otwatch_output_lag_records{output=\"healthy\"} 0",
        "otwatch_output_alerts_delivered_total{output=\"healthy\"} 5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    running.stop().await;
}

#[tokio::test]
async fn https_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let receiver = HttpReceiver::start(Some(&pki), accept_all()).await;
    let url = format!("https://localhost:{}/hook", receiver.addr.port());
    let mut trusted = config(url.clone(), &key_file(dir.path()));
    trusted.name = Some("https-ok".into());
    trusted.tls.ca = Some(pki.ca());
    let (output, opened) = open(&trusted);
    let running = Running::start(&output, opened, &[&alerts(0, 2)]).await;
    assert!(running.wait_committed_all(Duration::from_secs(30)).await);
    assert_eq!(receiver.requests().len(), 2);
    running.stop().await;

    // Without the CA (the system's roots do not know it): refused, retried.
    let mut untrusted = config(url, &key_file(dir.path()));
    untrusted.name = Some("https-unknown-ca".into());
    let (output, opened) = open(&untrusted);
    let running = Running::start(&output, opened, &[&alerts(0, 1)]).await;
    let error = running.wait_retrying(Duration::from_secs(30)).await;
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(running.committed().await, 0);
    assert_eq!(receiver.requests().len(), 2);
    running.stop().await;
}

#[test]
fn bad_options_are_refused_naming_the_key_and_secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let refused = |text: String| {
        let c: OutputConfig = toml::from_str(&text).unwrap();
        format!(
            "{:#}",
            crate::outputs::validate(std::slice::from_ref(&c)).unwrap_err()
        )
    };
    let base = format!(
        "type = \"webhook\"\nname = \"soar\"\nhmac_key_file = \"{}\"\n",
        key.display()
    );
    let err = refused(format!("{base}url = \"not a url\"\n"));
    assert!(err.starts_with("outputs.soar.url"), "{err}");
    let err = refused(format!("{base}url = \"http://soar.example.net/x\"\n"));
    assert!(err.contains("plain http to another machine"), "{err}");
    let err = refused(format!("{base}url = \"ftp://soar.example.net/x\"\n"));
    assert!(err.contains("not http or https"), "{err}");
    let err = refused(format!("{base}url = \"https://u:p@soar.example.net/x\"\n"));
    assert!(err.contains("credentials in the URL"), "{err}");
    let err = refused(format!(
        "{base}url = \"https://soar.example.net/x\"\n[headers]\nAuthorization = \"Bearer x\"\n"
    ));
    assert!(err.starts_with("outputs.soar.headers"), "{err}");
    let err = refused(
        "type = \"webhook\"\nname = \"soar\"\nurl = \"http://127.0.0.1:1/\"\nhmac_key_file = \"/nonexistent/key\"\n"
            .to_string(),
    );
    assert!(err.starts_with("outputs.soar.hmac_key_file"), "{err}");
    let err = toml::from_str::<OutputConfig>(&format!(
        "{base}url = \"https://x/\"\nhmac_key = \"inline\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `hmac_key`"), "{err}");

    // The config names where the secret is; neither it nor the opened
    // output's errors show the secret.
    let config: OutputConfig =
        toml::from_str(&format!("{base}url = \"http://127.0.0.1:1/\"\n")).unwrap();
    assert!(!format!("{config:?}").contains(KEY));
    crate::outputs::validate(std::slice::from_ref(&config)).unwrap();
}

#[tokio::test]
async fn the_service_runs_a_configured_webhook_and_reports_it_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(None, accept_all()).await;
    let text = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[outputs]]\ntype = \"webhook\"\nname = \"svc-hook\"\nurl = \"http://{}/hook\"\nhmac_key_file = \"{}\"\n",
        dir.path().join("data").display(),
        receiver.addr,
        key_file(dir.path()).display()
    );
    let path = dir.path().join("otwatch.toml");
    std::fs::write(&path, text).unwrap();
    let mut config = crate::ServerConfig::load(&path).unwrap();
    config.insecure_loopback = true;
    let service = crate::Service::start(config).await.unwrap();
    // What the detector does: append alerts to the log's alerts topic.
    let sent = alerts(0, 2);
    let batch = otwatch_proto::arrow::alerts_to_batch(&sent).unwrap();
    service
        .log
        .append(
            otwatch_eventlog::Topic::Alerts,
            vec![otwatch_eventlog::Record {
                batch,
                producer: None,
            }],
        )
        .await
        .unwrap();
    assert!(service.wait_caught_up(Duration::from_secs(30)).await);
    assert_eq!(receiver.requests().len(), 2);
    let metrics = crate::metrics::render(
        &service.collector,
        &service.health,
        &service.counters,
        &service.log,
    );
    for line in [
        "otwatch_output_alerts_delivered_total{output=\"svc-hook\"} 2",
        "otwatch_output_lag_records{output=\"svc-hook\"} 0",
        "otwatch_component_lag_records{component=\"output-svc-hook\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    service.stop(Duration::from_secs(10)).await.unwrap();
}

/// Throughput to a local HTTP receiver, for the README's figures (not a
/// pass or fail criterion): `cargo test -p otwatch-runtime --lib
/// webhook_throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn webhook_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(None, accept_all()).await;
    let mut config = config(
        format!("http://{}/hook", receiver.addr),
        &key_file(dir.path()),
    );
    config.name = Some("throughput".into());
    let (output, opened) = open(&config);
    let n: u64 = 5_000;
    let sent = alerts(0, n);
    let records: Vec<&[otwatch_proto::Alert]> = sent.chunks(64).collect();
    // The log holds them all before the output starts.
    let running = Running::start(&output, opened, &records).await;
    let started = std::time::Instant::now();
    assert!(running.wait_committed_all(Duration::from_secs(600)).await);
    let took = started.elapsed();
    assert_eq!(receiver.requests().len(), n as usize);
    println!(
        "webhook (signed, one request per alert, keep-alive): {n} alerts in {:.2} s, {:.0} alerts/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    running.stop().await;
}
