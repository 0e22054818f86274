#!/usr/bin/env bash
# Runs a local cluster: Redis, Postgres and N nodes (default 2), all in the project-local folder .local/.
# Installs Redis and Postgres if missing (as root, via apt), builds the node, prints the URLs, and stops everything
# on Ctrl-C. With --prometheus it also runs Prometheus (Debian package `prometheus`, installed if missing) scraping
# every node, with the recording and alert rules of ops/prometheus/rules loaded.
#
#   bash ops/cluster.sh [--nodes N] [--debug] [--prometheus]
#
# Ports: Redis 6390, Postgres 5440, nodes 7001, 7002, ... (REST and WebSocket at /v1/ws), their admin ports 9464,
# 9465, ... (/metrics, /healthz, /readyz), Prometheus 9090; change them with IM_LOCAL_REDIS_PORT, IM_LOCAL_PG_PORT,
# IM_LOCAL_NODE_PORT and IM_LOCAL_ADMIN_PORT (the first node's) and IM_LOCAL_PROMETHEUS_PORT; the folder with
# IM_LOCAL_DIR. The nodes log JSON to .local/nodeN.log (IM_LOG_FORMAT=text for plain lines).
# `bash ops/rolling-restart.sh` restarts the nodes one by one while this runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

nodes=2
profile=release
prometheus=no
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --debug) profile=debug; shift ;;
    --prometheus) prometheus=yes; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) say "unknown option $1"; exit 2 ;;
  esac
done

REDIS_PORT=${IM_LOCAL_REDIS_PORT:-6390}
PG_PORT=${IM_LOCAL_PG_PORT:-5440}
FIRST_NODE_PORT=${IM_LOCAL_NODE_PORT:-7001}
FIRST_ADMIN_PORT=${IM_LOCAL_ADMIN_PORT:-9464}
PROMETHEUS_PORT=${IM_LOCAL_PROMETHEUS_PORT:-9090}

ensure_system_deps
[ "$prometheus" = yes ] && ensure_ops_deps
root="${IM_LOCAL_DIR:-$PWD/.local}"
mkdir -p "$root"
root="$(cd "$root" && pwd)"
# Postgres runs as the postgres user when we are root; it needs to reach its data folder.
pg_root="$root/pg"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$root" 2>/dev/null; then
  pg_root="/tmp/im-local-pg-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
  say "the postgres user cannot reach $root; keeping Postgres data in $pg_root"
fi

redis_pid=""
prometheus_pid=""
cleanup() {
  # A second Ctrl-C must not cut the shutdown short.
  trap '' INT TERM
  trap - EXIT
  say "stopping"
  # Nodes first (they drain and release their leases through Redis), then Prometheus, Redis, Postgres. The pid
  # files, not this shell's children: ops/rolling-restart.sh may have replaced the nodes.
  local i
  for i in $(seq 1 "$nodes"); do
    [ -f "$root/node$i.pid" ] && kill -TERM "$(cat "$root/node$i.pid")" 2>/dev/null || true
  done
  for i in $(seq 1 "$nodes"); do stop_local_node "$i" 20 || true; rm -f "$root/node$i.pid"; done
  [ -n "$prometheus_pid" ] && { kill -TERM "$prometheus_pid" 2>/dev/null || true; wait "$prometheus_pid" 2>/dev/null || true; }
  [ -n "$redis_pid" ] && { kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; }
  as_pg "$(pg_bin_dir)/pg_ctl" -D "$pg_root/data" stop -m fast >/dev/null 2>&1 || true
  rm -f "$root/cluster.env"
  say "stopped"
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

# Another cluster (or anything else) on our ports would answer our readiness checks: refuse to start instead.
ports=("$REDIS_PORT" "$PG_PORT")
for i in $(seq 1 "$nodes"); do ports+=($((FIRST_NODE_PORT + i - 1)) $((FIRST_ADMIN_PORT + i - 1))); done
[ "$prometheus" = yes ] && ports+=("$PROMETHEUS_PORT")
for port in "${ports[@]}"; do
  port_free "$port" || { say "port $port is in use; choose others with IM_LOCAL_*_PORT (see the header)"; exit 1; }
done

say "building the node ($profile)"
if [ "$profile" = release ]; then cargo build --release -p node --bin node; else cargo build -p node --bin node; fi
node_bin="$PWD/target/$profile/node"

# The web app is built here rather than committed (see ARCHITECTURE.md, web/); the nodes serve web/dist at /.
if command -v npm >/dev/null 2>&1; then
  say "building the web app into web/dist"
  if [ ! web/node_modules/.package-lock.json -nt web/package-lock.json ]; then
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd web && npm run build --silent)
else
  say "npm not found: the nodes will not serve the web app (apt-get install nodejs npm)"
fi

say "starting Redis on 127.0.0.1:$REDIS_PORT"
# setsid: a terminal's Ctrl-C reaches only this script, which then stops things in order.
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$root" \
  >"$root/redis.log" 2>&1 &
redis_pid=$!

pg="$(pg_bin_dir)"
if [ ! -f "$pg_root/data/PG_VERSION" ]; then
  say "creating the Postgres cluster in $pg_root/data"
  mkdir -p "$pg_root"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$pg_root"
  as_pg "$pg/initdb" -D "$pg_root/data" -A trust -U im -E UTF8 >/dev/null
fi
say "starting Postgres on 127.0.0.1:$PG_PORT"
as_pg setsid "$pg/pg_ctl" -D "$pg_root/data" -l "$pg_root/data/server.log" -w start \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $pg_root" >/dev/null
psql -h 127.0.0.1 -p "$PG_PORT" -U im -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'im'" | grep -q 1 ||
  psql -h 127.0.0.1 -p "$PG_PORT" -U im -d postgres -qc "CREATE DATABASE im"

secret_file="$root/token-secret"
[ -s "$secret_file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
export IM_TOKEN_SECRET
IM_TOKEN_SECRET="$(cat "$secret_file")"
export IM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export IM_POSTGRES_URL="host=127.0.0.1 port=$PG_PORT user=im dbname=im"
# The web app served by one node may fail over to the others: allow every local node's origin.
IM_ALLOWED_ORIGINS=""
for i in $(seq 1 "$nodes"); do
  port=$((FIRST_NODE_PORT + i - 1))
  IM_ALLOWED_ORIGINS+="${IM_ALLOWED_ORIGINS:+,}http://127.0.0.1:$port,http://localhost:$port"
done
export IM_ALLOWED_ORIGINS
# What ops/rolling-restart.sh needs to start nodes exactly like this script does (the secret stays in its file).
{
  printf 'cluster_pid=%q\nnodes=%q\nprofile=%q\nnode_bin=%q\nroot=%q\nFIRST_NODE_PORT=%q\nFIRST_ADMIN_PORT=%q\n' \
    "$$" "$nodes" "$profile" "$node_bin" "$root" "$FIRST_NODE_PORT" "$FIRST_ADMIN_PORT"
  printf 'export IM_REDIS_URL=%q IM_POSTGRES_URL=%q\n' "$IM_REDIS_URL" "$IM_POSTGRES_URL"
} >"$root/cluster.env"

for i in $(seq 1 "$nodes"); do start_local_node "$i"; done
for i in $(seq 1 "$nodes"); do wait_local_node_ready "$i" 10 || exit 1; done

if [ "$prometheus" = yes ]; then
  prom_root="$root/prometheus"
  mkdir -p "$prom_root/data"
  {
    echo "# Written by ops/cluster.sh --prometheus; the rules are the repository's."
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: [\"$PWD/ops/prometheus/rules/*.yml\"]"
    echo "scrape_configs:"
    echo "  - job_name: im-node"
    echo "    static_configs:"
    echo "      - targets:"
    for i in $(seq 1 "$nodes"); do echo "          - 127.0.0.1:$((FIRST_ADMIN_PORT + i - 1))"; done
    echo "  - job_name: prometheus"
    echo "    static_configs: [{targets: [\"127.0.0.1:$PROMETHEUS_PORT\"]}]"
  } >"$prom_root/prometheus.yml"
  promtool check config --syntax-only "$prom_root/prometheus.yml" >/dev/null
  say "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
  setsid prometheus --config.file="$prom_root/prometheus.yml" --storage.tsdb.path="$prom_root/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$root/prometheus.log" 2>&1 &
  prometheus_pid=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1 && break
    kill -0 "$prometheus_pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1 ||
    { say "Prometheus did not start; see $root/prometheus.log"; exit 1; }
fi

say "cluster ready"
for i in $(seq 1 "$nodes"); do
  port=$((FIRST_NODE_PORT + i - 1))
  echo "  node$i  http://127.0.0.1:$port   ws://127.0.0.1:$port/v1/ws   http://127.0.0.1:$((FIRST_ADMIN_PORT + i - 1))/metrics"
done
all_nodes=$(for i in $(seq 1 "$nodes"); do printf 'http://127.0.0.1:%s,' $((FIRST_NODE_PORT + i - 1)); done)
echo "  web app http://127.0.0.1:$FIRST_NODE_PORT/?nodes=${all_nodes%,}"
echo "  redis   redis://127.0.0.1:$REDIS_PORT      postgres  host=127.0.0.1 port=$PG_PORT user=im dbname=im"
if [ "$prometheus" = yes ]; then
  echo "  prometheus  http://127.0.0.1:$PROMETHEUS_PORT   (targets: /targets, alerts: /alerts, rules: /rules)"
fi
echo "  logs    $root/*.log          rolling restart: bash ops/rolling-restart.sh          Ctrl-C stops everything"
# Wait for a signal; the nodes may be replaced by ops/rolling-restart.sh, so do not wait on them.
while true; do
  sleep 1 &
  wait $! || true
  [ -n "$redis_pid" ] && ! kill -0 "$redis_pid" 2>/dev/null && { say "Redis exited; see $root/redis.log"; exit 1; }
done
