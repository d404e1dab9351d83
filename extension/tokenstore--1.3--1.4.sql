/*
 * tokenstore--1.3--1.4.sql: ALTER EXTENSION tokenstore UPDATE TO '1.4'.
 *
 * "No deadline" on every PostgreSQL version, and idle timeouts that change
 * (see the README's "Deadlines"): token_make gains expires_at (an absolute
 * deadline, 'infinity' for none, which a ttl can say only where intervals
 * can be infinite, 17 and later), token_refresh gains idle_timeout and
 * expires_at.  Both are created anew, with the grants the old ones had, so
 * the application keeps its rights; carry_grants does that for this and
 * later updates.  Every token stays as it was; the table keeps a session's
 * data in its row up to about 4 kB.
 */

\echo Use "ALTER EXTENSION tokenstore UPDATE TO '1.4'" to load this file. \quit

CREATE FUNCTION tokenstore_internal.carry_grants(old_function regprocedure,
												 new_function regprocedure)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	AS $carry$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT a.grantee, a.is_grantable
			   FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
			  WHERE p.oid OPERATOR(pg_catalog.=) old_function
				AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
				AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE' LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s',
			new_function,
			CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
				 ELSE g.grantee::pg_catalog.regrole::pg_catalog.text END,
			CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
	/*
	 * A GRANT in an extension's script counts as one of its initial
	 * privileges, which pg_dump leaves out: the new function's are its
	 * owner's alone, as in a new installation, so that a dump keeps them.
	 */
	UPDATE pg_catalog.pg_init_privs i
	   SET initprivs = ARRAY[pg_catalog.makeaclitem(p.proowner, p.proowner, 'EXECUTE', false)]
	  FROM pg_catalog.pg_proc p
	 WHERE p.oid OPERATOR(pg_catalog.=) new_function
	   AND i.objoid OPERATOR(pg_catalog.=) p.oid
	   AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
	   AND i.objsubid OPERATOR(pg_catalog.=) 0;
END
$carry$;
COMMENT ON FUNCTION tokenstore_internal.carry_grants(regprocedure, regprocedure) IS
	'for update scripts: grant a function''s EXECUTE rights to the function that replaces it, as grants a dump keeps';
REVOKE ALL ON FUNCTION tokenstore_internal.carry_grants(regprocedure, regprocedure) FROM PUBLIC;

CREATE FUNCTION tokenstore.token_make(user_id text,
									  info jsonb DEFAULT '{}',
									  ttl interval DEFAULT NULL,
									  idle_timeout interval DEFAULT NULL,
									  mode text DEFAULT NULL,
									  max_tokens integer DEFAULT NULL,
									  token text DEFAULT NULL,
									  expires_at timestamptz DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_make'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_make(text, jsonb, interval, interval, text, integer, text, timestamptz) IS
	'make a token for a user (login modes multi, single, share) and return it; its absolute deadline is now + ttl or expires_at (''infinity'': none)';

CREATE FUNCTION tokenstore.token_refresh(token text,
										 ttl interval DEFAULT NULL,
										 idle_timeout interval DEFAULT NULL,
										 expires_at timestamptz DEFAULT NULL)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_refresh'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_refresh(text, interval, interval, timestamptz) IS
	'set a live token''s absolute deadline to now + ttl or expires_at (''infinity'': none), and its idle timeout if given (0: none); false for a dead or unknown token';

REVOKE ALL ON FUNCTION
	tokenstore.token_make(text, jsonb, interval, interval, text, integer, text, timestamptz),
	tokenstore.token_refresh(text, interval, interval, timestamptz)
	FROM PUBLIC;

/* the grants of the old signatures go to the new ones, then the old ones go */
SELECT tokenstore_internal.carry_grants(o::pg_catalog.regprocedure, n::pg_catalog.regprocedure)
  FROM (VALUES ('tokenstore.token_make(text, jsonb, interval, interval, text, integer, text)',
				'tokenstore.token_make(text, jsonb, interval, interval, text, integer, text, timestamptz)'),
			   ('tokenstore.token_refresh(text, interval)',
				'tokenstore.token_refresh(text, interval, interval, timestamptz)')) AS f(o, n);
/*
 * The update to 1.2 carried token_rotate's grants in its script, which made
 * them initial privileges that pg_dump leaves out: carried again onto the
 * function itself, they become grants a dump keeps.
 */
SELECT tokenstore_internal.carry_grants(f, f)
  FROM pg_catalog.to_regprocedure('tokenstore.token_rotate(text, interval, text, text)') AS f;
DROP FUNCTION tokenstore.token_make(text, jsonb, interval, interval, text, integer, text);
DROP FUNCTION tokenstore.token_refresh(text, interval);

/*
 * A row stays whole up to 4064 bytes (see tokenstore.sql): a save is then
 * a HOT update the page prunes by itself, not a dead TOAST value per save
 * left for VACUUM.  Data stored before moves into its row at its next save.
 */
ALTER TABLE tokenstore.token SET (toast_tuple_target = 4064);
