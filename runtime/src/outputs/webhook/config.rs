//! `[[outputs]] type = "webhook"`: options and their checks.

use crate::outputs::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[[outputs]] type = "webhook"`: each alert POSTed as JSON to a URL.
///
/// ```toml
/// [[outputs]]
/// type = "webhook"
/// name = "soar"
/// url = "https://soar.example.net/hooks/otwatch"
/// hmac_key_file = "/etc/otwatch/soar-hmac.key"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "webhook".
    #[serde(default)]
    pub name: Option<String>,
    /// Where to POST. `https://`, or `http://` to a loopback address (or
    /// anywhere with `insecure_http = true`).
    pub url: String,
    /// File holding the shared key of the HMAC-SHA256 signature of each
    /// body (see `signature_header`). One of `hmac_key_file` and
    /// `hmac_key_env`; without either, bodies are not signed.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// Environment variable holding the HMAC key, instead of `hmac_key_file`.
    #[serde(default)]
    pub hmac_key_env: Option<String>,
    /// Header carrying the signature, `sha256=<hex of HMAC-SHA256(key, body)>`.
    /// Default: `X-Otwatch-Signature`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// File holding a token sent as `Authorization: Bearer <token>`, for
    /// receivers that want one. Optional; or `bearer_token_env`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token, instead of `bearer_token_file`.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// More headers to send, e.g. `{ "X-Tenant" = "plant-a" }`. Not for
    /// secrets: `Authorization`, `Cookie` and the like are refused here
    /// (use `bearer_token_file`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one request may take, connecting included, before it is
    /// abandoned and retried with backoff. Default: 10 s.
    #[serde(
        default = "crate::outputs::http::default_timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
    /// Allow `http://` to a host that is not loopback (alerts then cross the
    /// network in clear). Default: false.
    #[serde(default)]
    pub insecure_http: bool,
    /// CA (default: the system's roots) and client certificate for https.
    #[serde(default)]
    pub tls: TlsFiles,
}

fn default_signature_header() -> String {
    "X-Otwatch-Signature".into()
}

/// Header names that carry credentials: refused in `headers`.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
];

impl WebhookConfig {
    /// Refuses values the output cannot work with, naming the option;
    /// returns the receiver's URL and the client.
    pub fn check(&self, name: &str) -> Result<(reqwest::Url, reqwest::Client), String> {
        let receiver = crate::outputs::http::check_receiver(
            name,
            &self.url,
            self.insecure_http,
            self.timeout,
            &self.tls,
        )?;
        reqwest::header::HeaderName::try_from(self.signature_header.as_str()).map_err(|e| {
            format!(
                "outputs.{name}.signature_header: {:?} is not a header name: {e}",
                self.signature_header
            )
        })?;
        for (header, value) in &self.headers {
            let parsed = reqwest::header::HeaderName::try_from(header.as_str()).map_err(|e| {
                format!("outputs.{name}.headers: {header:?} is not a header name: {e}")
            })?;
            if SECRET_HEADERS.contains(&parsed.as_str()) {
                return Err(format!(
                    "outputs.{name}.headers: {header} carries credentials and must not be written in the config; use bearer_token_file or bearer_token_env"
                ));
            }
            reqwest::header::HeaderValue::try_from(value.as_str())
                .map_err(|e| format!("outputs.{name}.headers.{header}: not a header value: {e}"))?;
        }
        crate::outputs::secret::load(
            name,
            "hmac_key",
            self.hmac_key_file.as_ref(),
            self.hmac_key_env.as_ref(),
        )?;
        crate::outputs::secret::load(
            name,
            "bearer_token",
            self.bearer_token_file.as_ref(),
            self.bearer_token_env.as_ref(),
        )?;
        Ok(receiver)
    }
}
