#!/usr/bin/env bash
# `make demo`: set everything up, start a local PostgreSQL with tokenstore
# preloaded (as the postgres OS user, in its own folder, on a private port)
# and a local redis-server it mirrors tokens to, and run a short session
# that shows each function and a token checked in Redis.  Safe to run again:
# the server, its Redis and the database tokenstore_demo (with whatever you
# added to it) are kept; the demo's own users start over.  If it fails, it
# stops what it started.  The checkout may be one the postgres OS user cannot
# read (a clone under /root): the servers and psql run from the demo folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash test/setup.sh "${PG_MAJOR:-15}"

. test/server.sh
DIR=${TOKENSTORE_DEMO_DIR:-/var/tmp/tokenstore-demo}
PORT=${TOKENSTORE_DEMO_PORT:-54329}
REDIS_PORT=${TOKENSTORE_DEMO_REDIS_PORT:-54330}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

started_redis=0
started_pg=0
stop_on_failure() {
	local status=$?
	((status == 0)) && return
	((started_pg)) && as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1
	((started_redis)) && rcli shutdown nosave >/dev/null 2>&1
	echo "demo: failed; stopped what it had started (logs: $DIR/server.log, $DIR/redis/redis.log)" >&2
	return "$status"
}
trap stop_on_failure EXIT
mkdir -p "$DIR"
chown postgres: "$DIR"
cd "$DIR"

# The Redis of the demo: started once, and kept, like the server.
mkdir -p "$DIR/redis"
chown postgres: "$DIR" "$DIR/redis"
if [ "$(rcli ping 2>/dev/null)" != PONG ]; then
	as_postgres redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" \
		--save '' --appendonly no --daemonize yes --pidfile "$DIR/redis/redis.pid" \
		--logfile "$DIR/redis/redis.log"
	started_redis=1
	for _ in $(seq 1 50); do
		[ "$(rcli ping 2>/dev/null)" = PONG ] && break
		sleep 0.1
	done
elif [ ! -s "$DIR/redis/redis.pid" ]; then
	echo "demo: port $REDIS_PORT answers but is not the demo's Redis; set TOKENSTORE_DEMO_REDIS_PORT" >&2
	exit 1
fi

if [ ! -f "$DIR/data/PG_VERSION" ]; then
	new_cluster
fi
grep -q '^tokenstore.redis_url' "$DIR/data/postgresql.conf" ||
	echo "tokenstore.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'" >>"$DIR/data/postgresql.conf"

# (Re)start so that the server runs the build just installed.
if as_postgres "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w -m fast restart -l "$DIR/server.log" >/dev/null
else
	started_pg=1
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w start -l "$DIR/server.log" >/dev/null
fi

psql_demo() { as_postgres "$BIN/psql" -X -h "$DIR" -p "$PORT" -U postgres "$@"; }
# A database of the demo's own, kept from run to run, with the extension as
# this build installs it.
if [ "$(psql_demo -d postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = 'tokenstore_demo'")" = 0 ]; then
	psql_demo -q -d postgres -c 'CREATE DATABASE tokenstore_demo'
fi
psql_demo -q -d tokenstore_demo -c 'CREATE EXTENSION IF NOT EXISTS tokenstore' \
	-c 'ALTER EXTENSION tokenstore UPDATE'
psql_demo -q -d tokenstore_demo -v ON_ERROR_STOP=1 -e -f - <"$ROOT/test/demo.sql"

# A service outside PostgreSQL checks a token with one GET on its hash.
demo_sql() { psql_demo -d tokenstore_demo -Atc "$1"; }
for _ in $(seq 1 100); do
	[ "$(demo_sql 'SELECT state FROM tokenstore.redis_stats')" = up ] && break
	sleep 0.1
done
token=$(demo_sql "SELECT tokenstore.token_make('carol', '{\"device\": \"kiosk\"}', ttl => '1 hour')")
key="tokenstore:tokenstore_demo:token:$(printf %s "$token" | sha256sum | cut -c1-64)"
wait_key() {
	for _ in $(seq 1 50); do
		[ "$(rcli EXISTS "$key")" = "$1" ] && return
		sleep 0.1
	done
}
wait_key 1
echo
echo "-- the Redis mirror: a token made in PostgreSQL, checked by its hash"
echo "\$ redis-cli GET tokenstore:tokenstore_demo:token:\$(printf %s \"\$TOKEN\" | sha256sum | cut -c1-64)"
rcli GET "$key"
echo "\$ redis-cli PTTL …   (ms until it expires)"
rcli PTTL "$key"
demo_sql "SELECT tokenstore.token_delete('$token')" >/dev/null
wait_key 0
echo "after token_delete in PostgreSQL, EXISTS: $(rcli EXISTS "$key")"

cat <<MSG

tokenstore is running on a local server (socket folder $DIR, port $PORT).
  connect:  runuser -u postgres -- $BIN/psql -h $DIR -p $PORT -U postgres tokenstore_demo
  redis:    redis-cli -p $REDIS_PORT --scan --pattern 'tokenstore:*'
  stop:     runuser -u postgres -- $BIN/pg_ctl -D $DIR/data stop
            redis-cli -p $REDIS_PORT shutdown nosave
MSG
