//! `otwatch serve` with `sql_listen`: the Postgres wire endpoint runs as
//! the `sql` component, events an agent sends become queryable with psql
//! once the history flushes them, and a stop closes the endpoint with the
//! rest of the service. `otwatch sql-user hash` makes the verifiers the
//! endpoint checks passwords against.
//!
//! psql comes from Debian's postgresql-client (scripts/test.sh installs
//! it); without it the psql test says so and passes, except under CI.

mod common;

use common::{batch, open_on};
use otwatch_runtime::{ServerConfig, Service};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long analyst password";

fn otwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otwatch"))
}

/// `otwatch sql-user hash`, with the password on standard input.
fn hash(args: &[&str], password: &str) -> std::process::Output {
    let mut child = otwatch()
        .args(["sql-user", "hash"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

fn psql(addr: SocketAddr, sql: &str) -> std::process::Output {
    Command::new("psql")
        .env("PGPASSWORD", PASSWORD)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={} user=analyst dbname=otwatch sslmode=disable connect_timeout=10",
            addr.port()
        ))
        .args(["-c", sql])
        .output()
        .unwrap()
}

fn config(data_dir: &Path, password_hash: String) -> ServerConfig {
    let mut config: ServerConfig = toml::from_str(&format!(
        "sql_listen = \"127.0.0.1:0\"\n[[sql.users]]\nname = \"analyst\"\npassword_hash = \"{password_hash}\"\n"
    ))
    .unwrap();
    config.data_dir = data_dir.to_path_buf();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.insecure_loopback = true;
    config.outputs = Vec::new();
    config.history.flush_interval = Duration::from_millis(200);
    config.validate().unwrap();
    config
}

#[test]
fn sql_user_hash_makes_a_verifier_from_standard_input() {
    let out = hash(&[], PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verifier = String::from_utf8(out.stdout).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!verifier.contains(PASSWORD));

    let out = hash(&["--name", "grafana", "--site", "plant-lyon"], PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let user = &entry["users"][0];
    assert_eq!(user["name"].as_str(), Some("grafana"));
    assert_eq!(user["sites"][0].as_str(), Some("plant-lyon"));
    assert!(user["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("SCRAM-SHA-256$"));

    let out = hash(&[], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the password is empty"));
}

#[test]
fn serve_refuses_a_plaintext_sql_endpoint_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = otwatch()
        .args(["serve", "--insecure-loopback", "--listen", "127.0.0.1:0"])
        .args(["--sql-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sql_listen") && stderr.contains("[sql.tls]"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_an_agent_sends_are_queryable_with_psql() {
    if !otwatch_testkit::peer_installed("psql (Debian postgresql-client)", "/usr/bin/psql") {
        return;
    }
    let out = hash(&[], PASSWORD);
    let verifier = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(config(dir.path(), verifier)).await.unwrap();
    let sql = service.sql_addr.expect("sql_listen is set");
    let view = service.health.view(service.log.as_ref());
    assert!(view.iter().any(|c| c.name == "sql"), "{view:?}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = open_on(channel, Some("plant-a"), "gw-1").await.unwrap();
    stream.acks.message().await.unwrap().unwrap();
    let ack = stream.send(batch("plant-a", "gw-1", 1..=50)).await.unwrap();
    assert_eq!(ack.durable_seq, 50);

    // Acked events reach the history at its next flush (200 ms here).
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = loop {
        let out = tokio::task::spawn_blocking(move || {
            psql(
                sql,
                "SELECT count(*), max(seq) FROM events WHERE site = 'plant-a'",
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap().trim().to_string();
        if text == "50|50" || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(count, "50|50");
    let refused = tokio::task::spawn_blocking(move || psql(sql, "DELETE FROM events"))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only"));

    drop(stream);
    service.stop(Duration::from_secs(10)).await.unwrap();
    let after = tokio::task::spawn_blocking(move || psql(sql, "SELECT 1"))
        .await
        .unwrap();
    assert!(
        !after.status.success(),
        "the endpoint still answers after the stop"
    );
}
