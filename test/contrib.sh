#!/usr/bin/env bash
# The reference adapters' suites (contrib/*/test.sh), each against its
# framework's store contract, on a throwaway server of the host's
# PostgreSQL with tokenstore as `make install` left it, in a database where
# the application's role has the README's grants and nothing more.  Run as
# root (the adapters install their toolchains); `make test` runs it after
# the TAP suite of the host's major.  One line per adapter, "test NAME ...
# ok" or "... FAILED" (with the end of its output), then "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
. test/server.sh
DIR=$(mktemp -d /tmp/tokenstore-contrib.XXXXXX)
PORT=${TOKENSTORE_CONTRIB_PORT:-54396}
chown postgres: "$DIR"
trap 'stop_server; rm -rf "$DIR"' EXIT

new_cluster
as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w -l "$DIR/server.log" start >/dev/null ||
	{ echo "contrib: the server did not start"; tail -n 20 "$DIR/server.log"; exit 1; }
sql -c 'CREATE DATABASE contrib' -c 'CREATE ROLE app LOGIN' >/dev/null &&
	sql -d contrib -c 'CREATE EXTENSION tokenstore' \
		-c 'GRANT USAGE ON SCHEMA tokenstore TO app' \
		-c 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app' >/dev/null ||
	exit 1

passed=0
failed=0
for t in contrib/*/test.sh; do
	name=${t%/test.sh}
	log=$DIR/${name#contrib/}.log
	if PGHOST=$DIR PGPORT=$PORT PGDATABASE=contrib PGUSER=app bash "$t" >"$log" 2>&1; then
		echo "test $name ... ok"
		passed=$((passed + 1))
	else
		echo "test $name ... FAILED"
		tail -n 60 "$log"
		failed=$((failed + 1))
	fi
done
echo "$passed passed, $failed failed"
((failed == 0))
