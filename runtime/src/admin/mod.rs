//! The control plane: how the SOC tells a running service what is normal.
//!
//! The service listens on a local admin socket, `<data_dir>/admin.sock`
//! (mode 0600, owned by the service's user; [`server`]). Whoever connects
//! is identified by the kernel (`SO_PEERCRED`), never by what they claim.
//! A decision (`model.accept`, `model.relearn`) is checked with the
//! detector, then appended to the `control` topic of the event log as a
//! control record (`otwatch_proto::arrow::control_schema`: who, when, from
//! which host, what), linked into a hash chain. Consumers of the topic act
//! on it: the detector applies it to its models (and checkpoints the
//! result with the topic's offset, so a restart keeps it), the `audit`
//! history table keeps it for ever. Because decisions travel through the
//! log, they work the same whether the detector runs in this process or
//! elsewhere, and they are replayed in order after a crash.
//!
//! # Wire format
//!
//! One JSON object per line each way: a [`Request`] (tagged by `command`),
//! then one [`Answer`]. A connection may carry several requests in turn.
//!
//! ```text
//! → {"command":"model.status","site":"plant-a","asset":null}
//! ← {"ok":true,"assets":[{"site":"plant-a","asset":"line1/press-01","state":"protecting",...}]}
//! → {"command":"model.accept","alert_id":"4f0c..."}
//! ← {"ok":true,"id":"ctl-1764000000000000000","detail":"model.accept recorded"}
//! → {"command":"model.relearn","site":"plant-a","asset":"line1/press-01","from_ns":1,"to_ns":2}
//! ← {"ok":false,"error":"asset \"line1/press-9\" is not one the detector has seen at site plant-a"}
//! → {"command":"alert.ack","alert_id":"4f0c...","comment":"on it"}
//! ← {"ok":true,"id":"ctl-1764000000000000001","detail":"alert.ack recorded; ..."}
//! → {"command":"alert.suppress","site":"plant-a","asset":null,"detector":null,"for_secs":7200,"reason":"maintenance"}
//! → {"command":"alert.unsuppress","id":"ctl-1764000000000000002","reason":"maintenance done early"}
//! → {"command":"alert.comment","alert_id":"4f0c...","comment":"vendor called back"}
//! ```
//!
//! The alert lifecycle (`alert.ack`, `alert.resolve`, `alert.suppress`,
//! `alert.unsuppress`, `alert.comment`) is checked against the history's `alerts` and
//! `audit` tables, not the detector
//! ([`alerts`]).
//!
//! New commands (a dashboard's calls, ...) are new variants of
//! [`Request`]; an older service answers them with an error naming the
//! command it does not know.

pub mod alerts;
pub mod server;
#[cfg(test)]
mod tests;

use otwatch_detector::AssetReport;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Longest request line the server reads, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The admin socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// One request on the admin socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", deny_unknown_fields)]
pub enum Request {
    /// What each model of each asset learned, and the open episodes: of
    /// one site (every site when `None`), or one asset.
    #[serde(rename = "model.status")]
    ModelStatus {
        #[serde(default)]
        site: Option<String>,
        #[serde(default)]
        asset: Option<String>,
    },
    /// Take the deviation of the episode alert `alert_id` opened as normal.
    #[serde(rename = "model.accept")]
    ModelAccept { alert_id: String },
    /// Learn `site` (or only `asset` of it) again: from its next events,
    /// or from the stored history of `[from_ns, to_ns)` when both are given.
    #[serde(rename = "model.relearn")]
    ModelRelearn {
        site: String,
        #[serde(default)]
        asset: Option<String>,
        #[serde(default)]
        from_ns: Option<i64>,
        #[serde(default)]
        to_ns: Option<i64>,
    },
    /// Let agent `agent` of `site` send events as old as `from_ns`
    /// (beyond the collector's `limits.max_past_secs`) for the next
    /// `for_secs` seconds: loading a gateway's recorded history. Every
    /// collector reading the log applies it.
    #[serde(rename = "collector.backfill")]
    CollectorBackfill {
        site: String,
        agent: String,
        from_ns: i64,
        for_secs: u64,
    },
    /// Take alert `alert_id`: it becomes `acked`, with an optional comment.
    #[serde(rename = "alert.ack")]
    AlertAck {
        alert_id: String,
        #[serde(default)]
        comment: Option<String>,
    },
    /// Close alert `alert_id`: it becomes `resolved`.
    #[serde(rename = "alert.resolve")]
    AlertResolve {
        alert_id: String,
        #[serde(default)]
        comment: Option<String>,
    },
    /// For `for_secs` from now, mark the new alerts of `site` (only of
    /// `asset`, only of `detector`, when given) `suppressed`: stored, not
    /// sent.
    #[serde(rename = "alert.suppress")]
    AlertSuppress {
        site: String,
        #[serde(default)]
        asset: Option<String>,
        #[serde(default)]
        detector: Option<String>,
        for_secs: u64,
        reason: String,
    },
    /// End a suppression before its time (`id`: the `alert.suppress`
    /// record's, as `otwatch alerts suppressions` lists them): alerts of
    /// events from now on are sent again.
    #[serde(rename = "alert.unsuppress")]
    AlertUnsuppress { id: String, reason: String },
    /// Add a comment to alert `alert_id` without changing its state; it is
    /// kept in the audit, beside the alert's other decisions.
    #[serde(rename = "alert.comment")]
    AlertComment { alert_id: String, comment: String },
}

/// The longest backfill allowance: long enough to load a large recorded
/// history, short enough that a forgotten one ends by itself.
pub const MAX_BACKFILL_SECS: u64 = 7 * 24 * 3600;

impl Request {
    /// The `command` of the control record a decision becomes (`None` for
    /// requests that only read).
    pub fn command(&self) -> Option<&'static str> {
        match self {
            Request::ModelStatus { .. } => None,
            Request::ModelAccept { .. } => Some("model.accept"),
            Request::ModelRelearn { .. } => Some("model.relearn"),
            Request::CollectorBackfill { .. } => Some(crate::components::ingest::BACKFILL_COMMAND),
            Request::AlertAck { .. } => Some("alert.ack"),
            Request::AlertResolve { .. } => Some("alert.resolve"),
            Request::AlertSuppress { .. } => Some("alert.suppress"),
            Request::AlertUnsuppress { .. } => Some("alert.unsuppress"),
            Request::AlertComment { .. } => Some("alert.comment"),
        }
    }
}

/// Checks a backfill request on its own (no component is asked): the
/// subject of its control record, `(site, "")`.
pub(crate) fn check_backfill(request: &Request, now_ns: i64) -> Result<(String, String), String> {
    let Request::CollectorBackfill {
        site,
        agent,
        from_ns,
        for_secs,
    } = request
    else {
        return Err("not a backfill request".into());
    };
    if site.is_empty() || agent.is_empty() {
        return Err("a backfill names the site and the agent that may send old events".into());
    }
    if *from_ns >= now_ns {
        return Err(
            "the backfill's oldest time is not in the past: give when the recorded history starts"
                .into(),
        );
    }
    if *for_secs == 0 || *for_secs > MAX_BACKFILL_SECS {
        return Err(format!(
            "a backfill lasts from 1 s to {} days; {for_secs} s was asked",
            MAX_BACKFILL_SECS / 86400
        ));
    }
    Ok((site.clone(), String::new()))
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    /// Why the request was refused, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The id of the control record a decision became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What was done, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `model.status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<Vec<AssetReport>>,
}

impl Answer {
    pub fn refused(error: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(error.into()),
            ..Answer::default()
        }
    }
}

/// Why the admin socket could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no otwatch service is running on {data_dir} (no admin socket at {socket}); start `otwatch serve --data-dir {data_dir}`, or pass the --data-dir it uses")]
    NotRunning { data_dir: String, socket: String },
    #[error("cannot talk to the admin socket {socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
    #[error("the service closed the admin socket {socket} without answering")]
    NoAnswer { socket: String },
    #[error("the service's answer is not understood: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Sends `request` to the service running on `data_dir` and returns its
/// answer (which may be a refusal: see [`Answer::ok`]).
pub async fn ask(data_dir: &Path, request: &Request) -> Result<Answer, ClientError> {
    let socket = socket_path(data_dir);
    let io = |source| ClientError::Io {
        socket: socket.display().to_string(),
        source,
    };
    let stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                data_dir: data_dir.display().to_string(),
                socket: socket.display().to_string(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer {
            socket: socket.display().to_string(),
        });
    }
    Ok(serde_json::from_str(&answer)?)
}
