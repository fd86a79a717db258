//! The `jsonl` output: one JSON object per alert and line (see
//! [`super::alert_json`]), appended to a file and fsync'd before the
//! output's offset is committed.
//!
//! The file may be rotated by renaming it (logrotate's `create` mode): each
//! delivery checks that the path still names the open file and opens the
//! new one otherwise. A write that fails (a full disk) is retried; a line
//! may then appear twice, never half (a partial line is cut back).

use super::{alert_json, AlertOutput, OutputError};
use otwatch_proto::Alert;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// `[[outputs]] type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "jsonl".
    #[serde(default)]
    pub name: Option<String>,
    /// The file to append to; relative paths are under `data_dir`.
    pub path: PathBuf,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        JsonlConfig {
            name: None,
            path: PathBuf::from("alerts.jsonl"),
        }
    }
}

pub(super) struct Jsonl {
    path: PathBuf,
    file: Option<File>,
}

impl Jsonl {
    pub(super) fn open(path: PathBuf) -> anyhow::Result<Self> {
        let mut output = Jsonl { path, file: None };
        output
            .file()
            .map_err(|e| anyhow::anyhow!("cannot open alert file: {e}"))?;
        Ok(output)
    }

    /// The open file, reopened when the path names another file now.
    fn file(&mut self) -> Result<&mut File, String> {
        let current = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let open = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        if current.is_none() || current != open {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

#[async_trait::async_trait]
impl AlertOutput for Jsonl {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        let mut text = Vec::new();
        for alert in alerts {
            serde_json::to_writer(&mut text, &alert_json(alert)).expect("JSON values serialize");
            text.push(b'\n');
        }
        let path = self.path.display().to_string();
        let file = self.file().map_err(OutputError::Transient)?;
        let before = file
            .metadata()
            .map_err(|e| OutputError::Transient(format!("{path}: {e}")))?
            .len();
        let written = file.write_all(&text).and_then(|_| file.sync_data());
        if let Err(e) = written {
            // No half line stays behind for readers to trip on.
            let _ = file.set_len(before);
            return Err(OutputError::Transient(format!(
                "cannot append to alert file {path}: {e}"
            )));
        }
        Ok(())
    }
}
