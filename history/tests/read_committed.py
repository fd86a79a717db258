"""Reads the committed files of an otwatch history the way the manifests
describe them, with no otwatch code: `_committed` first, then the committed
lines of `_partitions` and of each partition's `_manifest` (the lines before
the first one whose offset is at or above `next_offset`). Counts the rows
with pyarrow and DuckDB and prints one JSON object.

Usage: python3 history/tests/read_committed.py HISTORY_DIR
"""
import json
import pathlib
import sys

import duckdb
import pyarrow.dataset as ds


def committed_lines(path: pathlib.Path, next_offset: int) -> list:
    out = []
    if not path.exists():
        return out
    for line in path.read_bytes().split(b"\n")[:-1]:  # the last piece has no "\n"
        entry = json.loads(line)
        if entry["offset"] >= next_offset:
            break
        out.append(entry)
    return out


def committed_files(table: pathlib.Path) -> list:
    commit = table / "_committed"
    if not commit.exists():
        return []
    next_offset = json.loads(commit.read_text())["next_offset"]
    files = []
    for p in committed_lines(table / "_partitions", next_offset):
        partition = table / p["partition"]
        for f in committed_lines(partition / "_manifest", next_offset):
            files.append(str(partition / f["file"]))
    return sorted(files)


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    out = {}
    con = duckdb.connect()
    for name in ("events", "alerts"):
        files = committed_files(root / name)
        out[f"{name}_files"] = len(files)
        if not files:
            continue
        out[f"{name}_pyarrow_rows"] = ds.dataset(files, format="parquet").count_rows()
        out[f"{name}_duckdb_rows"] = con.execute(
            "SELECT count(*) FROM read_parquet($files)", {"files": files}
        ).fetchone()[0]
        if name == "events":
            out["events_duckdb_by_site"] = dict(
                con.execute(
                    "SELECT site, count(*) FROM read_parquet($files) GROUP BY site",
                    {"files": files},
                ).fetchall()
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
