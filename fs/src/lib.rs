//! Durable file operations shared by every otwatch crate: the one atomic
//! file replace, directory fsync, durable directory creation, and the
//! exclusive lock on a data directory.
//!
//! Promises:
//! - [`write_atomic`] leaves `path` holding either its old contents or the
//!   new ones, never a mix, across a crash or power cut at any instant; when
//!   it returns `Ok` the new contents and the rename are on disk (file and
//!   directory fsync'd). The temporary file is `<name>.tmp` beside it.
//! - [`create_dir_all_durable`] makes every directory it creates survive a
//!   crash (each new entry's parent is fsync'd, outermost first).
//! - [`DirLock`] is held by at most one process per directory at a time
//!   (an OS advisory lock on `<dir>/LOCK`, released by the kernel when the
//!   process dies, so a crash never leaves a stale lock behind).
//!
//! Every error names the file or directory and what was being done to it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A failed file operation, naming what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done, e.g. "syncing directory".
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    /// A closure that wraps an `io::Error` with `action` and `path`.
    pub fn with<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> FsError + 'a {
        move |source| FsError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The kind of the underlying I/O error (`StorageFull` for a full disk).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// The temporary file [`write_atomic`] writes before renaming it over `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically and durably: writes
/// `<name>.tmp`, fsyncs it, renames it over `path`, fsyncs the directory.
/// On error the temporary file is removed (best effort) and `path` holds its
/// old contents (or, if the failure was the directory fsync, possibly the new
/// ones).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp).map_err(FsError::with("creating", &tmp))?;
        file.write_all(contents)
            .map_err(FsError::with("writing", &tmp))?;
        file.sync_all().map_err(FsError::with("syncing", &tmp))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FsError::with("renaming into place", path)(e));
    }
    sync_dir(parent_of(path))
}

/// Fsyncs a directory, so that entries created, renamed or removed in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::with("syncing directory", dir))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `path` and any missing ancestors, fsyncing the parent of each
/// directory it created so the new entries survive a crash.
pub fn create_dir_all_durable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    fs::create_dir_all(path).map_err(FsError::with("creating directory", path))?;
    // Outermost first, so each parent entry is durable before its child's.
    for dir in missing.iter().rev() {
        sync_dir(parent_of(dir))?;
    }
    Ok(())
}

/// An exclusive lock on a directory, held until dropped (or the process
/// ends). Two processes must never write one data directory: their logs,
/// offsets and checkpoints would overwrite each other.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another process ({holder}); stop it first, or give this one another directory", dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(#[from] FsError),
}

impl DirLock {
    /// Locks `dir` (creating it) by taking an exclusive advisory lock on
    /// `<dir>/LOCK`, which then names this process (`pid N`). Fails at once,
    /// naming the holder, when another process has it.
    pub fn acquire(dir: &Path) -> std::result::Result<DirLock, LockError> {
        create_dir_all_durable(dir)?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(FsError::with("opening", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown process".into());
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(FsError::with("locking", &path)(e).into())
            }
        }
        // Who holds it, for the message another process prints.
        file.set_len(0)
            .and_then(|_| file.write_all(format!("pid {}\n", std::process::id()).as_bytes()))
            .map_err(FsError::with("writing", &path))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        write_atomic(&path, b"1\n").unwrap();
        write_atomic(&path, b"2\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2\n");
        assert!(!temp_path(&path).exists());
        assert_eq!(temp_path(&path), dir.path().join("offset.tmp"));
        assert_eq!(
            temp_path(Path::new("checkpoint.json")),
            Path::new("checkpoint.json.tmp")
        );
    }

    #[test]
    fn write_atomic_names_the_path_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing/file.tmp"), "{err}");
    }

    #[test]
    fn create_dir_all_durable_creates_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
    }

    #[test]
    fn a_locked_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(lock);
        DirLock::acquire(dir.path()).unwrap();
    }
}
