//! The Kafka output against librdkafka's own mock cluster (in-process,
//! three brokers), read back with a real consumer.

use super::*;
use crate::outputs::testing::{alerts, Running};
use crate::outputs::OutputConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use std::path::Path;

const TOPIC: &str = "otwatch-alerts";

fn config(brokers: String) -> KafkaConfig {
    KafkaConfig {
        name: Some("soc-kafka".into()),
        brokers,
        topic: TOPIC.into(),
        client_id: "otwatch-test".into(),
        timeout: Duration::from_secs(3),
    }
}

/// Reads `n` messages of the topic from its start.
async fn read_back(brokers: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "soc-pipeline")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("the messages arrive")
            .unwrap();
        got.push(message.detach());
    }
    got
}

fn open(config: &KafkaConfig) -> (OutputConfig, Box<dyn AlertOutput>) {
    let output = OutputConfig::Kafka(config.clone());
    let opened = output.open(Path::new("/nonexistent")).unwrap();
    (output, opened)
}

#[tokio::test]
async fn alerts_land_on_the_topic_keyed_by_site_with_their_id() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(TOPIC, 3, 3).unwrap();
    let brokers = cluster.bootstrap_servers();
    let (output, opened) = open(&config(brokers.clone()));
    let mut sent = alerts(0, 6);
    sent[4].site = "plant-b".into();
    let running = Running::start(&output, opened, &[&sent[..3], &sent[3..]]).await;
    assert!(running.wait_committed_all(Duration::from_secs(60)).await);
    let got = read_back(&brokers, 6).await;
    let mut ids = Vec::new();
    for message in &got {
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let alert = sent.iter().find(|a| a.id == value["id"]).unwrap();
        assert_eq!(value, crate::outputs::alert_json(alert));
        assert_eq!(message.key().unwrap(), alert.site.as_bytes());
        let headers = message.headers().unwrap();
        let id = headers.iter().find(|h| h.key == "id").unwrap();
        assert_eq!(id.value.unwrap(), alert.id.as_bytes());
        assert_eq!(
            message.timestamp().to_millis(),
            Some(alert.ts_ns / 1_000_000)
        );
        ids.push(alert.id.clone());
    }
    ids.sort();
    let mut expected: Vec<String> = sent.iter().map(|a| a.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    // A site's alerts share a partition, in order.
    let plant_a: Vec<(i32, i64)> = got
        .iter()
        .filter(|m| m.key() == Some(b"plant-a".as_slice()))
        .map(|m| (m.partition(), m.offset()))
        .collect();
    assert!(plant_a.iter().all(|(p, _)| *p == plant_a[0].0));
    assert!(plant_a.windows(2).all(|w| w[0].1 < w[1].1));
    running.stop().await;
}

#[tokio::test]
async fn a_cluster_that_is_down_is_retried_and_nothing_is_committed_until_it_confirms() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.broker_down(1).unwrap();
    let mut config = config(brokers.clone());
    config.name = Some("soc-kafka-down".into());
    let (output, opened) = open(&config);
    let sent = alerts(0, 3);
    let running = Running::start(&output, opened, &[&sent]).await;
    let error = running.wait_retrying(Duration::from_secs(60)).await;
    assert!(error.contains("did not take an alert"), "{error}");
    assert_eq!(running.committed().await, 0);
    cluster.broker_up(1).unwrap();
    assert!(running.wait_committed_all(Duration::from_secs(120)).await);
    let got = read_back(&brokers, 3).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.dedup();
    let expected: Vec<String> = sent.iter().map(|a| a.id.clone()).collect();
    for id in &expected {
        assert!(ids.contains(id), "{id} missing from {ids:?}");
    }
    running.stop().await;
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let refused = |text: &str| {
        let c: OutputConfig = toml::from_str(text).unwrap();
        format!(
            "{:#}",
            crate::outputs::validate(std::slice::from_ref(&c)).unwrap_err()
        )
    };
    let err = refused("type = \"kafka\"\nname = \"k\"\nbrokers = \"kafka-1\"\n");
    assert!(err.starts_with("outputs.k.brokers"), "{err}");
    let err =
        refused("type = \"kafka\"\nname = \"k\"\nbrokers = \"kafka-1:9092\"\ntopic = \"a b\"\n");
    assert!(err.starts_with("outputs.k.topic"), "{err}");
    let err =
        refused("type = \"kafka\"\nname = \"k\"\nbrokers = \"kafka-1:9092\"\ntimeout = \"0s\"\n");
    assert!(err.starts_with("outputs.k.timeout"), "{err}");
    let ok: OutputConfig =
        toml::from_str("type = \"kafka\"\nbrokers = \"kafka-1:9092, kafka-2:9092\"\n").unwrap();
    crate::outputs::validate(&[ok]).unwrap();
}
