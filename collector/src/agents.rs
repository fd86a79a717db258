//! The fleet status: what the collector knows of each agent that has opened
//! an ingest stream since it started.
//!
//! One [`AgentStatus`] per `(site, agent)`, kept in an [`AgentRegistry`]
//! reachable as [`CollectorMetrics::agents`](crate::CollectorMetrics::agents)
//! and read with [`AgentRegistry::snapshot`]. The ingest service updates it
//! when a stream opens (identity, version header, client certificate, peer
//! address), on every batch (the backlog the agent reports) and when a
//! stream ends.
//!
//! Promises:
//! - an agent is `connected` exactly while at least one of its streams is
//!   open on this collector (`streams_open > 0`);
//! - what an agent says about itself (version, backlog) only informs: it
//!   never changes its identity nor what is accepted. A version header that
//!   is not 1 to 64 printable ASCII characters is kept as `None`, never an
//!   error;
//! - the registry is bounded: beyond [`MAX_AGENTS`] entries, the
//!   disconnected agent seen longest ago is forgotten for each new one.
//!   Connected agents are never forgotten (their number is bounded by the
//!   open streams), so the registry holds at most [`MAX_AGENTS`] entries
//!   plus the agents connected at once beyond that;
//! - the status lives in memory: a restarted collector knows only the
//!   agents that have connected since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most agents kept in the registry while some of them are disconnected.
pub const MAX_AGENTS: usize = 10_000;

/// What the collector knows of one agent. Times are nanoseconds since the
/// Unix epoch (UTC), by the collector's clock unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentStatus {
    /// The agent's site id.
    pub site: String,
    /// The agent's id within its site.
    pub agent: String,
    /// The version the agent announced when its latest stream opened
    /// (`x-otwatch-agent-version` header); `None` when it sent none or one
    /// that is not 1 to 64 printable ASCII characters.
    pub version: Option<String>,
    /// Whether a stream of this agent is open now.
    pub connected: bool,
    /// Streams of this agent open now (more than one only briefly, while a
    /// replaced connection is torn down).
    pub streams_open: u32,
    /// When the latest open stream started; `None` while disconnected.
    pub connected_since_ns: Option<i64>,
    /// When the last batch arrived; `None` before the first one.
    pub last_batch_ns: Option<i64>,
    /// Events in the agent's queue not yet acknowledged, as the last batch
    /// reported them (agents that predate the report say 0); `None` before
    /// the first batch.
    pub queue_backlog: Option<u64>,
    /// When the client certificate of the latest stream expires (its
    /// `notAfter`, by the certificate); `None` without TLS (loopback trials)
    /// or when it cannot be read.
    pub cert_not_after_ns: Option<i64>,
    /// The agent's address (`ip:port`) as the collector sees it on the
    /// latest stream; `None` when unknown.
    pub peer: Option<String>,
}

/// What is known of a stream when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOpened {
    /// The version header, as sent (checked here).
    pub version: Option<String>,
    /// The client certificate's `notAfter`.
    pub cert_not_after_ns: Option<i64>,
    /// The remote address.
    pub peer: Option<String>,
}

struct Entry {
    status: AgentStatus,
    /// When the agent was last active (stream opened or ended, batch): the
    /// disconnected entry with the oldest is forgotten first.
    seen_ns: i64,
}

type Key = (String, String);

/// The per-agent status table (see the module doc).
#[derive(Default)]
pub struct AgentRegistry {
    agents: Mutex<HashMap<Key, Entry>>,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry")
            .field("agents", &self.len())
            .finish_non_exhaustive()
    }
}

impl AgentRegistry {
    /// Every known agent, sorted by site, then agent.
    pub fn snapshot(&self) -> Vec<AgentStatus> {
        let mut all: Vec<AgentStatus> = self
            .agents
            .lock()
            .unwrap()
            .values()
            .map(|e| e.status.clone())
            .collect();
        all.sort_by(|a, b| (&a.site, &a.agent).cmp(&(&b.site, &b.agent)));
        all
    }

    /// The status of one agent, if known.
    pub fn get(&self, site: &str, agent: &str) -> Option<AgentStatus> {
        self.agents
            .lock()
            .unwrap()
            .get(&(site.to_string(), agent.to_string()))
            .map(|e| e.status.clone())
    }

    /// Agents known.
    pub fn len(&self) -> usize {
        self.agents.lock().unwrap().len()
    }

    /// Whether no agent is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that a stream of `site`/`agent` opened at `now_ns`. Pair it
    /// with [`AgentRegistry::stream_closed`]; the ingest service does so
    /// through [`OpenStream`].
    pub fn stream_opened(&self, site: &str, agent: &str, opened: StreamOpened, now_ns: i64) {
        let version = opened
            .version
            .filter(|v| otwatch_proto::identity::valid_version(v));
        let mut agents = self.agents.lock().unwrap();
        let key = (site.to_string(), agent.to_string());
        if !agents.contains_key(&key) && agents.len() >= MAX_AGENTS {
            let oldest = agents
                .iter()
                .filter(|(_, e)| !e.status.connected)
                .min_by_key(|(_, e)| e.seen_ns)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                agents.remove(&oldest);
            }
        }
        let entry = agents.entry(key).or_insert_with(|| Entry {
            status: AgentStatus {
                site: site.to_string(),
                agent: agent.to_string(),
                version: None,
                connected: false,
                streams_open: 0,
                connected_since_ns: None,
                last_batch_ns: None,
                queue_backlog: None,
                cert_not_after_ns: None,
                peer: None,
            },
            seen_ns: now_ns,
        });
        entry.seen_ns = now_ns;
        let s = &mut entry.status;
        s.version = version;
        s.connected = true;
        s.streams_open = s.streams_open.saturating_add(1);
        s.connected_since_ns = Some(now_ns);
        s.cert_not_after_ns = opened.cert_not_after_ns;
        s.peer = opened.peer;
    }

    /// Records a batch of `site`/`agent` that arrived at `now_ns` reporting
    /// `queue_backlog`. Ignored for an agent without a known stream.
    pub fn batch_received(&self, site: &str, agent: &str, queue_backlog: u64, now_ns: i64) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(entry) = agents.get_mut(&(site.to_string(), agent.to_string())) {
            entry.seen_ns = now_ns;
            entry.status.last_batch_ns = Some(now_ns);
            entry.status.queue_backlog = Some(queue_backlog);
        }
    }

    /// Records that a stream of `site`/`agent` ended at `now_ns`: the agent
    /// is disconnected once none is left open.
    pub fn stream_closed(&self, site: &str, agent: &str, now_ns: i64) {
        let mut agents = self.agents.lock().unwrap();
        if let Some(entry) = agents.get_mut(&(site.to_string(), agent.to_string())) {
            entry.seen_ns = now_ns;
            let s = &mut entry.status;
            s.streams_open = s.streams_open.saturating_sub(1);
            if s.streams_open == 0 {
                s.connected = false;
                s.connected_since_ns = None;
            }
        }
    }
}

/// An open stream in the registry of `metrics`: records the agent's batches
/// and, when dropped, the end of the stream.
pub(crate) struct OpenStream {
    metrics: Arc<crate::CollectorMetrics>,
    site: String,
    agent: String,
}

impl OpenStream {
    pub(crate) fn new(
        metrics: Arc<crate::CollectorMetrics>,
        identity: &crate::AgentIdentity,
        opened: StreamOpened,
        now_ns: i64,
    ) -> Self {
        metrics
            .agents
            .stream_opened(&identity.site, &identity.agent, opened, now_ns);
        OpenStream {
            metrics,
            site: identity.site.clone(),
            agent: identity.agent.clone(),
        }
    }

    pub(crate) fn batch_received(&self, queue_backlog: u64, now_ns: i64) {
        self.metrics
            .agents
            .batch_received(&self.site, &self.agent, queue_backlog, now_ns);
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics
            .agents
            .stream_closed(&self.site, &self.agent, crate::now_ns());
    }
}

/// The `notAfter` of a DER certificate, in nanoseconds since the epoch
/// (saturated beyond year 2262); `None` when it cannot be parsed.
pub(crate) fn cert_not_after_ns(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(
        cert.validity()
            .not_after
            .timestamp()
            .saturating_mul(1_000_000_000),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(version: Option<&str>) -> StreamOpened {
        StreamOpened {
            version: version.map(String::from),
            cert_not_after_ns: Some(7),
            peer: Some("10.0.0.5:40000".into()),
        }
    }

    #[test]
    fn an_agent_is_connected_while_one_of_its_streams_is_open() {
        let r = AgentRegistry::default();
        r.stream_opened("plant-b", "gw-1", opened(Some("0.1.0")), 100);
        r.stream_opened("plant-a", "gw-2", opened(None), 110);
        r.stream_opened("plant-a", "gw-2", opened(Some("0.2.0")), 120);
        r.batch_received("plant-a", "gw-2", 42, 130);
        let all = r.snapshot();
        let names: Vec<_> = all.iter().map(|s| (&*s.site, &*s.agent)).collect();
        assert_eq!(names, [("plant-a", "gw-2"), ("plant-b", "gw-1")]);
        let a = &all[0];
        assert_eq!(a.version.as_deref(), Some("0.2.0"));
        assert!(a.connected);
        assert_eq!(a.streams_open, 2);
        assert_eq!(a.connected_since_ns, Some(120));
        assert_eq!((a.last_batch_ns, a.queue_backlog), (Some(130), Some(42)));
        assert_eq!(a.cert_not_after_ns, Some(7));
        assert_eq!(a.peer.as_deref(), Some("10.0.0.5:40000"));

        r.stream_closed("plant-a", "gw-2", 140);
        let a = r.get("plant-a", "gw-2").unwrap();
        assert!(a.connected);
        assert_eq!(a.streams_open, 1);
        r.stream_closed("plant-a", "gw-2", 150);
        let a = r.get("plant-a", "gw-2").unwrap();
        assert!(!a.connected);
        assert_eq!(a.streams_open, 0);
        assert_eq!(a.connected_since_ns, None);
        // What was last known stays.
        assert_eq!(a.queue_backlog, Some(42));
        assert_eq!(a.version.as_deref(), Some("0.2.0"));
        // A stray close does not wrap around.
        r.stream_closed("plant-a", "gw-2", 160);
        assert_eq!(r.get("plant-a", "gw-2").unwrap().streams_open, 0);
    }

    #[test]
    fn a_bad_version_is_kept_as_none() {
        let r = AgentRegistry::default();
        for bad in ["", "1.0\n", "1.0\u{7f}", "é", &"1".repeat(65)] {
            r.stream_opened("s", "a", opened(Some(bad)), 1);
            assert_eq!(r.get("s", "a").unwrap().version, None, "{bad:?}");
        }
        r.stream_opened("s", "a", opened(Some(&"1".repeat(64))), 1);
        assert_eq!(r.get("s", "a").unwrap().version, Some("1".repeat(64)));
    }

    #[test]
    fn the_oldest_disconnected_agent_makes_room() {
        let r = AgentRegistry::default();
        for i in 0..MAX_AGENTS {
            let agent = format!("gw-{i}");
            r.stream_opened("s", &agent, StreamOpened::default(), i as i64);
            // All but the first two disconnect, gw-5 first of all.
            if i >= 2 {
                let closed = if i == 5 { 0 } else { MAX_AGENTS + i };
                r.stream_closed("s", &agent, closed as i64);
            }
        }
        assert_eq!(r.len(), MAX_AGENTS);
        r.stream_opened("s", "new", StreamOpened::default(), 1 << 40);
        assert_eq!(r.len(), MAX_AGENTS);
        assert!(r.get("s", "gw-5").is_none());
        // Connected agents are never forgotten, even the ones seen longest ago.
        assert!(r.get("s", "gw-0").unwrap().connected);
        assert!(r.get("s", "new").unwrap().connected);
        // A known agent coming back takes no room.
        r.stream_opened("s", "gw-6", StreamOpened::default(), 1 << 41);
        assert_eq!(r.len(), MAX_AGENTS);
    }

    #[test]
    fn the_status_serializes_with_its_field_names() {
        let r = AgentRegistry::default();
        r.stream_opened("s", "a", opened(Some("0.1.0")), 5);
        let json = serde_json::to_value(r.snapshot()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "site": "s",
                "agent": "a",
                "version": "0.1.0",
                "connected": true,
                "streams_open": 1,
                "connected_since_ns": 5,
                "last_batch_ns": null,
                "queue_backlog": null,
                "cert_not_after_ns": 7,
                "peer": "10.0.0.5:40000",
            }])
        );
    }
}
