#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and development, from Debian's packages.
#
#   .ci/postgres.sh [start] [DIR]   install postgresql if missing, start a cluster under DIR
#                                   (default var/postgres), create database `candor`, print the URL
#   .ci/postgres.sh stop [DIR]      stop that cluster (its files stay; start again reuses them)
#   .ci/postgres.sh url [DIR]       print the URL of a running cluster
#
# Idempotent: a second start finds the cluster running and only prints the URL. The cluster listens
# on 127.0.0.1 only (port: CANDOR_PG_PORT, default 55432), trusts local connections (it is a test
# server: never put real data in it) and runs with fsync off for speed. As root, the server runs as
# the `postgres` user (initdb refuses root). Use it as:
#
#   eval "$(.ci/postgres.sh)"      # exports CANDOR_TEST_POSTGRES_URL
#
# stdout carries only the export line; progress goes to stderr.
set -euo pipefail

cmd=start
case "${1:-}" in
start | stop | url) cmd=$1; shift ;;
esac
DIR_GIVEN=${1:-}
DIR=${1:-var/postgres}
PORT=${CANDOR_PG_PORT:-55432}
DB=${CANDOR_PG_DB:-candor}

log() { echo "postgres.sh: $*" >&2; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

find_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

BIN=$(find_bin || true)
if [ -z "$BIN" ]; then
    [ "$cmd" = start ] || { log "postgresql is not installed"; exit 1; }
    if [ "$(id -u)" -ne 0 ]; then
        log "postgresql is not installed and installing needs root: apt-get install postgresql"
        exit 1
    fi
    log "installing Debian's postgresql (apt-get update first)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN=$(find_bin) || { log "postgresql installed but no initdb found"; exit 1; }
fi

# Run a PostgreSQL binary as the cluster's owner.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    OWNER=postgres
    as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

# A checkout under /root (0700) is out of the postgres user's reach: without an explicit DIR,
# fall back to a folder under /tmp named after the default one.
if [ -z "$DIR_GIVEN" ] && ! as_owner test -x "$(dirname "$DIR")"; then
    rmdir "$DIR" 2>/dev/null || true
    DIR=${TMPDIR:-/tmp}/candor-postgres-$(printf '%s' "$DIR" | sha256sum | cut -c1-12)
    log "$OWNER cannot reach the default folder; using $DIR"
    mkdir -p "$DIR"
fi
DATA=$DIR/data
SOCK=$DIR/socket
if [ -f "$DIR/port" ]; then PORT=$(cat "$DIR/port"); fi
URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"

running() { as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

case "$cmd" in
stop)
    if [ -d "$DATA" ] && running; then
        as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >&2
    else
        log "no cluster running in $DIR"
    fi
    exit 0
    ;;
url)
    running || { log "no cluster running in $DIR (start it with: .ci/postgres.sh start $DIR)"; exit 1; }
    echo "export CANDOR_TEST_POSTGRES_URL=$URL"
    exit 0
    ;;
esac

chown "$OWNER" "$DIR"
if ! as_owner test -w "$DIR"; then
    log "$OWNER cannot write to $DIR (a parent folder is not traversable?): pick another DIR"
    exit 1
fi
mkdir -p "$SOCK"
chown "$OWNER" "$SOCK"

if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initialising a cluster in $DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
fi

if ! running; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        log "port $PORT on 127.0.0.1 is taken by another server: set CANDOR_PG_PORT"
        exit 1
    fi
    log "starting on 127.0.0.1:$PORT (log: $DIR/server.log)"
    as_owner "$BIN/pg_ctl" start -D "$DATA" -w -t 60 -l "$DIR/server.log" \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -k $SOCK -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >&2 || { tail -n 20 "$DIR/server.log" >&2; exit 1; }
    echo "$PORT" >"$DIR/port"
fi

psql_() { as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    log "creating database $DB"
    psql_ -d postgres -c "CREATE DATABASE \"$DB\"" >&2
fi

echo "export CANDOR_TEST_POSTGRES_URL=$URL"
