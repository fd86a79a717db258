//! The SQL component: the Postgres wire endpoint (`otwatch-pgwire`) on
//! `sql_listen`, serving analysts' read-only queries over the committed
//! history files.
//!
//! It reads no topic of the log and writes nothing, so it has no position
//! and no lag: it is `running` while it accepts connections. Told to stop,
//! it closes its listener and every open connection at once (clients see
//! the connection close and reconnect after the restart); nothing is lost.

use crate::supervisor::Context;
use otwatch_pgwire::SqlEndpoint;

/// The component's name in logs and probes.
pub const NAME: &str = "sql";

pub struct SqlComponent {
    pub endpoint: SqlEndpoint,
    pub listener: tokio::net::TcpListener,
}

impl SqlComponent {
    pub async fn run(self, ctx: Context) -> anyhow::Result<()> {
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut stop = ctx.stop.clone();
        self.endpoint
            .serve(self.listener, async move {
                let _ = stop.wait_for(|&s| s).await;
            })
            .await;
        Ok(())
    }
}
