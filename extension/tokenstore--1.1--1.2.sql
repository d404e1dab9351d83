/*
 * tokenstore--1.1--1.2.sql: ALTER EXTENSION tokenstore UPDATE TO '1.2'.
 *
 * The session store of web frameworks (see the README's "Sessions"):
 * sessions without a user (user_id becomes nullable), a payload column
 * kept byte for byte, and the functions token_save, token_data,
 * token_touch, token_sessions and token_delete_sessions.  token_rotate
 * gains user_id and new_token (sign-in): it is created anew, with the
 * grants the old one had, so the application keeps its rights.  The sweep
 * finds rows by one lower bound of their deadline (sweep_at), so that
 * saves and refreshes that extend a token are HOT updates.  Every token
 * stays as it was.
 */

\echo Use "ALTER EXTENSION tokenstore UPDATE TO '1.2'" to load this file. \quit

ALTER TABLE tokenstore.token ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE tokenstore.token ADD COLUMN data bytea;

/*
 * One lower bound of the deadline, sweep_at, in place of the index on
 * expires_at and of idle_sweep_at: a save or a refresh that extends a token
 * becomes a HOT update.
 */
ALTER TABLE tokenstore.token ADD COLUMN sweep_at timestamptz;
UPDATE tokenstore.token
   SET sweep_at = LEAST(expires_at, idle_sweep_at)	-- (LEAST is syntax, not a function)
 WHERE expires_at IS NOT NULL OR idle_sweep_at IS NOT NULL;
DROP TRIGGER token_idle_sweep_at ON tokenstore.token;
DROP TRIGGER token_idle_sweep_at_edit ON tokenstore.token;
DROP FUNCTION tokenstore_internal.token_idle_sweep_at();
DROP INDEX tokenstore.token_expires_at_idx;
DROP INDEX tokenstore.token_idle_idx;
ALTER TABLE tokenstore.token DROP COLUMN idle_sweep_at;
COMMENT ON COLUMN tokenstore.token.sweep_at IS
	'when the sweep looks at the row next, never after its deadline (set by a trigger; NULL: no deadline)';
CREATE INDEX token_sweep_idx ON tokenstore.token (sweep_at)
	WHERE sweep_at IS NOT NULL;
CREATE FUNCTION tokenstore_internal.token_sweep_at()
	RETURNS trigger
	AS 'MODULE_PATHNAME', 'token_sweep_at'
	LANGUAGE C;
REVOKE ALL ON FUNCTION tokenstore_internal.token_sweep_at() FROM PUBLIC;
CREATE TRIGGER token_sweep_at BEFORE INSERT ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore_internal.token_sweep_at();
CREATE TRIGGER token_sweep_at_edit BEFORE UPDATE ON tokenstore.token
	FOR EACH ROW
	WHEN (NEW.expires_at IS DISTINCT FROM OLD.expires_at
		  OR NEW.idle_timeout IS DISTINCT FROM OLD.idle_timeout
		  OR NEW.last_used_at OPERATOR(pg_catalog.<) OLD.last_used_at)
	EXECUTE FUNCTION tokenstore_internal.token_sweep_at();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_sweep_at;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_sweep_at_edit;
-- the cache holds a session's data too: a change of it must reach the cache
DROP TRIGGER token_cache_update ON tokenstore.token;
CREATE TRIGGER token_cache_update AFTER UPDATE ON tokenstore.token
	FOR EACH ROW
	WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash
		  OR OLD.user_id IS DISTINCT FROM NEW.user_id
		  OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
		  OR OLD.idle_timeout IS DISTINCT FROM NEW.idle_timeout
		  OR OLD.info IS DISTINCT FROM NEW.info
		  OR OLD.data IS DISTINCT FROM NEW.data
		  OR OLD.created_at IS DISTINCT FROM NEW.created_at
		  OR NEW.last_used_at OPERATOR(pg_catalog.<) OLD.last_used_at)
	EXECUTE FUNCTION tokenstore_internal.token_cache_sync();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_update;
COMMENT ON COLUMN tokenstore.token.user_id IS
	'the token''s user; NULL: an anonymous session (token_save), which no per-user rule or list touches';
COMMENT ON COLUMN tokenstore.token.data IS
	'sessions only (token_save): the framework''s payload, byte for byte';

CREATE FUNCTION tokenstore.token_rotate(token text,
										grace interval DEFAULT NULL,
										user_id text DEFAULT NULL,
										new_token text DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_rotate'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_rotate(text, interval, text, text) IS
	'replace a live token by a new one (new_token, or a generated one), attaching user_id to an anonymous session; the old one dies now or after grace, which nothing extends';

CREATE FUNCTION tokenstore.token_save(token text,
									  user_id text,
									  data bytea,
									  expires_at timestamptz,
									  idle_timeout interval DEFAULT NULL,
									  info jsonb DEFAULT NULL)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_save'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_save(text, text, bytea, timestamptz, interval, jsonb) IS
	'make or replace the session token (a caller-given id) with data and an absolute deadline; true if it made a new session';

CREATE FUNCTION tokenstore.token_data(token text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'token_data'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_data(text) IS
	'the data of a live session (NULL otherwise); records the use';

CREATE FUNCTION tokenstore.token_touch(token text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_touch'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_touch(text) IS
	'record a use of a live token (anonymous sessions too); false for a dead or unknown token';

CREATE FUNCTION tokenstore.token_sessions(OUT token_id text,
										  OUT user_id text,
										  OUT data bytea,
										  OUT expires_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_sessions'
	LANGUAGE C VOLATILE SECURITY DEFINER ROWS 1000;
COMMENT ON FUNCTION tokenstore.token_sessions() IS
	'every live session (saved by token_save), oldest first, by token_id (never the token)';

CREATE FUNCTION tokenstore.token_delete_sessions(anonymous_only boolean DEFAULT false)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_delete_sessions'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_delete_sessions(boolean) IS
	'revoke every session (or every anonymous one); tokens made by token_make stay; how many live ones went';

REVOKE ALL ON FUNCTION tokenstore.token_rotate(text, interval, text, text),
	tokenstore.token_save(text, text, bytea, timestamptz, interval, jsonb),
	tokenstore.token_data(text), tokenstore.token_touch(text),
	tokenstore.token_sessions(), tokenstore.token_delete_sessions(boolean)
	FROM PUBLIC;

/* the grants of the old token_rotate go to the new one, then it goes */
DO $grants$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT a.grantee, a.is_grantable
			   FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
			  WHERE p.oid OPERATOR(pg_catalog.=) 'tokenstore.token_rotate(text, interval)'::pg_catalog.regprocedure
				AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
				AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE' LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tokenstore.token_rotate(text, interval, text, text) TO %s%s',
			CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
				 ELSE pg_catalog.quote_ident(g.grantee::pg_catalog.regrole::pg_catalog.text) END,
			CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
END
$grants$;
DROP FUNCTION tokenstore.token_rotate(text, interval);
