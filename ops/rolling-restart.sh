#!/usr/bin/env bash
# Rolling restart (or upgrade) of the local cluster started by ops/cluster.sh: one node at a time, SIGTERM (the
# node drains: stops accepting, kicks its clients with close 1012 so they reconnect to the others and sync, commits
# what its writer holds, releases its lease), wait for it to exit, start it again, wait until /readyz answers,
# let the reconnect wave settle, then the next node. The cluster keeps serving throughout. Uses the cluster in
# IM_LOCAL_DIR (default .local), like cluster.sh.
#
#   bash ops/rolling-restart.sh [--build] [--settle SECONDS] [--drain-timeout SECONDS]
#
#   --build           rebuild the node first (same profile as cluster.sh), so the restart is an upgrade
#   --settle          pause after each node is ready (default 3)
#   --drain-timeout   how long a node may take to exit after SIGTERM (default 20; its own limit is
#                     --drain-grace-secs, 10 by default); a node still running then stops the rollout
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

build=no
settle=3
drain_timeout=20
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=yes; shift ;;
    --settle) settle="$2"; shift 2 ;;
    --drain-timeout) drain_timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) say "unknown option $1"; exit 2 ;;
  esac
done

env_file="${IM_LOCAL_DIR:-.local}/cluster.env"
[ -f "$env_file" ] || { say "no local cluster running (no $env_file): start one with bash ops/cluster.sh"; exit 1; }
# shellcheck source=/dev/null
source "$env_file"
pid_running "$cluster_pid" || { say "the cluster script (pid $cluster_pid) is not running"; exit 1; }
export IM_TOKEN_SECRET
IM_TOKEN_SECRET="$(cat "$root/token-secret")"

if [ "$build" = yes ]; then
  say "building the node ($profile)"
  if [ "$profile" = release ]; then cargo build --release -p node --bin node; else cargo build -p node --bin node; fi
fi

started=$(date +%s)
for i in $(seq 1 "$nodes"); do
  # Never take a node down while another one is not ready: the rollout would reduce capacity twice.
  for j in $(seq 1 "$nodes"); do
    [ "$j" = "$i" ] || wait_local_node_ready "$j" 30 || { say "node$j is not ready; stopping the rollout"; exit 1; }
  done
  say "node$i: draining (SIGTERM)"
  stop_local_node "$i" "$drain_timeout" || { say "node$i did not drain; stopping the rollout"; exit 1; }
  for port in $((FIRST_NODE_PORT + i - 1)) $((FIRST_ADMIN_PORT + i - 1)); do
    for _ in $(seq 1 50); do port_free "$port" && break; sleep 0.1; done
    port_free "$port" || { say "port $port is still in use after node$i exited; stopping the rollout"; exit 1; }
  done
  say "node$i: starting"
  start_local_node "$i"
  wait_local_node_ready "$i" 30 || exit 1
  say "node$i: ready (pid $(cat "$root/node$i.pid")); settling ${settle}s"
  sleep "$settle"
done
say "rolling restart of $nodes nodes done in $(( $(date +%s) - started ))s"
