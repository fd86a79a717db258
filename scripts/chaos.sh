#!/usr/bin/env bash
# A longer chaos run than the one in the test suite (tests/chaos.rs): an
# agent streams a file at a fixed rate over mutual TLS while the agent and
# the collector are SIGKILLed or frozen at random, bits of the collector's
# event log are flipped and its disk (a tmpfs, when this user may mount
# one) is filled; then the collector stays down for a long outage. At the
# end it prints events written, stored, lost and duplicated: nothing may be
# duplicated, and only events of log records the flips damaged may be lost.
#
# Usage: scripts/chaos.sh [ROUNDS] [OUTAGE_SECS] [RATE_PER_SEC] [SEED]
#        (defaults: 200 rounds, 300 s outage, 5000 events/s, seed 7)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otwatch/target}"
export OTWATCH_CHAOS_ROUNDS="${1:-200}"
export OTWATCH_CHAOS_OUTAGE_SECS="${2:-300}"
export OTWATCH_CHAOS_RATE="${3:-5000}"
export OTWATCH_CHAOS_SEED="${4:-7}"
cargo build --release --workspace --bins
exec cargo test --release -p otwatch --test chaos -- --nocapture
