#!/usr/bin/env bash
# Core figures for Herald on loopback: delivered notifications/s with
# AS→UA latency, and server RSS per idle UA. Each figure is the median of
# RUNS runs against a fresh server (2 shards, --fsync batch).
#
#   bench/core_bench.sh [RUNS] [IDLE_UAS]
#
# Writes bench/core_results.json and prints it. Bounded: each throughput run
# lasts 10 s, each idle run opens IDLE_UAS sockets and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
idle_uas=${2:-5000}
cargo build --release -q -p herald -p herald-bench
bin=target/release
ua=127.0.0.1:27080
as=127.0.0.1:27081

start_server() {
    data=$(mktemp -d)
    "$bin/herald" serve --data-dir "$data" --shards 2 --ua-listen "$ua" --as-listen "$as" >"$data/log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        curl -sf "http://$as/health" >/dev/null && return
        sleep 0.1
    done
    echo "herald did not start" >&2; cat "$data/log" >&2; exit 1
}

stop_server() {
    kill "$server"; wait "$server" || true
    rm -rf "$data"
}

results=()
for run in $(seq "$runs"); do
    start_server
    results+=("$("$bin/herald-load" --ua "$ua" throughput --uas 200 --senders 64 --seconds 10)")
    stop_server
done
idle=()
for run in $(seq "$runs"); do
    start_server
    idle+=("$("$bin/herald-load" --ua "$ua" idle --uas "$idle_uas" --pid "$server")")
    stop_server
done

python3 - "$runs" "${results[@]}" "${idle[@]}" <<'PY' | tee bench/core_results.json
import json, statistics, sys
runs = int(sys.argv[1])
throughput = [json.loads(x) for x in sys.argv[2:2 + runs]]
idle = [json.loads(x) for x in sys.argv[2 + runs:]]
median = lambda rows, key: statistics.median(row[key] for row in rows)
print(json.dumps({
    "runs": runs,
    "throughput_runs": throughput,
    "idle_runs": idle,
    "median_accepted_per_s": median(throughput, "accepted_per_s"),
    "median_delivered_per_s": median(throughput, "delivered_per_s"),
    "median_latency_us_p50": median(throughput, "latency_us_p50"),
    "median_latency_us_p99": median(throughput, "latency_us_p99"),
    "median_rss_bytes_per_idle_ua": median(idle, "rss_bytes_per_idle_ua"),
    "median_hellos_per_s": median(idle, "hellos_per_s"),
}, indent=2))
PY
