/*
 * tokenstore--1.2--1.3.sql: ALTER EXTENSION tokenstore UPDATE TO '1.3'.
 *
 * Read scale-out (see the README's "Hot standbys"): the function a hot
 * standby's sender calls on the primary with the uses its checks recorded,
 * and two last columns of the stats view, the state of a standby's cache
 * and its lag.  Tokens and grants stay as they were.
 */

\echo Use "ALTER EXTENSION tokenstore UPDATE TO '1.3'" to load this file. \quit

CREATE FUNCTION tokenstore_internal.token_standby_state(OUT standby_cache text,
														OUT cache_lag interval)
	RETURNS record
	AS 'MODULE_PATHNAME', 'token_standby_state'
	LANGUAGE C VOLATILE;

CREATE OR REPLACE VIEW tokenstore.stats AS
	SELECT s.*, st.standby_cache, st.cache_lag
	  FROM tokenstore_internal.token_stats() s
	 CROSS JOIN tokenstore_internal.token_standby_state() st;
COMMENT ON VIEW tokenstore.stats IS
	'one row per database with tokenstore: its cache entries, its worker''s flushes and sweeps (on a standby: uses sent to the primary), the cache''s counters, and on a standby the state of its cache and its lag';

CREATE FUNCTION tokenstore_internal.token_record_uses(token_hashes bytea[],
													  used_at timestamptz[])
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_record_uses'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;

REVOKE ALL ON FUNCTION tokenstore_internal.token_standby_state(),
	tokenstore_internal.token_record_uses(bytea[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tokenstore_internal.token_standby_state() TO pg_monitor;
