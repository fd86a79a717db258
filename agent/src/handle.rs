//! The shared, async face of the disk queue: sources append, the sender
//! reads and acks. File I/O (fsync included) runs on the blocking pool so it
//! never stalls the async workers; watch channels announce new durable
//! events and freed space so nobody polls.
//!
//! With `fsync = "group"`, a committer task fsyncs whatever was appended at
//! most `group_commit_interval` after the first unsynced append, and each
//! `append` returns only once its events are durable: the guarantee to the
//! sources is the same as with `"always"`, with fewer fsyncs.
//!
//! A write that fails cleanly (disk full; also a source's own note before
//! the write, when the disk is full) makes the source wait and retry, like a
//! full queue; a failed fsync stops the queue (see [`crate::queue`]) and
//! every waiting append returns [`QueueError::Stopped`].

use crate::queue::{DiskQueue, FsyncPolicy, QueueError, QueueMetrics};
use otwatch_proto::ControllerEvent;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Called with (first seq, last seq) of an append before it is written.
pub type BeforeWrite = Arc<dyn Fn(u64, u64) -> Result<(), QueueError> + Send + Sync>;

/// Clone-cheap handle on the agent's queue.
#[derive(Clone)]
pub struct QueueHandle {
    pub(crate) queue: Arc<Mutex<DiskQueue>>,
    /// Last sequence number appended and durable.
    last_seq: watch::Sender<u64>,
    /// Last sequence number written (group commit only): wakes the committer.
    written: Option<watch::Sender<u64>>,
    /// Highest sequence acked (space may have been freed).
    acked: watch::Sender<u64>,
    /// Why the group committer stopped (a failed fsync), once it has.
    stopped: watch::Sender<Option<String>>,
    metrics: Arc<QueueMetrics>,
}

impl QueueHandle {
    /// Wraps an open queue. With `fsync = "group"` this starts the committer
    /// task, so it must then be called inside a tokio runtime.
    pub fn new(queue: DiskQueue) -> Self {
        let last = queue.durable_seq();
        let acked = queue.acked();
        let metrics = queue.metrics();
        let group = (queue.config().fsync == FsyncPolicy::Group)
            .then(|| queue.config().group_commit_interval);
        let handle = QueueHandle {
            queue: Arc::new(Mutex::new(queue)),
            last_seq: watch::channel(last).0,
            written: group.map(|_| watch::channel(last).0),
            acked: watch::channel(acked).0,
            stopped: watch::channel(None).0,
            metrics,
        };
        if let (Some(interval), Some(written)) = (group, &handle.written) {
            tokio::spawn(commit_groups(
                handle.queue.clone(),
                written.subscribe(),
                handle.last_seq.clone(),
                handle.stopped.clone(),
                interval,
            ));
        }
        handle
    }

    pub fn metrics(&self) -> Arc<QueueMetrics> {
        self.metrics.clone()
    }

    /// Last sequence number appended so far.
    pub fn last_seq(&self) -> u64 {
        *self.last_seq.borrow()
    }

    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DiskQueue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || f(&mut queue.lock().unwrap()))
            .await
            .expect("queue task panicked")
    }

    /// Makes the events durable in the queue (numbering them) and returns
    /// their last sequence number. When the queue is full and configured to
    /// block, waits for acks to free space, logging once per episode.
    pub async fn append(&self, events: Vec<ControllerEvent>) -> Result<u64, QueueError> {
        self.append_with(events, None).await
    }

    /// [`append`](Self::append) with a hook that runs under the queue lock
    /// once the sequence numbers are known and before they are written (see
    /// [`DiskQueue::append_with`]).
    pub async fn append_with(
        &self,
        events: Vec<ControllerEvent>,
        hook: Option<BeforeWrite>,
    ) -> Result<u64, QueueError> {
        let mut events = events;
        let mut acked = self.acked.subscribe();
        let mut warned = false;
        loop {
            let (result, back) = self
                .blocking({
                    let hook = hook.clone();
                    move |q| {
                        let r = match hook {
                            Some(h) => q.append_with(&mut events, |a, b| h(a, b)),
                            None => q.append(&mut events),
                        };
                        Ok((r, events))
                    }
                })
                .await?;
            events = back;
            match result {
                Ok(last) => {
                    if warned {
                        tracing::info!("queue has room again; source resumed");
                    }
                    match &self.written {
                        None => {
                            self.last_seq.send_if_modified(|l| {
                                let newer = last > *l;
                                *l = (*l).max(last);
                                newer
                            });
                        }
                        Some(written) => {
                            written.send_if_modified(|w| {
                                let newer = last > *w;
                                *w = (*w).max(last);
                                newer
                            });
                            let mut durable = self.last_seq.subscribe();
                            let mut stopped = self.stopped.subscribe();
                            tokio::select! {
                                _ = durable.wait_for(|&d| d >= last) => {}
                                reason = stopped.wait_for(Option::is_some) => {
                                    let reason = reason
                                        .ok()
                                        .and_then(|r| r.clone())
                                        .unwrap_or_else(|| "group committer ended".into());
                                    return Err(QueueError::Stopped { reason });
                                }
                            }
                        }
                    }
                    return Ok(last);
                }
                Err(QueueError::Full { bytes, max }) => {
                    if !warned {
                        tracing::warn!(
                            bytes,
                            max_bytes = max,
                            "queue full: source blocked until the collector acks (when_full = \"block\")"
                        );
                        warned = true;
                    }
                    acked.borrow_and_update();
                    let _ = tokio::time::timeout(Duration::from_secs(1), acked.changed()).await;
                }
                Err(e) if matches!(e, QueueError::Io { .. }) || e.is_out_of_space() => {
                    // Cut back cleanly (disk full, say): nothing was taken.
                    // Acks may free space, so they end the wait early.
                    if !warned {
                        if e.is_out_of_space() {
                            tracing::warn!(error = %e, "the disk of data_dir is full; source waits until acks free space (retrying when the collector acks, at least every second)");
                        } else {
                            tracing::error!(error = %e, "cannot write to the queue; source waits and retries when the collector acks, at least every second");
                        }
                        warned = true;
                    }
                    acked.borrow_and_update();
                    let _ = tokio::time::timeout(Duration::from_secs(1), acked.changed()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads up to `max` durable events from `from` on.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<ControllerEvent>, QueueError> {
        self.blocking(move |q| q.read(from, max)).await
    }

    /// Records a durable ack from the collector.
    pub async fn ack(&self, seq: u64) -> Result<(), QueueError> {
        let acked = self
            .blocking(move |q| q.ack(seq).map(|_| q.acked()))
            .await?;
        self.acked.send_replace(acked);
        Ok(())
    }

    /// Waits until everything up to `seq` is acked.
    pub async fn wait_acked(&self, seq: u64) {
        let mut rx = self.acked.subscribe();
        let _ = rx.wait_for(|&a| a >= seq).await;
    }

    /// Highest acked sequence number.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }
}

/// The group committer: after the first unsynced append, waits `interval`
/// for others to join, fsyncs them all, and announces the new durable seq.
/// Ends when every handle is gone.
async fn commit_groups(
    queue: Arc<Mutex<DiskQueue>>,
    mut written: watch::Receiver<u64>,
    durable: watch::Sender<u64>,
    stopped: watch::Sender<Option<String>>,
    interval: Duration,
) {
    loop {
        let target = *durable.borrow();
        if written.wait_for(|&w| w > target).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
        let queue = queue.clone();
        match tokio::task::spawn_blocking(move || queue.lock().unwrap().sync()).await {
            Ok(Ok(seq)) => {
                durable.send_replace(seq);
            }
            Ok(Err(e)) => {
                // The queue stopped itself; nothing waiting is durable.
                stopped.send_replace(Some(e.to_string()));
                return;
            }
            Err(e) => tracing::error!(error = %e, "queue fsync task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueConfig;

    fn event() -> ControllerEvent {
        ControllerEvent {
            ts_ns: 1,
            asset: "a".into(),
            name: "cycle".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_failed_group_commit_fails_the_waiting_appends() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            fsync: FsyncPolicy::Group,
            group_commit_interval: Duration::from_millis(5),
            ..QueueConfig::default()
        };
        let handle = QueueHandle::new(DiskQueue::open(dir.path(), config).unwrap());
        assert_eq!(handle.append(vec![event(); 3]).await.unwrap(), 3);
        handle.queue.lock().unwrap().fail_next_sync = true;
        let waiting =
            tokio::time::timeout(Duration::from_secs(10), handle.append(vec![event(); 2]))
                .await
                .expect("the append waited forever for a commit that failed");
        assert!(
            matches!(waiting, Err(QueueError::Stopped { .. })),
            "{waiting:?}"
        );
        assert!(matches!(
            handle.append(vec![event()]).await,
            Err(QueueError::Stopped { .. })
        ));
        // Never announced as durable, so never sent.
        assert_eq!(handle.last_seq(), 3);
    }
}
