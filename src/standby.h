/*
 * standby.h: what the primary logs to WAL for its hot standbys' caches, and
 * its replay there.
 */
#ifndef TOKENSTORE_STANDBY_H
#define TOKENSTORE_STANDBY_H

#include "token.h"

/* the custom WAL resource manager's id (see standby.c) */
#define TOKENSTORE_RMGR_ID		128

extern void standby_init(void);
extern void standby_shmem_request(void);
extern void standby_shmem_startup(void);

/* commit time (xact.c), just before the commit record */
extern bool standby_wants_changes(void);
extern void standby_log_change(Oid dbid, const TokenKey *keys, int nkeys,
							   bool purge);

/* the launcher */
extern void standby_announce(void);

#endif
