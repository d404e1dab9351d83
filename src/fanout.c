/*-------------------------------------------------------------------------
 *
 * fanout.c
 *	  The queue of committed token changes bound for Redis: a ring of bytes
 *	  in shared memory, written at commit, read by the publisher.
 *
 * The queue protocol
 * ------------------
 * - A transaction builds its messages as its rows change (the row trigger,
 *   a flush), in its own memory.  Just before it commits
 *   (XACT_EVENT_PRE_COMMIT) it appends them all as one block, marked
 *   pending, or none: when they do not fit, the queue has overflowed.  At
 *   XACT_EVENT_COMMIT it marks the block committed; should it abort after
 *   all, aborted.  The publisher takes blocks in order and stops at a pending
 *   one.  So the queue holds the changes in the order the transactions
 *   became ready to commit, which is their commit order wherever it
 *   matters: a transaction that changes a token after another did either
 *   waited for that one's row lock (released after its commit callbacks) or
 *   saw its row, committed, hence after its PRE_COMMIT.  (Appending at
 *   XACT_EVENT_COMMIT alone would let a revocation of a token just made be
 *   queued before the token.)  Appending and marking are a memcpy and a
 *   store under the queue's lock, nothing that allocates or fails.
 * - Changes are queued only while the publisher is connected.  Whenever
 *   Redis may have missed a change (the publisher connected: it was off,
 *   down, or a batch failed; the queue overflowed; a transaction changed
 *   tokens before the connection came up and committed after) the epoch
 *   moves on.  Every database whose worker has not resynchronised since the
 *   current epoch began is stale.
 * - A resynchronisation must not let an older change overwrite what it
 *   writes.  So the worker asks the publisher to hold: the publisher sends
 *   everything queued up to that moment, then sends nothing more until the
 *   worker is done (it keeps reading the queue, into its own memory, so a
 *   long resynchronisation does not fill the queue).  Only once the
 *   publisher holds does the worker read the table (a page at a time, each
 *   on the latest snapshot): a transaction invisible to such a snapshot
 *   commits after it and appends after the hold point, so its changes are
 *   sent after what the worker wrote, in order.  Changes
 *   that the snapshot already holds and that are queued after the hold point
 *   are sent again, which is harmless.
 * - The queue is read in whole messages; the publisher copies a batch out
 *   and sends it with no lock held.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fanout.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tokenstore.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "registry.h"

#define FANOUT_TRANCHE		"tokenstore fanout"
/* how long a worker waits for the publisher to hold */
#define HOLD_TIMEOUT_MS		30000

typedef enum HoldState
{
	HOLD_NONE,
	HOLD_REQUESTED,				/* publisher: send up to hold_at, then hold */
	HOLD_HELD					/* publisher keeps what it reads, unsent */
} HoldState;

typedef struct FanoutShared
{
	LWLock	   *lock;
	Latch	   *publisher;		/* NULL while no publisher runs */
	uint64		head;			/* next byte to write */
	uint64		tail;			/* next byte to read */
	uint64		resets;			/* times what was queued was forgotten */
	uint32		block_off;		/* taken so far of the block at tail */
	HoldState	hold;
	uint64		hold_at;
	pid_t		hold_pid;
	FanoutStats stats;
	Size		size;
	char		ring[FLEXIBLE_ARRAY_MEMBER];
} FanoutShared;

/* A transaction's messages in the ring, behind this header. */
typedef struct BlockHeader
{
	uint32		len;			/* of the block, header included */
	uint32		state;			/* BlockState */
	uint32		nmsgs;
	uint32		padding;
} BlockHeader;

typedef enum BlockState
{
	BLOCK_PENDING,				/* the transaction has not committed yet */
	BLOCK_COMMITTED,
	BLOCK_ABORTED				/* skipped */
} BlockState;

static FanoutShared *fs = NULL;
static char *my_datname = NULL;
static bool hold_cleanup_registered = false;

static Size
fanout_shmem_size(void)
{
	return add_size(offsetof(FanoutShared, ring),
					(Size) tokenstore_redis_queue_size * 1024);
}

void
fanout_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(fanout_shmem_size()));
	RequestNamedLWLockTranche(FANOUT_TRANCHE, 1);
}

/* Attach; the caller holds AddinShmemInitLock. */
void
fanout_shmem_startup(void)
{
	bool		found;

	fs = ShmemInitStruct("tokenstore fanout", fanout_shmem_size(), &found);
	if (!found)
	{
		memset(fs, 0, offsetof(FanoutShared, ring));
		fs->lock = &(GetNamedLWLockTranche(FANOUT_TRANCHE))->lock;
		fs->size = (Size) tokenstore_redis_queue_size * 1024;
	}
}

bool
fanout_loaded(void)
{
	return fs != NULL;
}

/*
 * Whether commits queue their changes (the publisher is connected); read
 * without the lock: see xact.c for a change that misses the switch.
 */
bool
fanout_active(void)
{
	return fs != NULL && fs->stats.conn == FANOUT_UP;
}

/* ---- building messages (in the transaction: may allocate, may fail) ---- */

static const char *
current_datname(void)
{
	if (my_datname == NULL)
	{
		char	   *name = get_database_name(MyDatabaseId);

		if (name == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_DATABASE),
					 errmsg("database %u does not exist", MyDatabaseId)));
		my_datname = MemoryContextStrdup(TopMemoryContext, name);
	}
	return my_datname;
}

static FanoutMsg *
new_msg(FanoutKind kind, const char *datname, const char *user_id,
		int user_len, const char *value, int value_len)
{
	int			db_len = strlen(datname);
	Size		len = MAXALIGN(offsetof(FanoutMsg, data) + db_len + user_len + value_len);
	FanoutMsg  *m = MemoryContextAllocZero(TopTransactionContext, len);

	m->len = len;
	m->kind = kind;
	m->deadline = DEADLINE_NONE;
	m->db_len = db_len;
	m->user_len = user_len;
	m->value_len = value_len;
	memcpy(m->data, datname, db_len);
	if (user_len > 0)
		memcpy(m->data + db_len, user_id, user_len);
	if (value_len > 0)
		memcpy(m->data + db_len + user_len, value, value_len);
	return m;
}

/* A timestamp as JSON: ISO 8601 in UTC, or null. */
static void
append_json_time(StringInfo buf, TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(t) ||
		timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	appendStringInfo(buf, "\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\"",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * The value services read for a token: JSON of what token_check returns,
 * and the token's handle; expires_at is the absolute deadline (DEADLINE_NONE:
 * none).  In the current memory context.
 */
char *
fanout_token_json(const TokenKey *key, const char *user_id, int user_len,
				  Jsonb *info, TimestampTz created_at, TimestampTz expires_at,
				  int *len)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"user_id\": ");
	fanout_append_user_json(&buf, user_id, user_len);
	appendStringInfo(&buf, ", \"token_id\": \"%s\", \"info\": ", token_id_text(key));
	appendStringInfoString(&buf, info != NULL ?
						   JsonbToCString(NULL, &info->root, VARSIZE(info)) : "{}");
	appendStringInfoString(&buf, ", \"created_at\": ");
	append_json_time(&buf, created_at);
	appendStringInfoString(&buf, ", \"expires_at\": ");
	append_json_time(&buf, expires_at);
	appendStringInfoChar(&buf, '}');
	*len = buf.len;
	return buf.data;
}

/* Write a live token; deadline is when Redis drops the key. */
FanoutMsg *
fanout_msg_set(const TokenKey *key, const char *user_id, int user_len,
			   Jsonb *info, TimestampTz created_at, TimestampTz expires_at,
			   TimestampTz deadline)
{
	int			len;
	char	   *value = fanout_token_json(key, user_id, user_len, info,
										  created_at, expires_at, &len);
	FanoutMsg  *m = new_msg(FANOUT_SET, current_datname(), user_id, user_len,
							value, len);

	memcpy(m->hash, key->bytes, sizeof(m->hash));
	m->deadline = deadline;
	pfree(value);
	return m;
}

FanoutMsg *
fanout_msg_expire(const TokenKey *key, TimestampTz deadline)
{
	FanoutMsg  *m = new_msg(FANOUT_EXPIRE, current_datname(), NULL, 0, NULL, 0);

	memcpy(m->hash, key->bytes, sizeof(m->hash));
	m->deadline = deadline;
	return m;
}

FanoutMsg *
fanout_msg_remove(const TokenKey *key, const char *user_id, int user_len)
{
	FanoutMsg  *m = new_msg(FANOUT_REMOVE, current_datname(), user_id,
							user_len, NULL, 0);

	memcpy(m->hash, key->bytes, sizeof(m->hash));
	return m;
}

/* Every key of a database; datname NULL: the current one. */
FanoutMsg *
fanout_msg_purge(const char *datname)
{
	return new_msg(FANOUT_PURGE, datname ? datname : current_datname(),
				   NULL, 0, NULL, 0);
}

/* ---- appending (at commit: no allocation, no ERROR) ---- */

static void
ring_write(uint64 pos, const void *src, Size len)
{
	Size		off = pos % fs->size;
	Size		first = Min(len, fs->size - off);

	memcpy(fs->ring + off, src, first);
	if (first < len)
		memcpy(fs->ring, (const char *) src + first, len - first);
}

static void
ring_read(uint64 pos, void *dst, Size len)
{
	Size		off = pos % fs->size;
	Size		first = Min(len, fs->size - off);

	memcpy(dst, fs->ring + off, first);
	if (first < len)
		memcpy((char *) dst + first, fs->ring, len - first);
}

/*
 * Append a transaction's n messages as one pending block (at PRE_COMMIT).
 * False when the publisher is not connected (its next connection starts a
 * new epoch) or they do not fit (Redis has lost them: the epoch moves on).
 */
bool
fanout_reserve(FanoutMsg **msgs, int n, FanoutReservation *r)
{
	BlockHeader header = {sizeof(BlockHeader), BLOCK_PENDING, n, 0};
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	Assert(n > 0);
	for (i = 0; i < n; i++)
		header.len += msgs[i]->len;
	if (!fanout_active())
		return false;
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	if (fs->stats.conn != FANOUT_UP || header.len > fs->size - (fs->head - fs->tail))
	{
		bool		overflow = fs->stats.conn == FANOUT_UP;

		if (overflow)
			fs->stats.overflows++;
		LWLockRelease(fs->lock);
		if (overflow)
			fanout_lost();
		return false;
	}
	r->pos = fs->head;
	r->resets = fs->resets;
	ring_write(fs->head, &header, sizeof(header));
	fs->head += sizeof(header);
	for (i = 0; i < n; i++)
	{
		msgs[i]->committed_at = now;
		ring_write(fs->head, msgs[i], msgs[i]->len);
		fs->head += msgs[i]->len;
	}
	fs->stats.queued += n;
	LWLockRelease(fs->lock);
	return true;
}

/*
 * The transaction of a reserved block committed (at XACT_EVENT_COMMIT: no
 * allocation, no ERROR) or aborted.  A block the queue forgot meanwhile
 * (the connection was lost) is left alone.
 */
void
fanout_resolve(const FanoutReservation *r, bool committed)
{
	uint32		state = committed ? BLOCK_COMMITTED : BLOCK_ABORTED;
	Latch	   *publisher;

	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	if (r->resets == fs->resets)
		ring_write(r->pos + offsetof(BlockHeader, state), &state, sizeof(state));
	publisher = fs->publisher;
	LWLockRelease(fs->lock);
	if (publisher != NULL)
		SetLatch(publisher);
}

/*
 * Redis may have missed a change: every database must resynchronise.  A
 * new epoch is needed only once a resync has read the table in this one;
 * before that, the resyncs to come will see the change anyway.  So an
 * overflow storm bumps the epoch and wakes the launcher once, not at every
 * overflowing commit.
 */
void
fanout_lost(void)
{
	bool		bumped = false;

	if (fs == NULL)
		return;
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	if (fs->stats.epoch_read)
	{
		fs->stats.epoch++;
		fs->stats.epoch_read = false;
		bumped = true;
	}
	LWLockRelease(fs->lock);
	if (bumped)
		registry_wake_launcher();
}

/* ---- the publisher ---- */

void
fanout_publisher_attach(Latch *latch)
{
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	fs->publisher = latch;
	LWLockRelease(fs->lock);
}

static void
copy_text(char *dst, Size size, const char *src)
{
	strlcpy(dst, src ? src : "", size);
}

/*
 * Record the connection.  Only while connected do commits queue their
 * changes: what happens meanwhile reaches Redis by the resynchronisation
 * that every new connection starts (a new epoch).  So losing the connection
 * also forgets what is queued.
 */
void
fanout_set_conn(FanoutConn conn, const char *server, const char *error)
{
	bool		new_epoch;

	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	new_epoch = conn == FANOUT_UP && fs->stats.conn != FANOUT_UP;
	if (conn != FANOUT_UP)
	{
		fs->tail = fs->head;
		fs->block_off = 0;
		fs->resets++;
		fs->stats.queued = 0;
	}
	fs->stats.conn = conn;
	copy_text(fs->stats.server, sizeof(fs->stats.server), server);
	if (error != NULL)
		copy_text(fs->stats.last_error, sizeof(fs->stats.last_error), error);
	if (new_epoch)
	{
		fs->stats.epoch++;
		fs->stats.epoch_read = false;
	}
	LWLockRelease(fs->lock);
	if (new_epoch)
		registry_wake_launcher();
}

/*
 * Copy whole messages of committed blocks, at most max bytes, out of the
 * queue, up to the first pending block; aborted blocks are skipped.  While
 * a worker asks to hold, only those queued before its request; once those
 * are sent, the rest, with *held set: they must wait until the worker is
 * done.
 */
Size
fanout_take(char *buf, Size max, bool *held)
{
	Size		taken = 0;
	uint64		limit;

	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	if (fs->hold == HOLD_REQUESTED && fs->tail >= fs->hold_at)
		fs->hold = HOLD_HELD;
	*held = fs->hold == HOLD_HELD;
	limit = fs->hold == HOLD_REQUESTED ? fs->hold_at : fs->head;
	while (fs->tail < limit)
	{
		BlockHeader header;
		uint32		len;

		ring_read(fs->tail, &header, sizeof(header));
		if (header.state == BLOCK_PENDING)
			break;
		if (fs->block_off == 0)
			fs->block_off = sizeof(header);
		if (header.state == BLOCK_ABORTED)
			fs->stats.queued -= header.nmsgs;
		else
		{
			ring_read(fs->tail + fs->block_off, &len, sizeof(len));
			if (taken + len > max)
				break;
			ring_read(fs->tail + fs->block_off, buf + taken, len);
			taken += len;
			fs->block_off += len;
			fs->stats.queued--;
			if (fs->block_off < header.len)
				continue;
		}
		fs->tail += header.len;
		fs->block_off = 0;
	}
	LWLockRelease(fs->lock);
	return taken;
}

/* What the publisher holds back during a resync, for the stats. */
void
fanout_set_held(int64 count, TimestampTz oldest)
{
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	fs->stats.held = count;
	fs->stats.held_oldest = oldest;
	LWLockRelease(fs->lock);
}

void
fanout_count_sent(int64 commands, bool error)
{
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	fs->stats.sent += commands;
	if (error)
		fs->stats.errors++;
	LWLockRelease(fs->lock);
}

/* ---- resynchronisation (the per-database workers) ---- */

/* Whether the publisher is connected, and the epoch its databases must reach. */
bool
fanout_up(uint64 *epoch)
{
	bool		up;

	if (fs == NULL)
		return false;
	LWLockAcquire(fs->lock, LW_SHARED);
	up = fs->stats.conn == FANOUT_UP;
	*epoch = fs->stats.epoch;
	LWLockRelease(fs->lock);
	return up;
}

static void
release_at_exit(int code, Datum arg)
{
	fanout_release();
}

static bool
request_hold(void)
{
	bool		ok;

	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	ok = fs->stats.conn == FANOUT_UP && fs->hold == HOLD_NONE &&
		fs->publisher != NULL;
	if (ok)
	{
		fs->hold = HOLD_REQUESTED;
		fs->hold_at = fs->head;
		fs->hold_pid = MyProcPid;
		fs->stats.epoch_read = true;
		SetLatch(fs->publisher);
	}
	LWLockRelease(fs->lock);
	return ok;
}

/*
 * Have the publisher send what is queued and then stop reading.  False when
 * it cannot (not connected, or it does not answer in time).
 */
bool
fanout_hold(void)
{
	TimestampTz deadline = GetCurrentTimestamp() + HOLD_TIMEOUT_MS * (int64) 1000;

	if (!hold_cleanup_registered)
	{
		before_shmem_exit(release_at_exit, (Datum) 0);
		hold_cleanup_registered = true;
	}
	if (!request_hold())
		return false;
	for (;;)
	{
		HoldState	hold;
		FanoutConn	conn;

		LWLockAcquire(fs->lock, LW_SHARED);
		hold = fs->hold;
		conn = fs->stats.conn;
		LWLockRelease(fs->lock);
		if (hold == HOLD_HELD)
			return true;
		if (conn != FANOUT_UP || GetCurrentTimestamp() > deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	fanout_release();
	return false;
}

void
fanout_release(void)
{
	Latch	   *publisher = NULL;

	if (fs == NULL)
		return;
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	if (fs->hold != HOLD_NONE && fs->hold_pid == MyProcPid)
	{
		fs->hold = HOLD_NONE;
		publisher = fs->publisher;
	}
	LWLockRelease(fs->lock);
	if (publisher != NULL)
		SetLatch(publisher);
}

void
fanout_count_resync(void)
{
	LWLockAcquire(fs->lock, LW_EXCLUSIVE);
	fs->stats.resyncs++;
	LWLockRelease(fs->lock);
}

void
fanout_stats(FanoutStats *stats)
{
	memset(stats, 0, sizeof(*stats));
	if (fs == NULL)
		return;
	LWLockAcquire(fs->lock, LW_SHARED);
	*stats = fs->stats;
	stats->queue_bytes = fs->head - fs->tail;
	if (fs->tail < fs->head)
		ring_read(fs->tail + Max(fs->block_off, sizeof(BlockHeader)) +
				  offsetof(FanoutMsg, committed_at),
				  &stats->oldest, sizeof(stats->oldest));
	if (stats->held_oldest != 0 &&
		(stats->oldest == 0 || stats->held_oldest < stats->oldest))
		stats->oldest = stats->held_oldest;
	LWLockRelease(fs->lock);
}
