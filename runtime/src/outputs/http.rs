//! What the HTTP outputs (webhook, Splunk HEC) share: the checks of a
//! receiver URL, the client (rustls with the ring provider, verified
//! against `[outputs.tls]` or the system roots, bounded by a timeout), and
//! the reading of a refusal into an error a person can act on.

use super::tls::TlsFiles;
use reqwest::Url;
use std::time::Duration;

/// Default of an HTTP output's `timeout`: long enough for a loaded SIEM,
/// short enough that a receiver that never answers is retried soon.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Checks what every HTTP output's options share (`url`, `insecure_http`,
/// `timeout`, `tls`) and returns the receiver's URL and the client built
/// from them, so that `otwatch serve --check` and the running output
/// refuse the same things.
pub fn check_receiver(
    output: &str,
    url: &str,
    insecure_http: bool,
    timeout: Duration,
    tls: &TlsFiles,
) -> Result<(Url, reqwest::Client), String> {
    let url = check_url(output, url, insecure_http)?;
    if timeout.is_zero() {
        return Err(format!("outputs.{output}.timeout must be longer than 0"));
    }
    Ok((url, client(output, tls, timeout)?))
}

/// Checks `url` (option `outputs.<output>.url`): http or https, a host,
/// and https unless the host is a loopback address or `insecure_http` is
/// set, since alerts and their signatures would otherwise cross the
/// network in clear.
pub fn check_url(output: &str, url: &str, insecure_http: bool) -> Result<Url, String> {
    let parsed =
        Url::parse(url).map_err(|e| format!("outputs.{output}.url: {url:?} is not a URL: {e}"))?;
    let host = match parsed.host_str() {
        Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(format!("outputs.{output}.url: {url:?} names no host")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "outputs.{output}.url: credentials in the URL are refused (they would be in the config text and in logs)"
        ));
    }
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && !insecure_http {
                return Err(format!(
                    "outputs.{output}.url: {url:?} is plain http to another machine: use https, or set insecure_http = true if the network between is trusted"
                ));
            }
        }
        other => {
            return Err(format!(
                "outputs.{output}.url: scheme {other:?} is not http or https"
            ))
        }
    }
    Ok(parsed)
}

/// The HTTP client of an output: its TLS settings, `timeout` for a whole
/// request (connecting included), no redirects (a receiver that moved is
/// a configuration to fix, and a redirect must not carry a token
/// elsewhere). Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
pub fn client(output: &str, tls: &TlsFiles, timeout: Duration) -> Result<reqwest::Client, String> {
    let tls = tls.client_config(output, &[b"http/1.1"])?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("outputs.{output}: cannot set up the HTTP client: {e}"))
}

/// A request error as a person reads it: what failed (connect, timeout),
/// with the cause chain, never the request's headers.
pub fn request_error(url: &Url, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = format!("{} {what}", redacted(url));
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A refusal: the status and the start of the receiver's answer (which
/// usually says why), on one line.
pub async fn refusal(url: &Url, response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body
        .chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{} answered {status}: {}", redacted(url), body.trim())
}

/// The URL without its query (which may carry a key some receivers take
/// there), for logs and `/healthz`.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("…"));
    }
    shown.to_string()
}
