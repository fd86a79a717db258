//! The `file` source's options (`[[sources]] type = "file"` in `agent.toml`)
//! and their checks.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `file` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON-lines file to follow. Each line:
    /// `{"asset":"line1/press-01","kind":"CYCLE","name":"cycle","ts_ns":1700000000000000000,"value":1200.0}`
    /// (optional: `text`, `attrs`). Lines that do not parse are logged with
    /// their line number, counted and skipped.
    pub path: PathBuf,
    /// How often to look for new lines. It is also how long a rotated file
    /// is still read after the path was seen to name another file, for the
    /// writer's last lines before it reopens.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most lines read (and fsync'd to the queue) at a time.
    #[serde(default = "default_chunk")]
    pub max_lines_per_read: usize,
    /// Where rotation puts the file's earlier contents, searched when the
    /// file is truncated under the reader (logrotate's `copytruncate`) and
    /// when the file read before a restart is no longer at `path`. Each
    /// entry is a path whose file name may hold `*` (any run of characters;
    /// no other wildcard, none in directories), e.g.
    /// `["/var/log/plc/events.jsonl.1", "/var/log/plc/archive/events-*"]`.
    /// A candidate is only read if its first bytes are those of the file
    /// that was being read (see the module doc), so broad patterns are safe.
    /// Default: the siblings `<path>.*` and `<path>-*` (logrotate's `.1` and
    /// its `dateext` names). `[]` never searches: a truncated file's unread
    /// tail is then counted as lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_paths: Option<Vec<PathBuf>>,
}

fn default_poll() -> Duration {
    Duration::from_millis(250)
}

fn default_chunk() -> usize {
    5000
}

impl FileSourceConfig {
    /// A source following `path` with every other option at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSourceConfig {
            path: path.into(),
            poll_interval: default_poll(),
            max_lines_per_read: default_chunk(),
            rotated_paths: None,
        }
    }

    /// The rotated-file patterns in effect: `rotated_paths`, or its default.
    pub fn rotated_patterns(&self) -> Vec<PathBuf> {
        match &self.rotated_paths {
            Some(patterns) => patterns.clone(),
            None => [".*", "-*"]
                .iter()
                .map(|suffix| {
                    let mut pattern = self.path.clone().into_os_string();
                    pattern.push(suffix);
                    PathBuf::from(pattern)
                })
                .collect(),
        }
    }

    /// Refuses values the source cannot work with, naming the option.
    pub fn check(&self) -> Result<(), String> {
        let path = self.path.display();
        if self.path.file_name().is_none() {
            return Err(format!("file source path {path:?} does not name a file"));
        }
        if self.poll_interval.is_zero() {
            return Err(format!(
                "file source {path}: poll_interval must be above zero"
            ));
        }
        if self.max_lines_per_read == 0 {
            return Err(format!(
                "file source {path}: max_lines_per_read must be at least 1"
            ));
        }
        for pattern in self.rotated_paths.iter().flatten() {
            check_pattern(pattern).map_err(|reason| {
                format!(
                    "file source {path}: rotated_paths entry {:?} {reason}",
                    pattern.display()
                )
            })?;
        }
        Ok(())
    }
}

/// A rotated-path pattern has a file name, and `*` only in it.
fn check_pattern(pattern: &Path) -> Result<(), String> {
    if pattern.file_name().is_none() {
        return Err("does not name a file".into());
    }
    let in_dir = pattern
        .parent()
        .is_some_and(|dir| dir.as_os_str().as_encoded_bytes().contains(&b'*'));
    if in_dir {
        return Err("has `*` in a directory; it is only allowed in the file name".into());
    }
    Ok(())
}
