//! Who may connect: user names, their SCRAM-SHA-256 verifiers and the sites
//! each may read.
//!
//! # Verifier format
//!
//! A user's `password_hash` is a SCRAM-SHA-256 verifier in the format
//! PostgreSQL keeps in `pg_authid.rolpassword` (RFC 5803):
//!
//! ```text
//! SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//! ```
//!
//! salt, StoredKey and ServerKey in standard base64, where
//!
//! ```text
//! SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
//! StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
//! ServerKey      = HMAC(SaltedPassword, "Server Key")
//! ```
//!
//! The verifier lets the server check a client's proof without ever
//! holding the password or anything a client could log in with (unlike the
//! salted password itself): a leaked verifier allows offline guessing, so
//! keep it readable by the service only, but not a login. A verifier made
//! by PostgreSQL (`SELECT rolpassword FROM pg_authid`) works here too, and
//! ours there. `otwatch sql-user hash` makes one ([`hash_password`]).
//!
//! # Users file
//!
//! `sql.users_file` is TOML with the same entries as `[[sql.users]]`:
//!
//! ```toml
//! [[users]]
//! name = "grafana"
//! password_hash = "SCRAM-SHA-256$4096:…$…:…"
//! sites = ["plant-lyon"]     # leave out for every site
//! ```

use crate::config::check_users;
use crate::SqlError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

/// One analyst account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlUser {
    /// The user name clients log in with (`psql -U NAME`).
    pub name: String,
    /// The SCRAM-SHA-256 verifier of the user's password (see the module
    /// documentation), from `otwatch sql-user hash`. Never a password.
    pub password_hash: String,
    /// Sites whose rows of `events` and `alerts` the user sees; every other
    /// site's rows are invisible to any query of theirs. Leave it out for
    /// every site.
    #[serde(default)]
    pub sites: Option<Vec<String>>,
}

/// Iterations PostgreSQL uses by default (`scram_iterations`), and the
/// least RFC 7677 allows.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Bytes of salt in a new verifier (as PostgreSQL makes them).
const SALT_LEN: usize = 16;
const PREFIX: &str = "SCRAM-SHA-256";

/// A parsed verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs and panics.
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads `SCRAM-SHA-256$i:salt$StoredKey:ServerKey`. The error says
    /// which part is wrong, never what the text held.
    pub fn parse(text: &str) -> Result<Verifier, &'static str> {
        let rest = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or("it does not start with SCRAM-SHA-256$")?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or("expected SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey")?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or("expected iterations:salt after SCRAM-SHA-256$")?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| "the iteration count is not a number")?;
        if iterations < DEFAULT_ITERATIONS {
            return Err("fewer than 4096 iterations");
        }
        let salt = BASE64.decode(salt).map_err(|_| "the salt is not base64")?;
        if salt.is_empty() {
            return Err("the salt is empty");
        }
        let (stored, server) = keys
            .split_once(':')
            .ok_or("expected StoredKey:ServerKey at the end")?;
        let key = |text: &str, what: &'static str| -> Result<[u8; 32], &'static str> {
            BASE64
                .decode(text)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or(what)
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey is not 32 bytes of base64")?,
            server_key: key(server, "ServerKey is not 32 bytes of base64")?,
        })
    }

    /// Derives the verifier of `password` with `salt` and `iterations`.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// A new verifier of `password` with a random salt, in the text form of
/// the module documentation.
pub fn hash_password(password: &str, iterations: u32) -> String {
    let mut salt = [0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("the system's random generator works");
    Verifier::derive(password, &salt, iterations.max(DEFAULT_ITERATIONS)).to_string()
}

/// `Hi(Normalize(password), salt, i)` of RFC 5802, normalised with SASLprep
/// as PostgreSQL does: a password SASLprep refuses is used as it is.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let normalized = stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password));
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).expect("iterations are at least 4096"),
        salt,
        normalized.as_bytes(),
        &mut out,
    );
    out
}

pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    tag.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Checks entries the way the service does when it reads them (names,
/// verifiers, sites).
pub fn check_entries(users: &[SqlUser]) -> Result<(), SqlError> {
    check_users(users, "users")
}

/// What a logged-in user may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub user: Arc<str>,
    /// `None`: every site.
    pub sites: Option<Arc<[String]>>,
}

/// The users the endpoint knows, by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, (Verifier, Access)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<SqlUser>,
}

impl Users {
    /// The users of the configuration plus those of `users_file`. Fails
    /// naming the file, or the user and what is wrong with the entry.
    pub fn load(inline: &[SqlUser], users_file: Option<&Path>) -> Result<Users, SqlError> {
        let mut all = inline.to_vec();
        check_users(&all, "sql.users")?;
        if let Some(path) = users_file {
            let file_err = |detail: String| SqlError::UsersFile {
                path: path.to_path_buf(),
                detail,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
            let file: UsersFile = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
            let origin = format!("{}: users", path.display());
            check_users(&file.users, &origin)?;
            for user in &file.users {
                if all.iter().any(|u| u.name == user.name) {
                    return Err(file_err(format!(
                        "user {:?} is also configured in [[sql.users]]",
                        user.name
                    )));
                }
            }
            warn_if_others_can_read(path);
            all.extend(file.users);
        }
        let by_name = all
            .into_iter()
            .map(|u| {
                let verifier = Verifier::parse(&u.password_hash).expect("checked above");
                let access = Access {
                    user: Arc::from(u.name.as_str()),
                    sites: u.sites.map(Arc::from),
                };
                (u.name, (verifier, access))
            })
            .collect();
        Ok(Users { by_name })
    }

    /// The verifier and access of `name`, if it is a user.
    pub fn get(&self, name: &str) -> Option<&(Verifier, Access)> {
        self.by_name.get(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Verifiers allow offline password guessing: say so when the file is
/// readable by anyone but its owner's group.
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "sql.users_file is readable by every user of this machine: its verifiers allow offline password guessing (chmod 600)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_round_trips_through_its_text() {
        let text = hash_password("pencil", 4096);
        let v = Verifier::parse(&text).unwrap();
        assert_eq!(v.to_string(), text);
        assert_eq!(v.salt.len(), SALT_LEN);
        assert_eq!(Verifier::derive("pencil", &v.salt, 4096), v);
        assert_ne!(Verifier::derive("pencil!", &v.salt, 4096), v);
        // Two hashes of one password differ by their salt.
        assert_ne!(hash_password("pencil", 4096), text);
    }

    #[test]
    fn the_rfc_7677_example_gives_its_keys() {
        // RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::derive("pencil", &salt, 4096);
        // The server signature of the RFC's exchange follows from ServerKey.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac_sha256(&v.server_key, auth_message.as_bytes());
        assert_eq!(
            BASE64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn malformed_verifiers_are_refused_with_the_part_that_is_wrong() {
        let good = hash_password("x", 4096);
        assert_eq!(
            Verifier::parse("hunter2").unwrap_err(),
            "it does not start with SCRAM-SHA-256$"
        );
        assert!(Verifier::parse(&good.replace("4096", "1000"))
            .unwrap_err()
            .contains("4096"));
        let cut = &good[..good.len() - 8];
        assert!(Verifier::parse(cut).unwrap_err().contains("ServerKey"));
        // md5 verifiers (PostgreSQL's older kind) are not SCRAM.
        assert!(Verifier::parse("md5d1e3b6e1b1f1c6a2b3c4d5e6f7a8b9c0").is_err());
    }

    #[test]
    fn a_users_file_adds_users_and_names_itself_when_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let hash = hash_password("secret", 4096);
        std::fs::write(
            &path,
            format!("[[users]]\nname = \"lyon\"\npassword_hash = \"{hash}\"\nsites = [\"plant-lyon\"]\n"),
        )
        .unwrap();
        let inline = vec![SqlUser {
            name: "admin".into(),
            password_hash: hash.clone(),
            sites: None,
        }];
        let users = Users::load(&inline, Some(&path)).unwrap();
        assert_eq!(users.len(), 2);
        let (_, lyon) = users.get("lyon").unwrap();
        assert_eq!(lyon.sites.as_deref(), Some(&["plant-lyon".to_string()][..]));
        assert!(users.get("admin").unwrap().1.sites.is_none());
        assert!(users.get("nobody").is_none());

        std::fs::write(
            &path,
            "[[users]]\nname = \"admin\"\npassword_hash = \"x\"\n",
        )
        .unwrap();
        let err = Users::load(&inline, Some(&path)).unwrap_err().to_string();
        assert!(err.contains("users.toml") && err.contains("admin"), "{err}");
        let err = Users::load(&inline, Some(&dir.path().join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
