-- The session store of web frameworks: save, find (token_data), touch,
-- delete; sessions without a user; sign-in; the "none" spellings.
\set sid 'session-id-aaaaaaaaaaaaaaaaaaaa'
\set payload '\\x7b2262223a312c2261223a2200227dff00'

-- a first save makes an anonymous session; its data comes back byte for byte
SELECT tokenstore.token_save(:'sid', NULL, :'payload', now() + interval '1 hour') AS created;
SELECT tokenstore.token_data(:'sid') = :'payload'::bytea AS same_bytes,
	   tokenstore.token_user(:'sid') IS NULL AS no_user,
	   tokenstore.token_touch(:'sid') AS touched;
SELECT user_id IS NULL AS anonymous, expires_at > now() + interval '59 minutes' AS one_hour
  FROM tokenstore.token_check(:'sid');

-- a second save replaces data and deadline, keeps the session's creation
SELECT created_at AS created_first FROM tokenstore.token_check(:'sid') \gset
SELECT tokenstore.token_save(:'sid', NULL, '\x01', now() + interval '2 hours') AS created;
SELECT tokenstore.token_data(:'sid') AS data,
	   (SELECT created_at = :'created_first' AND expires_at > now() + interval '119 minutes'
		  FROM tokenstore.token_check(:'sid')) AS kept_creation_new_deadline;
-- an empty payload is a payload; NULL is stored as one
SELECT tokenstore.token_save(:'sid', NULL, NULL, now() + interval '1 hour') AS created;
SELECT tokenstore.token_data(:'sid') AS empty_data;

-- the "none" spellings: 'infinity' for no absolute deadline, 0 for no idle timeout
SET tokenstore.default_ttl = '1h';
SET tokenstore.default_idle_timeout = '10min';
SELECT tokenstore.token_save(:'sid', NULL, '\x02', 'infinity', '0') AS created;
SELECT expires_at IS NULL AS no_deadline FROM tokenstore.token_check(:'sid');
SELECT expires_at IS NULL AND idle_timeout IS NULL AS none_stored
  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'sid', 'UTF8'));
-- NULL takes the settings
SELECT tokenstore.token_save(:'sid', NULL, '\x02', NULL) AS created;
SELECT expires_at <= now() + interval '1 hour' AS default_ttl,
	   idle_timeout = '10 minutes' AS default_idle
  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'sid', 'UTF8'));
SELECT tokenstore.token_make('none-user', ttl => NULL, idle_timeout => '0') AS none_tok \gset
SELECT expires_at IS NOT NULL AND idle_timeout IS NULL AS make_idle_none
  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'none_tok', 'UTF8'));
RESET tokenstore.default_ttl;
RESET tokenstore.default_idle_timeout;
-- a live session's idle timeout changes with its next save
SELECT tokenstore.token_save(:'sid', NULL, '\x03', 'infinity', '5 minutes') AS created;
SELECT expires_at <= clock_timestamp() + interval '5 minutes' AS idle_deadline
  FROM tokenstore.token_check(:'sid');

-- a deadline in the past ends the session at once; the next save makes it anew
SELECT tokenstore.token_save(:'sid', NULL, '\x04', now() - interval '1 minute') AS created;
SELECT tokenstore.token_data(:'sid') IS NULL AS ended,
	   tokenstore.token_touch(:'sid') AS touched;
SELECT tokenstore.token_save(:'sid', NULL, '\x05', '-infinity') AS created;
SELECT tokenstore.token_data(:'sid') IS NULL AS ended;
SELECT tokenstore.token_save(:'sid', NULL, '\x06', now() + interval '1 hour') AS created;
SELECT created_at > :'created_first' AS new_session FROM tokenstore.token_check(:'sid');
-- so does a ttl of zero or less in token_make and token_refresh
SELECT tokenstore.token_make('dead-at-once', ttl => '0') AS dead_tok \gset
SELECT tokenstore.token_user(:'dead_tok') IS NULL AS made_dead;
SELECT tokenstore.token_make('dead-at-once', ttl => '-5 minutes') AS dead_tok \gset
SELECT tokenstore.token_user(:'dead_tok') IS NULL AS made_dead;
SELECT tokenstore.token_make('dead-at-once') AS live_tok \gset
SELECT tokenstore.token_refresh(:'live_tok', '-1 day') AS refreshed,
	   tokenstore.token_user(:'live_tok') IS NULL AS ended;
-- 'infinity' as an interval, where the server has infinite intervals (17 and later)
DO $$
DECLARE
	tok text;
	ok boolean;
BEGIN
	IF pg_catalog.current_setting('server_version_num')::int >= 170000 THEN
		EXECUTE $q$SELECT tokenstore.token_make('inf', ttl => 'infinity'::interval, idle_timeout => 'infinity'::interval)$q$ INTO tok;
		SELECT expires_at IS NULL INTO ok FROM tokenstore.token_check(tok);
		IF NOT ok THEN
			RAISE EXCEPTION 'ttl => infinity left a deadline';
		END IF;
		PERFORM tokenstore.token_delete(tok);
	END IF;
END
$$;

-- the user a save names: a session keeps its user, another user's is refused
SELECT tokenstore.token_save('session-id-bbbbbbbbbbbbbbbbbbbb', NULL, '\x01', 'infinity') AS created;
SELECT sqlstate_of($$SELECT tokenstore.token_save('session-id-bbbbbbbbbbbbbbbbbbbb', 'mallory', '\x02', 'infinity')$$)
	AS anonymous_is_not_yours;
SELECT tokenstore.token_data('session-id-bbbbbbbbbbbbbbbbbbbb') AS untouched;

-- a token made by token_make is no session: a save never takes it over
SELECT tokenstore.token_make('dave') AS api_tok \gset
SELECT sqlstate_of(format('SELECT tokenstore.token_save(%L, NULL, ''\x01'', ''infinity'')', :'api_tok'))
	AS api_token_refused;
SELECT tokenstore.token_data(:'api_tok') IS NULL AS no_data, tokenstore.token_user(:'api_tok') AS still_dave;

-- sign-in: attach the user and change the id in one call (against fixation)
SELECT tokenstore.token_rotate('session-id-bbbbbbbbbbbbbbbbbbbb', user_id => 'alice',
							   new_token => 'session-id-cccccccccccccccccccc') AS signed_in;
SELECT tokenstore.token_data('session-id-bbbbbbbbbbbbbbbbbbbb') IS NULL AS old_id_dead,
	   tokenstore.token_data('session-id-cccccccccccccccccccc') AS data_carried,
	   tokenstore.token_user('session-id-cccccccccccccccccccc') AS user_attached;
SELECT tokenstore.token_save('session-id-cccccccccccccccccccc', NULL, '\x07', 'infinity') AS created;
SELECT tokenstore.token_save('session-id-cccccccccccccccccccc', 'alice', '\x08', 'infinity') AS created;
SELECT tokenstore.token_user('session-id-cccccccccccccccccccc') AS user_kept,
	   tokenstore.token_data('session-id-cccccccccccccccccccc') AS data;
SELECT sqlstate_of($$SELECT tokenstore.token_save('session-id-cccccccccccccccccccc', 'mallory', '\x09', 'infinity')$$)
	AS others_refused;
SELECT sqlstate_of($$SELECT tokenstore.token_rotate('session-id-cccccccccccccccccccc', user_id => 'mallory')$$)
	AS rotate_to_other_refused;
SELECT count(*) AS alice_tokens FROM tokenstore.token_list('alice');
-- a generated new id, when the framework lets tokenstore make it
SELECT tokenstore.token_save('session-id-dddddddddddddddddddd', NULL, '\x0a', 'infinity') AS created;
SELECT tokenstore.token_rotate('session-id-dddddddddddddddddddd', user_id => 'bob') AS bob_tok \gset
SELECT :'bob_tok' ~ '^tks_' AS generated, tokenstore.token_data(:'bob_tok') AS data_carried;

-- per-user rules never touch anonymous sessions
SELECT tokenstore.token_save('session-id-eeeeeeeeeeeeeeeeeeee', NULL, '\x0b', 'infinity') AS created;
SELECT tokenstore.token_make('carol', mode => 'single') IS NOT NULL AS single_login;
SELECT tokenstore.token_data('session-id-eeeeeeeeeeeeeeeeeeee') AS anonymous_untouched;

-- an operator counts and clears sessions; tokens made by token_make stay
SELECT count(*) FILTER (WHERE user_id IS NULL) AS anonymous,
	   count(*) FILTER (WHERE user_id IS NOT NULL) AS signed_in
  FROM tokenstore.token_sessions();
SELECT token_id = encode(substr(sha256(convert_to('session-id-eeeeeeeeeeeeeeeeeeee', 'UTF8')), 1, 16), 'hex') AS by_handle,
	   data
  FROM tokenstore.token_sessions() WHERE data = '\x0b';
SELECT tokenstore.token_delete_sessions(anonymous_only => true) AS anonymous_cleared;
SELECT tokenstore.token_data('session-id-cccccccccccccccccccc') AS alice_kept;
SELECT tokenstore.token_delete_sessions() AS cleared;
SELECT count(*) AS sessions_left FROM tokenstore.token_sessions();
SELECT tokenstore.token_user(:'none_tok') AS api_token_kept;

-- saves that extend a session are HOT updates: no index covers what they move
SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', NULL, '\x0d', now() + interval '1 hour') AS created;
BEGIN;
-- (these counters hold this backend's stats not yet reported: count the difference)
SELECT pg_stat_get_xact_tuples_updated('tokenstore.token'::regclass) AS updates_before,
	   pg_stat_get_xact_tuples_hot_updated('tokenstore.token'::regclass) AS hot_before \gset
SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', NULL, '\x0e', now() + interval '2 hours') AS created;
SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', NULL, '\x0f', now() + interval '3 hours',
							 info => '{"rolling": true}') AS created;
SELECT pg_stat_get_xact_tuples_updated('tokenstore.token'::regclass) - :updates_before AS updates,
	   pg_stat_get_xact_tuples_hot_updated('tokenstore.token'::regclass) - :hot_before AS hot;
COMMIT;
-- and the sweep still finds a session whose deadline a save moved earlier
SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', NULL, '\x10', now() - interval '1 second') AS created;
SELECT tokenstore.token_sweep() >= 1 AS swept;
SELECT NOT EXISTS (SELECT FROM tokenstore.token
				   WHERE token_hash = sha256(convert_to('session-id-gggggggggggggggggggg', 'UTF8'))) AS gone;

-- an unchanged session's find and touch, served by the cache, write
-- nothing: no row updated, and no transaction id taken (any write takes one)
\set sid_i 'session-id-iiiiiiiiiiiiiiiiiiii'
SELECT tokenstore.token_save(:'sid_i', NULL, '\x11', now() + interval '1 hour',
							 idle_timeout => '1 hour') AS created;
SELECT tokenstore.token_data(:'sid_i') AS cached;
BEGIN;
SELECT pg_stat_get_xact_tuples_updated('tokenstore.token'::regclass) AS updates_before,
	   hits AS hits0
  FROM tokenstore.stats WHERE datname = current_database() \gset
SELECT tokenstore.token_data(:'sid_i') AS data, tokenstore.token_touch(:'sid_i') AS touched;
SELECT pg_stat_get_xact_tuples_updated('tokenstore.token'::regclass) - :updates_before AS updates,
	   pg_current_xact_id_if_assigned() IS NULL AS no_transaction_id,
	   hits - :hits0 AS hits
  FROM tokenstore.stats WHERE datname = current_database();
COMMIT;
SELECT tokenstore.token_delete(:'sid_i') AS deleted;

-- a save and a find in one transaction see each other
BEGIN;
SELECT tokenstore.token_save('session-id-ffffffffffffffffffff', NULL, '\x0c', 'infinity') AS created;
SELECT tokenstore.token_data('session-id-ffffffffffffffffffff') AS seen_in_transaction;
ROLLBACK;
SELECT tokenstore.token_data('session-id-ffffffffffffffffffff') IS NULL AS rolled_back;

-- with tokenstore preloaded a find is served by the cache, data and info
-- byte for byte, and every committed change of them is seen by the next find
\set sid_c 'session-id-hhhhhhhhhhhhhhhhhhhh'
SELECT tokenstore.token_save(:'sid_c', NULL, :'payload', now() + interval '1 hour',
							 info => '{"b": 1, "a": [2]}') AS created;
SELECT hits AS hits0, misses AS misses0 FROM tokenstore.stats WHERE datname = current_database() \gset
SELECT tokenstore.token_data(:'sid_c') = :'payload'::bytea AS same_bytes,
	   (SELECT info FROM tokenstore.token_check(:'sid_c')) AS info;
UPDATE tokenstore.token SET data = '\xabcd', info = '{"c": 3}'
 WHERE token_hash = sha256(convert_to(:'sid_c', 'UTF8'));
SELECT tokenstore.token_data(:'sid_c') AS updated_data,
	   (SELECT info FROM tokenstore.token_check(:'sid_c')) AS updated_info;
UPDATE tokenstore.token SET created_at = '2026-01-01 00:00:00+00'
 WHERE token_hash = sha256(convert_to(:'sid_c', 'UTF8'));
SELECT created_at = '2026-01-01 00:00:00+00' AS updated_creation FROM tokenstore.token_check(:'sid_c');
SELECT tokenstore.token_save(:'sid_c', NULL, '\x0102', now() + interval '1 hour') AS created;
SELECT tokenstore.token_data(:'sid_c') AS saved_data;
SELECT hits - :hits0 AS hits, misses - :misses0 AS misses
  FROM tokenstore.stats WHERE datname = current_database();
-- a payload larger than the cache holds is read from the table, the token
-- still checked from the cache; a smaller one is served again
SELECT tokenstore.token_save(:'sid_c', NULL, convert_to(repeat('x', 9000), 'UTF8'),
							 now() + interval '1 hour') AS created;
SELECT hits AS hits0, misses AS misses0 FROM tokenstore.stats WHERE datname = current_database() \gset
SELECT length(tokenstore.token_data(:'sid_c')) AS large_data,
	   tokenstore.token_touch(:'sid_c') AS touched;
SELECT hits - :hits0 AS hits, misses - :misses0 AS misses
  FROM tokenstore.stats WHERE datname = current_database();
SELECT tokenstore.token_save(:'sid_c', NULL, '\x09', now() + interval '1 hour') AS created;
SELECT hits AS hits0, misses AS misses0 FROM tokenstore.stats WHERE datname = current_database() \gset
SELECT tokenstore.token_data(:'sid_c') AS small_again;
SELECT hits - :hits0 AS hits, misses - :misses0 AS misses
  FROM tokenstore.stats WHERE datname = current_database();
-- an entry without its payload (filled by a check of the user, or made by
-- token_make) gets it at the first token_check; an API token has no data
INSERT INTO tokenstore.token (token_hash, user_id, info, created_at, last_used_at)
	VALUES (sha256('payload-token-000001'), 'payload-user', '{"k": "v"}', now(), now());
SELECT tokenstore.token_user('payload-token-000001') AS filled_by_check,
	   tokenstore.token_make('payload-user', '{"k": "w"}', token => 'payload-token-000002') AS made;
SELECT hits AS hits0, misses AS misses0 FROM tokenstore.stats WHERE datname = current_database() \gset
SELECT tokenstore.token_user('payload-token-000002') AS cached_at_make;
SELECT info FROM tokenstore.token_check('payload-token-000001');
SELECT info FROM tokenstore.token_check('payload-token-000001');
SELECT info FROM tokenstore.token_check('payload-token-000002');
SELECT info FROM tokenstore.token_check('payload-token-000002');
SELECT tokenstore.token_data('payload-token-000001') IS NULL AS no_data;
SELECT hits - :hits0 AS hits, misses - :misses0 AS misses
  FROM tokenstore.stats WHERE datname = current_database();
SELECT tokenstore.token_delete(:'sid_c') AS deleted,
	   tokenstore.token_delete('payload-token-000001') AS deleted,
	   tokenstore.token_delete('payload-token-000002') AS deleted;
SELECT tokenstore.token_data(:'sid_c') IS NULL AS gone;

-- NULL tokens are no tokens
SELECT tokenstore.token_data(NULL) IS NULL AS null_data, tokenstore.token_touch(NULL) IS NULL AS null_touch;
SELECT tokenstore.token_delete_user('none-user'), tokenstore.token_delete_user('dead-at-once'),
	   tokenstore.token_delete_user('alice'), tokenstore.token_delete_user('bob'),
	   tokenstore.token_delete_user('carol'), tokenstore.token_delete_user('dave');

-- a session in a rotation's grace keeps its final deadline: a save of its
-- old id is refused (23505, whoever saves it) and changes nothing
SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', 'erin', '\x01', now() + interval '1 day') AS created;
SELECT tokenstore.token_rotate('session-id-gggggggggggggggggggg', grace => '1 minute',
							   new_token => 'session-id-hhhhhhhhhhhhhhhhhhhh') AS rotated;
SELECT expires_at AS grace_deadline
  FROM tokenstore.token WHERE token_hash = sha256('session-id-gggggggggggggggggggg') \gset
SELECT :'grace_deadline'::timestamptz <= now() + interval '1 minute' AS within_grace;
SELECT sqlstate_of($$SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', 'erin', '\x02', now() + interval '1 day')$$)
	AS save_in_grace,
	   sqlstate_of($$SELECT tokenstore.token_save('session-id-gggggggggggggggggggg', NULL, '\x03', 'infinity')$$)
	AS anonymous_save_in_grace;
SELECT expires_at = :'grace_deadline' AS deadline_unchanged, rotated_at IS NOT NULL AS still_rotated
  FROM tokenstore.token WHERE token_hash = sha256('session-id-gggggggggggggggggggg');
SELECT tokenstore.token_data('session-id-gggggggggggggggggggg') AS old_data,
	   tokenstore.token_data('session-id-hhhhhhhhhhhhhhhhhhhh') AS new_data;
SELECT tokenstore.token_delete_user('erin');
