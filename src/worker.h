/*
 * worker.h: the launcher and the per-database workers.
 */
#ifndef TOKENSTORE_WORKER_H
#define TOKENSTORE_WORKER_H

#include "datatype/timestamp.h"
#include "postmaster/bgworker.h"

/* What the stats view shows of one database. */
typedef struct WorkerDbStats
{
	Oid			dbid;
	TimestampTz last_flush;		/* 0: never */
	TimestampTz last_sweep;
	int64		rows_flushed;
	int64		rows_swept;
} WorkerDbStats;

extern void worker_shmem_request(void);
extern void worker_shmem_startup(void);
extern void worker_describe(BackgroundWorker *worker, const char *function,
							const char *type);
extern void worker_register_launcher(void);
extern void worker_register_db(Oid dbid);
extern void worker_forget_db(Oid dbid);
extern void worker_wake(void);
extern bool worker_synced(uint64 epoch);
extern int	worker_db_stats(WorkerDbStats *out, int max);
extern int64 worker_flush(int max);

#define WORKER_MAX_DATABASES 256

#endif
