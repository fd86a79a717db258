//! The central side of otwatch, wired from the component crates:
//!
//! - [`config`] reads `otwatch.toml`;
//! - [`central`] runs collector, event log, history writers, detector and
//!   alert sinks in one process (`otwatch serve`);
//! - [`demo`] adds simulated sites, live alerts and the scorecard (`otwatch demo`);
//! - [`eval`] scores the detector on labelled recordings (`otwatch eval`);
//! - [`metrics`] are the service's figures for Prometheus (`metrics_listen`);
//! - [`sinks`] are the alert outputs.

pub mod central;
pub mod config;
pub mod demo;
pub mod eval;
pub mod metrics;
pub mod sinks;
