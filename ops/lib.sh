# Shared shell functions for the ops scripts. Sourced, not run.

# Prints a message to stderr.
say() { printf '[im] %s\n' "$*" >&2; }

# Installs (as root, via apt) or asks for the system packages the cluster needs: redis-server (Debian's is built
# with TLS, which the suite's tls:: tests use) and Postgres; openssl makes the tests' certificates.
ensure_system_deps() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    missing+=(postgresql)
  fi
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # The Debian package starts its own cluster and server; ours run on their own ports, so stop those.
    if command -v service >/dev/null 2>&1; then
      service redis-server stop >/dev/null 2>&1 || true
      service postgresql stop >/dev/null 2>&1 || true
    fi
  else
    say "missing: ${missing[*]}. Install them, e.g.: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
}

# The newest Postgres server binary folder.
pg_bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] || { say "no Postgres binaries under /usr/lib/postgresql"; exit 1; }
  echo "$dir"
}

# Runs a command as the postgres user when we are root (Postgres refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# The pinned Autobahn|Testsuite runner (PyPI `kosoku`), in a virtualenv under target/ (the conformance test finds
# it there).
KOSOKU_VERSION=0.1.0
ensure_kosoku() {
  local venv=target/kosoku-venv
  if [ -x "$venv/bin/kosoku" ] && "$venv/bin/pip" show kosoku 2>/dev/null | grep -q "^Version: $KOSOKU_VERSION$"; then
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing python3-venv (apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
  fi
  say "installing kosoku $KOSOKU_VERSION into $venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kosoku==$KOSOKU_VERSION"
}

# The S3-compatible server the media tests store into (tests/src/s3.rs): s3s-fs from crates.io, a real S3
# implementation (SigV4, multipart uploads) over a folder, built once into target/s3s-fs where the harness finds it
# (a few minutes on two cores; a debug build: the tests move a few MiB, and optimising it would cost CI several
# more minutes). Pinned: 0.14.1 is the newest whose rust-version this toolchain meets.
S3S_FS_VERSION=0.14.1
ensure_s3s_fs() {
  local root=target/s3s-fs
  if [ -x "$root/bin/s3s-fs" ] && [ "$("$root/bin/s3s-fs" --version 2>/dev/null)" = "s3s-fs $S3S_FS_VERSION" ]; then
    return 0
  fi
  say "installing s3s-fs $S3S_FS_VERSION into $root (cargo install)"
  mkdir -p target
  cargo install --quiet --debug --locked --features binary --version "$S3S_FS_VERSION" --root "$root" s3s-fs
}

# Installs (as root, via apt) the tools ops/check-ops.sh and ops/cluster.sh --prometheus need: promtool and
# prometheus (Debian package prometheus), amtool (prometheus-alertmanager, to check ops/alertmanager), haproxy (to
# check ops/haproxy/haproxy.cfg) and python3-venv.
ensure_ops_deps() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packages start their own services where they can; ours run on their own ports, so stop those.
    if command -v service >/dev/null 2>&1; then
      service prometheus stop >/dev/null 2>&1 || true
      service haproxy stop >/dev/null 2>&1 || true
      service prometheus-alertmanager stop >/dev/null 2>&1 || true
    fi
  else
    say "missing: ${missing[*]}. Install them, e.g.: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
}

# --- The local cluster's nodes (ops/cluster.sh starts them, ops/rolling-restart.sh replaces them). ---------------
# Both read the settings cluster.sh saves in .local/cluster.env: root, node_bin, FIRST_NODE_PORT, FIRST_ADMIN_PORT
# and the IM_* variables every node shares. Node i listens for clients on FIRST_NODE_PORT + i - 1 and serves
# /metrics, /healthz and /readyz on its admin port FIRST_ADMIN_PORT + i - 1.

# True while process $1 exists and is not a zombie (an exited child its parent has not reaped yet).
pid_running() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# True when nothing accepts connections on 127.0.0.1:$1.
port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts local node $1 (1, 2, ...) in the background, appending to its log, and records its pid.
start_local_node() {
  local i="$1" port=$((FIRST_NODE_PORT + $1 - 1)) admin=$((FIRST_ADMIN_PORT + $1 - 1))
  # setsid: a terminal's Ctrl-C reaches only the script, which then stops things in order.
  IM_NODE_NAME="node$i" IM_LISTEN="127.0.0.1:$port" IM_ADMIN_LISTEN="127.0.0.1:$admin" \
    setsid "$node_bin" >>"$root/node$i.log" 2>&1 &
  echo $! >"$root/node$i.pid"
}

# Waits up to $2 seconds (default 30) for local node $1 to answer /readyz (on its admin port) with 200.
wait_local_node_ready() {
  local i="$1" limit="${2:-30}" admin=$((FIRST_ADMIN_PORT + $1 - 1)) tries
  for tries in $(seq 1 $((limit * 10))); do
    pid_running "$(cat "$root/node$i.pid")" || { say "node$i exited; see $root/node$i.log"; return 1; }
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "node$i did not become ready in ${limit}s; see $root/node$i.log"
  return 1
}

# Sends SIGTERM to local node $1 (it drains) and waits up to $2 seconds for it to exit.
stop_local_node() {
  local i="$1" limit="${2:-20}" pid tries
  pid=$(cat "$root/node$i.pid" 2>/dev/null) || return 0
  pid_running "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for tries in $(seq 1 $((limit * 10))); do
    pid_running "$pid" || return 0
    sleep 0.1
  done
  say "node$i (pid $pid) still running ${limit}s after SIGTERM"
  return 1
}
