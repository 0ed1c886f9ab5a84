#!/usr/bin/env bash
# Runs autopush-rs's own Python integration suite against Herald, the way an
# autopush user would point it at a running server, and prints how many of
# its tests pass. A developer command, not part of CI: the suite is not in
# this repository (it is Mozilla's, MPL-2.0, and CI cannot fetch it).
#
# Get the suite once (the result in README.md is for autopush-rs 4ebe2624):
#     git clone --depth 1 https://github.com/mozilla-services/autopush-rs /tmp/autopush-rs
# then:
#     tools/autopush-suite.sh /tmp/autopush-rs/tests/integration [pytest args...]
#
# What it does:
# - builds the release binary (skip with HERALD_SKIP_BUILD=1);
# - starts two Herald servers on loopback with fresh data directories:
#   the suite's push server (WebSocket 9150, endpoints on http://127.0.0.1:9160,
#   the origin the suite signs VAPID `aud` with) and its broadcast server
#   (WebSocket 9052), which stands where autopush runs a second node that
#   polls megaphone;
# - installs the suite's Python dependencies into a venv
#   ($AUTOPUSH_VENV, default /tmp/autopush-venv; pip, from the public index);
# - runs pytest on the suite's default selection (the stub, sentry and
#   reliable_report tests need autopush internals and are deselected, as in
#   autopush's own CI), with tools/autopush/herald_megaphone.py standing in
#   for the megaphone poll: it copies the mock megaphone's versions into
#   Herald's `PUT /v1/broadcasts/<id>`;
# - prints "N passed, M failed" and exits with pytest's status.
# README.md ("Coming from autopush") lists the result and every difference.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

suite="${AUTOPUSH_SUITE:-}"
if [ $# -gt 0 ]; then
    suite="$1"
    shift
fi
if [ -z "$suite" ] || [ ! -f "$suite/test_integration_all_rust.py" ]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    echo "autopush-suite.sh: give the path of autopush-rs's tests/integration" >&2
    exit 2
fi
suite="$(cd "$suite" && pwd)"

venv="${AUTOPUSH_VENV:-/tmp/autopush-venv}"
# The suite's integration dependencies (its pyproject.toml), by name.
deps=(websocket-client 'websockets>=12,<13' cryptography ecdsa psutil 'pytest>=8.3,<9'
    'pytest-asyncio>=0.23.8,<0.24' pytest-order 'python-jose>=3.4' 'httpx>=0.27,<0.28'
    'fastapi>=0.111,<0.112' 'uvicorn[standard]>=0.29,<0.30')
if [ ! -x "$venv/bin/pytest" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${deps[@]}"
fi

if [ -z "${HERALD_SKIP_BUILD:-}" ]; then
    (cd "$repo" && cargo build --release -p herald)
fi
herald="$repo/target/release/herald"

work="$(mktemp -d /tmp/herald-autopush.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# start NAME UA_PORT AS_PORT ADMIN_PORT: one Herald, its log in $work/NAME.log.
start() {
    local name=$1 ua=$2 as=$3 admin=$4
    HERALD_ADMIN_TOKEN="$token" "$herald" serve --data-dir "$work/$name" --shards 2 \
        --ua-listen "127.0.0.1:$ua" --as-listen "127.0.0.1:$as" \
        --admin-listen "127.0.0.1:$admin" --endpoint-url "http://127.0.0.1:$as" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        if curl -fs "http://127.0.0.1:$admin/health/ready" >/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "autopush-suite.sh: Herald $name did not become ready; its log:" >&2
    cat "$work/$name.log" >&2
    exit 1
}
start push 9150 9160 9161
start broadcast 9052 9162 9163

report="$work/pytest.log"
set +e
(
    cd "$(dirname "$suite")"
    # DB_DSN not grpc://: the suite then starts no Bigtable emulator.
    # AUTOPUSH_*_SERVER: the suite uses these servers instead of starting autopush.
    env DB_DSN=herald://external \
        AUTOPUSH_CN_SERVER=http://127.0.0.1:9150 \
        AUTOPUSH_MP_SERVER=http://127.0.0.1:9052 \
        AUTOPUSH_EP_SERVER=http://127.0.0.1:9160 \
        HERALD_BROADCAST_URL=http://127.0.0.1:9162 \
        HERALD_ADMIN_TOKEN="$token" \
        PYTHONPATH="$here/autopush${PYTHONPATH:+:$PYTHONPATH}" \
        "$venv/bin/pytest" "$(basename "$suite")" -p herald_megaphone \
        -m 'not stub and not sentry and not reliable_report' -o asyncio_mode=auto \
        -p no:cacheprovider -q -rf "$@"
) >"$report" 2>&1
status=$?
set -e
grep -E '^(FAILED|ERROR) [^ ]+::' "$report" || true
passed=$(grep -Eo '[0-9]+ passed' "$report" | tail -1 | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -Eo '[0-9]+ failed' "$report" | tail -1 | grep -Eo '[0-9]+' || echo 0)
echo "pytest output: $report (Herald logs beside it)"
echo "$passed passed, $failed failed"
exit $status
