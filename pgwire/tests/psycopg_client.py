"""A psycopg 3 client for the SQL endpoint's tests: the extended query
protocol (Parse, Bind, Describe, Execute) with server-side parameters, as
Python tools and notebooks use it.

Usage: python3 psycopg_client.py CONNINFO < requests.json

requests.json is a list of {"name", "sql", "params"?, "cancel"?}. A
parameter written {"ts": "2026-11-22T10:00:00+00:00"} is sent as a
timestamptz, {"float": 1.5} as a float8; other JSON values as they are. With
"cancel": true the statement is cancelled from another thread
(conn.cancel(), repeated until the statement returns) while it runs.

Prints one JSON object: name -> {"rows": [[...]...], "columns": [...]} or
{"error": {"sqlstate": ..., "message": ...}}. Timestamps come back as ISO
8601 text.
"""

import datetime
import decimal
import json
import sys
import threading

import psycopg


def param(value):
    if isinstance(value, dict) and "ts" in value:
        return datetime.datetime.fromisoformat(value["ts"])
    if isinstance(value, dict) and "float" in value:
        return float(value["float"])
    return value


def cell(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # UInt64 columns (seq, first_seq) arrive as numeric.
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def cancel_until_done(conn, done):
    while not done.wait(0.2):
        conn.cancel()


def run(conn, request):
    params = [param(p) for p in request.get("params", [])]
    done = threading.Event()
    if request.get("cancel"):
        threading.Thread(target=cancel_until_done, args=(conn, done), daemon=True).start()
    try:
        with conn.cursor() as cur:
            cur.execute(request["sql"], params or None)
            columns = [d.name for d in cur.description] if cur.description else []
            rows = [[cell(v) for v in row] for row in cur.fetchall()] if cur.description else []
        conn.commit()
        return {"rows": rows, "columns": columns}
    except psycopg.Error as e:
        conn.rollback()
        return {"error": {"sqlstate": e.sqlstate, "message": str(e).strip()}}
    finally:
        done.set()


def main():
    conninfo = sys.argv[1]
    requests = json.load(sys.stdin)
    out = {}
    # psycopg's default: each statement inside BEGIN ... COMMIT (ROLLBACK
    # after an error), as most Python tools leave it.
    with psycopg.connect(conninfo) as conn:
        out["_server_version"] = conn.info.server_version
        for request in requests:
            out[request["name"]] = run(conn, request)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
