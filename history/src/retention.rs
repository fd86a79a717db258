//! Retention: dropping whole partitions older than `history.retention`.
//!
//! # On-disk format
//!
//! ```text
//! <table>/_dropping      {"partitions":["date=2023-01-01/hour=0",…]}  only while a drop is in progress
//! ```
//!
//! # Steps, and why a crash at any of them is safe
//!
//! [`crate::TableWriter::drop_partitions_before`] drops the partitions
//! whose hour ended before the cutoff, under the writer (between flushes):
//!
//! 1. `_dropping` is written (atomic replace). This is the decision: from
//!    here on the drop is finished, never undone.
//! 2. Their lines leave `_partitions` (atomic replace of the index): from
//!    here on no listing returns them, and `check` does not expect them.
//! 3. Their directories are deleted (files, manifest, compaction record,
//!    then the directory; the date directory goes too once empty), and the
//!    parent directories are fsync'd.
//! 4. `_dropping` is removed.
//!
//! The writer's recovery finishes a drop it finds recorded (steps 2 to 4
//! are idempotent), before it reads the index, so a crash never leaves a
//! partition half dropped, nor a directory that the index does not list
//! and `check` would report. Events that arrive later for a dropped hour
//! (an agent that was cut off for longer than the retention) make a new
//! partition, dropped again at the next pass.
//!
//! A query that listed a partition before step 2 and reads it after step 3
//! fails with [`crate::IntegrityError::Replaced`] and is run again; it
//! never answers with fewer rows. (Retention drops what is older than
//! months, so this is a race with a query over that very hour.)

use crate::compact::{remove_small, sync_dir, write_small};
use crate::manifest::{PartitionEntry, PARTITIONS_FILE};
use crate::writer::{DATE_COLUMN, HOUR_COLUMN};
use crate::HistoryError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The record of a drop in progress.
pub const DROPPING_FILE: &str = "_dropping";
const NS_PER_HOUR: i64 = 3_600_000_000_000;

#[derive(Debug, Serialize, Deserialize)]
struct Dropping {
    partitions: Vec<String>,
}

/// Drops `partitions` of the table in `dir` (steps 1 to 4).
pub(crate) fn drop_partitions(dir: &Path, partitions: &[String]) -> Result<(), HistoryError> {
    let record = Dropping {
        partitions: partitions.to_vec(),
    };
    write_small(
        &dir.join(DROPPING_FILE),
        &serde_json::to_vec(&record).expect("serializes"),
    )?;
    finish(dir, &record)?;
    for partition in partitions {
        tracing::info!(dir = %dir.display(), partition, "dropped a partition older than the retention");
    }
    Ok(())
}

/// Finishes a drop recorded before a crash; returns how many partitions it
/// covered (0 when none was recorded).
pub(crate) fn recover(dir: &Path) -> Result<usize, HistoryError> {
    let path = dir.join(DROPPING_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    let record: Dropping = match serde_json::from_slice(&text) {
        Ok(record) => record,
        Err(e) => {
            // Only ever written by atomic replace: this is damage. Nothing
            // is dropped that the record does not name.
            tracing::error!(path = %path.display(), error = %e, "the record of a drop by retention is unreadable; removing it, the next retention pass drops what is due");
            return remove_small(&path).map(|()| 0);
        }
    };
    let valid: Vec<String> = record
        .partitions
        .into_iter()
        .filter(|p| crate::manifest::is_partition_name(p))
        .collect();
    let record = Dropping { partitions: valid };
    finish(dir, &record)?;
    tracing::warn!(dir = %dir.display(), partitions = record.partitions.len(), "finished a drop by retention that a crash interrupted");
    Ok(record.partitions.len())
}

/// Steps 2 to 4.
fn finish(dir: &Path, record: &Dropping) -> Result<(), HistoryError> {
    let doomed: BTreeSet<&str> = record.partitions.iter().map(String::as_str).collect();
    remove_index_lines(dir, &doomed)?;
    let mut dates = BTreeSet::new();
    for partition in &doomed {
        let pdir = dir.join(partition);
        remove_tree(&pdir)?;
        if let Some((date, _)) = partition.split_once('/') {
            dates.insert(date.to_owned());
        }
    }
    for date in dates {
        let ddir = dir.join(&date);
        sync_dir_if_present(&ddir)?;
        // A date directory left empty goes too.
        if fs::read_dir(&ddir).is_ok_and(|mut entries| entries.next().is_none()) {
            match fs::remove_dir(&ddir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HistoryError::io("removing", &ddir)(e)),
            }
        }
    }
    sync_dir(dir)?;
    remove_small(&dir.join(DROPPING_FILE))
}

/// Rewrites the index without the lines of `doomed` (atomic replace),
/// keeping every other byte as it is.
fn remove_index_lines(dir: &Path, doomed: &BTreeSet<&str>) -> Result<(), HistoryError> {
    let path = dir.join(PARTITIONS_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HistoryError::io("reading", &path)(e)),
    };
    let mut kept = Vec::with_capacity(text.len());
    let mut changed = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let drop = serde_json::from_slice::<PartitionEntry>(body)
            .is_ok_and(|e| doomed.contains(e.partition.as_str()));
        if drop {
            changed = true;
        } else {
            kept.extend_from_slice(line);
        }
    }
    if changed {
        write_small(&path, &kept)?;
    }
    Ok(())
}

/// Deletes a partition directory and everything in it (files only: the
/// writer makes no deeper directories), then fsyncs its parent.
fn remove_tree(pdir: &Path) -> Result<(), HistoryError> {
    let entries = match fs::read_dir(pdir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HistoryError::io("listing", pdir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(HistoryError::io("listing", pdir))?;
        let path = entry.path();
        fs::remove_file(&path).map_err(HistoryError::io("removing", &path))?;
    }
    match fs::remove_dir(pdir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HistoryError::io("removing", pdir)(e)),
    }
    Ok(())
}

fn sync_dir_if_present(dir: &Path) -> Result<(), HistoryError> {
    if dir.is_dir() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The first instant (ns) after the hour of `date=…/hour=…`.
pub(crate) fn partition_end(partition: &str) -> Option<i64> {
    let (date, hour) = partition.split_once('/')?;
    let date = date.strip_prefix(DATE_COLUMN)?.strip_prefix('=')?;
    let hour: i64 = hour
        .strip_prefix(HOUR_COLUMN)?
        .strip_prefix('=')?
        .parse()
        .ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let midnight = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()?;
    midnight.checked_add((hour + 1) * NS_PER_HOUR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_ends_with_its_hour() {
        assert_eq!(partition_end("date=1970-01-01/hour=0"), Some(NS_PER_HOUR));
        assert_eq!(
            partition_end("date=1970-01-02/hour=23"),
            Some(48 * NS_PER_HOUR)
        );
    }

    #[test]
    fn only_the_doomed_lines_leave_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let a = r#"{"offset":1,"partition":"date=2024-05-01/hour=1"}"#;
        let b = r#"{"offset":2,"partition":"date=2024-05-01/hour=2"}"#;
        fs::write(
            dir.path().join(PARTITIONS_FILE),
            format!("{a}\n{b}\n{{\"off"),
        )
        .unwrap();
        remove_index_lines(dir.path(), &BTreeSet::from(["date=2024-05-01/hour=1"])).unwrap();
        let text = fs::read_to_string(dir.path().join(PARTITIONS_FILE)).unwrap();
        assert_eq!(text, format!("{b}\n{{\"off"));
    }
}
