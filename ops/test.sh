#!/usr/bin/env bash
# The whole test suite: unit, property and multi-process tests against real Redis, Postgres and node processes,
# plus formatting and lints. Installs Redis and Postgres first if they are missing (as root, via apt).
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_system_deps
ensure_kosoku
say "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "running the test suite"
cargo build --quiet -p node --bin node
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
