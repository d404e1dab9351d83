/*
 * worker.h: the launcher and the per-database workers.
 */
#ifndef TOKENSTORE_WORKER_H
#define TOKENSTORE_WORKER_H

extern int64 worker_flush_all(void);

#endif
