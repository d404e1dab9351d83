#!/usr/bin/env bash
# The tokenstore benchmark (`make bench`).  Starts a private server with
# tokenstore preloaded, measures everything side by side in one run and
# prints a table of throughput and ratios.  Nothing here is asserted: the
# targets are printed next to the results.
#
# Settings (environment): BENCH_SECONDS (per pgbench run, default 10),
# BENCH_CLIENTS (default 4), BENCH_ROUNDS (rounds of the side-by-side hit
# comparison, default 3: each round runs every kind once, and the table shows
# the median, so that a noisy neighbour does not favour one kind), BENCH_BIG
# (10M tokens: auto, yes or no; auto runs it when 12 GB of memory are free).
# The table ends with the rows of test/bench/redis.sh, session.sh and
# standby.sh (read scale-out: BENCH_LAG_SAMPLES), on servers of their own;
# each also runs alone (`bash test/bench/standby.sh`).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash test/setup.sh >/dev/null

. test/server.sh
RUN_SECONDS=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
BIG=${BENCH_BIG:-auto}
PORT=${BENCH_PORT:-54398}
DIR=$(mktemp -d /tmp/tokenstore-bench.XXXXXX)
chown postgres: "$DIR"
cp test/bench/*.sql "$DIR/"

cleanup() {
	stop_server
	rm -rf "$DIR"
}
trap cleanup EXIT

big=0
cache_size=2000000
if [ "$BIG" = yes ] || { [ "$BIG" = auto ] &&
	[ "$(awk '/MemAvailable/ {print $2}' /proc/meminfo)" -gt 12000000 ]; }; then
	big=1
	cache_size=11000000
fi

# 0. shared memory per cached token and per chunk of payload, everything
# counted: the growth of shared_memory_size (MB) with the capacities, read
# off an idle data directory by postgres -C
as_postgres "$BIN/initdb" -D "$DIR/sizing" >/dev/null 2>&1
shmem_mb() {
	as_postgres "$BIN/postgres" -D "$DIR/sizing" -C shared_memory_size \
		-c shared_preload_libraries=tokenstore -c tokenstore.max_cached_tokens="$1" \
		-c tokenstore.max_cached_data="$2"
}
mb_none=$(shmem_mb 0 0)
mb_tokens=$(shmem_mb 2000000 0)
mb_data=$(shmem_mb 2000000 512MB)
bytes_token=$(awk -v a="$mb_tokens" -v b="$mb_none" 'BEGIN {printf "%.0f", (a - b) * 1048576 / 2000000}')
# the chunks 512 MB buys: see payload_capacity() in src/cache.c
bytes_chunk=$(awk -v a="$mb_data" -v b="$mb_tokens" 'BEGIN {printf "%.0f", (a - b) * 1048576 / int(512 * 1048576 / 264)}')
rm -rf "$DIR/sizing"

start_server $cache_size

# tps of a pgbench script: pgbench SCRIPT N [extra pgbench options]
tps() {
	local script=$1 n=$2
	shift 2
	as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$RUN_SECONDS" -D n="$n" -f "$DIR/$script" "$@" postgres 2>&1 |
		awk '/^tps/ {printf "%.0f", $3}'
}
# p99 latency in ms of the transactions logged under a prefix
p99() {
	cat "$1".* | awk '{print $3}' | sort -n |
		awk '{v[NR] = $1} END {printf "%.2f", v[int(NR * 0.99)] / 1000}'
}
fill() { sql -c "SELECT bench.fill($1)" >/dev/null; }
# make the first n tokens cache hits
warm() {
	sql -c "SELECT count(tokenstore.token_user('bench-token-' || lpad(i::text, 12, '0')))
			  FROM generate_series(1, $1) i" >/dev/null
}

sql -f "$DIR/setup.sql" >/dev/null
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "pgbench: -M prepared -c $CLIENTS -j 2 -T $RUN_SECONDS (hits: median of $ROUNDS interleaved rounds), PostgreSQL $(sql -c 'SHOW server_version')"
echo

# 1. checks on cache hits, 100k tokens, against the limit and by-hand designs
fill 100000
warm 100000
r_limit=() r_user=() r_select=() r_update=()
for _ in $(seq 1 "$ROUNDS"); do
	quiesce
	r_limit+=("$(tps limit.sql 100000)")
	r_user+=("$(tps token_user.sql 100000)")
	r_select+=("$(tps indexed_select.sql 100000)")
	r_update+=("$(tps naive_update.sql 100000)")
done
t_limit=$(median "${r_limit[@]}")
t_user=$(median "${r_user[@]}")
t_select=$(median "${r_select[@]}")
t_update=$(median "${r_update[@]}")

# 1b. the worker under load: expired rows swept while the clients check
# 100k live tokens, and a transaction left open on a token's row
expire() {
	sql -d "${2:-postgres}" -c "INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at, expires_at)
		SELECT sha256(convert_to('expired-$3-' || i, 'UTF8')), 'expired', now() - interval '2 hours',
			   now() - interval '2 hours', now() - interval '1 hour'
		  FROM generate_series(1, $1) i" >/dev/null
}
left() { sql -d "${1:-postgres}" -c "SELECT count(*) FROM tokenstore.token WHERE user_id = 'expired'"; }
expire 200000 postgres load
sql -c "ALTER SYSTEM SET tokenstore.sweep_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
tps token_user.sql 100000 -T $((RUN_SECONDS * 3)) >/dev/null
swept_load=$((200000 - $(left)))
sql -c "CREATE DATABASE bench2" >/dev/null
sql -d bench2 -c "CREATE EXTENSION tokenstore" >/dev/null
expire 1000 bench2 lock
expire 1000 postgres lock
as_postgres "$BIN/psql" -X -q -h "$DIR" -p "$PORT" -d postgres \
	-c "BEGIN" -c "SELECT tokenstore.token_refresh('bench-token-000000000001', '1 day')" \
	-c "SELECT pg_sleep($RUN_SECONDS)" -c "COMMIT" >/dev/null 2>&1 &
lock_pid=$!
sleep 1
lock_start=$(date +%s.%N)
lock_result="stopped for the lock's life"
for _ in $(seq 1 $((RUN_SECONDS * 10))); do
	if [ "$(left bench2)" = 0 ] && [ "$(left postgres)" -lt 1000 ]; then
		lock_result="both databases swept in $(awk -v a="$lock_start" -v b="$(date +%s.%N)" \
			'BEGIN {printf "%.1f", b - a}') s"
		break
	fi
	sleep 0.1
done
wait "$lock_pid"
sql -c "ALTER SYSTEM RESET tokenstore.sweep_interval" -c "SELECT pg_reload_conf()" \
	-c "DELETE FROM tokenstore.token WHERE user_id = 'expired'" -c "DROP DATABASE bench2" >/dev/null

# 2. making tokens, against a plain INSERT of the same row
quiesce
t_make=$(tps token_make.sql 0)
t_insert=$(tps plain_insert.sql 0)

# 3. in-server cost per call over 1M cached tokens, in one query of a
# million calls, less the same query without the call; and what it is made
# of: the same C function without SECURITY DEFINER, a call of a trivial
# built-in (what fmgr costs), and token_user cycling over 10k tokens, a
# working set the CPU's caches hold (the difference is memory stalls).
# Median of ROUNDS interleaved rounds.
fill 1000000
warm 1000000
sql -c "CREATE FUNCTION bench.token_user_invoker(text) RETURNS text
		AS '\$libdir/tokenstore', 'token_user' LANGUAGE C VOLATILE STRICT" >/dev/null
quiesce
tok="'bench-token-' || lpad(i::text, 12, '0')"
tok10k="'bench-token-' || lpad((i % 10000 + 1)::text, 12, '0')"
declare -A in_server=([expr]="$tok" [user]="tokenstore.token_user($tok)"
	[invoker]="bench.token_user_invoker($tok)" [length]="length($tok)"
	[expr10k]="$tok10k" [user10k]="tokenstore.token_user($tok10k)")
declare -A in_server_ms=()
for _ in $(seq 1 "$ROUNDS"); do
	for k in expr user invoker length expr10k user10k; do
		in_server_ms[$k]+=" $(sql -c "SELECT bench.ms(\$q\$SELECT count(${in_server[$k]})
									   FROM generate_series(1, 1000000) i\$q\$)")"
	done
done
# ns per call of kind $1 beyond kind $2 (a million calls: ms = ns per call)
ns_beyond() {
	# shellcheck disable=SC2086 # the word list of a kind's runs
	awk -v a="$(median ${in_server_ms[$1]})" -v b="$(median ${in_server_ms[$2]})" \
		'BEGIN {printf "%.0f", a - b}'
}
ns_call=$(ns_beyond user expr)
ns_invoker=$(ns_beyond invoker expr)
ns_length=$(ns_beyond length expr)
ns_10k=$(ns_beyond user10k expr10k)

# 4. hit throughput as the number of tokens grows
warm 10000
quiesce
t_10k=$(tps token_user.sql 10000)
t_1m=$(tps token_user.sql 1000000)
t_10m=""
if ((big)); then
	fill 10000000
	warm 10000000
	quiesce
	t_10m=$(tps token_user.sql 10000000)
fi

# 5. p99 of checks while the worker sweeps 1M expired tokens
sql -c "INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at, expires_at)
		SELECT sha256(convert_to('expired-' || i, 'UTF8')), 'expired', now() - interval '2 hours',
			   now() - interval '2 hours', now() - interval '1 hour'
		  FROM generate_series(1, 1000000) i" >/dev/null
quiesce
tps token_user.sql 100000 --log --log-prefix="$DIR/idle" >/dev/null
p99_idle=$(p99 "$DIR/idle")
sweep_start=$(date +%s.%N)
sql -c "ALTER SYSTEM SET tokenstore.sweep_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
	-T $((RUN_SECONDS * 3)) -D n=100000 -f "$DIR/token_user.sql" \
	--log --log-prefix="$DIR/sweep" postgres >/dev/null 2>&1 &
bench_pid=$!
sweep_secs=""
for _ in $(seq 1 $((RUN_SECONDS * 30))); do
	if [ "$(sql -c "SELECT count(*) FROM tokenstore.token WHERE user_id = 'expired'")" = 0 ]; then
		sweep_secs=$(awk -v a="$sweep_start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
		break
	fi
	sleep 0.1
done
wait "$bench_pid"
p99_sweep=$(p99 "$DIR/sweep")
for _ in $(seq 1 3000); do
	[ -n "$sweep_secs" ] && break
	if [ "$(sql -c "SELECT count(*) FROM tokenstore.token WHERE user_id = 'expired'")" = 0 ]; then
		sweep_secs=$(awk -v a="$sweep_start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
	fi
	sleep 0.1
done

cat <<TABLE
| measurement | result | target |
|---|---|---|
| expired rows swept while $CLIENTS clients check 100k live tokens | $swept_load of 200,000 in $((RUN_SECONDS * 3)) s | keeps up with the expiry rate |
| flush and sweep in every database while one transaction holds a token row lock | $lock_result | unaffected |
| \`token_user\` on cache hits, 100k tokens | $t_user tps | |
| the limit: \`SELECT\` of the token expression | $t_limit tps | |
| by hand: indexed \`SELECT user_id FROM t WHERE token = \$1\` | $t_select tps | |
| by hand, kktoken semantics: \`UPDATE t SET last_use = now() … RETURNING user_id\` | $t_update tps | |
| **token_user / limit** | **$(ratio "$t_user" "$t_limit")** | ≥ 0.9 |
| **token_user / indexed SELECT** | **$(ratio "$t_user" "$t_select")** | ≥ 1.05 |
| **token_user / naive UPDATE** | **$(ratio "$t_user" "$t_update")** | ≥ 10 |
| \`token_make\` | $t_make tps | |
| plain \`INSERT\` of the same row | $t_insert tps | |
| **token_make / INSERT** | **$(ratio "$t_make" "$t_insert")** | ≥ 0.95 |
| shared memory per cached token, everything counted | $bytes_token bytes | ≤ 128 |
| … per 200-byte chunk of a cached payload (info and data; a session of 1 kB takes 6) | $bytes_chunk bytes | |
| in-server \`token_user\` over 1M cached tokens | **$ns_call ns/call** | ≤ 500 |
| … the same C function without SECURITY DEFINER | $ns_invoker ns/call | |
| … a call of a trivial built-in (\`length\`): fmgr | $ns_length ns/call | |
| … \`token_user\` cycling over 10k cached tokens (held in CPU caches) | $ns_10k ns/call | |
| hits with 10k tokens | $t_10k tps | |
| hits with 1M tokens | $t_1m tps ($(ratio "$t_1m" "$t_10k") of 10k) | ≥ 0.90 of 10k |
TABLE
if ((big)); then
	echo "| hits with 10M tokens | $t_10m tps ($(ratio "$t_10m" "$t_10k") of 10k) | ≥ 0.85 of 10k |"
fi
cat <<TABLE
| p99 of checks, idle | $p99_idle ms | |
| p99 of checks while the worker sweeps 1M expired tokens${sweep_secs:+ (swept in $sweep_secs s)} | $p99_sweep ms ($(ratio "$p99_sweep" "$p99_idle") of idle) | ≤ 2 × idle |
TABLE

# 6. the Redis fan-out, the session store and read scale-out (hot standbys
# with a cache of their own), each on servers of its own: rows continuing
# the table
bash test/bench/redis.sh --rows
bash test/bench/session.sh --rows
bash test/bench/standby.sh --rows
