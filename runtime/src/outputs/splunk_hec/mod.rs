//! The `splunk_hec` output: alerts to Splunk's HTTP Event Collector.
//!
//! Each request is a `POST` to `/services/collector/event` with
//! `Authorization: Splunk <token>` and a body of up to
//! `max_events_per_request` events, one JSON object per alert, separated by
//! newlines (HEC's batch form):
//!
//! ```json
//! {"time":1714636800.123,"host":"otwatch-1","source":"otwatch","sourcetype":"otwatch:alert","index":"ot","event":{"id":"9f2c…","site":"plant-a",…}}
//! ```
//!
//! `time` is the alert's event time in seconds with milliseconds; `event`
//! is the same object the `jsonl` output writes (with the stable `id` to
//! dedupe on); `index` only when configured. HEC answers 200 with
//! `{"text":"Success","code":0}` once it took the whole body; any other
//! answer (a bad token, a busy or full indexer: HEC's `code` and `text`
//! are shown) is retried with backoff, and requests of a batch already
//! taken are not sent again meanwhile. With HEC's indexer acknowledgement
//! off (its default), "taken" is as far as HEC confirms.

pub mod config;
#[cfg(test)]
mod tests;

pub use config::SplunkHecConfig;

use super::http;
use super::{alert_json, AlertOutput, OutputError};
use otwatch_proto::Alert;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;

pub(super) struct SplunkHec {
    url: Url,
    client: reqwest::Client,
    authorization: HeaderValue,
    host: String,
    source: String,
    sourcetype: String,
    index: Option<String>,
    per_request: usize,
    /// The first alert id of the batch being retried, and how many of its
    /// alerts HEC already took.
    progress: Option<(String, usize)>,
}

impl SplunkHec {
    pub(super) fn open(name: &str, config: &SplunkHecConfig) -> anyhow::Result<Self> {
        let (url, client) = config.check(name).map_err(anyhow::Error::msg)?;
        let token = super::secret::require(
            name,
            "token",
            config.token_file.as_ref(),
            config.token_env.as_ref(),
        )
        .map_err(anyhow::Error::msg)?;
        let mut authorization = HeaderValue::try_from(format!("Splunk {}", token.expose()))
            .map_err(|_| {
                anyhow::anyhow!("outputs.{name}: the token holds characters a header cannot carry")
            })?;
        authorization.set_sensitive(true);
        Ok(SplunkHec {
            url,
            client,
            authorization,
            host: config.host.clone().unwrap_or_else(super::format::this_host),
            source: config.source.clone(),
            sourcetype: config.sourcetype.clone(),
            index: config.index.clone(),
            per_request: config.max_events_per_request,
            progress: None,
        })
    }

    /// The HEC body for `alerts`: one event object per line.
    fn body(&self, alerts: &[Alert]) -> Vec<u8> {
        let mut body = Vec::new();
        for alert in alerts {
            let mut event = serde_json::json!({
                "time": alert.ts_ns.div_euclid(1_000_000) as f64 / 1000.0,
                "host": self.host,
                "source": self.source,
                "sourcetype": self.sourcetype,
                "event": alert_json(alert),
            });
            if let Some(index) = &self.index {
                event["index"] = serde_json::Value::String(index.clone());
            }
            serde_json::to_writer(&mut body, &event).expect("JSON values serialize");
            body.push(b'\n');
        }
        body
    }

    async fn post(&self, alerts: &[Alert]) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(self.body(alerts))
            .send()
            .await
            .map_err(|e| http::request_error(&self.url, &e))?;
        if !response.status().is_success() {
            return Err(http::refusal(&self.url, response).await);
        }
        // HEC says `{"text":"Success","code":0}`; a 200 with another code
        // is not a success either.
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(answer) if answer["code"].as_i64().unwrap_or(0) != 0 => Err(format!(
                "{} answered code {}: {}",
                http::redacted(&self.url),
                answer["code"],
                answer["text"].as_str().unwrap_or("")
            )),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl AlertOutput for SplunkHec {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        let Some(first) = alerts.first() else {
            return Ok(());
        };
        let mut done = match &self.progress {
            Some((id, n)) if *id == first.id && *n <= alerts.len() => *n,
            _ => 0,
        };
        while done < alerts.len() {
            let end = (done + self.per_request).min(alerts.len());
            if let Err(e) = self.post(&alerts[done..end]).await {
                self.progress = Some((first.id.clone(), done));
                return Err(OutputError::Transient(e));
            }
            done = end;
        }
        self.progress = None;
        Ok(())
    }
}
