//! otwatch SQL side by side with DuckDB on the same Parquet files.
//!
//! Writes a day of events from three sites through the real writer (one
//! flush per `--flush-secs` of event time, a file per site per flush, as
//! the history writer component makes them), then times the four queries
//! the history is measured by, first on that uncompacted layout and again
//! after every hour is compacted:
//!
//! - count by site and kind (the whole table);
//! - one hour of one site by a `ts` range;
//! - an evidence lookup by (site, agent, seq range);
//! - cycle statistics of one day by the `date` column.
//!
//! otwatch's time is the whole query as `otwatch sql` runs it (a new
//! session, listing the committed files, planning, reading every result
//! batch); DuckDB's is `sql` and `to_arrow_table` over
//! `read_parquet('<table>/**/*.parquet', hive_partitioning = true)`, via
//! its Python package (`pip install duckdb pyarrow`). Each is the median of
//! `--runs` runs, after one run that warms the page cache. The answers of
//! both are compared (row count and the sum of every numeric cell); a
//! mismatch is printed and makes the run exit 1.
//!
//! ```sh
//! cargo bench -p otwatch-history --bench history_vs_duckdb -- \
//!     [--events 20000000] [--flush-secs 20] [--runs 3] [--dir DIR] [--no-compact] [--only NAME]
//! ```
//!
//! With `--dir`, the history is written there and kept (an existing one
//! is used as it is, so the same files can be measured again); otherwise
//! it goes to a temporary directory. `--no-compact` measures the
//! uncompacted layout only and leaves it so, for measuring the same files
//! again (after a change, or under `perf`). `--only NAME` runs the queries
//! whose name contains NAME.

mod workload;

use otwatch_history::{query_stream, SqlConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use workload::{Query, Workload};

struct Args {
    workload: Workload,
    runs: usize,
    dir: Option<PathBuf>,
    compact: bool,
    /// Only the queries whose name contains this.
    only: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        workload: Workload {
            events: 20_000_000,
            flush_secs: 20,
        },
        runs: 3,
        dir: None,
        compact: true,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--events" => out.workload.events = value().parse().expect("--events N"),
            "--flush-secs" => out.workload.flush_secs = value().parse().expect("--flush-secs S"),
            "--runs" => out.runs = value().parse().expect("--runs N"),
            "--dir" => out.dir = Some(value().into()),
            "--no-compact" => out.compact = false,
            "--only" => out.only = Some(value()),
            // What cargo bench passes to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module documentation"),
        }
    }
    assert!(
        (1..=86_400).contains(&out.workload.flush_secs),
        "--flush-secs must be 1..=86400"
    );
    assert!(out.runs >= 1, "--runs must be at least 1");
    out
}

/// One query's figures on one layout.
struct Timed {
    otwatch: f64,
    duckdb: f64,
    rows: usize,
    same: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `sql` as `otwatch sql` would; returns the seconds and the answer's
/// digest.
async fn otwatch_once(root: &Path, sql: &str) -> (f64, (usize, f64)) {
    let started = Instant::now();
    let mut stream = query_stream(root, sql, &SqlConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut batches = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        batches.push(batch.unwrap_or_else(|e| panic!("{sql}: {e}")));
    }
    let seconds = started.elapsed().as_secs_f64();
    (seconds, workload::digest(&batches))
}

async fn measure(root: &Path, queries: &[Query], runs: usize) -> Vec<Timed> {
    let duck = workload::duckdb(root, queries, runs + 1);
    let mut out = Vec::new();
    for (q, duck) in queries.iter().zip(duck) {
        // The first run warms the page cache, as DuckDB's first run does.
        let (_, digest) = otwatch_once(root, &q.otwatch).await;
        let mut seconds = Vec::new();
        for _ in 0..runs {
            seconds.push(otwatch_once(root, &q.otwatch).await.0);
        }
        let same = workload::same_answer(digest, (duck.rows, duck.digest));
        if !same {
            eprintln!(
                "{}: otwatch answered {} rows, digest {}; DuckDB {} rows, digest {}",
                q.name, digest.0, digest.1, duck.rows, duck.digest
            );
        }
        out.push(Timed {
            otwatch: median(seconds),
            duckdb: median(duck.seconds[1..].to_vec()),
            rows: digest.0,
            same,
        });
    }
    out
}

fn print_table(layout: &str, files: usize, queries: &[Query], timed: &[Timed]) {
    println!("\n{layout}: {files} files");
    println!(
        "| {:<42} | {:>10} | {:>10} | {:>7} | {:>7} |",
        "query", "otwatch s", "DuckDB s", "ratio", "rows"
    );
    println!(
        "|{:-<44}|{:->12}|{:->12}|{:->9}|{:->9}|",
        "", "", "", "", ""
    );
    for (q, t) in queries.iter().zip(timed) {
        println!(
            "| {:<42} | {:>10.3} | {:>10.3} | {:>6.2}× | {:>7} |{}",
            q.name,
            t.otwatch,
            t.duckdb,
            t.otwatch / t.duckdb,
            t.rows,
            if t.same { "" } else { " ANSWERS DIFFER" }
        );
    }
    let _ = std::io::stdout().flush();
}

fn main() {
    let args = args();
    let w = args.workload;
    let probe = Command::new("python3")
        .args(["-c", "import duckdb, pyarrow; print(duckdb.__version__)"])
        .stderr(Stdio::inherit())
        .output();
    let duckdb_version = match probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => {
            eprintln!(
                "python3 with duckdb and pyarrow is needed (pip install duckdb pyarrow; scripts/test.sh installs them)"
            );
            std::process::exit(1);
        }
    };
    let tmp;
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::tempdir().expect("a temporary directory");
            tmp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "otwatch SQL vs DuckDB {duckdb_version} on {} cores: {} events over one day, 3 sites, a flush every {} s, {} runs each (median)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        w.events,
        w.flush_secs,
        args.runs
    );
    if otwatch_history::check(&root, false)
        .map(|r| r.tables.iter().all(|t| t.next_offset.is_none()))
        .unwrap_or(true)
    {
        let written = w.write(&root);
        println!(
            "wrote {} events in {} files ({:.1} MiB) through the writer in {:.1} s ({:.0} events/s)",
            written.events,
            written.files,
            written.bytes as f64 / 1048576.0,
            written.seconds,
            written.events as f64 / written.seconds
        );
    } else {
        println!("using the history already in {}", root.display());
    }
    let mut queries = workload::queries(&w);
    if let Some(only) = &args.only {
        queries.retain(|q| q.name.contains(only.as_str()));
        assert!(!queries.is_empty(), "no query's name contains {only:?}");
    }
    let mut differ = false;
    let files = workload::committed_files(&root);
    if workload::compacted(&root) {
        println!("(already compacted)");
    } else {
        let timed = runtime.block_on(measure(&root, &queries, args.runs));
        differ |= timed.iter().any(|t| !t.same);
        print_table("not compacted", files, &queries, &timed);
        if !args.compact {
            if differ {
                std::process::exit(1);
            }
            return;
        }
        let (files, seconds) = runtime.block_on(workload::compact_all(&root));
        println!("\ncompacted every hour into {files} files in {seconds:.1} s");
    }
    let files = workload::committed_files(&root);
    let timed = runtime.block_on(measure(&root, &queries, args.runs));
    differ |= timed.iter().any(|t| !t.same);
    print_table("compacted", files, &queries, &timed);
    if differ {
        std::process::exit(1);
    }
}
