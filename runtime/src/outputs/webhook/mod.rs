//! The `webhook` output: each alert POSTed to a URL as one JSON object
//! (the same object as the `jsonl` output writes, see
//! [`crate::outputs::alert_json`]), one request per alert, in log order.
//!
//! Each request carries:
//! - `Content-Type: application/json`;
//! - `X-Otwatch-Alert-Id: <id>`: the alert's stable id, also in the body:
//!   a redelivery carries the same id, so the receiver can drop repeats;
//! - with an HMAC key, `<signature_header>: sha256=<hex>`, the
//!   HMAC-SHA256 of the exact body bytes under the shared key (the
//!   receiver recomputes it over the raw body and compares in constant
//!   time);
//! - with a bearer token, `Authorization: Bearer <token>`.
//!
//! Any 2xx answer means the receiver took the alert. Anything else (a
//! refusal, a timeout, no connection) is retried by the output with
//! backoff; the alerts of a batch already taken are not sent again while
//! the rest is retried, so only a restart in between repeats them. Each
//! request is bounded by `timeout`: a receiver that never answers holds
//! this output only, never detection or the other outputs.

pub mod config;
#[cfg(test)]
mod tests;

pub use config::WebhookConfig;

use super::http;
use super::secret::Secret;
use super::{alert_json, AlertOutput, OutputError};
use otwatch_proto::Alert;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;

pub(super) struct Webhook {
    url: Url,
    client: reqwest::Client,
    hmac: Option<ring::hmac::Key>,
    signature_header: HeaderName,
    headers: HeaderMap,
    /// The first alert id of the batch being retried, and how many of its
    /// alerts the receiver already took.
    progress: Option<(String, usize)>,
}

/// The signature header's value for `body` under `key`: `sha256=<hex>`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut text = String::from("sha256=");
    for b in tag.as_ref() {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

impl Webhook {
    pub(super) fn open(name: &str, config: &WebhookConfig) -> anyhow::Result<Self> {
        let (url, client) = config.check(name).map_err(anyhow::Error::msg)?;
        let hmac = super::secret::load(
            name,
            "hmac_key",
            config.hmac_key_file.as_ref(),
            config.hmac_key_env.as_ref(),
        )
        .map_err(anyhow::Error::msg)?
        .map(|key: Secret| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes()));
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            headers.insert(
                HeaderName::try_from(header.as_str())?,
                HeaderValue::try_from(value.as_str())?,
            );
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = super::secret::load(
            name,
            "bearer_token",
            config.bearer_token_file.as_ref(),
            config.bearer_token_env.as_ref(),
        )
        .map_err(anyhow::Error::msg)?
        {
            let mut value =
                HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                    anyhow::anyhow!(
                        "outputs.{name}: the bearer token holds characters a header cannot carry"
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if hmac.is_none() {
            tracing::warn!(output = name, "webhook bodies are not signed: set hmac_key_file or hmac_key_env so the receiver can check they come from otwatch");
        }
        Ok(Webhook {
            url,
            client,
            hmac,
            signature_header: HeaderName::try_from(config.signature_header.as_str())?,
            headers,
            progress: None,
        })
    }

    async fn post(&self, alert: &Alert) -> Result<(), String> {
        let body = serde_json::to_vec(&alert_json(alert)).expect("JSON values serialize");
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("X-Otwatch-Alert-Id", &alert.id);
        if let Some(key) = &self.hmac {
            request = request.header(self.signature_header.clone(), signature(key, &body));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| http::request_error(&self.url, &e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(http::refusal(&self.url, response).await)
        }
    }
}

#[async_trait::async_trait]
impl AlertOutput for Webhook {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        let Some(first) = alerts.first() else {
            return Ok(());
        };
        let mut done = match &self.progress {
            Some((id, n)) if *id == first.id && *n <= alerts.len() => *n,
            _ => 0,
        };
        while done < alerts.len() {
            if let Err(e) = self.post(&alerts[done]).await {
                self.progress = Some((first.id.clone(), done));
                return Err(OutputError::Transient(e));
            }
            done += 1;
        }
        self.progress = None;
        Ok(())
    }
}
