/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  The differences between the PostgreSQL versions tokenstore supports
 *	  (15, 17 and 18), in one place.
 *
 * Every other file includes the headers it uses directly and writes to the
 * newest API; what an older version spells differently is mapped here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TOKENSTORE_COMPAT_H
#define TOKENSTORE_COMPAT_H

#include "storage/proc.h"

/* 16 moved the varlena macros out of postgres.h */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/* 17 replaced PGPROC.pgprocno by MyProcNumber */
#if PG_VERSION_NUM < 170000
#define MyProcNumber (MyProc->pgprocno)
#endif

/* 17 added infinite intervals; before, no interval is infinite */
#if PG_VERSION_NUM < 170000
#define INTERVAL_IS_NOBEGIN(i)	((void) (i), false)
#define INTERVAL_IS_NOEND(i)	((void) (i), false)
#endif

/* 16 gave GUC extras an allocator of their own; before, guc.c free()s them */
#if PG_VERSION_NUM < 160000
#define guc_malloc(elevel, size)	malloc(size)
#endif

#endif
