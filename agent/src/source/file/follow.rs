//! Following one path across rotations: which file is being read (by its
//! identity and fingerprint, not its name), when it has been rotated away,
//! where the rest of a copied-and-truncated file went, and the lines read
//! from each. The rules are in the parent module's documentation.
//!
//! All I/O here is blocking; the source runs it on tokio's blocking pool.

use super::checkpoint::{Checkpoint, ResumePoint};
use super::SourceMetrics;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most bytes of a file's start its fingerprint covers.
pub(super) const FINGERPRINT_BYTES: u64 = 1024;

/// Which file: device and inode number. Two paths name the same file
/// exactly when their ids are equal; while a file is held open, its inode
/// number cannot be given to another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dev {} inode {}", self.dev, self.ino)
    }
}

/// CRC32C of a file's first `len` bytes, `len` = min(size, 1024) when taken.
/// Files are only appended to, so the same file keeps its fingerprint; a
/// file that was truncated and written again, or another file on a reused
/// inode, starts with other bytes (lines carry timestamps) and does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Fingerprint {
    pub len: u64,
    pub crc32c: u32,
}

impl Fingerprint {
    fn of(prefix: &[u8]) -> Fingerprint {
        Fingerprint {
            len: prefix.len() as u64,
            crc32c: crc32c::crc32c(prefix),
        }
    }

    /// Whether a file whose first bytes (up to [`FINGERPRINT_BYTES`]) are
    /// `prefix` starts like the file this was taken of. A file shorter than
    /// `len` cannot: files only grow.
    fn matches(&self, prefix: &[u8]) -> bool {
        prefix.len() as u64 >= self.len
            && crc32c::crc32c(&prefix[..self.len as usize]) == self.crc32c
    }
}

/// The first [`FINGERPRINT_BYTES`] of `file` (fewer if it is shorter).
fn read_prefix(file: &File) -> io::Result<Vec<u8>> {
    let mut prefix = vec![0; FINGERPRINT_BYTES as usize];
    let mut got = 0;
    while got < prefix.len() {
        match file.read_at(&mut prefix[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(got);
    Ok(prefix)
}

/// Lines read from one file, and where they lie in it.
#[derive(Debug)]
pub(super) struct Chunk {
    /// The file the offsets belong to.
    pub file: FileId,
    pub fingerprint: Fingerprint,
    pub before: u64,
    pub after: u64,
    pub line_before: u64,
    pub line_after: u64,
    /// (line number, text) of each non-blank line.
    pub lines: Vec<(u64, String)>,
    /// More may be read at once (the chunk stopped at `max_lines_per_read`,
    /// or it marks a new file): the source asks again without waiting.
    pub more: bool,
    /// To be checkpointed even though no bytes were read: reading moves to a
    /// new file, or the drained file is finished and the path names none.
    pub mark: bool,
    /// The file was read to its end after a rotation (see [`Checkpoint::drained`]).
    pub drained: bool,
}

/// A file being read: its handle, which file it is, and how far it was read.
struct Reading {
    file: File,
    id: FileId,
    /// Its first [`FINGERPRINT_BYTES`] (fewer while it is shorter), kept
    /// whole so that a copy shorter than them can still be recognised.
    prefix: Vec<u8>,
    /// Where it was opened: the followed path or a rotated sibling.
    origin: PathBuf,
    offset: u64,
    line: u64,
    /// Its size at the last look: what a truncation may have taken.
    size: u64,
}

impl Reading {
    fn open(file: File, origin: &Path, at: ResumePoint) -> io::Result<Reading> {
        let meta = file.metadata()?;
        Ok(Reading {
            id: FileId::of(&meta),
            prefix: read_prefix(&file)?,
            origin: origin.to_path_buf(),
            offset: at.offset,
            line: at.line,
            size: meta.len(),
            file,
        })
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.prefix)
    }

    /// Whether the file still starts as it did (and is not shorter than
    /// what was read): if not, it was truncated, and perhaps written again.
    /// Lengthens the fingerprint to [`FINGERPRINT_BYTES`] as the file grows.
    fn still_intact(&mut self) -> io::Result<bool> {
        let size = self.file.metadata()?.len();
        let prefix = read_prefix(&self.file)?;
        if size < self.offset || !prefix.starts_with(&self.prefix) {
            return Ok(false);
        }
        self.prefix = prefix;
        self.size = size;
        Ok(true)
    }

    /// Whether a file starting with `prefix` (its first bytes, up to
    /// [`FINGERPRINT_BYTES`]) starts like this one: the same bytes as far
    /// as both go, and some. A copy holds at least what was read of this
    /// file, so they go at least min(offset, 1024) bytes far.
    fn starts_like(&self, prefix: &[u8]) -> bool {
        let common = self.prefix.len().min(prefix.len());
        common > 0 && self.prefix[..common] == prefix[..common]
    }

    /// An empty chunk at the current position, to be checkpointed.
    fn mark(&self, drained: bool) -> Chunk {
        Chunk {
            file: self.id,
            fingerprint: self.fingerprint(),
            before: self.offset,
            after: self.offset,
            line_before: self.line,
            line_after: self.line,
            lines: Vec::new(),
            more: true,
            mark: true,
            drained,
        }
    }

    /// Reads up to `max` lines from the current position. A last line
    /// without its newline is only taken with `take_partial` (the file's
    /// writer is gone: it will never be completed). The position moves only
    /// when the whole chunk was read.
    fn read(&mut self, max: usize, take_partial: bool) -> io::Result<Chunk> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let (mut offset, mut line) = (self.offset, self.line);
        let mut lines = Vec::new();
        let mut read = 0;
        let mut buf = Vec::new();
        while read < max {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            let complete = buf.last() == Some(&b'\n');
            if n == 0 || !(complete || take_partial) {
                break; // end of file, or a line still being written
            }
            offset += n as u64;
            // Leading NULs are the hole a writer without O_APPEND leaves
            // when its file is truncated under it (copytruncate): not text.
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_start_matches('\0').trim_end();
            if !text.is_empty() {
                lines.push((line, text.to_string()));
            }
            line += 1;
            read += 1;
            if !complete {
                break;
            }
        }
        let chunk = Chunk {
            file: self.id,
            fingerprint: self.fingerprint(),
            before: self.offset,
            after: offset,
            line_before: self.line,
            line_after: line,
            lines,
            more: read >= max,
            mark: false,
            drained: false,
        };
        (self.offset, self.line) = (offset, line);
        Ok(chunk)
    }
}

/// Why a file is being drained rather than followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// The path now names another file (rename and create).
    Replaced,
    /// The path names no file (deleted).
    Removed,
    /// The file was truncated; this is the copy of it (copytruncate).
    Copied,
    /// The file read before the agent stopped is no longer at the path.
    FoundAtStart,
}

impl std::fmt::Display for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rotation::Replaced => "replaced",
            Rotation::Removed => "removed",
            Rotation::Copied => "copied and truncated",
            Rotation::FoundAtStart => "rotated while the agent was stopped",
        })
    }
}

/// A rotated file being read to its end.
struct Drain {
    why: Rotation,
    /// The file is finished once found at its end on this poll or a later
    /// one: its writer may append a little longer after a rotation.
    until_poll: u64,
    /// The file read next, from its start, held open since the rotation
    /// was seen (so a second rotation during the drain skips no file): the
    /// file the path named then, or the truncated file after its copy.
    /// `None`: the path named no file, or the rotation happened while the
    /// agent was stopped; the path is opened when the drain ends.
    next: Option<Reading>,
    /// Lines read from the file since the rotation was seen.
    lines: u64,
}

/// Follows the file at one path: the file it names now, or the one it named
/// until that file is drained.
pub(super) struct Follower {
    path: PathBuf,
    rotated_patterns: Vec<PathBuf>,
    max_lines: usize,
    metrics: Arc<SourceMetrics>,
    /// The file being read; none while the path names no file.
    reading: Option<Reading>,
    /// Set while `reading` is a rotated file being read to its end.
    drain: Option<Drain>,
    /// The path was missing at the last look (logged once per absence).
    missing: bool,
    /// Polls so far (see [`Follower::poll_passed`]).
    polls: u64,
}

impl Follower {
    /// Starts following `path`, from the checkpoint if there is one: in the
    /// file it names, wherever that file now is.
    pub fn resume(
        path: PathBuf,
        rotated_patterns: Vec<PathBuf>,
        max_lines: usize,
        metrics: Arc<SourceMetrics>,
        checkpoint: Option<(Checkpoint, ResumePoint)>,
    ) -> io::Result<Follower> {
        let mut follower = Follower {
            path,
            rotated_patterns,
            max_lines,
            metrics,
            reading: None,
            drain: None,
            missing: false,
            polls: 0,
        };
        let Some((cp, at)) = checkpoint else {
            tracing::info!("no checkpoint: reading the file from its start");
            return Ok(follower);
        };
        // The file at the path, if it is the checkpointed one.
        let mut reused_inode = false;
        if let Some((file, id, prefix)) = open_regular(&follower.path)? {
            if is_checkpointed(&cp, at, id, file.metadata()?.len(), &prefix) {
                let reading = Reading::open(file, &follower.path, at)?;
                tracing::info!(file = %reading.id, offset = at.offset, line = at.line, "resuming the file");
                follower.reading = Some(reading);
                return Ok(follower);
            }
            reused_inode = cp.names(id);
        }
        if cp.drained {
            tracing::info!(
                "the file read before was finished; reading the file the path names from its start"
            );
            return Ok(follower);
        }
        // Rotated while the agent was stopped: renamed (same file), or
        // copied before a truncation (same first bytes, another inode).
        let found = follower.find_rotated(|id, size, prefix| {
            if is_checkpointed(&cp, at, id, size, prefix) {
                Some(2)
            } else {
                let copy = cp.fingerprint.is_some_and(|fp| fp.matches(prefix));
                (copy && size >= at.offset).then_some(1)
            }
        })?;
        match found {
            Some((origin, file)) => {
                let reading = Reading::open(file, &origin, at)?;
                tracing::info!(
                    rotated = %origin.display(),
                    file = %reading.id,
                    offset = at.offset,
                    "the file read before was rotated while the agent was stopped: reading the rest of it first"
                );
                follower.reading = Some(reading);
                follower.drain = Some(Drain {
                    why: Rotation::FoundAtStart,
                    // Its writer may have been at it until just now.
                    until_poll: 1,
                    next: None,
                    lines: 0,
                });
            }
            None => {
                if reused_inode {
                    tracing::info!(
                        inode = cp.inode,
                        "the path names another file on the same inode (its first bytes differ, or it is shorter than what was read): reading it from its start"
                    );
                }
                tracing::warn!(
                    inode = cp.inode,
                    offset = at.offset,
                    line = at.line,
                    "the file read before is neither at the path nor among the rotated paths: \
                     lines it had beyond this offset, if any, were not read"
                );
            }
        }
        Ok(follower)
    }

    /// Tells the follower that the source waited a poll: the rotated file
    /// being drained may be finished at its end from now on.
    pub fn poll_passed(&mut self) {
        self.polls += 1;
    }

    /// The next chunk to checkpoint and queue, or `None` when there is
    /// nothing to read until the next poll.
    pub fn next(&mut self) -> io::Result<Option<Chunk>> {
        loop {
            let Some(reading) = self.reading.as_mut() else {
                return self.open_path_from_start();
            };
            if !reading.still_intact()? {
                if self.drain.is_some() {
                    // A rotated file truncated in turn: nothing more in it.
                    tracing::warn!(file = %reading.origin.display(), "the rotated file being read was truncated; moving on");
                    return self.end_drain();
                }
                if let Some(mark) = self.on_truncated()? {
                    return Ok(Some(mark));
                }
                continue;
            }
            if self.drain.is_none() {
                self.look_for_rotation()?;
            }
            let reading = self.reading.as_mut().expect("reading a file");
            let chunk = reading.read(self.max_lines, false)?;
            let Some(drain) = &mut self.drain else {
                return Ok((chunk.after > chunk.before).then_some(chunk));
            };
            if chunk.after > chunk.before {
                drain.lines += chunk.lines.len() as u64;
                // Once no writer is waited for, the rest is read at once.
                let more = chunk.more || self.polls >= drain.until_poll;
                return Ok(Some(Chunk { more, ..chunk }));
            }
            // A rotated file at its end: finished, unless its writer may
            // still be appending.
            if self.polls < drain.until_poll {
                return Ok(None);
            }
            // Its writer has moved on: a last line without its newline
            // will never be completed, so it is read as it is.
            let tail = reading.read(1, true)?;
            if tail.after > tail.before {
                drain.lines += tail.lines.len() as u64;
                return Ok(Some(tail));
            }
            return self.end_drain();
        }
    }

    /// Whether the path still names the file being read; if not, starts
    /// draining it, holding open the file the path names now.
    fn look_for_rotation(&mut self) -> io::Result<()> {
        let reading = self.reading.as_ref().expect("reading a file");
        let next = match std::fs::metadata(&self.path) {
            Ok(meta) if FileId::of(&meta) == reading.id => return Ok(()),
            Ok(_) => open_regular(&self.path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (why, next) = match next {
            Some((file, id, _)) if id != reading.id => {
                let start = ResumePoint { offset: 0, line: 1 };
                (
                    Rotation::Replaced,
                    Some(Reading::open(file, &self.path, start)?),
                )
            }
            // Moved back between the two looks: still this file.
            Some(_) => return Ok(()),
            None => (Rotation::Removed, None),
        };
        let new = next.as_ref().map(|r| r.id.to_string());
        tracing::debug!(
            old = %reading.id,
            new = new.as_deref().unwrap_or("none"),
            "the path names another file: reading the old one to its end"
        );
        self.drain = Some(Drain {
            why,
            until_poll: self.polls + 1,
            next,
            lines: 0,
        });
        Ok(())
    }

    /// Opens the file the path names and reads it from its start. Returns
    /// the mark that records the new file in the checkpoint.
    fn open_path_from_start(&mut self) -> io::Result<Option<Chunk>> {
        let Some((file, _, _)) = open_regular(&self.path)? else {
            if !self.missing {
                tracing::warn!("the file does not exist (yet); waiting for it");
                self.missing = true;
            }
            return Ok(None);
        };
        self.missing = false;
        let reading = Reading::open(file, &self.path, ResumePoint { offset: 0, line: 1 })?;
        tracing::info!(file = %reading.id, "reading the file from its start");
        let mark = reading.mark(false);
        self.reading = Some(reading);
        Ok(Some(mark))
    }

    /// The drained file is finished: moves on to the next file (see
    /// [`Drain::next`]), from its start. Returns the mark to checkpoint.
    fn end_drain(&mut self) -> io::Result<Option<Chunk>> {
        let old_id = self.reading.as_ref().expect("draining a file").id;
        let held = self.drain.as_mut().and_then(|d| d.next.take());
        let next = match held {
            Some(next) => Some(next),
            None => match open_regular(&self.path)? {
                Some((_, id, _)) if id == old_id => {
                    // The path names the drained file again (moved back): it is
                    // followed on from where it was read to.
                    tracing::info!(file = %old_id, "the path names the rotated file again; following it on");
                    self.drain = None;
                    return Ok(None);
                }
                Some((file, _, _)) => Some(Reading::open(
                    file,
                    &self.path,
                    ResumePoint { offset: 0, line: 1 },
                )?),
                None => None,
            },
        };
        let old = self.reading.take().expect("draining a file");
        let drain = self.drain.take().expect("draining a file");
        let new = next.as_ref().map(|r| r.id.to_string());
        tracing::info!(
            rotation = %drain.why,
            old = %old.id,
            old_path = %old.origin.display(),
            new = new.as_deref().unwrap_or("none yet"),
            drained_lines = drain.lines,
            "file rotated: read the old file to its end; reading the new one from its start"
        );
        match next {
            Some(reading) => {
                let mark = reading.mark(false);
                self.reading = Some(reading);
                Ok(Some(mark))
            }
            None => {
                // Expected after a delete rotation: no warning when the
                // path is found empty.
                self.missing = true;
                // Recorded so that a restart does not look for the old file.
                Ok(Some(old.mark(true)))
            }
        }
    }

    /// The file being followed was truncated under the reader: its unread
    /// tail went to a copy (copytruncate), read from there if one matches,
    /// then the file from its start.
    /// Returns the mark of the file read again from its start, when there
    /// is no copy to read first.
    fn on_truncated(&mut self) -> io::Result<Option<Chunk>> {
        // Everything that may fail comes first: on an error the state is
        // unchanged, and the next poll sees the same truncation.
        let old = self.reading.as_ref().expect("reading a file");
        let found = self.find_rotated(|id, size, prefix| {
            (id != old.id && size >= old.offset && old.starts_like(prefix)).then_some(1)
        })?;
        let tail = ResumePoint {
            offset: old.offset,
            line: old.line,
        };
        let copy = match found {
            Some((origin, file)) => Some(Reading::open(file, &origin, tail)?),
            None => None,
        };
        // The truncated file itself, read from its start (after the copy).
        let start = ResumePoint { offset: 0, line: 1 };
        let restarted = Reading::open(old.file.try_clone()?, &old.origin, start)?;
        let old = self.reading.take().expect("reading a file");
        let Some(copy) = copy else {
            let lost = old.size.saturating_sub(old.offset);
            if lost > 0 {
                self.metrics
                    .rotation_bytes_lost
                    .fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    bytes_lost = lost,
                    offset = old.offset,
                    line = old.line,
                    "the file was truncated and no rotated copy matches it: at least {lost} unread bytes are lost; reading it again from its start"
                );
            } else {
                tracing::info!("the file was truncated after it was read to its end; reading it again from its start");
            }
            let mark = restarted.mark(false);
            self.reading = Some(restarted);
            return Ok(Some(mark));
        };
        // Bytes seen in the file before it was truncated but missing from
        // the copy were written between the copy and the truncation.
        let lost = old.size.saturating_sub(copy.size);
        if lost > 0 {
            self.metrics
                .rotation_bytes_lost
                .fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                bytes_lost = lost,
                copy = %copy.origin.display(),
                "{lost} bytes were written between copytruncate's copy and its truncation: they are lost"
            );
        }
        tracing::info!(
            copy = %copy.origin.display(),
            file = %copy.id,
            offset = old.offset,
            "the file was copied and truncated (copytruncate): reading the rest of the copy first"
        );
        self.reading = Some(copy);
        self.drain = Some(Drain {
            why: Rotation::Copied,
            // The copy is complete before the truncation that led here:
            // read at once, before the file is truncated again.
            until_poll: self.polls,
            next: Some(restarted),
            lines: 0,
        });
        Ok(None)
    }

    /// The rotated file `rank` likes best (highest rank, then newest),
    /// among the regular files the rotated-path patterns name. `rank` gets
    /// each candidate's id, size and first bytes.
    fn find_rotated(
        &self,
        rank: impl Fn(FileId, u64, &[u8]) -> Option<u8>,
    ) -> io::Result<Option<(PathBuf, File)>> {
        let mut best: Option<((u8, std::time::SystemTime), PathBuf, File)> = None;
        for candidate in rotated_candidates(&self.rotated_patterns, &self.path) {
            let opened = match open_regular(&candidate) {
                Ok(Some(opened)) => opened,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(candidate = %candidate.display(), error = %e, "cannot look at a rotated candidate");
                    continue;
                }
            };
            let (file, id, prefix) = opened;
            let meta = file.metadata()?;
            let Some(r) = rank(id, meta.len(), &prefix) else {
                continue;
            };
            let key = (r, meta.modified().unwrap_or(std::time::UNIX_EPOCH));
            if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
                best = Some((key, candidate, file));
            }
        }
        Ok(best.map(|(_, path, file)| (path, file)))
    }
}

/// Whether the file `id` (of `size` bytes, starting with `prefix`) is the
/// checkpointed one, with something left to read from `at`: the same inode
/// (and device, when recorded), the same first bytes (when recorded), and
/// not shorter than where reading stopped.
fn is_checkpointed(cp: &Checkpoint, at: ResumePoint, id: FileId, size: u64, prefix: &[u8]) -> bool {
    cp.names(id) && size >= at.offset && cp.fingerprint.is_none_or(|fp| fp.matches(prefix))
}

/// Opens `path` if it is a regular file (never a FIFO: opening one would
/// block), with its id and first bytes. `None` if there is no file.
fn open_regular(path: &Path) -> io::Result<Option<(File, FileId, Vec<u8>)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let prefix = read_prefix(&file)?;
    Ok(Some((file, FileId::of(&meta), prefix)))
}

/// The paths the patterns name, once each, without `followed` itself.
pub(super) fn rotated_candidates(patterns: &[PathBuf], followed: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for pattern in patterns {
        let Some(name) = pattern.file_name() else {
            continue;
        };
        let name = name.as_encoded_bytes();
        if !name.contains(&b'*') {
            found.push(pattern.clone());
            continue;
        }
        let dir = match pattern.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if wildcard_match(name, entry.file_name().as_encoded_bytes()) {
                found.push(dir.join(entry.file_name()));
            }
        }
    }
    found.sort();
    found.dedup();
    found.retain(|p| p != followed);
    found
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes.
pub(super) fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    // Greedy match with backtracking to the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}
