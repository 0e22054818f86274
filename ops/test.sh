#!/usr/bin/env bash
# The whole test suite: unit, property and multi-process tests against real Redis, Postgres and node processes,
# plus formatting and lints, the offline checks of the deployment files (ops/check-ops.sh) and an end-to-end run of
# the local-cluster scripts (ops/check-local-cluster.sh). Installs Redis, Postgres, Prometheus (promtool) and
# HAProxy first if they are missing (as root, via apt), and s3s-fs (cargo install) for the S3 media tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_system_deps
# promtool and haproxy: the suite checks a live node's /metrics with promtool and runs HAProxy in front of nodes.
ensure_ops_deps
ensure_kosoku
# s3s-fs: the real S3-compatible server the media tests run the s3 store against.
ensure_s3s_fs
say "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "checking the deployment files (rules, compose, Kubernetes, Dockerfile, HAProxy)"
bash ops/check-ops.sh
cargo build --quiet -p node --bin node
say "checking the local-cluster scripts (cluster.sh --prometheus, rolling-restart.sh)"
bash ops/check-local-cluster.sh
say "running the test suite"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
say "running the multi-process suite again against a 3-master Redis Cluster (sharded pub/sub)"
IM_TEST_REDIS=cluster cargo test -p tests --test suite --no-fail-fast 2>&1 | tee target/test-output-redis-cluster.txt
say "benchmark smoke run: every scenario at toy size against a throwaway cluster (keeps imbench from rotting; measures nothing)"
rm -rf target/bench-smoke
bash benchmarks/run.sh --smoke --debug --no-peer --out target/bench-smoke
python3 - target/bench-smoke <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
dm = json.loads((folder / "ours-dm.json").read_text())
step = dm["run"]["results"]["steps"][0]
assert step["delivered"] > 0 and step["acked"] > 0, f"smoke dm delivered nothing: {step}"
group = json.loads((folder / "ours-group.json").read_text())["run"]["results"]
assert "skipped" not in group, f"smoke group was skipped: {group}"
for step in group["steps"]:
    assert step["delivered"] > 0 and step["acked"] > 0, f"smoke group delivered nothing: {step}"
    assert step["deliveries_per_message"] == group["members"] - 1, f"smoke group fan-out: {step}"
large = json.loads((folder / "ours-group-large.json").read_text())["run"]["results"]
measured = [m for m in large["per_message"] if not m["warmup"]]
assert measured and all(m["delivered"] > 0 for m in measured), f"smoke large group delivered nothing: {large}"
for name in ["ours-idle-step0.json", "ours-connect.json", "ours-sync.json", "ours-dm-contacts.json", "ours-group.json", "ours-group-large.json", "echo.json", "echo-connect.json", "limits.json", "summary.md"]:
    assert (folder / name).exists(), f"smoke run did not write {name}"
print("benchmark smoke run ok")
PY
