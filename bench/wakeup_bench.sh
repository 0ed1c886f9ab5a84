#!/usr/bin/env bash
# UDP wakeup figures (bench/RESULTS.md, section "UDP wakeup").
# Starts its own herald on 127.0.0.1 (ports 28080-28082, data in a temp dir),
# runs the device simulator (always-connected vs sleep + wakeup, then a burst),
# times the wakeup core's send path, plots the CSV, and stops herald.
# Every step is bounded; nothing leaves 127.0.0.1.
#
# Usage: bench/wakeup_bench.sh [DEVICES] [RATE] [DURATION_S]
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${1:-5000}
RATE=${2:-200}
DURATION=${3:-30}
cargo build --release -p herald -p herald-bench --bin herald --bin herald-devices --bin herald-wakeup-core
WORK=$(mktemp -d /tmp/herald-wakeup-bench.XXXXXX)
cat > "$WORK/herald.toml" <<TOML
ua_listen = "127.0.0.1:28080"
as_listen = "127.0.0.1:28081"
admin_listen = "127.0.0.1:28082"
data_dir = "$WORK/data"
fsync = "batch"
wakeup_routes = ["214-07=udp"]
[limits]
# Put woken devices back to sleep after 1 s idle (default 10 s).
wakeup_idle_ms = 1000
# The burst pushes every device at once: lift the per-network bucket.
wakeup_per_network_per_s = 100000
wakeup_per_network_burst = 100000
TOML
ulimit -n 20000
./target/release/herald serve --config "$WORK/herald.toml" > "$WORK/herald.log" 2>&1 &
HERALD=$!
trap 'kill -TERM $HERALD 2>/dev/null || true; wait $HERALD 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:28081/health > /dev/null && break
  sleep 0.1
done
./target/release/herald-devices --ua 127.0.0.1:28080 --mode both --devices "$DEVICES" \
  --rate "$RATE" --duration-s "$DURATION" \
  --csv bench/wakeup_connected.csv --summary bench/wakeup_summary.json > /dev/null
./target/release/herald-devices --ua 127.0.0.1:28080 --mode burst --devices "$DEVICES" \
  --pushers 8 --duration-s 60 --drain-s 5 \
  --csv "$WORK/burst.csv" --summary bench/wakeup_burst.json > /dev/null
curl -s http://127.0.0.1:28082/metrics | grep -E '^herald_wakeup' | grep -v _bucket > bench/wakeup_metrics.txt
# Stop herald first: its re-sends to the deaf burst devices would otherwise
# land on the core bench's freshly bound loopback ports.
kill -TERM $HERALD; wait $HERALD || true
./target/release/herald-wakeup-core --wakeups 200000 > bench/wakeup_core.json
python3 bench/wakeup_plot.py bench/wakeup_connected.csv bench/wakeup_connected.png
cat bench/wakeup_summary.json bench/wakeup_burst.json bench/wakeup_core.json bench/wakeup_metrics.txt
