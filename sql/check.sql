-- token_user / token_check: answers, recording uses, the README idioms.
SELECT tokenstore.token_make('alice', '{"role": "admin"}') AS t \gset

SELECT user_id, info, created_at <= last_used_at AS used_after_made,
	   expires_at - created_at = '30 days' AS default_lifetime
  FROM tokenstore.token_check(:'t');

-- NULL and unknown tokens: NULL and no row
SELECT tokenstore.token_user(NULL) IS NULL AS null_token;
SELECT count(*) AS null_rows FROM tokenstore.token_check(NULL);
SELECT tokenstore.token_user('no-such-token-at-all') IS NULL AS unknown_token;
SELECT count(*) AS unknown_rows FROM tokenstore.token_check('no-such-token-at-all');

-- a use reaches the table: at once on the table alone (once the stored one
-- is older than tokenstore.touch_interval), at the next flush with the cache
UPDATE tokenstore.token SET last_used_at = now() - interval '5 s'
 WHERE token_hash = sha256(convert_to(:'t', 'UTF8'))
RETURNING last_used_at AS stale \gset
SELECT tokenstore.token_user(:'t');
SELECT tokenstore.token_flush() >= 0 AS flushed;
SELECT last_used_at > :'stale' AS written FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'t', 'UTF8'));
SELECT last_used_at > :'stale' AS listed_use FROM tokenstore.token_list('alice');

-- a read-only transaction (or a standby) can check
BEGIN READ ONLY;
SELECT tokenstore.token_user(:'t') AS read_only_check;
SELECT user_id FROM tokenstore.token_check(:'t');
COMMIT;

-- idiom: authenticate and fetch the user in one round trip
CREATE TABLE users (id bigint PRIMARY KEY, name text);
INSERT INTO users VALUES (42, 'Alice'), (43, 'Bob');
SELECT tokenstore.token_make('42') AS t42 \gset
PREPARE me(text) AS
	SELECT u.* FROM users u WHERE u.id = tokenstore.token_user($1)::bigint;
EXECUTE me(:'t42');
EXECUTE me('not-a-valid-token-123');

-- idiom: row-level security keyed on the session's token
CREATE TABLE notes (owner bigint, body text);
INSERT INTO notes VALUES (42, 'alice''s note'), (43, 'bob''s note');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes
	USING (owner = (SELECT tokenstore.token_user(current_setting('app.token', true))::bigint));
CREATE ROLE tokenstore_rls_app;
GRANT SELECT ON notes TO tokenstore_rls_app;
GRANT USAGE ON SCHEMA tokenstore TO tokenstore_rls_app;
GRANT EXECUTE ON FUNCTION tokenstore.token_user(text) TO tokenstore_rls_app;
SET ROLE tokenstore_rls_app;
SELECT body FROM notes;
-- per request, transaction-local: a pooled connection forgets it at commit
BEGIN;
SELECT set_config('app.token', :'t42', true) IS NOT NULL AS token_set;
SELECT body FROM notes;
COMMIT;
SELECT body FROM notes;
RESET ROLE;

DROP TABLE notes, users;
DROP OWNED BY tokenstore_rls_app;
DROP ROLE tokenstore_rls_app;
SELECT tokenstore.token_delete_user(u) FROM unnest(ARRAY['alice', '42']) u;

-- the uses a hot standby's sender records here: a use moves last_used_at,
-- never past now, never for a token that is gone; bad input is an error
SELECT tokenstore.token_make('standby-user') AS su \gset
SELECT tokenstore_internal.token_record_uses(
	ARRAY[sha256(convert_to(:'su', 'UTF8')), sha256('gone'::bytea)],
	ARRAY[now() + interval '1 hour', now()]) AS recorded;
SELECT u > created_at AND u <= clock_timestamp() AS used_not_future
  FROM (SELECT tokenstore_internal.last_used(token_hash, last_used_at) AS u, created_at
		  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'su', 'UTF8'))) t;
SELECT sqlstate_of(stmt) AS code, stmt FROM (VALUES
	('SELECT tokenstore_internal.token_record_uses(''{"\\x00"}'', ARRAY[now()])'),
	('SELECT tokenstore_internal.token_record_uses(''{}'', ARRAY[now()])'),
	('SELECT tokenstore_internal.token_record_uses(ARRAY[NULL::bytea], ARRAY[now()])')
) AS s(stmt);
SELECT tokenstore.token_delete(:'su');
