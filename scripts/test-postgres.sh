#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the state store's tests (crates/sidecar-store) and CI.
#
#   scripts/test-postgres.sh start   # initdb in a temp folder, start on 127.0.0.1:<free port>,
#                                    # print the URL on stdout (logs go to stderr)
#   scripts/test-postgres.sh url     # print the URL of the running cluster
#   scripts/test-postgres.sh stop    # stop it and remove its folder (nothing running: no-op)
#   scripts/test-postgres.sh pause   # stop the server, keep its folder and port ("PostgreSQL down")
#   scripts/test-postgres.sh resume  # start it again on the same port with the same data
#
#   export SIDECAR_TEST_PG_URL="$(scripts/test-postgres.sh start)"
#
# Binaries: Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin, newest version
# found), or PG_BIN=/path/to/bin. PostgreSQL refuses to run as root: as root the cluster runs
# as the `postgres` user the Debian package creates (or a system user created here). Trust
# authentication, listening on 127.0.0.1 only, fsync off: for tests, never for data.
# The state (folder, port, URL) is kept in target/test-postgres.env of this checkout, so one
# checkout has at most one cluster and `stop` finds it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$ROOT/target/test-postgres.env"

log() { echo "test-postgres: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    echo "$PG_BIN"
    return
  fi
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] || continue
    best="$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -1)"
  done
  [ -n "$best" ] || die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (install Debian's \`postgresql\` package, or set PG_BIN)"
  echo "$best"
}

# As root: the user the server runs as. Otherwise: ourselves.
run_user() {
  if [ "$(id -u)" -ne 0 ]; then
    id -un
    return
  fi
  if id postgres >/dev/null 2>&1; then
    echo postgres
    return
  fi
  if ! id alipay-sidecar-pg >/dev/null 2>&1; then
    log "creating system user alipay-sidecar-pg (PostgreSQL refuses to run as root)"
    useradd --system --no-create-home --shell /usr/sbin/nologin alipay-sidecar-pg
  fi
  echo alipay-sidecar-pg
}

as_user() {
  local user="$1"
  shift
  if [ "$(id -un)" = "$user" ]; then
    "$@"
  else
    runuser -u "$user" -- "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
  [ -f "$STATE" ] || return 1
  # shellcheck disable=SC1090
  . "$STATE"
  as_user "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

cmd_start() {
  if running; then
    log "already running ($PG_DIR)"
    echo "$PG_URL"
    return
  fi
  [ -f "$STATE" ] && cmd_stop
  local bin user dir port url attempt
  bin="$(find_bin)"
  user="$(run_user)"
  dir="$(mktemp -d "${TMPDIR:-/tmp}/alipay-sidecar-pg.XXXXXX")"
  chmod 0755 "$dir"
  chown "$user" "$dir"
  mkdir -p "$(dirname "$STATE")"
  log "initdb in $dir as $user ($bin)"
  as_user "$user" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --no-locale --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; die "initdb failed"; }
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    # Another process may take the port between free_port and the server's bind: retry.
    if as_user "$user" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB" \
      start >&2; then
      url="postgres://postgres@127.0.0.1:$port/postgres"
      cat >"$STATE" <<EOF
PG_DIR='$dir'
PG_BIN='$bin'
PG_USER='$user'
PG_PORT='$port'
PG_URL='$url'
EOF
      log "running on 127.0.0.1:$port"
      echo "$url"
      return
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -5 "$dir/server.log" >&2 || true
  done
  rm -rf "$dir"
  die "PostgreSQL did not start"
}

cmd_stop() {
  [ -f "$STATE" ] || { log "not running"; return; }
  # shellcheck disable=SC1090
  . "$STATE"
  if [ -d "$PG_DIR/data" ]; then
    as_user "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >&2 || true
  fi
  case "$PG_DIR" in
    */alipay-sidecar-pg.*) rm -rf "$PG_DIR" ;;
  esac
  rm -f "$STATE"
  log "stopped and removed $PG_DIR"
}

cmd_pause() {
  [ -f "$STATE" ] || die "not started (scripts/test-postgres.sh start)"
  # shellcheck disable=SC1090
  . "$STATE"
  as_user "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >&2
  log "paused (stopped, data kept in $PG_DIR, port $PG_PORT)"
}

cmd_resume() {
  [ -f "$STATE" ] || die "not started (scripts/test-postgres.sh start)"
  # shellcheck disable=SC1090
  . "$STATE"
  as_user "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB" \
    start >&2 || { tail -5 "$PG_DIR/server.log" >&2; die "PostgreSQL did not start again on port $PG_PORT"; }
  log "resumed on 127.0.0.1:$PG_PORT"
}

cmd_url() {
  running || die "not running (scripts/test-postgres.sh start)"
  echo "$PG_URL"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  pause) cmd_pause ;;
  resume) cmd_resume ;;
  *) echo "usage: $0 start|stop|url|pause|resume" >&2; exit 2 ;;
esac
