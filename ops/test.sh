#!/usr/bin/env bash
# The whole test suite: unit, property and multi-process tests against real Redis, Postgres and node processes,
# plus formatting and lints. Installs Redis and Postgres first if they are missing (as root, via apt).
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_system_deps
say "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "running the test suite"
cargo build --quiet -p node --bin node
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
say "benchmark smoke run: every scenario at toy size against a throwaway cluster (keeps imbench from rotting; measures nothing)"
rm -rf target/bench-smoke
bash benchmarks/run.sh --smoke --debug --no-peer --out target/bench-smoke
python3 - target/bench-smoke <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
dm = json.loads((folder / "ours-dm.json").read_text())
step = dm["run"]["results"]["steps"][0]
assert step["delivered"] > 0 and step["acked"] > 0, f"smoke dm delivered nothing: {step}"
for name in ["ours-idle-step0.json", "ours-connect.json", "ours-sync.json", "ours-dm-contacts.json", "ours-group.json", "echo.json", "limits.json", "summary.md"]:
    assert (folder / name).exists(), f"smoke run did not write {name}"
print("benchmark smoke run ok")
PY
