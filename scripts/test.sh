#!/usr/bin/env bash
# Runs the whole otwatch test suite on a fresh machine: installs what the
# tests need (the Python readers pyarrow and DuckDB; psql and psycopg, the
# SQL endpoint's clients), checks formatting and lints, checks that the agent
# stays free of heavy dependencies, builds the binaries and runs every test.
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are shared between clones of this repository on one machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otwatch/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "test peers: pyarrow and duckdb (independent Parquet readers)"
if ! python3 -c 'import pyarrow, duckdb' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pyarrow duckdb
fi
python3 -c 'import pyarrow, duckdb; print("pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'

step "test peers: psql and psycopg (Postgres wire clients of the SQL endpoint)"
# Each is installed only when missing, so a machine that has them pays nothing.
if ! command -v psql >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
fi
if ! python3 -c 'import psycopg' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'psycopg[binary]'
fi
psql --version
python3 -c 'import psycopg; print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version())'

step "formatting"
cargo fmt --all -- --check

step "the agent must not link arrow, datafusion, linfa or rdkafka"
if cargo tree -p otwatch-agent -e normal --prefix none | grep -E '^(arrow|datafusion|parquet|linfa|rdkafka)' ; then
  echo "otwatch-agent depends on a heavy crate (listed above)" >&2
  exit 1
fi

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "build everything (binaries, tests, benches) with one feature set"
cargo build --workspace --all-targets

step "fuzz targets still compile (running them: fuzz/README.md)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-fuzz-check" cargo check --manifest-path fuzz/Cargo.toml --bins

step "tests"
cargo test --workspace --no-fail-fast
