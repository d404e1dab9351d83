-- Least privilege: nothing in the extension is usable by PUBLIC.  A role
-- without grants gets SQLSTATE 42501 from every function and view and learns
-- nothing; the README's two grants give an application exactly the API; a
-- checker gets token_user and token_check alone; pg_monitor reads the views.
-- A hostile search_path, pg_temp objects and look-alike operators change
-- nothing.
CREATE ROLE tokenstore_nobody;
CREATE ROLE tokenstore_app;
CREATE ROLE tokenstore_checker;
CREATE ROLE tokenstore_watcher IN ROLE pg_monitor;
GRANT USAGE ON SCHEMA tokenstore TO tokenstore_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO tokenstore_app;
GRANT USAGE ON SCHEMA tokenstore TO tokenstore_checker;
GRANT EXECUTE ON FUNCTION tokenstore.token_user(text), tokenstore.token_check(text)
	TO tokenstore_checker;

SELECT tokenstore.token_make('admin') AS admin \gset

-- no grants: every function, view and table is refused, with 42501
SET ROLE tokenstore_nobody;
SELECT what, sqlstate_of(stmt) FROM (VALUES
	('make a token for admin', 'SELECT tokenstore.token_make(''admin'', token => ''made-up-admin-token'')'),
	('token_user', 'SELECT tokenstore.token_user(''' || :'admin' || ''')'),
	('token_check', 'SELECT * FROM tokenstore.token_check(''' || :'admin' || ''')'),
	('token_list', 'SELECT * FROM tokenstore.token_list(''admin'')'),
	('token_refresh', 'SELECT tokenstore.token_refresh(''' || :'admin' || ''')'),
	('token_set_info', 'SELECT tokenstore.token_set_info(''' || :'admin' || ''', ''{}'')'),
	('token_delete', 'SELECT tokenstore.token_delete(''' || :'admin' || ''')'),
	('token_delete_id', 'SELECT tokenstore.token_delete_id(''00000000000000000000000000000000'')'),
	('token_delete_user', 'SELECT tokenstore.token_delete_user(''admin'')'),
	('token_rotate', 'SELECT tokenstore.token_rotate(''' || :'admin' || ''')'),
	('token_sweep', 'SELECT tokenstore.token_sweep()'),
	('token_flush', 'SELECT tokenstore.token_flush()'),
	('view stats', 'SELECT * FROM tokenstore.stats'),
	('view redis_stats', 'SELECT * FROM tokenstore.redis_stats'),
	('table token', 'SELECT * FROM tokenstore.token'),
	('helper last_used', 'SELECT tokenstore_internal.last_used(''\x00'', now())'),
	('helper token_stats', 'SELECT * FROM tokenstore_internal.token_stats()'),
	('helper token_record_uses', 'SELECT tokenstore_internal.token_record_uses(''{}'', ''{}'')'),
	('a look-alike in the schema', 'CREATE FUNCTION tokenstore.token_user(int) RETURNS text LANGUAGE sql AS ''SELECT 1::text''')
) AS s(what, stmt);
RESET ROLE;
SELECT tokenstore.token_user(:'admin') AS admin_untouched,
	   (SELECT count(*) FROM tokenstore.token WHERE user_id = 'admin') AS admin_tokens;

-- the application's grants: the whole API ...
SET ROLE tokenstore_app;
SELECT tokenstore.token_make('app-user', '{"k": "v"}') AS t \gset
SELECT tokenstore.token_user(:'t') AS user_id;
SELECT user_id, info FROM tokenstore.token_check(:'t');
SELECT count(*) AS listed FROM tokenstore.token_list('app-user');
SELECT tokenstore.token_refresh(:'t', '1 hour') AS refreshed;
SELECT tokenstore.token_set_info(:'t', '{}') AS info_set;
SELECT tokenstore.token_rotate(:'t') AS t \gset
SELECT tokenstore.token_delete_id(token_id) AS deleted_by_id FROM tokenstore.token_list('app-user');
SELECT tokenstore.token_make('app-user', mode => 'share') IS NOT NULL AS shared;
SELECT tokenstore.token_delete(tokenstore.token_make('app-user', mode => 'single')) AS deleted;
SELECT tokenstore.token_delete_user('app-user') AS none_left;
SELECT tokenstore.token_sweep() >= 0 AS swept;
SELECT tokenstore.token_flush() >= 0 AS flushed;
-- ... and nothing else: not the table, not the helpers, not the views
SELECT stmt, sqlstate_of(stmt) FROM (VALUES
	('SELECT * FROM tokenstore.token'),
	('UPDATE tokenstore.token SET user_id = ''mallory'''),
	('DELETE FROM tokenstore.token'),
	('INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at) VALUES (sha256(''x''), ''mallory'', now(), now())'),
	('SELECT tokenstore_internal.last_used(''\x00'', now())'),
	('SELECT * FROM tokenstore_internal.token_stats()'),
	('SELECT tokenstore_internal.token_record_uses(''{}'', ''{}'')'),
	('SELECT * FROM tokenstore.stats'),
	('CREATE TABLE tokenstore.mine (i int)')
) AS s(stmt);
RESET ROLE;

-- a checker may check, never list, make or revoke
SET ROLE tokenstore_checker;
SELECT tokenstore.token_user(:'admin') AS checked,
	   (SELECT user_id FROM tokenstore.token_check(:'admin')) AS checked_row;
SELECT what, sqlstate_of(stmt) FROM (VALUES
	('token_list', 'SELECT * FROM tokenstore.token_list(''admin'')'),
	('token_delete', 'SELECT tokenstore.token_delete(''' || :'admin' || ''')'),
	('token_delete_user', 'SELECT tokenstore.token_delete_user(''admin'')'),
	('token_make', 'SELECT tokenstore.token_make(''admin'')'),
	('token_rotate', 'SELECT tokenstore.token_rotate(''' || :'admin' || ''')')
) AS s(what, stmt);
RESET ROLE;

-- monitoring roles read the views
SET ROLE tokenstore_watcher;
SELECT count(*) > 0 AS stats_rows FROM tokenstore.stats;
SELECT state IS NOT NULL AS redis_state FROM tokenstore.redis_stats;
SELECT sqlstate_of('SELECT tokenstore.token_user(''x'')') AS watcher_checks;
RESET ROLE;

-- the API is SECURITY DEFINER; the helpers are not, and nobody else may call them
SELECT n.nspname, p.proname, p.prosecdef,
	   has_function_privilege('tokenstore_app', p.oid, 'EXECUTE') AS app,
	   has_function_privilege('tokenstore_checker', p.oid, 'EXECUTE') AS checker,
	   has_function_privilege('tokenstore_nobody', p.oid, 'EXECUTE') AS nobody
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('tokenstore', 'tokenstore_internal') ORDER BY 1, 2;

-- every function of the API and every view says what it is (\df+, \dv+):
-- one added without a COMMENT is listed here
SELECT count(*) AS described FROM pg_proc
 WHERE pronamespace = 'tokenstore'::regnamespace AND obj_description(oid, 'pg_proc') IS NOT NULL;
SELECT 'function ' || p.oid::regprocedure AS uncommented FROM pg_proc p
 WHERE p.pronamespace = 'tokenstore'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'view ' || c.oid::regclass FROM pg_class c
 WHERE c.relnamespace = 'tokenstore'::regnamespace AND c.relkind = 'v'
   AND obj_description(c.oid, 'pg_class') IS NULL;

-- a hostile search_path: look-alike functions, operators and tables first,
-- and objects in pg_temp
CREATE SCHEMA evil;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$;
CREATE FUNCTION evil.least(timestamptz, timestamptz) RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.always(bytea, bytea) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.always);
CREATE FUNCTION evil.after(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.after);
CREATE FUNCTION evil.last_used(bytea, timestamptz) RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql AS $$ SELECT NULL $$;
CREATE TABLE evil.token (token_hash bytea, user_id text);
GRANT USAGE ON SCHEMA evil TO tokenstore_app;
SELECT tokenstore.token_make('victim', ttl => '1 hour') AS v \gset
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'v', 'UTF8'));
SELECT tokenstore.token_make('victim') AS live \gset
SET ROLE tokenstore_app;
CREATE TEMP TABLE token (token_hash bytea, user_id text);
INSERT INTO pg_temp.token VALUES (sha256('an-unknown-token-123'), 'mallory');
SET search_path = pg_temp, evil, pg_catalog, public;
SELECT tokenstore.token_user('an-unknown-token-123') AS unknown_stays_unknown;
SELECT tokenstore.token_user(:'v') AS expired_stays_expired;
SELECT tokenstore.token_user(:'live') AS live_still_works;
SELECT count(*) AS listed FROM tokenstore.token_list('victim');
SELECT tokenstore.token_flush() >= 0 AS flush_still_works;
RESET search_path;
DROP TABLE pg_temp.token;
RESET ROLE;
SELECT tokenstore.token_delete_user('victim');
SELECT tokenstore.token_delete_user('admin');
DROP SCHEMA evil CASCADE;
DROP OWNED BY tokenstore_app, tokenstore_checker;
DROP ROLE tokenstore_nobody, tokenstore_app, tokenstore_checker, tokenstore_watcher;

-- Every function and view, as each role without the application's grants:
-- one without grants gets 42501 from all of them; a monitoring role reads
-- the views alone (the helpers they call stay out of its reach); a checker
-- may check and nothing else.
CREATE ROLE tokenstore_nogrant;
CREATE ROLE tokenstore_gateway;
CREATE ROLE tokenstore_monitor IN ROLE pg_monitor;
GRANT USAGE ON SCHEMA tokenstore TO tokenstore_gateway;
GRANT EXECUTE ON FUNCTION tokenstore.token_user(text), tokenstore.token_check(text)
	TO tokenstore_gateway;
SELECT tokenstore.token_make('every-call', ttl => '1 hour') AS target \gset
SELECT tokenstore.token_save('every-call-session', 'every-call', 'd', now() + interval '1 hour');
SELECT token_id AS target_id FROM tokenstore.token_list('every-call') LIMIT 1 \gset
CREATE FUNCTION every_call(token text, token_id text)
	RETURNS TABLE (what text, stmt text) LANGUAGE sql AS $$
	VALUES
	('token_make', 'SELECT tokenstore.token_make(''every-call'')'),
	('token_user', format('SELECT tokenstore.token_user(%L)', token)),
	('token_check', format('SELECT * FROM tokenstore.token_check(%L)', token)),
	('token_list', 'SELECT * FROM tokenstore.token_list(''every-call'')'),
	('token_refresh', format('SELECT tokenstore.token_refresh(%L, ''1 day'')', token)),
	('token_set_info', format('SELECT tokenstore.token_set_info(%L, ''{}'')', token)),
	('token_delete', format('SELECT tokenstore.token_delete(%L)', token)),
	('token_delete_id', format('SELECT tokenstore.token_delete_id(%L)', token_id)),
	('token_delete_user', 'SELECT tokenstore.token_delete_user(''every-call'')'),
	('token_rotate', format('SELECT tokenstore.token_rotate(%L)', token)),
	('token_save', 'SELECT tokenstore.token_save(''every-call-session'', NULL, ''x'', NULL)'),
	('token_data', 'SELECT tokenstore.token_data(''every-call-session'')'),
	('token_touch', 'SELECT tokenstore.token_touch(''every-call-session'')'),
	('token_sessions', 'SELECT * FROM tokenstore.token_sessions()'),
	('token_delete_sessions', 'SELECT tokenstore.token_delete_sessions()'),
	('token_sweep', 'SELECT tokenstore.token_sweep()'),
	('token_flush', 'SELECT tokenstore.token_flush()'),
	('view stats', 'SELECT count(*) FROM tokenstore.stats'),
	('view redis_stats', 'SELECT count(*) FROM tokenstore.redis_stats'),
	('table token', 'SELECT count(*) FROM tokenstore.token'),
	('internal last_used', 'SELECT tokenstore_internal.last_used(''\x00'', now())'),
	('internal token_stats', 'SELECT * FROM tokenstore_internal.token_stats()'),
	('internal token_redis_stats', 'SELECT * FROM tokenstore_internal.token_redis_stats()'),
	('internal token_standby_state', 'SELECT * FROM tokenstore_internal.token_standby_state()'),
	('internal token_record_uses', 'SELECT tokenstore_internal.token_record_uses(''{}'', ''{}'')')
$$;
SET ROLE tokenstore_nogrant;
SELECT what, sqlstate_of(stmt) AS nogrant FROM every_call(:'target', :'target_id');
SET ROLE tokenstore_monitor;
SELECT what, sqlstate_of(stmt) AS monitor FROM every_call(:'target', :'target_id');
SET ROLE tokenstore_gateway;
SELECT what, sqlstate_of(stmt) AS checker FROM every_call(:'target', :'target_id');
RESET ROLE;
-- none of it changed anything
SELECT user_id, expires_at - created_at AS ttl, info FROM tokenstore.token_check(:'target');
SELECT tokenstore.token_data('every-call-session') AS session_data;
SELECT count(*) AS every_call_tokens FROM tokenstore.token WHERE user_id = 'every-call';
SELECT tokenstore.token_delete_user('every-call');
DROP FUNCTION every_call(text, text);
DROP OWNED BY tokenstore_gateway;
DROP ROLE tokenstore_nogrant, tokenstore_gateway, tokenstore_monitor;
