#!/usr/bin/env bash
# The benchmark suite in one command: starts a throwaway cluster (Redis, Postgres, two nodes with benchmark flags),
# runs every scenario of the suite with imbench, measures the limits of the box (bare WebSocket echo, Redis PUBLISH,
# Postgres COPY), runs the peer (Socket.IO 4 + Redis adapter) on the same dm and group workloads, writes JSON, summary.md and
# SVG plots into one results folder, and stops everything it started.
#
#   bash benchmarks/run.sh [--quick | --smoke] [--only idle,dm,...] [--no-peer] [--no-limits] [--debug] [--out DIR]
#
#   (default)  benchmarks/scenarios/full/   dm ladder with 20 s windows, idle up to one load process's fd limit
#   --quick    benchmarks/scenarios/quick/  a couple of minutes
#   --smoke    benchmarks/scenarios/smoke/  a few seconds, 20 users; ops/test.sh runs it so the suite never rots
#   --only     just these scenarios of the suite (comma-separated names)
#   --redis-cluster  our nodes use a 3-master Redis Cluster (sharded pub/sub) instead of one Redis
#   --port-offset N  add N to every port below, so a second run can share the box with one already running
#
#   IM_BENCH_PG_SETTINGS  extra server settings for the throwaway Postgres, for experiments and profiles, e.g.
#                         "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on"
#   IM_* node settings in the environment reach the nodes (e.g. IM_WRITERS, IM_WRITER_FLUSH_US).
#
# idle steps past what two nodes may hold (~19,000 connections each: 20,000 file descriptors per process) run on as
# many nodes as needed, and imbench spreads the clients over several load processes.
#
# Ports (documented in benchmarks/RESULTS.md): ours Redis 16381, Postgres 15432, nodes 7101 and 7102 with their
# admin listeners (/metrics, /readyz) 100 above, 7201 and 7202; echo 7190; the peer per the workload file: Redis
# 16380, servers 3101 and 3102.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

suite=full
peer=1
limits=1
profile=release
out=""
only=""
redis_cluster=0
port_offset=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) suite=quick; shift ;;
    --smoke) suite=smoke; shift ;;
    --no-peer) peer=0; shift ;;
    --no-limits) limits=0; shift ;;
    --debug) profile=debug; shift ;;
    --only) only=",$2,"; shift 2 ;;
    --redis-cluster) redis_cluster=1; shift ;;
    --port-offset) port_offset="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) say "unknown option $1"; exit 2 ;;
  esac
done

REDIS_PORT=$((16381 + port_offset))
PG_PORT=$((15432 + port_offset))
NODE_BASE=$((7100 + port_offset))
NODE_PORTS=($((NODE_BASE + 1)) $((NODE_BASE + 2)))
ECHO_PORT=$((7190 + port_offset))
PEER_REDIS_PORT=$((16380 + port_offset))
PEER_PORTS=($((3101 + port_offset)) $((3102 + port_offset)))

scenarios="benchmarks/scenarios/$suite"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
[ -n "$out" ] || out="benchmarks/results/$suite-$stamp"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

ensure_system_deps
work="$(mktemp -d /tmp/imbench.XXXXXX)"
[ "$(id -u)" -eq 0 ] && chown postgres: "$work" && chmod 755 "$work"
pg="$(pg_bin_dir)"

# Everything started here is stopped by PID on exit, whatever happens.
node_pids=()
other_pids=()
pg_started=0
stop_nodes() {
  for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  node_pids=()
}
cleanup() {
  trap '' INT TERM
  trap - EXIT
  stop_nodes
  for pid in "${other_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${other_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ "$pg_started" -eq 1 ] && as_pg "$pg/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null 2>&1 || true
  # The servers' logs stay with the results (a node that died mid-run says why there).
  mkdir -p "$out/logs" && cp "$work"/*.log "$out/logs/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

say "building node and imbench ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --quiet -p node --bin node -p benchmarks --bin imbench
else
  cargo build --quiet -p node --bin node -p benchmarks --bin imbench
fi
node_bin="target/$profile/node"
imbench="target/$profile/imbench"

redis_watch=""
if [ "$redis_cluster" = 1 ] && [ "$limits" = 1 ]; then
  say "--redis-cluster: skipping the limits of the box (they measure one Redis server)"
  limits=0
fi
if [ "$redis_cluster" = 1 ]; then
  CLUSTER_PORTS=($((16391 + port_offset)) $((16392 + port_offset)) $((16393 + port_offset)))
  say "starting a 3-master Redis Cluster on 127.0.0.1:${CLUSTER_PORTS[*]} and Postgres on 127.0.0.1:$PG_PORT (throwaway, in $work)"
  for port in "${CLUSTER_PORTS[@]}"; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --maxclients 1000 \
      --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf" --cluster-node-timeout 2000 \
      >"$work/redis-$port.log" 2>&1 &
    other_pids+=("$!")
    redis_watch+="--watch redis-$port=$! "
    redis_pid=$!
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.05; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 200); do
    redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER INFO | grep -q cluster_state:ok && break
    sleep 0.1
  done
  REDIS_URL="redis-cluster://127.0.0.1:${CLUSTER_PORTS[0]}?node=127.0.0.1:${CLUSTER_PORTS[1]}&node=127.0.0.1:${CLUSTER_PORTS[2]}"
else
  say "starting Redis on 127.0.0.1:$REDIS_PORT and Postgres on 127.0.0.1:$PG_PORT (throwaway, in $work)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --maxclients 1000 \
    >"$work/redis.log" 2>&1 &
  redis_pid=$!
  other_pids+=("$redis_pid")
  redis_watch="--watch redis=$redis_pid"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi
# fsync and synchronous_commit stay at their defaults: "ack after commit" is what we measure.
as_pg "$pg/initdb" --no-sync -D "$work/pg" -A trust -U im -E UTF8 >/dev/null
as_pg "$pg/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w start \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $work -c max_connections=200 ${IM_BENCH_PG_SETTINGS:-}" >/dev/null
pg_started=1
pg_pid="$(head -n 1 "$work/pg/postmaster.pid")"
psql -h 127.0.0.1 -p "$PG_PORT" -U im -d postgres -qc "CREATE DATABASE im" >/dev/null

secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Benchmark flags: no per-connection send limit (the load is the point), cheap Argon2 so bulk registration takes
# seconds, no friendship rule (the workload has no contact lists, like the peer), a member cap that admits the
# 10,000-member group of `group-large` (the default cap stays 2,000), warnings only in the logs.
start_nodes() {
  local i port
  for i in "${!NODE_PORTS[@]}"; do
    port="${NODE_PORTS[$i]}"
    IM_TOKEN_SECRET="$secret" IM_LOG=warn "$node_bin" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 100))" --node-name "bench$((i + 1))" \
      --redis-url "$REDIS_URL" \
      --postgres-url "host=127.0.0.1 port=$PG_PORT user=im dbname=im" \
      --send-rate 1000000 --send-burst 1000000 \
      --argon2-memory-kib 64 --argon2-iterations 1 --require-friendship false --group-consent false \
      --group-member-cap 10000 \
      >>"$work/node$((i + 1)).log" 2>&1 &
    node_pids+=($!)
  done
  for port in "${NODE_PORTS[@]}"; do
    for _ in $(seq 1 150); do
      curl -fs "http://127.0.0.1:$((port + 100))/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:$((port + 100))/readyz" >/dev/null 2>&1 || { say "node on $port not ready"; tail -n 20 "$work"/node*.log; exit 1; }
  done
}
node_args() {
  local i
  for i in "${!NODE_PORTS[@]}"; do
    printf -- '--node 127.0.0.1:%s=%s --admin 127.0.0.1:%s ' "${NODE_PORTS[$i]}" "${node_pids[$i]}" "$((NODE_PORTS[$i] + 100))"
  done
  printf -- '%s --watch postgres=%s' "$redis_watch" "$pg_pid"
}

# Every scenario starts on fresh node processes, so RSS and caches do not carry over.
run_scenario() {
  local file="$1" name step_arg="" tag
  name="$(basename "$file" .json)"
  shift
  [ $# -gt 0 ] && { step_arg="--step $1"; name="$name-step$1"; }
  stop_nodes
  start_nodes
  tag="b$(date +%s%N | tail -c 9)"
  # shellcheck disable=SC2046
  "$imbench" run --scenario "$file" $(node_args) $step_arg --tag "$tag" --out "$out/ours-$name.json"
}

for name in idle connect sync dm dm-contacts group group-large; do
  file="$scenarios/$name.json"
  [ -f "$file" ] || continue
  [ -z "$only" ] || [[ "$only" == *",$name,"* ]] || continue
  if [ "$name" = idle ]; then
    counts=$(python3 -c "import json,sys; print(' '.join(map(str, json.load(open(sys.argv[1]))['users'])))" "$file")
    step=0
    for count in $counts; do
      # At most 19,000 connections per node process, and never fewer than the workload's two nodes.
      needed=$(( (count + 18999) / 19000 ))
      [ "$needed" -lt 2 ] && needed=2
      NODE_PORTS=()
      for k in $(seq 1 "$needed"); do NODE_PORTS+=($((NODE_BASE + k))); done
      run_scenario "$file" "$step"
      step=$((step + 1))
    done
    stop_nodes
    NODE_PORTS=($((NODE_BASE + 1)) $((NODE_BASE + 2)))
  else
    run_scenario "$file"
  fi
done
stop_nodes

[ -z "$only" ] || [[ "$only" == *",limits,"* ]] || limits=0
if [ "$limits" -eq 1 ]; then
  say "limits of the box: bare WebSocket echo, Redis PUBLISH, Postgres COPY"
  echo_seconds=10; copy_rows=300000; publish_n=500000
  [ "$suite" = quick ] && { echo_seconds=5; copy_rows=200000; publish_n=300000; }
  [ "$suite" = smoke ] && { echo_seconds=1; copy_rows=10000; publish_n=20000; }
  "$imbench" echo-server --listen "127.0.0.1:$ECHO_PORT" >"$work/echo.log" 2>&1 &
  echo_pid=$!
  other_pids+=("$echo_pid")
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$ECHO_PORT) 2>/dev/null && break; sleep 0.1; done
  echo_connections=1000
  [ "$suite" = smoke ] && echo_connections=20
  "$imbench" echo-load --target "127.0.0.1:$ECHO_PORT" --connections "$echo_connections" --seconds "$echo_seconds" \
    --out "$out/echo.json"
  # The bare connect rate, with the connect scenario's count and handshakes in flight (its target is a fraction of this).
  read -r connect_n connect_in_flight < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['users'], d.get('concurrency', 100))" "$scenarios/connect.json")
  "$imbench" echo-connect --target "127.0.0.1:$ECHO_PORT" --connections "$connect_n" --in-flight "$connect_in_flight" \
    --out "$out/echo-connect.json"
  kill -TERM "$echo_pid" 2>/dev/null || true

  # PUBLISH with one subscriber on the channel (so Redis really fans out), 100-byte payloads, 50 clients,
  # pipelines of 16: the node also pipelines its publishes.
  redis-cli -p "$REDIS_PORT" SUBSCRIBE im:bench >/dev/null &
  sub_pid=$!
  other_pids+=("$sub_pid")
  payload="$(printf 'x%.0s' $(seq 1 100))"
  publish_line="$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$publish_n" -c 50 -P 16 -q PUBLISH im:bench "$payload" 2>/dev/null | tr '\r' '\n' | grep -a 'requests per second' | tail -n 1)"
  publish_rate="$(echo "$publish_line" | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')"
  kill -TERM "$sub_pid" 2>/dev/null || true

  # COPY into a table shaped like node/migrations/0001_core.sql `messages` (same columns, keys and unique
  # constraints), text format through psql, rows generated beforehand so only the load is timed.
  psql -h 127.0.0.1 -p "$PG_PORT" -U im -d postgres -qc "CREATE DATABASE limits" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U im -d limits -q >/dev/null <<'SQL'
CREATE TABLE messages (
    conv_id bigint NOT NULL, seq bigint NOT NULL, id bigserial NOT NULL UNIQUE, sender bigint NOT NULL,
    sender_device text NOT NULL, cid text NOT NULL, kind text NOT NULL, body text NOT NULL, created_ms bigint NOT NULL,
    PRIMARY KEY (conv_id, seq), UNIQUE (sender, cid));
SQL
  psql -h 127.0.0.1 -p "$PG_PORT" -U im -d limits -qc "\copy (SELECT g % 1000, g, g % 2000, 'bench', g::text || '-c', 'text', repeat('x', 100), 1790000000000 + g FROM generate_series(1, $copy_rows) g) TO '$work/rows.txt'" >/dev/null
  copy_start=$(date +%s%N)
  psql -h 127.0.0.1 -p "$PG_PORT" -U im -d limits -qc "\copy messages (conv_id, seq, sender, sender_device, cid, kind, body, created_ms) FROM '$work/rows.txt'" >/dev/null
  copy_end=$(date +%s%N)
  copy_rate=$(python3 -c "print(round($copy_rows / (($copy_end - $copy_start) / 1e9)))")
  # The disk's commit ceiling: one fdatasync of an 8 kB write is what every Postgres commit waits for.
  fdatasync_rate=""
  if [ "$suite" != smoke ]; then
    fdatasync_rate="$(cd "$work" && timeout 60 "$pg/pg_test_fsync" -s 1 -f "$work/fsync-probe" 2>/dev/null |
      awk '/fdatasync/ && $2 ~ /^[0-9.]+$/ { print $2; exit }')" || true
  fi
  python3 - "$out/limits.json" "$publish_rate" "$copy_rate" "$copy_rows" "$publish_n" "$fdatasync_rate" <<'PY'
import json, sys
path, publish, copy, rows, n, fdatasync = sys.argv[1:]
json.dump({
    "kind": "limits",
    "redis_publish_per_s": float(publish) if publish else None,
    "redis_command": f"redis-benchmark -n {n} -c 50 -P 16 -q PUBLISH im:bench <100 bytes> (one subscriber)",
    "pg_copy_rows_per_s": int(copy),
    "pg_copy_rows": int(rows),
    "pg_copy_command": "psql \\copy (text format) into a messages-shaped table, fsync on",
    "fdatasync_per_s": float(fdatasync) if fdatasync else None,
    "fdatasync_command": "pg_test_fsync -s 1 (one 8 kB write, fdatasync)",
}, open(path, "w"), indent=2)
PY
  say "  PUBLISH/s $publish_rate, COPY rows/s $copy_rate"
fi

# Our servers are done; the peer gets the machine to itself.
for pid in "${other_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${other_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
other_pids=()
as_pg "$pg/pg_ctl" -D "$work/pg" stop -m fast >/dev/null 2>&1 || true
pg_started=0

[ -z "$only" ] || [[ "$only" == *",peer,"* ]] || [[ "$only" == *",dm,"* ]] || [[ "$only" == *",group,"* ]] || peer=0
# The peer runs the workload's scenarios it implements: dm and group (the ones selected by --only, or both).
peer_scenarios=""
for name in dm group; do
  [ -f "$scenarios/$name.json" ] || continue
  [ -z "$only" ] || [[ "$only" == *",peer,"* ]] || [[ "$only" == *",$name,"* ]] || continue
  peer_scenarios+="$name "
done
if [ "$peer" -eq 1 ] && [ -n "$peer_scenarios" ]; then
  peer_dir=benchmarks/peers/socketio
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    say "peer: Socket.IO 4 + Redis adapter (persists nothing) on $PEER_REDIS_PORT, ${PEER_PORTS[*]}: $peer_scenarios"
    [ -d "$peer_dir/node_modules" ] || (cd "$peer_dir" && npm ci --no-audit --no-fund --silent)
    for name in $peer_scenarios; do
      # Fresh peer processes and Redis per scenario, as for ours.
      redis-server --port "$PEER_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        >>"$work/peer-redis.log" 2>&1 &
      peer_redis_pid=$!
      peer_pids=("$peer_redis_pid")
      for _ in $(seq 1 100); do redis-cli -p "$PEER_REDIS_PORT" PING >/dev/null 2>&1 && break; sleep 0.05; done
      servers=()
      for port in "${PEER_PORTS[@]}"; do
        PORT="$port" REDIS_URL="redis://127.0.0.1:$PEER_REDIS_PORT" node "$peer_dir/server.js" >>"$work/peer-$port.log" 2>&1 &
        peer_pids+=($!)
        servers+=(--server "127.0.0.1:$port=$!")
      done
      other_pids+=("${peer_pids[@]}")
      for port in "${PEER_PORTS[@]}"; do
        for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
      done
      node "$peer_dir/load.js" --scenario "$scenarios/$name.json" "${servers[@]}" \
        --watch "redis=$peer_redis_pid" --out "$out/peer-$name.json"
      for pid in "${peer_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
      for pid in "${peer_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    done
  else
    say "peer skipped: node and npm are needed"
  fi
fi

say "report"
"$imbench" report --dir "$out"
say "results in $out"
