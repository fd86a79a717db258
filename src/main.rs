//! `otwatch`: the central binary. Argument parsing and exit codes only: the
//! service lives in `otwatch-runtime`, the tools beside it in their own
//! crates (`otwatch-demo`, `otwatch-eval`, `otwatch-pki`).
//!
//! Exit codes: 0 after a clean stop; 1 when the command could not start or
//! do its work (the message says why); 2 for a usage error; 70 when a
//! component of a running service failed (logged with its cause), so that
//! systemd or Kubernetes restarts it.

mod alerts;

use otwatch_demo as demo;
use otwatch_eval as eval;
use otwatch_pki as cert;
use otwatch_runtime::config;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// otwatch: collects controller events from factory sites, learns how each
/// machine normally cycles, and alerts the SOC when something deviates.
///
/// Start with `otwatch demo`: simulated sites stream events to an embedded
/// central service, which learns, catches a scripted attack schedule and
/// prints a scorecard. Then query what it stored with `otwatch sql`.
#[derive(Parser)]
#[command(name = "otwatch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the central service for real agents: gRPC collector, event log,
    /// Parquet history, detector and alert outputs, in one process.
    ///
    /// Agents connect to --listen over TLS with client certificates
    /// ([collector.tls] in the config; make the files with `otwatch cert`).
    /// Without TLS it refuses to start, unless told --insecure-loopback and
    /// bound to a loopback address. Data (event log, history, detector
    /// checkpoints, alerts.jsonl) lives in --data-dir, which one process
    /// at a time may use. Stops cleanly on Ctrl-C or SIGTERM (ingest first,
    /// then the rest drains what the log holds); everything resumes from
    /// disk at the next start. If a component fails, the service stops and
    /// exits with status 70 so that its supervisor restarts it;
    /// --metrics-listen serves /healthz, /readyz and /metrics meanwhile.
    ///
    /// Example: otwatch serve --config /etc/otwatch/otwatch.toml
    Serve {
        /// Configuration file (TOML); every option is described in the README.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (overrides the config file). Default: ./otwatch-data
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Ingest address (overrides the config file). Default: 127.0.0.1:4317
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Accept agents over plaintext gRPC, trusting the site and agent
        /// names they send. Only on a loopback --listen address; for local
        /// trials, never for real sites.
        #[arg(long)]
        insecure_loopback: bool,
        /// Serve Prometheus metrics (GET /metrics) and a health check
        /// (GET /healthz) on this address (overrides the config file's
        /// metrics_listen). Default: none.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Serve the Postgres wire endpoint for analysts (psql, Grafana,
        /// DBeaver, psycopg) on this address (overrides the config file's
        /// sql_listen; users, TLS and limits are in its [sql] section).
        /// Default: none.
        #[arg(long, value_name = "ADDR")]
        sql_listen: Option<SocketAddr>,
        /// Serve the SOC dashboard (alerts, assets, fleet, in the browser)
        /// on this address (overrides the config file's dashboard_listen;
        /// accounts and TLS are in its [dashboard] section). Default: none.
        #[arg(long, value_name = "ADDR")]
        dashboard_listen: Option<SocketAddr>,
    },
    /// Run only the collector (gRPC ingest) over a shared Kafka event log
    /// ([log] kind = "kafka"), with the same configuration file as `serve`.
    /// Collectors keep no state: run as many as agents need, behind one
    /// address or listed in the agents' configuration. A local log is
    /// refused: it can only be shared inside `otwatch serve`.
    ///
    /// Example: otwatch collector --config /etc/otwatch/otwatch.toml
    Collector {
        #[command(flatten)]
        role: RoleArgs,
        /// Ingest address (overrides the config file). Default: 127.0.0.1:4317
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Accept agents over plaintext gRPC on a loopback --listen address
        /// (local trials only), as for `serve`.
        #[arg(long)]
        insecure_loopback: bool,
    },
    /// Run only the detector and the alert outputs over a shared Kafka event
    /// log ([log] kind = "kafka"), with the same configuration file as
    /// `serve`. A local log is refused: it can only be shared inside
    /// `otwatch serve`.
    ///
    /// Example: otwatch detector --config /etc/otwatch/otwatch.toml
    Detector {
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Make a deployment's certificates: CA, collector, agents, revocation list
    ///
    /// An agent certificate names its site and agent id
    /// (otwatch://site/SITE/agent/AGENT); the collector takes the agent's
    /// identity from it and refuses batches for any other site or agent.
    ///
    /// Example (files go to --dir, default the current directory):
    ///   otwatch cert init --dir pki
    ///   otwatch cert issue --dir pki --collector collector.example.com
    ///   otwatch cert issue --dir pki --site plant-lyon --agent gw-1
    ///   otwatch cert revoke --dir pki pki/agent-plant-lyon-gw-1.pem
    #[command(verbatim_doc_comment)]
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Run the whole pipeline with simulated factory sites and a labelled
    /// attack schedule, print alerts live and a scorecard at the end.
    ///
    /// Each site is a real otwatch-agent talking gRPC over loopback. The
    /// detector first learns normal behaviour (30 simulated minutes by
    /// default), then seven scenarios play: cycle-time drift, an extreme
    /// cycle, an unplanned STOP, a program download, a silent controller, a
    /// polling burst from an unknown peer, and a tag pushed out of its normal
    /// relationship with the cycle. With the defaults, `--duration 90s` holds
    /// the learning phase and the whole schedule.
    ///
    /// Example: otwatch demo --duration 90s --report demo.json
    Demo {
        /// Stop after this much wall-clock time (e.g. 90s, 5m). Default: run
        /// until Ctrl-C, then print the scorecard.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Simulated seconds per wall-clock second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Number of simulated factory sites (one agent each).
        #[arg(long, default_value_t = 3)]
        sites: usize,
        /// Where the demo keeps its data; cleared at the start of each run.
        #[arg(long, value_name = "DIR", default_value = "otwatch-demo")]
        data_dir: PathBuf,
        /// Also write the scorecard as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Seed of the simulation: the same seed plays the same factory.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Learning window, in simulated time.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        learn: Duration,
        /// Play normal operation only (no scenarios): shows the false-alarm rate.
        #[arg(long)]
        calm: bool,
        /// Serve each site's machines on loopback as Modbus/TCP devices
        /// (first site, fourth, ...), MELSEC CPUs over SLMP (second,
        /// fifth, ...) or OPC UA servers (third, sixth, ...; SecurityPolicy
        /// None) and have the agents poll or subscribe to them, with the
        /// controllers' logins and program changes sent as syslog to each
        /// agent's syslog source (the protocols end to end), instead of
        /// running the simulator inside the agents.
        #[arg(long)]
        sources: bool,
        /// Serve the SOC dashboard on this address (e.g. 127.0.0.1:8080)
        /// while the demo runs, with two accounts made for the run: an
        /// analyst and a viewer, whose passwords are printed at start.
        #[arg(long, value_name = "ADDR")]
        dashboard: Option<SocketAddr>,
    },
    /// Score the detector on labelled recordings of real plant data.
    ///
    /// Rows go through the same path as production: each row becomes one
    /// SAMPLE event per tag column, events become Arrow record batches, the
    /// detector (default configuration) learns on the training rows and then
    /// raises alerts. A row counts as predicted anomalous while the episode
    /// of a `process` alert covers it. Labels never reach the detector.
    /// TP, FP, FN and TN are pooled over files; F1 = TP / (TP + (FN + FP) / 2),
    /// FAR = FP / (FP + TN), MAR = FN / (FN + TP), no point adjustment.
    ///
    /// Examples:
    ///   otwatch eval skab --data ../shared/datasets/skab
    ///   otwatch eval csv line1.csv line2.csv --time-col ts --label-col attack --train-rows 1000 --json
    #[command(verbatim_doc_comment)]
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Query the history with SQL (tables `events` and `alerts`).
    ///
    /// Examples:
    ///   otwatch sql "SELECT site, count(*) FROM events GROUP BY site"
    ///   otwatch sql --format csv "SELECT ts, site, asset, message FROM alerts ORDER BY ts"
    ///   otwatch sql "SELECT asset, avg(value) FROM events WHERE kind = 'CYCLE' AND date = '2026-11-22' GROUP BY asset"
    ///
    /// `date` (YYYY-MM-DD) and `hour` (HH) are partition columns: filtering on
    /// them skips whole directories. Rows are printed as they come (the
    /// table format waits for all of them). Only committed history is read;
    /// a query that needs a committed file that is missing or damaged fails
    /// naming it (see `otwatch history check`).
    #[command(verbatim_doc_comment)]
    Sql {
        /// Data directory of `otwatch serve` or `otwatch demo`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Output format: table, csv or json (one object per line).
        #[arg(long, default_value = "table")]
        format: otwatch_history::OutputFormat,
        /// Print at most N rows; says so on stderr when rows were cut.
        #[arg(long, value_name = "N")]
        max_rows: Option<u64>,
        /// Memory one query may hold (joins, sorts, aggregations), in bytes;
        /// sorts and aggregations spill to $TMPDIR beyond it, anything else
        /// fails naming the limit.
        #[arg(long, value_name = "BYTES", default_value_t = otwatch_history::sql::DEFAULT_MEMORY_LIMIT)]
        memory_limit: u64,
        /// The query.
        query: String,
    },
    /// What each model learned and which episodes are open; accept a
    /// deviation as normal; relearn an asset. Asks the `otwatch serve`
    /// running on --data-dir (through <data_dir>/admin.sock); decisions are
    /// recorded in the event log and the `audit` table, with who asked.
    ///
    /// Examples:
    ///   otwatch model status --data-dir /var/lib/otwatch --site plant-a
    ///   otwatch model accept --data-dir /var/lib/otwatch --alert 4f0c2d…
    ///   otwatch model relearn --data-dir /var/lib/otwatch --site plant-a --asset line1/press-01
    ///   otwatch model relearn --site plant-a --from 2026-11-20T00:00:00Z --to 2026-11-21T00:00:00Z
    #[command(verbatim_doc_comment)]
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Let one agent send events older than `collector.limits.max_past_secs`
    /// for a while: loading a gateway's recorded history into otwatch
    /// (then, e.g., `otwatch model relearn --from --to` over it). Asks the
    /// `otwatch serve` running on --data-dir; the allowance is recorded in
    /// the event log and the `audit` table, with who asked, and ends by
    /// itself. Every other limit still applies.
    ///
    /// Example:
    ///   otwatch backfill --data-dir /var/lib/otwatch --site plant-a --agent gw-1 --from 2026-01-01T00:00:00Z --for 24h
    #[command(verbatim_doc_comment)]
    Backfill {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        #[arg(long)]
        site: String,
        /// The agent that may send old events (its certificate's name).
        #[arg(long)]
        agent: String,
        /// The oldest event time it may send (RFC 3339, `YYYY-MM-DD
        /// HH:MM:SS` UTC, or Unix seconds).
        #[arg(long, value_name = "TIME")]
        from: String,
        /// How long the allowance lasts, from now (at most 7 days).
        #[arg(long = "for", value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// List alerts with their state; ack, resolve or suppress them. `list`
    /// reads the history; the others ask the `otwatch serve` running on
    /// --data-dir (through <data_dir>/admin.sock), and each change is
    /// recorded in the event log, sent by the outputs as an update of the
    /// alert, and kept in the `alerts` and `audit` tables.
    ///
    /// Examples:
    ///   otwatch alerts list --open --since 24h
    ///   otwatch alerts list --site plant-a --format json
    ///   otwatch alerts ack 4f0c2d9e1a7b3c55 --comment "checking with the plant"
    ///   otwatch alerts resolve 4f0c2d9e1a7b3c55 --comment "setpoint change was planned"
    ///   otwatch alerts suppress --site plant-a --asset line1/press-01 --for 2h --reason "die change"
    #[command(verbatim_doc_comment)]
    Alerts {
        #[command(subcommand)]
        action: alerts::AlertsAction,
    },
    /// The audit trail of decisions (the `audit` table: `otwatch sql
    /// "SELECT ts, user, host, command, site, asset, alert_id FROM audit
    /// ORDER BY ts"`).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Manage the users of the Postgres wire endpoint ([sql] in the config).
    ///
    /// Example:
    ///   otwatch sql-user hash --name grafana --site plant-lyon >> /etc/otwatch/sql-users.toml
    #[command(verbatim_doc_comment)]
    SqlUser {
        #[command(subcommand)]
        action: SqlUserAction,
    },
    /// Manage the accounts of the SOC dashboard ([dashboard] in the config).
    ///
    /// Example:
    ///   otwatch dashboard-user hash --name brno-shift --role viewer --site plant-brno >> /etc/otwatch/dashboard-users.toml
    #[command(verbatim_doc_comment)]
    DashboardUser {
        #[command(subcommand)]
        action: DashboardUserAction,
    },
    /// Run the history writers over a shared Kafka event log, or check or
    /// repair the Parquet history.
    ///
    /// Without a subcommand: run only the history writers of every table
    /// over the event log of [log] kind = "kafka", with the same
    /// configuration file as `serve` (a local log is refused: it can only
    /// be shared inside `otwatch serve`).
    ///
    /// Examples:
    ///   otwatch history --config /etc/otwatch/otwatch.toml
    ///   otwatch history check --data-dir /var/lib/otwatch
    ///   otwatch history repair --data-dir /var/lib/otwatch --forget-missing
    #[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
    History {
        #[command(subcommand)]
        action: Option<HistoryAction>,
        #[command(flatten)]
        role: RoleArgs,
    },
}

/// What every role command takes.
#[derive(clap::Args)]
struct RoleArgs {
    /// Configuration file (TOML), the same as `otwatch serve` reads.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides the config file): the detector's
    /// checkpoints, the history's Parquet files, output files.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (overrides the
    /// config file's metrics_listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum HistoryAction {
    /// Compare the Parquet history with its manifests: committed files
    /// missing or damaged, partitions without a manifest, files no manifest
    /// lists (queries ignore them). Exits 1 when a query could fail on what
    /// it found.
    Check {
        /// Data directory of `otwatch serve` or `otwatch demo`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Also decode every page of every file (reads the whole history).
        #[arg(long)]
        full: bool,
    },
    /// With `otwatch serve` stopped: cut what a crashed flush left, index a
    /// history written by an older otwatch, rebuild lost or corrupt
    /// manifests from the files present.
    Repair {
        /// Data directory of `otwatch serve` or `otwatch demo`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Record every committed file or partition that is gone in
        /// <table>/_lost (rows, bytes, when) so queries run again without
        /// it. Safe while serving.
        #[arg(long)]
        forget_missing: bool,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// State per asset and model: learning or protecting since when, what
    /// each learned, open episodes and the alerts that opened them.
    Status {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only this asset (of --site).
        #[arg(long, requires = "site")]
        asset: Option<String>,
        /// Print the answer as JSON (one object).
        #[arg(long)]
        json: bool,
    },
    /// Take the deviation of the episode an alert opened as normal: its
    /// model widens only what moved, and the episode ends.
    Accept {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// The alert's id (`otwatch model status`, the alerts outputs).
        #[arg(long, value_name = "ID")]
        alert: String,
    },
    /// Forget what a site (or one asset of it) learned and learn again:
    /// from its next events for `learn`, or at once from the stored
    /// history of [--from, --to).
    Relearn {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        #[arg(long)]
        site: String,
        /// Only this asset.
        #[arg(long)]
        asset: Option<String>,
        /// Start of the history to learn from (RFC 3339, `YYYY-MM-DD
        /// HH:MM:SS` UTC, or Unix seconds).
        #[arg(long, value_name = "TIME", requires = "to")]
        from: Option<String>,
        /// End (excluded) of the history to learn from.
        #[arg(long, value_name = "TIME", requires = "from")]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Walk the `audit` table in order and check its hash chain: reports the
    /// first record that was changed, removed, inserted or reordered, and
    /// exits 1 then.
    Verify {
        /// Data directory of `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
    },
}

/// Asks the running service and fails with its refusal, if it refuses.
async fn ask_admin(
    data_dir: &std::path::Path,
    request: &otwatch_runtime::admin::Request,
) -> anyhow::Result<otwatch_runtime::admin::Answer> {
    let answer = otwatch_runtime::admin::ask(data_dir, request).await?;
    if !answer.ok {
        anyhow::bail!(
            "{}",
            answer
                .error
                .unwrap_or_else(|| "refused without a reason".into())
        );
    }
    Ok(answer)
}

fn format_ns(ns: Option<i64>) -> String {
    ns.map_or("-".into(), |ns| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
}

async fn run_model(action: ModelAction) -> anyhow::Result<()> {
    use otwatch_runtime::admin::Request;
    match action {
        ModelAction::Status {
            data_dir,
            site,
            asset,
            json,
        } => {
            let answer = ask_admin(&data_dir, &Request::ModelStatus { site, asset }).await?;
            let assets = answer.assets.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string(&assets)?);
                return Ok(());
            }
            for a in &assets {
                println!(
                    "{} {}: {} since {} (at {}{})",
                    a.site,
                    a.asset,
                    a.state,
                    format_ns(a.since_ns),
                    format_ns(a.at_ns),
                    a.learn_until_ns.map_or(String::new(), |u| format!(
                        ", learns until {}",
                        format_ns(Some(u))
                    ))
                );
                for m in &a.models {
                    let name = if m.name.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", m.name)
                    };
                    println!("  {}{name} [{}]: {}", m.model, m.state, m.baseline);
                    if m.open_since_ns.is_some() {
                        println!(
                            "    open since {}: alerts {}",
                            format_ns(m.open_since_ns),
                            m.open_alerts.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
        ModelAction::Accept { data_dir, alert } => {
            let answer = ask_admin(&data_dir, &Request::ModelAccept { alert_id: alert }).await?;
            println!(
                "{} (control record {})",
                answer.detail.unwrap_or_default(),
                answer.id.unwrap_or_default()
            );
            Ok(())
        }
        ModelAction::Relearn {
            data_dir,
            site,
            asset,
            from,
            to,
        } => {
            let ns = |t: Option<String>| -> anyhow::Result<Option<i64>> {
                t.map(|t| eval::parse_time(&t)).transpose()
            };
            let request = Request::ModelRelearn {
                site,
                asset,
                from_ns: ns(from)?,
                to_ns: ns(to)?,
            };
            let answer = ask_admin(&data_dir, &request).await?;
            println!(
                "{} (control record {})",
                answer.detail.unwrap_or_default(),
                answer.id.unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// `otwatch audit verify`: reads the `audit` table in chain order and
/// checks it. True when the chain holds.
async fn audit_verify(data_dir: &std::path::Path) -> anyhow::Result<bool> {
    let history = existing_history(data_dir)?;
    let mut stream = otwatch_history::query_stream(
        &history,
        "SELECT id, ts, \"user\", host, command, site, asset, alert_id, args, prev_hash, hash FROM audit ORDER BY ts",
        &otwatch_history::SqlConfig::default(),
    )
    .await?;
    let mut records = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        records.extend(otwatch_proto::arrow::batch_to_control(&batch?)?);
    }
    match otwatch_proto::arrow::verify_chain(&records) {
        Ok(()) => {
            println!(
                "audit: {} record(s), the hash chain holds{}",
                records.len(),
                records.last().map_or(String::new(), |r| format!(
                    " (last {} at {})",
                    r.id,
                    format_ns(Some(r.ts_ns))
                ))
            );
            Ok(true)
        }
        Err(e) => {
            println!("audit: {e}");
            Ok(false)
        }
    }
}

#[derive(Subcommand)]
enum SqlUserAction {
    /// Make the SCRAM-SHA-256 verifier of a password, for `password_hash`
    /// in [[sql.users]] or sql.users_file. The password is read from
    /// standard input (asked for twice, without echo, at a terminal); the
    /// verifier is not a password and cannot be used to log in.
    Hash {
        /// Print a whole [[users]] entry for this user name, ready to
        /// append to sql.users_file (inline in otwatch.toml the table is
        /// [[sql.users]]), instead of the verifier alone.
        #[arg(long, value_name = "USER")]
        name: Option<String>,
        /// With --name: a site the user may read (repeatable); without,
        /// the user reads every site.
        #[arg(long = "site", value_name = "SITE", requires = "name")]
        sites: Vec<String>,
        /// PBKDF2 iterations (at least 4096, PostgreSQL's default).
        #[arg(long, default_value_t = otwatch_pgwire::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

#[derive(Subcommand)]
enum DashboardUserAction {
    /// Make the argon2id hash of a password, for `password_hash` in
    /// [[dashboard.users]] or dashboard.users_file. The password is read
    /// from standard input (asked for twice, without echo, at a terminal).
    Hash {
        /// Print a whole [[users]] entry for this user name, ready to
        /// append to dashboard.users_file (inline in otwatch.toml the table
        /// is [[dashboard.users]]), instead of the hash alone.
        #[arg(long, value_name = "USER")]
        name: Option<String>,
        /// With --name: `viewer` (reads) or `analyst` (also acks, resolves,
        /// suppresses, accepts and relearns).
        #[arg(long, value_name = "ROLE", requires = "name", default_value = "viewer", value_parser = ["viewer", "analyst"])]
        role: String,
        /// With --name: a site the user sees (repeatable); without, every
        /// site.
        #[arg(long = "site", value_name = "SITE", requires = "name")]
        sites: Vec<String>,
    },
}

fn run_dashboard_user(action: DashboardUserAction) -> anyhow::Result<()> {
    use otwatch_runtime::dashboard::{DashboardConfig, DashboardUser, Role};
    let DashboardUserAction::Hash { name, role, sites } = action;
    let password = read_new_password()?;
    let password_hash = otwatch_runtime::dashboard::auth::hash_password(&password)?;
    let Some(name) = name else {
        println!("{password_hash}");
        return Ok(());
    };
    let user = DashboardUser {
        name,
        password_hash,
        role: if role == "analyst" {
            Role::Analyst
        } else {
            Role::Viewer
        },
        sites: (!sites.is_empty()).then_some(sites),
    };
    // Checked the way the service will read it.
    DashboardConfig {
        users: vec![user.clone()],
        ..Default::default()
    }
    .validate(Some(([127, 0, 0, 1], 0).into()))?;
    #[derive(serde::Serialize)]
    struct Entry {
        users: Vec<DashboardUser>,
    }
    print!("{}", toml::to_string(&Entry { users: vec![user] })?);
    Ok(())
}

/// Reads the password for `otwatch sql-user hash`: at a terminal, twice
/// without echo; otherwise the first line of standard input.
fn read_new_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ").context("cannot read the password")?;
        let again = rpassword::prompt_password("again: ").context("cannot read the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

fn run_sql_user(action: SqlUserAction) -> anyhow::Result<()> {
    match action {
        SqlUserAction::Hash {
            name,
            sites,
            iterations,
        } => {
            anyhow::ensure!(
                iterations >= otwatch_pgwire::DEFAULT_ITERATIONS,
                "--iterations must be at least {}",
                otwatch_pgwire::DEFAULT_ITERATIONS
            );
            let password = read_new_password()?;
            let password_hash = otwatch_pgwire::hash_password(&password, iterations);
            match name {
                None => println!("{password_hash}"),
                Some(name) => {
                    let user = otwatch_pgwire::SqlUser {
                        name,
                        password_hash,
                        sites: (!sites.is_empty()).then_some(sites),
                    };
                    #[derive(serde::Serialize)]
                    struct Entry {
                        users: Vec<otwatch_pgwire::SqlUser>,
                    }
                    let entry = Entry { users: vec![user] };
                    // Checked the way the service will read it.
                    otwatch_pgwire::users::check_entries(&entry.users)?;
                    print!("{}", toml::to_string(&entry)?);
                }
            }
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum CertAction {
    /// Create a new CA (ca.pem, ca-key.pem). Keep ca-key.pem offline or at
    /// least readable by you only (it is written with mode 0600).
    Init {
        /// Directory of the CA and the certificates it issues.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Issue an agent certificate (--site and --agent) or the collector's
    /// (--collector HOST, repeatable for several names or IP addresses).
    #[command(group = clap::ArgGroup::new("subject").required(true).args(["site", "collector"]))]
    Issue {
        /// Directory of the CA (from `otwatch cert init`).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Site of the agent (letters, digits, '.', '_', '-').
        #[arg(long, requires = "agent")]
        site: Option<String>,
        /// Agent id within its site.
        #[arg(long, requires = "site")]
        agent: Option<String>,
        /// DNS name or IP address agents use to reach the collector.
        #[arg(long, value_name = "HOST", conflicts_with_all = ["site", "agent"])]
        collector: Vec<String>,
        /// Validity of the certificate.
        #[arg(long, default_value = "397days", value_parser = humantime::parse_duration)]
        valid_for: Duration,
    },
    /// Revoke certificates: adds them to the CA's revocation list (crl.pem).
    /// Copy it over the collector's [collector.tls] crl file: within seconds
    /// the collector uses it and has every agent handshake again. Without
    /// certificates, re-issues the list (it is valid for 30 days).
    Revoke {
        /// Directory of the CA.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Certificate files (PEM) to revoke.
        certs: Vec<PathBuf>,
    },
}

fn run_cert(action: CertAction) -> anyhow::Result<()> {
    let written = match action {
        CertAction::Init { dir } => cert::init(&dir)?,
        CertAction::Issue {
            dir,
            site,
            agent,
            collector,
            valid_for,
        } => {
            let subject = match (site, agent) {
                (Some(site), Some(agent)) => cert::Subject::Agent { site, agent },
                _ => cert::Subject::Collector { hosts: collector },
            };
            cert::issue(&dir, &subject, valid_for)?
        }
        CertAction::Revoke { dir, certs } => vec![cert::revoke(&dir, &certs)?],
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Subcommand)]
enum EvalCommand {
    /// The SKAB benchmark (Skoltech Anomaly Benchmark), as published: each of
    /// the 34 labelled files learns on its first 400 rows and predicts the
    /// rest; counts are pooled and printed per folder (valve1, valve2, other)
    /// and overall, next to the published leaderboard. When
    /// anomaly-free/anomaly-free.csv is there, its false-alarm rate after the
    /// same 400-row learning is reported too.
    Skab {
        /// The SKAB data folder (holding valve1/, valve2/, other/ and anomaly-free/).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Also print the pooled result as one JSON object on the last line:
        /// {"f1":..,"far":..,"mar":..,"tp":..,"fp":..,"fn":..,"tn":..,...},
        /// far and mar in percent.
        #[arg(long)]
        json: bool,
        /// Print each file's figures and the messages of its alerts.
        #[arg(long, short)]
        verbose: bool,
        /// Keep every N-th row only: the same process sampled N times more
        /// slowly (learning still covers the span of the first 400 rows).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        every: u64,
    },
    /// Any labelled CSV recordings of tag columns (one file per asset): the
    /// time column, a 0/1 label column, and every other column a numeric tag
    /// (empty cells are missing values). Reports point-wise F1, FAR, MAR and
    /// episodes: labelled episodes caught, mean and median detection delay,
    /// and alert episodes that match no label.
    ///
    /// Times: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) or Unix seconds;
    /// they must increase from row to row.
    Csv {
        /// The CSV files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Name of the time column.
        #[arg(long, value_name = "C")]
        time_col: String,
        /// Name of the label column (1 = anomalous). It never reaches the detector.
        #[arg(long, value_name = "C")]
        label_col: String,
        /// Columns that are neither tags nor the label (e.g. a second label); repeatable.
        #[arg(long = "ignore-col", value_name = "C")]
        ignore_col: Vec<String>,
        /// Field separator (one character).
        #[arg(long, default_value = ",")]
        sep: char,
        /// The first N rows of each file are normal rows to learn from.
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "train_until",
            required_unless_present = "train_until"
        )]
        train_rows: Option<usize>,
        /// Rows before this time (same formats as the time column) learn.
        #[arg(long, value_name = "TIME")]
        train_until: Option<String>,
        /// Also print the pooled result as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Print each file's figures and the messages of its alerts.
        #[arg(long, short)]
        verbose: bool,
    },
}

fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The history directory of `data_dir`, which must exist.
fn existing_history(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let history = otwatch_runtime::history_dir(data_dir);
    anyhow::ensure!(
        history.exists(),
        "no history in {} (expected {}); run `otwatch serve` or `otwatch demo` first, or pass --data-dir",
        data_dir.display(),
        history.display()
    );
    Ok(history)
}

fn print_repair(r: &otwatch_history::TableRepair) {
    let table = r.table.name();
    if let Some(rec) = &r.recovery {
        if rec.changed() {
            println!(
                "{table}: recovered to offset {}: removed {} uncommitted file(s), cut {} manifest(s), removed {} manifest(s), rebuilt {:?}, missing partitions {:?}{}",
                rec.next_offset,
                rec.removed_files,
                rec.truncated.len(),
                rec.removed_manifests,
                rec.rebuilt,
                rec.missing_partitions,
                if rec.indexed { ", indexed for the first time" } else { "" }
            );
        } else {
            println!(
                "{table}: nothing to recover (committed offset {})",
                rec.next_offset
            );
        }
    }
    if let Some(f) = &r.forgot {
        if f.recorded.is_empty() {
            println!("{table}: nothing missing to forget");
        } else {
            println!(
                "{table}: recorded {} loss(es) in _lost ({} row(s){}); queries run again without them",
                f.recorded.len(),
                f.rows,
                if f.rows_unknown { " and partitions of unknown size" } else { "" }
            );
        }
    }
    if let Some(e) = &r.error {
        println!("{table}: {e}");
    }
}

/// Exit status when a component of a running service failed (EX_SOFTWARE).
const EXIT_COMPONENT_FAILED: u8 = 70;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `otwatch serve` until a signal (exit 0) or a component failure (70).
async fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    insecure_loopback: bool,
    metrics_listen: Option<SocketAddr>,
    sql_listen: Option<SocketAddr>,
    dashboard_listen: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let mut config = server_config(
        config.as_deref(),
        data_dir,
        listen,
        metrics_listen,
        insecure_loopback,
    )?;
    if let Some(addr) = sql_listen {
        config.sql_listen = Some(addr);
    }
    if let Some(addr) = dashboard_listen {
        config.dashboard_listen = Some(addr);
    }
    let service = otwatch_runtime::Service::start(config).await?;
    let mut signal_error = None;
    let result = service
        .run(
            async {
                if let Err(e) = shutdown_signal().await {
                    signal_error = Some(e);
                }
            },
            Duration::from_secs(30),
        )
        .await;
    exit_status(result, signal_error)
}

/// The configuration of `serve` and the roles: the file (or the defaults)
/// with the command line's overrides.
fn server_config(
    path: Option<&Path>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    insecure_loopback: bool,
) -> anyhow::Result<config::ServerConfig> {
    let mut config = match path {
        Some(path) => config::ServerConfig::load(path)?,
        None => config::ServerConfig::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = listen {
        config.listen = addr;
    }
    if let Some(addr) = metrics_listen {
        config.metrics_listen = Some(addr);
    }
    config.insecure_loopback = insecure_loopback;
    Ok(config)
}

/// How a run of `serve` or a role ends: 0 after a clean stop, 70 when a
/// component failed (its cause printed), 1 for anything else, including a
/// signal handler that could not be installed.
fn exit_status(
    result: anyhow::Result<()>,
    signal_error: Option<anyhow::Error>,
) -> anyhow::Result<ExitCode> {
    if let Some(e) = signal_error {
        return Err(e);
    }
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e)
            if e.downcast_ref::<otwatch_runtime::supervisor::Failure>()
                .is_some() =>
        {
            eprintln!("Error: {e:#}");
            Ok(ExitCode::from(EXIT_COMPONENT_FAILED))
        }
        Err(e) => Err(e),
    }
}

/// Runs one role until a signal (exit 0) or a component failure (70).
async fn run_role(
    role: otwatch_runtime::roles::Role,
    args: RoleArgs,
    listen: Option<SocketAddr>,
    insecure_loopback: bool,
) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let config = server_config(
        args.config.as_deref(),
        args.data_dir,
        listen,
        args.metrics_listen,
        insecure_loopback,
    )?;
    let mut signal_error = None;
    let result = otwatch_runtime::roles::run(config, role, async {
        if let Err(e) = shutdown_signal().await {
            signal_error = Some(e);
        }
    })
    .await;
    exit_status(result, signal_error)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Cert { action } => run_cert(action),
        Command::Serve {
            config,
            data_dir,
            listen,
            insecure_loopback,
            metrics_listen,
            sql_listen,
            dashboard_listen,
        } => {
            return serve(
                config,
                data_dir,
                listen,
                insecure_loopback,
                metrics_listen,
                sql_listen,
                dashboard_listen,
            )
            .await
        }
        Command::SqlUser { action } => run_sql_user(action),
        Command::DashboardUser { action } => run_dashboard_user(action),
        Command::Demo {
            duration,
            speed,
            sites,
            data_dir,
            report,
            seed,
            learn,
            calm,
            sources,
            dashboard,
        } => {
            // The OPC UA library's own lines are off, as in the agent: the
            // agents' sources log each failure themselves, and the demo's
            // servers have no certificate to find (SecurityPolicy None).
            init_logging("warn,opcua_client=off,opcua_core=off,opcua_crypto=off,opcua_server=off");
            demo::run(demo::DemoOptions {
                duration,
                speed,
                sites,
                data_dir,
                report,
                seed,
                scenarios: !calm,
                learn,
                sources,
                dashboard,
            })
            .await
            .map(|_| ())
        }
        Command::Eval { what } => {
            init_logging("warn");
            match what {
                EvalCommand::Skab {
                    data,
                    json,
                    verbose,
                    every,
                } => eval::skab(&data, every as usize, json, verbose).map(|_| ()),
                EvalCommand::Csv {
                    files,
                    time_col,
                    label_col,
                    ignore_col,
                    sep,
                    train_rows,
                    train_until,
                    json,
                    verbose,
                } => {
                    anyhow::ensure!(sep.is_ascii(), "--sep must be one ASCII character");
                    let train = match (train_rows, train_until) {
                        (Some(n), _) => eval::Train::Rows(n),
                        (None, Some(t)) => eval::Train::Until(eval::parse_time(&t)?),
                        (None, None) => anyhow::bail!("give --train-rows or --train-until"),
                    };
                    let format = eval::CsvFormat {
                        time_col,
                        label_col: Some(label_col),
                        ignore: ignore_col,
                        sep: sep as u8,
                    };
                    eval::csv_files(&files, &format, train, json, verbose).map(|_| ())
                }
            }
        }
        Command::Sql {
            data_dir,
            format,
            max_rows,
            memory_limit,
            query,
        } => {
            init_logging("warn");
            let history = existing_history(&data_dir)?;
            let config = otwatch_history::SqlConfig {
                memory_limit,
                max_rows,
                ..Default::default()
            };
            config.validate()?;
            let mut stream = otwatch_history::query_stream(&history, &query, &config).await?;
            let mut out = otwatch_history::BatchWriter::new(std::io::stdout().lock(), format);
            while let Some(batch) = stream.next_batch().await {
                out.write(&batch?)?;
            }
            drop(out.finish()?);
            if stream.truncated() {
                eprintln!(
                    "(result cut at --max-rows {}; more rows exist)",
                    max_rows.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Model { action } => {
            init_logging("warn");
            run_model(action).await
        }
        Command::Backfill {
            data_dir,
            site,
            agent,
            from,
            duration,
        } => {
            init_logging("warn");
            let request = otwatch_runtime::admin::Request::CollectorBackfill {
                site,
                agent,
                from_ns: eval::parse_time(&from)?,
                for_secs: duration.as_secs(),
            };
            let answer = ask_admin(&data_dir, &request).await?;
            println!(
                "{} (control record {})",
                answer.detail.unwrap_or_default(),
                answer.id.unwrap_or_default()
            );
            Ok(())
        }
        Command::Alerts { action } => {
            init_logging("warn");
            alerts::run(action).await
        }
        Command::Audit { action } => {
            init_logging("warn");
            match action {
                AuditAction::Verify { data_dir } => {
                    if !audit_verify(&data_dir).await? {
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(())
                }
            }
        }
        Command::Collector {
            role,
            listen,
            insecure_loopback,
        } => {
            return run_role(
                otwatch_runtime::roles::Role::Collector,
                role,
                listen,
                insecure_loopback,
            )
            .await
        }
        Command::Detector { role } => {
            return run_role(otwatch_runtime::roles::Role::Detector, role, None, false).await
        }
        Command::History { action: None, role } => {
            return run_role(otwatch_runtime::roles::Role::History, role, None, false).await
        }
        Command::History {
            action: Some(action),
            ..
        } => {
            init_logging("warn");
            match action {
                HistoryAction::Check { data_dir, full } => {
                    let history = existing_history(&data_dir)?;
                    let report = otwatch_history::check(&history, full)?;
                    print!("{report}");
                    if !report.is_clean() {
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(())
                }
                HistoryAction::Repair {
                    data_dir,
                    forget_missing,
                } => {
                    let history = existing_history(&data_dir)?;
                    let mut failed = false;
                    for r in otwatch_history::repair(&history, forget_missing)? {
                        print_repair(&r);
                        failed |= r.error.is_some();
                    }
                    if failed {
                        return Ok(ExitCode::FAILURE);
                    }
                    Ok(())
                }
            }
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}
