//! `otwatch demo`: the whole pipeline on one machine with simulated factory
//! sites, a labelled attack schedule, live alerts and a scorecard.
//!
//! The central service runs embedded; each simulated site is a real
//! otwatch-agent (its queue on disk, its sender on a real gRPC connection over
//! loopback). Simulated time runs `speed` times faster than the wall clock and
//! event timestamps follow it; the detector only ever sees event time, so the
//! outcome of a seed does not depend on how fast the machine is.
//!
//! With `--sources` ([`devices`]), each site's machines are devices on
//! loopback that the site's agent reads over a real protocol (Modbus/TCP,
//! MELSEC SLMP or OPC UA, by site), and their logins and program changes come as
//! syslog to the agent's `syslog` source, instead of agents running the
//! simulator themselves.

pub mod devices;

use anyhow::Context;
use otwatch_agent::config::{
    AgentConfig, ClientTlsConfig, SenderConfig, SimSourceConfig, SourceConfig,
};
use otwatch_agent::sim::{ScenarioTruth, SimConfig, SimSite};
use otwatch_agent::Agent;
use otwatch_proto::Alert;
use otwatch_runtime::outputs::{alert_line, format_ts};
use otwatch_runtime::{history_dir, ServerConfig, Service};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prints the scenarios that start at or before `until_ns` and were not
/// announced yet.
fn announce(truth: &[ScenarioTruth], announced: &mut usize, until_ns: i64) {
    while let Some(s) = truth.get(*announced).filter(|s| s.start_ns <= until_ns) {
        println!(
            "[{}] >>> scenario {} starts on {}/{} (ATT&CK {})",
            format_ts(s.start_ns),
            s.name,
            s.site,
            s.asset,
            if s.technique.is_empty() {
                "-"
            } else {
                &s.technique
            }
        );
        *announced += 1;
    }
}

/// Prints an alert, after the announcement of any scenario that started
/// before it.
fn print_alert(alert: &Alert, truth: &[ScenarioTruth], announced: &mut usize) {
    announce(truth, announced, alert.ts_ns);
    println!("ALERT {}", alert_line(alert));
}

/// Options of a demo run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub speed: f64,
    pub sites: usize,
    pub data_dir: PathBuf,
    pub report: Option<PathBuf>,
    pub seed: u64,
    pub scenarios: bool,
    pub learn: Duration,
    /// Agents read the sites' machines over Modbus/TCP or SLMP, and
    /// receive their syslog.
    pub sources: bool,
    /// Serve the dashboard here, with an analyst and a viewer account made
    /// for the run.
    pub dashboard: Option<std::net::SocketAddr>,
}

/// Simulated time after a scenario's end during which an alert on the same
/// asset still counts as detecting it (some detectors need the episode to
/// develop: silence is only noticed after several missed cycles).
pub const MATCH_GRACE: Duration = Duration::from_secs(300);

/// A file in the data directory that marks it as the demo's own, so the
/// demo never wipes a directory it did not create.
const MARKER: &str = ".otwatch-demo";

/// Outcome of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioScore {
    pub name: String,
    pub site: String,
    pub asset: String,
    pub start: String,
    pub technique: String,
    pub detected: bool,
    /// Event-time seconds from the scenario's start to its first alert.
    pub delay_s: Option<f64>,
    /// Detector of the first matching alert.
    pub detector: Option<String>,
}

/// The scorecard, as printed and as written by `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events_sent: u64,
    pub events_stored: u64,
    pub alerts: usize,
    pub false_alerts: usize,
    pub scenarios: Vec<ScenarioScore>,
    pub speed: f64,
    pub sites: usize,
    pub seed: u64,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
}

/// Matches alerts to scenarios: an alert matches a scenario on the same site
/// and asset whose window `[start, end + grace]` holds the alert's time.
pub fn score(truth: &[ScenarioTruth], alerts: &[Alert]) -> (Vec<ScenarioScore>, usize) {
    let grace = MATCH_GRACE.as_nanos() as i64;
    let matches = |s: &ScenarioTruth, a: &Alert| {
        a.site == s.site
            && a.asset == s.asset
            && a.ts_ns >= s.start_ns
            && a.ts_ns <= s.end_ns + grace
    };
    let scores = truth
        .iter()
        .map(|s| {
            let first = alerts
                .iter()
                .filter(|a| matches(s, a))
                .min_by_key(|a| a.ts_ns);
            ScenarioScore {
                name: s.name.clone(),
                site: s.site.clone(),
                asset: s.asset.clone(),
                start: chrono::DateTime::from_timestamp_nanos(s.start_ns).to_rfc3339(),
                technique: s.technique.clone(),
                detected: first.is_some(),
                delay_s: first.map(|a| (a.ts_ns - s.start_ns) as f64 / 1e9),
                detector: first.map(|a| a.detector.clone()),
            }
        })
        .collect();
    let false_alerts = alerts
        .iter()
        .filter(|a| !truth.iter().any(|s| matches(s, a)))
        .count();
    (scores, false_alerts)
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} exists and was not created by `otwatch demo`; choose another --data-dir (the demo starts from an empty directory and would replace its contents)",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "created by otwatch demo\n")?;
    Ok(())
}

/// Site names of the demo, one per simulated factory.
fn site_name(i: usize) -> String {
    const NAMES: [&str; 6] = ["lyon", "porto", "brno", "gdansk", "torino", "ghent"];
    match NAMES.get(i) {
        Some(n) => format!("plant-{n}"),
        None => format!("plant-{}", i + 1),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

/// Runs the demo and returns its scorecard.
pub async fn run(opts: DemoOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.sites >= 1, "--sites must be at least 1");
    anyhow::ensure!(
        opts.speed > 0.0 && opts.speed.is_finite(),
        "--speed must be a positive number"
    );
    prepare_data_dir(&opts.data_dir)?;
    let mut config = ServerConfig {
        data_dir: opts.data_dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    // The demo runs the secure path a real deployment runs: its own CA, a
    // collector certificate for loopback, one client certificate per site.
    let pki = opts.data_dir.join("pki");
    otwatch_pki::init(&pki)?;
    otwatch_pki::issue(
        &pki,
        &otwatch_pki::Subject::Collector {
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        },
        otwatch_pki::LEAF_VALIDITY,
    )?;
    config.collector.tls = Some(otwatch_collector::tls::ServerTlsConfig {
        cert: pki.join(otwatch_pki::COLLECTOR_CERT),
        key: pki.join(otwatch_pki::COLLECTOR_KEY),
        client_ca: pki.join(otwatch_pki::CA_CERT),
        crl: None,
    });
    // The demo prints alerts itself, so that a scenario's announcement always
    // comes before its first alert: only the JSON-lines file stays.
    config
        .outputs
        .retain(|o| !matches!(o, otwatch_runtime::outputs::OutputConfig::Stdout(_)));
    // Simulated time runs ahead of the wall clock when the run is open-ended.
    config.collector.limits.max_future_skew_secs = 366 * 24 * 3600;
    config.detector = otwatch_detector::DetectorConfig {
        learn: opts.learn,
        ..Default::default()
    };
    let accounts = match opts.dashboard {
        Some(addr) => {
            let accounts = demo_accounts()?;
            config.dashboard_listen = Some(addr);
            config.dashboard.users = accounts.iter().map(|(user, _)| user.clone()).collect();
            accounts
        }
        None => Vec::new(),
    };
    let mut central = Service::start(config).await?;
    if let Some(addr) = central.dashboard_addr {
        println!("dashboard: http://{addr}/");
        for (user, password) in &accounts {
            println!(
                "  sign in as {} with password {password} ({})",
                user.name,
                match user.role {
                    otwatch_runtime::dashboard::Role::Analyst => "acks, resolves, suppresses",
                    otwatch_runtime::dashboard::Role::Viewer => "reads only",
                }
            );
        }
    }
    let mut live_alerts = central.tail_alerts().await?;
    let url = format!("https://{}", central.addr);

    // A bounded run ends at the wall clock's now, so its events are not in the future.
    let start_ns = match opts.duration {
        Some(d) => now_ns() - (d.as_secs_f64() * opts.speed * 1e9) as i64,
        None => now_ns(),
    };
    let start_text = humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + Duration::from_nanos(start_ns as u64),
    )
    .to_string();
    let mut truth = Vec::new();
    let mut agents = Vec::new();
    let mut site_devices = Vec::new();
    for i in 0..opts.sites {
        let site = site_name(i);
        let sim = SimConfig {
            seed: opts.seed,
            learn: opts.learn,
            scenarios: opts.scenarios,
            site_index: i,
            site_count: opts.sites,
            ..SimConfig::default()
        };
        truth.extend(
            SimSite::new(&site, &sim, start_ns)
                .scenarios()
                .iter()
                .cloned(),
        );
        otwatch_pki::issue(
            &pki,
            &otwatch_pki::Subject::Agent {
                site: site.clone(),
                agent: "gw-1".into(),
            },
            otwatch_pki::LEAF_VALIDITY,
        )?;
        let (cert, key) = otwatch_pki::agent_files(&site, "gw-1");
        let sources = if opts.sources {
            let protocol = devices::Protocol::of_site(i);
            let work_dir = opts.data_dir.join("devices").join(&site);
            let served =
                devices::serve_site(&site, protocol, &sim, start_ns, opts.speed, &work_dir)
                    .await
                    .with_context(|| format!("cannot serve the simulated devices of {site}"))?;
            let sources = devices::site_sources(&served);
            site_devices.push((site.clone(), served));
            sources
        } else {
            vec![SourceConfig::Sim(SimSourceConfig {
                speed: opts.speed,
                start: Some(start_text.clone()),
                truth_file: None,
                sim,
            })]
        };
        let agent = AgentConfig {
            site: site.clone(),
            agent: "gw-1".into(),
            data_dir: opts.data_dir.join("agents").join(&site),
            collector: SenderConfig {
                url: url.clone(),
                tls: Some(ClientTlsConfig {
                    ca: pki.join(otwatch_pki::CA_CERT),
                    cert: pki.join(cert),
                    key: pki.join(key),
                    domain: None,
                }),
                ..SenderConfig::default()
            },
            queue: Default::default(),
            limits: central_limits(),
            metrics_listen: None,
            dead_letter_max_bytes: 64 * 1024 * 1024,
            sources,
        };
        agents
            .push(Agent::start(agent).with_context(|| format!("agent of {site} failed to start"))?);
    }
    truth.sort_by_key(|s| s.start_ns);
    if opts.sources {
        truth.retain(|s| !devices::NOT_CARRIED.iter().any(|(name, _)| *name == s.name));
    }

    let wall = Instant::now();
    let sim_now =
        |wall: Instant| start_ns + (wall.elapsed().as_secs_f64() * opts.speed * 1e9) as i64;
    println!(
        "otwatch demo: {} simulated site(s) streaming over gRPC with mutual TLS to {}, simulated time {}x the wall clock",
        opts.sites, central.addr, opts.speed
    );
    if opts.sources {
        for (site, served) in &site_devices {
            println!(
                "{site}: {} {} on loopback, {}; logins{} as syslog (RFC 5424 over TCP) to the agent's syslog source on {}",
                served.devices.len(),
                served.protocol.describe(),
                served.protocol.reading(),
                if served.protocol.carries_program() {
                    ""
                } else {
                    " and program changes"
                },
                served.syslog
            );
        }
        for (name, why) in devices::NOT_CARRIED {
            println!("  scenario {name} is left out: {why}");
        }
    }
    println!(
        "learning normal behaviour for {} of simulated time (~{:.0} s), then {} scripted scenario(s){}",
        humantime::format_duration(opts.learn),
        opts.learn.as_secs_f64() / opts.speed,
        truth.len(),
        match opts.duration {
            Some(d) => format!("; stopping after {}", humantime::format_duration(d)),
            None => "; Ctrl-C stops and prints the scorecard".into(),
        }
    );
    let learn_end = start_ns + opts.learn.as_nanos() as i64;
    let mut announced = 0;
    let mut learned_announced = false;
    let mut last_status = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if opts.duration.is_some_and(|d| wall.elapsed() >= d) {
            break;
        }
        tokio::select! {
            alerts = live_alerts.next(Duration::from_millis(200)) => {
                for alert in alerts? {
                    print_alert(&alert, &truth, &mut announced);
                }
            }
            _ = &mut ctrl_c => { println!("stopping (Ctrl-C)"); break; }
            failure = central.failed() => {
                return Err(failure).context("the central service failed");
            }
        }
        let now = sim_now(wall);
        if !learned_announced && now >= learn_end {
            println!("[{}] learning window over: protecting", format_ts(now));
            learned_announced = true;
        }
        announce(&truth, &mut announced, now);
        if last_status.elapsed() >= Duration::from_secs(15) {
            last_status = Instant::now();
            let c = central.collector.snapshot();
            println!(
                "[{}] events stored {}, alerts {}",
                format_ts(now),
                c.events_stored,
                central.alerts_raised()
            );
        }
    }
    let simulated_seconds = (sim_now(wall) - start_ns) as f64 / 1e9;
    let wall_seconds = wall.elapsed().as_secs_f64();

    let mut events_sent = 0;
    for agent in agents {
        let counts = agent.stop(Duration::from_secs(30)).await?;
        events_sent += counts.events_taken;
    }
    drop(site_devices);
    let data_dir = central.data_dir.clone();
    central.wait_caught_up(Duration::from_secs(60)).await;
    // Alerts raised while the pipeline drained.
    loop {
        let alerts = live_alerts.next(Duration::ZERO).await?;
        if alerts.is_empty() {
            break;
        }
        for alert in alerts {
            print_alert(&alert, &truth, &mut announced);
        }
    }
    central.stop(Duration::from_secs(60)).await?;

    let history = history_dir(&data_dir);
    let events_stored = count(&history, "SELECT count(*) FROM events").await?;
    let batches = otwatch_history::query(&history, "SELECT * FROM alerts ORDER BY ts").await?;
    let mut alerts = Vec::new();
    for b in &batches {
        alerts.extend(otwatch_proto::arrow::batch_to_alerts(b)?);
    }
    let (scenarios, false_alerts) = score(&truth, &alerts);
    let report = Report {
        events_sent,
        events_stored,
        alerts: alerts.len(),
        false_alerts,
        scenarios,
        speed: opts.speed,
        sites: opts.sites,
        seed: opts.seed,
        wall_seconds,
        simulated_seconds,
    };
    print_scorecard(&report, &data_dir);
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(report)
}

/// The dashboard accounts of a demo run, with their passwords: new ones
/// each run, printed at start (the demo's data lives only for its run).
fn demo_accounts() -> anyhow::Result<Vec<(otwatch_runtime::dashboard::DashboardUser, String)>> {
    use otwatch_runtime::dashboard::{auth::hash_password, DashboardUser, Role};
    use rand::distr::{Alphanumeric, SampleString};
    [("analyst", Role::Analyst), ("viewer", Role::Viewer)]
        .into_iter()
        .map(|(name, role)| {
            let password = Alphanumeric.sample_string(&mut rand::rng(), 16);
            let user = DashboardUser {
                name: name.into(),
                password_hash: hash_password(&password)?,
                role,
                sites: None,
            };
            Ok((user, password))
        })
        .collect()
}

/// The limits the demo's agents check before queueing: the collector's, so
/// nothing a source takes is refused later.
fn central_limits() -> otwatch_proto::limits::Limits {
    otwatch_proto::limits::Limits {
        max_future_skew_secs: 366 * 24 * 3600,
        ..Default::default()
    }
}

async fn count(history: &Path, sql: &str) -> anyhow::Result<u64> {
    let batches = otwatch_history::query(history, sql).await?;
    let value = batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(b.column(0))
                .value(0)
        })
        .unwrap_or(0);
    Ok(value as u64)
}

fn print_scorecard(r: &Report, data_dir: &Path) {
    println!();
    println!(
        "scorecard ({:.0} s wall, {:.0} min simulated, seed {})",
        r.wall_seconds,
        r.simulated_seconds / 60.0,
        r.seed
    );
    println!(
        "  {:<20} {:<34} {:<9} {:>10}  detector",
        "scenario", "site/asset", "detected", "delay"
    );
    for s in &r.scenarios {
        println!(
            "  {:<20} {:<34} {:<9} {:>10}  {}",
            s.name,
            format!("{}/{}", s.site, s.asset),
            if s.detected { "yes" } else { "NO" },
            s.delay_s
                .map(|d| format!("{d:.0} s"))
                .unwrap_or_else(|| "-".into()),
            s.detector.as_deref().unwrap_or("-")
        );
    }
    let detected = r.scenarios.iter().filter(|s| s.detected).count();
    println!("  scenarios detected: {detected} of {}", r.scenarios.len());
    println!(
        "  alerts: {} ({} matching no scenario)",
        r.alerts, r.false_alerts
    );
    println!(
        "  events sent: {}, stored: {}{}",
        r.events_sent,
        r.events_stored,
        if r.events_sent == r.events_stored {
            " (all of them, exactly once)"
        } else {
            ""
        }
    );
    println!(
        "query the history: otwatch sql --data-dir {} \"SELECT site, kind, count(*) FROM events GROUP BY site, kind ORDER BY site, kind\"",
        data_dir.display()
    );
}
