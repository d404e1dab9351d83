/*-------------------------------------------------------------------------
 *
 * redis_resync.c
 *	  Resynchronisation: a database's worker makes Redis hold exactly the
 *	  live tokens of its database, after Redis may have missed something
 *	  (see fanout.c for the epoch, and for the hold that orders what the
 *	  publisher sends after what this writes).
 *
 * It writes every live token a page at a time (each page read on the latest
 * snapshot), then takes out of the user sets the tokens that are not live
 * (or not that user's), and deletes the keys of tokens that are not live:
 * what was true in Redis stays there throughout, so a reader never sees a
 * live token missing while a resync runs.  The publisher holds back the
 * writes committed meanwhile, but sends revocations (and expiries brought
 * forward, such as a rotation's grace) at once; so after each page has been
 * written, the page's tokens are looked up again: those revoked since the
 * page was read are deleted, and those whose deadline came nearer get it
 * (PEXPIREAT ... LT).  A change that committed before that second look is
 * caught by it, one that committed after reaches Redis after the page's
 * writes did.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fanout.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "redis.h"
#include "redis_client.h"
#include "storage/latch.h"
#include "store.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define RESYNC_PAGE			1000

/* The database being written, as in its keys. */
static const char *resync_db;
static int	resync_dblen;

/* The hash at the end of a token key; false if it does not end in one. */
static bool
key_hash(const redisReply *key, TokenKey *out)
{
	if (key->len < 2 * PG_SHA256_DIGEST_LENGTH)
		return false;
	return hex_parse(key->str + key->len - 2 * PG_SHA256_DIGEST_LENGTH,
					 PG_SHA256_DIGEST_LENGTH, out->bytes);
}

/*
 * Which of n keys belong to live tokens (of user, unless NULL), read on the
 * latest snapshot.
 */
static void
live_among(const TokenKey *keys, int n, const char *user, bool *live)
{
	store_begin();
	store_live_among(keys, n, user, GetCurrentTimestamp(), live, NULL);
	store_end();
}

/*
 * Which of n token key names are not those of live tokens (of user, unless
 * NULL): drop[i] for keys[i].
 */
static void
find_dead(redisReply **keys, int n, const char *user, bool *drop)
{
	TokenKey   *hashes = palloc(sizeof(TokenKey) * Max(n, 1));
	bool	   *live = palloc(sizeof(bool) * Max(n, 1));
	int		   *index = palloc(sizeof(int) * Max(n, 1));
	int			nhashes = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		drop[i] = true;
		if (key_hash(keys[i], &hashes[nhashes]))
			index[nhashes++] = i;
	}
	if (nhashes > 0)
		live_among(hashes, nhashes, user, live);
	for (i = 0; i < nhashes; i++)
		drop[index[i]] = !live[i];
	pfree(hashes);
	pfree(live);
	pfree(index);
}

/* KeepFunc: drop the keys whose tokens are not live. */
static void
drop_dead(redisReply **keys, int n, bool *drop)
{
	find_dead(keys, n, NULL, drop);
}

/* A user set, and the user its name ends in. */
typedef struct UserSet
{
	const char *key;
	size_t		keylen;
	const char *user;
} UserSet;

/* ScanFunc over a user set's members: take out those not live for it. */
static bool
prune_members(Pipeline *p, redisReply **members, int n, void *arg)
{
	UserSet    *set = arg;
	bool	   *drop = palloc(sizeof(bool) * Max(n, 1));
	int			i;

	find_dead(members, n, set->user, drop);
	for (i = 0; i < n; i++)
	{
		const char *srem[] = {"SREM", set->key, members[i]->str};
		size_t		lens[3] = {4, set->keylen, members[i]->len};

		if (drop[i])
			pipe_send(p, 3, srem, lens);
	}
	pfree(drop);
	return !p->failed;
}

/* ScanFunc over the user sets (arg: the length of their names' prefix). */
static bool
prune_sets(Pipeline *p, redisReply **sets, int n, void *arg)
{
	size_t		prefix = *(size_t *) arg;
	int			i;

	for (i = 0; i < n; i++)
	{
		UserSet		set = {sets[i]->str, sets[i]->len, sets[i]->str + prefix};

		if (sets[i]->len > prefix &&
			!redis_scan(p, set.key, NULL, prune_members, &set))
			return false;
	}
	return true;
}

/*
 * A test's way to hold a resynchronisation between two pages while it
 * revokes tokens (tokenstore.debug_pause_resync); never set in production.
 */
static void
pause_if_asked(void)
{
	while (tokenstore_debug_pause_resync && !ShutdownRequestPending)
	{
		pgstat_report_activity(STATE_RUNNING, "tokenstore: resynchronisation paused");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/*
 * After a page's writes were acknowledged: delete the tokens of the page
 * that were revoked since the page was read, and bring forward the expiry
 * of those whose deadline came nearer.
 */
static bool
recheck_page(Pipeline *p, List *rows)
{
	int			n = list_length(rows);
	TokenKey   *keys = palloc(sizeof(TokenKey) * Max(n, 1));
	bool	   *live = palloc(sizeof(bool) * Max(n, 1));
	TimestampTz *deadlines = palloc(sizeof(TimestampTz) * Max(n, 1));
	ListCell   *lc;
	int			i = 0;

	if (!pipe_wait(p))
		return false;
	foreach(lc, rows)
		keys[i++] = ((TokenRow *) lfirst(lc))->key;
	store_begin();
	store_live_among(keys, n, NULL, GetCurrentTimestamp(), live, deadlines);
	store_end();
	i = 0;
	foreach(lc, rows)
	{
		TokenRow   *row = lfirst(lc);

		if (!live[i])
			redis_send_drop(p, resync_db, resync_dblen, row->key.bytes,
							row->user_id, row->user_id ? strlen(row->user_id) : 0);
		else if (deadlines[i] < row_deadline(row))
			redis_send_cap(p, resync_db, resync_dblen, row->key.bytes,
						   deadlines[i]);
		i++;
	}
	return pipe_wait(p);
}

/*
 * Write one page of live tokens; the key of the last in *after, and
 * whether a full page was read (more may follow).
 */
static bool
write_page(Pipeline *p, TokenKey *after, bool *more)
{
	List	   *rows;
	ListCell   *lc;

	store_begin();
	rows = store_live_page(after, GetCurrentTimestamp(), RESYNC_PAGE);
	store_end();
	foreach(lc, rows)
	{
		TokenRow   *row = lfirst(lc);
		int			user_len = row->user_id ? strlen(row->user_id) : 0;
		int			len;
		char	   *value = fanout_token_json(&row->key, row->user_id, user_len,
											  row->info, row->created_at,
											  row->expires_at, &len);

		redis_send_set(p, resync_db, resync_dblen, row->key.bytes, row->user_id,
					   user_len, value, len, row_deadline(row));
		*after = row->key;
	}
	*more = list_length(rows) == RESYNC_PAGE;
	return recheck_page(p, rows);
}

/* Write every live token of the database, a page at a time. */
static bool
write_live(Pipeline *p)
{
	MemoryContext page_cxt = AllocSetContextCreate(CurrentMemoryContext,
												   "tokenstore resync page",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(page_cxt);
	TokenKey	after = {{0}};
	bool		more = true;
	bool		ok = true;

	while (ok && more)
	{
		ok = write_page(p, &after, &more);
		MemoryContextReset(page_cxt);
		CHECK_FOR_INTERRUPTS();
		pause_if_asked();
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(page_cxt);
	return ok;
}

static bool
resync(Pipeline *p)
{
	StringInfoData match;
	size_t		prefix;

	if (!write_live(p))
		return false;
	initStringInfo(&match);
	redis_user_key(&match, resync_db, resync_dblen, "", 0);
	prefix = match.len;
	redis_pattern(&match, resync_db, resync_dblen, "user:*");
	if (!redis_scan(p, NULL, match.data, prune_sets, &prefix))
		return false;
	redis_pattern(&match, resync_db, resync_dblen, "token:*");
	return redis_scan_delete(p, match.data, drop_dead);
}

/*
 * Make Redis hold exactly the live tokens of this database.  Runs in a
 * transaction of the worker; false (logged) when Redis could not be reached
 * or the publisher would not hold.
 */
bool
redis_resync_db(void)
{
	char		err[REDIS_ERRLEN];
	char		server[REDIS_SERVER_LEN];
	Pipeline	p;
	volatile bool done = false;

	memset(&p, 0, sizeof(p));
	p.c = redis_connect(err, server, sizeof(server));
	if (p.c == NULL)
	{
		ereport(LOG,
				(errmsg("tokenstore could not resynchronise Redis: %s", err)));
		return false;
	}
	if (!fanout_hold())
	{
		redisFree(p.c);
		return false;
	}
	resync_db = get_database_name(MyDatabaseId);
	resync_dblen = strlen(resync_db);
	PG_TRY();
	{
		done = resync(&p);
	}
	PG_FINALLY();
	{
		redisFree(p.c);
		fanout_release();
	}
	PG_END_TRY();
	if (!done)
		ereport(LOG,
				(errmsg("tokenstore could not resynchronise Redis: %s", p.err)));
	else
		fanout_count_resync();
	return done;
}
