#!/usr/bin/env bash
# WebSocket conformance on demand: Autobahn|Testsuite groups 1-7, 9 and 10 (runner: the pinned PyPI package
# kosoku) against a node started with --conformance-echo. Reports go to target/autobahn/ (index.html), the summary
# table to target/autobahn/table.md; copy it into docs/conformance.md when it changes.
# Usage: ops/conformance.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_system_deps
ensure_kosoku
mkdir -p target/autobahn
IM_AUTOBAHN="${1:-full}" IM_AUTOBAHN_OUT="$PWD/target/autobahn" IM_AUTOBAHN_TABLE="$PWD/target/autobahn/table.md" \
  cargo test -q -p tests --test suite autobahn -- --nocapture
say "reports: target/autobahn/index.html; summary: target/autobahn/table.md"
