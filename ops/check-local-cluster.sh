#!/usr/bin/env bash
# End-to-end check of the local-cluster scripts: runs `ops/cluster.sh --debug --nodes 2 --prometheus` in a
# throwaway folder on free ports, checks that Prometheus scrapes every node with the rules loaded and evaluated,
# runs `ops/rolling-restart.sh` and checks every node was replaced and is ready, then stops the cluster with SIGTERM
# (what Ctrl-C does) and checks nothing is left running. Takes about half a minute once the node is built.
#
#   bash ops/check-local-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_system_deps
ensure_ops_deps
dir=$(mktemp -d /tmp/im-cluster-check.XXXXXX)
# The postgres user keeps its data inside; it must be able to enter.
chmod 755 "$dir"
cluster_pid=""
finish() {
  local status=$?
  if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  [ "$status" -eq 0 ] || { say "local cluster check failed; cluster output:"; cat "$dir/cluster.out" >&2 || true; }
  rm -rf "$dir"
}
trap finish EXIT

fail() { say "local cluster check: $*"; exit 1; }

# Consecutive free ports: Redis, Postgres, Prometheus, node1, node2, node1's admin port, node2's.
base=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 20000))
  ok=yes
  for offset in 0 1 2 3 4 5 6; do port_free $((candidate + offset)) || ok=no; done
  [ "$ok" = yes ] && { base=$candidate; break; }
done
[ -n "$base" ] || fail "no free ports"
prometheus_url="http://127.0.0.1:$((base + 2))"

say "starting a local cluster with Prometheus in $dir (ports $base-$((base + 6)))"
IM_LOCAL_DIR="$dir" IM_LOCAL_REDIS_PORT=$base IM_LOCAL_PG_PORT=$((base + 1)) \
  IM_LOCAL_PROMETHEUS_PORT=$((base + 2)) IM_LOCAL_NODE_PORT=$((base + 3)) IM_LOCAL_ADMIN_PORT=$((base + 5)) \
  setsid bash ops/cluster.sh --debug --nodes 2 --prometheus >"$dir/cluster.out" 2>&1 &
cluster_pid=$!
# The last line cluster.sh prints once everything runs (the URLs come after "cluster ready").
for _ in $(seq 1 1800); do
  grep -q "Ctrl-C stops everything" "$dir/cluster.out" && break
  kill -0 "$cluster_pid" 2>/dev/null || fail "cluster.sh exited before the cluster was ready"
  sleep 0.1
done
grep -q "Ctrl-C stops everything" "$dir/cluster.out" || fail "the cluster was not ready within 3 minutes"
grep -q "prometheus  $prometheus_url" "$dir/cluster.out" || fail "cluster.sh did not print the Prometheus URL"

# Prints "<up targets of job im-node> <rule groups loaded> <unhealthy rules> <evaluated recording series>".
prometheus_state() {
  python3 - "$prometheus_url" <<'PY'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1]
def get(path):
    with urllib.request.urlopen(url + path, timeout=5) as response:
        return json.load(response)["data"]
targets = get("/api/v1/targets")["activeTargets"]
up = sum(1 for t in targets if t["labels"]["job"] == "im-node" and t["health"] == "up")
groups = get("/api/v1/rules")["groups"]
names = sorted(g["name"] for g in groups)
unhealthy = sum(1 for g in groups for r in g["rules"] if r.get("health") not in ("ok", None))
series = get("/api/v1/query?" + urllib.parse.urlencode({"query": "job:im_connections_open:sum"}))["result"]
print(up, ",".join(names), unhealthy, len(series))
PY
}
state=""
for _ in $(seq 1 60); do
  state=$(prometheus_state 2>/dev/null || true)
  [ "$state" = "2 im-alerts,im-recording 0 1" ] && break
  sleep 0.5
done
[ "$state" = "2 im-alerts,im-recording 0 1" ] ||
  fail "Prometheus should scrape 2 nodes with both rule groups healthy and evaluated; got '$state'"

say "rolling restart"
before="$(cat "$dir/node1.pid") $(cat "$dir/node2.pid")"
IM_LOCAL_DIR="$dir" bash ops/rolling-restart.sh --settle 1 >"$dir/rolling.out" 2>&1 ||
  { cat "$dir/rolling.out" >&2; fail "rolling-restart.sh failed"; }
after="$(cat "$dir/node1.pid") $(cat "$dir/node2.pid")"
for pid in $before; do
  pid_running "$pid" && fail "node pid $pid was not replaced"
done
for i in 1 2; do
  curl -fs "http://127.0.0.1:$((base + 4 + i))/readyz" >/dev/null || fail "node$i not ready after the rolling restart"
  # The admin port serves the metrics; the client port does not (there /metrics is just a path of the web app).
  curl -fs "http://127.0.0.1:$((base + 4 + i))/metrics" | grep -q '^# TYPE im_connections_open ' ||
    fail "node$i serves no metrics on its admin port"
  if curl -s "http://127.0.0.1:$((base + 2 + i))/metrics" | grep -q '^# TYPE '; then
    fail "node$i serves metrics on its client port"
  fi
done
# The node logs "stopped" only at the end of a complete drain (JSON lines: its log is a file).
for i in 1 2; do
  grep -q '"message":"stopped"' "$dir/node$i.log" || fail "node$i did not finish its drain (see its log)"
done

say "stopping with SIGTERM"
kill -TERM "$cluster_pid"
for _ in $(seq 1 300); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$cluster_pid" 2>/dev/null && fail "cluster.sh still running 30 s after SIGTERM"
wait "$cluster_pid" || fail "cluster.sh exited with an error after SIGTERM"
cluster_pid=""
for pid in $after; do pid_running "$pid" && fail "node pid $pid still running after the cluster stopped"; done
for offset in 0 1 2 3 4 5 6; do
  port_free $((base + offset)) || fail "port $((base + offset)) still in use after the cluster stopped"
done
say "local cluster check passed"
