//! `[[outputs]] type = "splunk_hec"`: options and their checks.

use crate::outputs::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[[outputs]] type = "splunk_hec"`: alerts to Splunk's HTTP Event Collector.
///
/// ```toml
/// [[outputs]]
/// type = "splunk_hec"
/// url = "https://splunk.example.net:8088"
/// token_file = "/etc/otwatch/hec.token"
/// index = "ot_security"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "splunk_hec".
    #[serde(default)]
    pub name: Option<String>,
    /// The collector: `https://host:8088` (the endpoint
    /// `/services/collector/event` is added) or the endpoint's full URL.
    pub url: String,
    /// File holding the HEC token (sent as `Authorization: Splunk <token>`).
    /// One of `token_file` and `token_env` is required.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the HEC token, instead of `token_file`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Index for the events. Default: the token's default index.
    #[serde(default)]
    pub index: Option<String>,
    /// `source` of the events. Default: `otwatch`.
    #[serde(default = "default_source")]
    pub source: String,
    /// `sourcetype` of the events. Default: `otwatch:alert`.
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// `host` of the events: this otwatch server. Default: the machine's
    /// host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Most alerts per request (HEC takes several events in one body).
    /// Default: 100.
    #[serde(default = "default_batch")]
    pub max_events_per_request: usize,
    /// Longest one request may take, connecting included, before it is
    /// abandoned and retried with backoff. Default: 10 s.
    #[serde(
        default = "crate::outputs::http::default_timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
    /// Allow `http://` to a host that is not loopback (the token then
    /// crosses the network in clear). Default: false.
    #[serde(default)]
    pub insecure_http: bool,
    /// CA (default: the system's roots) and client certificate for https.
    #[serde(default)]
    pub tls: TlsFiles,
}

fn default_source() -> String {
    "otwatch".into()
}

fn default_sourcetype() -> String {
    "otwatch:alert".into()
}

fn default_batch() -> usize {
    100
}

/// The endpoint HEC takes JSON events on.
pub const EVENT_PATH: &str = "/services/collector/event";

impl SplunkHecConfig {
    /// Refuses values the output cannot work with, naming the option;
    /// returns the endpoint to POST to (`url`, with [`EVENT_PATH`] when it
    /// has no path) and the client.
    pub fn check(&self, name: &str) -> Result<(reqwest::Url, reqwest::Client), String> {
        let (mut url, client) = crate::outputs::http::check_receiver(
            name,
            &self.url,
            self.insecure_http,
            self.timeout,
            &self.tls,
        )?;
        if url.path() == "/" || url.path().is_empty() {
            url.set_path(EVENT_PATH);
        }
        crate::outputs::secret::require(
            name,
            "token",
            self.token_file.as_ref(),
            self.token_env.as_ref(),
        )?;
        if self.max_events_per_request == 0 {
            return Err(format!(
                "outputs.{name}.max_events_per_request must be at least 1"
            ));
        }
        for (key, value) in [("source", &self.source), ("sourcetype", &self.sourcetype)] {
            if value.is_empty() {
                return Err(format!("outputs.{name}.{key} is empty"));
            }
        }
        if self.index.as_deref() == Some("") {
            return Err(format!(
                "outputs.{name}.index is empty (leave it out for the token's default index)"
            ));
        }
        Ok((url, client))
    }
}
