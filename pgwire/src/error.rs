//! Why the endpoint cannot start. Each error names the key or the file.
//! (What a client is told about its own statements is in
//! [`crate::handler`]: those are answers, never failures of the service.)

use std::path::PathBuf;

/// The endpoint cannot start with this configuration or these files.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A value of `[sql]` (or `sql_listen`) no endpoint can work with.
    #[error("{key} {detail}")]
    Config { key: String, detail: String },
    /// `sql.users_file` cannot be read or holds a bad entry.
    #[error("cannot use sql.users_file {path}: {detail}")]
    UsersFile { path: PathBuf, detail: String },
    /// The TLS certificate or key cannot be used: the endpoint refuses to
    /// start rather than serve plaintext.
    #[error("cannot use the SQL endpoint's {what} {path}: {detail}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The history's query session could not be made.
    #[error("cannot open the history for SQL: {0}")]
    History(#[from] otwatch_history::HistoryError),
}
