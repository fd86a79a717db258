//! The `[sql]` section of `otwatch.toml`: the Postgres wire endpoint that
//! `sql_listen` turns on.
//!
//! ```toml
//! sql_listen = "0.0.0.0:5432"
//!
//! [sql]
//! users_file = "/etc/otwatch/sql-users.toml"   # [[users]] entries, mode 0600
//! max_connections = 32
//! query_timeout = "5m"
//! max_rows = 1000000
//! memory_limit = 1073741824                      # bytes, shared by all connections
//!
//! [sql.tls]
//! cert = "/etc/otwatch/sql.pem"
//! key = "/etc/otwatch/sql-key.pem"
//!
//! [[sql.users]]
//! name = "grafana"
//! password_hash = "SCRAM-SHA-256$4096:…$…:…"     # otwatch sql-user hash
//! sites = ["plant-lyon"]                         # leave out for every site
//! ```
//!
//! Every value is checked by [`SqlEndpointConfig::validate`], which names
//! the key; files (`users_file`, the TLS certificate and key) are read when
//! the endpoint opens ([`crate::SqlEndpoint::open`]) and a file that cannot
//! be used stops the service from starting, naming it.

use crate::users::{SqlUser, Verifier};
use crate::SqlError;
use otwatch_history::SqlConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The `[sql]` section; see the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlEndpointConfig {
    /// The endpoint's certificate and key (PEM). Without it the endpoint
    /// serves plaintext, and then only on a loopback `sql_listen` address.
    /// A certificate or key that cannot be loaded stops the service from
    /// starting: it never falls back to plaintext.
    pub tls: Option<SqlTlsConfig>,
    /// Refuse connections that did not negotiate TLS (clients need
    /// `sslmode=require` or stricter). Default: true when `[sql.tls]` is
    /// set. Setting it to false allows plaintext beside TLS, and only on a
    /// loopback address; true without `[sql.tls]` is refused.
    pub require_tls: Option<bool>,
    /// Analysts who may connect, each with a SCRAM-SHA-256 verifier (never
    /// a password) and optionally the sites they may read.
    pub users: Vec<SqlUser>,
    /// A TOML file of more `[[users]]` entries with the same fields, read
    /// when the service starts. Keeps the verifiers out of the main
    /// configuration; make it readable by the service only (0600).
    pub users_file: Option<PathBuf>,
    /// Connections served at once, handshakes and idle pooled connections
    /// included. A client beyond it is told `too many connections` (53300).
    pub max_connections: usize,
    /// Longest a statement may run, from planning to its last row sent; it
    /// is then cancelled (57014). A client's own `SET statement_timeout`
    /// may only shorten it.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Most rows one statement may return. A result with more fails
    /// (54000) rather than arrive cut without a word: add a `LIMIT` or
    /// narrow the query.
    pub max_rows: u64,
    /// Memory the queries of all connections together may hold in their
    /// operators (joins, sorts, aggregations), in bytes. Sorts and
    /// aggregations spill to disk beyond it; a query that still needs more
    /// fails naming this limit (53200). Default: 1 GiB.
    pub memory_limit: u64,
    /// Directory for spill files. Default: the system's temporary
    /// directory (`TMPDIR`).
    pub spill_dir: Option<PathBuf>,
    /// Most disk the spill files of the endpoint may use, in bytes.
    /// Default: 16 GiB.
    pub max_spill_bytes: u64,
}

/// The `[sql.tls]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlTlsConfig {
    /// The endpoint's certificate (PEM; its chain may follow it), e.g.
    /// `collector.pem` from `otwatch cert issue --collector HOST`, or one
    /// from the organisation's CA that analysts' machines already trust.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Default of `query_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of `max_rows`.
pub const DEFAULT_MAX_ROWS: u64 = 1_000_000;

impl Default for SqlEndpointConfig {
    fn default() -> Self {
        let history = SqlConfig::default();
        SqlEndpointConfig {
            tls: None,
            require_tls: None,
            users: Vec::new(),
            users_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_rows: DEFAULT_MAX_ROWS,
            memory_limit: history.memory_limit,
            spill_dir: history.spill_dir,
            max_spill_bytes: history.max_spill_bytes,
        }
    }
}

impl SqlEndpointConfig {
    /// Whether plaintext connections are refused: `require_tls`, true by
    /// default when TLS is configured.
    pub fn requires_tls(&self) -> bool {
        self.require_tls.unwrap_or(self.tls.is_some())
    }

    /// The history's query limits for the endpoint's session. `max_rows`
    /// is not among them: the endpoint applies it itself, as an error.
    pub fn history_limits(&self) -> SqlConfig {
        SqlConfig {
            memory_limit: self.memory_limit,
            max_rows: None,
            spill_dir: self.spill_dir.clone(),
            max_spill_bytes: self.max_spill_bytes,
        }
    }

    /// Checks every value, naming the key (`sql.…`). `listen` is
    /// `sql_listen`: with it, the endpoint's transport is checked too
    /// (plaintext only on loopback) and at least one user must be
    /// configured, inline or through `users_file`.
    pub fn validate(&self, listen: Option<SocketAddr>) -> Result<(), SqlError> {
        let invalid = |key: &str, detail: String| SqlError::Config {
            key: format!("sql.{key}"),
            detail,
        };
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1".into()));
        }
        if self.query_timeout.is_zero() {
            return Err(invalid("query_timeout", "must be longer than 0".into()));
        }
        if self.max_rows == 0 {
            return Err(invalid("max_rows", "must be at least 1".into()));
        }
        self.history_limits().validate().map_err(|e| match e {
            otwatch_history::HistoryError::Config { key, detail } => invalid(key, detail),
            other => invalid("memory_limit", other.to_string()),
        })?;
        if self.require_tls == Some(true) && self.tls.is_none() {
            return Err(invalid(
                "require_tls",
                "is true but [sql.tls] (cert and key) is not configured".into(),
            ));
        }
        check_users(&self.users, "sql.users")?;
        let Some(listen) = listen else {
            return Ok(());
        };
        if !listen.ip().is_loopback() {
            if self.tls.is_none() {
                return Err(SqlError::Config {
                    key: "sql_listen".into(),
                    detail: format!(
                        "= {listen} is not a loopback address: passwords and query results would cross the network in cleartext; configure [sql.tls] (cert and key)"
                    ),
                });
            }
            if !self.requires_tls() {
                return Err(invalid(
                    "require_tls",
                    format!("= false allows plaintext, which only a loopback sql_listen may serve, not {listen}"),
                ));
            }
        }
        if self.users.is_empty() && self.users_file.is_none() {
            return Err(invalid(
                "users",
                "is empty although sql_listen is set: nobody could connect; add [[sql.users]] or sql.users_file (make a verifier with `otwatch sql-user hash`)".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a list of users (from the configuration or a users file named by
/// `origin`): names valid and unique, verifiers well formed, site lists
/// not empty and made of valid site ids. Errors never quote a
/// `password_hash`, which could be a password written there by mistake.
pub(crate) fn check_users(users: &[SqlUser], origin: &str) -> Result<(), SqlError> {
    let mut seen = HashSet::new();
    for user in users {
        let invalid = |detail: String| SqlError::Config {
            key: format!("{origin}[name = {:?}]", user.name),
            detail,
        };
        if user.name.is_empty() || user.name.len() > 63 || user.name.chars().any(char::is_control) {
            return Err(SqlError::Config {
                key: format!("{origin}.name"),
                detail: format!(
                    "{:?} is not a user name: use 1 to 63 printable characters",
                    user.name
                ),
            });
        }
        if !seen.insert(user.name.as_str()) {
            return Err(invalid("is listed twice".into()));
        }
        Verifier::parse(&user.password_hash).map_err(|why| {
            invalid(format!(
                "password_hash is not a SCRAM-SHA-256 verifier ({why}); make one with `otwatch sql-user hash`"
            ))
        })?;
        if let Some(sites) = &user.sites {
            if sites.is_empty() {
                return Err(invalid(
                    "sites = [] would show no rows at all: list the sites, or leave sites out for every site".into(),
                ));
            }
            for site in sites {
                otwatch_proto::identity::check_id("site", site)
                    .map_err(|e| invalid(format!("sites: {e}")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::hash_password;

    fn user(name: &str, sites: Option<Vec<&str>>) -> SqlUser {
        SqlUser {
            name: name.into(),
            password_hash: hash_password("secret", 4096),
            sites: sites.map(|s| s.into_iter().map(String::from).collect()),
        }
    }

    fn refused(config: &SqlEndpointConfig, listen: &str) -> String {
        config
            .validate(Some(listen.parse().unwrap()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_are_off_and_safe() {
        let c: SqlEndpointConfig = toml::from_str("").unwrap();
        assert_eq!(c, SqlEndpointConfig::default());
        assert!(!c.requires_tls());
        assert_eq!(c.max_rows, DEFAULT_MAX_ROWS);
        c.validate(None).unwrap();
        // Turned on without users: nobody could connect.
        assert!(refused(&c, "127.0.0.1:5432").contains("sql.users"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<SqlEndpointConfig>("max_conections = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        let err = toml::from_str::<SqlEndpointConfig>(
            "[[users]]\nname = \"a\"\npassword = \"hunter2\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `password`"), "{err}");
    }

    #[test]
    fn plaintext_only_on_loopback() {
        let mut c = SqlEndpointConfig {
            users: vec![user("analyst", None)],
            ..Default::default()
        };
        c.validate(Some("127.0.0.1:5432".parse().unwrap())).unwrap();
        c.validate(Some("[::1]:5432".parse().unwrap())).unwrap();
        let err = refused(&c, "0.0.0.0:5432");
        assert!(
            err.contains("sql_listen") && err.contains("[sql.tls]"),
            "{err}"
        );
        c.tls = Some(SqlTlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        });
        assert!(c.requires_tls());
        c.validate(Some("0.0.0.0:5432".parse().unwrap())).unwrap();
        c.require_tls = Some(false);
        assert!(refused(&c, "0.0.0.0:5432").contains("sql.require_tls"));
        c.validate(Some("127.0.0.1:5432".parse().unwrap())).unwrap();
        c.tls = None;
        c.require_tls = Some(true);
        assert!(c
            .validate(None)
            .unwrap_err()
            .to_string()
            .contains("sql.require_tls"));
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_name() {
        let base = SqlEndpointConfig {
            users: vec![user("analyst", None)],
            ..Default::default()
        };
        let check = |edit: &dyn Fn(&mut SqlEndpointConfig), key: &str| {
            let mut c = base.clone();
            edit(&mut c);
            let err = refused(&c, "127.0.0.1:5432");
            assert!(err.contains(key), "{key}: {err}");
        };
        check(&|c| c.max_connections = 0, "sql.max_connections");
        check(&|c| c.query_timeout = Duration::ZERO, "sql.query_timeout");
        check(&|c| c.max_rows = 0, "sql.max_rows");
        check(&|c| c.memory_limit = 0, "sql.memory_limit");
        check(&|c| c.max_spill_bytes = 0, "sql.max_spill_bytes");
        check(&|c| c.users.push(user("analyst", None)), "listed twice");
        check(&|c| c.users = vec![user("", None)], "sql.users.name");
        check(&|c| c.users = vec![user("a", Some(vec![]))], "sites = []");
        check(
            &|c| c.users = vec![user("a", Some(vec!["plant lyon"]))],
            "not valid",
        );
    }

    #[test]
    fn a_password_in_place_of_a_verifier_is_refused_without_being_repeated() {
        let c = SqlEndpointConfig {
            users: vec![SqlUser {
                name: "analyst".into(),
                password_hash: "correct horse battery staple".into(),
                sites: None,
            }],
            ..Default::default()
        };
        let err = refused(&c, "127.0.0.1:5432");
        assert!(err.contains("otwatch sql-user hash"), "{err}");
        assert!(!err.contains("horse"), "{err}");
    }
}
