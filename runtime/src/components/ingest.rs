//! The ingest component: the gRPC collector on its listener, appending to the
//! event log (see `otwatch-collector` for what it promises agents).
//!
//! It ends when told to stop: open agent streams are ended (their agents
//! reconnect and resend what was not acked) and the listener closes. A
//! server error (the listener failing for good) is a failure of the service.

use crate::supervisor::Context;
use anyhow::Context as _;
use otwatch_collector::{tls, Collector};

pub struct IngestComponent {
    pub collector: Collector,
    pub listener: tokio::net::TcpListener,
    pub tls: Option<tls::Acceptor>,
}

impl IngestComponent {
    pub async fn run(self, ctx: Context) -> anyhow::Result<()> {
        ctx.reporter.opened();
        ctx.reporter.running();
        let mut stop = ctx.stop.clone();
        self.collector
            .serve(self.listener, self.tls, async move {
                let _ = stop.wait_for(|&s| s).await;
            })
            .await
            .context("the ingest server failed")
    }
}
