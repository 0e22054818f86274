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
