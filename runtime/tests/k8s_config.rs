//! The otwatch.toml files that the Kubernetes manifests ship (k8s/base and
//! each overlay that replaces it) load with otwatch's own config parser, as
//! every role reads them at start: unknown keys and unusable values refused.
//! `scripts/k8s-validate.sh` checks that the rendered ConfigMaps carry
//! exactly these files.
//!
//! The distributed deployment needs keys of the Kafka event log and of
//! object storage. Until this build accepts `[log] kind = "kafka"`, those
//! keys (and only those) are set aside and the rest of each file must load;
//! from then on the whole file must load, with no key set aside.

use otwatch_runtime::ServerConfig;
use std::path::{Path, PathBuf};

/// The keys of the distributed deployment, as (table path, key).
const DISTRIBUTED_KEYS: &[(&[&str], &str)] = &[
    (&["log"], "kind"),
    (&["log"], "brokers"),
    (&["log"], "events_topic"),
    (&["log"], "alerts_topic"),
    (&["log"], "control_topic"),
    (&["log"], "producers_topic"),
    (&["log"], "partitions"),
    (&["log"], "replication_factor"),
    (&["log"], "security"),
];

/// Keys of the history and detector state on object storage, which the
/// manifests are written for and this build does not know yet: set aside
/// while a config holding them is refused.
const OBJECT_STORE_KEYS: &[(&[&str], &str)] =
    &[(&["history"], "url"), (&["detector"], "checkpoint_url")];

fn object_store_accepted() -> bool {
    toml::from_str::<ServerConfig>("[history]\nurl = \"s3://bucket/prefix\"\n").is_ok()
}

fn shipped_configs() -> Vec<PathBuf> {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let mut files = vec![k8s.join("base/otwatch.toml")];
    for overlay in std::fs::read_dir(k8s.join("overlays")).unwrap() {
        let file = overlay.unwrap().path().join("otwatch.toml");
        if file.exists() {
            files.push(file);
        }
    }
    files.sort();
    files
}

fn kafka_log_accepted() -> bool {
    toml::from_str::<ServerConfig>("[log]\nkind = \"kafka\"\n").is_ok()
}

/// Removes `key` from the table at `path`; true if it was there.
fn remove(value: &mut toml::Table, path: &[&str], key: &str) -> bool {
    let mut table = value;
    for part in path {
        match table.get_mut(*part).and_then(|v| v.as_table_mut()) {
            Some(t) => table = t,
            None => return false,
        }
    }
    table.remove(key).is_some()
}

#[test]
fn the_shipped_configs_load() {
    let files = shipped_configs();
    assert!(files.len() >= 2, "expected base and dev configs: {files:?}");
    let strict = kafka_log_accepted();
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", file.display()));
        let mut set_aside = Vec::new();
        if !object_store_accepted() {
            for (path, key) in OBJECT_STORE_KEYS {
                if remove(&mut table, path, key) {
                    set_aside.push(format!("{}.{key}", path.join(".")));
                }
            }
        }
        if !strict {
            for (path, key) in DISTRIBUTED_KEYS {
                if remove(&mut table, path, key) {
                    set_aside.push(format!("{}.{key}", path.join(".")));
                }
            }
            assert!(
                set_aside.iter().any(|k| k == "log.kind"),
                "{} should use the Kafka log",
                file.display()
            );
        }
        let checked = dir.path().join("otwatch.toml");
        std::fs::write(&checked, toml::to_string(&table).unwrap()).unwrap();
        let config = ServerConfig::load(&checked)
            .unwrap_or_else(|e| panic!("{} is refused: {e:#}", file.display()));
        assert!(config.collector.tls.is_some(), "{}", file.display());
        assert!(config.metrics_listen.is_some(), "{}", file.display());
        if set_aside.is_empty() {
            eprintln!("{}: loads whole", file.display());
        } else {
            eprintln!(
                "{}: loads without the keys this build does not know yet: {}",
                file.display(),
                set_aside.join(", ")
            );
        }
    }
}
