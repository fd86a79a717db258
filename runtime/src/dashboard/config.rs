//! The `[dashboard]` section: who may sign in, with which role and sites,
//! TLS, and the limits of the sign-in.
//!
//! ```toml
//! dashboard_listen = "0.0.0.0:8443"
//!
//! [dashboard.tls]
//! cert = "/etc/otwatch/collector.pem"     # otwatch cert issue --collector HOST
//! key = "/etc/otwatch/collector-key.pem"
//!
//! [[dashboard.users]]
//! name = "soc-hq"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # otwatch dashboard-user hash
//! role = "analyst"
//!
//! [[dashboard.users]]
//! name = "brno-shift"
//! password_hash = "$argon2id$…"
//! role = "viewer"
//! sites = ["plant-brno"]
//! ```
//!
//! `users_file` names a TOML file with the same `[[users]]` entries, read
//! at start, so that hashes need not sit in the main configuration.

use otwatch_proto::identity::check_id;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees alerts, assets, the fleet and the overview.
    Viewer,
    /// Also acks, resolves, comments and suppresses alerts, and accepts or
    /// relearns models.
    Analyst,
}

/// One dashboard account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardUser {
    /// The name the user signs in with; it goes into the audit of every
    /// decision they take (as `dashboard:NAME`).
    pub name: String,
    /// The argon2id hash of the password in PHC form (`$argon2id$v=19$…`),
    /// from `otwatch dashboard-user hash`. Never a password.
    pub password_hash: String,
    /// `viewer` (reads) or `analyst` (reads and decides).
    pub role: Role,
    /// The sites the user sees and handles; every other site's alerts,
    /// assets and agents are invisible to them. Leave it out for every site
    /// (headquarters).
    #[serde(default)]
    pub sites: Option<Vec<String>>,
}

/// The `[dashboard.tls]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardTlsConfig {
    /// The dashboard's certificate (PEM; its chain may follow it), e.g.
    /// `collector.pem` from `otwatch cert issue --collector HOST`, or one
    /// from the organisation's CA that the SOC's browsers already trust.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The `[dashboard]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// HTTPS for the dashboard. Required unless `dashboard_listen` is a
    /// loopback address: passwords and session cookies must not cross a
    /// network in cleartext.
    pub tls: Option<DashboardTlsConfig>,
    /// The accounts.
    pub users: Vec<DashboardUser>,
    /// A TOML file with more `[[users]]` entries (same fields), read at
    /// start.
    pub users_file: Option<PathBuf>,
    /// How long a session lasts after sign-in, e.g. "8h" (one shift).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed sign-ins, per user name and per client address, after which
    /// further attempts are refused for `lockout` (each failure is audited).
    pub max_failed_signins: u32,
    /// How long sign-ins stay refused after `max_failed_signins` failures.
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
    /// Sessions open at once; the oldest is ended to make room.
    pub max_sessions: usize,
    /// Rows an alert list or an event list returns at most.
    pub max_rows: usize,
    /// Points a plot's series returns at most (the newest are kept).
    pub max_points: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            tls: None,
            users: Vec::new(),
            users_file: None,
            session_ttl: Duration::from_secs(8 * 3600),
            max_failed_signins: 5,
            lockout: Duration::from_secs(15 * 60),
            max_sessions: 1000,
            max_rows: 5000,
            max_points: 200_000,
        }
    }
}

/// A configuration mistake, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {detail}")]
pub struct DashboardConfigError {
    pub key: String,
    pub detail: String,
}

fn invalid(key: impl Into<String>, detail: impl Into<String>) -> DashboardConfigError {
    DashboardConfigError {
        key: key.into(),
        detail: detail.into(),
    }
}

/// The users file: `[[users]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<DashboardUser>,
}

impl DashboardConfig {
    /// Checks every value, naming the key (`dashboard.…`); `listen` is
    /// `dashboard_listen`. Files are not read here ([`Self::all_users`]).
    pub fn validate(&self, listen: Option<SocketAddr>) -> Result<(), DashboardConfigError> {
        let Some(listen) = listen else {
            return Ok(());
        };
        if self.tls.is_none() && !listen.ip().is_loopback() {
            return Err(invalid(
                "dashboard_listen",
                format!("= {listen} is not a loopback address: passwords and session cookies would cross the network in cleartext; configure [dashboard.tls] (cert and key)"),
            ));
        }
        if self.users.is_empty() && self.users_file.is_none() {
            return Err(invalid(
                "dashboard.users",
                "is empty although dashboard_listen is set: nobody could sign in; add [[dashboard.users]] or dashboard.users_file (make a hash with `otwatch dashboard-user hash`)",
            ));
        }
        check_users(&self.users, "dashboard.users")?;
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(invalid(
                "dashboard.session_ttl",
                "must be between 1 minute and 7 days",
            ));
        }
        if self.max_failed_signins == 0 {
            return Err(invalid(
                "dashboard.max_failed_signins",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("max_sessions", self.max_sessions),
            ("max_rows", self.max_rows),
            ("max_points", self.max_points),
        ] {
            if value == 0 {
                return Err(invalid(format!("dashboard.{key}"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The users of the configuration and of `users_file`, checked
    /// together (a name in both is an error).
    pub fn all_users(&self) -> Result<Vec<DashboardUser>, DashboardConfigError> {
        let mut users = self.users.clone();
        if let Some(path) = &self.users_file {
            users.extend(read_users_file(path)?);
        }
        check_users(&users, "dashboard.users")?;
        Ok(users)
    }
}

fn read_users_file(path: &Path) -> Result<Vec<DashboardUser>, DashboardConfigError> {
    let key = "dashboard.users_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    // The parser's message may quote the offending line, which may hold a
    // hash or a password: only its position is reported.
    let file: UsersFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        invalid(
            key,
            format!("{} is not a users file{at}: expected [[users]] entries with name, password_hash, role and optional sites", path.display()),
        )
    })?;
    Ok(file.users)
}

/// Names valid and unique, hashes argon2 PHC strings, roles known, site
/// lists not empty and made of valid site ids. Errors never quote a
/// `password_hash`, which could be a password written there by mistake.
fn check_users(users: &[DashboardUser], origin: &str) -> Result<(), DashboardConfigError> {
    let mut seen = HashSet::new();
    for user in users {
        if user.name.is_empty()
            || user.name.len() > 63
            || user
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                format!("{origin}.name"),
                format!(
                    "{:?} is not a user name: use 1 to 63 printable characters without spaces",
                    user.name
                ),
            ));
        }
        let key = format!("{origin}[name = {:?}]", user.name);
        if !seen.insert(user.name.as_str()) {
            return Err(invalid(key, "is listed twice"));
        }
        if argon2::PasswordHash::new(&user.password_hash).is_err()
            || !user.password_hash.starts_with("$argon2")
        {
            return Err(invalid(
                key,
                "password_hash is not an argon2 hash in PHC form ($argon2id$…); make one with `otwatch dashboard-user hash`",
            ));
        }
        if let Some(sites) = &user.sites {
            if sites.is_empty() {
                return Err(invalid(
                    key,
                    "sites = [] would show nothing at all: list the sites, or leave sites out for every site",
                ));
            }
            for site in sites {
                check_id("site", site).map_err(|e| invalid(key.clone(), format!("sites: {e}")))?;
            }
        }
    }
    Ok(())
}
