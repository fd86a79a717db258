//! The `stdout` output: one readable line per alert on standard output.

use super::{alert_line, AlertOutput, OutputError};
use otwatch_proto::Alert;
use serde::{Deserialize, Serialize};
use std::io::Write;

/// `[[outputs]] type = "stdout"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Name of the output (its consumer group is `output-<name>`). Default: "stdout".
    #[serde(default)]
    pub name: Option<String>,
}

pub(super) struct Stdout;

#[async_trait::async_trait]
impl AlertOutput for Stdout {
    async fn deliver(&mut self, alerts: &[Alert]) -> Result<(), OutputError> {
        let mut text = String::new();
        for alert in alerts {
            text.push_str("ALERT ");
            text.push_str(&alert_line(alert));
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| OutputError::Transient(format!("cannot write to standard output: {e}")))
    }
}
