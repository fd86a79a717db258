//! otwatch's Postgres wire endpoint: analysts query the history with
//! `psql`, Grafana's PostgreSQL data source, DBeaver or psycopg, from their
//! own machines, over the same read-only SQL as `otwatch sql`.
//!
//! It owns the `[sql]` configuration ([`config`]), the users and their
//! SCRAM-SHA-256 verifiers ([`users`], [`scram`]), TLS ([`tls`]), the
//! accept loop and logins ([`server`]), each connection's session
//! ([`session`]) and what statements do ([`handler`]). The runtime runs
//! it as the `sql` component when `sql_listen` is set.
//!
//! Promises:
//! - read-only: only queries run, with the same rules as `otwatch sql`
//!   ([`otwatch_history::read_only`]), over the committed history files
//!   only ([`otwatch_history::session_with`]);
//! - passwords are checked with SCRAM-SHA-256 against verifiers that are
//!   not passwords; configuration holds no password;
//! - a user limited to sites sees only those sites' rows of `events` and
//!   `alerts`, whatever SQL it sends;
//! - TLS fails closed: a certificate or key that cannot be loaded stops the
//!   endpoint from starting, and with `require_tls` (the default with TLS)
//!   a plaintext client is refused; plaintext without TLS only on loopback;
//! - bounded: connections, statement time, result rows and query memory
//!   (shared by all connections) have limits, and a statement past one
//!   fails with an error naming it: no answer is silently cut;
//! - a bad statement or login is an error for that client only.
//!
//! It uses datafusion-postgres 0.19 (pgwire 0.41, through its re-export)
//! for the protocol, the `pg_catalog` tables and the rewriting of catalog
//! queries; its login, TLS setup and query handler are replaced, since
//! they check no password, fall back to plaintext, and run any statement.

pub mod config;
mod error;
pub mod handler;
pub mod scram;
pub mod server;
mod session;
pub mod tls;
pub mod users;

pub use config::{SqlEndpointConfig, SqlTlsConfig};
pub use error::SqlError;
pub use server::SqlEndpoint;
pub use users::{hash_password, SqlUser, DEFAULT_ITERATIONS};
