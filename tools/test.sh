#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need,
# builds the release binary the black-box tests run, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v node >/dev/null || need_apt+=(nodejs npm)
# Cluster-mode tests start their own Redis Cluster (it brings redis-cli).
command -v redis-server >/dev/null || need_apt+=(redis-server)
# HTTP/2 tests compare curl's answers (Debian's curl speaks h2c) with HTTP/1.1.
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# Style first: it is the cheapest failure to read. (Both come with rustup's
# default profile; a toolchain without them skips the check and says so.)
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "tools/test.sh: rustfmt not installed, format check skipped" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --release --locked --workspace --all-targets -- -D warnings
else
    echo "tools/test.sh: clippy not installed, lint check skipped" >&2
fi

cargo build --release --locked -p herald
cargo build --release --locked --workspace --bins
cargo test --release --locked --workspace --no-fail-fast -- --test-threads="${HERALD_TEST_THREADS:-4}"
