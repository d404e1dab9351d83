/*-------------------------------------------------------------------------
 *
 * sender.c
 *	  A hot standby's sender: sends the uses its checks recorded to the
 *	  primary, and keeps its cache within bounds.
 *
 * Checks on a standby record uses in its cache, as on a primary (dirty
 * entries).  Every tokenstore.flush_interval the sender collects them and,
 * per database, connects to the primary over libpq (tokenstore.
 * primary_conninfo, or else the standby's primary_conninfo, with the
 * database's name) and calls tokenstore_internal.token_record_uses; what
 * the primary took is marked clean.  When the primary cannot be reached the
 * uses stay dirty in the cache (so they are bounded by it) and go with a
 * later round; eviction never drops a dirty entry.  No check waits for any
 * of this.  The sender runs only during recovery: after a promotion it
 * exits, and the launcher's workers write what is still dirty to the
 * promoted server's own table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "cache.h"
#include "commands/dbcommands.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "registry.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* uses collected at once, and batches per round at most */
#define SEND_BATCH		100000
#define SEND_ROUNDS		10

PGDLLEXPORT void tokenstore_sender_main(Datum arg);

/* the last round failed: say so once, not every round */
static bool failing = false;

static int
by_database(const void *a, const void *b)
{
	Oid			x = ((const CacheDirty *) a)->dbid;
	Oid			y = ((const CacheDirty *) b)->dbid;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* A time as text that any server reads alike, whatever its DateStyle. */
static void
append_utc(StringInfo buf, TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	appendStringInfo(buf, "\"%04d-%02d-%02d %02d:%02d:%02d.%06d+00\"",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/* The two array parameters of token_record_uses, as text. */
static void
uses_arrays(const CacheDirty *uses, int n, StringInfo hashes,
			StringInfo times)
{
	int			i;

	appendStringInfoChar(hashes, '{');
	appendStringInfoChar(times, '{');
	for (i = 0; i < n; i++)
	{
		if (i > 0)
		{
			appendStringInfoChar(hashes, ',');
			appendStringInfoChar(times, ',');
		}
		appendStringInfo(hashes, "\"\\\\x%s\"",
						 hex_text(uses[i].key.bytes, sizeof(uses[i].key.bytes)));
		append_utc(times, uses[i].last_used);
	}
	appendStringInfoChar(hashes, '}');
	appendStringInfoChar(times, '}');
}

static const char *
primary_conninfo(void)
{
	if (tokenstore_primary_conninfo[0] != '\0')
		return tokenstore_primary_conninfo;
	return PrimaryConnInfo ? PrimaryConnInfo : "";
}

/* Failures are logged when they start and when they end. */
static bool
sent(PGconn *conn, PGresult *res, const char *datname)
{
	bool		ok = PQstatus(conn) == CONNECTION_OK && res != NULL &&
		PQresultStatus(res) == PGRES_TUPLES_OK;

	if (!ok && !failing && !ShutdownRequestPending)
		ereport(LOG,
				(errmsg("tokenstore could not send the uses of database \"%s\" to the primary: %.512s",
						datname, PQerrorMessage(conn)),
				 errhint("Set tokenstore.primary_conninfo, or primary_conninfo, to a connection that may run tokenstore_internal.token_record_uses.")));
	else if (ok && failing)
		ereport(LOG,
				(errmsg("tokenstore sends the uses of this standby to the primary again")));
	failing = !ok;
	return ok;
}

/*
 * Run the statement and wait for its result on the latch, so that a
 * primary that does not answer never holds up the standby's shutdown;
 * NULL if the statement could not be sent or a shutdown came first.
 */
static PGresult *
exec_interruptible(PGconn *conn, const char *sql, const char *const *params)
{
	PGresult   *last = NULL;
	PGresult   *res;

	if (!PQsendQueryParams(conn, sql, 2, NULL, params, NULL, NULL, 0))
		return NULL;
	for (;;)
	{
		while (PQisBusy(conn))
		{
			int			rc = WaitLatchOrSocket(MyLatch,
											   WL_LATCH_SET | WL_SOCKET_READABLE |
											   WL_EXIT_ON_PM_DEATH,
											   PQsocket(conn), -1L,
											   PG_WAIT_EXTENSION);

			ResetLatch(MyLatch);
			if (ShutdownRequestPending ||
				((rc & WL_SOCKET_READABLE) && !PQconsumeInput(conn)))
			{
				PQclear(last);
				return NULL;
			}
		}
		res = PQgetResult(conn);
		if (res == NULL)
			return last;
		PQclear(last);
		last = res;
	}
}

/* Send one database's uses; whether the primary took them. */
static bool
send_database(const char *datname, const CacheDirty *uses, int n)
{
	const char *keywords[] = {"connect_timeout", "dbname", "dbname",
	"application_name", NULL};
	const char *values[] = {"10", primary_conninfo(), datname,
	"tokenstore standby sender", NULL};
	StringInfoData hashes;
	StringInfoData times;
	const char *params[2];
	PGconn	   *conn;
	PGresult   *res = NULL;
	bool		ok;

	initStringInfo(&hashes);
	initStringInfo(&times);
	uses_arrays(uses, n, &hashes, &times);
	params[0] = hashes.data;
	params[1] = times.data;
	conn = PQconnectdbParams(keywords, values, true);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (PQstatus(conn) == CONNECTION_OK)
		res = exec_interruptible(conn,
								 "SELECT tokenstore_internal.token_record_uses($1::pg_catalog.bytea[], $2::pg_catalog.timestamptz[])",
								 params);
	ok = sent(conn, res, datname);
	PQclear(res);
	PQfinish(conn);
	pfree(hashes.data);
	pfree(times.data);
	return ok;
}

/*
 * The uses of one database (sorted together): sent, then marked clean.
 * False if the primary did not take them.
 */
static bool
send_uses_of(const CacheDirty *uses, int n)
{
	RegistryRun run = {0};
	char	   *datname;
	int			i;

	StartTransactionCommand();
	datname = get_database_name(uses[0].dbid);
	CommitTransactionCommand();
	if (datname == NULL)
		return true;			/* dropped: its entries go with the purge */
	run.started = GetCurrentTimestamp();
	if (!send_database(datname, uses, n))
		return false;
	for (i = 0; i < n; i++)
		cache_mark_clean(uses[i].dbid, &uses[i].key, uses[i].observed);
	run.flushed = n;
	registry_add_candidate(uses[0].dbid);
	registry_record_run(uses[0].dbid, &run);
	return true;
}

/*
 * One round: every database's dirty uses, in batches; it ends at the first
 * failure (the primary is away: the rest waits for the next round).
 */
static void
send_round(void)
{
	CacheDirty *uses = palloc(sizeof(CacheDirty) * SEND_BATCH);
	int			round;
	int			n = SEND_BATCH;

	for (round = 0; round < SEND_ROUNDS && n == SEND_BATCH; round++)
	{
		int			start = 0;
		int			i;

		n = cache_collect_dirty(InvalidOid, uses, SEND_BATCH);
		qsort(uses, n, sizeof(CacheDirty), by_database);
		for (i = 1; i <= n; i++)
		{
			if (i < n && uses[i].dbid == uses[start].dbid)
				continue;
			if (!send_uses_of(&uses[start], i - start))
				return;
			start = i;
		}
	}
}

void
tokenstore_sender_main(Datum arg)
{
	MemoryContext round_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	/* a primary needs no sender: exit for good */
	if (!RecoveryInProgress())
		proc_exit(0);
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	round_cxt = AllocSetContextCreate(TopMemoryContext, "tokenstore sender",
									  ALLOCSET_DEFAULT_SIZES);

	while (!ShutdownRequestPending && RecoveryInProgress())
	{
		if (cache_enabled())
		{
			MemoryContext old = MemoryContextSwitchTo(round_cxt);

			cache_maintain(GetCurrentTimestamp());
			send_round();
			MemoryContextSwitchTo(old);
			MemoryContextReset(round_cxt);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 tokenstore_flush_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	proc_exit(0);
}
