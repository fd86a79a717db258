//! The object store through which DataFusion reads a history table: a
//! read-only view of `<root>/<table>` that lists exactly the committed
//! files — from the manifests, never from the directories — and serves
//! their bytes from the local disk.
//!
//! Promises:
//! - A listing holds the files of the committed manifest lines (see
//!   [`crate::manifest`] for which lines are committed), each with its
//!   committed size, and nothing else: a stray or half-written
//!   `*.parquet` is never read, and a flush is never seen before its
//!   commit.
//! - Missing files are listed too, so that the scan's pruning (see
//!   [`crate::scan`], which asks for the files of the partitions and sites
//!   a query can need) decides whether a query needs them. Only a query
//!   that would read one fails, with [`IntegrityError::MissingFile`]
//!   naming it; a query over other dates or hours runs. A committed
//!   partition without a manifest is listed as one placeholder object in
//!   its directory for the same reason, and reading it fails with
//!   [`IntegrityError::PartitionWithoutManifest`].
//! - A listed file that is gone because the committed state no longer
//!   lists it (compaction replaced it and removed it after its grace
//!   period, or retention dropped its partition, while a query was
//!   running) fails the query with [`IntegrityError::Replaced`]: run it
//!   again. Never a smaller answer.
//! - Reading a committed file whose size differs from the committed size
//!   fails with [`IntegrityError::Damaged`] naming it.
//! - Files and partitions recorded in `_lost` are not required: they are
//!   listed only while present (restored).
//! - One listing reads `_committed` once, then the index, then the
//!   manifests of the partitions asked for: a scan lists its table once,
//!   so a scan sees the table at one committed offset, and each partition
//!   either before or after a compaction swapped its files (the swap
//!   replaces the partition's manifest in one atomic step). Two scans of a query (a self-join) may see two offsets if a
//!   flush commits between them.
//!
//! The errors travel as `object_store::Error::Generic` with the
//! [`IntegrityError`] as source; [`crate::sql`] takes them out again.

use crate::error::IntegrityError;
use crate::manifest::{self, FileEntry, MANIFEST_FILE};
use crate::{HistoryError, Table};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// URL scheme under which the stores are registered; the host is the table.
pub(crate) const SCHEME: &str = "otwatch-history";
const STORE: &str = "otwatch history";
/// The placeholder listed for a committed partition without a manifest. It
/// ends in `.parquet` so DataFusion keeps it until partition pruning.
const NO_MANIFEST: &str = "_manifest-missing.parquet";
/// Its size: DataFusion refuses files under 8 bytes without reading them,
/// and the placeholder must be read to raise its error.
const PLACEHOLDER_BYTES: u64 = 4096;

/// A committed-files view of one table; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CommittedStore(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    table: Table,
    dir: PathBuf,
    /// Created on first read: the directory may not exist when the session
    /// is set up.
    disk: OnceLock<LocalFileSystem>,
    /// What the listings said about each location they returned: the
    /// committed size to check reads against.
    listed: Mutex<HashMap<StorePath, Listed>>,
}

#[derive(Debug, Clone)]
enum Listed {
    File {
        rows: u64,
        bytes: u64,
    },
    /// The placeholder of a committed partition without a manifest.
    NoManifest {
        dir: PathBuf,
        dir_present: bool,
    },
}

/// A committed file as last listed, for diagnosis after a failed query.
#[derive(Debug, Clone)]
pub(crate) struct ListedFile {
    pub table: Table,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

impl CommittedStore {
    pub fn new(root: &Path, table: Table) -> Self {
        CommittedStore(Arc::new(Inner {
            root: root.to_path_buf(),
            table,
            dir: root.join(table.name()),
            disk: OnceLock::new(),
            listed: Mutex::new(HashMap::new()),
        }))
    }

    /// `otwatch-history://<table>/`, the URL the table is registered under.
    pub fn url(table: Table) -> String {
        format!("{SCHEME}://{}/", table.name())
    }

    /// The committed objects `select` asks for (see [`Select`]), read from
    /// the manifests. Blocking: call it off the async threads.
    pub fn objects(&self, select: &dyn Select) -> Result<Vec<CommittedObject>, HistoryError> {
        self.0.objects(select)
    }

    /// The integrity problem of a location the listings returned (a file
    /// missing, replaced, of the wrong size, or a partition without a
    /// manifest): of one that `error_text` names if there is one, else of
    /// the first found. For diagnosis after a failed query.
    pub fn listed_problem(&self, error_text: &str) -> Option<IntegrityError> {
        let mut locations: Vec<StorePath> = self
            .0
            .listed
            .lock()
            .expect("listing map poisoned")
            .keys()
            .cloned()
            .collect();
        locations.sort();
        locations.sort_by_key(|l| !error_text.contains(l.as_ref()));
        locations
            .iter()
            .find_map(|location| self.0.problem(location, None))
    }

    /// The committed files the listings so far have returned.
    pub fn listed_files(&self) -> Vec<ListedFile> {
        let listed = self.0.listed.lock().expect("listing map poisoned");
        listed
            .iter()
            .filter_map(|(location, what)| match what {
                Listed::File { rows, bytes } => Some(ListedFile {
                    table: self.0.table,
                    path: self.0.dir.join(location.as_ref()),
                    rows: *rows,
                    bytes: *bytes,
                }),
                Listed::NoManifest { .. } => None,
            })
            .collect()
    }
}

impl Inner {
    /// Every committed object under `prefix`, from the manifests.
    fn listing(&self, prefix: &StorePath) -> Result<Vec<ObjectMeta>, HistoryError> {
        let select = PrefixSelect(prefix);
        Ok(self.objects(&select)?.into_iter().map(|o| o.meta).collect())
    }

    /// The committed objects `select` asks for, from one read of the
    /// committed state: `_committed` first, then the index, then the
    /// manifests of the selected partitions only. Records what it returns
    /// (the committed sizes reads are checked against).
    fn objects(&self, select: &dyn Select) -> Result<Vec<CommittedObject>, HistoryError> {
        let Some(committed) = manifest::read_committed(&self.root, self.table)? else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = committed.partitions.iter().map(String::as_str).collect();
        let wanted = select.partitions(&names);
        let mut out = Vec::new();
        let mut listed = Vec::new();
        let mut selected = HashSet::new();
        for (partition, _) in names.iter().zip(wanted).filter(|(_, keep)| *keep) {
            let partition = *partition;
            selected.insert(partition.to_owned());
            let location = StorePath::parse(partition).map_err(|e| self.invalid(partition, e))?;
            let pdir = self.dir.join(partition);
            let entries = manifest::read_prefix::<FileEntry>(
                &pdir.join(MANIFEST_FILE),
                committed.next_offset,
            )?;
            let Some(entries) = entries else {
                if !committed.lost.partitions.contains(partition) {
                    let placeholder = location.clone().join(NO_MANIFEST);
                    if select.placeholder(&placeholder) {
                        out.push(CommittedObject {
                            partition: partition.to_owned(),
                            meta: meta(placeholder.clone(), PLACEHOLDER_BYTES),
                        });
                        listed.push((
                            placeholder,
                            Listed::NoManifest {
                                dir_present: pdir.is_dir(),
                                dir: pdir,
                            },
                        ));
                    }
                }
                continue;
            };
            for entry in entries.entries {
                let file = location.clone().join(entry.file.as_str());
                if !select.file(&file, &entry) {
                    continue;
                }
                if committed.lost.has_file(partition, &entry.file)
                    && !pdir.join(&entry.file).exists()
                {
                    continue;
                }
                out.push(CommittedObject {
                    partition: partition.to_owned(),
                    meta: meta(file.clone(), entry.bytes),
                });
                listed.push((
                    file,
                    Listed::File {
                        rows: entry.rows,
                        bytes: entry.bytes,
                    },
                ));
            }
        }
        // Replaces what an earlier listing said about the partitions read
        // now, so a long-lived session holds no more than the committed
        // files (compaction replaces a partition's files).
        let mut map = self.listed.lock().expect("listing map poisoned");
        map.retain(|location, _| !selected.contains(&partition_of(location)));
        map.extend(listed);
        Ok(out)
    }

    /// Whether `location` is still listed by the committed state now (a
    /// file that is not was replaced by compaction or dropped by
    /// retention since a scan listed it). `None` when that cannot be told.
    fn still_committed(&self, location: &StorePath) -> Option<bool> {
        let partition = partition_of(location);
        let file = location.filename()?;
        let committed = manifest::read_committed(&self.root, self.table).ok()??;
        if !committed.partitions.contains(&partition) {
            return Some(false);
        }
        let manifest = self.dir.join(&partition).join(MANIFEST_FILE);
        let entries = manifest::read_prefix::<FileEntry>(&manifest, committed.next_offset)
            .ok()??
            .entries;
        Some(entries.iter().any(|e| e.file == file))
    }

    fn invalid(&self, partition: &str, e: object_store::path::Error) -> HistoryError {
        IntegrityError::CorruptManifest {
            path: self.dir.join(manifest::PARTITIONS_FILE),
            line: 0,
            detail: format!("partition {partition:?}: {e}"),
        }
        .into()
    }

    fn disk(&self) -> object_store::Result<&LocalFileSystem> {
        if let Some(disk) = self.disk.get() {
            return Ok(disk);
        }
        let disk = LocalFileSystem::new_with_prefix(&self.dir)?;
        Ok(self.disk.get_or_init(|| disk))
    }

    fn listed(&self, location: &StorePath) -> Option<Listed> {
        self.listed
            .lock()
            .expect("listing map poisoned")
            .get(location)
            .cloned()
    }

    /// The integrity problem behind a failed or suspicious read of a
    /// committed file, if there is one.
    fn problem(&self, location: &StorePath, served: Option<u64>) -> Option<IntegrityError> {
        let path = self.dir.join(location.as_ref());
        match self.listed(location)? {
            Listed::NoManifest { dir, dir_present } => {
                Some(IntegrityError::PartitionWithoutManifest {
                    table: self.table.name(),
                    dir,
                    dir_present,
                })
            }
            Listed::File { rows, bytes } => {
                let size = match served {
                    Some(size) => size,
                    None => match std::fs::metadata(&path) {
                        Ok(meta) => meta.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            if self.still_committed(location) == Some(false) {
                                return Some(IntegrityError::Replaced {
                                    table: self.table.name(),
                                    path,
                                });
                            }
                            return Some(IntegrityError::MissingFile {
                                table: self.table.name(),
                                path,
                                rows,
                                missing_listed: self.missing_count(),
                            });
                        }
                        Err(_) => return None,
                    },
                };
                (size != bytes).then(|| IntegrityError::Damaged {
                    table: self.table.name(),
                    path,
                    reason: format!("{size} bytes on disk, {bytes} committed"),
                })
            }
        }
    }

    /// How many listed files are gone (only computed for an error message).
    fn missing_count(&self) -> usize {
        let listed = self.listed.lock().expect("listing map poisoned");
        listed
            .iter()
            .filter(|(location, what)| {
                matches!(what, Listed::File { .. }) && !self.dir.join(location.as_ref()).exists()
            })
            .count()
    }

    fn explain(&self, location: &StorePath, e: object_store::Error) -> object_store::Error {
        match self.problem(location, None) {
            Some(problem) => integrity(problem),
            None => e,
        }
    }
}

/// What a listing returns, besides the object: its partition.
#[derive(Debug, Clone)]
pub(crate) struct CommittedObject {
    /// `date=…/hour=…`.
    pub partition: String,
    pub meta: ObjectMeta,
}

/// Which committed partitions and files a listing returns.
pub(crate) trait Select {
    /// Whether to read the manifest of each of these committed partitions
    /// (`date=…/hour=…`), one answer each.
    fn partitions(&self, partitions: &[&str]) -> Vec<bool>;
    /// Whether to return a committed file of a partition read.
    fn file(&self, location: &StorePath, entry: &FileEntry) -> bool;
    /// Whether to return the placeholder of a read partition without a
    /// manifest (reading it raises the error that names the partition).
    fn placeholder(&self, location: &StorePath) -> bool;
}

/// Everything under a prefix (the object store's own `list`).
struct PrefixSelect<'a>(&'a StorePath);

impl Select for PrefixSelect<'_> {
    fn partitions(&self, partitions: &[&str]) -> Vec<bool> {
        partitions
            .iter()
            .map(|p| match StorePath::parse(p) {
                Ok(location) => location.prefix_matches(self.0) || self.0.prefix_matches(&location),
                // Kept, so that the listing reports the bad name.
                Err(_) => true,
            })
            .collect()
    }

    fn file(&self, location: &StorePath, _entry: &FileEntry) -> bool {
        location.prefix_matches(self.0)
    }

    fn placeholder(&self, location: &StorePath) -> bool {
        location.prefix_matches(self.0)
    }
}

/// `date=…/hour=…` of a location in a table's store.
fn partition_of(location: &StorePath) -> String {
    location
        .parts()
        .take(2)
        .map(|p| p.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn meta(location: StorePath, size: u64) -> ObjectMeta {
    ObjectMeta {
        location,
        // Not used for anything but cache keys, where the unique file
        // names already tell files apart.
        last_modified: chrono::DateTime::UNIX_EPOCH,
        size,
        e_tag: None,
        version: None,
    }
}

fn integrity(problem: IntegrityError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(problem),
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "the history is read-only through SQL".into(),
    }
}

impl std::fmt::Display for CommittedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "committed files of {}", self.0.dir.display())
    }
}

#[async_trait]
impl ObjectStore for CommittedStore {
    async fn put_opts(
        &self,
        _location: &StorePath,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _location: &StorePath,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let inner = &self.0;
        if let Some(Listed::NoManifest { .. }) = inner.listed(location) {
            return Err(integrity(
                inner.problem(location, None).expect("a listed placeholder"),
            ));
        }
        match inner.disk()?.get_opts(location, options).await {
            Ok(result) => match inner.problem(location, Some(result.meta.size)) {
                Some(problem) => Err(integrity(problem)),
                None => Ok(result),
            },
            Err(e) => Err(inner.explain(location, e)),
        }
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let inner = &self.0;
        match inner.disk()?.get_ranges(location, ranges).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(inner.explain(location, e)),
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = Arc::clone(&self.0);
        let prefix = prefix.cloned().unwrap_or_default();
        stream::once(async move {
            // Small reads of manifests; off the async threads all the same.
            tokio::task::spawn_blocking(move || inner.listing(&prefix))
                .await
                .map_err(object_store::Error::from)?
                .map_err(|e| match e {
                    HistoryError::Integrity(problem) => integrity(problem),
                    other => object_store::Error::Generic {
                        store: STORE,
                        source: Box::new(other),
                    },
                })
        })
        .flat_map(
            |listing: object_store::Result<Vec<ObjectMeta>>| match listing {
                Ok(objects) => stream::iter(objects.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async { Err(e) }).boxed(),
            },
        )
        .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        let prefix = prefix.cloned().unwrap_or_default();
        let objects: Vec<ObjectMeta> =
            futures::TryStreamExt::try_collect(self.list(Some(&prefix))).await?;
        let depth = prefix.parts().count();
        let mut common_prefixes = BTreeSet::new();
        let mut direct = Vec::new();
        for object in objects {
            let parts: Vec<_> = object.location.parts().collect();
            if parts.len() == depth + 1 {
                direct.push(object);
            } else if parts.len() > depth + 1 {
                common_prefixes.insert(StorePath::from_iter(parts.into_iter().take(depth + 1)));
            }
        }
        Ok(ListResult {
            common_prefixes: common_prefixes.into_iter().collect(),
            objects: direct,
        })
    }

    async fn copy_opts(
        &self,
        _from: &StorePath,
        _to: &StorePath,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}
