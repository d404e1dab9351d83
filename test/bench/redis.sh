#!/usr/bin/env bash
# The Redis fan-out benchmark.  Starts a private PostgreSQL server with
# tokenstore preloaded and a private redis-server, and measures side by side
# in one run:
#   - token_make throughput with the fan-out off (tokenstore.redis_url = '')
#     and on, in interleaved rounds (off, on, off, on, ...; the table shows
#     the median of each), and their ratio;
#   - the lag from commit to visible in Redis, p50 and p99, while token_make
#     runs at full speed in the background: test/bench/redis_lag.c (compiled
#     here) makes a token, then polls EXISTS on its key until it is there.
# Nothing here is asserted: the targets are printed next to the results.
#
# Run alone: `bash test/bench/redis.sh` prints a table of its own.
# `bash test/bench/redis.sh --rows` (as test/bench/run.sh calls it) prints
# only the rows, to continue the table run.sh has just printed.
#
# Settings (environment), as in run.sh: BENCH_SECONDS (per pgbench run,
# default 10; the lag probe runs for this long too, but at least 10 s),
# BENCH_CLIENTS (default 4), BENCH_ROUNDS (off/on rounds, default 3),
# BENCH_PORT (default 54398: this script uses BENCH_PORT + 1 for PostgreSQL
# and BENCH_PORT + 2 for Redis, so that it can run beside run.sh's server).
set -euo pipefail
cd "$(dirname "$0")/../.."

. test/server.sh
bench_part "$@"
PORT=$((${BENCH_PORT:-54398} + 1))
REDIS_PORT=$((${BENCH_PORT:-54398} + 2))
LAG_SECONDS=$((RUN_SECONDS > 10 ? RUN_SECONDS : 10))
LAG_SAMPLES=1000 # at most; one every 20 ms, so about 300 in 10 s
LAG_INTERVAL_MS=20
DIR=$(mktemp -d /tmp/tokenstore-redis-bench.XXXXXX)
chown postgres: "$DIR"
cp test/bench/token_make.sql "$DIR/"

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
cleanup() {
	stop_server
	# only the redis-server this script started, by the pid it wrote
	local pid
	pid=$(cat "$DIR/redis/redis.pid" 2>/dev/null || true)
	if [[ $pid =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null; then
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -rf "$DIR"
}
trap cleanup EXIT

# the lag probe, compiled first: no server is started if it does not build
gcc -O2 -Wall -Wextra -I"$("$BIN/pg_config" --includedir)" -o "$DIR/redis_lag" \
	test/bench/redis_lag.c -lpq -lhiredis -lcrypto

# Redis: loopback TCP on a private port, no persistence, as postgres
if rcli ping >/dev/null 2>&1; then
	echo "redis.sh: something already answers on port $REDIS_PORT; set BENCH_PORT" >&2
	exit 1
fi
mkdir "$DIR/redis"
chown postgres: "$DIR/redis"
as_postgres redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" \
	--save '' --appendonly no --daemonize yes --pidfile "$DIR/redis/redis.pid" \
	--logfile "$DIR/redis/redis.log"
for _ in $(seq 1 100); do
	[ "$(rcli ping 2>/dev/null)" = PONG ] && [ -s "$DIR/redis/redis.pid" ] && break
	sleep 0.1
done
if [ "$(rcli ping 2>/dev/null)" != PONG ]; then
	echo "redis.sh: redis-server did not start:" >&2
	cat "$DIR/redis/redis.log" >&2 || true
	exit 1
fi
redis_version=$(rcli info server | awk -F: '/^redis_version:/ {print $2}' | tr -d '\r')

start_server 2000000

# tps of token_make, with run.sh's client settings
tps() {
	local out
	if ! out=$(as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$RUN_SECONDS" -D n=0 -f "$DIR/token_make.sql" postgres 2>&1); then
		printf 'redis.sh: pgbench failed:\n%s\n' "$out" >&2
		return 1
	fi
	awk '/^tps/ {printf "%.0f", $3}' <<<"$out"
}

# wait_fanout off|up: until tokenstore.redis_stats shows that state (and,
# for up, nothing queued), at most 120 s
wait_fanout() {
	local want=$1 now=""
	for _ in $(seq 1 1200); do
		now=$(sql -c "SELECT state, queued FROM tokenstore.redis_stats")
		case "$want|$now" in
		"off|off|"* | "up|up|0") return 0 ;;
		esac
		sleep 0.1
	done
	echo "redis.sh: the fan-out did not get to '$want' in 120 s; tokenstore.redis_stats:" >&2
	sql -P footer=off -c "SELECT * FROM tokenstore.redis_stats" -x >&2 || true
	exit 1
}
# fanout off|on: switch the fan-out and wait for it to settle.  Off, Redis is
# emptied, so that every "on" round starts from the same empty Redis.
fanout() {
	if [ "$1" = on ]; then
		sql -c "ALTER SYSTEM SET tokenstore.redis_url = 'redis://127.0.0.1:$REDIS_PORT/0'" \
			-c "SELECT pg_reload_conf()" >/dev/null
		wait_fanout up
	else
		sql -c "ALTER SYSTEM SET tokenstore.redis_url = ''" -c "SELECT pg_reload_conf()" >/dev/null
		wait_fanout off
		rcli flushall >/dev/null
	fi
}
# every round starts from an empty token table, a settled fan-out, no dirt
prepare() {
	sql -c "TRUNCATE tokenstore.token" >/dev/null
	fanout "$1"
	quiesce
	if [ "$1" = on ]; then wait_fanout up; fi
}
key_prefix="$(sql -c 'SHOW tokenstore.redis_prefix')postgres:token:" # db "postgres": no %XX
redis_tokens() { rcli --scan --pattern "${key_prefix}*" | wc -l; }

sql -c "CREATE EXTENSION tokenstore" >/dev/null

# 1. token_make, fan-out off vs on, interleaved rounds.  After each "on"
# round: the backlog it left (changes queued, age of the oldest) and, once
# drained, whether Redis holds exactly the table's tokens.
r_off=() r_on=()
backlog_max=0 backlog_age_max=0 mismatches=""
for _ in $(seq 1 "$ROUNDS"); do
	prepare off
	t=$(tps)
	r_off+=("$t")
	prepare on
	t=$(tps)
	r_on+=("$t")
	read -r queued age < <(sql -F ' ' -c "SELECT queued,
		coalesce(round(extract(epoch FROM oldest_unsent) * 1000), 0) FROM tokenstore.redis_stats")
	if ((queued > backlog_max)); then backlog_max=$queued; fi
	if ((age > backlog_age_max)); then backlog_age_max=$age; fi
	wait_fanout up
	rows=$(sql -c "SELECT count(*) FROM tokenstore.token")
	keys=$(redis_tokens)
	[ "$rows" = "$keys" ] || mismatches+="${mismatches:+, }$keys keys for $rows tokens"
done
sync_note=${mismatches:-"holds exactly the table's tokens"}
t_off=$(median "${r_off[@]}")
t_on=$(median "${r_on[@]}")

# 2. commit -> visible in Redis while token_make runs at full speed
prepare on
as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
	-T $((LAG_SECONDS + 2)) -D n=0 -f "$DIR/token_make.sql" postgres >"$DIR/lag.pgbench" 2>&1 &
bench_pid=$!
sleep 1
lag=$("$DIR/redis_lag" "host=$DIR port=$PORT user=postgres dbname=postgres" 127.0.0.1 \
	"$REDIS_PORT" "$key_prefix" "$LAG_SECONDS" "$LAG_SAMPLES" "$LAG_INTERVAL_MS")
if ! wait "$bench_pid"; then
	echo "redis.sh: pgbench failed during the lag probe:" >&2
	cat "$DIR/lag.pgbench" >&2
	exit 1
fi
t_bg=$(awk '/^tps/ {printf "%.0f", $3}' "$DIR/lag.pgbench")
read -r lag_n lag_miss lag_p50 lag_p99 lag_max <<<"$lag"
lag_note="$lag_n samples"
if ((lag_miss)); then lag_note+=" + $lag_miss not seen within 5 s"; fi
wait_fanout up
counters=$(sql -F ' ' -c "SELECT sent, errors, overflows, resyncs FROM tokenstore.redis_stats")
read -r sent errors overflows resyncs <<<"$counters"

if ((!rows_only)); then
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
	echo "pgbench: -M prepared -c $CLIENTS -j 2 -T $RUN_SECONDS (median of $ROUNDS interleaved off/on rounds), PostgreSQL $(sql -c 'SHOW server_version'), Redis $redis_version on loopback TCP"
	echo
	echo "| measurement | result | target |"
	echo "|---|---|---|"
fi
cat <<TABLE
| \`token_make\`, Redis fan-out off | $t_off tps | |
| \`token_make\`, Redis fan-out on (Redis $redis_version, same machine) | $t_on tps | |
| **token_make fan-out on / off** | **$(ratio "$t_on" "$t_off")** | ≥ 0.95 |
| fan-out backlog when an "on" round ends (most queued, oldest) | $backlog_max changes, $backlog_age_max ms | |
| Redis after each "on" round, drained | $sync_note | |
| commit → visible in Redis, p50, during \`token_make\` at $t_bg tps | $lag_p50 ms | |
| **commit → visible in Redis, p99** ($lag_note, max $lag_max ms) | **$lag_p99 ms** | ≤ 50 ms |
| fan-out counters after the run | $sent commands sent, $errors errors, $overflows overflows, $resyncs resyncs | 0 errors, 0 overflows |
TABLE
