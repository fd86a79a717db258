//! Compaction: the small files a closed hour collected (one per site per
//! flush) merged into a few large files sorted by site, asset and `ts`,
//! swapped in atomically and exactly once.
//!
//! # On-disk format
//!
//! ```text
//! <table>/date=…/hour=…/
//!   _compaction                                  {"stamp":S,"replaced":["a-…-0.parquet",…]}
//!   <site>-<offset>-c<stamp>-<n>.parquet         a file compaction wrote
//!   .<site>-<offset>-c<stamp>-<n>.parquet.tmp    only while it is written
//! ```
//!
//! - `_compaction` is the partition's compaction in progress, or done and
//!   waiting for its replaced files to be removed; at most one per
//!   partition. `stamp` (milliseconds since the epoch when it started,
//!   unique per partition) is in the name of every file it writes;
//!   `replaced` names the files it merges.
//! - A compacted file holds the rows of one site, sorted by site, asset and
//!   `ts`, in row groups of [`ROW_GROUP_ROWS`] rows, zstd (flush files are
//!   LZ4: they are read often and live only until their hour is compacted).
//!   Its name carries its site (as a flush file's does) and as `<offset>`
//!   the largest flush offset among the files it replaces; the manifest
//!   line of the file carries the same offset (see [`crate::manifest`]).
//!   The name is no flush file name, so the writer's recovery never takes
//!   it for a flush's file.
//!
//! # What is merged, and when
//!
//! A partition is closed `delay` after its hour ends (late events may still
//! arrive later: they become new small files, merged by a later
//! compaction). In a closed partition, for each site, the files smaller
//! than half of `target_file_bytes` are merged when there are at least two
//! of them; files already that large are left alone. The merged rows go to
//! files of at most about `target_file_bytes` each. Memory is bounded by
//! `memory_limit`: the sort spills to disk beyond it.
//!
//! # The swap, exactly once
//!
//! One compaction of a partition goes through these steps; a crash at any
//! point leaves the partition's rows readable exactly once, as the old
//! files or as the new ones, and the writer's recovery (at open) removes
//! the other set:
//!
//! 1. `_compaction` is written (atomic replace): from here on, every file
//!    carrying its stamp belongs to it.
//! 2. The new files are written to temporary names, fsync'd, renamed into
//!    place, and the directory is fsync'd. Their rows are counted against
//!    the rows the manifest committed for the files they replace.
//! 3. **The swap**: [`crate::TableWriter::commit_compaction`] replaces the
//!    partition's `_manifest` (atomic replace) with its committed lines
//!    minus the replaced files plus the new ones. It runs under the writer,
//!    between flushes, so no flush appends to the manifest meanwhile; the
//!    replace is the single step that moves readers from the old set to
//!    the new one. A listing reads a manifest once, so no scan sees both
//!    sets or neither.
//! 4. After the grace period, the replaced files that the committed
//!    manifest does not list are deleted, the directory is fsync'd, then
//!    `_compaction` is removed.
//!
//! Recovery decides by the committed manifest alone: if it lists a file
//! of the stamp, the swap happened and only step 4 is left (done later by
//! [`Compactor::collect`]); otherwise every file of the stamp is deleted
//! and `_compaction` removed. A manifest rebuilt from the files present
//! (after it was lost) keeps the old set when all of it is there, else the
//! new one: both hold the same rows.
//!
//! # Why the replaced files wait
//!
//! A query lists its files when it starts and reads them while it runs;
//! DataFusion opens a file again for each range it reads, so a file
//! deleted under a running query is gone for it. Replaced files are
//! therefore kept for `grace` after the swap (counted from when this
//! process saw the swap; after a restart the wait starts again, which only
//! keeps them longer). A query that listed them before the swap reads them
//! until it ends, as long as it runs for less than `grace`. One that runs
//! longer and reaches a removed file fails with
//! [`crate::IntegrityError::Replaced`] and is run again; it never returns
//! a smaller answer. Nothing in the manifests or the index names a reader,
//! so nothing can tell when the last one is done: a bound in time is the
//! one guarantee that also holds for readers in other processes (`otwatch
//! sql`) and on object storage, where no open file handle keeps a deleted
//! object readable.
//!
//! # Files on object storage
//!
//! The file operations are the few functions at the end of this module
//! (write a file and put it in place, replace a small file, delete files).
//! Correctness rests on the atomic replace of `_manifest` and `_compaction`
//! and on files being complete before they are named, both of which an
//! object store's put gives; the directory fsyncs are what makes the same
//! true on a local disk.

use crate::manifest::{self, FileEntry, MANIFEST_FILE};
use crate::writer::{self, DATE_COLUMN, HOUR_COLUMN};
use crate::{HistoryError, Table};
use arrow::array::RecordBatch;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{col, ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The compaction record of a partition.
pub const INTENT_FILE: &str = "_compaction";
/// Rows per row group of a compacted file: small enough that the
/// statistics of a group sorted by site, asset and `ts` are narrow, large
/// enough that the footer stays small.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
const NS_PER_HOUR: i64 = 3_600_000_000_000;

/// Compaction settings (`[history.compaction]` in `otwatch.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Merge the small files of closed hours. Default: true.
    pub enabled: bool,
    /// Size the merged files are cut at, in bytes; files at least half as
    /// large are left as they are. Default: 128 MiB.
    pub target_file_bytes: u64,
    /// How long after its hour ends a partition is compacted, so that
    /// agents that were briefly cut off have sent their events. Later
    /// events are merged by a later compaction. Default: 10 minutes.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// How long replaced files stay on disk after the swap, for queries
    /// that listed them before it. A query running longer than this may
    /// fail (never answer wrongly) and is run again. Default: 1 hour.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How often to look for closed hours to compact. Default: 1 minute.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Memory the sort of one compaction may hold, in bytes; it spills to
    /// the system's temporary directory beyond it. Default: 256 MiB.
    pub memory_limit: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            target_file_bytes: 128 << 20,
            delay: Duration::from_secs(600),
            grace: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            memory_limit: 256 << 20,
        }
    }
}

impl CompactionConfig {
    /// Refuses values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.target_file_bytes < 1 << 20 {
            return Err(HistoryError::Config {
                key: "history.compaction.target_file_bytes",
                detail: format!("{} bytes is less than 1 MiB", self.target_file_bytes),
            });
        }
        if self.interval.is_zero() {
            return Err(HistoryError::Config {
                key: "history.compaction.interval",
                detail: "must be longer than 0".into(),
            });
        }
        if self.memory_limit < 32 << 20 {
            return Err(HistoryError::Config {
                key: "history.compaction.memory_limit",
                detail: format!("{} bytes is less than 32 MiB", self.memory_limit),
            });
        }
        if usize::try_from(self.memory_limit).is_err() {
            return Err(HistoryError::Config {
                key: "history.compaction.memory_limit",
                detail: "more than this machine can address".into(),
            });
        }
        Ok(())
    }
}

/// The content of `_compaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub stamp: u64,
    pub replaced: Vec<String>,
}

/// A partition's new files, written and counted, waiting for the swap
/// ([`crate::TableWriter::commit_compaction`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `date=…/hour=…`.
    pub partition: String,
    pub(crate) stamp: u64,
    pub(crate) replaced: Vec<FileEntry>,
    pub(crate) written: Vec<FileEntry>,
}

impl Prepared {
    /// Files merged.
    pub fn files_replaced(&self) -> usize {
        self.replaced.len()
    }

    /// Files written.
    pub fn files_written(&self) -> usize {
        self.written.len()
    }

    /// Rows moved (the same before and after).
    pub fn rows(&self) -> u64 {
        self.written.iter().map(|f| f.rows).sum()
    }

    /// Bytes of the files merged.
    pub fn bytes_replaced(&self) -> u64 {
        self.replaced.iter().map(|f| f.bytes).sum()
    }

    /// Bytes of the files written.
    pub fn bytes_written(&self) -> u64 {
        self.written.iter().map(|f| f.bytes).sum()
    }
}

/// A step of a compaction at which [`Compactor::crash_at`] stops it dead,
/// as a crash would (tests only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `_compaction` written, no file yet.
    IntentWritten,
    /// The first new file is in place.
    FirstFileWritten,
    /// Some replaced files deleted, `_compaction` still there.
    CleanupStarted,
}

/// Compacts one table: finds closed hours with small files, merges them
/// ([`Compactor::prepare`]), and removes replaced files after the grace
/// period ([`Compactor::collect`]). The swap between the two is the
/// writer's ([`crate::TableWriter::commit_compaction`]), so that it never
/// races a flush. Must not run while a writer of the table opens or
/// recovers (recovery removes what an unfinished compaction wrote).
#[derive(Debug)]
pub struct Compactor {
    table: Table,
    /// The history root.
    root: PathBuf,
    /// `<root>/<table>`.
    dir: PathBuf,
    config: CompactionConfig,
    /// Partitions whose swap is done, with when this process saw it: their
    /// replaced files go after `grace`.
    swapped: Mutex<HashMap<String, Instant>>,
    /// Manifest lengths of partitions found with nothing to merge: skipped
    /// while their manifest does not grow.
    settled: Mutex<HashMap<String, u64>>,
    /// Whether the partitions were searched for swaps done before this
    /// process started.
    resumed: Mutex<bool>,
    last_stamp: AtomicU64,
    crash_at: Option<Step>,
}

impl Compactor {
    /// A compactor of `<root>/<table>`.
    pub fn new(root: &Path, table: Table, config: CompactionConfig) -> Self {
        Compactor {
            table,
            root: root.to_path_buf(),
            dir: root.join(table.name()),
            config,
            swapped: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            resumed: Mutex::new(false),
            last_stamp: AtomicU64::new(0),
            crash_at: None,
        }
    }

    /// Makes the compactor panic at `step`, leaving the disk as a crash
    /// there would (tests only).
    #[doc(hidden)]
    pub fn crash_at(mut self, step: Step) -> Self {
        self.crash_at = Some(step);
        self
    }

    fn maybe_crash(&self, step: Step) {
        if self.crash_at == Some(step) {
            panic!("simulated crash at {step:?}");
        }
    }

    /// The settings.
    pub fn config(&self) -> &CompactionConfig {
        &self.config
    }

    /// Committed partitions closed at `now` (their hour ended `delay` ago)
    /// that have files to merge, oldest first. Reads the manifests of the
    /// partitions that changed since the last call.
    pub fn candidates(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, HistoryError> {
        let Some(committed) = manifest::read_committed(&self.root, self.table)? else {
            return Ok(Vec::new());
        };
        let now_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let delay = i64::try_from(self.config.delay.as_nanos()).unwrap_or(i64::MAX);
        let swapped: HashSet<String> = self.swapped_partitions();
        let mut out = Vec::new();
        for partition in &committed.partitions {
            let Some(start) = partition_start(partition) else {
                continue;
            };
            if start.saturating_add(NS_PER_HOUR).saturating_add(delay) > now_ns
                || swapped.contains(partition)
            {
                continue;
            }
            let pdir = self.dir.join(partition);
            let manifest_path = pdir.join(MANIFEST_FILE);
            let len = match fs::metadata(&manifest_path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(HistoryError::io("inspecting", &manifest_path)(e)),
            };
            if self.settled.lock().expect("not poisoned").get(partition) == Some(&len) {
                continue;
            }
            if pdir.join(INTENT_FILE).exists() {
                continue;
            }
            let Some(prefix) =
                manifest::read_prefix::<FileEntry>(&manifest_path, committed.next_offset)?
            else {
                continue;
            };
            if groups(&prefix.entries, self.config.target_file_bytes).is_empty() {
                self.settled
                    .lock()
                    .expect("not poisoned")
                    .insert(partition.clone(), len);
            } else {
                out.push(partition.clone());
            }
        }
        Ok(out)
    }

    /// Merges the small files of `partition` into new files (steps 1 and 2
    /// of the module documentation) and returns them for the swap; `None`
    /// when there is nothing to merge. On an error, what it wrote is
    /// removed again (and if that fails too, recovery removes it).
    pub async fn prepare(&self, partition: &str) -> Result<Option<Prepared>, HistoryError> {
        let root = self.root.clone();
        let Some(committed) = manifest::read_committed(&root, self.table)? else {
            return Ok(None);
        };
        if !committed.partitions.contains(partition) {
            return Ok(None);
        }
        let pdir = self.dir.join(partition);
        if pdir.join(INTENT_FILE).exists() {
            return Ok(None);
        }
        let Some(prefix) =
            manifest::read_prefix::<FileEntry>(&pdir.join(MANIFEST_FILE), committed.next_offset)?
        else {
            return Ok(None);
        };
        let groups = groups(&prefix.entries, self.config.target_file_bytes);
        if groups.is_empty() {
            return Ok(None);
        }
        // Damage is never copied into a new file: every file to merge must
        // be as committed.
        for group in &groups {
            for f in group {
                crate::integrity::inspect(&pdir.join(&f.file), f.rows, f.bytes, false).map_err(
                    |reason| crate::IntegrityError::Damaged {
                        table: self.table.name(),
                        path: pdir.join(&f.file),
                        reason,
                    },
                )?;
            }
        }
        let stamp = self.next_stamp();
        let replaced: Vec<FileEntry> = groups.iter().flatten().cloned().collect();
        let intent = Intent {
            stamp,
            replaced: replaced.iter().map(|f| f.file.clone()).collect(),
        };
        write_small(
            &pdir.join(INTENT_FILE),
            &serde_json::to_vec(&intent).expect("serializes"),
        )?;
        self.maybe_crash(Step::IntentWritten);
        let mut written = Vec::new();
        let merged = async {
            for group in &groups {
                self.merge(&pdir, stamp, group, &mut written).await?;
            }
            sync_dir(&pdir)
        }
        .await;
        if let Err(e) = merged {
            if let Err(cleanup) = roll_back(&pdir, stamp) {
                tracing::warn!(table = self.table.name(), partition, error = %cleanup, "could not remove what a failed compaction wrote; the writer's recovery will");
            }
            return Err(e);
        }
        Ok(Some(Prepared {
            partition: partition.to_owned(),
            stamp,
            replaced,
            written,
        }))
    }

    /// Removes the new files of `prepared` and its record, after the swap
    /// refused it (never after a swap that may have happened).
    pub fn abandon(&self, prepared: &Prepared) -> Result<(), HistoryError> {
        roll_back(&self.dir.join(&prepared.partition), prepared.stamp).map(|_| ())
    }

    /// Notes that the swap of `prepared` is done: its replaced files go
    /// after the grace period.
    pub fn swapped(&self, prepared: &Prepared) {
        self.swapped
            .lock()
            .expect("not poisoned")
            .insert(prepared.partition.clone(), Instant::now());
    }

    /// Deletes the replaced files of every swap done at least `grace`
    /// before `now` (step 4), then their `_compaction` records; returns how
    /// many files it deleted. Only files the committed manifest does not
    /// list are ever deleted.
    pub fn collect(&self, now: Instant) -> Result<usize, HistoryError> {
        self.resume()?;
        let due: Vec<String> = self
            .swapped
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= self.config.grace)
            .map(|(p, _)| p.clone())
            .collect();
        let root = self.root.clone();
        let mut deleted = 0;
        for partition in due {
            let pdir = self.dir.join(&partition);
            let listed = match manifest::read_committed(&root, self.table)? {
                Some(c) if c.partitions.contains(&partition) => {
                    manifest::read_prefix::<FileEntry>(&pdir.join(MANIFEST_FILE), c.next_offset)?
                        .map(|p| p.entries)
                }
                _ => None,
            };
            let intent = read_intent(&pdir)?;
            // Dropped by retention, or the record is gone: nothing of it is
            // left to remove. A compaction whose swap did not happen keeps
            // its files: only the writer's recovery removes those.
            if let (Some(listed), Some(intent)) = (listed, intent) {
                let swap_done = listed
                    .iter()
                    .any(|e| parse_name(&e.file).is_some_and(|(_, stamp)| stamp == intent.stamp));
                if swap_done {
                    let listed: HashSet<String> = listed.into_iter().map(|e| e.file).collect();
                    let mut stale: Vec<String> = intent
                        .replaced
                        .iter()
                        .filter(|f| !listed.contains(*f))
                        .cloned()
                        .collect();
                    stale.sort();
                    for (i, file) in stale.iter().enumerate() {
                        if remove_file(&pdir.join(file))? {
                            deleted += 1;
                        }
                        if i == 0 {
                            self.maybe_crash(Step::CleanupStarted);
                        }
                    }
                    sync_dir(&pdir)?;
                    remove_small(&pdir.join(INTENT_FILE))?;
                    tracing::info!(
                        table = self.table.name(),
                        partition,
                        files = stale.len(),
                        "removed the files a compaction replaced, after the grace period"
                    );
                }
            }
            self.swapped
                .lock()
                .expect("not poisoned")
                .remove(&partition);
        }
        Ok(deleted)
    }

    /// Partitions whose swap is done and whose replaced files wait.
    pub fn awaiting_removal(&self) -> usize {
        self.swapped.lock().expect("not poisoned").len()
    }

    fn swapped_partitions(&self) -> HashSet<String> {
        self.swapped
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Once per compactor: finds the swaps done before this process started
    /// (recovery leaves them for the grace period) and starts their wait.
    fn resume(&self) -> Result<(), HistoryError> {
        let mut resumed = self.resumed.lock().expect("not poisoned");
        if *resumed {
            return Ok(());
        }
        let root = self.root.clone();
        if let Some(committed) = manifest::read_committed(&root, self.table)? {
            let now = Instant::now();
            let mut swapped = self.swapped.lock().expect("not poisoned");
            for partition in &committed.partitions {
                if self.dir.join(partition).join(INTENT_FILE).exists() {
                    swapped.entry(partition.clone()).or_insert(now);
                }
            }
        }
        *resumed = true;
        Ok(())
    }

    /// A stamp later than every earlier one of this process (and than the
    /// wall clock's milliseconds).
    fn next_stamp(&self) -> u64 {
        let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let mut last = self.last_stamp.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_stamp
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Sorts the rows of `group` (files of one site) by site, asset and
    /// `ts` and writes them to files of about `target_file_bytes`.
    async fn merge(
        &self,
        pdir: &Path,
        stamp: u64,
        group: &[FileEntry],
        written: &mut Vec<FileEntry>,
    ) -> Result<(), HistoryError> {
        let schema = self.table.schema();
        let query_err = |source| HistoryError::Query { source };
        let ctx = self.session()?;
        let paths: Vec<String> = group
            .iter()
            .map(|f| pdir.join(&f.file).to_string_lossy().into_owned())
            .collect();
        let frame = ctx
            .read_parquet(paths, ParquetReadOptions::default().schema(&schema))
            .await
            .map_err(query_err)?
            .sort(vec![
                col("site").sort(true, false),
                col("asset").sort(true, false),
                col("ts").sort(true, false),
            ])
            .map_err(query_err)?;
        let mut stream = frame.execute_stream().await.map_err(query_err)?;
        let site = group
            .iter()
            .map(|f| f.site.clone())
            .collect::<Option<HashSet<_>>>();
        let site = site
            .filter(|s| s.len() == 1)
            .and_then(|s| s.into_iter().next());
        let name_site = site
            .clone()
            .unwrap_or_else(|| site_of_name(&group[0].file).to_owned());
        let offset = group.iter().map(|f| f.offset).max().unwrap_or(0);
        let expected: u64 = group.iter().map(|f| f.rows).sum();
        let mut rows_total = 0u64;
        let mut out: Option<Output> = None;
        let first = written.len();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(query_err)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(
                |source| HistoryError::Arrow {
                    context: format!("compacting {}", pdir.display()),
                    source,
                },
            )?;
            let current = match &mut out {
                Some(o) => o,
                None => {
                    let n = written.len() - first;
                    let name = file_name(&name_site, offset, stamp, n);
                    out.insert(Output::create(pdir, name, &schema).await?)
                }
            };
            current.write(&batch).await?;
            rows_total += batch.num_rows() as u64;
            if current.size() >= self.config.target_file_bytes {
                let done = out.take().expect("open");
                written.push(done.finish(offset, site.clone()).await?);
                if written.len() - first == 1 {
                    self.maybe_crash(Step::FirstFileWritten);
                }
            }
        }
        if let Some(done) = out.take() {
            written.push(done.finish(offset, site.clone()).await?);
            if written.len() - first == 1 {
                self.maybe_crash(Step::FirstFileWritten);
            }
        }
        let counted: u64 = written[first..].iter().map(|f| f.rows).sum();
        if rows_total != expected || counted != expected {
            return Err(HistoryError::Compaction {
                partition: pdir.display().to_string(),
                detail: format!("merged {rows_total} rows ({counted} written) where the manifest committed {expected}"),
            });
        }
        Ok(())
    }

    /// A DataFusion context for one merge, under `memory_limit`.
    fn session(&self) -> Result<SessionContext, HistoryError> {
        let limit = usize::try_from(self.config.memory_limit).unwrap_or(usize::MAX);
        let mut config = SessionConfig::new().with_target_partitions(1);
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        config.options_mut().execution.sort_spill_reservation_bytes = (limit / 16).min(10 << 20);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
            )
            .build_arc()
            .map_err(|source| HistoryError::Session {
                context: "creating the compaction runtime".into(),
                source,
            })?;
        Ok(SessionContext::new_with_config_rt(config, runtime))
    }
}

/// The files of a partition to merge, one group per site: the files under
/// half of `target` bytes, where a site has at least two.
pub(crate) fn groups(entries: &[FileEntry], target: u64) -> Vec<Vec<FileEntry>> {
    let mut by_site: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.bytes < target / 2) {
        let key = e.site.clone().map_or_else(
            || format!("name:{}", site_of_name(&e.file)),
            |s| format!("site:{s}"),
        );
        by_site.entry(key).or_default().push(e.clone());
    }
    by_site.into_values().filter(|g| g.len() >= 2).collect()
}

/// The site part of a flush or compacted file name.
fn site_of_name(name: &str) -> &str {
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    // <site>-<offset>-<n>, or <site>-<offset>-c<stamp>-<n> for a compacted file.
    let suffix_parts = if parse_name(name).is_some() { 3 } else { 2 };
    stem.rsplitn(suffix_parts + 1, '-')
        .nth(suffix_parts)
        .unwrap_or(stem)
}

/// `<site>-<offset, 20 digits>-c<stamp>-<n>.parquet`.
pub(crate) fn file_name(site: &str, offset: u64, stamp: u64, n: usize) -> String {
    let flush = writer::file_name(site, offset, 0);
    let stem = flush
        .strip_suffix("-0.parquet")
        .expect("a flush name ends so");
    format!("{stem}-c{stamp}-{n}.parquet")
}

/// The offset and stamp of a compacted file name, if the name is one.
pub(crate) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (rest, n) = stem.rsplit_once('-')?;
    let (rest, stamp) = rest.rsplit_once('-')?;
    let (_site, offset) = rest.rsplit_once('-')?;
    let stamp = stamp.strip_prefix('c')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(n) || !digits(stamp) || offset.len() != 20 || !digits(offset) {
        return None;
    }
    Some((offset.parse().ok()?, stamp.parse().ok()?))
}

/// The first instant (ns) of `date=…/hour=…`.
fn partition_start(partition: &str) -> Option<i64> {
    let (date, hour) = partition.split_once('/')?;
    let date = date.strip_prefix(DATE_COLUMN)?.strip_prefix('=')?;
    let hour: i64 = hour
        .strip_prefix(HOUR_COLUMN)?
        .strip_prefix('=')?
        .parse()
        .ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let midnight = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()?;
    midnight.checked_add(hour * NS_PER_HOUR)
}

/// A compacted file being written.
struct Output {
    tmp: PathBuf,
    path: PathBuf,
    name: String,
    writer: AsyncArrowWriter<tokio::fs::File>,
    rows: u64,
    ts: (Option<i64>, Option<i64>),
}

impl Output {
    async fn create(
        dir: &Path,
        name: String,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Output, HistoryError> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(HistoryError::io("creating", &tmp))?;
        let writer = AsyncArrowWriter::try_new(file, Arc::clone(schema), Some(properties(schema)))
            .map_err(|source| HistoryError::Parquet {
                path: tmp.clone(),
                source,
            })?;
        Ok(Output {
            path: dir.join(&name),
            tmp,
            name,
            writer,
            rows: 0,
            ts: (None, None),
        })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<(), HistoryError> {
        self.writer
            .write(batch)
            .await
            .map_err(|source| HistoryError::Parquet {
                path: self.tmp.clone(),
                source,
            })?;
        self.rows += batch.num_rows() as u64;
        let (lo, hi) = writer::ts_range(std::slice::from_ref(batch), &batch.schema());
        self.ts.0 = match (self.ts.0, lo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.ts.1 = match (self.ts.1, hi) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    fn size(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Closes, fsyncs and renames the file into place (the caller fsyncs
    /// the directory); returns its manifest line.
    async fn finish(
        mut self,
        offset: u64,
        site: Option<String>,
    ) -> Result<FileEntry, HistoryError> {
        self.writer
            .finish()
            .await
            .map_err(|source| HistoryError::Parquet {
                path: self.tmp.clone(),
                source,
            })?;
        let file = self.writer.into_inner();
        file.sync_all()
            .await
            .map_err(HistoryError::io("syncing", &self.tmp))?;
        let bytes = file
            .metadata()
            .await
            .map_err(HistoryError::io("reading size of", &self.tmp))?
            .len();
        drop(file);
        tokio::fs::rename(&self.tmp, &self.path)
            .await
            .map_err(HistoryError::io("renaming into place", &self.path))?;
        Ok(FileEntry {
            offset,
            file: self.name,
            rows: self.rows,
            bytes,
            site,
            ts_min: self.ts.0,
            ts_max: self.ts.1,
        })
    }
}

/// The writer properties of compacted files: zstd level 3 (the library
/// default: a good ratio at a cost well below the rate at which the log
/// produces data; flush files are LZ4, see the writer), row groups of [`ROW_GROUP_ROWS`], and the sort order recorded.
fn properties(schema: &arrow::datatypes::SchemaRef) -> WriterProperties {
    let sorting: Vec<SortingColumn> = ["site", "asset", "ts"]
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .map(|i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: false,
        })
        .collect();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(sorting))
        .build()
}

/// What a partition's `_compaction` says, if there is one. A record that
/// cannot be read is reported as corrupt.
pub(crate) fn read_intent(pdir: &Path) -> Result<Option<Intent>, HistoryError> {
    let path = pdir.join(INTENT_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        crate::IntegrityError::CorruptManifest {
            path,
            line: 1,
            detail: e.to_string(),
        }
        .into()
    })
}

/// What recovery did about a partition's `_compaction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// No compaction record.
    None,
    /// The swap had not happened: the new files were removed.
    RolledBack,
    /// The swap had happened: the replaced files wait for the grace period.
    Swapped,
}

/// Recovery of one committed partition (the writer calls it at open, after
/// cutting the manifests): decides by the committed manifest `listed`
/// whether the partition's compaction swapped, and removes the new files
/// of one that did not.
pub(crate) fn recover_partition(
    pdir: &Path,
    listed: &[FileEntry],
) -> Result<Resolved, HistoryError> {
    let intent = match read_intent(pdir) {
        Ok(Some(intent)) => intent,
        Ok(None) => return Ok(Resolved::None),
        Err(HistoryError::Integrity(e)) => {
            // Written only by atomic replace, so this is damage: without
            // the stamp, the unlisted compacted files are the ones to go
            // (never a listed file).
            tracing::error!(dir = %pdir.display(), error = %e, "a compaction record is unreadable; removing the compacted files the manifest does not list");
            let listed: HashSet<&str> = listed.iter().map(|e| e.file.as_str()).collect();
            for name in names(pdir)? {
                if parse_name(&name).is_some() && !listed.contains(name.as_str()) {
                    remove_file(&pdir.join(&name))?;
                }
            }
            sync_dir(pdir)?;
            remove_small(&pdir.join(INTENT_FILE))?;
            return Ok(Resolved::RolledBack);
        }
        Err(e) => return Err(e),
    };
    let swapped = listed
        .iter()
        .any(|e| parse_name(&e.file).is_some_and(|(_, stamp)| stamp == intent.stamp));
    if swapped {
        return Ok(Resolved::Swapped);
    }
    roll_back(pdir, intent.stamp)?;
    tracing::warn!(dir = %pdir.display(), stamp = intent.stamp, "removed the files of a compaction that stopped before its swap");
    Ok(Resolved::RolledBack)
}

/// For a manifest rebuilt from the files present: settles the partition's
/// compaction first, keeping the old set when all of it is there (the new
/// files are removed) and the new set otherwise (the replaced files left
/// are removed), so that the files present hold every row once.
pub(crate) fn settle_for_rebuild(pdir: &Path) -> Result<HashSet<String>, HistoryError> {
    let intent = match read_intent(pdir) {
        Ok(Some(intent)) => intent,
        Ok(None) => return Ok(HashSet::new()),
        Err(HistoryError::Integrity(_)) => {
            recover_partition(pdir, &[])?;
            return Ok(HashSet::new());
        }
        Err(e) => return Err(e),
    };
    let present: HashSet<String> = names(pdir)?.into_iter().collect();
    if intent.replaced.iter().all(|f| present.contains(f)) {
        roll_back(pdir, intent.stamp)
    } else {
        let mut removed = HashSet::new();
        for file in &intent.replaced {
            if remove_file(&pdir.join(file))? {
                removed.insert(file.clone());
            }
        }
        sync_dir(pdir)?;
        remove_small(&pdir.join(INTENT_FILE))?;
        Ok(removed)
    }
}

/// The files of a partition that a compaction holds outside the manifest:
/// the replaced files waiting for the grace period and the new files of
/// one not swapped yet. `check` does not count them as strays.
pub(crate) fn held_files(pdir: &Path) -> HashSet<String> {
    let Ok(Some(intent)) = read_intent(pdir) else {
        return HashSet::new();
    };
    let mut held: HashSet<String> = intent.replaced.into_iter().collect();
    if let Ok(all) = names(pdir) {
        held.extend(
            all.into_iter()
                .filter(|n| parse_name(n).is_some_and(|(_, stamp)| stamp == intent.stamp)),
        );
    }
    held
}

/// Removes every file of `stamp` (and its temporaries), then the record;
/// returns the names removed.
fn roll_back(pdir: &Path, stamp: u64) -> Result<HashSet<String>, HistoryError> {
    let mut removed = HashSet::new();
    for name in names(pdir)? {
        let of_stamp = |n: &str| parse_name(n).is_some_and(|(_, s)| s == stamp);
        let tmp_of_stamp = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(of_stamp);
        if (of_stamp(&name) || tmp_of_stamp) && remove_file(&pdir.join(&name))? {
            removed.insert(name);
        }
    }
    sync_dir(pdir)?;
    remove_small(&pdir.join(INTENT_FILE))?;
    Ok(removed)
}

// The file operations of compaction (and retention, see
// `crate::retention`): the only places that touch the disk, so that they
// can move to an object store as they are.

/// The names in a partition directory.
fn names(dir: &Path) -> Result<Vec<String>, HistoryError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(HistoryError::io("listing", dir))? {
        let entry = entry.map_err(HistoryError::io("listing", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Replaces a small file atomically and durably.
pub(crate) fn write_small(path: &Path, contents: &[u8]) -> Result<(), HistoryError> {
    Ok(otwatch_fs::write_atomic(path, contents)?)
}

/// Removes a small file durably (missing is fine).
pub(crate) fn remove_small(path: &Path) -> Result<(), HistoryError> {
    if remove_file(path)? {
        sync_dir(otwatch_fs::parent_of(path))?;
    }
    Ok(())
}

/// Removes a file; false when it was not there. The caller fsyncs the
/// directory.
pub(crate) fn remove_file(path: &Path) -> Result<bool, HistoryError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HistoryError::io("removing", path)(e)),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), HistoryError> {
    Ok(otwatch_fs::sync_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, bytes: u64, site: Option<&str>) -> FileEntry {
        FileEntry {
            offset: 1,
            file: file.into(),
            rows: 1,
            bytes,
            site: site.map(Into::into),
            ts_min: None,
            ts_max: None,
        }
    }

    #[test]
    fn compacted_names_are_no_flush_names_and_round_trip() {
        let name = file_name("plant-a", 42, 1_700_000_000_123, 3);
        assert_eq!(
            name,
            "plant-a-00000000000000000042-c1700000000123-3.parquet"
        );
        assert_eq!(parse_name(&name), Some((42, 1_700_000_000_123)));
        assert_eq!(writer::flush_offset(&name), None);
        assert_eq!(parse_name("plant-a-00000000000000000042-3.parquet"), None);
        assert_eq!(site_of_name(&name), "plant-a");
        assert_eq!(
            site_of_name("plant-b-00000000000000000042-3.parquet"),
            "plant-b"
        );
    }

    #[test]
    fn only_small_files_of_one_site_are_grouped() {
        let target = 100;
        let groups = groups(
            &[
                entry("a-1", 10, Some("a")),
                entry("a-2", 10, Some("a")),
                entry("a-big", 60, Some("a")),
                entry("b-1", 10, Some("b")),
                entry("c-1", 10, Some("c")),
                entry("c-2", 20, Some("c")),
            ],
            target,
        );
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|e| e.file.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["a-1", "a-2"], vec!["c-1", "c-2"]]);
    }

    #[test]
    fn partitions_close_at_the_end_of_their_hour() {
        assert_eq!(partition_start("date=1970-01-01/hour=1"), Some(NS_PER_HOUR));
        assert_eq!(partition_start("nonsense"), None);
    }
}
