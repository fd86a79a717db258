"""Reads an otwatch history directory with independent Parquet readers
(pyarrow and DuckDB) and prints what they see as one JSON object.

Usage: python3 tests/read_history.py HISTORY_DIR
"""
import json
import pathlib
import sys

import duckdb
import pyarrow.dataset as ds


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    out = {}
    for table in ("events", "alerts"):
        files = sorted(str(p) for p in (root / table).rglob("*.parquet"))
        out[f"{table}_files"] = len(files)
        if not files:
            out[f"{table}_pyarrow_rows"] = 0
            out[f"{table}_duckdb_rows"] = 0
            continue
        dataset = ds.dataset(files, format="parquet")
        out[f"{table}_pyarrow_rows"] = dataset.count_rows()
        con = duckdb.connect()
        out[f"{table}_duckdb_rows"] = con.execute(
            "SELECT count(*) FROM read_parquet($files)", {"files": files}
        ).fetchone()[0]
        if table == "events":
            out["events_duckdb_distinct"] = con.execute(
                "SELECT count(*) FROM (SELECT DISTINCT agent, site, seq FROM read_parquet($files))",
                {"files": files},
            ).fetchone()[0]
            out["events_by_kind"] = dict(
                con.execute(
                    "SELECT kind, count(*) FROM read_parquet($files) GROUP BY kind",
                    {"files": files},
                ).fetchall()
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
