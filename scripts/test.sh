#!/usr/bin/env bash
# Runs the whole otwatch test suite on a fresh machine: installs what the
# tests need (the Python readers pyarrow and DuckDB), checks formatting and
# lints, checks that the agent stays free of heavy dependencies, builds the
# binaries and runs every test.
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

step "test peers: rsyslog with GnuTLS (the syslog output's receiver)"
if ! dpkg -s rsyslog rsyslog-gnutls >/dev/null 2>&1; then
  # Only the packages: the tests start their own rsyslogd on loopback.
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends rsyslog rsyslog-gnutls >/dev/null \
    || { apt-get update -qq -o DPkg::Lock::Timeout=300 && apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends rsyslog rsyslog-gnutls >/dev/null; }
fi
/usr/sbin/rsyslogd -v | head -1

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
