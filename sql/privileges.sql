-- An ordinary role may call every function but not touch the table; a
-- hostile search_path changes nothing.
CREATE ROLE tokenstore_app;
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

SELECT * FROM tokenstore.token;
SELECT * FROM tokenstore.secret;
UPDATE tokenstore.token SET user_id = 'mallory';
DELETE FROM tokenstore.token;
INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at)
	VALUES (sha256('x'), 'mallory', now(), now());
RESET ROLE;

-- every function is SECURITY DEFINER, none is callable by nobody
SELECT p.proname, p.prosecdef, has_function_privilege('tokenstore_app', p.oid, 'EXECUTE') AS app_may_call
  FROM pg_proc p WHERE p.pronamespace = 'tokenstore'::regnamespace ORDER BY 1;

-- a hostile search_path: look-alike functions, operators and tables first
CREATE SCHEMA evil;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$;
CREATE FUNCTION evil.least(timestamptz, timestamptz) RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.always(bytea, bytea) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.always);
CREATE FUNCTION evil.after(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.after);
CREATE TABLE evil.token (token_hash bytea, user_id text);
GRANT USAGE ON SCHEMA evil TO tokenstore_app;
SELECT tokenstore.token_make('victim', ttl => '1 hour') AS v \gset
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'v', 'UTF8'));
SELECT tokenstore.token_make('victim') AS live \gset
SET ROLE tokenstore_app;
SET search_path = evil, pg_catalog, public;
SELECT tokenstore.token_user('an-unknown-token-123') AS unknown_stays_unknown;
SELECT tokenstore.token_user(:'v') AS expired_stays_expired;
SELECT tokenstore.token_user(:'live') AS live_still_works;
SELECT count(*) AS listed FROM tokenstore.token_list('victim');
RESET search_path;
RESET ROLE;
SELECT tokenstore.token_delete_user('victim');
DROP SCHEMA evil CASCADE;
DROP OWNED BY tokenstore_app;
DROP ROLE tokenstore_app;
