//! The file source's checkpoint: which file it was reading, and the offsets
//! around the last chunk it handed to the queue. Its format and the
//! exactly-once argument are in the parent module's documentation.

use super::follow::{Chunk, FileId, Fingerprint};
use std::path::{Path, PathBuf};

/// One checkpoint file per followed path. Fields added since the first
/// format are optional, so older checkpoints still load.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    /// Inode of the file the offsets belong to.
    pub inode: u64,
    /// Its device. Absent in checkpoints of the first format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    /// Its fingerprint. Absent in checkpoints of the first format, which are
    /// then trusted on the inode alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// Byte offset before the chunk.
    pub before: u64,
    /// Byte offset after the chunk.
    pub after: u64,
    /// Line number of the first line at `before` (1-based), for error messages.
    pub line_before: u64,
    pub line_after: u64,
    /// Sequence number the chunk's last event got (or the queue's last one
    /// when the chunk queued nothing).
    pub last_seq: u64,
    /// The file was read to its end after the path moved on to another file
    /// (or none): nothing more is to be read from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

/// Where reading resumes in the checkpointed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResumePoint {
    pub offset: u64,
    pub line: u64,
}

impl Checkpoint {
    /// The checkpoint of the source following `source`, named after a hash
    /// of its path.
    pub fn path_for(state_dir: &Path, source: &Path) -> PathBuf {
        let hash = crc32c::crc32c(source.as_os_str().as_encoded_bytes());
        state_dir.join(format!("file-{hash:08x}.checkpoint"))
    }

    pub fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn store(&self, path: &Path) -> Result<(), otwatch_fs::FsError> {
        otwatch_fs::write_atomic(
            path,
            serde_json::to_string(self).expect("serializes").as_bytes(),
        )
    }

    /// The checkpoint of `chunk`, its `last_seq` still to be filled in.
    pub fn of(chunk: &Chunk) -> Checkpoint {
        Checkpoint {
            inode: chunk.file.ino,
            dev: Some(chunk.file.dev),
            fingerprint: Some(chunk.fingerprint),
            before: chunk.before,
            after: chunk.after,
            line_before: chunk.line_before,
            line_after: chunk.line_after,
            last_seq: 0,
            drained: chunk.drained,
        }
    }

    /// Whether `id` may be the checkpointed file (the device is only
    /// compared when the checkpoint has one).
    pub fn names(&self, id: FileId) -> bool {
        id.ino == self.inode && self.dev.is_none_or(|dev| dev == id.dev)
    }

    /// Where reading resumes, given the queue's last sequence number when it
    /// was opened: after the chunk if it reached the queue, else before it.
    pub fn resume_point(&self, queue_last_seq: u64) -> ResumePoint {
        if queue_last_seq >= self.last_seq {
            ResumePoint {
                offset: self.after,
                line: self.line_after,
            }
        } else {
            ResumePoint {
                offset: self.before,
                line: self.line_before,
            }
        }
    }
}
