//! `[[outputs]] type = "kafka"`: options and their checks.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[[outputs]] type = "kafka"`: alerts onto a topic of a Kafka cluster,
/// for SOC pipelines that read Kafka.
///
/// ```toml
/// [[outputs]]
/// type = "kafka"
/// brokers = "kafka-1.soc.example.net:9092,kafka-2.soc.example.net:9092"
/// topic = "otwatch-alerts"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "kafka".
    #[serde(default)]
    pub name: Option<String>,
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// The topic the alerts go to (it must exist, or the cluster must
    /// create topics on first use). Default: `otwatch-alerts`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The client id the brokers see. Default: `otwatch`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Longest the producer tries to get a batch of alerts acknowledged by
    /// every in-sync replica (librdkafka's `message.timeout.ms`) before the
    /// output retries it with backoff. Default: 30 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_topic() -> String {
    "otwatch-alerts".into()
}

fn default_client_id() -> String {
    "otwatch".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A legal Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn is_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaConfig {
    /// Refuses values the output cannot work with, naming the option.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let brokers: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        for broker in &brokers {
            let port = broker.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            match port {
                Some((host, Ok(port))) if !host.is_empty() && port != 0 => {}
                _ => {
                    return Err(format!(
                        "outputs.{name}.brokers: {broker:?} is not host:port (e.g. \"kafka-1:9092,kafka-2:9092\")"
                    ))
                }
            }
        }
        if !is_topic_name(&self.topic) {
            return Err(format!(
                "outputs.{name}.topic: {:?} is not a Kafka topic name (1 to 249 letters, digits, '.', '_' or '-')",
                self.topic
            ));
        }
        if self.client_id.is_empty() {
            return Err(format!("outputs.{name}.client_id is empty"));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > Duration::from_secs(86_400) {
            return Err(format!(
                "outputs.{name}.timeout must be between 1 ms and 24 h"
            ));
        }
        Ok(())
    }
}
