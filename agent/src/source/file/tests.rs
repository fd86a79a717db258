//! The follower and its checkpoint on real files, one rotation step at a
//! time. End-to-end rotations while a writer runs are in
//! `agent/tests/file_rotation.rs`.

use super::checkpoint::{Checkpoint, ResumePoint};
use super::follow::{rotated_candidates, wildcard_match, Chunk, Follower};
use super::SourceMetrics;
use crate::config::AgentConfig;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn follower(path: &Path, max: usize, cp: Option<Checkpoint>) -> (Follower, Arc<SourceMetrics>) {
    let metrics = Arc::new(SourceMetrics::default());
    let patterns = super::FileSourceConfig::new(path).rotated_patterns();
    let cp = cp.map(|cp| (cp, cp.resume_point(u64::MAX)));
    let f = Follower::resume(path.to_path_buf(), patterns, max, metrics.clone(), cp).unwrap();
    (f, metrics)
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn texts(chunk: &Chunk) -> Vec<&str> {
    chunk.lines.iter().map(|(_, t)| t.as_str()).collect()
}

/// The next chunk that has lines, skipping marks; `None` if there is none.
fn next_lines(f: &mut Follower) -> Option<Chunk> {
    for _ in 0..10 {
        match f.next().unwrap() {
            Some(c) if c.mark => continue,
            other => return other,
        }
    }
    panic!("the follower only returned marks");
}

/// A checkpoint of `chunk` whose events all reached the queue.
fn taken(chunk: &Chunk) -> Checkpoint {
    Checkpoint {
        last_seq: 1,
        ..Checkpoint::of(chunk)
    }
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn resume_point_depends_on_whether_the_chunk_reached_the_queue() {
    let cp = Checkpoint {
        inode: 9,
        before: 100,
        after: 250,
        line_before: 3,
        line_after: 8,
        last_seq: 40,
        ..Checkpoint::default()
    };
    let after = ResumePoint {
        offset: 250,
        line: 8,
    };
    let before = ResumePoint {
        offset: 100,
        line: 3,
    };
    assert_eq!(cp.resume_point(40), after);
    assert_eq!(cp.resume_point(35), before);
}

#[test]
fn only_complete_lines_are_read_at_most_max_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "a\nb\nc").unwrap();
    let (mut f, _) = follower(&path, 1, None);
    let mark = f.next().unwrap().unwrap();
    assert!(mark.mark && mark.before == 0 && mark.lines.is_empty());
    let first = f.next().unwrap().unwrap();
    assert_eq!(first.lines, vec![(1, "a".to_string())]);
    assert!(first.more);
    let second = f.next().unwrap().unwrap();
    assert_eq!((texts(&second), second.after), (vec!["b"], 4));
    // "c" has no newline yet: its writer is still at it.
    assert!(f.next().unwrap().is_none());
    append(&path, "\n");
    assert_eq!(texts(&f.next().unwrap().unwrap()), vec!["c"]);
}

#[test]
fn the_checkpoint_format_is_stable_and_the_first_format_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cp_path = dir.path().join("cp");
    let cp = Checkpoint {
        inode: 1234,
        dev: Some(2049),
        fingerprint: Some(super::follow::Fingerprint {
            len: 1024,
            crc32c: 305419896,
        }),
        before: 40960,
        after: 45056,
        line_before: 401,
        line_after: 441,
        last_seq: 9170,
        drained: false,
    };
    cp.store(&cp_path).unwrap();
    assert_eq!(
        std::fs::read_to_string(&cp_path).unwrap(),
        r#"{"inode":1234,"dev":2049,"fingerprint":{"len":1024,"crc32c":305419896},"before":40960,"after":45056,"line_before":401,"line_after":441,"last_seq":9170}"#
    );
    assert_eq!(Checkpoint::load(&cp_path).unwrap(), Some(cp));
    std::fs::write(
        &cp_path,
        r#"{"inode":7,"before":1,"after":2,"line_before":1,"line_after":2,"last_seq":3}"#,
    )
    .unwrap();
    let old = Checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!((old.inode, old.dev, old.fingerprint), (7, None, None));
}

#[test]
fn a_checkpoint_of_the_first_format_resumes_by_inode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "a\nb\nc\n").unwrap();
    let cp = Checkpoint {
        inode: ino(&path),
        before: 0,
        after: 2,
        line_before: 1,
        line_after: 2,
        last_seq: 1,
        ..Checkpoint::default()
    };
    let (mut f, _) = follower(&path, 10, Some(cp));
    let chunk = f.next().unwrap().unwrap();
    assert_eq!(texts(&chunk), vec!["b", "c"]);
    assert_eq!(chunk.line_before, 2);
}

#[test]
fn a_file_on_the_checkpointed_inode_with_other_first_bytes_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let (mut f, _) = follower(&path, 10, None);
    let chunk = next_lines(&mut f).unwrap();
    let cp = taken(&chunk);
    drop(f);
    // Same inode, other content, longer than the offset read.
    std::fs::write(&path, "new 1\nnew 2\nnew 3\n").unwrap();
    assert_eq!(ino(&path), cp.inode);
    let (mut f, _) = follower(&path, 10, Some(cp));
    let mark = f.next().unwrap().unwrap();
    assert!(mark.mark && mark.before == 0);
    assert_eq!(
        texts(&next_lines(&mut f).unwrap()),
        vec!["new 1", "new 2", "new 3"]
    );
}

#[test]
fn a_renamed_file_is_drained_with_its_partial_last_line_before_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "l1\nl2 partial").unwrap();
    let (mut f, _) = follower(&path, 10, None);
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["l1"]);
    assert!(f.next().unwrap().is_none(), "a partial line waits");
    std::fs::rename(&path, dir.path().join("e.jsonl.1")).unwrap();
    std::fs::write(&path, "n1\n").unwrap();
    // The switch is seen: the old file is finished a poll later.
    assert!(f.next().unwrap().is_none());
    f.poll_passed();
    let tail = f.next().unwrap().unwrap();
    assert_eq!(texts(&tail), vec!["l2 partial"]);
    let mark = f.next().unwrap().unwrap();
    assert!(mark.mark && mark.before == 0 && !mark.drained);
    assert_ne!(mark.file, tail.file);
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
}

#[test]
fn a_deleted_file_is_drained_and_marked_finished_until_a_new_one_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "l1\n").unwrap();
    let (mut f, _) = follower(&path, 10, None);
    next_lines(&mut f).unwrap();
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(f.next().unwrap().is_none(), "the switch is seen");
    writer.write_all(b"l2\n").unwrap(); // the writer's last line
    assert_eq!(texts(&f.next().unwrap().unwrap()), vec!["l2"]);
    assert!(f.next().unwrap().is_none(), "not before a poll has passed");
    f.poll_passed();
    let done = f.next().unwrap().unwrap();
    assert!(done.mark && done.drained);
    let cp = taken(&done);
    assert!(f.next().unwrap().is_none(), "no file yet");
    std::fs::write(&path, "n1\n").unwrap();
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
    // A restart from the finished checkpoint reads the new file whole.
    let (mut f, _) = follower(&path, 10, Some(cp));
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
}

#[test]
fn copytruncate_reads_the_tail_from_the_copy_and_a_restart_finds_the_copy_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    let copy = dir.path().join("e.jsonl.1");
    std::fs::write(&path, "l1\n").unwrap();
    let (mut f, metrics) = follower(&path, 1, None);
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["l1"]);
    append(&path, "l2\nl3\n");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, "n1\n");
    let from_copy = f.next().unwrap().unwrap();
    assert_eq!(texts(&from_copy), vec!["l2"]);
    assert_eq!(
        from_copy.file.ino,
        ino(&copy),
        "the checkpoint names the copy"
    );
    // Stopped here: the restart reads the rest of the copy, then the file.
    let (mut f, _) = follower(&path, 1, Some(taken(&from_copy)));
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["l3"]);
    assert!(f.next().unwrap().is_none(), "one poll for a writer");
    f.poll_passed();
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
    assert_eq!(metrics.rotation_bytes_lost.load(Ordering::Relaxed), 0);
}

/// logrotate's copytruncate as it runs: older copies shifted, the file
/// copied to `.1`, then truncated in place.
fn copytruncate(path: &Path) {
    let rotated = |k: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{k}"));
        PathBuf::from(name)
    };
    let _ = std::fs::rename(rotated(1), rotated(2));
    std::fs::copy(path, rotated(1)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

#[test]
fn a_file_truncated_again_while_its_copy_is_read_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(
        &path, "a1
",
    )
    .unwrap();
    let (mut f, metrics) = follower(&path, 1, None);
    next_lines(&mut f).unwrap();
    append(
        &path, "a2
",
    );
    copytruncate(&path);
    append(
        &path, "b1
b2
",
    );
    let from_copy = f.next().unwrap().unwrap();
    assert_eq!(texts(&from_copy), vec!["a2"]);
    assert!(from_copy.more, "a copy is read at once");
    // Rotated again before the source came back: "b" went to the copy.
    copytruncate(&path);
    append(
        &path, "c1
",
    );
    let mut read = Vec::new();
    while let Some(chunk) = f.next().unwrap() {
        read.extend(texts(&chunk).into_iter().map(String::from));
    }
    assert_eq!(read, vec!["b1", "b2", "c1"]);
    assert_eq!(metrics.rotation_bytes_lost.load(Ordering::Relaxed), 0);
}

#[test]
fn bytes_written_between_the_copy_and_the_truncation_are_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "l1\n").unwrap();
    let (mut f, metrics) = follower(&path, 1, None);
    next_lines(&mut f).unwrap();
    append(&path, "l2\n");
    std::fs::copy(&path, dir.path().join("e.jsonl.1")).unwrap();
    append(&path, "l3\n"); // after the copy: copytruncate's own window
    assert_eq!(texts(&f.next().unwrap().unwrap()), vec!["l2"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, "n1\n");
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
    assert_eq!(metrics.rotation_bytes_lost.load(Ordering::Relaxed), 3);
}

#[test]
fn a_truncation_with_no_matching_copy_counts_the_unread_bytes_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "l1\nl2\nl3\n").unwrap();
    // A rotated sibling that is not a copy of this file.
    std::fs::write(dir.path().join("e.jsonl.1"), "other\nlines\nhere\n").unwrap();
    let (mut f, metrics) = follower(&path, 1, None);
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["l1"]);
    std::fs::write(&path, "n1\n").unwrap();
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1"]);
    assert_eq!(metrics.rotation_bytes_lost.load(Ordering::Relaxed), 6);
}

#[test]
fn a_file_truncated_and_written_again_past_the_offset_is_still_seen_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "l1\n").unwrap();
    let (mut f, _) = follower(&path, 10, None);
    next_lines(&mut f).unwrap();
    // Truncated (no O_APPEND writer: NULs up to its old offset), then longer.
    std::fs::write(&path, "\0\0\0n1\nn2\n").unwrap();
    assert_eq!(texts(&next_lines(&mut f).unwrap()), vec!["n1", "n2"]);
}

#[test]
fn rotated_paths_are_siblings_by_default_and_match_simple_globs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    for name in [
        "e.jsonl",
        "e.jsonl.1",
        "e.jsonl-20240101",
        "e.jsonlx",
        "f.jsonl.1",
    ] {
        std::fs::write(dir.path().join(name), "").unwrap();
    }
    let config = super::FileSourceConfig::new(&path);
    let found: Vec<PathBuf> = rotated_candidates(&config.rotated_patterns(), &path);
    let names: Vec<_> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, vec!["e.jsonl-20240101", "e.jsonl.1"]);
    assert!(wildcard_match(b"e.*.gz", b"e.1.gz"));
    assert!(wildcard_match(b"*", b""));
    assert!(wildcard_match(b"a*b*c", b"aXbYbc"));
    assert!(!wildcard_match(b"a*b", b"aXbY"));
    assert!(!wildcard_match(b"e.1", b"e.2"));
}

#[test]
fn bad_file_source_options_are_refused_by_name() {
    let config = |extra: &str| {
        format!(
            "site = \"plant-a\"\nagent = \"gw-1\"\ndata_dir = \"/tmp/x\"\n\
             [[sources]]\ntype = \"file\"\npath = \"/var/log/e.jsonl\"\n{extra}"
        )
    };
    let err = |extra: &str| {
        AgentConfig::parse(&config(extra), "agent.toml")
            .unwrap_err()
            .to_string()
    };
    let e = err("rotated_paths = [\"/var/*/e.jsonl.1\"]");
    assert!(
        e.contains("rotated_paths entry") && e.contains("only allowed in the file name"),
        "{e}"
    );
    let e = err("max_lines_per_read = 0");
    assert!(e.contains("max_lines_per_read must be at least 1"), "{e}");
    let e = err("poll_interval = \"0s\"");
    assert!(e.contains("poll_interval must be above zero"), "{e}");
    let e = err("rotated_path = []");
    assert!(e.contains("rotated_path"), "{e}");
    let ok = AgentConfig::parse(
        &config("rotated_paths = [\"/var/log/old/e-*.jsonl\"]"),
        "agent.toml",
    )
    .unwrap();
    let crate::config::SourceConfig::File(file) = &ok.sources[0] else {
        panic!("a file source");
    };
    assert_eq!(
        file.rotated_patterns(),
        vec![PathBuf::from("/var/log/old/e-*.jsonl")]
    );
}

#[test]
fn rotation_losses_are_exposed_with_the_agent_metrics() {
    let counts = crate::AgentCounts {
        rotation_bytes_lost: 6,
        ..crate::AgentCounts::default()
    };
    let text = crate::metrics::render(&counts, "plant-a", "gw-1");
    assert!(
        text.contains("otwatch_agent_rotation_bytes_lost_total{site=\"plant-a\",agent=\"gw-1\"} 6"),
        "{text}"
    );
}
