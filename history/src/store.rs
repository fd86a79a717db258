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
//! - Missing files are listed too, so that DataFusion's partition pruning
//!   (which runs on the listing) decides whether a query needs them. Only a
//!   query that would read one fails, with
//!   [`IntegrityError::MissingFile`] naming it; a query over other dates or
//!   hours runs. A committed partition without a manifest is listed as one
//!   placeholder object in its directory for the same reason, and reading
//!   it fails with [`IntegrityError::PartitionWithoutManifest`].
//! - Reading a committed file whose size differs from the committed size
//!   fails with [`IntegrityError::Damaged`] naming it.
//! - Files and partitions recorded in `_lost` are not required: they are
//!   listed only while present (restored).
//! - One listing reads `_committed` once, then the manifests: DataFusion
//!   lists a table once per scan, so a scan sees the table at one committed
//!   offset. Two scans of a query (a self-join) may see two offsets if a
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
use std::collections::{BTreeSet, HashMap};
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
        let Some(committed) = manifest::read_committed(&self.root, self.table)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut listed = Vec::new();
        for partition in &committed.partitions {
            let location = StorePath::parse(partition).map_err(|e| self.invalid(partition, e))?;
            if !(location.prefix_matches(prefix) || prefix.prefix_matches(&location)) {
                continue;
            }
            let pdir = self.dir.join(partition);
            let entries = manifest::read_prefix::<FileEntry>(
                &pdir.join(MANIFEST_FILE),
                committed.next_offset,
            )?;
            let Some(entries) = entries else {
                if !committed.lost.partitions.contains(partition) {
                    let placeholder = location.clone().join(NO_MANIFEST);
                    if placeholder.prefix_matches(prefix) {
                        out.push(meta(placeholder.clone(), PLACEHOLDER_BYTES));
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
                if !file.prefix_matches(prefix) {
                    continue;
                }
                if committed.lost.has_file(partition, &entry.file)
                    && !pdir.join(&entry.file).exists()
                {
                    continue;
                }
                out.push(meta(file.clone(), entry.bytes));
                listed.push((
                    file,
                    Listed::File {
                        rows: entry.rows,
                        bytes: entry.bytes,
                    },
                ));
            }
        }
        // Replaces what an earlier listing of the same prefix said, so a
        // long-lived session holds no more than the committed files.
        let mut map = self.listed.lock().expect("listing map poisoned");
        map.retain(|location, _| !location.prefix_matches(prefix));
        map.extend(listed);
        Ok(out)
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
                            return Some(IntegrityError::MissingFile {
                                table: self.table.name(),
                                path,
                                rows,
                                missing_listed: self.missing_count(),
                            })
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
