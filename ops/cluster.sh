#!/usr/bin/env bash
# Runs a local cluster: Redis, Postgres and N nodes (default 2), all in the project-local folder .local/.
# Installs Redis and Postgres if missing (as root, via apt), builds the node, prints the URLs, and stops everything
# on Ctrl-C.
#
#   bash ops/cluster.sh [--nodes N] [--debug]
#
# Ports: Redis 6390, Postgres 5440, nodes 7001, 7002, ... (HTTP, WebSocket at /v1/ws and /metrics on each).
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

nodes=2
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --debug) profile=debug; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) say "unknown option $1"; exit 2 ;;
  esac
done

REDIS_PORT=${IM_LOCAL_REDIS_PORT:-6390}
PG_PORT=${IM_LOCAL_PG_PORT:-5440}
FIRST_NODE_PORT=${IM_LOCAL_NODE_PORT:-7001}

ensure_system_deps
root="$PWD/.local"
mkdir -p "$root"
# Postgres runs as the postgres user when we are root; it needs to reach its data folder.
pg_root="$root/pg"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$root" 2>/dev/null; then
  pg_root="/tmp/im-local-pg"
  say "the postgres user cannot reach $root; keeping Postgres data in $pg_root"
fi

node_pids=()
redis_pid=""
cleanup() {
  # A second Ctrl-C must not cut the shutdown short.
  trap '' INT TERM
  trap - EXIT
  say "stopping"
  # Nodes first (they drain and release their leases through Redis), then Redis, then Postgres.
  for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$redis_pid" ] && { kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; }
  as_pg "$(pg_bin_dir)/pg_ctl" -D "$pg_root/data" stop -m fast >/dev/null 2>&1 || true
  say "stopped"
}
trap cleanup INT TERM EXIT

say "building the node ($profile)"
if [ "$profile" = release ]; then cargo build --release -p node --bin node; else cargo build -p node --bin node; fi
node_bin="target/$profile/node"

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

for i in $(seq 1 "$nodes"); do
  port=$((FIRST_NODE_PORT + i - 1))
  IM_NODE_NAME="node$i" IM_LISTEN="127.0.0.1:$port" setsid "$node_bin" >"$root/node$i.log" 2>&1 &
  node_pids+=($!)
done
for i in $(seq 1 "$nodes"); do
  port=$((FIRST_NODE_PORT + i - 1))
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 || { say "node$i did not become ready; see $root/node$i.log"; exit 1; }
done

say "cluster ready"
for i in $(seq 1 "$nodes"); do
  port=$((FIRST_NODE_PORT + i - 1))
  echo "  node$i  http://127.0.0.1:$port   ws://127.0.0.1:$port/v1/ws   http://127.0.0.1:$port/metrics"
done
all_nodes=$(for i in $(seq 1 "$nodes"); do printf 'http://127.0.0.1:%s,' $((FIRST_NODE_PORT + i - 1)); done)
echo "  web app http://127.0.0.1:$FIRST_NODE_PORT/?nodes=${all_nodes%,}"
echo "  redis   redis://127.0.0.1:$REDIS_PORT      postgres  host=127.0.0.1 port=$PG_PORT user=im dbname=im"
echo "  logs    $root/*.log          Ctrl-C stops everything"
wait
