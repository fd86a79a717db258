//! A collector cannot be built from settings that would refuse every agent:
//! the error names the key.

mod common;

use otwatch_collector::tls::ServerTlsConfig;
use otwatch_collector::{Collector, CollectorConfig};
use otwatch_proto::limits::Limits;

fn refusal(config: CollectorConfig) -> String {
    let dir = tempfile::tempdir().unwrap();
    match Collector::new(common::open_log(dir.path()), config) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_settings_are_refused_by_name() {
    assert_eq!(refusal(CollectorConfig::default()), "accepted");
    assert_eq!(
        refusal(CollectorConfig {
            max_connections: 0,
            ..Default::default()
        }),
        "invalid collector configuration: collector.max_connections = 0 would refuse every agent: give how many connections to serve at once (default 1024)"
    );
    assert!(refusal(CollectorConfig {
        max_connections_per_ip: 0,
        ..Default::default()
    })
    .contains("collector.max_connections_per_ip = 0"));
    for (limits, key) in [
        (
            Limits {
                max_events_per_batch: 0,
                ..Default::default()
            },
            "collector.limits.max_events_per_batch = 0",
        ),
        (
            Limits {
                max_message_bytes: 0,
                ..Default::default()
            },
            "collector.limits.max_message_bytes = 0",
        ),
        (
            Limits {
                max_seq_gap: 0,
                ..Default::default()
            },
            "collector.limits.max_seq_gap = 0",
        ),
    ] {
        let err = refusal(CollectorConfig {
            limits,
            ..Default::default()
        });
        assert!(err.contains(key), "{err}");
    }
    let err = refusal(CollectorConfig {
        tls: Some(ServerTlsConfig {
            cert: "".into(),
            key: "k.pem".into(),
            client_ca: "ca.pem".into(),
            crl: None,
        }),
        ..Default::default()
    });
    assert!(err.contains("collector.tls.cert is empty"), "{err}");
}
