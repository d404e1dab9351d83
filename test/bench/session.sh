#!/usr/bin/env bash
# The session-store benchmark: what a web framework's store costs per
# request, tokenstore against the limit of any function (a SELECT of the
# same expression) and against a plain upsert table store (connect-pg-simple's
# schema: sid, sess json, expire).  Starts a private PostgreSQL server with
# tokenstore preloaded; 100k sessions of 2 kB each in both stores; then, in
# interleaved rounds (the table shows medians):
#   - find: token_data / the limit / the limit for a result of the same
#     size (SELECT of the payload as a constant) / SELECT sess ... WHERE
#     sid = $1;
#   - a request that finds the session and keeps it alive (idle mode):
#     token_data + token_touch / SELECT + UPDATE ... SET expire;
# WAL bytes per save of a 2 kB session (one transaction each, as
# requests do), of the same data and of new data, with the share of HOT
# updates among them; and the table's
# size before and after 40,000 saves of the same 1,000 sessions (bloat).
# Nothing here is asserted: the targets are printed next to the results.
#
# Run alone: `bash test/bench/session.sh` prints a table of its own;
# `--rows` (as test/bench/run.sh calls it) only the rows.  Settings as in
# run.sh: BENCH_SECONDS, BENCH_CLIENTS, BENCH_ROUNDS; BENCH_PORT + 3 is its
# port.
set -euo pipefail
cd "$(dirname "$0")/../.."

. test/server.sh
bench_part "$@"
PORT=$((${BENCH_PORT:-54398} + 3))
SESSIONS=100000
SAVES=2000
DIR=$(mktemp -d /tmp/tokenstore-session-bench.XXXXXX)
chown postgres: "$DIR"
trap 'stop_server; rm -rf "$DIR"' EXIT

# the pgbench scripts: one session id per transaction, at random
sid="'bench-session-' || lpad(:i::text, 12, '0')"
script() { printf '\\set i random(1, %d)\n%s\n' "$SESSIONS" "$2" >"$DIR/$1.sql"; }
script limit "SELECT $sid;"
script find "SELECT tokenstore.token_data($sid);"
script plain_find "SELECT sess FROM bench.session WHERE sid = $sid AND expire >= now();"
script request "SELECT tokenstore.token_data($sid);
SELECT tokenstore.token_touch($sid);"
script plain_request "SELECT sess FROM bench.session WHERE sid = $sid AND expire >= now();
UPDATE bench.session SET expire = now() + interval '1 day' WHERE sid = $sid;"
script save "SELECT tokenstore.token_save($sid, NULL, (SELECT payload FROM bench.payload), now() + interval '1 day');"
script plain_save "INSERT INTO bench.session (sid, sess, expire)
	VALUES ($sid, (SELECT convert_from(payload, 'UTF8')::json FROM bench.payload), now() + interval '1 day')
	ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire;"
# a save of 2 kB of new data (as a session whose content all changes): 64
# random hex strings, the same shape for both stores
fresh="(SELECT '{\"k\": \"' || string_agg(md5(random()::text), '') || '\"}' FROM generate_series(1, 64))"
script fresh_save "SELECT tokenstore.token_save($sid, NULL, convert_to($fresh, 'UTF8'), now() + interval '1 day');"
script plain_fresh_save "INSERT INTO bench.session (sid, sess, expire)
	VALUES ($sid, $fresh::json, now() + interval '1 day')
	ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire;"
# the same 1,000 sessions saved again and again, as express-session does
for s in save plain_save; do
	sed '1s/random(1, [0-9]*)/random(1, 1000)/' "$DIR/$s.sql" >"$DIR/re$s.sql"
done
chown postgres: "$DIR"/*.sql

# room for every session's payload: 13 chunks of 264 bytes each
start_server 2000000 400MB
sql >/dev/null <<'SQL'
CREATE EXTENSION tokenstore;
CREATE SCHEMA bench;
-- connect-pg-simple's table, as its README creates it
CREATE TABLE bench.session (sid varchar NOT NULL PRIMARY KEY, sess json NOT NULL,
							expire timestamp(6) NOT NULL);
CREATE INDEX ON bench.session (expire);
-- 2 kB of JSON: 32 keys of 64 hexadecimal digits, the same for both stores
CREATE TABLE bench.payload AS
	SELECT convert_to('{' || string_agg(format('"k%s": "%s%s"', i, md5(i::text), md5((-i)::text)), ', ') || '}', 'UTF8') AS payload
	  FROM generate_series(1, 32) i;
SQL
sql -c "SELECT count(tokenstore.token_save('bench-session-' || lpad(i::text, 12, '0'), NULL,
			(SELECT payload FROM bench.payload), now() + interval '1 day', '2 hours'))
		  FROM generate_series(1, $SESSIONS) i" \
	-c "INSERT INTO bench.session
		SELECT 'bench-session-' || lpad(i::text, 12, '0'),
			   (SELECT convert_from(payload, 'UTF8')::json FROM bench.payload), now() + interval '1 day'
		  FROM generate_series(1, $SESSIONS) i" >/dev/null
# the limit for a result of the session's size: SELECT of the payload as a
# constant
script limit_bytes "SELECT '\\x$(sql -c "SELECT encode(payload, 'hex') FROM bench.payload")'::bytea;"
chown postgres: "$DIR/limit_bytes.sql"
# one find of each, as a running site has done: the cache holds them all
sql -c "SELECT count(tokenstore.token_data('bench-session-' || lpad(i::text, 12, '0')))
		  FROM generate_series(1, $SESSIONS) i" >/dev/null

tps() {
	as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$RUN_SECONDS" -f "$DIR/$1.sql" postgres 2>&1 | awk '/^tps/ {printf "%.0f", $3}'
}

# WAL bytes per save, and the share of HOT updates: SAVES saves by one
# client.  Full-page images are off meanwhile: right after a checkpoint they
# would be most of it, for both stores alike, and say nothing of the saves.
wal_per_save() {
	local table=$1 before after
	quiesce
	before=$(sql -c "SELECT pg_current_wal_insert_lsn(), n_tup_upd, n_tup_hot_upd
					   FROM pg_stat_user_tables WHERE relid = '$table'::regclass")
	as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c 1 -t "$SAVES" \
		-f "$DIR/$2.sql" postgres >/dev/null
	sleep 1 # the statistics collector (15) reports within 500 ms
	after=$(sql -c "SELECT pg_current_wal_insert_lsn(), n_tup_upd, n_tup_hot_upd
					  FROM pg_stat_user_tables WHERE relid = '$table'::regclass")
	sql -c "SELECT round(pg_wal_lsn_diff(split_part('$after', '|', 1)::pg_lsn,
										  split_part('$before', '|', 1)::pg_lsn) / $SAVES)
				   || '|' || round(100.0 * (split_part('$after', '|', 3)::bigint - split_part('$before', '|', 3)::bigint)
								   / greatest(split_part('$after', '|', 2)::bigint - split_part('$before', '|', 2)::bigint, 1))"
}

r_limit=() r_limit_bytes=() r_find=() r_plain_find=() r_request=() r_plain_request=()
for _ in $(seq 1 "$ROUNDS"); do
	quiesce
	r_limit+=("$(tps limit)")
	r_limit_bytes+=("$(tps limit_bytes)")
	r_find+=("$(tps find)")
	r_plain_find+=("$(tps plain_find)")
	r_request+=("$(tps request)")
	r_plain_request+=("$(tps plain_request)")
done
t_limit=$(median "${r_limit[@]}")
t_limit_bytes=$(median "${r_limit_bytes[@]}")
t_find=$(median "${r_find[@]}")
t_plain_find=$(median "${r_plain_find[@]}")
t_request=$(median "${r_request[@]}")
t_plain_request=$(median "${r_plain_request[@]}")
sql -c "ALTER SYSTEM SET full_page_writes = off" -c "SELECT pg_reload_conf()" >/dev/null
IFS='|' read -r wal_save hot_save <<<"$(wal_per_save tokenstore.token save)"
IFS='|' read -r wal_plain hot_plain <<<"$(wal_per_save bench.session plain_save)"
IFS='|' read -r wal_fresh hot_fresh <<<"$(wal_per_save tokenstore.token fresh_save)"
IFS='|' read -r wal_plain_fresh hot_plain_fresh <<<"$(wal_per_save bench.session plain_fresh_save)"
sql -c "ALTER SYSTEM RESET full_page_writes" -c "SELECT pg_reload_conf()" >/dev/null

# Bloat: how much the table with its TOAST table and indexes grows over
# RESAVES saves of 1,000 sessions (each saved about RESAVES / 1,000 times,
# faster than autovacuum comes by), in each store.
RESAVES=40000
growth() {
	local table=$1 before
	before=$(sql -c "SELECT pg_total_relation_size('$table')")
	as_postgres "$BIN/pgbench" -h "$DIR" -p "$PORT" -n -M prepared -c "$CLIENTS" -j 2 \
		-t $((RESAVES / CLIENTS)) -f "$DIR/re$2.sql" postgres >/dev/null
	sql -c "SELECT round((pg_total_relation_size('$table') - $before) / 1048576.0, 1) || ' MB'"
}
grow_save=$(growth tokenstore.token save)
grow_plain=$(growth bench.session plain_save)

if ((!rows_only)); then
	echo "machine: $(nproc) cores; pgbench -M prepared -c $CLIENTS -j 2 -T $RUN_SECONDS, median of $ROUNDS interleaved rounds; PostgreSQL $(sql -c 'SHOW server_version')"
	echo
	echo "| measurement | result | target |"
	echo "|---|---|---|"
fi
cat <<TABLE
| sessions: find (\`token_data\`), 100k sessions of 2 kB, all cached (\`max_cached_data\` 400MB) | $t_find tps | |
| sessions: the limit, \`SELECT\` of the id expression | $t_limit tps | |
| sessions: a plain store's find (connect-pg-simple) | $t_plain_find tps | |
| **find / limit** | **$(ratio "$t_find" "$t_limit")** | ≥ 0.9 |
| sessions: the limit for a result of 2 kB, \`SELECT\` of the payload as a constant | $t_limit_bytes tps | |
| **find / limit of the same bytes** | **$(ratio "$t_find" "$t_limit_bytes")** | |
| **find / plain store** | **$(ratio "$t_find" "$t_plain_find")** | |
| sessions: a request, find + touch (idle mode) | $t_request tps | |
| sessions: a plain store's request, find + \`UPDATE … expire\` | $t_plain_request tps | |
| **request / plain store** | **$(ratio "$t_request" "$t_plain_request")** | ≥ 3 |
| WAL per save of a 2 kB session (no full-page images): \`token_save\` | $wal_save bytes ($hot_save % HOT) | ≤ the plain store's |
| WAL per save of a 2 kB session (no full-page images): plain upsert | $wal_plain bytes ($hot_plain % HOT) | |
| WAL per save of 2 kB of new data: \`token_save\` | $wal_fresh bytes ($hot_fresh % HOT) | ≤ the plain store's |
| WAL per save of 2 kB of new data: plain upsert | $wal_plain_fresh bytes ($hot_plain_fresh % HOT) | |
| growth of the table with its TOAST table and indexes over $RESAVES saves of the same 1,000 sessions: \`token_save\` | $grow_save | no growth |
| … the same for the plain store | $grow_plain | |
TABLE
