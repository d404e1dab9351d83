#!/usr/bin/env bash
# The read scale-out benchmark: hot standbys that answer checks from a cache
# of their own (tokenstore.standby_cache on the primary).  Starts two private
# primaries with tokenstore preloaded, one with tokenstore.standby_cache =
# on and one with it off (the setting needs a restart: two servers), each
# with a streaming hot standby (pg_basebackup, tokenstore preloaded), 100k
# tokens in each, and measures side by side in one run:
#   - token_user on cache hits on the standby against the same on its
#     primary, in interleaved rounds (primary, standby; the table shows the
#     median of each), and their ratio;
#   - the same on the standby of the "off" primary, whose checks read the
#     table (the path of standbys before the standby cache), in the same
#     rounds, and the ratio of the two standbys;
#   - the time from a revocation's commit on the primary to the first check
#     the standby refuses: test/bench/standby_lag.c (compiled here) makes a
#     token, has it cached on the standby, polls it there in a tight loop,
#     revokes it on the primary and reads the server's clock right after the
#     commit; p50 and p99 over the samples, beside the replay lag
#     PostgreSQL reports meanwhile (pg_stat_replication.replay_lag on the
#     primary, sampled every 20 ms);
#   - what logging the cache's invalidations to WAL costs the primary:
#     pgbench of token_make then token_delete (test/bench/make_delete.sql)
#     on the "on" and the "off" primary in interleaved rounds, the ratios of
#     the pairs' throughput and of each statement's mean latency (pgbench
#     -r), and the WAL a pair writes on each, without full-page images.
# Nothing here is asserted: the targets are printed next to the results.
#
# Run alone: `bash test/bench/standby.sh` prints a table of its own;
# `--rows` (as test/bench/run.sh calls it) only the rows.  Settings as in
# run.sh: BENCH_SECONDS (per pgbench run, default 10), BENCH_CLIENTS
# (default 4), BENCH_ROUNDS (default 3), BENCH_PORT (default 54398: this
# script uses BENCH_PORT + 4 to + 7); and BENCH_LAG_SAMPLES (revocations
# timed, default 200, in at most 60 s).  With the defaults it runs in about
# four minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."

. test/server.sh
bench_part "$@"
BASE_PORT=${BENCH_PORT:-54398}
TOKENS=100000
LAG_SAMPLES=${BENCH_LAG_SAMPLES:-200}
LAG_SECONDS=60 # at most
LAG_INTERVAL_MS=10
WAL_PAIRS=1000 # make + delete pairs by one client, for the WAL per pair
DIR=$(mktemp -d /tmp/tokenstore-standby-bench.XXXXXX)
chown postgres: "$DIR"
cp test/bench/setup.sql test/bench/token_user.sql test/bench/limit.sql test/bench/make_delete.sql "$DIR/"
chown postgres: "$DIR"/*.sql

# the four servers, each in $DIR/NAME, its socket in $DIR
SERVERS=(on on_standby off off_standby)
declare -A port_of=([on]=$((BASE_PORT + 4)) [on_standby]=$((BASE_PORT + 5))
	[off]=$((BASE_PORT + 6)) [off_standby]=$((BASE_PORT + 7)))
at() {
	local name=$1
	shift
	as_postgres "$BIN/psql" -X -q -A -t -h "$DIR" -p "${port_of[$name]}" -d postgres \
		-v ON_ERROR_STOP=1 "$@"
}
# what went wrong in the servers' logs, on the way out of a failed run
server_trouble() {
	local name
	for name in "${SERVERS[@]}"; do
		[ -f "$DIR/$name.log" ] || continue
		if grep -qE 'PANIC|FATAL|ERROR|WARNING|terminated by signal|exited with exit code' "$DIR/$name.log"; then
			echo "standby.sh: the log of server $name (port ${port_of[$name]}) ends with:" >&2
			grep -E 'PANIC|FATAL|ERROR|WARNING|terminated by signal|exited with exit code' \
				"$DIR/$name.log" | tail -n 15 >&2
		fi
	done
}
cleanup() {
	local status=$? name
	((status == 0)) || server_trouble
	# only the servers this script started, by their data directories
	for name in "${SERVERS[@]}"; do
		if [ -f "$DIR/$name/postmaster.pid" ]; then
			as_postgres "$BIN/pg_ctl" -D "$DIR/$name" -m immediate stop >/dev/null 2>&1 || true
		fi
	done
	rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
	echo "standby.sh: $*" >&2
	exit 1
}

# the revocation probe, compiled first: no server is started if it does not build
gcc -O2 -Wall -Wextra -I"$("$BIN/pg_config" --includedir)" -o "$DIR/standby_lag" \
	test/bench/standby_lag.c -lpq -lpthread

# start_primary NAME on|off: a new cluster with the benchmarks' settings
start_primary() {
	local name=$1
	as_postgres "$BIN/initdb" -D "$DIR/$name" -U postgres -A trust >/dev/null
	cat >>"$DIR/$name/postgresql.conf" <<CONF
port = ${port_of[$name]}
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'tokenstore'
tokenstore.max_cached_tokens = 2000000
tokenstore.max_cached_data = '32MB'
tokenstore.sweep_interval = '1h'
tokenstore.standby_cache = $2
shared_buffers = '512MB'
max_connections = 20
CONF
	as_postgres "$BIN/pg_ctl" -D "$DIR/$name" -w -l "$DIR/$name.log" start >/dev/null
}
# start_standby NAME PRIMARY: a streaming hot standby of PRIMARY, from a base
# backup (its settings, but for the port)
start_standby() {
	local name=$1 primary=$2
	as_postgres "$BIN/pg_basebackup" -h "$DIR" -p "${port_of[$primary]}" -U postgres \
		-D "$DIR/$name" -R -X stream -c fast
	echo "port = ${port_of[$name]}" >>"$DIR/$name/postgresql.conf"
	as_postgres "$BIN/pg_ctl" -D "$DIR/$name" -w -l "$DIR/$name.log" start >/dev/null ||
		fail "standby $name did not start"
}
# caught_up PRIMARY STANDBY: wait until the standby has replayed all the
# primary has written so far (at most 60 s)
caught_up() {
	local lsn
	lsn=$(at "$1" -c "SELECT pg_current_wal_lsn()")
	for _ in $(seq 1 600); do
		[ "$(at "$2" -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && return 0
		sleep 0.1
	done
	fail "standby $2 did not replay up to $lsn in 60 s"
}
# cache_state NAME: the standby_cache column of tokenstore.stats
cache_state() { at "$1" -c "SELECT standby_cache FROM tokenstore.stats WHERE datname = 'postgres'"; }
# wait_cache_on STANDBY PRIMARY: until the standby's cache is on; the
# primary logs its "on" record while WAL moves, so small writes meanwhile
# (at most 60 s)
wait_cache_on() {
	local now=""
	for _ in $(seq 1 120); do
		now=$(cache_state "$1")
		[ "$now" = on ] && return 0
		at "$2" -c "INSERT INTO bench.tick DEFAULT VALUES" >/dev/null
		sleep 0.5
	done
	fail "the cache of standby $1 is '$now' after 60 s, not 'on'"
}
# warm NAME: check every token once (a standby with its cache on fills it);
# each must be answered
warm() {
	local answered
	answered=$(at "$1" -c "SELECT count(tokenstore.token_user('bench-token-' || lpad(i::text, 12, '0')))
							 FROM generate_series(1, $TOKENS) i")
	[ "$answered" = "$TOKENS" ] || fail "$1 answered $answered of $TOKENS live tokens"
}
# quiesce_at PRIMARY: write back uses and dead rows (as quiesce in server.sh)
quiesce_at() {
	at "$1" -c "SELECT tokenstore.token_flush()" -c "VACUUM (ANALYZE)" -c "CHECKPOINT" >/dev/null
}
# pgb NAME SCRIPT N [pgbench options]: pgbench's output, with run.sh's
# client settings
pgb() {
	local name=$1 script=$2 n=$3 out
	shift 3
	if ! out=$(as_postgres "$BIN/pgbench" -h "$DIR" -p "${port_of[$name]}" -n -M prepared \
		-c "$CLIENTS" -j 2 -T "$RUN_SECONDS" -D n="$n" -f "$DIR/$script" "$@" postgres 2>&1); then
		printf 'standby.sh: pgbench %s on %s failed:\n%s\n' "$script" "$name" "$out" >&2
		return 1
	fi
	printf '%s\n' "$out"
}
tps_of() { awk '/^tps/ {printf "%.0f", $3}'; }
# the mean latency in ms of the statement calling $1 in pgbench -r's report
latency_of() { awk -v f="$1(" 'index($0, f) && $1 ~ /^[0-9.]+$/ {print $1; exit}'; }
# cache_counts NAME: "hits misses" of tokenstore.stats
cache_counts() { at "$1" -F ' ' -c "SELECT hits, misses FROM tokenstore.stats WHERE datname = 'postgres'"; }

start_primary on on
start_primary off off
for name in on off; do
	at $name -f "$DIR/setup.sql" >/dev/null
	at $name -c "CREATE TABLE bench.tick (at timestamptz DEFAULT clock_timestamp())" \
		-c "SELECT bench.fill($TOKENS)" >/dev/null
done
start_standby on_standby on
start_standby off_standby off
caught_up on on_standby
caught_up off off_standby
wait_cache_on on_standby on
[ "$(cache_state off_standby)" = off ] ||
	fail "the cache of standby off_standby (its primary's standby_cache off) is '$(cache_state off_standby)', not 'off'"
for name in on on_standby off_standby; do warm $name; done

# 1. hits on the standby against hits on its primary, and against the
# standby that reads the table
# (the order alternates between rounds, and the limit, SELECT of the same
# expression, is measured on both: a standby's own per-query cost, its
# snapshots from the replayed transactions, is PostgreSQL's, not the cache's)
declare -A r_hits=() r_limit=()
hits_on() {
	r_hits[$1]+=" $(pgb "$1" token_user.sql $TOKENS | tps_of)"
	r_limit[$1]+=" $(pgb "$1" limit.sql $TOKENS | tps_of)"
}
counts=$(cache_counts on_standby)
read -r hits0 misses0 <<<"$counts"
for round in $(seq 1 "$ROUNDS"); do
	quiesce_at on
	quiesce_at off
	caught_up on on_standby
	caught_up off off_standby
	if ((round % 2)); then
		hits_on on
		hits_on on_standby
	else
		hits_on on_standby
		hits_on on
	fi
	r_hits[off_standby]+=" $(pgb off_standby token_user.sql $TOKENS | tps_of)"
done
counts=$(cache_counts on_standby)
read -r hits1 misses1 <<<"$counts"
# shellcheck disable=SC2086 # the word lists of the runs
{
	t_primary=$(median ${r_hits[on]})
	t_standby=$(median ${r_hits[on_standby]})
	t_table=$(median ${r_hits[off_standby]})
	l_primary=$(median ${r_limit[on]})
	l_standby=$(median ${r_limit[on_standby]})
}
state_after=$(cache_state on_standby)

# 2. a revocation's commit on the primary -> the first refused check on the
# standby, with PostgreSQL's replay lag meanwhile
quiesce_at on
caught_up on on_standby
lag=$("$DIR/standby_lag" "host=$DIR port=${port_of[on]} user=postgres dbname=postgres" \
	"host=$DIR port=${port_of[on_standby]} user=postgres dbname=postgres" \
	"$LAG_SECONDS" "$LAG_SAMPLES" "$LAG_INTERVAL_MS") ||
	fail "the revocation probe failed (its error above)"
read -r lag_n lag_miss lag_p50 lag_p99 lag_max replay_n replay_null replay_p50 replay_max <<<"$lag"
lag_note="$lag_n samples"
if ((lag_miss)); then lag_note+=" + $lag_miss still answered 5 s after the commit"; fi
replay_note="$replay_n samples"
if ((replay_null)); then replay_note+=", $replay_null more NULL"; fi

# 3. token_make + token_delete on the primaries, standby cache on and off,
# interleaved rounds (the first of each round alternates)
declare -A r_pair=() r_make=() r_delete=()
make_delete() {
	local out
	quiesce_at "$1"
	out=$(pgb "$1" make_delete.sql 0 -r)
	r_pair[$1]+=" $(tps_of <<<"$out")"
	r_make[$1]+=" $(latency_of tokenstore.token_make <<<"$out")"
	r_delete[$1]+=" $(latency_of tokenstore.token_delete <<<"$out")"
}
for round in $(seq 1 "$ROUNDS"); do
	if ((round % 2)); then
		make_delete off
		make_delete on
	else
		make_delete on
		make_delete off
	fi
done
# shellcheck disable=SC2086 # the word lists of the runs
{
	t_pair_on=$(median ${r_pair[on]})
	t_pair_off=$(median ${r_pair[off]})
	ms_make_on=$(median ${r_make[on]})
	ms_make_off=$(median ${r_make[off]})
	ms_delete_on=$(median ${r_delete[on]})
	ms_delete_off=$(median ${r_delete[off]})
}
if [ -z "$ms_make_on" ] || [ -z "$ms_delete_on" ] || [ -z "$ms_make_off" ] || [ -z "$ms_delete_off" ]; then
	fail "no per-statement latencies in pgbench -r's report"
fi
# WAL per pair, one client, without full-page images (right after a
# checkpoint they would be most of it, for both alike)
wal_per_pair() {
	local before after
	at "$1" -c "ALTER SYSTEM SET full_page_writes = off" -c "SELECT pg_reload_conf()" >/dev/null
	quiesce_at "$1"
	before=$(at "$1" -c "SELECT pg_current_wal_insert_lsn()")
	as_postgres "$BIN/pgbench" -h "$DIR" -p "${port_of[$1]}" -n -M prepared -c 1 -t "$WAL_PAIRS" \
		-f "$DIR/make_delete.sql" postgres >/dev/null
	after=$(at "$1" -c "SELECT pg_current_wal_insert_lsn()")
	at "$1" -c "ALTER SYSTEM RESET full_page_writes" -c "SELECT pg_reload_conf()" >/dev/null
	at "$1" -c "SELECT round(pg_wal_lsn_diff('$after', '$before') / $WAL_PAIRS)"
}
wal_on=$(wal_per_pair on)
wal_off=$(wal_per_pair off)
caught_up on on_standby
[ "$(cache_state on_standby)" = on ] || fail "the cache of standby on_standby went '$(cache_state on_standby)' after the writes"

# ms1 / ms2 as a ratio of speeds (the cost of 2 against 1)
speed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b / a}'; }
if ((!rows_only)); then
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
	echo "pgbench: -M prepared -c $CLIENTS -j 2 -T $RUN_SECONDS (median of $ROUNDS interleaved rounds), PostgreSQL $(at on -c 'SHOW server_version'); two primaries (tokenstore.standby_cache on, off), each with a streaming hot standby, on this machine"
	echo
	echo "| measurement | result | target |"
	echo "|---|---|---|"
fi
cat <<TABLE
| \`token_user\` on cache hits, 100k tokens, primary with \`tokenstore.standby_cache = on\` | $t_primary tps | |
| \`token_user\` on cache hits on its streaming hot standby (standby cache $state_after: $((hits1 - hits0)) hits, $((misses1 - misses0)) misses in its rounds) | $t_standby tps | |
| **standby hits / primary hits** | **$(ratio "$t_standby" "$t_primary")** | ≥ 0.9 |
| the limit, \`SELECT\` of the token expression: standby / primary ($l_standby / $l_primary tps) | $(ratio "$l_standby" "$l_primary") | |
| hits / limit: on the standby, on the primary | $(ratio "$t_standby" "$l_standby"), $(ratio "$t_primary" "$l_primary") | |
| \`token_user\` on a standby of a primary with \`standby_cache = off\`: reads the table | $t_table tps | |
| **standby hits / standby table reads** | **$(ratio "$t_standby" "$t_table")** | |
| revocation committed on the primary → first refused check on the standby (polling it), p50 | $lag_p50 µs | |
| **… p99** ($lag_note, max $lag_max µs) | **$lag_p99 µs** | |
| PostgreSQL's replay lag meanwhile (\`pg_stat_replication.replay_lag\`, $replay_note), median | $replay_p50 µs (max $replay_max µs) | |
| \`token_make\` + \`token_delete\`, primary with \`standby_cache = off\` | $t_pair_off tps (per call: make $ms_make_off ms, delete $ms_delete_off ms) | |
| \`token_make\` + \`token_delete\`, primary with \`standby_cache = on\` (its invalidations logged to WAL) | $t_pair_on tps (per call: make $ms_make_on ms, delete $ms_delete_on ms) | |
| **make + delete, standby cache on / off** | **$(ratio "$t_pair_on" "$t_pair_off")** | ≥ 0.95 |
| **token_make on / off** (by mean latency) | **$(speed "$ms_make_on" "$ms_make_off")** | ≥ 0.95 |
| **token_delete on / off** (by mean latency) | **$(speed "$ms_delete_on" "$ms_delete_off")** | ≥ 0.95 |
| WAL per \`token_make\` + \`token_delete\` (no full-page images), standby cache on / off | $wal_on / $wal_off bytes | |
TABLE
