//! Runs the simulated site ([`crate::sim`]) against a clock: simulated time
//! advances `speed` times faster than the wall clock, and every tick the
//! events due by then are appended to the queue.

use super::SourceMetrics;
use crate::config::SimSourceConfig;
use crate::handle::QueueHandle;
use crate::sim::SimSite;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Wall-clock interval between simulation steps.
const TICK: Duration = Duration::from_millis(50);

/// The simulated start time configured, or now.
pub fn start_ns(config: &SimSourceConfig) -> Result<i64, String> {
    match &config.start {
        Some(text) => {
            let t = humantime::parse_rfc3339_weak(text)
                .map_err(|e| format!("sim start {text:?}: {e}"))?;
            Ok(t.duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("sim start {text:?} is before 1970"))?
                .as_nanos() as i64)
        }
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as i64),
    }
}

/// Runs the source until `shutdown` turns true.
pub async fn run(
    site: String,
    config: SimSourceConfig,
    queue: QueueHandle,
    metrics: Arc<SourceMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let start = start_ns(&config)?;
    let mut sim = SimSite::new(&site, &config.sim, start);
    if let Some(path) = &config.truth_file {
        let mut out = String::new();
        for truth in sim.scenarios() {
            out.push_str(&serde_json::to_string(truth).expect("serializes"));
            out.push('\n');
        }
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(out.as_bytes()))
            .map_err(|e| format!("cannot write truth_file {}: {e}", path.display()))?;
    }
    tracing::info!(
        %site,
        speed = config.speed,
        scenarios = sim.scenarios().len(),
        "simulated site started"
    );
    let wall_start = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    while !*shutdown.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let elapsed = wall_start.elapsed().as_secs_f64() * config.speed;
        let now = start + (elapsed * 1e9) as i64;
        sim.advance(now, &mut buf);
        if buf.is_empty() {
            continue;
        }
        let events = std::mem::take(&mut buf);
        let n = events.len() as u64;
        queue.append(events).await.map_err(|e| e.to_string())?;
        metrics.events.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}
