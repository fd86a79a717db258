//! `otwatch-agent`: reads controller events at a factory site and streams
//! them to the otwatch collector without losing any.

use anyhow::Context;
use clap::Parser;
use otwatch_agent::config::AgentConfig;
use otwatch_agent::Agent;
use std::path::PathBuf;
use std::time::Duration;

mod memory;

/// The otwatch edge agent.
///
/// Reads events from its sources (a simulated site, or a file of JSON lines),
/// numbers each one and stores it in an on-disk queue before anything else
/// happens to it, then streams the queue to the collector over gRPC. Events
/// leave the queue only when the collector says it holds them durably, so a
/// power cut or a WAN outage loses nothing: the agent resends what is
/// missing when it comes back.
///
/// Example agent.toml:
///
///   site = "plant-lyon"
///   agent = "gw-1"
///   data_dir = "/var/lib/otwatch-agent"
///   [collector]
///   url = "https://collector.example:4317"
///   [collector.tls]
///   ca = "/etc/otwatch-agent/ca.pem"
///   cert = "/etc/otwatch-agent/agent-plant-lyon-gw-1.pem"
///   key = "/etc/otwatch-agent/agent-plant-lyon-gw-1-key.pem"
///   [[sources]]
///   type = "file"
///   path = "/var/log/plc/events.jsonl"
///
/// Every option is described in the README's configuration reference;
/// unknown keys are refused.
#[derive(Parser)]
#[command(name = "otwatch-agent", version, verbatim_doc_comment)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// On Ctrl-C, how long to wait for the collector to ack queued events
    /// before exiting (they stay queued either way).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

fn main() -> anyhow::Result<()> {
    memory::configure_allocator();
    tracing_subscriber::fmt()
        // Colour codes only for a person at a terminal, not in journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            // The OPC UA library's own lines are left out by default: the
            // opcua source logs every failure itself, with the server, the
            // item and the status, once per outage (RUST_LOG brings them
            // back for a diagnosis).
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,opcua_client=off,opcua_core=off,opcua_crypto=off".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = AgentConfig::load(&cli.config)?;
    if cli.check {
        println!("{}: configuration is valid", cli.config.display());
        return Ok(());
    }
    // The parse's garbage (8.5 MiB of heap for 5,000 tags) is freed by now.
    memory::release_free_memory();
    memory::runtime()
        .context("cannot start the async runtime")?
        .block_on(run(cli, config))
}

async fn run(cli: Cli, config: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::start(config).context("agent failed to start")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let failure = tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("cannot wait for Ctrl-C")?; None }
        _ = term.recv() => None,
        reason = agent.failed() => Some(reason),
    };
    tracing::info!("stopping");
    let stopped = agent.stop(cli.drain).await;
    if let Some(reason) = failure {
        // Exit non-zero so that the supervisor restarts the agent; opening
        // the queue and the checkpoints again recovers from the disk.
        anyhow::bail!("{reason}");
    }
    let counts = stopped?;
    tracing::info!(?counts, "stopped");
    Ok(())
}
