/*-------------------------------------------------------------------------
 *
 * xact.c
 *	  How changes to tokens reach the cache: queued in the transaction,
 *	  applied at commit, forgotten on abort.
 *
 * The commit protocol
 * -------------------
 * The table is the truth and the cache must never show other sessions
 * anything the table would not.  So nothing a transaction does touches the
 * cache before it commits:
 *
 * - Every change to a row of tokenstore.token, whether made by a tokenstore
 *   function, the worker's sweep or an operator's DML, fires the C trigger
 *   below (AFTER UPDATE/DELETE per row, AFTER TRUNCATE per statement; the
 *   triggers are ENABLE ALWAYS, so replicas applying changes fire them too),
 *   which queues an action: update the entry, remove it, or purge the
 *   database.  The UPDATE trigger's WHEN clause skips updates that only move
 *   last_used_at forward (flushes and table-only touches), so the cache's own
 *   writes do not come back to it.  DROP of the table (DROP EXTENSION) or of
 *   a database queues a purge through the object-access hook.
 * - token_make queues a fill of the new token (so the first check after a
 *   login is a hit), with the partition generation read at queue time: if the
 *   token is changed by someone else between our commit and our callback,
 *   the generation has moved and the fill stays out.
 * - A flush queues "mark clean" for each last use it wrote.
 * - Actions carry the subtransaction nesting level: a subtransaction that
 *   aborts drops its actions, one that commits hands them to its parent (the
 *   scheme of commands/async.c).
 * - At XACT_EVENT_COMMIT the commit is already visible; the actions are
 *   applied in order, each a partition lock and a hash operation: no
 *   allocation, no SPI, nothing that can fail.  Every update and removal
 *   bumps the partition's generation (see cache.c), so a backend that read
 *   the table before the commit cannot fill the cache with what it read.
 *   The transaction's row locks are released only after this, so a later
 *   change to the same row is applied after ours.
 * - A transaction that changed rows of the table (not merely recorded a
 *   use) reads tokens from the table, never the cache (which does not show
 *   its own changes yet), and no transaction that has written anything fills
 *   the cache (it might have inserted the row itself).
 * - With tokenstore.standby_cache, at XACT_EVENT_PRE_COMMIT the keys the
 *   transaction changed (or a purge) are logged to WAL for the hot
 *   standbys' caches (see standby.c), so the record precedes the commit
 *   record; nothing is logged after the commit.
 * - PREPARE TRANSACTION is refused once tokens changed: a prepared
 *   transaction commits later, in another process, without our callbacks.
 * - A transaction that queues more than PENDING_MAX actions purges its
 *   database at commit instead (invalidating more than needed is always
 *   safe), and drops the fills and mark-cleans, so memory stays bounded.
 *
 * The same queue carries the messages for Redis (see fanout.c): the trigger
 * also fires on INSERT and on changes of info for them, and at commit they
 * are appended to the shared queue in one piece.  A transaction that changed
 * tokens without queueing their messages (the mirror was off when the row
 * changed but is on at commit, or the queue was collapsed) tells the
 * publisher that Redis missed something, so every database resynchronises.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "cache.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_trigger.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "compat.h"
#include "executor/spi.h"
#include "fanout.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "registry.h"
#include "standby.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "xact.h"

#define PENDING_MAX 65536

typedef enum PendingKind
{
	PENDING_FILL,
	PENDING_UPDATE,
	PENDING_REMOVE,
	PENDING_CLEAN,
	PENDING_PURGE,
	PENDING_REGISTER,
	PENDING_FANOUT
} PendingKind;

typedef struct Pending
{
	PendingKind kind;
	int			nest_level;
	Oid			dbid;			/* PURGE and REGISTER */
	TokenKey	key;
	CacheValues values;			/* FILL and UPDATE */
	CachePayload *payload;		/* FILL and UPDATE; NULL: none to cache */
	bool		set_used;		/* UPDATE */
	TimestampTz last_used;		/* FILL, UPDATE */
	uint64		generation;		/* FILL; for CLEAN, the value flushed */
	FanoutMsg  *msg;			/* FANOUT */
} Pending;

static Pending *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static bool fanout_missed = false;
/* the transaction's messages wait in the queue for its commit */
static bool reserved = false;
static FanoutReservation reservation;
/* a row of the table changed in this transaction (not just a last use) */
static bool rows_changed = false;
static bool callbacks_registered = false;
static object_access_hook_type prev_object_access_hook = NULL;

PG_FUNCTION_INFO_V1(token_cache_sync);
PG_FUNCTION_INFO_V1(token_idle_sweep_at);
PG_FUNCTION_INFO_V1(token_sweep_at);

static void
forget_pending(void)
{
	pending = NULL;
	npending = 0;
	maxpending = 0;
	fanout_missed = false;
	rows_changed = false;
}

static void
apply_pending(void)
{
	int			i;

	for (i = 0; i < npending; i++)
	{
		Pending    *p = &pending[i];

		switch (p->kind)
		{
			case PENDING_FILL:
				(void) cache_fill(&p->key, &p->values, p->payload,
								  p->last_used, false, p->generation);
				break;
			case PENDING_UPDATE:
				if (cache_enabled())
					cache_update(&p->key, &p->values, p->payload,
								 p->set_used, p->last_used);
				break;
			case PENDING_REMOVE:
				if (cache_enabled())
					cache_remove(&p->key);
				break;
			case PENDING_CLEAN:
				cache_mark_clean(MyDatabaseId, &p->key, p->generation);
				break;
			case PENDING_PURGE:
				if (cache_enabled())
					cache_purge_db(p->dbid);
				if (p->dbid != MyDatabaseId)
					registry_forget_db(p->dbid);
				break;
			case PENDING_REGISTER:
				registry_register_db(p->dbid);
				break;
			case PENDING_FANOUT:
				break;
		}
	}
}

/*
 * Just before the commit: queue the transaction's messages for Redis, as a
 * block the publisher does not take until the commit says so (see
 * fanout.c for why not at the commit itself).
 */
static void
reserve_pending(void)
{
	FanoutMsg **msgs = palloc(sizeof(FanoutMsg *) * Max(npending, 1));
	int			n = 0;
	int			i;

	for (i = 0; i < npending; i++)
		if (pending[i].kind == PENDING_FANOUT)
			msgs[n++] = pending[i].msg;
	reserved = n > 0 && fanout_reserve(msgs, n, &reservation);
	pfree(msgs);
}

/*
 * Just before the commit: log what the standbys' caches must forget (see
 * standby.c), one record for this database's tokens and one per other
 * database purged (DROP DATABASE).
 */
static void
log_pending(void)
{
	TokenKey   *keys;
	int			nkeys = 0;
	bool		purge = false;
	int			i;

	if (npending == 0 || !standby_wants_changes())
		return;
	keys = palloc(sizeof(TokenKey) * npending);
	for (i = 0; i < npending; i++)
	{
		Pending    *p = &pending[i];

		if (p->kind == PENDING_UPDATE || p->kind == PENDING_REMOVE)
			keys[nkeys++] = p->key;
		else if (p->kind == PENDING_PURGE && p->dbid == MyDatabaseId)
			purge = true;
		else if (p->kind == PENDING_PURGE)
			standby_log_change(p->dbid, NULL, 0, true);
	}
	if (nkeys > 0 || purge)
		standby_log_change(MyDatabaseId, keys, purge ? 0 : nkeys, purge);
	pfree(keys);
}

/* The commit (or abort) of the reserved block, and a missed change. */
static void
resolve_pending(bool committed)
{
	if (reserved)
		fanout_resolve(&reservation, committed);
	reserved = false;
	if (committed && fanout_missed && fanout_active())
		fanout_lost();
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (npending > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has changed tokenstore tokens"),
						 errdetail("The token cache is updated when a transaction commits in its own session.")));
			break;
		case XACT_EVENT_PRE_COMMIT:
			reserve_pending();
			log_pending();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			apply_pending();
			resolve_pending(true);
			forget_pending();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			resolve_pending(false);
			forget_pending();
			break;
		default:
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			i;
	int			kept = 0;

	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (i = 0; i < npending; i++)
	{
		if (pending[i].nest_level < level)
			pending[kept++] = pending[i];
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			pending[i].nest_level = level - 1;
			pending[kept++] = pending[i];
		}
	}
	npending = kept;
}

/*
 * Make room in a full queue.  Fills and mark-cleans may be dropped (an entry
 * not cached, or left dirty and written again, is only slower), and so may
 * messages for Redis (which then resynchronises); purges of
 * other databases and registrations stay; the invalidations of this database
 * become one purge of it, at the lowest level of those it replaces (purging
 * more than needed is safe).
 */
static void
collapse_to_purge(void)
{
	int			level = GetCurrentTransactionNestLevel();
	bool		invalidates = false;
	int			i;
	int			kept = 0;

	for (i = 0; i < npending; i++)
	{
		Pending    *p = &pending[i];

		if (p->kind == PENDING_UPDATE || p->kind == PENDING_REMOVE ||
			(p->kind == PENDING_PURGE && p->dbid == MyDatabaseId))
		{
			level = Min(level, p->nest_level);
			invalidates = true;
		}
		else if (p->kind == PENDING_PURGE || p->kind == PENDING_REGISTER)
			pending[kept++] = *p;
		else if (p->kind == PENDING_FANOUT)
			fanout_missed = true;
	}
	npending = kept;
	if (!invalidates)
		return;
	pending[npending].kind = PENDING_PURGE;
	pending[npending].nest_level = level;
	pending[npending].dbid = MyDatabaseId;
	npending++;
}

static void
register_callbacks(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		callbacks_registered = true;
	}
}

/* A zeroed slot at the end of the queue. */
static Pending *
queue(PendingKind kind)
{
	Pending    *p;

	register_callbacks();
	if (npending >= maxpending)
	{
		int			newmax = Max(16, maxpending * 2);

		if (pending == NULL)
			pending = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(Pending));
		else
			pending = repalloc(pending, newmax * sizeof(Pending));
		maxpending = newmax;
	}
	if (npending >= PENDING_MAX)
		collapse_to_purge();
	p = &pending[npending++];
	memset(p, 0, sizeof(*p));
	p->kind = kind;
	p->nest_level = GetCurrentTransactionNestLevel();
	p->dbid = MyDatabaseId;
	return p;
}

/*
 * Whether changes of tokens are queued for a cache: this server's, or its
 * standbys'.
 */
static bool
invalidations_wanted(void)
{
	return cache_enabled() || standby_wants_changes();
}

/* The transaction changed rows of the table: at its end this is forgotten. */
static void
mark_rows_changed(void)
{
	register_callbacks();
	rows_changed = true;
}

bool
xact_has_token_changes(void)
{
	return rows_changed;
}

/*
 * Whether a check may fill the cache with what it reads from the table: not
 * in a transaction that has written anything (it might have inserted the
 * row itself).
 */
bool
xact_may_fill(void)
{
	return !rows_changed && !TransactionIdIsValid(GetTopTransactionIdIfAny());
}

/*
 * A copy of a payload (its varlenas in any form, even toasted) that lives
 * until the commit, in plain form; NULL if the cache could not hold it.
 */
static CachePayload *
payload_copy(const CachePayload *payload)
{
	Size		info_size = toast_raw_datum_size(PointerGetDatum(payload->info));
	Size		data_size = payload->data == NULL ? 0 :
		toast_raw_datum_size(PointerGetDatum(payload->data));
	MemoryContext old;
	CachePayload *copy;

	if (!cache_payload_fits(info_size, data_size))
		return NULL;
	old = MemoryContextSwitchTo(TopTransactionContext);
	copy = palloc(sizeof(*copy));
	copy->created_at = payload->created_at;
	copy->info = (Jsonb *) pg_detoast_datum_copy((struct varlena *) payload->info);
	copy->data = payload->data == NULL ? NULL :
		(bytea *) pg_detoast_datum_copy((struct varlena *) payload->data);
	MemoryContextSwitchTo(old);
	return copy;
}

void
xact_queue_fill(const TokenKey *key, const CacheValues *values,
				const CachePayload *payload, TimestampTz last_used)
{
	Pending    *p;

	if (!cache_enabled())
		return;
	p = queue(PENDING_FILL);
	p->key = *key;
	p->values = *values;
	p->payload = payload ? payload_copy(payload) : NULL;
	p->last_used = last_used;
	p->generation = cache_generation(key);
}

/* Redis misses a change of this transaction: say so at commit. */
static void
note_missed(void)
{
	register_callbacks();
	fanout_missed = true;
}

/*
 * Whether the transaction's changes should go to Redis; when not, remember
 * that one went unsent (in case the mirror is on by commit time).
 */
static bool
fanout_wanted(void)
{
	if (fanout_active())
		return true;
	if (fanout_loaded())
		note_missed();
	return false;
}

static void
queue_fanout(FanoutMsg *msg)
{
	if (msg->len > FANOUT_MSG_MAX)
		fanout_missed = true;
	else
		queue(PENDING_FANOUT)->msg = msg;
}

/* A flushed last use (the packed value observed): mark it clean. */
void
xact_queue_clean(const TokenKey *key, uint64 observed)
{
	Pending    *p = queue(PENDING_CLEAN);

	p->key = *key;
	p->generation = observed;
}

/* A use written to the table moved an idle deadline. */
void
xact_queue_expire(const TokenKey *key, TimestampTz deadline)
{
	if (fanout_wanted())
		queue_fanout(fanout_msg_expire(key, deadline));
}

/* ---- the triggers on tokenstore.token ---- */

static void
check_trigger_call(FunctionCallInfo fcinfo, const char *name)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s must be called as a trigger", name)));
}

/*
 * The number of a column of the table; an error, never a wild read, if the
 * table has no such column (a library newer than the table's definition).
 */
static int
column_number(TriggerData *trigdata, const char *name)
{
	int			attnum = SPI_fnumber(trigdata->tg_relation->rd_att, name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no column \"%s\"",
						RelationGetRelationName(trigdata->tg_relation), name),
				 errhint("Run ALTER EXTENSION tokenstore UPDATE in this database.")));
	return attnum;
}

static Datum
column(TriggerData *trigdata, HeapTuple tuple, const char *name, bool *isnull)
{
	return heap_getattr(tuple, column_number(trigdata, name),
						trigdata->tg_relation->rd_att, isnull);
}

/* A column that the table of an older version lacks: NULL there. */
static Datum
newer_column(TriggerData *trigdata, HeapTuple tuple, const char *name,
			 bool *isnull)
{
	int			attnum = SPI_fnumber(trigdata->tg_relation->rd_att, name);

	*isnull = true;
	if (attnum <= 0)
		return (Datum) 0;
	return heap_getattr(tuple, attnum, trigdata->tg_relation->rd_att, isnull);
}


static void
key_of(TriggerData *trigdata, HeapTuple tuple, TokenKey *key)
{
	bool		isnull;
	bytea	   *hash = DatumGetByteaPP(column(trigdata, tuple, "token_hash", &isnull));

	/* the table's CHECK constraint guarantees 32 bytes */
	memcpy(key->bytes, VARDATA_ANY(hash), sizeof(key->bytes));
}

static TimestampTz
timestamp_of(TriggerData *trigdata, HeapTuple tuple, const char *name,
			 TimestampTz if_null)
{
	bool		isnull;
	Datum		d = column(trigdata, tuple, name, &isnull);

	return isnull ? if_null : DatumGetTimestampTz(d);
}

/* The tuple with one column set, for a BEFORE trigger to return. */
static HeapTuple
with_column(TriggerData *trigdata, HeapTuple tuple, const char *name,
			Datum value, bool isnull)
{
	int			attnum = column_number(trigdata, name);

	return heap_modify_tuple_by_cols(tuple, trigdata->tg_relation->rd_att,
									 1, &attnum, &value, &isnull);
}

/*
 * (SQL objects of 1.0 and 1.1.)
 * BEFORE INSERT, and BEFORE an UPDATE that moves the idle deadline earlier:
 * idle_sweep_at becomes the idle deadline.  Uses only move the real deadline
 * later, so it stays a lower bound that the sweep moves forward; no index
 * covers last_used_at, so a flush is a HOT update.
 */
Datum
token_idle_sweep_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	Datum		idle;
	Datum		value = (Datum) 0;
	bool		isnull;

	check_trigger_call(fcinfo, "token_idle_sweep_at");
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	idle = column(trigdata, tuple, "idle_timeout", &isnull);
	if (!isnull)
	{
		TimestampTz used = timestamp_of(trigdata, tuple, "last_used_at",
										DT_NOBEGIN);

		value = TimestampTzGetDatum(token_deadline(DEADLINE_NONE,
												   DatumGetIntervalP(idle)->time,
												   used));
	}
	return PointerGetDatum(with_column(trigdata, tuple, "idle_sweep_at",
									   value, isnull));
}

static void
values_of(TriggerData *trigdata, HeapTuple tuple, CacheValues *values)
{
	bool		isnull;
	Datum		user = column(trigdata, tuple, "user_id", &isnull);
	text	   *user_id = isnull ? NULL : DatumGetTextPP(user);
	Datum		idle = column(trigdata, tuple, "idle_timeout", &isnull);

	memset(values, 0, sizeof(*values));
	/* the table's CHECK constraint guarantees at most 64 bytes */
	if (user_id != NULL)
	{
		values->user_len = Min(VARSIZE_ANY_EXHDR(user_id), CACHE_USER_ID_MAX);
		memcpy(values->user_id, VARDATA_ANY(user_id), values->user_len);
	}
	values->expires_at = timestamp_of(trigdata, tuple, "expires_at", DEADLINE_NONE);
	values->idle_us = isnull ? 0 : DatumGetIntervalP(idle)->time;
}

/*
 * BEFORE INSERT: sweep_at becomes the row's deadline (NULL: none).  BEFORE
 * an UPDATE of a deadline (or of a use, moved back by hand): it becomes the
 * new deadline only when that is earlier.  So sweep_at stays a lower bound
 * of the deadline, and a save or a refresh that extends a token changes no
 * indexed column: a HOT update.  The sweep moves a bound that came due on a
 * live row to its real deadline.
 */
Datum
token_sweep_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	CacheValues values;
	TimestampTz deadline;

	check_trigger_call(fcinfo, "token_sweep_at");
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	values_of(trigdata, tuple, &values);
	deadline = token_deadline(values.expires_at, values.idle_us,
							  timestamp_of(trigdata, tuple, "last_used_at",
										   DT_NOBEGIN));
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) &&
		timestamp_of(trigdata, tuple, "sweep_at", DEADLINE_NONE) <= deadline)
		return PointerGetDatum(tuple);
	return PointerGetDatum(with_column(trigdata, tuple, "sweep_at",
									   TimestampTzGetDatum(deadline),
									   deadline == DEADLINE_NONE));
}

/*
 * When Redis is to drop the row's key: at the earlier of its deadlines,
 * the idle one judged on the latest use, cached or written.
 */
static TimestampTz
trigger_deadline(TriggerData *trigdata, HeapTuple tuple, const TokenKey *key,
			 const CacheValues *values)
{
	TimestampTz used;

	if (values->idle_us == 0)
		return values->expires_at;
	used = timestamp_of(trigdata, tuple, "last_used_at", DT_NOBEGIN);
	if (cache_enabled())
		used = Max(used, cache_last_used(key));
	return token_deadline(values->expires_at, values->idle_us, used);
}

static void
queue_fanout_set(TriggerData *trigdata, HeapTuple tuple, const TokenKey *key,
				 const CacheValues *values)
{
	bool		isnull;
	Datum		info = column(trigdata, tuple, "info", &isnull);

	queue_fanout(fanout_msg_set(key, values->user_id, values->user_len,
								isnull ? NULL : DatumGetJsonbP(info),
								timestamp_of(trigdata, tuple, "created_at", DT_NOBEGIN),
								values->expires_at,
								trigger_deadline(trigdata, tuple, key, values)));
}

static void
queue_fanout_remove(const TokenKey *key, const CacheValues *values)
{
	queue_fanout(fanout_msg_remove(key, values->user_id, values->user_len));
}

/* A row's payload, for the cache, in memory that lasts until the commit. */
static CachePayload *
payload_of(TriggerData *trigdata, HeapTuple tuple)
{
	CachePayload payload;
	bool		isnull;
	Datum		data = newer_column(trigdata, tuple, "data", &isnull);

	payload.data = isnull ? NULL : (bytea *) DatumGetPointer(data);
	payload.info = (Jsonb *) DatumGetPointer(column(trigdata, tuple, "info", &isnull));
	payload.created_at = timestamp_of(trigdata, tuple, "created_at", DT_NOBEGIN);
	return payload_copy(&payload);
}

/*
 * An UPDATE of a row: its new values and payload for the cache entry, or a
 * new key; and the new value for Redis.  (The trigger's WHEN clause lets
 * through only changes of what the cache or Redis hold.)
 */
static void
queue_update(TriggerData *trigdata)
{
	HeapTuple	old_row = trigdata->tg_trigtuple;
	HeapTuple	new_row = trigdata->tg_newtuple;
	TokenKey	old_key;
	TokenKey	new_key;
	CacheValues old_values;
	CacheValues new_values;
	TimestampTz new_used = timestamp_of(trigdata, new_row, "last_used_at", DT_NOBEGIN);
	bool		rekeyed;
	bool		used_back;
	Pending    *p;

	key_of(trigdata, old_row, &old_key);
	key_of(trigdata, new_row, &new_key);
	values_of(trigdata, old_row, &old_values);
	values_of(trigdata, new_row, &new_values);
	rekeyed = memcmp(old_key.bytes, new_key.bytes, sizeof(old_key.bytes)) != 0;
	used_back = new_used < timestamp_of(trigdata, old_row, "last_used_at", DT_NOBEGIN);

	if (invalidations_wanted() && rekeyed)
		queue(PENDING_REMOVE)->key = old_key;
	else if (invalidations_wanted())
	{
		p = queue(PENDING_UPDATE);
		p->key = new_key;
		p->values = new_values;
		p->payload = payload_of(trigdata, new_row);
		p->set_used = used_back;
		p->last_used = new_used;
	}

	if (!fanout_wanted())
		return;
	if (rekeyed || old_values.user_len != new_values.user_len ||
		memcmp(old_values.user_id, new_values.user_id, old_values.user_len) != 0)
		queue_fanout_remove(&old_key, &old_values);
	queue_fanout_set(trigdata, new_row, &new_key, &new_values);
}

static void
queue_insert(TriggerData *trigdata)
{
	TokenKey	key;
	CacheValues values;

	if (!fanout_wanted())
		return;
	key_of(trigdata, trigdata->tg_trigtuple, &key);
	values_of(trigdata, trigdata->tg_trigtuple, &values);
	queue_fanout_set(trigdata, trigdata->tg_trigtuple, &key, &values);
}

static void
queue_delete(TriggerData *trigdata)
{
	TokenKey	key;
	CacheValues values;

	key_of(trigdata, trigdata->tg_trigtuple, &key);
	if (invalidations_wanted())
		queue(PENDING_REMOVE)->key = key;
	if (!fanout_wanted())
		return;
	values_of(trigdata, trigdata->tg_trigtuple, &values);
	queue_fanout_remove(&key, &values);
}

/* Empty the database's part of the cache and of Redis (TRUNCATE, DROP). */
static void
queue_purge(Oid dbid)
{
	if (dbid == MyDatabaseId)
		mark_rows_changed();
	if (invalidations_wanted() || dbid != MyDatabaseId)
		queue(PENDING_PURGE)->dbid = dbid;
	if (fanout_wanted())
		queue_fanout(fanout_msg_purge(dbid == MyDatabaseId ? NULL :
									  get_database_name(dbid)));
}

Datum
token_cache_sync(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent event;

	check_trigger_call(fcinfo, "token_cache_sync");
	mark_rows_changed();
	if (!invalidations_wanted() && !fanout_loaded())
		return PointerGetDatum(NULL);

	event = trigdata->tg_event;
	if (TRIGGER_FIRED_BY_TRUNCATE(event))
		queue_purge(MyDatabaseId);
	else if (TRIGGER_FIRED_BY_INSERT(event))
		queue_insert(trigdata);
	else if (TRIGGER_FIRED_BY_DELETE(event))
		queue_delete(trigdata);
	else if (TRIGGER_FIRED_BY_UPDATE(event))
		queue_update(trigdata);
	return PointerGetDatum(NULL);
}

/* ---- DDL: creating the extension, dropping its table or a database ---- */

static bool
is_token_table(Oid relid)
{
	char	   *name = get_rel_name(relid);
	char	   *schema;

	if (name == NULL || strcmp(name, "token") != 0)
		return false;
	schema = get_namespace_name(get_rel_namespace(relid));
	return schema != NULL && strcmp(schema, "tokenstore") == 0;
}

/* The table a trigger belongs to (InvalidOid if none is found). */
static Oid
trigger_table(Oid trigger)
{
	Relation	rel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			relid = InvalidOid;

	ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(trigger));
	scan = systable_beginscan(rel, TriggerOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		relid = ((Form_pg_trigger) GETSTRUCT(tuple))->tgrelid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return relid;
}

static void
object_access(ObjectAccessType access, Oid classId, Oid objectId,
			  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access == OAT_DROP && classId == DatabaseRelationId)
		queue_purge(objectId);
	else if (access == OAT_DROP && classId == RelationRelationId &&
			 subId == 0 && is_token_table(objectId))
		queue_purge(MyDatabaseId);
	else if (access == OAT_POST_ALTER && classId == TriggerRelationId &&
			 !creating_extension && fanout_loaded() &&
			 is_token_table(trigger_table(objectId)))
	{
		/*
		 * A trigger of the table was enabled or disabled, as a restore with
		 * pg_restore --disable-triggers does: rows may have come and gone
		 * unseen, so Redis is written again.  Not when the extension's own
		 * scripts set its triggers up: no row went by unseen, and every
		 * database would be written again for nothing.
		 */
		note_missed();
	}
	else if (access == OAT_POST_ALTER && classId == DatabaseRelationId &&
			 fanout_loaded())
	{
		/* a renamed database's keys change name: Redis is written again */
		note_missed();
	}
	else if (access == OAT_POST_CREATE && classId == DatabaseRelationId)
	{
		/* a copy of a database with tokenstore has it from the start */
		queue(PENDING_REGISTER)->dbid = objectId;
	}
	else if (access == OAT_POST_CREATE && classId == ExtensionRelationId)
	{
		/*
		 * The new extension's row is not visible yet, so its name cannot be
		 * read here: any CREATE EXTENSION wakes the worker, which finds out.
		 */
		queue(PENDING_REGISTER);
	}
}

void
xact_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = object_access;
}
