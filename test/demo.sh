#!/usr/bin/env bash
# `make demo`: set everything up, start a local PostgreSQL with tokenstore
# preloaded (as the postgres OS user, in its own folder, on a private port),
# and run a short session that shows each function.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh

BIN=/usr/lib/postgresql/15/bin
DIR=${TOKENSTORE_DEMO_DIR:-/var/tmp/tokenstore-demo}
PORT=${TOKENSTORE_DEMO_PORT:-54329}
as_postgres() { runuser -u postgres -- "$@"; }

if [ ! -f "$DIR/data/PG_VERSION" ]; then
	mkdir -p "$DIR"
	chown postgres: "$DIR"
	as_postgres "$BIN/initdb" -D "$DIR/data" -U postgres -A trust >/dev/null
	cat >>"$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'tokenstore'
CONF
fi

# (Re)start so that the server runs the build just installed.
if as_postgres "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w -m fast restart -l "$DIR/server.log" >/dev/null
else
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w start -l "$DIR/server.log" >/dev/null
fi

psql_demo() { as_postgres "$BIN/psql" -X -h "$DIR" -p "$PORT" -U postgres "$@"; }
# A database of the demo's own, with the extension as this build installs it.
psql_demo -q -d postgres -c 'DROP DATABASE IF EXISTS tokenstore_demo' -c 'CREATE DATABASE tokenstore_demo'
psql_demo -q -d tokenstore_demo -c 'CREATE EXTENSION tokenstore'
psql_demo -q -d tokenstore_demo -v ON_ERROR_STOP=1 -e -f test/demo.sql

cat <<MSG

tokenstore is running on a local server (socket folder $DIR, port $PORT).
  connect:  runuser -u postgres -- $BIN/psql -h $DIR -p $PORT -U postgres tokenstore_demo
  stop:     runuser -u postgres -- $BIN/pg_ctl -D $DIR/data stop
MSG
