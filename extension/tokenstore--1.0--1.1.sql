/*
 * tokenstore--1.0--1.1.sql: ALTER EXTENSION tokenstore UPDATE TO '1.1'.
 *
 * Every token stays, with its user, info, deadlines and last use.  What
 * changes (see the README's "Upgrading"):
 * - Nothing is usable by PUBLIC any more: grant the application's role
 *   USAGE on schema tokenstore and EXECUTE on its functions (grants made
 *   before the update stay).
 * - The helpers of the triggers and views move to schema tokenstore_internal.
 * - The key that seals share-mode tokens leaves the database (and its
 *   dumps) for $PGDATA/tokenstore.key; share-mode tokens are sealed again
 *   with it, so every user keeps their shared token.
 * - Times are bounded (finite, before the year 10000; idle timeouts at most
 *   72,000,000 hours), so that no deadline arithmetic can overflow; the rare
 *   row beyond a bound is brought within it first.
 * - A token replaced by token_rotate with a grace period is marked, so
 *   that nothing extends its grace.
 */

\echo Use "ALTER EXTENSION tokenstore UPDATE TO '1.1'" to load this file. \quit

CREATE SCHEMA tokenstore_internal;
COMMENT ON SCHEMA tokenstore_internal IS
	'tokenstore''s helpers for its triggers and views; not an API';

ALTER FUNCTION tokenstore.last_used(bytea, timestamptz) SET SCHEMA tokenstore_internal;
ALTER FUNCTION tokenstore.token_idle_sweep_at() SET SCHEMA tokenstore_internal;
ALTER FUNCTION tokenstore.token_cache_sync() SET SCHEMA tokenstore_internal;
ALTER FUNCTION tokenstore.token_stats() SET SCHEMA tokenstore_internal;
ALTER FUNCTION tokenstore.token_redis_stats() SET SCHEMA tokenstore_internal;

/* share-mode tokens: from the key in tokenstore.secret to the key file */
CREATE FUNCTION tokenstore_internal.token_reseal(token_hash bytea, sealed bytea, old_key bytea)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'token_reseal'
	LANGUAGE C VOLATILE STRICT;
UPDATE tokenstore.token
   SET share_secret = tokenstore_internal.token_reseal(token_hash, share_secret,
						(SELECT s.key FROM tokenstore.secret s))
 WHERE share_secret IS NOT NULL;
DROP FUNCTION tokenstore_internal.token_reseal(bytea, bytea, bytea);
ALTER EXTENSION tokenstore DROP TABLE tokenstore.secret;
DROP TABLE tokenstore.secret;

/*
 * Bounded times.  A time beyond the year 9999 becomes its last second; an
 * infinite deadline becomes none, an infinitely past one (or use) a dead
 * one; an idle timeout beyond the bound becomes the bound.
 */
UPDATE tokenstore.token
   SET created_at = CASE
			WHEN created_at OPERATOR(pg_catalog.=) '-infinity' THEN '1970-01-01 00:00:00+00'
			WHEN created_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00' THEN '9999-12-31 23:59:59+00'
			ELSE created_at END,
	   last_used_at = CASE
			WHEN last_used_at OPERATOR(pg_catalog.=) '-infinity' THEN '1970-01-01 00:00:00+00'
			WHEN last_used_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00' THEN '9999-12-31 23:59:59+00'
			ELSE last_used_at END,
	   expires_at = CASE
			WHEN expires_at OPERATOR(pg_catalog.=) 'infinity' THEN NULL
			WHEN expires_at OPERATOR(pg_catalog.=) '-infinity' THEN '1970-01-01 00:00:00+00'
			WHEN expires_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00' THEN '9999-12-31 23:59:59+00'
			ELSE expires_at END,
	   idle_timeout = CASE
			WHEN idle_timeout OPERATOR(pg_catalog.>) '72000000 hours' THEN '72000000 hours'
			ELSE idle_timeout END
 WHERE NOT pg_catalog.isfinite(created_at)
	OR created_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00'
	OR NOT pg_catalog.isfinite(last_used_at)
	OR last_used_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00'
	OR NOT pg_catalog.isfinite(expires_at)
	OR expires_at OPERATOR(pg_catalog.>=) '10000-01-01 00:00:00+00'
	OR idle_timeout OPERATOR(pg_catalog.>) '72000000 hours';
ALTER TABLE tokenstore.token
	ADD CONSTRAINT token_created_at_range CHECK (pg_catalog.isfinite(created_at)
		AND created_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	ADD CONSTRAINT token_last_used_at_range CHECK (pg_catalog.isfinite(last_used_at)
		AND last_used_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	ADD CONSTRAINT token_expires_at_range CHECK (pg_catalog.isfinite(expires_at)
		AND expires_at OPERATOR(pg_catalog.<) '10000-01-01 00:00:00+00'),
	DROP CONSTRAINT token_idle_timeout_check,
	ADD CONSTRAINT token_idle_timeout_range CHECK (
		idle_timeout OPERATOR(pg_catalog.>) '0'
		AND idle_timeout OPERATOR(pg_catalog.<=) '72000000 hours'
		AND pg_catalog.date_part('day', idle_timeout) OPERATOR(pg_catalog.=) 0
		AND pg_catalog.date_part('month', idle_timeout) OPERATOR(pg_catalog.=) 0),
	ADD COLUMN rotated_at timestamptz;
COMMENT ON COLUMN tokenstore.token.share_secret IS
	'share-mode tokens only: the token, sealed with the key in $PGDATA/tokenstore.key';
COMMENT ON COLUMN tokenstore.token.rotated_at IS
	'set when token_rotate replaced the token with a grace period: its expires_at is then final';

COMMENT ON FUNCTION tokenstore.token_make(text, jsonb, interval, interval, text, integer, text) IS
	'make a token for a user (login modes multi, single, share) and return it';
COMMENT ON FUNCTION tokenstore.token_user(text) IS
	'the user id of a live token (NULL otherwise); records the use';
COMMENT ON FUNCTION tokenstore.token_check(text) IS
	'one row for a live token (user, info, times), none otherwise; records the use';
COMMENT ON FUNCTION tokenstore.token_list(text) IS
	'the live tokens of a user, oldest first, by token_id (never the token)';
COMMENT ON FUNCTION tokenstore.token_refresh(text, interval) IS
	'set a live token''s absolute deadline to now + ttl; false for a dead or unknown token';
COMMENT ON FUNCTION tokenstore.token_set_info(text, jsonb) IS
	'replace a live token''s info; false for a dead or unknown token';
COMMENT ON FUNCTION tokenstore.token_delete(text) IS
	'revoke a token; false if there was no live one';
COMMENT ON FUNCTION tokenstore.token_delete_id(text) IS
	'revoke a token by the token_id token_list shows';
COMMENT ON FUNCTION tokenstore.token_delete_user(text, text) IS
	'revoke every token of a user, or all but keep_token; how many live ones went';
COMMENT ON FUNCTION tokenstore.token_rotate(text, interval) IS
	'replace a live token by a new one; the old one dies now or after grace, which nothing extends';
COMMENT ON FUNCTION tokenstore.token_sweep() IS
	'delete the rows of dead tokens now; how many';
COMMENT ON FUNCTION tokenstore.token_flush() IS
	'write the cache''s last uses of this database to the table now; how many rows moved';
COMMENT ON VIEW tokenstore.stats IS
	'one row per database with tokenstore: its cache entries, its worker''s flushes and sweeps, and the cache''s counters';
COMMENT ON VIEW tokenstore.redis_stats IS
	'the Redis mirror: off, down, resync or up, and the publisher''s counters';

/* the Redis mirror's stats count what the publisher holds during a resync */
DROP VIEW tokenstore.redis_stats;
DROP FUNCTION tokenstore_internal.token_redis_stats();
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

/* privileges: nothing for PUBLIC */
REVOKE ALL ON SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON SCHEMA tokenstore_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokenstore FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokenstore_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA tokenstore TO pg_monitor;
GRANT SELECT ON tokenstore.stats, tokenstore.redis_stats TO pg_monitor;
GRANT EXECUTE ON FUNCTION tokenstore_internal.token_stats(),
	tokenstore_internal.token_redis_stats() TO pg_monitor;
