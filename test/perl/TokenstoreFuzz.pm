# TokenstoreFuzz: a seeded random driver of the tokenstore API, for the
# hostile-input test (test/t/013_hostile_input.pl).
#
#   TokenstoreFuzz::install($node, $db, 'app');
#   $node->psql($db, 'SELECT setseed(0.42); SELECT fuzz.run(1, 50)', ...);
#
# install() creates schema fuzz in DB (as the superuser), usable by ROLE:
#
#   fuzz.plan_one(i)   draws call i: a function of the API, a setting, or a
#                      privilege probe, with arguments from hostile pools
#                      (NULLs, empty and 1 MB strings and byteas, extreme
#                      intervals, past, pre-2000, infinite and out-of-range
#                      deadlines, deep and huge JSON, bad token_ids, weird
#                      unicode...),
#                      and stores it in fuzz.plan (its SQL, arguments and a
#                      display of at most 200 characters)
#   fuzz.exec(i)       runs call i as planned, as the calling role, with the
#                      arguments as text parameters cast in the statement (so
#                      the types' own input checks are part of the call), and
#                      adds what it made to the pools the next calls draw from
#   fuzz.run(a, b)     plans and runs calls a..b, each in a subtransaction of
#                      its own (BEGIN ... EXCEPTION), recording each outcome
#                      (SQLSTATE, message, result) in fuzz.result; a NOTICE
#                      names each call before it runs, so a statement that
#                      times out names the call that hung
#
# All randomness is random(), so setseed() makes a run reproducible (up to
# what the clock decides: tokens that expire, deadlines near the limit).
#
# redis_mismatch() compares Redis with the table like
# TokenstoreRedis::mismatch, for hostile data: it reads user ids as bytes
# (any character, '|' and newlines included), and reads only the start of
# each value (user_id comes first), since info may be megabytes, or nested
# deeper than JSON::PP decodes.
package TokenstoreFuzz;

use strict;
use warnings;
use JSON::PP ();

my $driver = <<'SQL';
CREATE SCHEMA fuzz;
CREATE TABLE fuzz.plan (
	i int PRIMARY KEY,
	fn text NOT NULL,
	sql text NOT NULL,
	args text[] NOT NULL,
	display text NOT NULL,
	make_user text,
	given_token text,
	given_unique boolean NOT NULL DEFAULT false);
-- arguments of megabytes: lz4 stores them in milliseconds, pglz takes longer
ALTER TABLE fuzz.plan ALTER args SET COMPRESSION lz4;
CREATE TABLE fuzz.result (
	i int PRIMARY KEY,
	sqlstate text NOT NULL,
	message text,
	result text,
	pass text NOT NULL,
	ms float8);
-- given: the caller provided the token
CREATE TABLE fuzz.tokens (n bigserial PRIMARY KEY, token text NOT NULL,
	given boolean NOT NULL DEFAULT false);
CREATE TABLE fuzz.ids (n bigserial PRIMARY KEY, id text NOT NULL);
CREATE TABLE fuzz.users (n bigserial PRIMARY KEY, user_id text NOT NULL);
-- tokens token_save made or replaced; anonymous: one to sign in to (see
-- fuzz.exec and the sign-ins of fuzz.plan_one)
CREATE TABLE fuzz.sessions (n bigserial PRIMARY KEY, token text NOT NULL,
	anonymous boolean NOT NULL);

-- r(n): a random integer in [0, n)
CREATE FUNCTION fuzz.r(n int) RETURNS int
	LANGUAGE sql AS $$ SELECT floor(random() * n)::int $$;

-- a third of the draws that could be megabytes are; the others are small,
-- to keep thousands of calls within seconds
CREATE FUNCTION fuzz.heavy() RETURNS boolean
	LANGUAGE sql AS $$ SELECT fuzz.r(3) = 0 $$;

CREATE FUNCTION fuzz.pick(VARIADIC choices text[]) RETURNS text
	LANGUAGE sql AS $$ SELECT choices[1 + fuzz.r(cardinality(choices))] $$;

-- s padded with ch to at most nbytes bytes, then with 'x' to exactly nbytes
CREATE FUNCTION fuzz.pad(s text, nbytes int, ch text DEFAULT 'x') RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	t text := s || repeat(ch, greatest(0, (nbytes - octet_length(s)) / octet_length(ch)));
BEGIN
	RETURN t || repeat('x', greatest(0, nbytes - octet_length(t)));
END $$;

-- 1 to 8 NUL-free characters that tend to upset code: controls, direction
-- overrides, joiners, a BOM, noncharacters, the last code point, glob and
-- quoting characters, format directives, case-folding oddities
CREATE FUNCTION fuzz.weird() RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	pieces text[] := ARRAY[chr(8238), chr(8205), chr(65279), chr(769), chr(65535),
		chr(1114111), chr(55295), chr(57344), chr(1), chr(27), chr(127), chr(133),
		chr(8232), E'\\', '''', '"', '%s%n%x', E'\\x00', '😀', 'Ω', '𝕏', '漢字',
		' ', E'\n', E'\r', E'\t', '|', ',', ':', '*', '?', '[a-z]', '{}', '$1',
		'é', 'ﬃ', 'İ', 'ß'];
	s text := '';
BEGIN
	FOR k IN 1 .. 1 + fuzz.r(8) LOOP
		s := s || pieces[1 + fuzz.r(cardinality(pieces))];
	END LOOP;
	RETURN s;
END $$;

-- one of the 300 latest tokens, token_ids, users of the pools (live or
-- not); NULL while empty
CREATE FUNCTION fuzz.pool_token() RETURNS text
	LANGUAGE sql AS $$
	SELECT token FROM fuzz.tokens ORDER BY n DESC
	OFFSET fuzz.r(least(300, (SELECT count(*) FROM fuzz.tokens))::int) LIMIT 1 $$;

CREATE FUNCTION fuzz.pool_id() RETURNS text
	LANGUAGE sql AS $$
	SELECT id FROM fuzz.ids ORDER BY n DESC
	OFFSET fuzz.r(least(300, (SELECT count(*) FROM fuzz.ids))::int) LIMIT 1 $$;

-- one of the 50 latest saved sessions
CREATE FUNCTION fuzz.pool_session() RETURNS text
	LANGUAGE sql AS $$
	SELECT token FROM fuzz.sessions ORDER BY n DESC
	OFFSET fuzz.r(least(50, (SELECT count(*) FROM fuzz.sessions))::int) LIMIT 1 $$;

CREATE FUNCTION fuzz.pool_user() RETURNS text
	LANGUAGE sql AS $$
	SELECT user_id FROM fuzz.users ORDER BY n DESC
	OFFSET fuzz.r(least(300, (SELECT count(*) FROM fuzz.users))::int) LIMIT 1 $$;

-- looks generated (the session's prefix, 43 + 6 URL-safe base64
-- characters) but has a bad checksum, but for a chance of 2^-32
CREATE FUNCTION fuzz.fake_generated() RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	b64 text := 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
	s text := current_setting('tokenstore.token_prefix');
BEGIN
	FOR k IN 1 .. 49 LOOP
		s := s || substr(b64, 1 + fuzz.r(64), 1);
	END LOOP;
	RETURN s;
END $$;

-- the token with its last character changed (a generated one then has a
-- bad checksum)
CREATE FUNCTION fuzz.mutate(t text) RETURNS text
	LANGUAGE sql AS $$
	SELECT left(t, -1) || CASE WHEN right(t, 1) = 'A' THEN 'B' ELSE 'A' END $$;

-- Every generator below is a CASE statement, not a CASE expression: the
-- planner would fold the megabyte constants of every branch at each
-- session's first call.

-- a user id; every choice that could be valid holds i, so that the user
-- ids of different calls differ
CREATE FUNCTION fuzz.v_user(i int) RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	CASE fuzz.r(24)
		WHEN 0 THEN RETURN NULL;
		WHEN 1 THEN RETURN '';
		WHEN 2 THEN RETURN 'u' || i;
		WHEN 3 THEN RETURN fuzz.pad('u' || i || '-', 64);
		WHEN 4 THEN RETURN fuzz.pad('u' || i || '-', 65);
		WHEN 5 THEN RETURN fuzz.pad('u' || i || '-', 64, 'é');
		WHEN 6 THEN RETURN fuzz.pad('u' || i || '-', 63, '€') || '€';
		WHEN 7 THEN RETURN fuzz.pad('u' || i || '-', 64, '😀');
		WHEN 8 THEN RETURN fuzz.pad('u' || i || '-', 63) || 'é';
		WHEN 9 THEN RETURN 'u' || i || fuzz.weird();
		WHEN 10 THEN RETURN fuzz.weird() || i;
		WHEN 11 THEN
			IF fuzz.heavy() THEN RETURN repeat('u', 1048576); END IF;
			RETURN repeat('u', 1000);
		WHEN 12 THEN RETURN ' ' || i || ' ';
		WHEN 13 THEN RETURN 'u' || i || fuzz.weird() || fuzz.weird() || fuzz.weird();
		WHEN 14 THEN RETURN fuzz.pad(i || '-', 64, '€');
		ELSE RETURN i::text;
	END CASE;
END $$;

-- a user id for calls that read or revoke: often one that has tokens
CREATE FUNCTION fuzz.v_some_user(i int) RETURNS text
	LANGUAGE sql AS $$
	SELECT CASE WHEN fuzz.r(2) = 0 THEN fuzz.pool_user() ELSE fuzz.v_user(i) END $$;

CREATE FUNCTION fuzz.v_token(i int) RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	CASE fuzz.r(30)
		WHEN 0 THEN RETURN NULL;
		WHEN 1 THEN RETURN '';
		WHEN 7 THEN RETURN fuzz.mutate(fuzz.pool_token());
		WHEN 8 THEN RETURN upper(fuzz.pool_token());
		WHEN 9 THEN RETURN fuzz.pool_token() || ' ';
		WHEN 10 THEN RETURN fuzz.pad('t' || i || '-', 15);
		WHEN 11 THEN RETURN fuzz.pad('t' || i || '-', 16);
		WHEN 12 THEN RETURN fuzz.pad('t' || i || '-', 1024);
		WHEN 13 THEN RETURN fuzz.pad('t' || i || '-', 1025);
		WHEN 14 THEN
			IF fuzz.heavy() THEN RETURN repeat('t', 1048576); END IF;
			RETURN repeat('t', 4096);
		WHEN 15 THEN RETURN fuzz.fake_generated();
		WHEN 16 THEN RETURN current_setting('tokenstore.token_prefix');
		WHEN 17 THEN RETURN fuzz.pad('t' || i || fuzz.weird(), 16 + fuzz.r(100));
		WHEN 18 THEN RETURN fuzz.pool_id();
		WHEN 19 THEN RETURN fuzz.pad('t' || i || '-', 16 + fuzz.r(100), '😀');
		ELSE RETURN fuzz.pool_token();
	END CASE;
END $$;

CREATE FUNCTION fuzz.v_token_id(i int) RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	CASE fuzz.r(24)
		WHEN 0 THEN RETURN NULL;
		WHEN 1 THEN RETURN '';
		WHEN 2 THEN RETURN upper(fuzz.pool_id());
		WHEN 3 THEN RETURN left(fuzz.pool_id(), 31);
		WHEN 4 THEN RETURN fuzz.pool_id() || '0';
		WHEN 5 THEN RETURN repeat('g', 32);
		WHEN 6 THEN RETURN repeat('é', 16);
		WHEN 7 THEN RETURN repeat('ü', 32);
		WHEN 8 THEN
			IF fuzz.heavy() THEN RETURN repeat('a', 1048576); END IF;
			RETURN repeat('a', 64);
		WHEN 9 THEN RETURN md5(i::text);
		WHEN 10 THEN RETURN ' ' || left(fuzz.pool_id(), 31);
		WHEN 11 THEN RETURN fuzz.pool_token();
		WHEN 12 THEN RETURN left(md5(i::text), 30) || fuzz.weird();
		WHEN 13 THEN RETURN fuzz.pool_id() || chr(769);
		ELSE RETURN fuzz.pool_id();
	END CASE;
END $$;

-- a caller-provided token; unique to call i (so never made by another
-- call) when is_unique
CREATE FUNCTION fuzz.v_given(i int, OUT token text, OUT is_unique boolean)
	LANGUAGE plpgsql AS $$
BEGIN
	is_unique := false;
	CASE fuzz.r(14)
		WHEN 12, 13 THEN
			-- the latest caller-provided token made: a duplicate, if it lives
			token := (SELECT t.token FROM fuzz.tokens t WHERE t.given ORDER BY t.n DESC LIMIT 1);
		WHEN 0, 1, 2, 3 THEN
			token := fuzz.pad('given-' || i || '-', 16 + fuzz.r(60));
			is_unique := true;
		WHEN 4 THEN
			token := fuzz.pad('given-' || i || '-', 1024, '€');
			is_unique := true;
		WHEN 5 THEN
			token := fuzz.pad('given-' || i || '-' || fuzz.weird(), 16);
			is_unique := octet_length(token) <= 1024;
		WHEN 6 THEN token := fuzz.pad('given-' || i || '-', 15);
		WHEN 7 THEN token := fuzz.pad('given-' || i || '-', 1025);
		WHEN 8 THEN token := fuzz.pool_token();
		WHEN 9 THEN token := fuzz.fake_generated();
		WHEN 10 THEN
			IF fuzz.heavy() THEN token := repeat('g', 1048576);
			ELSE token := repeat('g', 2000); END IF;
		ELSE token := fuzz.mutate(fuzz.pool_token());
	END CASE;
END $$;

CREATE FUNCTION fuzz.v_info() RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	CASE fuzz.r(40)
		WHEN 0 THEN RETURN NULL;
		WHEN 1 THEN RETURN '{}';
		WHEN 2 THEN RETURN '[]';
		WHEN 3 THEN RETURN '"str"';
		WHEN 4 THEN RETURN '1';
		WHEN 5 THEN RETURN 'null';
		WHEN 6 THEN RETURN 'not json';
		WHEN 7 THEN RETURN '{"a": ' || repeat('[', 10000) || repeat(']', 10000) || '}';
		WHEN 8 THEN RETURN repeat('{"a": ', 10000) || '1' || repeat('}', 10000);
		WHEN 9 THEN
			-- deeper than the stack allows
			IF fuzz.heavy() THEN
				RETURN '{"a": ' || repeat('[', 100000) || repeat(']', 100000) || '}';
			END IF;
			RETURN '{"a": ' || repeat('[', 1000) || repeat(']', 1000) || '}';
		WHEN 10 THEN
			IF fuzz.heavy() THEN
				RETURN '{"big": "' || repeat('x', 3 * 1048576) || '"}';
			END IF;
			RETURN '{"big": "' || repeat('x', 100000) || '"}';
		WHEN 11 THEN RETURN '{"\u0000": 1}';
		WHEN 12 THEN RETURN '{"a": "\ud800"}';
		WHEN 13 THEN RETURN '{"a": 1e1000000}';
		WHEN 14 THEN
			IF fuzz.heavy() THEN
				RETURN (SELECT jsonb_object_agg('k' || k, k)::text FROM generate_series(1, 20000) k);
			END IF;
			RETURN (SELECT jsonb_object_agg('k' || k, k)::text FROM generate_series(1, 200) k);
		WHEN 15 THEN RETURN jsonb_build_object(fuzz.weird(), fuzz.weird())::text;
		WHEN 16 THEN RETURN '{"a": 1, "a": 2}';
		WHEN 17 THEN RETURN '';
		WHEN 18 THEN
			IF fuzz.heavy() THEN RETURN '{"a": [' || repeat('1,', 100000) || '1]}'; END IF;
			RETURN '{"a": [' || repeat('1,', 1000) || '1]}';
		WHEN 19 THEN
			IF fuzz.heavy() THEN RETURN jsonb_build_object(repeat('k', 1048576), 1)::text; END IF;
			RETURN jsonb_build_object(repeat('k', 10000), 1)::text;
		WHEN 20 THEN RETURN '  {"ws": true}  ';
		WHEN 21 THEN RETURN '{"n": -0, "f": 1.0e-400, "t": "\u00e9\ud83d\ude00"}';
		WHEN 22 THEN RETURN '{"a": "' || repeat('\\', 1000) || '"}';
		ELSE RETURN '{"device": "laptop", "n": ' || fuzz.r(1000) || '}';
	END CASE;
END $$;

-- an interval's text; 'infinity' is an interval from PostgreSQL 17 on, an
-- input error before
CREATE FUNCTION fuzz.v_interval() RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	CASE fuzz.r(32)
		WHEN 0, 1 THEN RETURN NULL;
		WHEN 2 THEN RETURN '1 hour';
		WHEN 3 THEN RETURN '30 days';
		WHEN 4 THEN RETURN '178000000 years';
		WHEN 5 THEN RETURN '-1 day 2 hours';
		WHEN 6 THEN RETURN '1 month -40 days';
		WHEN 7 THEN RETURN '2147483647 days';
		WHEN 8 THEN RETURN '-2147483648 days';
		WHEN 9 THEN RETURN '1 microsecond';
		WHEN 10 THEN RETURN '0.000001';
		WHEN 11 THEN RETURN '0';
		WHEN 12 THEN RETURN '-1 microsecond';
		WHEN 13 THEN RETURN '2147483647 months';
		WHEN 14 THEN RETURN '-178000000 years';
		WHEN 15 THEN RETURN '72000000 hours';
		WHEN 16 THEN RETURN '72000000 hours 1 microsecond';
		WHEN 17 THEN RETURN '2562047788:00:54.775807';
		WHEN 18 THEN RETURN '-2562047788:00:54.775808';
		WHEN 19 THEN RETURN 'P1Y2M3DT4H5M6.000007S';
		WHEN 20 THEN RETURN '@ 1 day ago';
		WHEN 21 THEN RETURN 'infinity';
		WHEN 22 THEN RETURN '-infinity';
		-- just past and just before the last deadline allowed
		WHEN 23 THEN RETURN (timestamptz '10000-01-01 00:00:00+00' - now())::text;
		WHEN 24 THEN RETURN (timestamptz '10000-01-01 00:00:00+00' - now() - interval '1 day')::text;
		WHEN 25 THEN RETURN '1 fortnight';
		WHEN 26 THEN RETURN fuzz.r(1000000) || ' seconds';
		WHEN 27 THEN RETURN '1 mon 1 day 1 hour';
		WHEN 28 THEN RETURN '7000 years';
		WHEN 29 THEN RETURN '1 year -365 days -1 microsecond';
		WHEN 30 THEN RETURN '2147483647 months 2147483647 days 2562047788:00:54.775807';
		ELSE RETURN '3 seconds';
	END CASE;
END $$;

-- a session's expires_at: past, pre-2000, infinite, at and past the end of
-- what tokenstore and PostgreSQL accept, malformed
CREATE FUNCTION fuzz.v_expires() RETURNS text
	LANGUAGE sql AS $$
	SELECT (ARRAY[NULL, NULL, 'infinity', '-infinity',
		(now() - interval '1 day')::text, (now() - interval '1 microsecond')::text,
		'1999-12-31 23:59:59.999999+00', '1970-01-01 00:00:00+00',
		'4714-11-24 00:00:00+00 BC', '9999-12-31 23:59:59.999999+00',
		'10000-01-01 00:00:00+00', '294276-12-31 23:59:59.999999+00', 'garbage', '',
		'now', (now() + interval '2 seconds')::text, '2038-01-19 03:14:08+00',
		(now() + interval '30 days')::text, (now() + interval '30 days')::text,
		(now() + interval '30 days')::text])[1 + fuzz.r(20)] $$;

-- a session's data, as bytea input: NULL, empty, a megabyte, malformed
CREATE FUNCTION fuzz.v_data() RETURNS text
	LANGUAGE plpgsql AS $$
BEGIN
	IF fuzz.r(12) = 0 THEN
		IF fuzz.heavy() THEN RETURN '\x' || repeat('00ff', 524288); END IF;
		RETURN '\x' || repeat('00ff', 5000);
	END IF;
	RETURN (ARRAY[NULL, NULL, '', '\x', '\xZZ', '\x0', E'\\000\\377', fuzz.weird(),
		'\x00', '\x' || md5(random()::text), '\x' || md5(random()::text)])[1 + fuzz.r(11)];
END $$;

-- a setting and a value for set_config: the seven the application may
-- set, two of PostgreSQL's that change how times read and print, and some
-- that are not the application's to set
CREATE FUNCTION fuzz.v_setting(OUT name text, OUT value text)
	LANGUAGE plpgsql AS $$
DECLARE
	span text[] := ARRAY['0', '1', '1s', '1h', '-1', '2147483647', '2147483648',
		'178000000 years', 'abc', '1min', '10ms', '1d', '', '2147483647d', '0.5'];
BEGIN
	CASE fuzz.r(11)
		WHEN 0 THEN
			name := 'tokenstore.token_prefix';
			CASE fuzz.r(12)
				WHEN 0 THEN value := '';
				WHEN 1 THEN value := 'abc_';
				WHEN 2 THEN value := repeat('a', 16);
				WHEN 3 THEN value := repeat('a', 17);
				WHEN 4 THEN value := 'bad prefix';
				WHEN 5 THEN value := 'é';
				WHEN 6 THEN
					IF fuzz.heavy() THEN value := repeat('p', 1048576);
					ELSE value := repeat('p', 1000); END IF;
				WHEN 7 THEN value := 'x%s%n';
				WHEN 8 THEN value := 'tks';
				WHEN 9 THEN value := 'x-_9';
				ELSE value := 'tks_';
			END CASE;
		WHEN 1 THEN
			name := 'tokenstore.default_ttl';
			value := span[1 + fuzz.r(cardinality(span))];
		WHEN 2 THEN
			name := 'tokenstore.default_idle_timeout';
			value := span[1 + fuzz.r(cardinality(span))];
		WHEN 3 THEN
			name := 'tokenstore.login_mode';
			value := fuzz.pick('multi', 'single', 'share', 'bogus', '', 'MULTI', 'multi', 'multi');
		WHEN 4 THEN
			name := 'tokenstore.max_tokens_per_user';
			value := fuzz.pick('-1', '0', '1', '3', '2147483647', '2147483648', 'x', '0', '0');
		WHEN 5 THEN
			name := 'tokenstore.touch_interval';
			value := fuzz.pick('0', '-1', '1h', '2147483647', '1ms', 'abc', '1s');
		WHEN 6 THEN
			name := 'tokenstore.notify';
			value := fuzz.pick('on', 'off', 'true', 'maybe', '', 'off');
		WHEN 7 THEN
			name := 'TimeZone';
			value := fuzz.pick('UTC', 'Pacific/Kiritimati', 'America/St_Johns', '-15',
				'+14:59', 'garbage', 'Etc/GMT+12', 'UTC');
		WHEN 8 THEN
			name := 'IntervalStyle';
			value := fuzz.pick('postgres', 'sql_standard', 'iso_8601', 'postgres_verbose',
				'postgres');
		ELSE
			name := fuzz.pick('tokenstore.redis_url', 'tokenstore.flush_interval',
				'tokenstore.max_cached_tokens', 'tokenstore.bogus',
				'tokenstore.redis_prefix', 'tokenstore.sweep_interval');
			value := fuzz.pick('redis://127.0.0.1:1/0', '100', 'x:', '');
	END CASE;
END $$;

CREATE FUNCTION fuzz.quote(v text) RETURNS text
	LANGUAGE sql AS $$
	SELECT CASE WHEN v IS NULL THEN 'NULL'
		WHEN octet_length(v) <= 60 THEN quote_literal(v)
		ELSE quote_literal(left(v, 24)) || '...[' || octet_length(v) || ' bytes]' END $$;

-- plan call i: draw a function and its arguments, store them
CREATE FUNCTION fuzz.plan_one(i int) RETURNS void
	LANGUAGE plpgsql AS $$
DECLARE
	fn text;
	names text[] := '{}';		-- NULL: positional
	types text[] := '{}';
	args text[] := '{}';
	sql text;
	display text;
	make_user text;
	given text;
	given_unique boolean := false;
	old_token text;
	w int := fuzz.r(118);
	-- a wild call draws every argument from the hostile values; a calm
	-- one mostly from ordinary ones, so that tokens get made
	wild boolean := fuzz.r(5) < 2;
	-- all of these must fail with 42501
	probes text[] := ARRAY[
		'SELECT count(*)::text FROM tokenstore.token',
		'SELECT count(*)::text FROM tokenstore.stats',
		'SELECT count(*)::text FROM tokenstore.redis_stats',
		'SELECT count(*)::text FROM tokenstore_internal.token_stats()',
		'SELECT tokenstore_internal.last_used(''\x00''::bytea, now())::text',
		'SELECT tokenstore_internal.token_record_uses(ARRAY[''\x00''::bytea], ARRAY[now()])::text',
		'UPDATE tokenstore.token SET user_id = ''x'' RETURNING user_id',
		'DELETE FROM tokenstore.token RETURNING user_id',
		'TRUNCATE tokenstore.token',
		'SELECT current_setting(''tokenstore.redis_url'')',
		'SELECT pg_read_file(''tokenstore.key'')',
		'CREATE FUNCTION tokenstore.f() RETURNS int LANGUAGE sql AS ''SELECT 1''',
		'ALTER FUNCTION tokenstore.token_user(text) SECURITY INVOKER'];
	s record;
	k int;
BEGIN
	IF w < 24 THEN
		fn := 'token_make';
		make_user := CASE WHEN fuzz.r(40) = 0 THEN NULL
			WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_user(i) ELSE 'u' || i END;
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[make_user];
		IF fuzz.r(2) = 0 THEN
			names := names || 'info'::text; types := types || 'jsonb'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_info()
				ELSE '{"device": "phone", "n": ' || i || '}' END;
		END IF;
		IF fuzz.r(2) = 0 THEN
			names := names || 'ttl'::text; types := types || 'interval'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_interval()
				ELSE fuzz.pick(NULL, '1 hour', '30 days', '2 seconds') END;
		END IF;
		IF fuzz.r(2) = 0 THEN
			names := names || 'idle_timeout'::text; types := types || 'interval'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_interval()
				ELSE fuzz.pick(NULL, '1 hour', '10 minutes', '2 seconds') END;
		END IF;
		IF fuzz.r(2) = 0 THEN
			names := names || 'mode'::text; types := types || 'text'::text;
			IF wild OR fuzz.r(8) = 0 THEN
				CASE fuzz.r(10)
					WHEN 0 THEN args := args || 'MULTI'::text;
					WHEN 1 THEN args := args || ''::text;
					WHEN 2 THEN args := args || 'bogus'::text;
					WHEN 3 THEN
						args := args || CASE WHEN fuzz.heavy() THEN repeat('m', 1048576)
							ELSE repeat('m', 1000) END;
					WHEN 4 THEN args := args || 'share '::text;
					WHEN 5 THEN args := args || 'mültì'::text;
					WHEN 6 THEN args := args || fuzz.weird();
					ELSE args := args || fuzz.pick(NULL, 'multi', 'single', 'share');
				END CASE;
			ELSE
				args := args || fuzz.pick(NULL, 'multi', 'single', 'share');
			END IF;
		END IF;
		IF fuzz.r(2) = 0 THEN
			names := names || 'max_tokens'::text; types := types || 'integer'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN
				fuzz.pick(NULL, '0', '1', '-1', '2147483647', '-2147483648', '2147483648',
					'abc', '1.5')
				ELSE fuzz.pick(NULL, '0', '1', '2', '3') END;
		END IF;
		IF fuzz.r(3) = 0 THEN
			SELECT * INTO s FROM fuzz.v_given(i);
			given := s.token;
			given_unique := s.is_unique;
			names := names || 'token'::text; types := types || 'text'::text; args := args || given;
		END IF;
		IF fuzz.r(4) = 0 THEN
			names := names || 'expires_at'::text; types := types || 'timestamptz'::text;
			args := args || fuzz.v_expires();
		END IF;
	ELSIF w < 34 THEN
		fn := 'token_user';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token(i)];
	ELSIF w < 42 THEN
		fn := 'token_check';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token(i)];
	ELSIF w < 49 THEN
		fn := 'token_list';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_some_user(i)];
	ELSIF w < 55 THEN
		fn := 'token_refresh';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token(i)];
		IF fuzz.r(2) = 0 THEN
			names := names || 'ttl'::text; types := types || 'interval'::text;
			args := args || fuzz.v_interval();
		END IF;
		IF fuzz.r(3) = 0 THEN
			names := names || 'idle_timeout'::text; types := types || 'interval'::text;
			args := args || fuzz.v_interval();
		END IF;
		IF fuzz.r(4) = 0 THEN
			names := names || 'expires_at'::text; types := types || 'timestamptz'::text;
			args := args || fuzz.v_expires();
		END IF;
	ELSIF w < 60 THEN
		fn := 'token_set_info';
		names := ARRAY[NULL, 'info']; types := ARRAY['text', 'jsonb'];
		args := ARRAY[fuzz.v_token(i), fuzz.v_info()];
	ELSIF w < 64 THEN
		fn := 'token_delete';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token(i)];
	ELSIF w < 70 THEN
		fn := 'token_delete_id';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token_id(i)];
	ELSIF w < 73 THEN
		fn := 'token_delete_user';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_some_user(i)];
		IF fuzz.r(2) = 0 THEN
			names := names || 'keep_token'::text; types := types || 'text'::text;
			args := args || fuzz.v_token(i);
		END IF;
	ELSIF w < 79 THEN
		fn := 'token_rotate';
		names := ARRAY[NULL]; types := ARRAY['text']; args := ARRAY[fuzz.v_token(i)];
		IF fuzz.r(2) = 0 THEN
			names := names || 'grace'::text; types := types || 'interval'::text;
			args := args || fuzz.v_interval();
		END IF;
		IF fuzz.r(2) = 0 THEN
			-- sign-in: a calm one attaches a new user to the latest anonymous
			-- session none signed in to yet
			IF NOT wild THEN
				UPDATE fuzz.sessions SET anonymous = false
				WHERE n = (SELECT max(n) FROM fuzz.sessions WHERE anonymous)
				RETURNING token INTO old_token;
				args[1] := coalesce(old_token, args[1]);
			END IF;
			make_user := CASE WHEN wild THEN fuzz.v_some_user(i) ELSE 'u' || i END;
			names := names || 'user_id'::text; types := types || 'text'::text;
			args := args || make_user;
		END IF;
		IF fuzz.r(2) = 0 THEN
			IF wild THEN
				SELECT * INTO s FROM fuzz.v_given(i);
				given := s.token;
				given_unique := s.is_unique;
			ELSE
				given := fuzz.pad('new-' || i || '-', 20 + fuzz.r(40));
				given_unique := true;
			END IF;
			names := names || 'new_token'::text; types := types || 'text'::text;
			args := args || given;
		END IF;
	ELSIF w < 80 THEN
		fn := 'token_sweep';
	ELSIF w < 81 THEN
		fn := 'token_flush';
	ELSIF w < 90 THEN
		fn := 'token_save';
		IF wild THEN
			IF fuzz.r(3) = 0 THEN
				given := fuzz.v_token(i);
			ELSE
				SELECT * INTO s FROM fuzz.v_given(i);
				given := s.token;
				given_unique := s.is_unique;
			END IF;
			make_user := CASE WHEN fuzz.r(4) = 0 THEN NULL ELSE fuzz.v_some_user(i) END;
		ELSE
			IF fuzz.r(4) = 0 THEN
				-- a save of a session saved before
				given := fuzz.pool_session();
			END IF;
			IF given IS NULL THEN
				given := fuzz.pad('sess-' || i || '-', 20 + fuzz.r(40));
				given_unique := true;
			END IF;
			make_user := CASE WHEN fuzz.r(3) = 0 THEN NULL ELSE 'u' || i END;
		END IF;
		names := ARRAY[NULL, NULL, NULL, NULL];
		types := ARRAY['text', 'text', 'bytea', 'timestamptz'];
		args := ARRAY[given, make_user,
			CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_data() ELSE '\x' || md5(i::text) END,
			CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_expires()
				ELSE (now() + interval '1 day')::text END];
		IF fuzz.r(2) = 0 THEN
			names := names || 'idle_timeout'::text; types := types || 'interval'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_interval()
				ELSE fuzz.pick(NULL, '1 hour', '10 minutes') END;
		END IF;
		IF fuzz.r(2) = 0 THEN
			names := names || 'info'::text; types := types || 'jsonb'::text;
			args := args || CASE WHEN wild OR fuzz.r(8) = 0 THEN fuzz.v_info()
				ELSE '{"device": "browser"}' END;
		END IF;
	ELSIF w < 98 THEN
		fn := CASE WHEN w < 95 THEN 'token_data' ELSE 'token_touch' END;
		names := ARRAY[NULL]; types := ARRAY['text'];
		args := ARRAY[CASE WHEN fuzz.r(2) = 0 THEN fuzz.pool_session()
			ELSE fuzz.v_token(i) END];
	ELSIF w < 99 THEN
		fn := 'token_sessions';
	ELSIF w < 100 THEN
		fn := 'token_delete_sessions';
		IF fuzz.r(2) = 0 THEN
			names := ARRAY[NULL]; types := ARRAY['boolean'];
			args := ARRAY[fuzz.pick(NULL, 'true', 'false', 'true', 'maybe', '')];
		END IF;
	ELSIF w < 111 THEN
		fn := 'set_config';
		SELECT * INTO s FROM fuzz.v_setting();
		sql := 'SELECT set_config($1, $2, ' || fuzz.pick('true', 'false') || ')';
		args := ARRAY[s.name, s.value];
		display := 'set_config(' || fuzz.quote(s.name) || ', ' || fuzz.quote(s.value) || ')';
	ELSIF w < 115 THEN
		fn := 'current_setting';
		sql := 'SELECT current_setting($1)';
		args := ARRAY[fuzz.pick('tokenstore.token_prefix', 'tokenstore.default_ttl',
			'tokenstore.default_idle_timeout', 'tokenstore.login_mode',
			'tokenstore.max_tokens_per_user', 'tokenstore.touch_interval',
			'tokenstore.notify', 'tokenstore.flush_interval', 'tokenstore.redis_prefix',
			'tokenstore.bogus')];
		display := 'current_setting(' || fuzz.quote(args[1]) || ')';
	ELSE
		fn := 'probe';
		sql := probes[1 + fuzz.r(cardinality(probes))];
		display := sql;
	END IF;

	IF sql IS NULL THEN
		-- tokenstore.fn($1::type, name => $2::type, ...); set-returning
		-- functions print every column of every row
		IF fn = 'token_check' THEN
			sql := 'SELECT string_agg(c::text, '','') FROM tokenstore.token_check(';
		ELSIF fn IN ('token_list', 'token_sessions') THEN
			sql := 'SELECT string_agg(c.token_id || '':'' || md5(c::text), '' '' ORDER BY c.token_id) FROM tokenstore.' || fn || '(';
		ELSE
			sql := 'SELECT tokenstore.' || fn || '(';
		END IF;
		display := fn || '(';
		FOR k IN 1 .. coalesce(cardinality(args), 0) LOOP
			sql := sql || CASE WHEN k > 1 THEN ', ' ELSE '' END
				|| coalesce(names[k] || ' => ', '') || '$' || k || '::' || types[k];
			display := display || CASE WHEN k > 1 THEN ', ' ELSE '' END
				|| coalesce(names[k] || ' => ', '') || fuzz.quote(args[k]);
		END LOOP;
		sql := sql || ')' || CASE WHEN fn IN ('token_check', 'token_list', 'token_sessions')
			THEN ' c' ELSE '::text' END;
		display := display || ')';
	END IF;
	INSERT INTO fuzz.plan VALUES (i, fn, sql, args, left(display, 200), make_user, given, given_unique);
END $$;

-- run call i as planned; its result.  What it made goes to the pools
-- (not in a read-only transaction, where that would be the error).
CREATE FUNCTION fuzz.exec(call int) RETURNS text
	LANGUAGE plpgsql AS $$
DECLARE
	p fuzz.plan;
	res text;
BEGIN
	SELECT * INTO STRICT p FROM fuzz.plan WHERE i = call;
	EXECUTE p.sql INTO res
		USING p.args[1], p.args[2], p.args[3], p.args[4], p.args[5], p.args[6], p.args[7],
			p.args[8];
	IF current_setting('transaction_read_only') = 'on' THEN
		RETURN res;
	END IF;
	IF p.fn IN ('token_make', 'token_rotate') AND res IS NOT NULL THEN
		INSERT INTO fuzz.tokens (token, given) VALUES (res, p.given_token IS NOT NULL);
	END IF;
	IF p.fn = 'token_save' THEN
		INSERT INTO fuzz.tokens (token, given) VALUES (p.given_token, true);
		-- anonymous: one to sign in to (token_rotate with user_id) that
		-- lives a while yet
		INSERT INTO fuzz.sessions (token, anonymous) VALUES (p.given_token, p.make_user IS NULL
			AND coalesce(p.args[4]::timestamptz > now() + interval '1 hour', true));
	END IF;
	IF p.fn IN ('token_make', 'token_save', 'token_rotate') AND p.make_user IS NOT NULL THEN
		INSERT INTO fuzz.users (user_id) VALUES (p.make_user);
	END IF;
	IF p.fn IN ('token_list', 'token_sessions') AND res IS NOT NULL THEN
		INSERT INTO fuzz.ids (id)
			SELECT split_part(x, ':', 1) FROM unnest(string_to_array(res, ' ')) x;
	END IF;
	RETURN res;
END $$;

-- plan and run calls first..last, each in a subtransaction of its own;
-- every outcome goes to fuzz.result
CREATE FUNCTION fuzz.run(first int, last int) RETURNS bigint
	LANGUAGE plpgsql AS $$
DECLARE
	c int;
	t0 timestamptz;
	res text;
	st text;
	msg text;
BEGIN
	FOR c IN first .. last LOOP
		PERFORM fuzz.plan_one(c);
		RAISE NOTICE 'fuzz call %: %', c, (SELECT display FROM fuzz.plan WHERE i = c);
		res := NULL;
		msg := NULL;
		t0 := clock_timestamp();
		BEGIN
			res := fuzz.exec(c);
			st := '00000';
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
		END;
		INSERT INTO fuzz.result
			VALUES (c, st, left(msg, 300), left(res, 200), 'subtransaction',
					1000 * extract(epoch FROM clock_timestamp() - t0));
	END LOOP;
	RETURN last - first + 1;
END $$;
SQL

# install(NODE, DB, ROLE): create schema fuzz in DB, usable by ROLE
sub install
{
	my ($node, $db, $role) = @_;

	$node->safe_psql($db, $driver);
	$node->safe_psql($db,
		"GRANT USAGE ON SCHEMA fuzz TO $role; "
		  . "GRANT ALL ON ALL TABLES IN SCHEMA fuzz TO $role; "
		  . "GRANT ALL ON ALL SEQUENCES IN SCHEMA fuzz TO $role");
	return;
}

# redis_mismatch(NODE, DB, REDIS): how REDIS differs from the tokens of
# database DB (named DB in keys): '' when every row of tokenstore.token
# has its key, naming its user first in the JSON, and is in its user's
# set (an anonymous session's names none and is in no set), and Redis
# holds nothing else under tokenstore:DB:.
sub redis_mismatch
{
	my ($node, $db, $redis) = @_;
	my $ns = "tokenstore:$db:";
	my (%want, %sets, @diff);

	# hex, so that any byte of a user id comes through
	foreach (split /\n/,
		$node->safe_psql($db,
			"SELECT encode(token_hash, 'hex'), coalesce(encode(convert_to(user_id, 'UTF8'), 'hex'), '-') FROM tokenstore.token"))
	{
		my ($hash, $user) = split /\|/;

		# an anonymous session: user_id null in its value, in no set
		if ($user eq '-')
		{
			$want{"${ns}token:$hash"} = '';
			next;
		}
		$user = pack('H*', $user);
		$want{"${ns}token:$hash"} = $user;
		push @{ $sets{"${ns}user:$user"} }, "${ns}token:$hash";
	}

	# every key with the first 2000 bytes of its value, or its members
	(my $glob = $ns) =~ s/([*?\[\]\\])/\\$1/g;
	my $all = $redis->contents("$glob*", 2000);
	return "Redis gives no contents: " . $redis->last_error
	  unless defined $all;

	my @tokens = grep { /^\Q$ns\Etoken:/ } keys %$all;
	my @users = grep { /^\Q$ns\Euser:/ } keys %$all;
	my @stray = grep { !/^\Q$ns\E(token|user):/ } keys %$all;

	push @diff, map { "missing $_" } grep { !exists $all->{$_} } sort keys %want;
	push @diff, map { "revoked or stray $_" } grep { !exists $want{$_} } sort @tokens;
	push @diff, map { "unknown key " . printable($_) } sort @stray;
	foreach my $token (sort grep { exists $want{$_} } @tokens)
	{
		my $user = '';
		if (!ref $all->{$token}
			&& $all->{$token} =~ /^\{"user_id":\s*("(?:[^"\\]|\\.)*")/s)
		{
			$user = eval { JSON::PP->new->utf8->allow_nonref->decode($1) } // '';
			utf8::encode($user);
		}
		push @diff,
		  "$token has user " . printable($user) . ', not ' . printable($want{$token})
		  if $user ne $want{$token};
	}
	foreach my $set (sort(keys %sets), sort grep { !$sets{$_} } @users)
	{
		my $have = join(' ', @{ ref $all->{$set} eq 'ARRAY' ? $all->{$set} : [] });
		my $want = join(' ', sort @{ $sets{$set} // [] });
		push @diff, 'set ' . printable($set) . " is {$have}, not {$want}"
		  if $have ne $want;
	}
	return join("\n", @diff);
}

# printable(BYTES): for diagnostics, with controls and non-ASCII bytes as \xNN
sub printable
{
	my ($s) = @_;
	$s =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord($1))/ge;
	return length($s) > 200 ? substr($s, 0, 200) . '...' : $s;
}

1;
