# Shared shell functions for the ops scripts. Sourced, not run.

# Prints a message to stderr.
say() { printf '[im] %s\n' "$*" >&2; }

# Installs (as root, via apt) or asks for the system packages the cluster needs: redis-server and Postgres.
ensure_system_deps() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    missing+=(postgresql)
  fi
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
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

# Installs (as root, via apt) the tools ops/check-ops.sh and ops/cluster.sh --prometheus need: promtool and
# prometheus (Debian package prometheus), haproxy (to check ops/haproxy/haproxy.cfg) and python3-venv.
ensure_ops_deps() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
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
    fi
  else
    say "missing: ${missing[*]}. Install them, e.g.: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
}
