/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  Which databases have tokenstore, and the state of their background
 *	  work: when each one's worker runs next, what it did last, whether its
 *	  tokens are in Redis as of the current epoch.  And the one description
 *	  of a tokenstore background process.
 *
 * A slot is free, a candidate (the database may have the extension: its
 * next worker finds out) or active (it has it).  The launcher makes every
 * database that accepts connections a candidate at start; a committed
 * CREATE EXTENSION (or CREATE DATABASE, whose copy may have it) makes its
 * database a candidate and wakes the launcher; a worker that finds no
 * extension frees the slot, unless a registration came in meanwhile (the
 * counter `registrations` tells).
 *
 * Locking: one LWLock guards every slot and the launcher's latch.  It is
 * held for a scan of the 256 slots and a few stores, never across anything
 * that can fail or wait: commit callbacks take it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "registry.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tokenstore.h"

#define REGISTRY_TRANCHE	"tokenstore registry"
/* a failed resynchronisation is tried again this much later */
#define RESYNC_RETRY_MS		1000

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
	uint32		registrations;	/* CREATE EXTENSIONs seen (see registry_forget_unless) */
	uint64		synced_epoch;	/* Redis holds its tokens as of this epoch */
	TimestampTz next_resync;	/* earliest retry of a failed resync */
	bool		version_logged; /* its SQL objects' version was refused, and said so */
} DbSlot;

typedef struct RegistryShared
{
	LWLock	   *lock;
	Latch	   *launcher;
	bool		dump_waiting;	/* a shutdown dump waits to be applied */
	DbSlot		slots[REGISTRY_MAX_DATABASES];
} RegistryShared;

static RegistryShared *rs = NULL;

void
registry_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(RegistryShared)));
	RequestNamedLWLockTranche(REGISTRY_TRANCHE, 1);
}

/* Attach; the caller holds AddinShmemInitLock. */
void
registry_shmem_startup(void)
{
	bool		found;

	rs = ShmemInitStruct("tokenstore registry", sizeof(RegistryShared), &found);
	if (!found)
	{
		memset(rs, 0, sizeof(*rs));
		rs->lock = &(GetNamedLWLockTranche(REGISTRY_TRANCHE))->lock;
	}
}

/*
 * A tokenstore process: started once recovery is over, restarted ten
 * seconds after a failure, named by its type in pg_stat_activity.
 */
void
registry_describe(BackgroundWorker *worker, const char *function,
				  const char *type)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = 10;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "tokenstore");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", type);
}

/* ---- slots; the caller holds the lock ---- */

static DbSlot *
find_slot(Oid dbid)
{
	int			i;

	for (i = 0; i < REGISTRY_MAX_DATABASES; i++)
		if (rs->slots[i].state != SLOT_FREE && rs->slots[i].dbid == dbid)
			return &rs->slots[i];
	return NULL;
}

/* The database's slot, made a candidate if it had none; NULL when full. */
static DbSlot *
candidate_slot(Oid dbid)
{
	DbSlot	   *slot = find_slot(dbid);
	int			i;

	for (i = 0; slot == NULL && i < REGISTRY_MAX_DATABASES; i++)
	{
		if (rs->slots[i].state == SLOT_FREE)
		{
			slot = &rs->slots[i];
			memset(slot, 0, sizeof(*slot));
			slot->state = SLOT_CANDIDATE;
			slot->dbid = dbid;
		}
	}
	return slot;
}

static void
wake_locked(void)
{
	if (rs->launcher != NULL)
		SetLatch(rs->launcher);
}

/* ---- the launcher ---- */

void
registry_attach_launcher(Latch *latch, bool dump_waiting)
{
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	rs->launcher = latch;
	rs->dump_waiting = dump_waiting;
	LWLockRelease(rs->lock);
}

void
registry_detach_launcher(void)
{
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	rs->launcher = NULL;
	LWLockRelease(rs->lock);
}

void
registry_add_candidate(Oid dbid)
{
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	(void) candidate_slot(dbid);
	LWLockRelease(rs->lock);
}

/* When the slot's worker is due: a database Redis lacks, at its retry. */
static TimestampTz
slot_due(const DbSlot *slot, bool redis_up, uint64 epoch)
{
	if (redis_up && slot->state == SLOT_ACTIVE && slot->synced_epoch != epoch)
		return Min(slot->next_run, slot->next_resync);
	return slot->next_run;
}

/*
 * The database (but busy) that has waited longest for its worker, if one
 * is due at now (InvalidOid: none), its next run scheduled; *next becomes
 * the earliest time another is due.  Longest first, so that databases with
 * short rounds cannot keep one further down the slots waiting.
 */
Oid
registry_next_due(TimestampTz now, bool redis_up, uint64 epoch, Oid busy,
				  TimestampTz *next)
{
	DbSlot	   *chosen = NULL;
	int			i;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	for (i = 0; i < REGISTRY_MAX_DATABASES; i++)
	{
		DbSlot	   *slot = &rs->slots[i];

		if (slot->state == SLOT_FREE || slot->dbid == busy)
			continue;
		if (slot_due(slot, redis_up, epoch) <= now &&
			(chosen == NULL || slot_due(slot, redis_up, epoch) < slot_due(chosen, redis_up, epoch)))
			chosen = slot;
	}
	if (chosen != NULL)
	{
		chosen->next_run = now + (int64) tokenstore_flush_interval * 1000;
		chosen->next_resync = now + RESYNC_RETRY_MS * (int64) 1000;
	}
	for (i = 0; i < REGISTRY_MAX_DATABASES; i++)
	{
		DbSlot	   *slot = &rs->slots[i];

		if (slot->state != SLOT_FREE && slot->dbid != busy)
			*next = Min(*next, slot_due(slot, redis_up, epoch));
	}
	LWLockRelease(rs->lock);
	return chosen ? chosen->dbid : InvalidOid;
}

/* After a reload: a shortened interval takes effect now. */
void
registry_reschedule(TimestampTz run_by, TimestampTz sweep_by)
{
	int			i;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	for (i = 0; i < REGISTRY_MAX_DATABASES; i++)
	{
		rs->slots[i].next_run = Min(rs->slots[i].next_run, run_by);
		rs->slots[i].next_sweep = Min(rs->slots[i].next_sweep, sweep_by);
	}
	LWLockRelease(rs->lock);
}

/* Read without the lock: set once by the launcher, cleared by it. */
bool
registry_dump_waiting(void)
{
	return rs->dump_waiting;
}

void
registry_dump_applied(void)
{
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	rs->dump_waiting = false;
	LWLockRelease(rs->lock);
}

/* ---- commit time, and the mirror ---- */

/* Have the launcher check a database now (CREATE EXTENSION committed there). */
void
registry_register_db(Oid dbid)
{
	DbSlot	   *slot;

	if (rs == NULL)
		return;
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = candidate_slot(dbid);
	if (slot != NULL)
	{
		slot->next_run = 0;
		slot->registrations++;
	}
	wake_locked();
	LWLockRelease(rs->lock);
}

/* Forget a database (dropped). */
void
registry_forget_db(Oid dbid)
{
	DbSlot	   *slot;

	if (rs == NULL)
		return;
	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL)
		slot->state = SLOT_FREE;
	LWLockRelease(rs->lock);
}

/* Have the launcher look at its databases now (Redis needs them written). */
void
registry_wake_launcher(void)
{
	if (rs == NULL)
		return;
	LWLockAcquire(rs->lock, LW_SHARED);
	wake_locked();
	LWLockRelease(rs->lock);
}

/* ---- a database's worker ---- */

uint32
registry_registrations(Oid dbid)
{
	DbSlot	   *slot;
	uint32		n = 0;

	LWLockAcquire(rs->lock, LW_SHARED);
	slot = find_slot(dbid);
	if (slot != NULL)
		n = slot->registrations;
	LWLockRelease(rs->lock);
	return n;
}

/*
 * Forget a database that had no extension when its worker looked, unless
 * a CREATE EXTENSION has committed there since (seen is the count before).
 */
void
registry_forget_unless(Oid dbid, uint32 seen)
{
	DbSlot	   *slot;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL && slot->registrations == seen)
		slot->state = SLOT_FREE;
	LWLockRelease(rs->lock);
}

bool
registry_sweep_due(Oid dbid, TimestampTz now)
{
	DbSlot	   *slot;
	bool		due;

	LWLockAcquire(rs->lock, LW_SHARED);
	slot = find_slot(dbid);
	due = slot != NULL && slot->next_sweep <= now;
	LWLockRelease(rs->lock);
	return due;
}

/*
 * Record a worker's round.  A sweep that ran out of time stays due: the
 * next round goes on with it.
 */
void
registry_record_run(Oid dbid, const RegistryRun *run)
{
	DbSlot	   *slot;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL)
	{
		slot->state = SLOT_ACTIVE;
		slot->last_flush = run->started;
		slot->rows_flushed += run->flushed;
		if (run->swept)
		{
			slot->last_sweep = run->started;
			slot->rows_swept += run->rows_swept;
			if (run->sweep_done)
				slot->next_sweep = run->started +
					(int64) tokenstore_sweep_interval * USECS_PER_SEC;
		}
	}
	LWLockRelease(rs->lock);
}

/* Whether this database must write its tokens to Redis for this epoch. */
bool
registry_resync_due(Oid dbid, uint64 epoch)
{
	DbSlot	   *slot;
	bool		due;

	LWLockAcquire(rs->lock, LW_SHARED);
	slot = find_slot(dbid);
	due = slot != NULL && slot->synced_epoch != epoch;
	LWLockRelease(rs->lock);
	return due;
}

void
registry_record_synced(Oid dbid, uint64 epoch)
{
	DbSlot	   *slot;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL)
		slot->synced_epoch = epoch;
	LWLockRelease(rs->lock);
}

/*
 * True the first time a worker reports that the database's SQL objects are
 * of a version the library refuses: the log says it once, not every round.
 */
bool
registry_first_version_error(Oid dbid)
{
	DbSlot	   *slot;
	bool		first = false;

	LWLockAcquire(rs->lock, LW_EXCLUSIVE);
	slot = find_slot(dbid);
	if (slot != NULL && !slot->version_logged)
	{
		slot->version_logged = true;
		first = true;
	}
	LWLockRelease(rs->lock);
	return first;
}

/* ---- the views ---- */

/*
 * Whether Redis holds the tokens of every database with tokenstore as of
 * this epoch.  A candidate may be one: until its worker has looked, the
 * answer is no.
 */
bool
registry_synced(uint64 epoch)
{
	bool		synced = true;
	int			i;

	if (rs == NULL)
		return true;
	LWLockAcquire(rs->lock, LW_SHARED);
	for (i = 0; i < REGISTRY_MAX_DATABASES; i++)
	{
		DbSlot	   *slot = &rs->slots[i];

		if (slot->state == SLOT_CANDIDATE ||
			(slot->state == SLOT_ACTIVE && slot->synced_epoch != epoch))
			synced = false;
	}
	LWLockRelease(rs->lock);
	return synced;
}

int
registry_db_stats(RegistryDbStats *out, int max)
{
	int			i;
	int			n = 0;

	if (rs == NULL)
		return 0;
	LWLockAcquire(rs->lock, LW_SHARED);
	for (i = 0; i < REGISTRY_MAX_DATABASES && n < max; i++)
	{
		DbSlot	   *slot = &rs->slots[i];

		if (slot->state != SLOT_ACTIVE)
			continue;
		out[n].dbid = slot->dbid;
		out[n].last_flush = slot->last_flush;
		out[n].last_sweep = slot->last_sweep;
		out[n].rows_flushed = slot->rows_flushed;
		out[n].rows_swept = slot->rows_swept;
		n++;
	}
	LWLockRelease(rs->lock);
	return n;
}
