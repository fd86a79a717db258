//! The admin socket component: answers [`Request`]s on
//! `<data_dir>/admin.sock` and appends the decisions to the `control`
//! topic (see the [module docs](super)).
//!
//! - The socket is created mode 0600 (a client needs write permission to
//!   connect; between `bind` and `chmod` the umask already keeps others
//!   out), replacing a socket file a previous process left: the data
//!   directory lock is held, so none is listening on it.
//! - Who asks is the peer's uid from `SO_PEERCRED`, named from
//!   `/etc/passwd` (`uid:N` when it has no name there); the host is the
//!   machine's hostname.
//! - The chain: at start the last record of the `control` topic gives the
//!   hash to link to (the genesis hash for an empty topic). Appends are
//!   serialized, so records are numbered, timed and linked in one order;
//!   `ts` is strictly increasing along the chain even if the clock steps
//!   back.
//! - Reads (`model.status`) and checks of a model decision go to the
//!   detector component over a channel and are answered from its live
//!   state; alert decisions are checked against the `alerts` history
//!   ([`super::alerts`]).

use super::{Answer, Request, MAX_REQUEST_BYTES};
use crate::components::detector::Query;
use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_eventlog::{EventLog, Record, Topic};
use otwatch_proto::arrow::{batch_to_control, control_to_batch, ControlRecord, GENESIS_HASH};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};

/// How long a request waits for the detector's answer.
const DETECTOR_ANSWER: Duration = Duration::from_secs(30);

/// What the component needs.
pub struct AdminComponent {
    pub data_dir: PathBuf,
    pub control: Arc<Control>,
}

/// The end of the chain: what the next record links to.
struct Link {
    hash: String,
    ts_ns: i64,
}

/// The control plane's one writer: checks a [`Request`] and appends the
/// decision to the `control` topic, linked into the chain. The admin socket
/// and the dashboard share one, so every decision is numbered and linked in
/// one order whoever takes it.
pub struct Control {
    log: Arc<dyn EventLog>,
    detector: mpsc::Sender<Query>,
    /// The history root, where alert decisions look their alert up.
    history: PathBuf,
    host: String,
    chain: Mutex<Link>,
}

impl Control {
    /// Reads the end of the chain from the `control` topic of `log`.
    pub async fn open(
        log: Arc<dyn EventLog>,
        data_dir: &std::path::Path,
        detector: mpsc::Sender<Query>,
    ) -> anyhow::Result<Control> {
        let chain = last_link(log.as_ref()).await?;
        Ok(Control {
            log,
            detector,
            history: crate::history_dir(data_dir),
            host: hostname(),
            chain: Mutex::new(chain),
        })
    }

    /// Answers `request` on behalf of `user` (who goes into the record).
    pub async fn answer(&self, request: Request, user: &str) -> Answer {
        answer(request, user, self).await
    }
    /// Appends one record to the chain: numbered, timed and linked after
    /// the last one.
    async fn append(
        &self,
        command: &str,
        user: &str,
        site: String,
        asset: String,
        alert_id: Option<String>,
        args: serde_json::Value,
    ) -> Result<ControlRecord, String> {
        let mut chain = self.chain.lock().await;
        let ts_ns = now_ns().max(chain.ts_ns.saturating_add(1));
        let record = ControlRecord {
            id: format!("ctl-{ts_ns}"),
            ts_ns,
            user: user.to_string(),
            host: self.host.clone(),
            command: command.to_string(),
            site,
            asset,
            alert_id,
            args: args.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(&chain.hash);
        let batch = control_to_batch(std::slice::from_ref(&record))
            .map_err(|e| format!("cannot encode the control record: {e}"))?;
        self.log
            .append(
                Topic::Control,
                vec![Record {
                    batch,
                    producer: None,
                }],
            )
            .await
            .map_err(|e| format!("cannot append the decision to the event log: {e}"))?;
        *chain = Link {
            hash: record.hash.clone(),
            ts_ns,
        };
        tracing::info!(
            id = %record.id,
            user = %record.user,
            command,
            site = %record.site,
            asset = %record.asset,
            alert_id = record.alert_id.as_deref().unwrap_or(""),
            "recorded in the control topic"
        );
        Ok(record)
    }

    /// Records something that is not a decision but belongs in the audit
    /// (a failed dashboard sign-in): `command` with `args`, no site. The
    /// detector and collectors ignore commands they do not know.
    pub async fn record(
        &self,
        command: &str,
        user: &str,
        args: serde_json::Value,
    ) -> Result<String, String> {
        self.append(command, user, String::new(), String::new(), None, args)
            .await
            .map(|r| r.id)
    }
}

impl AdminComponent {
    pub async fn run(self, mut ctx: Context) -> anyhow::Result<()> {
        let socket = super::socket_path(&self.data_dir);
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot replace {}", socket.display()))
            }
        }
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on the admin socket {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to mode 0600", socket.display()))?;
        let shared = self.control;
        tracing::info!(socket = %socket.display(), "admin socket listening (otwatch model ...)");
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut stop = ctx.stop.clone();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|&s| s) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, shared).await {
                            tracing::warn!(error = %e, "admin connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: wait, then go on.
                    ctx.reporter
                        .retrying(&format!("cannot accept on the admin socket: {e}"));
                    if ctx.pause(Duration::from_millis(200)).await {
                        break;
                    }
                    ctx.reporter.running();
                }
            }
        }
        let _ = std::fs::remove_file(&socket);
        Ok(())
    }
}

/// Reads the last control record of the log: its hash and time.
async fn last_link(log: &dyn EventLog) -> anyhow::Result<Link> {
    let end = log.end_offset(Topic::Control);
    if end == 0 {
        return Ok(Link {
            hash: GENESIS_HASH.to_string(),
            ts_ns: i64::MIN,
        });
    }
    let mut consumer = log
        .consumer_at(Topic::Control, "admin", end - 1)
        .await
        .context("cannot read the control topic of the event log")?;
    let got = consumer
        .poll(1, Duration::from_secs(5))
        .await
        .context("cannot read the last control record")?;
    let last = got
        .last()
        .map(|d| batch_to_control(&d.batch))
        .transpose()
        .context("the last control record does not have the control schema")?
        .and_then(|mut records| records.pop())
        .with_context(|| format!("control record {} could not be read", end - 1))?;
    Ok(Link {
        hash: last.hash,
        ts_ns: last.ts_ns,
    })
}

/// Answers the requests of one connection, one line each, until it closes.
async fn serve(stream: UnixStream, shared: Arc<Control>) -> anyhow::Result<()> {
    let user = match stream.peer_cred() {
        Ok(cred) => user_name(cred.uid()),
        Err(e) => return Err(e).context("cannot tell who is connected (SO_PEERCRED)"),
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        let n = (&mut read)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let answer = if too_long {
            Answer::refused(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes; one JSON object per line"
            ))
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(request) => answer(request, &user, &shared).await,
                Err(e) => Answer::refused(format!("request not understood: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

async fn answer(request: Request, user: &str, shared: &Control) -> Answer {
    let Some(command) = request.command() else {
        let Request::ModelStatus { site, asset } = request else {
            unreachable!("only model.status reads");
        };
        return match ask_detector(shared, |reply| Query::Status { site, asset, reply }).await {
            Ok(assets) => Answer {
                ok: true,
                assets: Some(assets),
                ..Answer::default()
            },
            Err(e) => Answer::refused(e),
        };
    };
    let (site, asset, alert_id, args) = if command.starts_with("alert.") {
        match super::alerts::decision(&request, &shared.history).await {
            Ok(d) => (d.site, d.asset, d.alert_id, d.args),
            Err(e) => return Answer::refused(e),
        }
    } else if let Request::CollectorBackfill {
        agent,
        from_ns,
        for_secs,
        ..
    } = &request
    {
        // Collectors check nothing further: any agent may be allowed.
        match super::check_backfill(&request, now_ns()) {
            Ok((site, asset)) => (
                site,
                asset,
                None,
                serde_json::json!({"agent": agent, "from_ns": from_ns, "for_secs": for_secs}),
            ),
            Err(e) => return Answer::refused(e),
        }
    } else {
        let checked = {
            let request = request.clone();
            ask_detector(shared, |reply| Query::Check { request, reply }).await
        };
        let (site, asset) = match checked {
            Ok(subject) => subject,
            Err(e) => return Answer::refused(e),
        };
        let (alert_id, args) = match &request {
            Request::ModelAccept { alert_id } => (Some(alert_id.clone()), serde_json::json!({})),
            Request::ModelRelearn { from_ns, to_ns, .. } => (
                None,
                match (from_ns, to_ns) {
                    (Some(from), Some(to)) => serde_json::json!({"from_ns": from, "to_ns": to}),
                    _ => serde_json::json!({}),
                },
            ),
            _ => unreachable!("only model decisions are checked by the detector"),
        };
        (site, asset, alert_id, args)
    };
    let record = match shared
        .append(command, user, site, asset, alert_id, args)
        .await
    {
        Ok(record) => record,
        Err(e) => return Answer::refused(e),
    };
    Answer {
        ok: true,
        detail: Some(format!(
            "{command} recorded; {} in log order",
            if matches!(request, Request::CollectorBackfill { .. }) {
                "every collector of this log applies it"
            } else {
                "the detector applies it"
            }
        )),
        id: Some(record.id),
        ..Answer::default()
    }
}

/// Sends a query to the detector component and waits for its answer.
async fn ask_detector<T>(
    shared: &Control,
    query: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Query,
) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    if shared.detector.send(query(reply)).await.is_err() {
        return Err("the detector is not running".into());
    }
    match tokio::time::timeout(DETECTOR_ANSWER, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the detector stopped before answering".into()),
        Err(_) => Err(format!(
            "the detector did not answer within {} s (busy relearning from history?); try again",
            DETECTOR_ANSWER.as_secs()
        )),
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .expect("the clock is within the years 1677..2262")
}

/// The machine's hostname.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The name of user `uid` from `/etc/passwd`, or `uid:N`.
pub(super) fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_string())
        })
        .next()
        .unwrap_or_else(|| format!("uid:{uid}"))
}
