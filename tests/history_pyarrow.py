"""Reads an otwatch history directory the way analysts' tools do, with hive
partitioning discovered from the `date=`/`hour=` directories, and prints what
pyarrow and DuckDB see as one JSON object.

Usage: python3 tests/history_pyarrow.py HISTORY_DIR
"""
import json
import pathlib
import sys

import duckdb
import pyarrow.dataset as ds


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    out = {}
    con = duckdb.connect()
    for table in ("events", "alerts"):
        path = root / table
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
        out[f"{table}_pyarrow_rows"] = dataset.count_rows()
        glob = str(path / "*" / "*" / "*.parquet")
        scan = f"read_parquet('{glob}', hive_partitioning = true)"
        out[f"{table}_duckdb_rows"] = con.execute(f"SELECT count(*) FROM {scan}").fetchone()[0]
        if table != "events":
            continue
        out["events_pyarrow_hour_11"] = dataset.count_rows(filter=ds.field("hour") == 11)
        out["events_pyarrow_site_type"] = str(dataset.schema.field("site").type)
        out["events_duckdb_by_site"] = dict(
            con.execute(f"SELECT site, count(*) FROM {scan} GROUP BY site").fetchall()
        )
        out["events_duckdb_hour_10"] = con.execute(
            f"SELECT count(*) FROM {scan} WHERE date = '2024-05-01' AND hour = 10"
        ).fetchone()[0]
        out["events_duckdb_attrs_unit"] = con.execute(
            f"SELECT attrs['unit'] FROM {scan} LIMIT 1"
        ).fetchone()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
