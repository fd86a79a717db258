#!/usr/bin/env bash
# Runs the whole otwatch test suite on a fresh machine: installs what the
# tests need (the Python readers pyarrow and DuckDB; psql and psycopg, the
# SQL endpoint's clients; rsyslog, Mosquitto, pymodbus, pymcprotocol and
# asyncua, the peers of the alert outputs and the agent's sources;
# chromium, playwright-core and schemathesis for the dashboard), checks
# formatting and lints, checks that the agent stays free of heavy
# dependencies, validates the Kubernetes manifests, builds the binaries and
# runs every test.
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

step "test peers from Debian: rsyslog with GnuTLS (the syslog output's receiver), Mosquitto (an MQTT broker), logger, openssl, psql (the SQL endpoint's client)"
# Only the packages: the tests start their own rsyslogd and mosquitto on
# loopback; no service is needed. About 20 s on a fresh machine, nothing
# when present. openssl makes the certificates of the broker's TLS test;
# logger (bsdutils, essential on Debian) sends syslog.
debs="rsyslog rsyslog-gnutls mosquitto mosquitto-clients openssl bsdutils postgresql-client"
if ! dpkg -s $debs >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt_get() { apt-get -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null; }
  apt_get install $debs || { apt-get update -qq -o DPkg::Lock::Timeout=300 && apt_get install $debs; }
fi
/usr/sbin/rsyslogd -v | head -1
dpkg-query -W mosquitto mosquitto-clients openssl
psql --version
logger --version

step "test peers: pymodbus (Modbus/TCP devices), pymcprotocol (a second MELSEC SLMP client) and asyncua (an OPC UA server)"
# Pinned: pymodbus changes its server API between minor versions, and the
# OPC UA test's server script relies on asyncua 1.1.8's behaviour on node
# deletion. Pure Python (asyncua brings cryptography, a wheel): a few
# seconds on a fresh machine, nothing when present.
if ! python3 -c 'import pymodbus, pymcprotocol, asyncua; assert pymodbus.__version__ == "3.16.1"; from importlib.metadata import version; assert version("asyncua") == "1.1.8"' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pymodbus==3.16.1 pymcprotocol==0.3.0 asyncua==1.1.8
fi
python3 -c 'import pymodbus, pymcprotocol, asyncua; from importlib.metadata import version; print("pymodbus", pymodbus.__version__, "pymcprotocol ok", "asyncua", version("asyncua"))'

step "test peer: psycopg (a Postgres wire client of the SQL endpoint)"
if ! python3 -c 'import psycopg; assert psycopg.__version__ == "3.3.9"' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'psycopg[binary]==3.3.9'
fi
python3 -c 'import psycopg; print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version())'

step "test peers for the dashboard: Debian chromium, playwright-core (npm, pinned by tests/browser/package-lock.json) and schemathesis (PyPI)"
# The browser test drives Debian's chromium with playwright-core, which
# never downloads a browser of its own; schemathesis checks the API against
# docs/dashboard-api.yaml. About a minute on a fresh machine (chromium is
# the bulk), nothing when present.
if ! command -v chromium >/dev/null || ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt_get() { apt-get -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null; }
  apt_get install chromium fonts-dejavu-core nodejs npm || { apt-get update -qq -o DPkg::Lock::Timeout=300 && apt_get install chromium fonts-dejavu-core nodejs npm; }
fi
browser_cache="$HOME/.cache/otwatch/browser"
if ! cmp -s tests/browser/package-lock.json "$browser_cache/package-lock.json" || [ ! -d "$browser_cache/node_modules/playwright-core" ]; then
  mkdir -p "$browser_cache"
  cp tests/browser/package.json tests/browser/package-lock.json "$browser_cache/"
  (cd "$browser_cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [ "$(schemathesis --version 2>/dev/null)" != "schemathesis, version 4.32.5" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore schemathesis==4.32.5
fi
chromium --version 2>/dev/null | grep -v '^\[' || true
node -e 'console.log("playwright-core", require(process.argv[1] + "/node_modules/playwright-core/package.json").version)' "$browser_cache"
schemathesis --version

step "Kubernetes manifests (k8s/): every overlay rendered and validated, broken copies refused"
# Offline: kubectl kustomize, kubernetes-validate (pinned) and the Strimzi
# CRD validators (npm, pinned), installed when missing. About 10 s.
scripts/k8s-validate.sh

step "formatting"
cargo fmt --all -- --check

step "the agent must not link arrow, datafusion, linfa or rdkafka"
if cargo tree -p otwatch-agent -e normal --prefix none | grep -E '^(arrow|datafusion|parquet|linfa|rdkafka)' ; then
  echo "otwatch-agent depends on a heavy crate (listed above)" >&2
  exit 1
fi

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "the agent builds with no protocol source, and with each alone (gateway builds)"
for features in "" "modbus" "slmp" "syslog" "mqtt" "opcua"; do
  cargo clippy -p otwatch-agent --all-targets --no-default-features --features "$features" -- -D warnings
done

step "build everything (binaries, tests, benches) with one feature set"
cargo build --workspace --all-targets

step "fuzz targets still compile (running them: fuzz/README.md)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-fuzz-check" cargo check --manifest-path fuzz/Cargo.toml --bins

step "tests"
cargo test --workspace --no-fail-fast
