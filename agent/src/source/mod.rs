//! Sources: where events come from. Each source runs as its own task, turns
//! what it reads into `ControllerEvent`s, checks them against the limits and
//! hands them to the queue, which numbers them and makes them durable before
//! the source moves on (advances a checkpoint, reads the next chunk).

pub mod file;
pub mod sim;

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
}
