//! Sources: where events come from. Each source runs as its own task, turns
//! what it reads into `ControllerEvent`s, checks them against the limits and
//! hands them to the queue, which numbers them and makes them durable before
//! the source moves on (advances a checkpoint, reads the next chunk).
//!
//! - [`file`]: a file of JSON lines, followed across rotations;
//! - [`sim`]: the simulated site of [`crate::sim`];
//! - `modbus` (feature `modbus`): Modbus/TCP devices, polled read-only;
//! - `slmp` (feature `slmp`): MELSEC PLCs over SLMP / MC protocol 3E
//!   binary, polled read-only;
//! - `syslog` (feature `syslog`): syslog messages received over UDP and
//!   TCP, logins and configuration changes recognised;
//! - `mqtt` (feature `mqtt`): MQTT subscriptions, JSON payloads mapped to
//!   events, QoS 1 acknowledged once queued;
//! - `opcua` (feature `opcua`): OPC UA servers through subscriptions
//!   (monitored items, deadbands, events and alarms), read-only;
//! - `poll`: what the polled sources share (rate limits, reconnects,
//!   per-device metrics and status lines).
//!
//! Each source lives in its own folder with the same file names: `config.rs`
//! (its `[[sources]]` options and their checks), `mod.rs` (the source),
//! `tests.rs`. Protocol sources compile behind a cargo feature each, so a
//! gateway build carries only the protocols it uses; the default build has
//! them all.
//!
//! # What every source promises
//!
//! - **Events are checked before they are queued.** Every event passes the
//!   shared validation (`Limits::check_event`, the collector's own rules).
//!   A bad input (a line that does not parse, a device value that is not a
//!   finite number, a string above a limit) is logged with where it came
//!   from (line number; device and tag), counted (`inputs_rejected`, and
//!   per device `values_rejected`) and skipped; nothing else stops.
//! - **All-or-nothing, with backpressure.** A source hands its events to the
//!   queue through [`crate::handle::QueueHandle`], one append per chunk (a
//!   file read, a simulator tick, one poll of one device): an append is
//!   numbered and made durable whole or not at all. When the queue is full
//!   and `when_full = "block"`, the append waits, and so does the source (a
//!   polled device is then polled later, never faster to catch up).
//! - **Read-only towards controllers.** The protocol clients contain no
//!   write function at all: the Modbus client wraps tokio-modbus so that
//!   only the four read functions (1 coils, 2 discrete inputs, 3 holding
//!   registers, 4 input registers) are reachable from the agent, and the
//!   SLMP client can encode nothing but batch reads (0401) and the CPU
//!   model read (0101). The OPC UA source subscribes and never calls Write,
//!   Call or a service that changes the server's address space. Tests hold
//!   the clients to it: peers that record every function or command they
//!   receive, and a scan of the source modules for any write path.
//! - **A misconfiguration cannot load a controller.** A device is polled at
//!   most every `poll_interval`, which may not be below
//!   [`poll::MIN_POLL_INTERVAL`] (100 ms); its requests are spaced so that
//!   it never gets more than `max_requests_per_second` (at most
//!   [`poll::MAX_REQUESTS_PER_SECOND`]); a configuration whose requests per
//!   poll would need more is refused at load, naming the device and the
//!   keys. A device that does not answer is reconnected with exponential
//!   backoff (`reconnect_min` to `reconnect_max`), never in a tight loop.
//! - **One device never stops the others.** Each device is polled by its
//!   own task over its own connection: a dead, slow or misconfigured device
//!   costs its own polls only.
//! - **Every device is visible.** Per device, labelled by source and device,
//!   the agent's `/metrics` carries polls, errors, rejected values, events,
//!   whether it answers, the time of its last successful poll and the
//!   latency of its polls; the log has a line when a device fails (the
//!   first failure of an outage, and again when the error changes), when it
//!   recovers (with how long it was down), and a status line per device
//!   with the agent's periodic status.
//! - **Timestamps.** Polled protocols carry no event time of their own: an
//!   event's `ts` is the agent's clock when the poll's answer arrived.
//!   OPC UA values and events carry the controller's (or the server's)
//!   time, which the `opcua` source keeps.

pub mod file;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod poll;
pub mod sim;

/// A password a source logs in with, from the first line of `file` or
/// from the environment variable `env` (never from the configuration
/// text); `None` when neither is set.
#[cfg(any(feature = "mqtt", feature = "opcua"))]
pub(crate) fn read_password(
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("password_file {}: {e}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("password_env {var} is not set"));
    }
    Ok(None)
}
#[cfg(feature = "slmp")]
pub mod slmp;
#[cfg(feature = "syslog")]
pub mod syslog;

use std::sync::atomic::AtomicU64;

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Events handed to the queue.
    pub events: AtomicU64,
    /// Inputs refused (unparseable line, limit broken), each logged.
    pub rejected: AtomicU64,
    /// Bytes of a followed file lost to its rotation (copytruncate with no
    /// matching copy, or written between its copy and truncation), each
    /// loss logged as a warning.
    pub rotation_bytes_lost: AtomicU64,
    /// Messages dropped because their sender went over its rate
    /// (`syslog`), the episodes logged.
    pub rate_limited: AtomicU64,
    /// Messages cut at their size limit (`syslog`).
    pub truncated: AtomicU64,
    /// Sparkplug metrics named by an alias no birth announced, skipped
    /// (`mqtt`).
    pub sparkplug_unknown_aliases: AtomicU64,
    /// Sparkplug `seq` numbers other than the one expected (`mqtt`).
    pub sparkplug_seq_gaps: AtomicU64,
    /// Sparkplug NDEATH messages of an earlier session (their `bdSeq` not
    /// the current NBIRTH's), ignored (`mqtt`).
    pub sparkplug_stale_deaths: AtomicU64,
    /// Sparkplug metrics of a datatype the agent does not map (DataSet,
    /// Template, arrays...), skipped (`mqtt`).
    pub sparkplug_unsupported: AtomicU64,
}

/// Code lines (comments left out) of the `.rs` files of a source folder
/// (`src/source/modbus`), its `tests.rs` left out: what the scans for write
/// paths look through.
#[cfg(all(
    test,
    any(
        feature = "modbus",
        feature = "slmp",
        feature = "opcua",
        feature = "mqtt"
    )
))]
pub(crate) fn code_lines(dir: &str) -> Vec<(String, usize, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // The tests name the write paths in order to look for them.
        if name == "tests.rs" || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let code = line.trim_start();
            if !code.starts_with("//") {
                out.push((name.clone(), n + 1, code.to_string()));
            }
        }
    }
    assert!(!out.is_empty(), "no source files in {}", root.display());
    out
}
