/*
 * tokenstore.sql: the install script of CREATE EXTENSION tokenstore, built
 * into tokenstore--<EXTVERSION>.sql by the Makefile.
 *
 * The table is the truth.  Applications never touch it: they call the
 * functions in schema tokenstore, which run as the extension's owner
 * (SECURITY DEFINER); the C code runs its statements with the search path
 * pinned to pg_catalog and qualifies every table and function it names (a
 * SET clause here would cost more than the whole cached check).
 *
 * Nothing here trusts the search path either: every built-in is qualified
 * with pg_catalog, every operator is written OPERATOR(pg_catalog.x), so an
 * object that some role created before us cannot stand in for one of ours.
 *
 * Privileges: nothing is usable by PUBLIC.  An application's role gets
 *   GRANT USAGE ON SCHEMA tokenstore TO app;
 *   GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app;
 * and that reaches the API only: the helpers the table's triggers and the
 * views call live in schema tokenstore_internal, which nobody but the owner
 * may use.  Monitoring roles (pg_monitor) read the two views.
 */

\echo Use "CREATE EXTENSION tokenstore" to load this file. \quit

@SCHEMA_CHECK@

CREATE SCHEMA tokenstore_internal;
COMMENT ON SCHEMA tokenstore_internal IS
	'tokenstore''s helpers for its triggers and views; not an API';

/*
 * One row per token, keyed by the SHA-256 of the token's bytes.  The token
 * itself is never stored, except for share-mode tokens, which must be handed
 * out again: for those share_secret holds the token sealed with the key in
 * $PGDATA/tokenstore.key, which is not in the database (nor in its dumps).
 * idle_timeout is kept as a plain duration (no days or months) so that
 * every deadline is exact arithmetic.
 *
 * Every time is finite and at most 9999-12-31, and an idle timeout at most
 * 72,000,000 hours (about 8,200 years): then no deadline arithmetic, in SQL
 * or in C, can leave the range of timestamptz.
 *
 * A row stays whole up to 4064 bytes (its session's data not in the TOAST
 * table): a save then is a HOT update whose old version the page itself
 * prunes, where an out-of-line value leaves a dead TOAST value per save
 * for VACUUM (a framework saves on every request).  Two versions of such a
 * row fit on one page, as a HOT update needs; 4064 is also the most a page
 * of 4 kB allows.
 */
CREATE TABLE tokenstore.token (
	token_hash		bytea PRIMARY KEY
		CHECK (pg_catalog.octet_length(token_hash) OPERATOR(pg_catalog.=) 32),
	user_id			text
		CHECK (user_id OPERATOR(pg_catalog.<>) ''
			   AND pg_catalog.octet_length(user_id) OPERATOR(pg_catalog.<=) 64),
	info			jsonb NOT NULL DEFAULT '{}'
		CHECK (pg_catalog.jsonb_typeof(info) OPERATOR(pg_catalog.=) 'object'),
	created_at		timestamptz NOT NULL
		CONSTRAINT token_created_at_range CHECK (pg_catalog.isfinite(created_at)
			AND created_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	last_used_at	timestamptz NOT NULL
		CONSTRAINT token_last_used_at_range CHECK (pg_catalog.isfinite(last_used_at)
			AND last_used_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	expires_at		timestamptz
		CONSTRAINT token_expires_at_range CHECK (pg_catalog.isfinite(expires_at)
			AND expires_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	idle_timeout	interval
		CONSTRAINT token_idle_timeout_range CHECK (
			idle_timeout OPERATOR(pg_catalog.>) '0'
			AND idle_timeout OPERATOR(pg_catalog.<=) '72000000 hours'
			AND pg_catalog.date_part('day', idle_timeout) OPERATOR(pg_catalog.=) 0
			AND pg_catalog.date_part('month', idle_timeout) OPERATOR(pg_catalog.=) 0),
	share_secret	bytea,
	rotated_at		timestamptz,
	data			bytea,
	sweep_at		timestamptz
) WITH (fillfactor = 90, toast_tuple_target = 4064);

COMMENT ON TABLE tokenstore.token IS
	'tokenstore tokens, keyed by SHA-256; use the tokenstore functions, not this table';
COMMENT ON COLUMN tokenstore.token.user_id IS
	'the token''s user; NULL: an anonymous session (token_save), which no per-user rule or list touches';
COMMENT ON COLUMN tokenstore.token.data IS
	'sessions only (token_save): the framework''s payload, byte for byte';
COMMENT ON COLUMN tokenstore.token.expires_at IS
	'absolute deadline (NULL: none); the idle deadline is last_used_at + idle_timeout';
COMMENT ON COLUMN tokenstore.token.sweep_at IS
	'when the sweep looks at the row next, never after its deadline (set by a trigger; NULL: no deadline)';
COMMENT ON COLUMN tokenstore.token.share_secret IS
	'share-mode tokens only: the token, sealed with the key in $PGDATA/tokenstore.key';
COMMENT ON COLUMN tokenstore.token.rotated_at IS
	'set when token_rotate replaced the token with a grace period: its expires_at is then final';

CREATE INDEX token_user_id_idx ON tokenstore.token (user_id);
/*
 * The sweep walks this, oldest first.  sweep_at stands in for the deadline:
 * a lower bound that only moves earlier with the row (the sweep moves it
 * later), so that no index covers a column that uses, refreshes and
 * sessions' saves move: the worker's flushes and a save that extends a
 * session are HOT updates (fillfactor leaves them room).
 */
CREATE INDEX token_sweep_idx ON tokenstore.token (sweep_at)
	WHERE sweep_at IS NOT NULL;

CREATE FUNCTION tokenstore_internal.token_sweep_at()
	RETURNS trigger
	AS 'MODULE_PATHNAME', 'token_sweep_at'
	LANGUAGE C;
CREATE TRIGGER token_sweep_at BEFORE INSERT ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore_internal.token_sweep_at();
/* a deadline set earlier (or a use moved back by hand) moves sweep_at earlier */
CREATE TRIGGER token_sweep_at_edit BEFORE UPDATE ON tokenstore.token
	FOR EACH ROW
	WHEN (NEW.expires_at IS DISTINCT FROM OLD.expires_at
		  OR NEW.idle_timeout IS DISTINCT FROM OLD.idle_timeout
		  OR NEW.last_used_at OPERATOR(pg_catalog.<) OLD.last_used_at)
	EXECUTE FUNCTION tokenstore_internal.token_sweep_at();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_sweep_at;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_sweep_at_edit;

/* Tokens belong in pg_dump's output; the sealing key does not. */
SELECT pg_catalog.pg_extension_config_dump('tokenstore.token', '');

/*
 * The hot tier.  With tokenstore preloaded, checks record uses in shared
 * memory; last_used() is the later of a row's stored last use and the one
 * the cache recorded since, and the functions judge every deadline on it.
 */
CREATE FUNCTION tokenstore_internal.last_used(token_hash bytea, stored timestamptz)
	RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'token_last_used'
	LANGUAGE C VOLATILE STRICT;

/*
 * Every committed change to a row reaches the cache and Redis through these
 * triggers (see src/xact.c).  Updates that only move last_used_at forward,
 * as the worker's flushes do, are no change to either.  ENABLE ALWAYS: they
 * fire under session_replication_role = replica too.
 */
CREATE FUNCTION tokenstore_internal.token_cache_sync()
	RETURNS trigger
	AS 'MODULE_PATHNAME', 'token_cache_sync'
	LANGUAGE C;

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
CREATE TRIGGER token_cache_insert AFTER INSERT ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore_internal.token_cache_sync();
CREATE TRIGGER token_cache_delete AFTER DELETE ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore_internal.token_cache_sync();
CREATE TRIGGER token_cache_truncate AFTER TRUNCATE ON tokenstore.token
	FOR EACH STATEMENT EXECUTE FUNCTION tokenstore_internal.token_cache_sync();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_insert;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_update;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_delete;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_truncate;

/* ---- the API ---- */

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

CREATE FUNCTION tokenstore.token_user(token text)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_user'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_user(text) IS
	'the user id of a live token (NULL otherwise); records the use';

CREATE FUNCTION tokenstore.token_check(token text,
									   OUT user_id text,
									   OUT info jsonb,
									   OUT created_at timestamptz,
									   OUT last_used_at timestamptz,
									   OUT expires_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_check'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER ROWS 1;
COMMENT ON FUNCTION tokenstore.token_check(text) IS
	'one row for a live token (user, info, times), none otherwise; records the use';

CREATE FUNCTION tokenstore.token_list(user_id text,
									  OUT token_id text,
									  OUT info jsonb,
									  OUT created_at timestamptz,
									  OUT last_used_at timestamptz,
									  OUT expires_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_list'
	LANGUAGE C VOLATILE SECURITY DEFINER ROWS 5;
COMMENT ON FUNCTION tokenstore.token_list(text) IS
	'the live tokens of a user, oldest first, by token_id (never the token)';

CREATE FUNCTION tokenstore.token_refresh(token text,
										 ttl interval DEFAULT NULL,
										 idle_timeout interval DEFAULT NULL,
										 expires_at timestamptz DEFAULT NULL)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_refresh'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_refresh(text, interval, interval, timestamptz) IS
	'set a live token''s absolute deadline to now + ttl or expires_at (''infinity'': none), and its idle timeout if given (0: none); false for a dead or unknown token';

CREATE FUNCTION tokenstore.token_set_info(token text, info jsonb)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_set_info'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_set_info(text, jsonb) IS
	'replace a live token''s info; false for a dead or unknown token';

CREATE FUNCTION tokenstore.token_delete(token text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_delete'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_delete(text) IS
	'revoke a token; false if there was no live one';

CREATE FUNCTION tokenstore.token_delete_id(token_id text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_delete_id'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_delete_id(text) IS
	'revoke a token by the token_id token_list shows';

CREATE FUNCTION tokenstore.token_delete_user(user_id text,
											 keep_token text DEFAULT NULL)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_delete_user'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_delete_user(text, text) IS
	'revoke every token of a user, or all but keep_token; how many live ones went';

CREATE FUNCTION tokenstore.token_rotate(token text,
										grace interval DEFAULT NULL,
										user_id text DEFAULT NULL,
										new_token text DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_rotate'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_rotate(text, interval, text, text) IS
	'replace a live token by a new one (new_token, or a generated one), attaching user_id to an anonymous session; the old one dies now or after grace, which nothing extends';

/* ---- the session store of web frameworks: find, save, delete ---- */

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

CREATE FUNCTION tokenstore.token_sweep()
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_sweep'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_sweep() IS
	'delete the rows of dead tokens now; how many';

CREATE FUNCTION tokenstore.token_flush()
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_flush'
	LANGUAGE C VOLATILE SECURITY DEFINER;
COMMENT ON FUNCTION tokenstore.token_flush() IS
	'write the cache''s last uses of this database to the table now; how many rows moved';

/* ---- monitoring ---- */

CREATE FUNCTION tokenstore_internal.token_stats(OUT datname text,
												OUT cached bigint,
												OUT dirty bigint,
												OUT last_flush timestamptz,
												OUT last_sweep timestamptz,
												OUT rows_flushed bigint,
												OUT rows_swept bigint,
												OUT capacity bigint,
												OUT entries bigint,
												OUT hits bigint,
												OUT misses bigint,
												OUT fills bigint,
												OUT refused bigint,
												OUT evictions bigint)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_stats'
	LANGUAGE C VOLATILE;

/* on a hot standby: the state of its cache, and how far its view lags */
CREATE FUNCTION tokenstore_internal.token_standby_state(OUT standby_cache text,
														OUT cache_lag interval)
	RETURNS record
	AS 'MODULE_PATHNAME', 'token_standby_state'
	LANGUAGE C VOLATILE;

CREATE VIEW tokenstore.stats AS
	SELECT s.*, st.standby_cache, st.cache_lag
	  FROM tokenstore_internal.token_stats() s
	 CROSS JOIN tokenstore_internal.token_standby_state() st;
COMMENT ON VIEW tokenstore.stats IS
	'one row per database with tokenstore: its cache entries, its worker''s flushes and sweeps (on a standby: uses sent to the primary), the cache''s counters, and on a standby the state of its cache and its lag';

CREATE FUNCTION tokenstore_internal.token_redis_stats(OUT state text,
													  OUT server text,
													  OUT queued bigint,
													  OUT queue_bytes bigint,
													  OUT sent bigint,
													  OUT errors bigint,
													  OUT overflows bigint,
													  OUT resyncs bigint,
													  OUT oldest_unsent interval,
													  OUT last_error text,
													  OUT held bigint)
	RETURNS record
	AS 'MODULE_PATHNAME', 'token_redis_stats'
	LANGUAGE C VOLATILE;

CREATE VIEW tokenstore.redis_stats AS SELECT * FROM tokenstore_internal.token_redis_stats();
COMMENT ON VIEW tokenstore.redis_stats IS
	'the Redis mirror: off, down, resync or up, and the publisher''s counters';

/*
 * A hot standby's sender calls this on the primary with the uses its checks
 * recorded (see src/sender.c); grant it to the role of the standby's
 * tokenstore.primary_conninfo.
 */
CREATE FUNCTION tokenstore_internal.token_record_uses(token_hashes bytea[],
													  used_at timestamptz[])
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_record_uses'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;

/*
 * For update scripts: when a function is created anew with another
 * signature, the roles that could run the old one may run the new one.
 */
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

/* ---- privileges: nothing for PUBLIC ---- */

REVOKE ALL ON SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON SCHEMA tokenstore_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokenstore_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA tokenstore TO pg_monitor;
GRANT SELECT ON tokenstore.stats, tokenstore.redis_stats TO pg_monitor;
GRANT EXECUTE ON FUNCTION tokenstore_internal.token_stats(),
	tokenstore_internal.token_redis_stats(),
	tokenstore_internal.token_standby_state() TO pg_monitor;
