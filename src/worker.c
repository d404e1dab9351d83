/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background: a launcher, and short-lived per-database workers that
 *	  flush last uses from the cache to the table, sweep expired rows and
 *	  write a database's tokens to Redis when the mirror needs it.
 *
 * See src/README.md for the states.  In short: the launcher connects to no
 * database; it drops expired and least recently used entries from the cache
 * and, every tokenstore.flush_interval, runs a worker in each database the
 * registry knows.  A worker connects, shares its round between flushing and
 * sweeping (each gets batches in turn, the round lasts at most half a flush
 * interval, and it rests as long as each batch took), resynchronises Redis
 * if the mirror needs it, and exits.  No worker stays in a database, so
 * CREATE DATABASE, ALTER DATABASE RENAME and plain DROP DATABASE never find
 * one in their way for more than a moment.
 *
 * A worker never waits for an application: its statements skip rows other
 * transactions hold (they are taken the next round), and a lock timeout
 * bounds any other wait (a TRUNCATE, an ALTER TABLE).  One database whose
 * worker is slow does not hold up the others: once a worker has run for a
 * flush interval, the launcher starts the next database's beside it.  A
 * worker runs with its own settings (not read-only, READ COMMITTED, no
 * synchronous commit), whatever the server's defaults are, as autovacuum
 * does; a step that fails is logged and the round goes on with the next,
 * and a flush or sweep batch that fails is taken apart, so that one bad row
 * holds up none of the others.
 *
 * At a clean shutdown the launcher writes the dirty last uses to a file,
 * which the first workers after the next start apply; after a crash at most
 * one flush interval of last uses is lost.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "cache.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "fanout.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "redis.h"
#include "registry.h"
#include "standby.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "store.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "worker.h"
#include "xact.h"

#define FLUSH_BATCH			10000
/* dirty uses a round collects, at most (the rest wait for the next round) */
#define FLUSH_ROUND_MAX		1000000
#define SWEEP_BATCH			1000
/* workers in flight: the one due, and one beside a slow one */
#define MAX_RUNNING			2
#define DUMP_FILE			"tokenstore.last_used"
#define DUMP_TEMP			DUMP_FILE ".tmp"
#define DUMP_MAGIC			0x746B6C75	/* "tklu" */
#define DUMP_VERSION		1

/* The dump file's header: refused when it does not match. */
typedef struct DumpHeader
{
	uint32		magic;
	uint32		version;
	uint32		record_size;
} DumpHeader;

/* A dumped last use: the file's record. */
typedef struct DumpRecord
{
	Oid			dbid;
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	TimestampTz last_used;
} DumpRecord;

/* A worker the launcher started. */
typedef struct Running
{
	Oid			dbid;
	BackgroundWorkerHandle *handle;
	TimestampTz started;
} Running;

PGDLLEXPORT void tokenstore_launcher_main(Datum arg);
PGDLLEXPORT void tokenstore_worker_main(Datum arg);

static TimestampTz
ms_from(TimestampTz t, int64 ms)
{
	return t + ms * 1000;
}

/* ---- a batch that fails, taken apart ---- */

/* Token ids a round's line of log names, at most, for each kind of step. */
#define CULPRITS_NAMED		5
/* Bytes of a culprit's error message the log repeats, at most. */
#define CULPRIT_ERROR_MAX	200

/*
 * The rows whose flush or sweep failed in a round (or in applying the
 * shutdown dump), said in one line of log at its end: one bad row must not
 * fill the log once per batch.
 */
typedef struct Culprits
{
	const char *what;			/* "flushing the last use", ... */
	const char *left;			/* what became of it, for the detail */
	MemoryContext cxt;			/* where error lives */
	int			named;
	TokenKey	keys[CULPRITS_NAMED];
	bool		more;			/* others than those named failed too */
	int			sqlerrcode;		/* the first one's error */
	char	   *error;
} Culprits;

/*
 * A batch of items, each a token's row: run(arg, lo, n) does items [lo,
 * lo + n) (in a subtransaction), leave(arg, lo, n) marks items left
 * undone (NULL: nothing to mark), key(arg, i) is item i's token.
 */
typedef struct Batch
{
	void		(*run) (void *arg, int lo, int n);
	void		(*leave) (void *arg, int lo, int n);
	const TokenKey *(*key) (void *arg, int i);
	void	   *arg;
	TimestampTz until;			/* no more tries after this */
	Culprits   *bad;
} Batch;

/*
 * Run items [lo, lo + n) of a batch in a subtransaction: true if it
 * committed; else it was rolled back and *edata says why.  A cancel or a
 * lock timeout is not caught but ends the step: no row of the batch causes
 * it (the statements skip the rows others hold), and trying the rows apart
 * would wait once per try.
 */
static bool
run_subxact(Batch *b, int lo, int n, ErrorData **edata)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile caught = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		b->run(b->arg, lo, n);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		caught = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (caught != NULL && (caught->sqlerrcode == ERRCODE_QUERY_CANCELED ||
						   caught->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE))
		ReThrowError(caught);
	*edata = caught;
	return caught == NULL;
}

/* Note a row that failed alone: its token id, and the first one's error. */
static void
note_culprit(Culprits *bad, const TokenKey *key, const ErrorData *edata)
{
	const char *message = edata->message ? edata->message : "";
	int			len;
	int			i;

	for (i = 0; i < bad->named; i++)
		if (memcmp(bad->keys[i].bytes, key->bytes, sizeof(key->bytes)) == 0)
			return;
	if (bad->named == CULPRITS_NAMED)
	{
		bad->more = true;
		return;
	}
	if (bad->named == 0)
	{
		len = pg_mbcliplen(message, strlen(message), CULPRIT_ERROR_MAX);
		bad->error = MemoryContextAlloc(bad->cxt, len + 1);
		memcpy(bad->error, message, len);
		bad->error[len] = '\0';
		bad->sqlerrcode = edata->sqlerrcode;
	}
	bad->keys[bad->named++] = *key;
}

/*
 * Items [lo, lo + n) of a batch, `failed` the error of a try already made
 * (NULL: not tried yet).  A range that fails is halved until what fails
 * stands alone, so that everything else goes through; an item that fails
 * alone is a culprit, noted and left undone, and so are the ranges not yet
 * tried when the time is up or more culprits were found than a log line
 * names (a cause that is not one row's must not make a round try every
 * row).  Each culprit among n items costs about 2 log2(n)
 * statements.
 */
static void
apart_range(Batch *b, int lo, int n, ErrorData *failed)
{
	if (failed == NULL)
	{
		if (n == 0)
			return;
		if (ShutdownRequestPending || GetCurrentTimestamp() >= b->until ||
			b->bad->more)
		{
			if (b->leave)
				b->leave(b->arg, lo, n);
			return;
		}
		if (run_subxact(b, lo, n, &failed))
			return;
	}
	if (n == 1)
	{
		note_culprit(b->bad, b->key(b->arg, lo), failed);
		if (b->leave)
			b->leave(b->arg, lo, 1);
	}
	else
	{
		apart_range(b, lo, n / 2, NULL);
		apart_range(b, lo + n / 2, n - n / 2, NULL);
	}
	FreeErrorData(failed);
}

/*
 * Items [lo, lo + n) of a batch, whole (one subtransaction around the usual
 * statements), and apart only if that fails.
 */
static void
run_batch(Batch *b, int lo, int n)
{
	ErrorData  *failed;

	if (!run_subxact(b, lo, n, &failed))
		apart_range(b, lo, n, failed);
}

/* One line of log for the culprits noted, if any; then none are. */
static void
report_culprits(Culprits *bad)
{
	StringInfoData others;
	int			i;

	if (bad->named == 0)
		return;
	initStringInfo(&others);
	for (i = 1; i < bad->named; i++)
		appendStringInfo(&others, "%s%s", i > 1 ? ", " : "",
						 token_id_text(&bad->keys[i]));
	ereport(LOG,
			(errcode(bad->sqlerrcode),
			 errmsg("tokenstore worker: %s of token_id %s failed: %s",
					bad->what, token_id_text(&bad->keys[0]), bad->error),
			 bad->named == 1 ? errdetail("%s", bad->left) :
			 errdetail("%s Those of token_ids %s%s failed too.", bad->left,
					   others.data, bad->more ? " and others" : "")));
	pfree(others.data);
	pfree(bad->error);
	bad->named = 0;
	bad->more = false;
}

/* ---- flushing ---- */

/* Dirty uses, with what their flush did, as a batch. */
typedef struct FlushBatch
{
	CacheDirty *dirty;
	FlushResult *results;
	int64		resolution;
	int64		written;
} FlushBatch;

static void
flush_run(void *arg, int lo, int n)
{
	FlushBatch *f = arg;

	f->written += store_flush(f->dirty + lo, n, f->resolution, f->results + lo);
}

/* A use whose flush failed stays dirty, as one the table lags by less. */
static void
flush_leave(void *arg, int lo, int n)
{
	FlushBatch *f = arg;
	int			i;

	for (i = lo; i < lo + n; i++)
		f->results[i].outcome = FLUSH_LATER;
}

static const TokenKey *
flush_key(void *arg, int i)
{
	return &((FlushBatch *) arg)->dirty[i].key;
}

/*
 * Write the collected dirty uses to the table, in the current transaction,
 * and queue what their commit does: the entries written or not needing it
 * become clean, Redis learns the moved deadlines.  A row another
 * transaction holds is skipped and stays dirty.  With `bad`, a batch that
 * fails is taken apart (until `until`) and its culprits noted there; without,
 * an error is the caller's.  Returns rows written.
 */
static int64
flush_collected(CacheDirty *dirty, int n, int64 resolution,
				Culprits *bad, TimestampTz until)
{
	FlushBatch	f = {dirty, palloc(sizeof(FlushResult) * Max(n, 1)), resolution, 0};
	Batch		b = {flush_run, flush_leave, flush_key, &f, until, bad};
	int			done;
	int			i;

	store_begin();
	for (done = 0; done < n; done += FLUSH_BATCH)
	{
		int			len = Min(FLUSH_BATCH, n - done);

		if (bad != NULL)
			run_batch(&b, done, len);
		else
			flush_run(&f, done, len);
	}
	store_end();
	for (i = 0; i < n; i++)
	{
		if (f.results[i].outcome == FLUSH_LATER)
			continue;
		xact_queue_clean(&dirty[i].key, dirty[i].observed);
		if (f.results[i].outcome == FLUSH_WRITTEN && f.results[i].idle)
			xact_queue_expire(&dirty[i].key, f.results[i].deadline);
	}
	pfree(f.results);
	return f.written;
}

/* Room for the dirty uses of one round (or one token_flush call). */
static CacheDirty *
dirty_array(int *max)
{
	*max = Min(FLUSH_ROUND_MAX, tokenstore_max_cached_tokens);
	return MemoryContextAllocHuge(CurrentMemoryContext,
								  sizeof(CacheDirty) * (Size) Max(*max, 1));
}

/*
 * token_flush(): the dirty uses of this database (a million at most), now,
 * whatever the resolution, in the caller's transaction.  Returns rows
 * written.
 */
int64
worker_flush_all(void)
{
	CacheDirty *dirty;
	int			max;
	int64		written;

	if (!cache_enabled())
		return 0;
	dirty = dirty_array(&max);
	written = flush_collected(dirty, cache_collect_dirty(MyDatabaseId, dirty, max),
							  0, NULL, 0);
	pfree(dirty);
	return written;
}

/* ---- the per-database worker ---- */

/*
 * The worker's own settings, whatever the server's defaults: it must be
 * able to write, must not inherit a serializable default, must not wait
 * on locks for long, and has no use for synchronous commit (a lost flush is
 * written again, a lost sweep swept again).
 */
static void
worker_settings(void)
{
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_deferrable", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("session_replication_role", "origin", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "1s", PGC_SUSET, PGC_S_OVERRIDE);
}

static void
begin_step(const char *what)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, what);
}

static void
end_step(void)
{
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

typedef int64 (*StepFunc) (void *arg);

/*
 * Run one step in a transaction of its own; a step that fails is logged
 * and rolled back, and the round goes on (-1 is returned).
 */
static int64
run_step(const char *what, StepFunc step, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int64 result = -1;

	begin_step(what);
	PG_TRY();
	{
		result = step(arg);
		end_step();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("tokenstore worker: %s failed: %s", what, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 edata->hint ? errhint("%s", edata->hint) : 0));
		FreeErrorData(edata);
		result = -1;
	}
	PG_END_TRY();
	return result;
}

static int64
extension_step(void *arg)
{
	return OidIsValid(get_extension_oid("tokenstore", true)) ? 1 : 0;
}

/* Whether this library serves the database's SQL objects; said once if not. */
static int64
version_step(void *arg)
{
	if (store_version_ok())
		return 1;
	if (registry_first_version_error(MyDatabaseId))
		ereport(LOG,
				(errmsg("tokenstore does not flush, sweep or mirror database \"%s\" until ALTER EXTENSION tokenstore UPDATE is run there",
						get_database_name(MyDatabaseId))));
	return 0;
}

typedef struct FlushStep
{
	CacheDirty *dirty;
	int			n;
	TimestampTz until;
	Culprits   *bad;
} FlushStep;

static int64
flush_step(void *arg)
{
	FlushStep  *f = arg;

	return flush_collected(f->dirty, f->n,
						   (int64) tokenstore_last_used_resolution * 1000,
						   f->bad, f->until);
}

/* The due rows a sweep batch looks at, as a batch. */
typedef struct SweepBatch
{
	TimestampTz now;
	TokenKey   *keys;			/* NULL: whatever rows are due */
	int64		gone;
	bool		more;			/* it looked at some: more may follow */
} SweepBatch;

static void
sweep_run(void *arg, int lo, int n)
{
	SweepBatch *s = arg;
	bool		looked;

	if (s->keys == NULL)
		s->gone += store_sweep(s->now, n, &looked);
	else
		s->gone += store_sweep_among(s->now, s->keys + lo, n, &looked);
	s->more |= looked;
}

static const TokenKey *
sweep_key(void *arg, int i)
{
	return &((SweepBatch *) arg)->keys[i];
}

typedef struct SweepStep
{
	TimestampTz until;
	Culprits   *bad;
	bool		more;			/* out: more may follow */
} SweepStep;

/*
 * One sweep batch.  If it fails, the rows it would look at are swept apart
 * (an expired row whose sweep keeps failing stays, and is looked at first
 * by every batch after: those each fail and are taken apart too).
 */
static int64
sweep_step(void *arg)
{
	SweepStep  *step = arg;
	SweepBatch	s = {GetCurrentTimestamp(), NULL, 0, false};
	Batch		b = {sweep_run, NULL, sweep_key, &s, step->until, step->bad};
	ErrorData  *failed;
	int			n = 0;

	store_begin();
	if (!run_subxact(&b, 0, SWEEP_BATCH, &failed))
	{
		s.keys = store_sweep_keys(s.now, SWEEP_BATCH, &n);
		/* no rows to take apart: the failure was not theirs */
		if (s.keys == NULL || n == 0)
			ReThrowError(failed);
		FreeErrorData(failed);
		apart_range(&b, 0, n, NULL);
	}
	store_end();
	step->more = s.more;
	return s.gone;
}

/* The last uses a clean shutdown left for this database. */
static int64
dump_step(void *arg)
{
	FILE	   *file = AllocateFile(DUMP_FILE, PG_BINARY_R);
	DumpHeader	header;
	DumpRecord	rec;
	Culprits	bad = {"applying the saved last use", "It is not applied.",
	CurrentMemoryContext};
	FlushBatch	f = {NULL, NULL, 0, 0};
	Batch		b = {flush_run, NULL, flush_key, &f, DT_NOEND, &bad};
	int			n = 0;

	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read \"%s\": %m", DUMP_FILE)));
		return 0;
	}
	if (fread(&header, sizeof(header), 1, file) != 1 ||
		header.magic != DUMP_MAGIC || header.version != DUMP_VERSION ||
		header.record_size != sizeof(DumpRecord))
	{
		ereport(LOG,
				(errmsg("tokenstore ignores \"%s\": it was not written by this version of tokenstore",
						DUMP_FILE)));
		(void) FreeFile(file);
		return 0;
	}
	f.dirty = palloc(sizeof(CacheDirty) * FLUSH_BATCH);
	f.results = palloc(sizeof(FlushResult) * FLUSH_BATCH);
	store_begin();
	while (fread(&rec, sizeof(rec), 1, file) == 1)
	{
		if (rec.dbid != MyDatabaseId)
			continue;
		memcpy(f.dirty[n].key.bytes, rec.hash, sizeof(rec.hash));
		f.dirty[n].last_used = rec.last_used;
		if (++n == FLUSH_BATCH)
		{
			run_batch(&b, 0, n);
			n = 0;
		}
	}
	if (n > 0)
		run_batch(&b, 0, n);
	store_end();
	(void) FreeFile(file);
	report_culprits(&bad);
	return 1;
}

/*
 * Between batches, rest as long as the last one took: background work then
 * takes at most about half a core from the sessions checking tokens.
 */
static void
yield_after(TimestampTz started)
{
	long		ms = (long) ((GetCurrentTimestamp() - started) / 1000);

	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(ms, 1000), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * One round: flush and sweep take batches in turn until both are done, for
 * at most half a flush interval, so that neither starves the other under
 * load and other databases get their turn.
 */
static void
worker_round(RegistryRun *run)
{
	TimestampTz until = ms_from(run->started, tokenstore_flush_interval / 2);
	Culprits	flush_bad = {"flushing the last use",
		"Its use stays in the cache for the next round.",
	CurrentMemoryContext};
	Culprits	sweep_bad = {"sweeping the row",
		"The row stays for the next round.",
	CurrentMemoryContext};
	FlushStep	flush = {NULL, 0, until, &flush_bad};
	int			max;
	int			flushed_upto = 0;
	bool		sweeping = registry_sweep_due(MyDatabaseId, run->started);

	flush.dirty = dirty_array(&max);
	flush.n = cache_enabled() ?
		cache_collect_dirty(MyDatabaseId, flush.dirty, max) : 0;
	run->swept = sweeping;
	while ((flushed_upto < flush.n || sweeping) && !ShutdownRequestPending)
	{
		TimestampTz started = GetCurrentTimestamp();

		if (flushed_upto < flush.n)
		{
			FlushStep	batch = {flush.dirty + flushed_upto,
				Min(FLUSH_BATCH, flush.n - flushed_upto), until, &flush_bad};
			int64		n = run_step("tokenstore: flushing last uses",
									 flush_step, &batch);

			run->flushed += Max(0, n);
			flushed_upto += batch.n;
		}
		if (sweeping)
		{
			SweepStep	sweep = {until, &sweep_bad, false};
			int64		n = run_step("tokenstore: sweeping expired tokens",
									 sweep_step, &sweep);

			run->rows_swept += Max(0, n);
			sweeping = sweep.more;
			run->sweep_done = !sweeping;
		}
		if (GetCurrentTimestamp() >= until)
			break;
		yield_after(started);
	}
	report_culprits(&flush_bad);
	report_culprits(&sweep_bad);
	pfree(flush.dirty);
}

/*
 * Write the database's live tokens to Redis if the mirror needs them; once
 * done, the database is in sync as of the epoch read before (a newer one
 * means another round).
 */
static int64
resync_step(void *arg)
{
	return redis_resync_db() ? 1 : 0;
}

static void
worker_resync(void)
{
	uint64		epoch;

	if (!fanout_up(&epoch) || !registry_resync_due(MyDatabaseId, epoch))
		return;
	if (run_step("tokenstore: writing the tokens to Redis", resync_step, NULL) == 1)
		registry_record_synced(MyDatabaseId, epoch);
}

void
tokenstore_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	uint32		seen;
	RegistryRun run = {0};

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	worker_settings();

	/*
	 * No extension: nothing to do here.  Its cache entries went when it was
	 * dropped (the DROP purges at commit), and purging now could remove
	 * those of an extension created again since we looked.
	 */
	seen = registry_registrations(MyDatabaseId);
	if (run_step("tokenstore: looking for the extension", extension_step, NULL) != 1)
	{
		registry_forget_unless(MyDatabaseId, seen);
		proc_exit(0);
	}
	if (run_step("tokenstore: checking the extension's version", version_step, NULL) != 1)
		proc_exit(0);
	if (registry_dump_waiting())
		(void) run_step("tokenstore: applying last uses saved at shutdown", dump_step, NULL);

	run.started = GetCurrentTimestamp();
	worker_round(&run);
	registry_record_run(MyDatabaseId, &run);
	worker_resync();
	proc_exit(0);
}

/* ---- the launcher ---- */

/* Every database a worker can connect to is a candidate. */
static void
discover_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
			registry_add_candidate(db->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
}

/* Start a worker for one database; false if none could be started. */
static bool
start_worker(Running *r, Oid dbid)
{
	BackgroundWorker worker;

	registry_describe(&worker, "tokenstore_worker_main", "tokenstore worker");
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_name, BGW_MAXLEN, "tokenstore worker for database %u", dbid);
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &r->handle))
	{
		ereport(LOG,
				(errmsg("tokenstore could not start a worker for database %u", dbid),
				 errhint("Raise max_worker_processes: tokenstore needs five.")));
		return false;
	}
	r->dbid = dbid;
	r->started = GetCurrentTimestamp();
	return true;
}

/* Forget the workers that have exited. */
static void
reap_workers(Running *running)
{
	int			i;

	for (i = 0; i < MAX_RUNNING; i++)
	{
		pid_t		pid;

		if (running[i].handle != NULL &&
			GetBackgroundWorkerPid(running[i].handle, &pid) == BGWH_STOPPED)
		{
			pfree(running[i].handle);
			running[i].handle = NULL;
		}
	}
}

/*
 * Start the worker that is due next, if one may start: none runs, or the
 * one running has had a whole flush interval (a slow database must not hold
 * up the others).  Returns when to look again; *idle when nothing is due
 * and nothing runs.
 */
static TimestampTz
start_due_worker(Running *running, bool *idle)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = ms_from(now, tokenstore_flush_interval);
	Running    *free_lane = NULL;
	Oid			busy = InvalidOid;
	uint64		epoch;
	bool		redis_up = fanout_up(&epoch);
	Oid			dbid;
	int			i;

	*idle = false;
	for (i = 0; i < MAX_RUNNING; i++)
	{
		TimestampTz slow_at = ms_from(running[i].started, tokenstore_flush_interval);

		if (running[i].handle == NULL)
			free_lane = free_lane ? free_lane : &running[i];
		else if (now < slow_at)
			return Min(next, slow_at);
		else
			busy = running[i].dbid;
	}
	if (free_lane == NULL)
		return next;
	dbid = registry_next_due(now, redis_up, epoch, busy, &next);
	*idle = !OidIsValid(dbid) && !OidIsValid(busy);
	if (OidIsValid(dbid))
		(void) start_worker(free_lane, dbid);
	return next;
}

/* Save the dirty last uses of every database for the next start. */
static void
dump_dirty(void)
{
	CacheDirty *dirty;
	DumpHeader	header = {DUMP_MAGIC, DUMP_VERSION, sizeof(DumpRecord)};
	FILE	   *file;
	int			n;
	int			i;
	bool		ok;

	if (!cache_enabled())
		return;
	dirty = MemoryContextAllocHuge(CurrentMemoryContext,
								   sizeof(CacheDirty) * (Size) tokenstore_max_cached_tokens);
	n = cache_collect_dirty(InvalidOid, dirty, tokenstore_max_cached_tokens);
	if (n == 0)
		return;
	file = AllocateFile(DUMP_TEMP, PG_BINARY_W);
	if (file == NULL)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write \"%s\": %m", DUMP_TEMP)));
		return;
	}
	ok = fwrite(&header, sizeof(header), 1, file) == 1;
	for (i = 0; ok && i < n; i++)
	{
		DumpRecord	rec;

		rec.dbid = dirty[i].dbid;
		memcpy(rec.hash, dirty[i].key.bytes, sizeof(rec.hash));
		rec.last_used = dirty[i].last_used;
		ok = fwrite(&rec, sizeof(rec), 1, file) == 1;
	}
	if (FreeFile(file) != 0 || !ok)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write \"%s\": %m", DUMP_TEMP)));
		unlink(DUMP_TEMP);
		return;
	}
	(void) durable_rename(DUMP_TEMP, DUMP_FILE, LOG);
	ereport(LOG,
			(errmsg("tokenstore saved %d last uses for the next start", n)));
}

/* After a reload: a shortened interval takes effect now. */
static void
reload(void)
{
	TimestampTz now = GetCurrentTimestamp();

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	registry_reschedule(ms_from(now, tokenstore_flush_interval),
						now + (int64) tokenstore_sweep_interval * USECS_PER_SEC);
}

/*
 * The sealing key, made at the start if missing.  A key file that cannot be
 * used is logged and the launcher goes on: flushes and sweeps do not need
 * it, and share-mode logins say what is wrong until it is repaired.
 */
static void
ensure_seal_key(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		token_seal_key_ensure();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
	}
	PG_END_TRY();
}

void
tokenstore_launcher_main(Datum arg)
{
	Running		running[MAX_RUNNING] = {{0}};
	TimestampTz next_maintenance = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	ensure_seal_key();

	registry_attach_launcher(MyLatch, access(DUMP_FILE, F_OK) == 0);
	discover_databases();

	while (!ShutdownRequestPending)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz next;
		bool		idle;

		/* on the launcher's own clock, never because a commit woke it */
		if (now >= next_maintenance)
		{
			if (cache_enabled())
				cache_maintain(now);
			standby_announce();
			next_maintenance = ms_from(now, tokenstore_flush_interval);
		}
		reap_workers(running);
		next = Min(start_due_worker(running, &idle), next_maintenance);
		/* every database has had its first round: the dump is applied */
		if (idle && registry_dump_waiting())
		{
			registry_dump_applied();
			unlink(DUMP_FILE);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(1, (next - GetCurrentTimestamp()) / 1000),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload();
	}

	registry_detach_launcher();
	dump_dirty();
	proc_exit(0);
}
