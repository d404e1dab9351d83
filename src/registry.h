/*
 * registry.h: which databases have tokenstore, the state of their
 * background work, and how a tokenstore background process is described.
 */
#ifndef TOKENSTORE_REGISTRY_H
#define TOKENSTORE_REGISTRY_H

#include "datatype/timestamp.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"

#define REGISTRY_MAX_DATABASES 256

/* What the stats view shows of one database. */
typedef struct RegistryDbStats
{
	Oid			dbid;
	TimestampTz last_flush;		/* 0: never */
	TimestampTz last_sweep;
	int64		rows_flushed;
	int64		rows_swept;
} RegistryDbStats;

/* What a worker did in its round, for registry_record_run. */
typedef struct RegistryRun
{
	TimestampTz started;
	int64		flushed;
	bool		swept;			/* a sweep ran */
	bool		sweep_done;		/* and found nothing more to delete */
	int64		rows_swept;
} RegistryRun;

extern void registry_shmem_request(void);
extern void registry_shmem_startup(void);
extern void registry_describe(BackgroundWorker *worker, const char *function,
							  const char *type);

/* the launcher */
extern void registry_attach_launcher(Latch *latch, bool dump_waiting);
extern void registry_detach_launcher(void);
extern void registry_add_candidate(Oid dbid);
extern Oid	registry_next_due(TimestampTz now, bool redis_up, uint64 epoch,
							  Oid busy, TimestampTz *next);
extern void registry_reschedule(TimestampTz run_by, TimestampTz sweep_by);
extern bool registry_dump_waiting(void);
extern void registry_dump_applied(void);

/* commit time (xact.c) and the mirror (fanout.c): a lock and a few stores */
extern void registry_register_db(Oid dbid);
extern void registry_forget_db(Oid dbid);
extern void registry_wake_launcher(void);

/* a database's worker */
extern uint32 registry_registrations(Oid dbid);
extern void registry_forget_unless(Oid dbid, uint32 seen);
extern bool registry_sweep_due(Oid dbid, TimestampTz now);
extern void registry_record_run(Oid dbid, const RegistryRun *run);
extern bool registry_resync_due(Oid dbid, uint64 epoch);
extern void registry_record_synced(Oid dbid, uint64 epoch);
extern bool registry_first_version_error(Oid dbid);

/* the views */
extern bool registry_synced(uint64 epoch);
extern int	registry_db_stats(RegistryDbStats *out, int max);

#endif
