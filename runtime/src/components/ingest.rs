//! The ingest component: the gRPC collector on its listener, appending to the
//! event log (see `otwatch-collector` for what it promises agents).
//!
//! It ends when told to stop: open agent streams are ended (their agents
//! reconnect and resend what was not acked) and the listener closes. A
//! server error (the listener failing for good) is a failure of the service.
//!
//! Beside the server it follows the `control` topic for the decisions
//! addressed to collectors (`collector.backfill`: one agent may send events
//! older than `limits.max_past_secs` for a while). It reads the whole topic
//! from its oldest record at every start, without a committed position, so
//! an allowance holds across restarts until its end, and every collector
//! reading the same log applies the same allowances. The topic holds only
//! the SOC's decisions, so reading it whole is cheap.

use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_collector::{tls, Backfill, Collector};
use otwatch_eventlog::{Consumer, EventLog, LogError, Topic};
use otwatch_proto::arrow::{batch_to_control, ControlRecord};
use std::sync::Arc;
use std::time::Duration;

/// The control record command a backfill allowance is.
pub const BACKFILL_COMMAND: &str = "collector.backfill";

/// The consumer group name the follower reads under (it never commits, so
/// retention does not wait for it).
const GROUP: &str = "ingest-control";

pub struct IngestComponent {
    pub collector: Collector,
    pub listener: tokio::net::TcpListener,
    pub tls: Option<tls::Acceptor>,
    /// The log whose `control` topic holds the backfill allowances.
    pub log: Arc<dyn EventLog>,
}

impl IngestComponent {
    pub async fn run(self, ctx: Context) -> anyhow::Result<()> {
        // Allowances already decided apply before the first agent is served.
        let mut control = open_control(self.log.as_ref()).await?;
        follow(
            self.log.as_ref(),
            &mut control,
            &self.collector,
            Duration::ZERO,
        )
        .await?;
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut stop = ctx.stop.clone();
        let server = self
            .collector
            .clone()
            .serve(self.listener, self.tls, async move {
                let _ = stop.wait_for(|&s| s).await;
            });
        tokio::pin!(server);
        loop {
            tokio::select! {
                served = &mut server => return served.context("the ingest server failed"),
                followed = follow(self.log.as_ref(), &mut control, &self.collector, Duration::from_millis(500)) => {
                    followed?;
                }
            }
        }
    }
}

/// A consumer of the control topic at its oldest record.
async fn open_control(log: &dyn EventLog) -> anyhow::Result<Box<dyn Consumer>> {
    log.consumer_at(Topic::Control, GROUP, 0)
        .await
        .context("cannot open a consumer of the control topic")
}

/// Applies the control records available now (waiting up to `wait` for the
/// first) to `collector`.
async fn follow(
    log: &dyn EventLog,
    control: &mut Box<dyn Consumer>,
    collector: &Collector,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut wait = wait;
    loop {
        let got = match control.poll(256, wait).await {
            Ok(got) => got,
            // Retention deleted the first records: go on from the oldest
            // one kept (allowances are far shorter than retention).
            Err(LogError::OffsetGone { oldest, .. }) => {
                *control = log
                    .consumer_at(Topic::Control, GROUP, oldest)
                    .await
                    .context("cannot open a consumer of the control topic")?;
                continue;
            }
            Err(e) => return Err(e).context("cannot read the control topic"),
        };
        if got.is_empty() {
            return Ok(());
        }
        wait = Duration::ZERO;
        for d in &got {
            match batch_to_control(&d.batch) {
                Ok(records) => records.iter().for_each(|r| apply(collector, r)),
                Err(e) => {
                    tracing::error!(offset = d.offset, error = %e, "control record does not have the control schema; skipped")
                }
            }
        }
    }
}

/// The arguments of a `collector.backfill` record.
#[derive(Debug, serde::Deserialize)]
struct BackfillArgs {
    agent: String,
    from_ns: i64,
    for_secs: u64,
}

fn apply(collector: &Collector, record: &ControlRecord) {
    if record.command != BACKFILL_COMMAND {
        return;
    }
    match serde_json::from_str::<BackfillArgs>(&record.args) {
        Ok(args) => collector.allow_backfill(
            &record.site,
            &args.agent,
            Backfill {
                oldest_ns: args.from_ns,
                until_ns: record
                    .ts_ns
                    .saturating_add((args.for_secs as i64).saturating_mul(1_000_000_000)),
            },
        ),
        Err(e) => {
            tracing::error!(id = %record.id, error = %e, "backfill record has arguments the collector does not understand; skipped")
        }
    }
}
