#!/usr/bin/env bash
# Measures the agent as shipped to gateways: the size of the stripped
# `dist` binary, and its resident memory and CPU while it polls 50
# Modbus/TCP devices of 100 tags each every second and sends every value
# (5,000 SAMPLE events/s) to a collector.
#
# The devices are one pymodbus process (agent/tests/peers/modbus_device.py)
# answering unit ids 1-50 on one port, each over its own connection from the
# agent, as 50 controllers behind one gateway would be; the collector is
# `otwatch serve` on loopback (plaintext: TLS would add its own cost). The
# figures are read from /proc after a warm-up: RSS now and at its peak
# (VmHWM), and CPU time (utime + stime) over the window as a percentage of
# one core. The figures, before and after the agent's memory settings
# (agent/src/memory.rs), are in docs/sources.md, "Footprint": 29.2 MiB
# resident before, 11.4 MiB after (every_poll), 1.70 % of a core.
#
# Usage: scripts/agent-footprint.sh [WINDOW_SECONDS]   (default 60)
#   SAMPLES=on_change scripts/agent-footprint.sh       (values sent on change only)
#   AGENT_FEATURES=modbus scripts/agent-footprint.sh   (a gateway build with only these sources)
# Needs python3 with pymodbus (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

WINDOW="${1:-60}"
WARMUP=15
DEVICES=50
TAGS=100
SAMPLES="${SAMPLES:-every_poll}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/otwatch/target}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The agent is built last and copied at once: a target directory shared
# with other checkouts may get another build of it at the same path.
cargo build --quiet -p otwatch --bin otwatch
cp "$CARGO_TARGET_DIR/debug/otwatch" "$WORK/otwatch"
if [ -n "${AGENT_FEATURES:-}" ]; then
  cargo build --quiet --profile dist -p otwatch-agent --no-default-features --features "$AGENT_FEATURES"
else
  cargo build --quiet --profile dist -p otwatch-agent
fi
cp "$CARGO_TARGET_DIR/dist/otwatch-agent" "$WORK/otwatch-agent"
AGENT="$WORK/otwatch-agent"
OTWATCH="$WORK/otwatch"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

DEVICE_PORT="$(free_port)"
python3 agent/tests/peers/modbus_device.py --port "$DEVICE_PORT" --record "$WORK/functions" \
  >"$WORK/devices.log" 2>&1 &
PIDS+=($!)
COLLECTOR_PORT="$(free_port)"
"$OTWATCH" serve --insecure-loopback --listen "127.0.0.1:$COLLECTOR_PORT" --data-dir "$WORK/central" \
  >"$WORK/central.log" 2>&1 &
PIDS+=($!)
METRICS_PORT="$(free_port)"

{
  echo "site = \"plant-a\""
  echo "agent = \"gw-1\""
  echo "data_dir = \"$WORK/agent\""
  echo "metrics_listen = \"127.0.0.1:$METRICS_PORT\""
  echo "[collector]"
  echo "url = \"http://127.0.0.1:$COLLECTOR_PORT\""
  echo "[[sources]]"
  echo "type = \"modbus\""
  for d in $(seq 1 "$DEVICES"); do
    echo "[[sources.devices]]"
    echo "name = \"press-$d\""
    echo "asset = \"line$(( (d - 1) / 10 + 1 ))/press-$d\""
    echo "address = \"127.0.0.1:$DEVICE_PORT\""
    echo "unit_id = $d"
    echo "poll_interval = \"1s\""
    echo "samples = \"$SAMPLES\""
    echo "tags = ["
    # Holding registers 28-127: one read of 100 registers per poll.
    for t in $(seq 0 $(( TAGS - 1 ))); do
      echo "  { name = \"r$t\", kind = \"holding\", address = $(( 28 + t )) },"
    done
    echo "]"
  done
} >"$WORK/agent.toml"

wait_port "$DEVICE_PORT"
wait_port "$COLLECTOR_PORT"
"$AGENT" --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_port "$METRICS_PORT"

metric_sum() {
  python3 - "$METRICS_PORT" "$1" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(int(sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith(sys.argv[2] + "{"))))
EOF
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$AGENT_PID/status"; }

sleep "$WARMUP"
polls_before="$(metric_sum otwatch_agent_device_polls_total)"
ticks_before="$(cpu_ticks)"
start="$(date +%s.%N)"
sleep "$WINDOW"
ticks_after="$(cpu_ticks)"
end="$(date +%s.%N)"
polls_after="$(metric_sum otwatch_agent_device_polls_total)"
errors="$(metric_sum otwatch_agent_device_errors_total)"
events="$(metric_sum otwatch_agent_device_events_total)"
rss="$(status_kib VmRSS)"
hwm="$(status_kib VmHWM)"
anon="$(status_kib RssAnon)"
file="$(status_kib RssFile)"
hz="$(getconf CLK_TCK)"
kill -0 "$AGENT_PID"

python3 - <<EOF
size = $(stat -c %s "$AGENT")
seconds = $end - $start
cpu = ($ticks_after - $ticks_before) / $hz
polls = $polls_after - $polls_before
print(f"agent binary (dist profile, stripped, features: ${AGENT_FEATURES:-default}): {size / 2**20:.2f} MiB ({size} bytes)")
print(f"load: $DEVICES devices x $TAGS tags every 1 s, samples = $SAMPLES")
print(f"window: {seconds:.1f} s after {$WARMUP} s of warm-up")
print(f"polls: {polls} ({polls / seconds:.1f}/s); device errors since start: $errors; events taken since start: $events")
print(f"RSS: {$rss / 1024:.1f} MiB now ({$anon / 1024:.1f} MiB heap and stacks, {$file / 1024:.1f} MiB of the binary and libraries), {$hwm / 1024:.1f} MiB at peak")
print(f"CPU: {100 * cpu / seconds:.2f} % of one core ({cpu:.2f} s over {seconds:.1f} s)")
EOF
