/*
 * tokenstore--1.0.sql: the install script of CREATE EXTENSION tokenstore.
 *
 * The table is the truth.  Applications never touch it: they call the
 * functions below, which run as the extension's owner (SECURITY DEFINER) and
 * resolve every name they use in pg_catalog and tokenstore only, whatever the
 * caller's search_path says (the C code pushes its own search path; a SET
 * clause here would cost more than the whole cached check).
 *
 * This is version 1.0, kept so that databases holding it can be updated
 * (ALTER EXTENSION tokenstore UPDATE) and the update tested.  Its built-ins
 * are qualified with pg_catalog, so that no function a role created earlier
 * in the schema can stand in for one.  New installations get the current
 * version, whose script also refuses a schema that another role created.
 */

\echo Use "CREATE EXTENSION tokenstore" to load this file. \quit

/*
 * One row per token, keyed by the SHA-256 of the token's bytes.  The token
 * itself is never stored, except for share-mode tokens, which must be handed
 * out again: for those share_secret holds the token encrypted with the key
 * in tokenstore.secret.  idle_timeout is kept as a plain duration (no days or
 * months) so that every deadline is exact arithmetic.
 */
CREATE TABLE tokenstore.token (
	token_hash		bytea PRIMARY KEY
		CHECK (pg_catalog.octet_length(token_hash) = 32),
	user_id			text NOT NULL
		CHECK (user_id <> '' AND pg_catalog.octet_length(user_id) <= 64),
	info			jsonb NOT NULL DEFAULT '{}'
		CHECK (pg_catalog.jsonb_typeof(info) = 'object'),
	created_at		timestamptz NOT NULL,
	last_used_at	timestamptz NOT NULL,
	expires_at		timestamptz,
	idle_timeout	interval
		CHECK (idle_timeout > '0' AND pg_catalog.date_part('day', idle_timeout) = 0
			   AND pg_catalog.date_part('month', idle_timeout) = 0),
	share_secret	bytea,
	idle_sweep_at	timestamptz
) WITH (fillfactor = 90);

COMMENT ON TABLE tokenstore.token IS
	'tokenstore tokens, keyed by SHA-256; use the tokenstore functions, not this table';
COMMENT ON COLUMN tokenstore.token.expires_at IS
	'absolute deadline (NULL: none); the idle deadline is last_used_at + idle_timeout';
COMMENT ON COLUMN tokenstore.token.idle_sweep_at IS
	'idle timeout only: when the sweep looks at the row next, never after its idle deadline (set by a trigger)';
COMMENT ON COLUMN tokenstore.token.share_secret IS
	'share-mode tokens only: the token, encrypted with tokenstore.secret';

CREATE INDEX token_user_id_idx ON tokenstore.token (user_id);
/*
 * The sweep walks these, oldest deadline first.  No index covers
 * last_used_at, so that the worker's flushes are HOT updates (fillfactor
 * leaves them room); idle_sweep_at stands in for the idle deadline.
 */
CREATE INDEX token_expires_at_idx ON tokenstore.token (expires_at)
	WHERE expires_at IS NOT NULL;
CREATE INDEX token_idle_idx ON tokenstore.token (idle_sweep_at)
	WHERE idle_sweep_at IS NOT NULL;

CREATE FUNCTION tokenstore.token_idle_sweep_at()
	RETURNS trigger
	AS 'MODULE_PATHNAME', 'token_idle_sweep_at'
	LANGUAGE C;
REVOKE ALL ON FUNCTION tokenstore.token_idle_sweep_at() FROM PUBLIC;
CREATE TRIGGER token_idle_sweep_at BEFORE INSERT ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore.token_idle_sweep_at();
/* an operator's edit may move the idle deadline earlier; a flush never does */
CREATE TRIGGER token_idle_sweep_at_edit BEFORE UPDATE ON tokenstore.token
	FOR EACH ROW
	WHEN (NEW.last_used_at < OLD.last_used_at
		  OR NEW.idle_timeout IS DISTINCT FROM OLD.idle_timeout)
	EXECUTE FUNCTION tokenstore.token_idle_sweep_at();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_idle_sweep_at;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_idle_sweep_at_edit;

/* The per-database key that encrypts share-mode tokens: 244 random bits. */
CREATE TABLE tokenstore.secret (
	key				bytea NOT NULL CHECK (pg_catalog.octet_length(key) = 32),
	only_one		boolean PRIMARY KEY DEFAULT true CHECK (only_one)
);
INSERT INTO tokenstore.secret (key)
	SELECT pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text,
							 'UTF8'));

/* Tokens and the key belong in pg_dump's output. */
SELECT pg_catalog.pg_extension_config_dump('tokenstore.token', '');
SELECT pg_catalog.pg_extension_config_dump('tokenstore.secret', '');

REVOKE ALL ON tokenstore.token, tokenstore.secret FROM PUBLIC;
GRANT USAGE ON SCHEMA tokenstore TO PUBLIC;

/*
 * The hot tier.  With tokenstore preloaded, checks record uses in shared
 * memory; last_used() is the later of a row's stored last use and the one
 * the cache recorded since, and the functions judge every deadline on it.
 */
CREATE FUNCTION tokenstore.last_used(token_hash bytea, stored timestamptz)
	RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'token_last_used'
	LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION tokenstore.last_used(bytea, timestamptz) FROM PUBLIC;

/*
 * Every committed change to a row reaches the cache and Redis through these
 * triggers (see src/xact.c).  Updates that only move last_used_at forward,
 * as the worker's flushes do, are no change to either.  ENABLE ALWAYS: they
 * fire under session_replication_role = replica too.
 */
CREATE FUNCTION tokenstore.token_cache_sync()
	RETURNS trigger
	AS 'MODULE_PATHNAME', 'token_cache_sync'
	LANGUAGE C;
REVOKE ALL ON FUNCTION tokenstore.token_cache_sync() FROM PUBLIC;

CREATE TRIGGER token_cache_update AFTER UPDATE ON tokenstore.token
	FOR EACH ROW
	WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash
		  OR OLD.user_id IS DISTINCT FROM NEW.user_id
		  OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
		  OR OLD.idle_timeout IS DISTINCT FROM NEW.idle_timeout
		  OR OLD.info IS DISTINCT FROM NEW.info
		  OR OLD.created_at IS DISTINCT FROM NEW.created_at
		  OR NEW.last_used_at < OLD.last_used_at)
	EXECUTE FUNCTION tokenstore.token_cache_sync();
CREATE TRIGGER token_cache_insert AFTER INSERT ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore.token_cache_sync();
CREATE TRIGGER token_cache_delete AFTER DELETE ON tokenstore.token
	FOR EACH ROW EXECUTE FUNCTION tokenstore.token_cache_sync();
CREATE TRIGGER token_cache_truncate AFTER TRUNCATE ON tokenstore.token
	FOR EACH STATEMENT EXECUTE FUNCTION tokenstore.token_cache_sync();
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_insert;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_update;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_delete;
ALTER TABLE tokenstore.token ENABLE ALWAYS TRIGGER token_cache_truncate;

CREATE FUNCTION tokenstore.token_make(user_id text,
									  info jsonb DEFAULT '{}',
									  ttl interval DEFAULT NULL,
									  idle_timeout interval DEFAULT NULL,
									  mode text DEFAULT NULL,
									  max_tokens integer DEFAULT NULL,
									  token text DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_make'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_user(token text)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_user'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_check(token text,
									   OUT user_id text,
									   OUT info jsonb,
									   OUT created_at timestamptz,
									   OUT last_used_at timestamptz,
									   OUT expires_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_check'
	LANGUAGE C VOLATILE STRICT SECURITY DEFINER ROWS 1;

CREATE FUNCTION tokenstore.token_list(user_id text,
									  OUT token_id text,
									  OUT info jsonb,
									  OUT created_at timestamptz,
									  OUT last_used_at timestamptz,
									  OUT expires_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'token_list'
	LANGUAGE C VOLATILE SECURITY DEFINER ROWS 5;

CREATE FUNCTION tokenstore.token_refresh(token text, ttl interval DEFAULT NULL)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_refresh'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_set_info(token text, info jsonb)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_set_info'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_delete(token text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_delete'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_delete_id(token_id text)
	RETURNS boolean
	AS 'MODULE_PATHNAME', 'token_delete_id'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_delete_user(user_id text,
											 keep_token text DEFAULT NULL)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_delete_user'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_rotate(token text, grace interval DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'token_rotate'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_sweep()
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_sweep'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_flush()
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'token_flush'
	LANGUAGE C VOLATILE SECURITY DEFINER;

CREATE FUNCTION tokenstore.token_stats(OUT datname text,
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

/*
 * One row per database with tokenstore: its cached and dirty entries, its
 * worker's last flush and sweep; and the cache-wide counters.
 */
CREATE VIEW tokenstore.stats AS SELECT * FROM tokenstore.token_stats();
GRANT SELECT ON tokenstore.stats TO PUBLIC;

CREATE FUNCTION tokenstore.token_redis_stats(OUT state text,
									   OUT server text,
									   OUT queued bigint,
									   OUT queue_bytes bigint,
									   OUT sent bigint,
									   OUT errors bigint,
									   OUT overflows bigint,
									   OUT resyncs bigint,
									   OUT oldest_unsent interval,
									   OUT last_error text)
	RETURNS record
	AS 'MODULE_PATHNAME', 'token_redis_stats'
	LANGUAGE C VOLATILE;

/*
 * The Redis mirror: off, down (configured, not connected), resync (some
 * database is being written again) or up; and the publisher's counters.
 */
CREATE VIEW tokenstore.redis_stats AS SELECT * FROM tokenstore.token_redis_stats();
GRANT SELECT ON tokenstore.redis_stats TO PUBLIC;
