/*-------------------------------------------------------------------------
 *
 * store.c
 *	  The token table: every statement tokenstore runs against
 *	  tokenstore.token, prepared once per backend and run through SPI.
 *
 * Three rules shape every statement here:
 *
 * - Latest committed state.  Statements run on the latest snapshot, as
 *   foreign-key checks do, so a committed revocation is seen at once even
 *   inside a long REPEATABLE READ transaction, and per-user rules count the
 *   tokens other sessions have committed since.  Under REPEATABLE READ and
 *   SERIALIZABLE the transaction snapshot is the crosscheck: changing a row
 *   that the transaction cannot see is a serialization failure, never a
 *   silent write.
 *
 * - Nothing a caller can create is ever used.  The functions run as the
 *   extension's owner; every table and function below is qualified, and
 *   store_begin pins search_path to "pg_catalog, pg_temp" (saved and
 *   restored like a function's SET clause), so operators and types resolve
 *   in pg_catalog only, never in a schema of the caller's or in pg_temp.
 *
 * - No waiting on a check.  Recording a use skips a row that another
 *   transaction has locked (SKIP LOCKED) rather than queueing behind it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "compat.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "store.h"
#include "tokenstore.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Advisory lock space of per-user locks: field4 values 1 and 2 are SQL's. */
#define USER_LOCK_SPACE		0x746B7374	/* "tkst" */
#define USER_LOCK_FIELD4	3

#define ROW_COLUMNS \
	"token_hash, user_id, info, created_at, last_used_at, expires_at, " \
	"idle_timeout, share_secret"

/* where every statement resolves its operators and types */
#define PINNED_PATH "pg_catalog, pg_temp"

/*
 * The last use of a row: the later of the table's and the cache's, which
 * records uses in shared memory and flushes them later.  Every deadline and
 * every "least recently used" below is judged on it.
 */
#define LAST_USED "tokenstore_internal.last_used(token_hash, last_used_at)"

#define READ_COLUMNS \
	"token_hash, user_id, info, created_at, " LAST_USED ", expires_at, " \
	"idle_timeout, share_secret, rotated_at IS NOT NULL"

/* Live at time p: neither deadline has passed. */
#define LIVE(p) \
	"((expires_at IS NULL OR expires_at > " p ") AND " \
	"(idle_timeout IS NULL OR " LAST_USED " + idle_timeout > " p "))"

/* The same, of the row t that an INSERT's ON CONFLICT found. */
#define LIVE_T(p) \
	"((t.expires_at IS NULL OR t.expires_at > " p ") AND " \
	"(t.idle_timeout IS NULL OR" \
	" tokenstore_internal.last_used(t.token_hash, t.last_used_at) + t.idle_timeout > " p "))"

/* A new row, and its parameters' types. */
#define INSERT_ROW \
	"INSERT INTO tokenstore.token (" ROW_COLUMNS ", data)" \
	" VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)"
#define INSERT_TYPES \
	{BYTEAOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, TIMESTAMPTZOID, \
	INTERVALOID, BYTEAOID, BYTEAOID}

/*
 * The rows whose sweep_at, a lower bound of their deadline, is due (and
 * match `filter`), the earliest first: the dead ones go; a live one
 * (extended, or used since) gets its real deadline to be looked at then.
 * Returns how many went and how many were put off.
 */
#define SWEEP_DUE(filter) \
	"WITH due AS (" \
	"  SELECT token_hash, " LIVE("$1") " AS live FROM tokenstore.token" \
	"   WHERE sweep_at <= $1" filter \
	"   ORDER BY sweep_at LIMIT $2 FOR UPDATE SKIP LOCKED)," \
	" later AS (" \
	"  UPDATE tokenstore.token t" \
	"     SET sweep_at = least(t.expires_at," \
	"          tokenstore_internal.last_used(t.token_hash, t.last_used_at) + t.idle_timeout)" \
	"    FROM due WHERE t.token_hash = due.token_hash AND due.live RETURNING 1)," \
	" gone AS (" \
	"  DELETE FROM tokenstore.token t USING due" \
	"   WHERE t.token_hash = due.token_hash AND NOT due.live RETURNING 1)" \
	" SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM later)"

typedef enum StoreStmt
{
	STMT_FIND,
	STMT_LOCK_LIVE,
	STMT_TOUCH,
	STMT_LIST,
	STMT_INSERT,
	STMT_INSERT_NEW,
	STMT_REVOKE_LRU,
	STMT_FIND_SHARE,
	STMT_SECRET_1_0,
	STMT_REFRESH,
	STMT_SET_INFO,
	STMT_RETIRE,
	STMT_DELETE,
	STMT_DELETE_ID,
	STMT_DELETE_USER,
	STMT_SWEEP_TTL,
	STMT_SWEEP_IDLE_LATER,
	STMT_SWEEP_IDLE,
	STMT_FLUSH_LAGGING,
	STMT_FLUSH,
	STMT_LIVE_PAGE,
	STMT_LIVE_AMONG,
	STMT_LIVE_ROWS_AMONG,
	STMT_SWEEP,
	STMT_SAVE,
	STMT_FIND_DATA,
	STMT_SESSIONS,
	STMT_DELETE_SESSIONS,
	STMT_SWEEP_AMONG,
	STMT_SWEEP_KEYS,
	STMT_COUNT
} StoreStmt;

#define MAX_ARGS 8

typedef struct StmtDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[MAX_ARGS];
} StmtDef;

static const StmtDef stmt_defs[STMT_COUNT] = {
	[STMT_FIND] = {
		"SELECT " READ_COLUMNS " FROM tokenstore.token"
		" WHERE token_hash = $1 AND " LIVE("$2"),
		2, {BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_LOCK_LIVE] = {
		"SELECT " READ_COLUMNS ", data FROM tokenstore.token"
		" WHERE token_hash = $1 AND " LIVE("$2") " FOR UPDATE",
		2, {BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_TOUCH] = {
		"UPDATE tokenstore.token SET last_used_at = $2"
		" WHERE token_hash = (SELECT token_hash FROM tokenstore.token"
		"                      WHERE token_hash = $1 FOR UPDATE SKIP LOCKED)"
		"   AND last_used_at < $2"
		" RETURNING expires_at, idle_timeout, last_used_at",
		2, {BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_LIST] = {
		"SELECT " READ_COLUMNS " FROM tokenstore.token"
		" WHERE user_id = $1 AND " LIVE("$2")
		" ORDER BY created_at, token_hash",
		2, {TEXTOID, TIMESTAMPTZOID}
	},
	[STMT_INSERT] = {
		INSERT_ROW " ON CONFLICT DO NOTHING", 8, INSERT_TYPES
	},
	/* a generated token: 256 random bits cannot be in the table already */
	[STMT_INSERT_NEW] = {
		INSERT_ROW, 8, INSERT_TYPES
	},
	[STMT_REVOKE_LRU] = {
		"DELETE FROM tokenstore.token WHERE token_hash IN"
		" (SELECT token_hash FROM tokenstore.token"
		"   WHERE user_id = $1 AND " LIVE("$2")
		"   ORDER BY " LAST_USED " DESC, created_at DESC, token_hash OFFSET $3)"
		" RETURNING token_hash, user_id",
		3, {TEXTOID, TIMESTAMPTZOID, INT8OID}
	},
	[STMT_FIND_SHARE] = {
		"SELECT token_hash, share_secret FROM tokenstore.token"
		" WHERE user_id = $1 AND share_secret IS NOT NULL"
		"   AND rotated_at IS NULL AND " LIVE("$2")
		" ORDER BY created_at DESC, token_hash LIMIT 1",
		2, {TEXTOID, TIMESTAMPTZOID}
	},
	[STMT_SECRET_1_0] = {
		"SELECT key FROM tokenstore.secret",
		0, {InvalidOid}
	},
	/*
	 * A token in its grace period keeps its final deadline.  $5: whether the
	 * idle timeout becomes $4 (NULL: none).
	 */
	[STMT_REFRESH] = {
		"UPDATE tokenstore.token"
		"   SET expires_at = $3, last_used_at = greatest(" LAST_USED ", $2),"
		"       idle_timeout = CASE WHEN $5 THEN $4 ELSE idle_timeout END"
		" WHERE token_hash = $1 AND rotated_at IS NULL AND " LIVE("$2")
		" RETURNING expires_at, idle_timeout, last_used_at",
		5, {BYTEAOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INTERVALOID, BOOLOID}
	},
	[STMT_SET_INFO] = {
		"UPDATE tokenstore.token SET info = $3"
		" WHERE token_hash = $1 AND " LIVE("$2"),
		3, {BYTEAOID, TIMESTAMPTZOID, JSONBOID}
	},
	[STMT_RETIRE] = {
		"UPDATE tokenstore.token"
		"   SET expires_at = least(expires_at, $3), rotated_at = $2"
		" WHERE token_hash = $1",
		3, {BYTEAOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
	},
	[STMT_DELETE] = {
		"DELETE FROM tokenstore.token WHERE token_hash = $1"
		" RETURNING token_hash, user_id, " LIVE("$2"),
		2, {BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_DELETE_ID] = {
		"DELETE FROM tokenstore.token WHERE token_hash BETWEEN $1 AND $2"
		" RETURNING token_hash, user_id, " LIVE("$3"),
		3, {BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_DELETE_USER] = {
		"DELETE FROM tokenstore.token"
		" WHERE user_id = $1 AND token_hash IS DISTINCT FROM $2"
		" RETURNING token_hash, user_id, " LIVE("$3"),
		3, {TEXTOID, BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_SWEEP_TTL] = {
		"DELETE FROM tokenstore.token WHERE token_hash IN"
		" (SELECT token_hash FROM tokenstore.token WHERE expires_at <= $1"
		"   ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
		2, {TIMESTAMPTZOID, INT4OID}
	},
	/*
	 * Under the SQL objects of 1.0 and 1.1: one index per kind of deadline,
	 * idle_sweep_at a lower bound of the idle one.
	 */
	/* idle_sweep_at is due, but the token was used since: look again later */
	[STMT_SWEEP_IDLE_LATER] = {
		"UPDATE tokenstore.token SET idle_sweep_at = " LAST_USED " + idle_timeout"
		" WHERE token_hash IN"
		" (SELECT token_hash FROM tokenstore.token"
		"   WHERE idle_sweep_at <= $1 AND " LAST_USED " + idle_timeout > $1"
		"   ORDER BY idle_sweep_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
		2, {TIMESTAMPTZOID, INT4OID}
	},
	[STMT_SWEEP_IDLE] = {
		"DELETE FROM tokenstore.token WHERE token_hash IN"
		" (SELECT token_hash FROM tokenstore.token"
		"   WHERE idle_sweep_at <= $1 AND " LAST_USED " + idle_timeout <= $1"
		"   ORDER BY idle_sweep_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
		2, {TIMESTAMPTZOID, INT4OID}
	},
	[STMT_SWEEP] = {
		SWEEP_DUE(""), 2, {TIMESTAMPTZOID, INT4OID}
	},
	/* the same, of the given rows only: a batch that failed, taken apart */
	[STMT_SWEEP_AMONG] = {
		SWEEP_DUE(" AND token_hash = ANY ($3)"),
		3, {TIMESTAMPTZOID, INT4OID, BYTEAARRAYOID}
	},
	[STMT_SWEEP_KEYS] = {
		"SELECT token_hash FROM tokenstore.token"
		" WHERE sweep_at <= $1 ORDER BY sweep_at LIMIT $2"
		" FOR UPDATE SKIP LOCKED",
		2, {TIMESTAMPTZOID, INT4OID}
	},
	/*
	 * The uses the table lags, and whether it lags them by the resolution
	 * $3 (or by a tenth of the token's idle timeout, if less): only those
	 * are written now.
	 */
	[STMT_FLUSH_LAGGING] = {
		"SELECT v.hash, s.last_used_at < v.used - CASE WHEN s.idle_timeout IS NULL THEN $3"
		"                                          ELSE least($3, s.idle_timeout / 10) END"
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS v(hash, used)"
		"  JOIN tokenstore.token s ON s.token_hash = v.hash"
		" WHERE s.last_used_at < v.used",
		3, {BYTEAARRAYOID, TIMESTAMPTZARRAYOID, INTERVALOID}
	},
	/* never waits: a row another transaction holds is left for later */
	[STMT_FLUSH] = {
		"UPDATE tokenstore.token t SET last_used_at = v.used"
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS v(hash, used)"
		" WHERE t.token_hash = v.hash AND t.last_used_at < v.used"
		"   AND t.token_hash IN (SELECT s.token_hash FROM tokenstore.token s"
		"                         WHERE s.token_hash = ANY ($1) FOR UPDATE SKIP LOCKED)"
		" RETURNING t.token_hash, t.expires_at, t.idle_timeout, t.last_used_at",
		2, {BYTEAARRAYOID, TIMESTAMPTZARRAYOID}
	},
	[STMT_LIVE_PAGE] = {
		"SELECT " READ_COLUMNS " FROM tokenstore.token"
		" WHERE token_hash > $1 AND " LIVE("$2")
		" ORDER BY token_hash LIMIT $3",
		3, {BYTEAOID, TIMESTAMPTZOID, INT4OID}
	},
	[STMT_LIVE_AMONG] = {
		"SELECT token_hash FROM tokenstore.token"
		" WHERE token_hash = ANY ($1) AND " LIVE("$2")
		" AND ($3::text IS NULL OR user_id = $3)",
		3, {BYTEAARRAYOID, TIMESTAMPTZOID, TEXTOID}
	},
	[STMT_LIVE_ROWS_AMONG] = {
		"SELECT " READ_COLUMNS " FROM tokenstore.token"
		" WHERE token_hash = ANY ($1) AND " LIVE("$2")
		" AND ($3::text IS NULL OR user_id = $3)",
		3, {BYTEAARRAYOID, TIMESTAMPTZOID, TEXTOID}
	},

	/*
	 * A session's save: a new row, or a dead one made anew, or a live one's
	 * data and deadlines replaced (its user and creation kept) when it has
	 * the user the save names, or the save names none.  A live token of
	 * another user, or one replaced by a rotation, returns nothing.
	 */
	[STMT_SAVE] = {
		"INSERT INTO tokenstore.token AS t"
		" (token_hash, user_id, info, created_at, last_used_at, expires_at,"
		"  idle_timeout, data)"
		" VALUES ($1, $2, $3, $4, $4, $5, $6, $7)"
		" ON CONFLICT (token_hash) DO UPDATE SET"
		"  user_id = CASE WHEN " LIVE_T("$4") " THEN t.user_id ELSE excluded.user_id END,"
		"  created_at = CASE WHEN " LIVE_T("$4") " THEN t.created_at ELSE excluded.created_at END,"
		"  share_secret = CASE WHEN " LIVE_T("$4") " THEN t.share_secret END,"
		"  last_used_at = greatest(t.last_used_at, excluded.last_used_at),"
		"  info = excluded.info, expires_at = excluded.expires_at,"
		"  idle_timeout = excluded.idle_timeout, data = excluded.data,"
		"  rotated_at = NULL"
		" WHERE NOT " LIVE_T("$4")
		"    OR (t.data IS NOT NULL AND t.rotated_at IS NULL"
		"        AND ($2 IS NULL OR t.user_id = $2))"
		" RETURNING created_at = $4",
		7, {BYTEAOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		INTERVALOID, BYTEAOID}
	},
	[STMT_FIND_DATA] = {
		"SELECT " READ_COLUMNS ", data FROM tokenstore.token"
		" WHERE token_hash = $1 AND " LIVE("$2"),
		2, {BYTEAOID, TIMESTAMPTZOID}
	},
	[STMT_SESSIONS] = {
		"SELECT " READ_COLUMNS ", data FROM tokenstore.token"
		" WHERE data IS NOT NULL AND " LIVE("$1")
		" ORDER BY created_at, token_hash",
		1, {TIMESTAMPTZOID}
	},
	[STMT_DELETE_SESSIONS] = {
		"DELETE FROM tokenstore.token"
		" WHERE data IS NOT NULL AND (user_id IS NULL OR NOT $2)"
		" RETURNING token_hash, user_id, " LIVE("$1"),
		2, {TIMESTAMPTZOID, BOOLOID}
	},
};

/*
 * The SQL objects of older versions, which a database keeps from the moment
 * this library is installed until ALTER EXTENSION tokenstore UPDATE, so
 * that nothing stops working between the restart and the update.  1.2's
 * table is this version's (1.3 added functions for hot standbys only, 1.4
 * arguments of token_make and token_refresh, which api.c reads by
 * PG_NARGS()).
 * Under 1.1 every statement but the sessions' runs as it is (those have no SQL
 * function there).  Under 1.0 the helper last_used() lived in schema
 * tokenstore, there was no rotated_at, and share-mode tokens were sealed
 * with the key in table tokenstore.secret: statements are rewritten.
 */
typedef enum SchemaVersion
{
	SCHEMA_UNKNOWN,
	SCHEMA_1_0,
	SCHEMA_1_1,
	SCHEMA_CURRENT
} SchemaVersion;

/* the versions of SQL objects this library serves, and their tables */
static const struct
{
	const char *version;
	SchemaVersion schema;
}			known_versions[] = {
	{"1.0", SCHEMA_1_0},
	{"1.1", SCHEMA_1_1},
	{"1.2", SCHEMA_CURRENT},
	{"1.3", SCHEMA_CURRENT},
	{TOKENSTORE_VERSION, SCHEMA_CURRENT},
};

typedef struct Rewrite
{
	const char *from;
	const char *to;
} Rewrite;

/* before 1.2: no sessions, so no data */
static const Rewrite rewrites_1_1[] = {
	{", data FROM", ", NULL::pg_catalog.bytea FROM"},
	{", data) VALUES", ") VALUES"},
	{", $7, $8)", ", $7)"},
};

static const Rewrite rewrites_1_0[] = {
	{"tokenstore_internal.last_used(", "tokenstore.last_used("},
	{"rotated_at IS NOT NULL", "false"},
	{" AND rotated_at IS NULL", ""},
	{", rotated_at = $2", ""},
};

static SPIPlanPtr plans[STMT_COUNT];
/* the version the plans were made for, and the one installed */
static SchemaVersion plans_schema = SCHEMA_UNKNOWN;
static SchemaVersion schema = SCHEMA_UNKNOWN;
static Oid	token_relid = InvalidOid;
static bool relcache_callback_registered = false;

/* Where results are copied to: the memory of the function that called us. */
static MemoryContext caller_cxt = NULL;
/* The GUC nest level that holds the pinned search_path. */
static int	path_level = 0;
/* Whether store_begin pushed the snapshot store_end pops. */
static bool pushed_snapshot = false;

/* The installed version of the extension's SQL objects, or NULL. */
static char *
installed_version(void)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	char	   *version = NULL;

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("tokenstore"));
	rel = table_open(ExtensionRelationId, AccessShareLock);
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * An update or a DROP and CREATE EXTENSION changes the table (a new column,
 * a new table): the version is read again before the next statement.
 */
static void
forget_schema(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == token_relid)
		schema = SCHEMA_UNKNOWN;
}

/*
 * Whether the statements can be written for the installed SQL objects:
 * one of known_versions (1.0 and 1.1 rewritten).  Sets *version to the one
 * found.
 */
static bool
find_schema(char **version)
{
	int			i;

	if (schema != SCHEMA_UNKNOWN)
		return true;
	if (!relcache_callback_registered)
	{
		CacheRegisterRelcacheCallback(forget_schema, (Datum) 0);
		relcache_callback_registered = true;
	}
	*version = installed_version();
	for (i = 0; *version != NULL && i < lengthof(known_versions); i++)
		if (strcmp(*version, known_versions[i].version) == 0)
			schema = known_versions[i].schema;
	if (schema == SCHEMA_UNKNOWN)
		return false;
	token_relid = get_relname_relid("token", get_namespace_oid("tokenstore", false));
	return true;
}

bool
store_version_ok(void)
{
	char	   *version;

	return find_schema(&version);
}

/* Like store_version_ok, but an error that says what to run. */
void
store_check_version(void)
{
	char	   *version = NULL;

	if (!find_schema(&version))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tokenstore's SQL objects are at version %s, its library at version %s",
						version ? version : "(none)", TOKENSTORE_VERSION),
				 errhint("Run ALTER EXTENSION tokenstore UPDATE in this database.")));
}

/* Forget the plans made for other SQL objects than the installed ones. */
static void
match_plans(void)
{
	int			i;

	if (plans_schema == schema)
		return;
	for (i = 0; i < STMT_COUNT; i++)
	{
		if (plans[i] != NULL)
			(void) SPI_freeplan(plans[i]);
		plans[i] = NULL;
	}
	plans_schema = schema;
}

/*
 * Connect to SPI, with the pinned search path.  Copying the results out
 * detoasts them, which needs a snapshot as old as the statements'; a
 * background worker's transaction has none of its own.
 */
void
store_begin(void)
{
	store_check_version();
	match_plans();
	caller_cxt = CurrentMemoryContext;
	pushed_snapshot = !ActiveSnapshotSet();
	if (pushed_snapshot)
		PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	path_level = NewGUCNestLevel();
	(void) set_config_option("search_path", PINNED_PATH, PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

void
store_end(void)
{
	AtEOXact_GUC(true, path_level);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	if (pushed_snapshot)
		PopActiveSnapshot();
	pushed_snapshot = false;
	caller_cxt = NULL;
}

/* Replace every occurrence of each rewrite's text in buf. */
static void
apply_rewrites(StringInfo buf, const Rewrite *rewrites, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		char	   *found;

		while ((found = strstr(buf->data, rewrites[i].from)) != NULL)
		{
			char	   *rest = pstrdup(found + strlen(rewrites[i].from));

			buf->len = found - buf->data;
			buf->data[buf->len] = '\0';
			appendStringInfo(buf, "%s%s", rewrites[i].to, rest);
			pfree(rest);
		}
	}
}

/* The text of a statement for the installed SQL objects. */
static char *
statement_text(StoreStmt stmt)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, stmt_defs[stmt].sql);
	if (schema == SCHEMA_1_0 || schema == SCHEMA_1_1)
		apply_rewrites(&buf, rewrites_1_1, lengthof(rewrites_1_1));
	if (schema == SCHEMA_1_0)
		apply_rewrites(&buf, rewrites_1_0, lengthof(rewrites_1_0));
	return buf.data;
}

static SPIPlanPtr
store_plan(StoreStmt stmt)
{
	if (plans[stmt] == NULL)
	{
		const StmtDef *def = &stmt_defs[stmt];
		char	   *sql = statement_text(stmt);
		SPIPlanPtr	plan = SPI_prepare(sql, def->nargs, (Oid *) def->argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		plans[stmt] = plan;
		pfree(sql);
	}
	return plans[stmt];
}

/* Run a statement on the latest snapshot; returns SPI_processed. */
static uint64
store_exec(StoreStmt stmt, Datum *values, const char *nulls, long tcount)
{
	Snapshot	crosscheck = IsolationUsesXactSnapshot() ?
		GetTransactionSnapshot() : InvalidSnapshot;
	int			rc;

	rc = SPI_execute_snapshot(store_plan(stmt), values, nulls,
							  GetLatestSnapshot(), crosscheck,
							  false, true, tcount);
	if (rc < 0)
		elog(ERROR, "SPI_execute_snapshot failed for \"%s\": %s",
			 stmt_defs[stmt].sql, SPI_result_code_string(rc));
	return SPI_processed;
}

static Datum
key_datum(const TokenKey *key)
{
	bytea	   *b = palloc(VARHDRSZ + sizeof(key->bytes));

	SET_VARSIZE(b, VARHDRSZ + sizeof(key->bytes));
	memcpy(VARDATA(b), key->bytes, sizeof(key->bytes));
	return PointerGetDatum(b);
}

/* n keys as a bytea[] */
static Datum
keys_datum(const TokenKey *keys, int n)
{
	Datum	   *hashes = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		hashes[i] = key_datum(&keys[i]);
	return PointerGetDatum(construct_array(hashes, n, BYTEAOID, -1,
										   false, TYPALIGN_INT));
}

static Datum
bytes_datum(const uint8 *bytes, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), bytes, len);
	return PointerGetDatum(b);
}

static Datum
column(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
						 col, isnull);
}

static void
key_from_column(int row, int col, TokenKey *key)
{
	bool		isnull;
	bytea	   *b = DatumGetByteaPP(column(row, col, &isnull));

	if (isnull || VARSIZE_ANY_EXHDR(b) != sizeof(key->bytes))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tokenstore.token holds a token_hash that is not 32 bytes")));
	memcpy(key->bytes, VARDATA_ANY(b), sizeof(key->bytes));
}

static char *
text_column(int row, int col)
{
	bool		isnull;
	Datum		d = column(row, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Copy row `row` of the last result (ROW_COLUMNS) into *out, in caller_cxt. */
static void
row_from_result(int row, TokenRow *out)
{
	MemoryContext old = MemoryContextSwitchTo(caller_cxt);
	bool		isnull;
	Datum		d;

	key_from_column(row, 1, &out->key);
	out->user_id = text_column(row, 2);
	out->info = DatumGetJsonbPCopy(column(row, 3, &isnull));
	out->created_at = DatumGetTimestampTz(column(row, 4, &isnull));
	out->last_used_at = DatumGetTimestampTz(column(row, 5, &isnull));
	d = column(row, 6, &isnull);
	out->expires_at = isnull ? DEADLINE_NONE : DatumGetTimestampTz(d);
	d = column(row, 7, &isnull);
	out->idle_us = isnull ? 0 : DatumGetIntervalP(d)->time;
	d = column(row, 8, &isnull);
	out->share_secret = isnull ? NULL : DatumGetByteaPCopy(d);
	d = column(row, 9, &isnull);
	out->rotated = !isnull && DatumGetBool(d);
	out->data = NULL;
	if (SPI_tuptable->tupdesc->natts >= 10)
	{
		d = column(row, 10, &isnull);
		out->data = isnull ? NULL : DatumGetByteaPCopy(d);
	}
	MemoryContextSwitchTo(old);
}

/* The live token with this key, into *row; false if there is none. */
bool
store_find(const TokenKey *key, TimestampTz now, TokenRow *row)
{
	Datum		values[2] = {key_datum(key), TimestampTzGetDatum(now)};

	if (store_exec(STMT_FIND, values, NULL, 1) == 0)
		return false;
	row_from_result(0, row);
	return true;
}

/* Like store_find, with the session's data in row->data. */
bool
store_find_data(const TokenKey *key, TimestampTz now, TokenRow *row)
{
	Datum		values[2] = {key_datum(key), TimestampTzGetDatum(now)};

	if (store_exec(STMT_FIND_DATA, values, NULL, 1) == 0)
		return false;
	row_from_result(0, row);
	return true;
}

/* Like store_find, and lock the row until the transaction ends. */
bool
store_lock_live(const TokenKey *key, TimestampTz now, TokenRow *row)
{
	Datum		values[2] = {key_datum(key), TimestampTzGetDatum(now)};

	if (store_exec(STMT_LOCK_LIVE, values, NULL, 1) == 0)
		return false;
	row_from_result(0, row);
	return true;
}

/*
 * The deadline of the row a statement changed (RETURNING expires_at,
 * idle_timeout, last_used_at): what Redis must expire the key at.
 */
static void
changed_deadline(RowDeadline *out)
{
	bool		isnull;
	Datum		d = column(0, 1, &isnull);
	TimestampTz expires_at = isnull ? DEADLINE_NONE : DatumGetTimestampTz(d);

	d = column(0, 2, &isnull);
	out->idle_us = isnull ? 0 : DatumGetIntervalP(d)->time;
	out->deadline = token_deadline(expires_at, out->idle_us,
								   DatumGetTimestampTz(column(0, 3, &isnull)));
}

static bool
touch(Datum *values, RowDeadline *out)
{
	if (store_exec(STMT_TOUCH, values, NULL, 0) == 0)
		return false;
	changed_deadline(out);
	return true;
}

/*
 * Record a use at `now`; true if it was written, with the row's deadline in
 * *out.  Skipped in read-only transactions (and on a standby).  Under
 * REPEATABLE READ and SERIALIZABLE another session's touch committing
 * between our snapshot and our lock would be a serialization failure;
 * losing that race only means someone else recorded the use, so the touch
 * runs in a subtransaction and such a failure is swallowed.
 */
bool
store_touch(const TokenKey *key, TimestampTz now, RowDeadline *out)
{
	Datum		values[2] = {key_datum(key), TimestampTzGetDatum(now)};
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool written = false;

	if (XactReadOnly)
		return false;
	if (!IsolationUsesXactSnapshot())
		return touch(values, out);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		written = touch(values, out);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode != ERRCODE_T_R_SERIALIZATION_FAILURE)
			ReThrowError(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return written;
}

/* The n rows of the last result, as a List of TokenRow *. */
static List *
rows_from_result(uint64 n)
{
	List	   *rows = NIL;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);
		TokenRow   *row = palloc(sizeof(TokenRow));

		rows = lappend(rows, row);
		MemoryContextSwitchTo(old);
		row_from_result(i, row);
	}
	return rows;
}

/* The user's live tokens, oldest first: a List of TokenRow *. */
List *
store_list(const char *user_id, TimestampTz now)
{
	Datum		values[2] = {CStringGetTextDatum(user_id),
	TimestampTzGetDatum(now)};

	return rows_from_result(store_exec(STMT_LIST, values, NULL, 0));
}

/*
 * Up to limit live tokens whose keys follow *after (all zeros to start), in
 * key order: the pages of a resynchronisation.
 */
List *
store_live_page(const TokenKey *after, TimestampTz now, int limit)
{
	Datum		values[3] = {key_datum(after), TimestampTzGetDatum(now),
	Int32GetDatum(limit)};

	return rows_from_result(store_exec(STMT_LIVE_PAGE, values, NULL, 0));
}

static int
key_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(TokenKey));
}

/* A live token's key and deadline; the key first, for key_cmp. */
typedef struct KeyDeadline
{
	TokenKey	key;
	TimestampTz deadline;
} KeyDeadline;

/*
 * Which of the n keys belong to live tokens (of user, unless NULL): live[i]
 * for keys[i]; and, with deadlines, those tokens' deadlines (deadlines[i],
 * when live[i]).
 */
void
store_live_among(const TokenKey *keys, int n, const char *user,
				 TimestampTz now, bool *live, TimestampTz *deadlines)
{
	Datum		values[3] = {keys_datum(keys, n), TimestampTzGetDatum(now),
	user ? CStringGetTextDatum(user) : (Datum) 0};
	char		nulls[3] = {' ', ' ', user ? ' ' : 'n'};
	uint64		nfound = store_exec(deadlines ? STMT_LIVE_ROWS_AMONG : STMT_LIVE_AMONG,
									values, nulls, 0);
	KeyDeadline *found = palloc(sizeof(KeyDeadline) * Max(nfound, 1));
	uint64		i;

	for (i = 0; i < nfound; i++)
	{
		TokenRow	row;

		if (deadlines == NULL)
		{
			key_from_column(i, 1, &found[i].key);
			continue;
		}
		row_from_result(i, &row);
		found[i].key = row.key;
		found[i].deadline = row_deadline(&row);
	}
	qsort(found, nfound, sizeof(KeyDeadline), key_cmp);
	for (i = 0; i < n; i++)
	{
		KeyDeadline *k = bsearch(&keys[i], found, nfound, sizeof(KeyDeadline),
								 key_cmp);

		live[i] = k != NULL;
		if (deadlines != NULL)
			deadlines[i] = k ? k->deadline : 0;
	}
	pfree(found);
}

/*
 * The first six parameters of an insert or a save: key, user, info, time
 * (created and last used), absolute deadline, idle timeout (in *idle).
 */
static void
row_values(const TokenRow *row, Interval *idle, Datum *values, char *nulls)
{
	memset(nulls, ' ', 6);
	values[0] = key_datum(&row->key);
	values[1] = row->user_id ? CStringGetTextDatum(row->user_id) : (Datum) 0;
	nulls[1] = row->user_id ? ' ' : 'n';
	values[2] = JsonbPGetDatum(row->info);
	values[3] = TimestampTzGetDatum(row->created_at);
	values[4] = TimestampTzGetDatum(row->expires_at);
	nulls[4] = row->expires_at == DEADLINE_NONE ? 'n' : ' ';
	idle->time = row->idle_us;
	values[5] = IntervalPGetDatum(idle);
	nulls[5] = row->idle_us == 0 ? 'n' : ' ';
}

/*
 * Insert a new token, last used at its creation; false if it exists.  A
 * generated token (!given) cannot, and is inserted without the cost of
 * looking for a conflict.
 */
bool
store_insert(const TokenRow *row, bool given)
{
	Interval	idle = {0};
	Datum		values[8];
	char		nulls[8];

	row_values(row, &idle, values, nulls);
	values[6] = PointerGetDatum(row->share_secret);
	nulls[6] = row->share_secret ? ' ' : 'n';
	values[7] = PointerGetDatum(row->data);
	nulls[7] = row->data ? ' ' : 'n';
	return store_exec(given ? STMT_INSERT : STMT_INSERT_NEW, values, nulls, 0) == 1;
}

/*
 * Serialise the per-user rules of token_make: a transaction-level advisory
 * lock on the user, in a key space no SQL-level advisory lock can reach.
 */
void
store_lock_user(const char *user_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, USER_LOCK_SPACE,
						 hash_bytes((const unsigned char *) user_id,
									strlen(user_id)),
						 USER_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

static int
revoked_cmp(const ListCell *a, const ListCell *b)
{
	const RevokedToken *ra = lfirst(a);
	const RevokedToken *rb = lfirst(b);

	return memcmp(ra->key.bytes, rb->key.bytes, sizeof(ra->key.bytes));
}

/*
 * Collect (token_hash, user_id[, live]) results as RevokedToken *s, in key
 * order: RETURNING has none, and events should not depend on scan order.
 */
static List *
revoked_from_result(uint64 n, bool has_live)
{
	List	   *revoked = NIL;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		bool		isnull;
		MemoryContext old;
		RevokedToken *r;

		if (has_live && !DatumGetBool(column(i, 3, &isnull)))
			continue;
		old = MemoryContextSwitchTo(caller_cxt);
		r = palloc(sizeof(RevokedToken));
		key_from_column(i, 1, &r->key);
		r->user_id = text_column(i, 2);
		revoked = lappend(revoked, r);
		MemoryContextSwitchTo(old);
	}
	list_sort(revoked, revoked_cmp);
	return revoked;
}

/*
 * Revoke the user's live tokens but the `keep` most recently used; returns
 * the revoked ones.
 */
List *
store_revoke_lru(const char *user_id, TimestampTz now, int64 keep)
{
	Datum		values[3] = {CStringGetTextDatum(user_id),
		TimestampTzGetDatum(now), Int64GetDatum(keep)};

	return revoked_from_result(store_exec(STMT_REVOKE_LRU, values, NULL, 0),
							   false);
}

/* The user's newest live share-mode token, sealed; false if none. */
bool
store_find_share(const char *user_id, TimestampTz now, TokenKey *key,
				 bytea **sealed)
{
	Datum		values[2] = {CStringGetTextDatum(user_id),
	TimestampTzGetDatum(now)};
	bool		isnull;
	MemoryContext old;

	if (store_exec(STMT_FIND_SHARE, values, NULL, 1) == 0)
		return false;
	key_from_column(0, 1, key);
	old = MemoryContextSwitchTo(caller_cxt);
	*sealed = DatumGetByteaPCopy(column(0, 2, &isnull));
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * The key that seals share-mode tokens when it is not the key file's: the
 * table's, under the SQL objects of 1.0; NULL otherwise.
 */
bytea *
store_seal_secret(void)
{
	bool		isnull;
	Datum		d;
	bytea	   *secret;
	MemoryContext old;

	if (schema != SCHEMA_1_0)
		return NULL;
	if (store_exec(STMT_SECRET_1_0, NULL, NULL, 2) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tokenstore.secret must hold exactly one row"),
				 errhint("Run ALTER EXTENSION tokenstore UPDATE: the sealing key then moves to a file.")));
	d = column(0, 1, &isnull);
	old = MemoryContextSwitchTo(caller_cxt);
	secret = DatumGetByteaPCopy(d);
	MemoryContextSwitchTo(old);
	return secret;
}

/*
 * Set a live token's absolute deadline (DEADLINE_NONE: none), and its idle
 * timeout when idle_us is not NULL (0: none), and record a use, the row's
 * deadline then in *out; false if it is dead, or in the grace period of a
 * rotation.
 */
bool
store_refresh(const TokenKey *key, TimestampTz now, TimestampTz expires_at,
			  const int64 *idle_us, RowDeadline *out)
{
	Interval	idle = {.time = idle_us ? *idle_us : 0};
	Datum		values[5] = {key_datum(key), TimestampTzGetDatum(now),
		TimestampTzGetDatum(expires_at), IntervalPGetDatum(&idle),
	BoolGetDatum(idle_us != NULL)};
	char		nulls[5] = {' ', ' ', expires_at == DEADLINE_NONE ? 'n' : ' ',
	idle.time == 0 ? 'n' : ' ', ' '};

	if (store_exec(STMT_REFRESH, values, nulls, 0) == 0)
		return false;
	changed_deadline(out);
	return true;
}

/* Replace a live token's info; false if dead. */
bool
store_set_info(const TokenKey *key, TimestampTz now, Jsonb *info)
{
	Datum		values[3] = {key_datum(key), TimestampTzGetDatum(now),
	JsonbPGetDatum(info)};

	return store_exec(STMT_SET_INFO, values, NULL, 0) > 0;
}

/*
 * A rotation replaced the token: it dies at `deadline` at the latest, and
 * nothing moves that deadline later any more.
 */
void
store_retire(const TokenKey *key, TimestampTz now, TimestampTz deadline)
{
	Datum		values[3] = {key_datum(key), TimestampTzGetDatum(now),
	TimestampTzGetDatum(deadline)};

	store_exec(STMT_RETIRE, values, NULL, 0);
}

/* The one revoked live token of a delete, or NULL. */
static RevokedToken *
single_revoked(uint64 n)
{
	List	   *revoked = revoked_from_result(n, true);

	return revoked == NIL ? NULL : linitial(revoked);
}

/* Delete a token; returns it if it was live, NULL otherwise. */
RevokedToken *
store_delete(const TokenKey *key, TimestampTz now)
{
	Datum		values[2] = {key_datum(key), TimestampTzGetDatum(now)};

	return single_revoked(store_exec(STMT_DELETE, values, NULL, 0));
}

/* Delete the token whose key starts with the token_id's bytes. */
RevokedToken *
store_delete_id(const uint8 *id_bytes, TimestampTz now)
{
	uint8		low[PG_SHA256_DIGEST_LENGTH];
	uint8		high[PG_SHA256_DIGEST_LENGTH];
	Datum		values[3];

	memset(low, 0x00, sizeof(low));
	memset(high, 0xFF, sizeof(high));
	memcpy(low, id_bytes, TOKEN_ID_BYTES);
	memcpy(high, id_bytes, TOKEN_ID_BYTES);
	values[0] = bytes_datum(low, sizeof(low));
	values[1] = bytes_datum(high, sizeof(high));
	values[2] = TimestampTzGetDatum(now);
	return single_revoked(store_exec(STMT_DELETE_ID, values, NULL, 0));
}

/* Delete all the user's tokens but `keep` (if not NULL); returns the live. */
List *
store_delete_user(const char *user_id, const TokenKey *keep, TimestampTz now)
{
	Datum		values[3] = {CStringGetTextDatum(user_id),
		keep ? key_datum(keep) : (Datum) 0, TimestampTzGetDatum(now)};
	char		nulls[3] = {' ', keep ? ' ' : 'n', ' '};

	return revoked_from_result(store_exec(STMT_DELETE_USER, values, nulls, 0),
							   true);
}

/*
 * Save a session (see STMT_SAVE): *created tells whether a new one was made
 * (no live token had the key).  False when the key is a live token of
 * another user, or one a rotation replaced.
 */
bool
store_save(const TokenRow *row, bool *created)
{
	Interval	idle = {0};
	Datum		values[7];
	char		nulls[7];
	bool		isnull;

	row_values(row, &idle, values, nulls);
	values[6] = PointerGetDatum(row->data);
	nulls[6] = ' ';

	if (store_exec(STMT_SAVE, values, nulls, 0) == 0)
		return false;
	*created = DatumGetBool(column(0, 1, &isnull));
	return true;
}

/* Every live session, oldest first: a List of TokenRow * with their data. */
List *
store_sessions(TimestampTz now)
{
	Datum		values[1] = {TimestampTzGetDatum(now)};

	return rows_from_result(store_exec(STMT_SESSIONS, values, NULL, 0));
}

/* Delete every session, or every anonymous one; returns the live ones. */
List *
store_delete_sessions(TimestampTz now, bool anonymous_only)
{
	Datum		values[2] = {TimestampTzGetDatum(now), BoolGetDatum(anonymous_only)};

	return revoked_from_result(store_exec(STMT_DELETE_SESSIONS, values, NULL, 0),
							   true);
}

/* A sweep statement of the current SQL objects: how many went; *more as below. */
static int64
sweep_current(StoreStmt stmt, Datum *values, bool *more)
{
	int64		gone;
	int64		later;
	bool		isnull;

	(void) store_exec(stmt, values, NULL, 0);
	gone = DatumGetInt64(column(0, 1, &isnull));
	later = DatumGetInt64(column(0, 2, &isnull));
	*more = gone + later > 0;
	return gone;
}

/*
 * Look at up to `batch` rows whose deadline may have passed, oldest first
 * along the sweep's index (1.0 and 1.1: up to `batch` of each kind of
 * deadline), skipping rows other transactions hold: delete the dead ones;
 * returns how many went, and in *more whether it looked at any (more may
 * follow).
 */
int64
store_sweep(TimestampTz now, int batch, bool *more)
{
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(batch)};
	int64		gone;
	int64		later;

	if (schema == SCHEMA_CURRENT)
		return sweep_current(STMT_SWEEP, values, more);
	later = (int64) store_exec(STMT_SWEEP_IDLE_LATER, values, NULL, 0);
	gone = (int64) (store_exec(STMT_SWEEP_TTL, values, NULL, 0) +
					store_exec(STMT_SWEEP_IDLE, values, NULL, 0));
	*more = gone + later > 0;
	return gone;
}

/* The same, of the n rows of store_sweep_keys's keys only. */
int64
store_sweep_among(TimestampTz now, const TokenKey *keys, int n, bool *more)
{
	Datum		values[3] = {TimestampTzGetDatum(now), Int32GetDatum(n),
	keys_datum(keys, n)};

	return sweep_current(STMT_SWEEP_AMONG, values, more);
}

/*
 * The keys of the rows a sweep batch would look at first, for sweeping them
 * a few at a time (*n of them, in the caller's memory); NULL under the SQL
 * objects of 1.0 and 1.1, whose sweep only ever runs whole.
 */
TokenKey *
store_sweep_keys(TimestampTz now, int batch, int *n)
{
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(batch)};
	TokenKey   *keys;
	uint64		nrows;
	uint64		i;

	if (schema != SCHEMA_CURRENT)
		return NULL;
	nrows = store_exec(STMT_SWEEP_KEYS, values, NULL, 0);
	keys = MemoryContextAlloc(caller_cxt, sizeof(TokenKey) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
		key_from_column(i, 1, &keys[i]);
	*n = (int) nrows;
	return keys;
}

/* The dirty uses' hashes and times as two arrays, for the flush. */
static void
flush_arrays(const CacheDirty *dirty, const int *which, int n, Datum *values)
{
	Datum	   *hashes = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *uses = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
	{
		hashes[i] = key_datum(&dirty[which[i]].key);
		uses[i] = TimestampTzGetDatum(dirty[which[i]].last_used);
	}
	values[0] = PointerGetDatum(construct_array(hashes, n, BYTEAOID, -1,
												false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(uses, n, TIMESTAMPTZOID,
												sizeof(TimestampTz),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static const CacheDirty *sort_dirty;

static int
dirty_index_cmp(const void *a, const void *b)
{
	return memcmp(sort_dirty[*(const int *) a].key.bytes,
				  sort_dirty[*(const int *) b].key.bytes, sizeof(TokenKey));
}

/* The index in dirty of the key in column 1 of result row `row`. */
static int
result_index(const CacheDirty *dirty, const int *sorted, int n, int row)
{
	int			lo = 0;
	int			hi = n - 1;
	TokenKey	key;

	key_from_column(row, 1, &key);
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		int			cmp = memcmp(key.bytes, dirty[sorted[mid]].key.bytes,
								 sizeof(key.bytes));

		if (cmp == 0)
			return sorted[mid];
		if (cmp < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	elog(ERROR, "tokenstore flush: a row came back that was not asked for");
	return -1;					/* keep the compiler quiet */
}

/*
 * Write last uses collected from the cache, where the table lags them by
 * more than `resolution` microseconds (0: by anything): a row only moves
 * forward, and one that another transaction holds is skipped (FLUSH_LATER:
 * left dirty, as a use the table lags by less).  Tells for each use what
 * happened, with the deadline of the rows written (read back from the
 * row, so that a change committed meanwhile is not undone in Redis).
 * Returns how many rows moved.
 */
int64
store_flush(const CacheDirty *dirty, int n, int64 resolution,
			FlushResult *results)
{
	int		   *sorted = palloc(sizeof(int) * Max(n, 1));
	int		   *lagging = palloc(sizeof(int) * Max(n, 1));
	Interval	span = {0};
	Datum		values[3];
	uint64		nrows;
	uint64		nlagging;
	uint64		written;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		sorted[i] = i;
		results[i].outcome = FLUSH_CLEAN;
	}
	sort_dirty = dirty;
	qsort(sorted, n, sizeof(int), dirty_index_cmp);

	flush_arrays(dirty, sorted, n, values);
	span.time = resolution;
	values[2] = IntervalPGetDatum(&span);
	nlagging = 0;
	nrows = store_exec(STMT_FLUSH_LAGGING, values, NULL, 0);
	for (i = 0; i < nrows; i++)
	{
		bool		isnull;
		int			index = result_index(dirty, sorted, n, i);

		results[index].outcome = FLUSH_LATER;
		if (DatumGetBool(column(i, 2, &isnull)))
			lagging[nlagging++] = index;
	}
	if (nlagging == 0)
		return 0;

	flush_arrays(dirty, lagging, nlagging, values);
	written = store_exec(STMT_FLUSH, values, NULL, 0);
	for (i = 0; i < written; i++)
	{
		FlushResult *r = &results[result_index(dirty, sorted, n, i)];
		bool		isnull;
		Datum		d;
		TimestampTz expires_at;
		int64		idle_us;

		d = column(i, 2, &isnull);
		expires_at = isnull ? DEADLINE_NONE : DatumGetTimestampTz(d);
		d = column(i, 3, &isnull);
		idle_us = isnull ? 0 : DatumGetIntervalP(d)->time;
		r->outcome = FLUSH_WRITTEN;
		r->idle = idle_us > 0;
		r->deadline = token_deadline(expires_at, idle_us,
									 DatumGetTimestampTz(column(i, 4, &isnull)));
	}
	return (int64) written;
}
