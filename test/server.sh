# shellcheck shell=bash
# Sourced by the demo and the benchmarks: a PostgreSQL server with
# tokenstore preloaded, in $DIR on port $PORT, run as the postgres OS user.
# PG_MAJOR (default 15, bookworm's) picks the PostgreSQL of the host to use.
PG_MAJOR=${PG_MAJOR:-15}
BIN=/usr/lib/postgresql/$PG_MAJOR/bin

as_postgres() { runuser -u postgres -- "$@"; }
sql() { as_postgres "$BIN/psql" -X -q -A -t -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

# new_cluster: initdb in $DIR/data, on $PORT, reached by its socket in $DIR
new_cluster() {
	as_postgres "$BIN/initdb" -D "$DIR/data" -U postgres -A trust >/dev/null
	cat >>"$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'tokenstore'
CONF
}

# start_server CACHE_SIZE [DATA_SIZE]: a new cluster with the benchmarks' settings, started
start_server() {
	new_cluster
	cat >>"$DIR/data/postgresql.conf" <<CONF
tokenstore.max_cached_tokens = $1
tokenstore.max_cached_data = '${2:-32MB}'
tokenstore.sweep_interval = '1h'
shared_buffers = '2GB'
max_connections = 20
CONF
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -w -l "$DIR/server.log" start >/dev/null
}

stop_server() {
	as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
}

# The benchmarks' helpers.
# bench_part [--rows]: the settings of a benchmark that run.sh calls for
# rows of its table (--rows: run.sh has set everything up) or that runs
# alone (then set up first); sets rows_only.
bench_part() {
	rows_only=0
	case "${1:-}" in
	--rows) rows_only=1 ;;
	"") ;;
	*)
		echo "usage: $0 [--rows]" >&2
		exit 2
		;;
	esac
	((rows_only)) || bash test/setup.sh >/dev/null
	RUN_SECONDS=${BENCH_SECONDS:-10}
	CLIENTS=${BENCH_CLIENTS:-4}
	ROUNDS=${BENCH_ROUNDS:-3}
}
# quiesce: write back uses and dead rows, so that no measurement pays for the last one
quiesce() {
	sql -c "SELECT tokenstore.token_flush()" -c "VACUUM (ANALYZE)" -c "CHECKPOINT" >/dev/null
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
