/*-------------------------------------------------------------------------
 *
 * standby.c
 *	  What a primary tells its hot standbys' caches, through WAL, and the
 *	  replay of it: a custom resource manager (id 128, "tokenstore").
 *
 * Three records:
 * - CHANGE: the tokens of a database that a transaction changed, or all of
 *   them (a purge: TRUNCATE, DROP EXTENSION, DROP DATABASE).  Logged at
 *   PRE_COMMIT, so it precedes the commit record in WAL (a crash between
 *   them aborts the transaction, and the standby has only forgotten more
 *   than it needed to); nothing is logged after a commit.  Its replay
 *   removes the entries and notes the xid (see cache.c, "On a hot standby").
 * - ON: the primary logs every change.  The launcher logs it at its start
 *   and every flush interval while WAL moves, so a standby made from a base
 *   backup learns of it soon.  A standby uses its cache only after one.
 * - OFF: it has stopped.  A primary started with the setting off logs it
 *   before its first commit that changes tokens, if it had told standbys ON
 *   (a file in the data directory remembers that, and is copied by base
 *   backups, so a promoted standby knows too).  Its replay empties the
 *   cache, which then stays unused.
 *
 * A standby that lacks the resource manager cannot replay these records:
 * its startup process stops with "resource manager with ID 128 not
 * registered".  So they are logged only while tokenstore.standby_cache is
 * on, which says that every standby preloads tokenstore; with it off
 * (the default) a primary logs nothing and any standby replays.
 *
 * The id is RM_EXPERIMENTAL_ID: another extension that uses it cannot be
 * preloaded beside tokenstore (PostgreSQL refuses the second at start).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "cache.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "standby.h"
#include "storage/fd.h"
#include "storage/shmem.h"
#include "tokenstore.h"
#include "utils/timestamp.h"

#define XLOG_TOKENSTORE_CHANGE	0x00
#define XLOG_TOKENSTORE_ON		0x10
#define XLOG_TOKENSTORE_OFF		0x20

/* the primary has told its standbys ON, and not OFF since */
#define ANNOUNCED_FILE			"tokenstore.standby_cache"

typedef struct xl_tokenstore_change
{
	Oid			dbid;
	bool		purge;
	int32		nkeys;
	TokenKey	keys[FLEXIBLE_ARRAY_MEMBER];
} xl_tokenstore_change;

typedef struct StandbyLogShared
{
	pg_atomic_uint32 announced; /* ANNOUNCED_FILE exists */
} StandbyLogShared;

static StandbyLogShared *logshared = NULL;
static bool registered = false;

static void tokenstore_redo(XLogReaderState *record);
static void tokenstore_desc(StringInfo buf, XLogReaderState *record);
static const char *tokenstore_identify(uint8 info);

static RmgrData tokenstore_rmgr = {
	.rm_name = "tokenstore",
	.rm_redo = tokenstore_redo,
	.rm_desc = tokenstore_desc,
	.rm_identify = tokenstore_identify,
};

/* While shared_preload_libraries loads. */
void
standby_init(void)
{
	RegisterCustomRmgr(TOKENSTORE_RMGR_ID, &tokenstore_rmgr);
	registered = true;
}

void
standby_shmem_request(void)
{
	RequestAddinShmemSpace(sizeof(StandbyLogShared));
}

/* Attach; the caller holds AddinShmemInitLock. */
void
standby_shmem_startup(void)
{
	bool		found;

	logshared = ShmemInitStruct("tokenstore standby log",
								sizeof(StandbyLogShared), &found);
	if (!found)
		pg_atomic_init_u32(&logshared->announced,
						   access(ANNOUNCED_FILE, F_OK) == 0);
}

/* ---- the file that remembers ON ---- */

/*
 * Failing to write it is logged: the cost is that a later start with the
 * setting off would not tell the standbys.
 */
static void
remember_announced(void)
{
	int			fd;

	if (pg_atomic_read_u32(&logshared->announced))
		return;
	fd = OpenTransientFile(ANNOUNCED_FILE, O_RDWR | O_CREAT | PG_BINARY);
	if (fd < 0 || CloseTransientFile(fd) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", ANNOUNCED_FILE)));
		return;
	}
	fsync_fname(ANNOUNCED_FILE, false);
	fsync_fname(".", true);
	pg_atomic_write_u32(&logshared->announced, 1);
}

static void
forget_announced(void)
{
	if (!pg_atomic_read_u32(&logshared->announced))
		return;
	(void) durable_unlink(ANNOUNCED_FILE, LOG);
	pg_atomic_write_u32(&logshared->announced, 0);
}

/* ---- logging, on the primary ---- */

static XLogRecPtr
log_state(uint8 info)
{
	TimestampTz now = GetCurrentTimestamp();

	XLogBeginInsert();
	XLogRegisterData((char *) &now, sizeof(now));
	return XLogInsert(TOKENSTORE_RMGR_ID, info);
}

/*
 * Whether the changes of a transaction must be logged: while the standbys
 * use their caches, or until they have been told to stop.
 */
bool
standby_wants_changes(void)
{
	return registered && logshared != NULL &&
		(tokenstore_standby_cache || pg_atomic_read_u32(&logshared->announced));
}

/*
 * A transaction (about to commit) changed these tokens of a database, or
 * all (purge).  With the setting off, standbys that were told ON are told
 * OFF instead, before this commit.
 */
void
standby_log_change(Oid dbid, const TokenKey *keys, int nkeys, bool purge)
{
	xl_tokenstore_change head;

	if (!tokenstore_standby_cache)
	{
		if (pg_atomic_read_u32(&logshared->announced))
		{
			(void) log_state(XLOG_TOKENSTORE_OFF);
			forget_announced();
		}
		return;
	}
	head.dbid = dbid;
	head.purge = purge;
	head.nkeys = nkeys;
	XLogBeginInsert();
	XLogRegisterData((char *) &head, offsetof(xl_tokenstore_change, keys));
	if (nkeys > 0)
		XLogRegisterData((char *) keys, sizeof(TokenKey) * nkeys);
	(void) XLogInsert(TOKENSTORE_RMGR_ID, XLOG_TOKENSTORE_CHANGE);
}

/*
 * The launcher, every flush interval: ON, if WAL has moved since the last
 * one (an idle primary writes nothing), flushed so standbys see it.
 */
void
standby_announce(void)
{
	static XLogRecPtr last = InvalidXLogRecPtr;

	if (!registered || !tokenstore_standby_cache || RecoveryInProgress())
		return;
	if (!XLogRecPtrIsInvalid(last) && GetXLogInsertRecPtr() == last)
		return;
	remember_announced();
	last = log_state(XLOG_TOKENSTORE_ON);
	XLogFlush(last);
}

/* ---- replay ---- */

static void
tokenstore_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	char	   *data = XLogRecGetData(record);
	xl_tokenstore_change head;

	switch (info)
	{
		case XLOG_TOKENSTORE_CHANGE:
			memcpy(&head, data, offsetof(xl_tokenstore_change, keys));
			cache_replay_change(head.dbid, XLogRecGetXid(record),
								(const TokenKey *) (data + offsetof(xl_tokenstore_change, keys)),
								head.nkeys, head.purge);
			break;
		case XLOG_TOKENSTORE_ON:
			remember_announced();
			cache_replay_state(true);
			break;
		case XLOG_TOKENSTORE_OFF:
			forget_announced();
			cache_replay_state(false);
			break;
		default:
			elog(PANIC, "tokenstore_redo: unknown op code %u", info);
	}
}

static void
tokenstore_desc(StringInfo buf, XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	char	   *data = XLogRecGetData(record);
	xl_tokenstore_change head;
	TimestampTz at;

	if (info == XLOG_TOKENSTORE_CHANGE)
	{
		memcpy(&head, data, offsetof(xl_tokenstore_change, keys));
		appendStringInfo(buf, "db %u; %s%d tokens", head.dbid,
						 head.purge ? "all, and " : "", head.nkeys);
	}
	else
	{
		memcpy(&at, data, sizeof(at));
		appendStringInfo(buf, "at %s", timestamptz_to_str(at));
	}
}

static const char *
tokenstore_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case XLOG_TOKENSTORE_CHANGE:
			return "CHANGE";
		case XLOG_TOKENSTORE_ON:
			return "ON";
		case XLOG_TOKENSTORE_OFF:
			return "OFF";
	}
	return NULL;
}
