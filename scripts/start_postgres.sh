#!/usr/bin/env bash
# A throw-away PostgreSQL server from Debian's packages, for the Dagster-on-PostgreSQL tests (and local trials).
#
#   scripts/start_postgres.sh install          apt-get install postgresql when no initdb/pg_ctl is found
#   scripts/start_postgres.sh bindir           print the folder holding initdb/pg_ctl (fails if none)
#   scripts/start_postgres.sh start DIR PORT   initdb into DIR/data (trust auth, local only), start on
#                                              127.0.0.1:PORT with its socket in DIR, create database `dagster`;
#                                              prints the user name to connect as
#   scripts/start_postgres.sh stop DIR         stop the server started in DIR (fast shutdown)
#
# As root the server runs as the `postgres` user (initdb refuses root), so DIR must be a folder that user can
# reach (e.g. under /tmp, not under a 0700 home or pytest folder); DIR is chown'ed to it.
set -euo pipefail

bindir() {
  local d
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  return 1
}

as_server_user() {
  if [ "$(id -u)" = "0" ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd="${1:-}"
case "$cmd" in
  install)
    if bindir >/dev/null; then
      echo "postgresql present: $(bindir)"
      exit 0
    fi
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq postgresql >/dev/null
    # the Debian package starts a cluster on 5432 where an init system runs; the tests use their own
    echo "postgresql installed: $(bindir)"
    ;;
  bindir)
    bindir || { echo "no PostgreSQL server binaries (initdb, pg_ctl); run: $0 install" >&2; exit 1; }
    ;;
  start)
    dir="${2:?usage: $0 start DIR PORT}"
    port="${3:?usage: $0 start DIR PORT}"
    bin="$(bindir)" || { echo "no PostgreSQL server binaries; run: $0 install" >&2; exit 1; }
    mkdir -p "$dir"
    user="$(id -un)"
    if [ "$(id -u)" = "0" ]; then
      chown postgres: "$dir"
      user=postgres
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_server_user "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    if ! as_server_user "$bin/psql" -h 127.0.0.1 -p "$port" -U "$user" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'dagster'" | grep -q 1; then
      as_server_user "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" dagster
    fi
    echo "$user"
    ;;
  stop)
    dir="${2:?usage: $0 stop DIR}"
    bin="$(bindir)"
    as_server_user "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
