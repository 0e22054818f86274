#!/usr/bin/env bash
# Fuzzing on demand. Always, in release builds: the stable mutation fuzzers (proptest) — over common::decode for
# IM_FUZZ_CASES cases (default 1,000,000, about 1.5 minutes after the build), and over the node's REST and upgrade
# input parsers, token verification and thumbnails (node/tests/fuzz_rest.rs) for IM_FUZZ_REST_CASES cases per
# target (default 200,000; images get a tenth). Then, when a nightly toolchain and cargo-fuzz are present
# (`cargo install cargo-fuzz`), libFuzzer on each target (decode, rest) for SECONDS each (default 300).
# Usage: ops/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

seconds="${1:-300}"
say "stable fuzzer, frames: ${IM_FUZZ_CASES:=1000000} cases"
IM_FUZZ_CASES="$IM_FUZZ_CASES" cargo test --release -q -p common --test fuzz_decode -- --nocapture
say "stable fuzzer, REST input: ${IM_FUZZ_REST_CASES:=200000} cases per target"
IM_FUZZ_CASES="$IM_FUZZ_REST_CASES" cargo test --release -q -p node --test fuzz_rest -- --nocapture

if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  for target in decode rest; do
    say "libFuzzer (cargo +nightly fuzz) on $target for ${seconds}s"
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048)
  done
else
  say "no nightly toolchain or cargo-fuzz: skipping libFuzzer (the stable fuzzers above ran)"
fi
