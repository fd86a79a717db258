//! The four queries of the DuckDB benchmark (`benches/history_vs_duckdb.rs`)
//! on a small day of history: otwatch SQL gives DuckDB's answers on the
//! same files, before and after compaction. A correctness check only; the
//! benchmark prints the times.
//!
//! Needs python3 with duckdb and pyarrow (`scripts/test.sh` installs them).
//! Without them the test says so and passes, except under `CI=true`,
//! where a missing peer is a failure.

#[path = "../benches/workload/mod.rs"]
mod workload;

use otwatch_history::query;
use workload::Workload;

fn duckdb_present() -> bool {
    otwatch_testkit::python_has(&["duckdb", "pyarrow"])
}

async fn assert_same_answers(root: &std::path::Path, w: &Workload, layout: &str) {
    let queries = workload::queries(w);
    let duck = workload::duckdb(root, &queries, 1);
    for (q, duck) in queries.iter().zip(duck) {
        let batches = query(root, &q.otwatch)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", q.name));
        let ours = workload::digest(&batches);
        assert!(ours.0 > 0, "{layout}: {}: no rows", q.name);
        assert!(
            workload::same_answer(ours, (duck.rows, duck.digest)),
            "{layout}: {}: otwatch {ours:?}, DuckDB ({}, {})",
            q.name,
            duck.rows,
            duck.digest
        );
    }
}

#[tokio::test]
async fn the_benchmark_queries_answer_as_duckdb_does() {
    if !duckdb_present() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // 72 flushes, a file per site each: 216 small files, 3 per site and hour.
    let w = Workload {
        events: 60_000,
        flush_secs: 1200,
    };
    let written = w.write(root);
    assert_eq!(written.files, 216);
    assert_same_answers(root, &w, "not compacted").await;

    let (files, _) = workload::compact_all(root).await;
    assert_eq!(files, 72, "one file per site and hour");
    assert!(workload::compacted(root));
    assert_same_answers(root, &w, "compacted").await;
    let report = otwatch_history::check(root, true).unwrap();
    assert!(report.is_clean(), "{report:?}");
}
