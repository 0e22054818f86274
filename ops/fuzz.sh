#!/usr/bin/env bash
# Fuzzing on demand. Always: the stable mutation fuzzer over common::decode (proptest, release build) for
# IM_FUZZ_CASES cases (default 1,000,000, about 1.5 minutes after the build). Then, when a nightly toolchain and
# cargo-fuzz are present (`cargo install cargo-fuzz`), libFuzzer on the same decoder for SECONDS (default 300).
# Usage: ops/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

seconds="${1:-300}"
say "stable fuzzer: ${IM_FUZZ_CASES:=1000000} cases"
IM_FUZZ_CASES="$IM_FUZZ_CASES" cargo test --release -q -p common --test fuzz_decode -- --nocapture

if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  say "libFuzzer (cargo +nightly fuzz) for ${seconds}s"
  (cd fuzz && cargo +nightly fuzz run decode -- -max_total_time="$seconds" -rss_limit_mb=2048)
else
  say "no nightly toolchain or cargo-fuzz: skipping libFuzzer (the stable fuzzer above ran)"
fi
