//! The `mqtt` source: subscribes to topics of an MQTT 3.1.1 broker
//! (rumqttc) and turns JSON payloads into events ([`config`] holds the
//! mapping), or reads the Sparkplug B edge nodes of a group
//! ([`sparkplug`]).
//!
//! The source only subscribes: it publishes nothing (no Sparkplug command,
//! no rebirth request, no will), so it cannot act on a controller.
//!
//! # Delivery
//!
//! Subscriptions are QoS 1, and a message is acknowledged to the broker only
//! once its events are in the agent's queue (durable): a crash before that
//! has the broker send it again. With `clean_session = false` (the default)
//! the broker keeps the session under `client_id` while the agent is away
//! (stopped, restarting, cut off) and delivers the QoS 1 messages published
//! meanwhile when it is back. At least once: a message whose
//! acknowledgement was lost with the connection is delivered twice.
//!
//! # Events
//!
//! Per message, with `asset` from the subscription's template and `ts` from
//! its `timestamp` pointer (Unix ms, or RFC 3339 text) or the agent's
//! clock: a SAMPLE per `samples` entry found (a number; `true`/`false` as
//! 1/0), a STATE per `states` entry found (`text` the value), attribute
//! `topic`. With neither mapping, every top-level number is a SAMPLE named
//! by its key. A payload that is not JSON, or a mapped value of the wrong
//! type, is logged with the topic (once per topic until it is good again),
//! counted (`inputs_rejected`) and skipped; the message is still
//! acknowledged (sending it again would not mend it).
//!
//! With `format = "sparkplug_b"`, the messages of a Sparkplug group's edge
//! nodes and devices are read instead ([`sparkplug`]: births, data by alias,
//! deaths, `seq` and `bdSeq`); their bad payloads go the same way.
//!
//! # Failures
//!
//! A broker that is down or refuses the connection is retried after 1 s,
//! doubling up to `reconnect_max`. The broker is one "device" on
//! `/metrics` (`source="mqtt"`, `device` = the broker address): polls
//! count the messages taken, errors the failed connections; the log has a
//! line when the connection fails and when it is back.

pub mod config;
pub mod sparkplug;
#[cfg(test)]
mod tests;

pub use config::MqttSourceConfig;

use super::poll::{now_ns, sleep_or_stop, Backoff, DeviceLink, DeviceMetrics};
use super::SourceMetrics;
use crate::handle::QueueHandle;
use config::{PayloadFormat, SubscriptionConfig};
use otwatch_proto::limits::Limits;
use otwatch_proto::{ControllerEvent, EventKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The broker's metrics (one "device").
pub fn device_metrics(config: &MqttSourceConfig) -> Vec<Arc<DeviceMetrics>> {
    vec![Arc::new(DeviceMetrics::new("mqtt", &config.broker))]
}

/// Whether a topic matches a filter (`+` one level, `#` the rest).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The asset of `topic` by `template` (`{N}` = level N).
pub fn asset(template: &str, topic: &str) -> String {
    let levels: Vec<&str> = topic.split('/').collect();
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let n: usize = rest[open + 1..close].parse().unwrap_or(usize::MAX);
        out.push_str(levels.get(n).copied().unwrap_or(""));
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// The events of one message on `topic` matching `sub`, at `now_ns`; or
/// why its payload cannot be read.
pub fn events(
    sub: &SubscriptionConfig,
    topic: &str,
    payload: &[u8],
    now_ns: i64,
) -> Result<Vec<ControllerEvent>, String> {
    let json: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let ts_ns = match &sub.timestamp {
        None => now_ns,
        Some(pointer) => match json.pointer(pointer) {
            Some(Value::Number(ms)) => ms
                .as_f64()
                .filter(|ms| ms.is_finite() && *ms > 0.0 && *ms < 1e13)
                .map(|ms| (ms.round() as i64) * 1_000_000)
                .ok_or_else(|| format!("{pointer} = {ms} is not Unix time in ms"))?,
            Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .ok_or_else(|| format!("{pointer} = {text:?} is not an RFC 3339 time"))?,
            Some(other) => return Err(format!("{pointer} = {other} is not a time")),
            None => return Err(format!("{pointer} (the timestamp) is missing")),
        },
    };
    let asset = asset(&sub.asset, topic);
    let event = |kind: EventKind, name: &str| ControllerEvent {
        ts_ns,
        asset: asset.clone(),
        kind: kind as i32,
        name: name.to_string(),
        attrs: HashMap::from([("topic".to_string(), topic.to_string())]),
        ..Default::default()
    };
    let mut out = Vec::new();
    if sub.samples.is_empty() && sub.states.is_empty() {
        if let Value::Object(fields) = &json {
            for (key, value) in fields {
                if let Some(v) = value.as_f64() {
                    let mut e = event(EventKind::Sample, key);
                    e.value = Some(v);
                    out.push(e);
                }
            }
        }
    }
    for (pointer, name) in &sub.samples {
        let value = match json.pointer(pointer) {
            None | Some(Value::Null) => continue,
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(other) => return Err(format!("{pointer} = {other} is not a number")),
        };
        let mut e = event(EventKind::Sample, name);
        e.value = Some(value);
        out.push(e);
    }
    for (pointer, name) in &sub.states {
        let text = match json.pointer(pointer) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            Some(other) => return Err(format!("{pointer} = {other} is not a state")),
        };
        let mut e = event(EventKind::State, name);
        e.text = Some(text);
        out.push(e);
    }
    Ok(out)
}

/// The rustls configuration of `tls`, ring as its provider.
fn client_tls(tls: &config::MqttTlsConfig) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("mqtt source: tls.ca {}: {e}", tls.ca.display()))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("mqtt source: tls.ca {}: {e}", tls.ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("mqtt source: tls.cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("mqtt source: tls.key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("mqtt source: tls.cert and tls.key: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Runs the source until `shutdown` turns true. Fails when its TLS files
/// or password cannot be read, or the queue stops for good.
pub async fn run(
    config: MqttSourceConfig,
    limits: Limits,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    devices: Vec<Arc<DeviceMetrics>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (host, port) = config.host_port()?;
    let mut options = MqttOptions::new(&config.client_id, host, port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(user) = &config.username {
        options.set_credentials(
            user,
            super::read_password(
                config.password_file.as_deref(),
                config.password_env.as_deref(),
            )
            .map_err(|e| format!("mqtt source: {e}"))?
            .unwrap_or_default(),
        );
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            client_tls(tls)?,
        ))));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let device = devices.into_iter().next().expect("one broker");
    let mut link = DeviceLink::new(device, metrics.clone(), limits, queue);
    let mut backoff = Backoff::new(Duration::from_secs(1), config.reconnect_max);
    // Topics whose payloads are refused, with the reason logged.
    let mut bad_topics: HashMap<String, String> = HashMap::new();
    // The Sparkplug edge nodes' births, seq and bdSeq.
    let mut sparkplug = sparkplug::Sparkplug::default();
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(
                    broker = %config.broker,
                    session_present = ack.session_present,
                    "mqtt connected"
                );
                // Subscribing again is harmless, and covers a broker that
                // lost the session.
                for sub in &config.subscriptions {
                    client
                        .try_subscribe(sub.filter(), QoS::AtLeastOnce)
                        .map_err(|e| format!("mqtt subscribe: {e}"))?;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let started = Instant::now();
                let topic = publish.topic.clone();
                let taken = match config
                    .subscriptions
                    .iter()
                    .find(|s| matches(&s.filter(), &topic))
                {
                    None => Ok(Vec::new()),
                    Some(sub) if sub.format == PayloadFormat::SparkplugB => {
                        sparkplug.message(&topic, &publish.payload, now_ns(), &metrics)
                    }
                    Some(sub) => events(sub, &topic, &publish.payload, now_ns()),
                };
                match taken {
                    Ok(events) => {
                        if let Some(was) = bad_topics.remove(&topic) {
                            tracing::info!(%topic, %was, "mqtt topic has valid payloads again");
                        }
                        link.take(events).await?;
                    }
                    Err(reason) => {
                        metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        link.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        if bad_topics.get(&topic) != Some(&reason) {
                            tracing::warn!(%topic, %reason, "skipping an mqtt message (logged once until the topic's payloads are valid again; counted each time)");
                            bad_topics.insert(topic, reason);
                        }
                    }
                }
                // Only now, its events durable, may the broker forget it.
                client
                    .try_ack(&publish)
                    .map_err(|e| format!("mqtt ack: {e}"))?;
                link.succeeded(started.elapsed());
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.next_wait();
                link.failed(&format!("broker {}: {e}", config.broker), Some(wait));
                if sleep_or_stop(wait, &mut shutdown).await {
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}
