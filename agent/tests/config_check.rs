//! `otwatch-agent --check` refuses what cannot work before anything runs,
//! with an error that names the key and says what to configure instead.

use std::process::Command;

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_otwatch-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap()
}

fn config(collector: &str) -> String {
    format!(
        "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/var/lib/otwatch-agent\"\n\
         [collector]\n{collector}\n\
         [[sources]]\ntype = \"file\"\npath = \"/var/log/plc/events.jsonl\"\n"
    )
}

#[test]
fn cleartext_to_another_host_is_refused_by_check() {
    let out = check(&config("url = \"http://10.0.0.5:4317\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("collector.url"), "{stderr}");
    assert!(stderr.contains("https://10.0.0.5:PORT"), "{stderr}");
    assert!(stderr.contains("[collector.tls]"), "{stderr}");

    let out = check(&config("url = \"http://127.0.0.1:4317\""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backoff_that_cannot_work_is_refused_by_check() {
    let out = check(&config(
        "url = \"http://127.0.0.1:4317\"\nreconnect_min = \"1m\"\nreconnect_max = \"1s\"",
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("collector.reconnect_min"), "{stderr}");
}
