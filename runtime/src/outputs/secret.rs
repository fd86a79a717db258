//! Secrets of the configuration (output tokens, HMAC keys, the Kafka log's
//! SASL password): read from a file or an environment variable, never from
//! the configuration text, and never shown.
//!
//! An option `X` that is a secret is configured as `X_file = "/path"` or
//! `X_env = "VARIABLE"`, exactly one of them. The configuration only holds
//! the path or the variable's name, so printing it (`Debug`, logs, `otwatch
//! config`) shows no secret; the value lives in a [`Secret`], whose `Debug`
//! prints `Secret(***)`. A file's trailing newline (`echo token > file`) is
//! not part of the secret.

use std::path::PathBuf;

/// A secret value. Its `Debug` hides it; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads the secret `key` of an output named `output` from `file` or `env`.
/// `Ok(None)` when neither is set. Errors name the option
/// (`outputs.<output>.<key>_file`), the path or variable, never the value.
pub fn load(
    output: &str,
    key: &str,
    file: Option<&PathBuf>,
    env: Option<&String>,
) -> Result<Option<Secret>, String> {
    load_option(&format!("outputs.{output}"), key, file, env)
}

/// Reads the secret `key` of the configuration table `table` (e.g.
/// `log.security`) from `file` or `env`; as [`load`].
pub fn load_option(
    table: &str,
    key: &str,
    file: Option<&PathBuf>,
    env: Option<&String>,
) -> Result<Option<Secret>, String> {
    let value = match (file, env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(format!(
                "{table}: give one of {key}_file and {key}_env, not both"
            ))
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{table}.{key}_file: cannot read {}: {e}", path.display()))?;
            let value = text.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(format!("{table}.{key}_file: {} is empty", path.display()));
            }
            value
        }
        (None, Some(var)) => {
            let value = std::env::var(var)
                .map_err(|e| format!("{table}.{key}_env: environment variable {var}: {e}"))?;
            if value.is_empty() {
                return Err(format!(
                    "{table}.{key}_env: environment variable {var} is empty"
                ));
            }
            value
        }
    };
    Ok(Some(Secret(value)))
}

/// [`load`] for a secret the output cannot work without.
pub fn require(
    output: &str,
    key: &str,
    file: Option<&PathBuf>,
    env: Option<&String>,
) -> Result<Secret, String> {
    load(output, key, file, env)?.ok_or_else(|| {
        format!("outputs.{output}: {key}_file or {key}_env is required (the {key} is never written in the config itself)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_or_the_environment_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = require("hec", "token", Some(&path), None).unwrap();
        assert_eq!(secret.expose(), "s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "Secret(***)");

        std::env::set_var("OTWATCH_TEST_SECRET_A", "from-env");
        let var = "OTWATCH_TEST_SECRET_A".to_string();
        assert_eq!(
            require("hec", "token", None, Some(&var)).unwrap().expose(),
            "from-env"
        );

        let missing = dir.path().join("missing");
        let err = require("hec", "token", Some(&missing), None).unwrap_err();
        assert!(
            err.starts_with("outputs.hec.token_file: cannot read"),
            "{err}"
        );
        let err = require("hec", "token", None, None).unwrap_err();
        assert!(err.contains("token_file or token_env is required"), "{err}");
        let err = require("hec", "token", Some(&path), Some(&var)).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        let err = require("hec", "token", Some(&path), None).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let unset = "OTWATCH_TEST_SECRET_UNSET".to_string();
        let err = require("hec", "token", None, Some(&unset)).unwrap_err();
        assert!(err.starts_with("outputs.hec.token_env"), "{err}");
        assert!(load("hec", "token", None, None).unwrap().is_none());
    }
}
