/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background: a launcher, and short-lived per-database workers that
 *	  flush last uses from the cache to the table and sweep expired rows.
 *
 * See src/README.md for the states.  In short: the launcher connects to no
 * database; it keeps a registry of the databases that have tokenstore, drops
 * expired and least recently used entries from the cache, and every
 * tokenstore.flush_interval starts one worker per registered database, one
 * at a time.  A worker connects, flushes every dirty last use (hot tokens
 * included), sweeps expired rows in small batches when
 * tokenstore.sweep_interval has passed, and exits.  No worker stays in a
 * database, so CREATE DATABASE (from a template), ALTER DATABASE RENAME and
 * plain DROP DATABASE never find one in their way for more than a moment.
 *
 * The registry fills at start (a worker tries every database that accepts
 * connections, and keeps those that have the extension) and at each CREATE
 * EXTENSION (the commit wakes the launcher).  At a clean shutdown the
 * launcher writes the dirty last uses to a file, which the first workers
 * after the next start apply; after a crash at most one flush interval of
 * last uses is lost.
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
#include "commands/extension.h"
#include "fanout.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "redis.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "store.h"
#include "tokenstore.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "worker.h"
#include "xact.h"

#define WORKER_TRANCHE		"tokenstore worker"
#define FLUSH_BATCH			10000
#define SWEEP_BATCH			1000
#define RESYNC_RETRY_MS		1000
#define DUMP_FILE			"tokenstore.last_used"
#define DUMP_TEMP			DUMP_FILE ".tmp"

typedef enum SlotState
{
	SLOT_FREE,
	SLOT_CANDIDATE,				/* may have the extension: a worker checks */
	SLOT_ACTIVE					/* has the extension */
} SlotState;

typedef struct DbSlot
{
	SlotState	state;
	Oid			dbid;
	TimestampTz next_run;
	TimestampTz next_sweep;
	TimestampTz last_flush;
	TimestampTz last_sweep;
	int64		rows_flushed;
	int64		rows_swept;
	uint32		registrations;	/* CREATE EXTENSIONs seen (see forget_unless) */
	uint64		synced_epoch;	/* Redis holds its tokens as of this epoch */
	TimestampTz next_resync;	/* earliest retry of a failed resync */
} DbSlot;

typedef struct WorkerShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	bool		dump_pending;	/* a shutdown dump waits to be applied */
	DbSlot		slots[WORKER_MAX_DATABASES];
} WorkerShared;

/* A dumped last use: the file's record. */
typedef struct DumpRecord
{
	Oid			dbid;
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	TimestampTz last_used;
} DumpRecord;

static WorkerShared *ws = NULL;

PGDLLEXPORT void tokenstore_launcher_main(Datum arg);
PGDLLEXPORT void tokenstore_worker_main(Datum arg);

void
worker_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
	RequestNamedLWLockTranche(WORKER_TRANCHE, 1);
}

/* Attach; the caller holds AddinShmemInitLock. */
void
worker_shmem_startup(void)
{
	bool		found;

	ws = ShmemInitStruct("tokenstore worker", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(ws, 0, sizeof(*ws));
		ws->lock = &(GetNamedLWLockTranche(WORKER_TRANCHE))->lock;
	}
}

/*
 * A tokenstore process: started once recovery is over, restarted ten
 * seconds after a failure, named by its type in pg_stat_activity.
 */
void
worker_describe(BackgroundWorker *worker, const char *function,
				const char *type)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = 10;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "tokenstore");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", type);
}

void
worker_register_launcher(void)
{
	BackgroundWorker worker;

	worker_describe(&worker, "tokenstore_launcher_main", "tokenstore launcher");
	worker.bgw_flags |= BGWORKER_BACKEND_DATABASE_CONNECTION;
	RegisterBackgroundWorker(&worker);
}

/* ---- the registry ---- */

static DbSlot *
find_slot(Oid dbid)
{
	int			i;

	for (i = 0; i < WORKER_MAX_DATABASES; i++)
		if (ws->slots[i].state != SLOT_FREE && ws->slots[i].dbid == dbid)
			return &ws->slots[i];
	return NULL;
}

/* Add a database to check, unless known; the caller holds the lock. */
static void
add_candidate(Oid dbid)
{
	int			i;

	if (find_slot(dbid) != NULL)
		return;
	for (i = 0; i < WORKER_MAX_DATABASES; i++)
	{
		DbSlot	   *slot = &ws->slots[i];

		if (slot->state == SLOT_FREE)
		{
			memset(slot, 0, sizeof(*slot));
			slot->state = SLOT_CANDIDATE;
			slot->dbid = dbid;
			return;
		}
	}
}

/*
 * Have the launcher check a database now (CREATE EXTENSION committed there).
 * Runs at commit time: a lock and a few stores.
 */
void
worker_register_db(Oid dbid)
{
	DbSlot	   *slot;

	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	add_candidate(dbid);
	slot = find_slot(dbid);
	if (slot != NULL)
	{
		slot->next_run = 0;
		slot->registrations++;
	}
	if (ws->launcher_latch != NULL)
		SetLatch(ws->launcher_latch);
	LWLockRelease(ws->lock);
}

/* Have the launcher look at its databases now (Redis needs them written). */
void
worker_wake(void)
{
	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_SHARED);
	if (ws->launcher_latch != NULL)
		SetLatch(ws->launcher_latch);
	LWLockRelease(ws->lock);
}

/* Whether every database with tokenstore has written its tokens to Redis. */
bool
worker_synced(uint64 epoch)
{
	bool		synced = true;
	int			i;

	if (ws == NULL)
		return true;
	LWLockAcquire(ws->lock, LW_SHARED);
	for (i = 0; i < WORKER_MAX_DATABASES; i++)
		if (ws->slots[i].state == SLOT_ACTIVE && ws->slots[i].synced_epoch != epoch)
			synced = false;
	LWLockRelease(ws->lock);
	return synced;
}

/* Forget a database (dropped, or without the extension). */
void
worker_forget_db(Oid dbid)
{
	DbSlot	   *slot;

	if (ws == NULL)
		return;
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL)
		slot->state = SLOT_FREE;
	LWLockRelease(ws->lock);
}

int
worker_db_stats(WorkerDbStats *out, int max)
{
	int			i;
	int			n = 0;

	if (ws == NULL)
		return 0;
	LWLockAcquire(ws->lock, LW_SHARED);
	for (i = 0; i < WORKER_MAX_DATABASES && n < max; i++)
	{
		DbSlot	   *slot = &ws->slots[i];

		if (slot->state != SLOT_ACTIVE)
			continue;
		out[n].dbid = slot->dbid;
		out[n].last_flush = slot->last_flush;
		out[n].last_sweep = slot->last_sweep;
		out[n].rows_flushed = slot->rows_flushed;
		out[n].rows_swept = slot->rows_swept;
		n++;
	}
	LWLockRelease(ws->lock);
	return n;
}

/* ---- flushing ---- */

/*
 * Write up to max dirty last uses of this database to the table, in the
 * current transaction; they are marked clean when it commits.  Returns how
 * many rows moved.
 */
int64
worker_flush(int max)
{
	CacheDirty *dirty;
	int			n;
	int			done;
	int64		rows = 0;

	if (!cache_enabled())
		return 0;
	dirty = palloc(sizeof(CacheDirty) * max);
	n = cache_collect_dirty(MyDatabaseId, dirty, max);
	store_begin();
	for (done = 0; done < n; done += FLUSH_BATCH)
		rows += store_flush(dirty + done, Min(FLUSH_BATCH, n - done));
	store_end();
	for (done = 0; done < n; done++)
		xact_queue_clean(&dirty[done]);
	pfree(dirty);
	return rows;
}

/* ---- the per-database worker ---- */

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

static uint32
registrations(void)
{
	DbSlot	   *slot;
	uint32		n = 0;

	LWLockAcquire(ws->lock, LW_SHARED);
	slot = find_slot(MyDatabaseId);
	if (slot != NULL)
		n = slot->registrations;
	LWLockRelease(ws->lock);
	return n;
}

/*
 * Forget this database, which had no extension when we looked, unless a
 * CREATE EXTENSION has committed there since (seen is the count before).
 */
static void
forget_unless_registered(uint32 seen)
{
	DbSlot	   *slot;

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = find_slot(MyDatabaseId);
	if (slot != NULL && slot->registrations == seen)
		slot->state = SLOT_FREE;
	LWLockRelease(ws->lock);
}

static bool
extension_present(void)
{
	bool		present;

	begin_step("tokenstore: looking for the extension");
	present = OidIsValid(get_extension_oid("tokenstore", true));
	end_step();
	return present;
}

/*
 * Apply the last uses a clean shutdown left for this database.  The file is
 * opened inside the step's transaction, which would close it on an error.
 */
static void
apply_dump(void)
{
	FILE	   *file;
	CacheDirty *batch;
	DumpRecord	rec;
	int			n = 0;

	begin_step("tokenstore: applying last uses saved at shutdown");
	file = AllocateFile(DUMP_FILE, PG_BINARY_R);
	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read \"%s\": %m", DUMP_FILE)));
		end_step();
		return;
	}
	batch = palloc(sizeof(CacheDirty) * FLUSH_BATCH);
	store_begin();
	while (fread(&rec, sizeof(rec), 1, file) == 1)
	{
		if (rec.dbid != MyDatabaseId)
			continue;
		memcpy(batch[n].key.bytes, rec.hash, sizeof(rec.hash));
		batch[n].last_used = rec.last_used;
		if (++n == FLUSH_BATCH)
		{
			store_flush(batch, n);
			n = 0;
		}
	}
	if (n > 0)
		store_flush(batch, n);
	store_end();
	(void) FreeFile(file);
	pfree(batch);
	end_step();
}

/*
 * Record a run.  A sweep that ran out of time stays due: the next run, one
 * flush interval later, goes on with it.
 */
static void
record_run(TimestampTz now, int64 flushed, bool swept, bool sweep_done,
		   int64 rows_swept)
{
	DbSlot	   *slot;

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = find_slot(MyDatabaseId);
	if (slot != NULL)
	{
		slot->state = SLOT_ACTIVE;
		slot->last_flush = now;
		slot->rows_flushed += flushed;
		if (swept)
		{
			slot->last_sweep = now;
			slot->rows_swept += rows_swept;
			if (sweep_done)
				slot->next_sweep = now + (int64) tokenstore_sweep_interval * USECS_PER_SEC;
		}
	}
	LWLockRelease(ws->lock);
}

static bool
sweep_due(TimestampTz now)
{
	DbSlot	   *slot;
	bool		due;

	LWLockAcquire(ws->lock, LW_SHARED);
	slot = find_slot(MyDatabaseId);
	due = slot != NULL && slot->next_sweep <= now;
	LWLockRelease(ws->lock);
	return due;
}

/* Whether this database must write its tokens to Redis, as of *epoch. */
static bool
resync_due(uint64 *epoch)
{
	DbSlot	   *slot;
	bool		due;

	if (!fanout_up(epoch))
		return false;
	LWLockAcquire(ws->lock, LW_SHARED);
	slot = find_slot(MyDatabaseId);
	due = slot != NULL && slot->synced_epoch != *epoch;
	LWLockRelease(ws->lock);
	return due;
}

/*
 * Write the database's live tokens to Redis; once done, the database is in
 * sync as of the epoch read before (a newer one means another round).
 */
static void
resync(void)
{
	uint64		epoch;
	bool		done;
	DbSlot	   *slot;

	if (!resync_due(&epoch))
		return;
	begin_step("tokenstore: writing the tokens to Redis");
	done = redis_resync_db();
	end_step();
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	slot = find_slot(MyDatabaseId);
	if (slot != NULL && done)
		slot->synced_epoch = epoch;
	LWLockRelease(ws->lock);
}

/*
 * Between batches, rest as long as the last one took: a long flush or sweep
 * then takes at most about half a core from the sessions checking tokens.
 */
static void
yield_after(TimestampTz started)
{
	long		ms = (long) ((GetCurrentTimestamp() - started) / 1000);

	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(ms, 1000), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

void
tokenstore_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	uint32		seen;
	TimestampTz now;
	int64		flushed = 0;
	int64		swept = 0;
	int64		n;
	bool		sweeping;
	bool		sweep_done = false;
	TimestampTz sweep_until;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);

	/*
	 * No extension: nothing to do here.  Its cache entries went when it was
	 * dropped (the DROP purges at commit), and purging now could remove
	 * those of an extension created again since we looked.
	 */
	seen = registrations();
	if (!extension_present())
	{
		forget_unless_registered(seen);
		proc_exit(0);
	}
	if (ws->dump_pending)
		apply_dump();

	now = GetCurrentTimestamp();
	do
	{
		TimestampTz started = GetCurrentTimestamp();

		begin_step("tokenstore: flushing last uses");
		n = worker_flush(FLUSH_BATCH);
		end_step();
		flushed += n;
		if (n == FLUSH_BATCH)
			yield_after(started);
	} while (n == FLUSH_BATCH && !ShutdownRequestPending);

	/* half a flush interval at most, so that other databases get their turn */
	sweep_until = GetCurrentTimestamp() + (int64) tokenstore_flush_interval * 500;
	sweeping = sweep_due(now);
	while (sweeping && !ShutdownRequestPending)
	{
		TimestampTz started = GetCurrentTimestamp();

		begin_step("tokenstore: sweeping expired tokens");
		store_begin();
		n = store_sweep(GetCurrentTimestamp(), SWEEP_BATCH);
		store_end();
		end_step();
		swept += n;
		if (n == 0)
		{
			sweep_done = true;
			break;
		}
		if (GetCurrentTimestamp() >= sweep_until)
			break;
		yield_after(started);
	}
	record_run(now, flushed, sweeping, sweep_done, swept);
	resync();
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
	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
			add_candidate(db->oid);
	}
	LWLockRelease(ws->lock);
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
}

/* Start a worker for one database and wait until it is done. */
static void
run_worker(Oid dbid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;

	worker_describe(&worker, "tokenstore_worker_main", "tokenstore worker");
	worker.bgw_flags |= BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_name, BGW_MAXLEN, "tokenstore worker for database %u", dbid);
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("tokenstore could not start a worker for database %u", dbid),
				 errhint("Raise max_worker_processes: tokenstore needs three.")));
		return;
	}
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
		(void) WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);
}

/* Run the workers that are due; returns when the next one is. */
static TimestampTz
run_due_workers(void)
{
	TimestampTz next = GetCurrentTimestamp() +
		(int64) tokenstore_flush_interval * 1000;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		Oid			dbid = InvalidOid;
		uint64		epoch;
		bool		redis_up = fanout_up(&epoch);
		int			i;

		LWLockAcquire(ws->lock, LW_EXCLUSIVE);
		for (i = 0; i < WORKER_MAX_DATABASES; i++)
		{
			DbSlot	   *slot = &ws->slots[i];
			TimestampTz due = slot->next_run;

			if (slot->state == SLOT_FREE)
				continue;
			if (redis_up && slot->state == SLOT_ACTIVE &&
				slot->synced_epoch != epoch)
				due = Min(due, slot->next_resync);
			if (due <= now && !OidIsValid(dbid))
			{
				dbid = slot->dbid;
				slot->next_run = now + (int64) tokenstore_flush_interval * 1000;
				slot->next_resync = now + RESYNC_RETRY_MS * 1000;
				due = Min(slot->next_run, slot->next_resync);
			}
			next = Min(next, due);
		}
		LWLockRelease(ws->lock);
		if (!OidIsValid(dbid) || ShutdownRequestPending)
			return next;
		run_worker(dbid);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * After a reload: a shortened interval takes effect now, not after the wait
 * the old one scheduled.
 */
static void
apply_intervals(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz run = now + (int64) tokenstore_flush_interval * 1000;
	TimestampTz sweep = now + (int64) tokenstore_sweep_interval * USECS_PER_SEC;
	int			i;

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	for (i = 0; i < WORKER_MAX_DATABASES; i++)
	{
		DbSlot	   *slot = &ws->slots[i];

		slot->next_run = Min(slot->next_run, run);
		slot->next_sweep = Min(slot->next_sweep, sweep);
	}
	LWLockRelease(ws->lock);
}

/* Save the dirty last uses of every database for the next start. */
static void
dump_dirty(void)
{
	CacheDirty *dirty;
	FILE	   *file;
	int			n;
	int			i;

	if (!cache_enabled())
		return;
	dirty = palloc(sizeof(CacheDirty) * tokenstore_max_cached_tokens);
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
	for (i = 0; i < n; i++)
	{
		DumpRecord	rec;

		rec.dbid = dirty[i].dbid;
		memcpy(rec.hash, dirty[i].key.bytes, sizeof(rec.hash));
		rec.last_used = dirty[i].last_used;
		if (fwrite(&rec, sizeof(rec), 1, file) != 1)
			break;
	}
	if (FreeFile(file) != 0 || i < n)
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

void
tokenstore_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	ws->launcher_latch = MyLatch;
	ws->dump_pending = access(DUMP_FILE, F_OK) == 0;
	LWLockRelease(ws->lock);
	discover_databases();

	while (!ShutdownRequestPending)
	{
		TimestampTz next;
		long		wait_ms;

		if (cache_enabled())
			cache_maintain(GetCurrentTimestamp());
		next = run_due_workers();
		if (ws->dump_pending)
		{
			ws->dump_pending = false;
			unlink(DUMP_FILE);
		}
		wait_ms = Max(0, (next - GetCurrentTimestamp()) / 1000);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			apply_intervals();
		}
	}

	LWLockAcquire(ws->lock, LW_EXCLUSIVE);
	ws->launcher_latch = NULL;
	LWLockRelease(ws->lock);
	dump_dirty();
	proc_exit(0);
}
