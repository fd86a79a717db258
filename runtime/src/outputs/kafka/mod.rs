//! The `kafka` output: alerts onto a topic of a Kafka cluster, for SOC
//! pipelines that read Kafka. It works the same whether otwatch's own event
//! log is local (embedded) or Kafka.
//!
//! Each alert is one message:
//! - key: the site (all of a site's alerts in one partition, in order);
//! - value: the alert as one JSON object, the same as the `jsonl` output
//!   writes ([`crate::outputs::alert_json`]);
//! - header `id`: the alert's stable id (also in the value), so a consumer
//!   can drop redeliveries without parsing;
//! - timestamp: the alert's event time (ms).
//!
//! The producer is idempotent with `acks=all`: the brokers drop the
//! producer's own retries, and a message counts as delivered only once
//! every in-sync replica has it. A batch is committed by the output only
//! after every one of its messages is confirmed; a failure (or `timeout`)
//! retries the batch with backoff, so a consumer may see an alert twice
//! (same `id`) but never miss one. A producer that librdkafka declares
//! failed for good (a fatal idempotence error) is replaced.
//!
//! Built with rdkafka's default features: plaintext connections only (no
//! TLS or SASL in the bundled librdkafka).

pub mod config;
#[cfg(test)]
mod tests;

pub use config::KafkaConfig;

use super::{alert_json, AlertOutput, OutputError};
use otwatch_proto::Alert;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::time::Duration;

pub(super) struct Kafka {
    name: String,
    config: KafkaConfig,
    producer: FutureProducer,
}

fn producer(name: &str, config: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.timeout.as_millis().to_string())
        .create()
        .map_err(|e| anyhow::anyhow!("outputs.{name}: cannot create the Kafka producer: {e}"))
}

impl Kafka {
    pub(super) fn open(name: &str, config: &KafkaConfig) -> anyhow::Result<Self> {
        config.check(name).map_err(anyhow::Error::msg)?;
        Ok(Kafka {
            name: name.to_string(),
            producer: producer(name, config)?,
            config: config.clone(),
        })
    }

    async fn send(&self, alerts: &[Alert]) -> Result<(), String> {
        let bodies: Vec<Vec<u8>> = alerts
            .iter()
            .map(|a| serde_json::to_vec(&alert_json(a)).expect("JSON values serialize"))
            .collect();
        let mut pending = Vec::with_capacity(alerts.len());
        for (alert, body) in alerts.iter().zip(&bodies) {
            let record = FutureRecord::to(&self.config.topic)
                .key(alert.site.as_bytes())
                .payload(body.as_slice())
                .timestamp(alert.ts_ns.div_euclid(1_000_000))
                .headers(OwnedHeaders::new().insert(Header {
                    key: "id",
                    value: Some(alert.id.as_bytes()),
                }));
            // Queued at once: librdkafka batches them and keeps their order.
            let delivery = self.producer.send_result(record).map_err(|(e, _)| {
                format!("cannot queue an alert for {}: {e}", self.config.topic)
            })?;
            pending.push(delivery);
        }
        for delivery in futures::future::join_all(pending).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(format!(
                        "{} did not take an alert on topic {}: {e}",
                        self.config.brokers, self.config.topic
                    ))
                }
                Err(_) => return Err("the Kafka producer was shut down".to_string()),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl AlertOutput for Kafka {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        // librdkafka gives up on each message after `timeout`; the margin
        // covers queueing, so this bound is never the one that trips.
        let bound = self.config.timeout + Duration::from_secs(5);
        let error = match tokio::time::timeout(bound, self.send(alerts)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!(
                "{} did not confirm the alerts within {bound:?}",
                self.config.brokers
            ),
        };
        if let Some(fatal) = self.producer.client().fatal_error() {
            tracing::warn!(output = %self.name, error = ?fatal, "the Kafka producer failed for good; replacing it");
            match producer(&self.name, &self.config) {
                Ok(p) => self.producer = p,
                Err(e) => return Err(OutputError::Transient(format!("{error}; {e}"))),
            }
        }
        Err(OutputError::Transient(error))
    }
}
