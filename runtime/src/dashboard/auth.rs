//! Sign-in and sessions of the dashboard.
//!
//! - Passwords are checked against argon2id hashes ([`hash_password`] makes
//!   them); a name that is not a user costs the same hash as one that is,
//!   so timing does not tell which names exist.
//! - A session is a random 256-bit token in an `HttpOnly`, `SameSite=Strict`
//!   cookie (`Secure` under TLS), held in memory only: a restart signs
//!   everyone out. Each session has its own CSRF token, which every state
//!   change must carry in the `X-CSRF-Token` header; a page of another
//!   origin can neither read it nor set that header.
//! - Failed sign-ins are counted per user name and per client address;
//!   after `max_failed_signins` within `lockout`, sign-ins of that name or
//!   address are refused until `lockout` has passed since the last failure.

use super::config::{DashboardConfig, DashboardUser, Role};
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "otwatch_session";
/// Names and addresses whose failed sign-ins are counted at once.
const MAX_TRACKED_FAILURES: usize = 10_000;

/// The header that carries the CSRF token on every state change.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A new argon2id hash (PHC form) of `password`, with the library's
/// default cost (19 MiB, 2 passes: OWASP's recommended minimum).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?
        .to_string())
}

/// Who is signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// `None`: every site.
    pub sites: Option<Vec<String>>,
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether the user may see and handle `site`.
    pub fn sees(&self, site: &str) -> bool {
        self.sites
            .as_ref()
            .is_none_or(|sites| sites.iter().any(|s| s == site))
    }

    /// The name decisions are recorded under in the audit.
    pub fn audit_name(&self) -> String {
        format!("dashboard:{}", self.user)
    }
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SigninRefused {
    /// Wrong name or password (which one is not said).
    BadCredentials,
    /// Too many failures from this name or address; try again after this.
    Locked { retry_after: Duration },
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

/// The users, the open sessions and the failure counts.
pub struct Auth {
    users: HashMap<String, DashboardUser>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    ttl: Duration,
    max_failed: u32,
    lockout: Duration,
    max_sessions: usize,
    /// A hash to check a password against when the name is unknown.
    decoy: String,
    random: SystemRandom,
}

impl Auth {
    pub fn new(config: &DashboardConfig, users: Vec<DashboardUser>) -> anyhow::Result<Auth> {
        Ok(Auth {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            ttl: config.session_ttl,
            max_failed: config.max_failed_signins,
            lockout: config.lockout,
            max_sessions: config.max_sessions,
            decoy: hash_password("not a password of anyone")?,
            random: SystemRandom::new(),
        })
    }

    /// The number of accounts.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn token(&self) -> String {
        let mut bytes = [0u8; 32];
        self.random
            .fill(&mut bytes)
            .expect("the system's random source works");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn locked(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().expect("not poisoned");
        keys.iter()
            .filter_map(|k| failures.get(k))
            .filter(|f| f.count >= self.max_failed)
            .filter_map(|f| f.last)
            .map(|last| self.lockout.saturating_sub(now.duration_since(last)))
            .filter(|left| !left.is_zero())
            .max()
    }

    fn failed(&self, keys: &[String], now: Instant) {
        let mut failures = self.failures.lock().expect("not poisoned");
        // Old entries go, so a spray of names cannot grow the map for ever.
        let lockout = self.lockout;
        failures.retain(|_, f| f.last.is_some_and(|l| now.duration_since(l) < lockout));
        // A spray from many addresses cannot grow it past a bound either:
        // the entries failed longest ago go first.
        while failures.len() + keys.len() > MAX_TRACKED_FAILURES {
            let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            failures.remove(&oldest);
        }
        for key in keys {
            let f = failures.entry(key.clone()).or_default();
            f.count += 1;
            f.last = Some(now);
        }
    }

    /// Checks `name` and `password` from `peer`; on success opens a session
    /// and returns its token with it. The password check runs on a
    /// blocking thread (argon2 takes tens of milliseconds by design).
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<(String, Session), SigninRefused> {
        let now = Instant::now();
        let keys = [format!("user:{name}"), format!("ip:{peer}")];
        if let Some(retry_after) = self.locked(&keys, now) {
            return Err(SigninRefused::Locked { retry_after });
        }
        let user = self.users.get(name);
        let hash = user.map_or(self.decoy.clone(), |u| u.password_hash.clone());
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let Some(user) = user.filter(|_| matches) else {
            self.failed(&keys, now);
            return Err(SigninRefused::BadCredentials);
        };
        self.failures.lock().expect("not poisoned").remove(&keys[0]);
        let session = Session {
            user: user.name.clone(),
            role: user.role,
            sites: user.sites.clone(),
            csrf: self.token(),
            expires: now + self.ttl,
        };
        let token = self.token();
        let mut sessions = self.sessions.lock().expect("not poisoned");
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= self.max_sessions {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), session.clone());
        Ok((token, session))
    }

    /// The session of `token`, if it is open.
    pub fn session(&self, token: &str) -> Option<Session> {
        let sessions = self.sessions.lock().expect("not poisoned");
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// Ends the session of `token`.
    pub fn sign_out(&self, token: &str) {
        self.sessions.lock().expect("not poisoned").remove(token);
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(token: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}
