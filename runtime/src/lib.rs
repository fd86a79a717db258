//! The central otwatch runtime: components over the event log, supervised,
//! with their health visible. The `otwatch` binary's `serve` command runs
//! it; tools (the demo, evaluation, certificates) live beside it in their
//! own crates.
//!
//! - [`config`]: `otwatch.toml`, validated the same way by every command;
//! - [`components`]: ingest, detector, history writers, the SQL endpoint;
//! - [`admin`]: the admin socket (`otwatch model ...`) and the control
//!   plane's wire format;
//! - [`dashboard`]: the SOC's pages in the browser and their JSON API;
//! - [`outputs`]: the alert outputs, each a consumer of the `alerts` topic;
//! - [`supervisor`]: runs components in stages, turns a failure into a stop
//!   with a non-zero exit;
//! - [`health`]: each component's state and lag, for `/healthz`, `/readyz`
//!   and `/metrics` ([`metrics`]);
//! - [`service`]: the whole of it in one process, on one data directory.

pub mod admin;
pub mod components;
pub mod config;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod outputs;
pub mod roles;
pub mod service;
pub mod supervisor;

pub use config::ServerConfig;
pub use service::{history_dir, log_dir, Service};
