/*-------------------------------------------------------------------------
 *
 * redis_publisher.c
 *	  The publisher: the process that sends the queued changes (fanout.c) to
 *	  the Redis master and makes sure that master still holds them.
 *
 * The publisher connects to no database.  It copies batches of messages out
 * of the queue and pipelines their commands; no lock is held while it talks
 * to Redis, and no backend ever waits for it.  Any failure (a refused or
 * broken connection, a timeout, a master that became a replica) drops the
 * connection; reconnecting starts a new epoch, after which every database's
 * worker writes its live tokens again and removes keys that match none.
 *
 * What it checks, so that Redis never answers otherwise than PostgreSQL:
 *
 * - Every second (busy or not): that the server is still a master (ROLE),
 *   and that the marker key it wrote on connecting is still there.  A Redis
 *   that lost its data (FLUSHALL, FLUSHDB) has lost the marker too: the
 *   marker is written again and a new epoch begins.  With sentinels, it also
 *   asks them each second which master they name.
 * - With sentinels, it keeps a subscription to "+switch-master" and wakes
 *   on it, so that a failover is followed as soon as it is announced.
 * - A write whose deadline has passed by the time the publisher takes it
 *   (a refresh to zero, an expiry set in the past) ends the token: it is a
 *   revocation like a delete, in everything below.
 * - Revocations sent to a master that was then demoted may never have
 *   reached its successor, nor those of a batch that failed (READONLY, a
 *   broken connection): the publisher keeps the revocations and purges it
 *   took in the last RECENT_MS, sent or not, and sends them again on every
 *   new connection, before anything else.
 * - While a database's worker resynchronises, the publisher holds back the
 *   changes committed meanwhile (they might be older than what the resync
 *   writes; see fanout.c) but not the revocations: those are sent at once,
 *   and the held writes they supersede are dropped when the hold ends, so
 *   that a revoked token never waits for a resync to leave Redis.  A held
 *   write with a deadline also brings the key's expiry forward at once
 *   (PEXPIREAT ... LT: it can shorten, never extend nor create), so that a
 *   rotation's grace ends in Redis when it ends in PostgreSQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <poll.h>

#include "fanout.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "redis.h"
#include "redis_client.h"
#include "registry.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tokenstore.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define PUBLISH_BUFFER		(512 * 1024)
/* changes kept unsent while a resynchronisation holds, at most */
#define HELD_MAX			(256 * 1024 * 1024)
/* revocations kept to be sent again to a new master: this long, this much */
#define RECENT_MS			30000
#define RECENT_MAX			(32 * 1024 * 1024)
/* replies read after this many pipelined commands */
#define PIPELINE_DEPTH		10000
#define BACKOFF_MIN_MS		100
#define BACKOFF_MAX_MS		5000
#define CHECK_EVERY_MS		1000
/* after a small batch, let changes gather this long: fewer, fuller batches */
#define GATHER_MS			2

/* The publisher's connection and what it remembers between rounds. */
typedef struct Publisher
{
	redisContext *c;
	char		server[REDIS_SERVER_LEN];
	char		last_logged[REDIS_ERRLEN];
	long		backoff;
	TimestampTz next_check;		/* of the role, the marker, the sentinels */
	char		marker[64];		/* what this connection wrote as the marker */
	redisContext *sentinel;		/* subscribed to failovers, or NULL */
	TimestampTz next_subscribe;
	char	   *settings;		/* the settings it connected with */
	char	   *buf;
	StringInfoData held;		/* taken while a resync holds */
	int64		held_writes;	/* what of it waits: writes, not revocations */
	TimestampTz held_oldest;
	StringInfoData recent;		/* revocations sent lately */
	MemoryContext cxt;
} Publisher;

/* A key of the held changes: a token of a database, or (purge) all of them. */
typedef struct GoneKey
{
	char		db[NAMEDATALEN];
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	bool		purge;
} GoneKey;

typedef struct GoneEntry
{
	GoneKey		key;
	Size		offset;			/* of the last removal in the held changes */
} GoneEntry;

PGDLLEXPORT void tokenstore_publisher_main(Datum arg);

static TimestampTz
ms_after_now(int64 ms)
{
	return GetCurrentTimestamp() + ms * 1000;
}

/* every message m of the bytes at start, size bytes long */
#define for_each_msg(m, start, size) \
	for (m = (FanoutMsg *) (start); (char *) m < (start) + (size); \
		 m = (FanoutMsg *) ((char *) m + m->len))

static bool
is_revocation(const FanoutMsg *m)
{
	return m->kind == FANOUT_REMOVE || m->kind == FANOUT_PURGE;
}

/*
 * A write whose deadline has passed ends its token: make it the revocation
 * it is (redis_send_msg would send it as one anyway), so that it is never
 * held, supersedes the held writes before it, and is replayed.
 */
static void
mark_ended(char *buf, Size len)
{
	TimestampTz now = GetCurrentTimestamp();
	FanoutMsg  *m;

	for_each_msg(m, buf, len)
	{
		if (m->kind == FANOUT_SET && m->deadline <= now)
			m->kind = FANOUT_REMOVE;
	}
}

static void
forget_held(Publisher *pub)
{
	resetStringInfo(&pub->held);
	pub->held_writes = 0;
	pub->held_oldest = 0;
	fanout_set_held(0, 0);
}

/* ---- connection ---- */

/* Drop the connection; log the reason once, not at every retry. */
static void
lost(Publisher *pub, const char *err)
{
	if (pub->c != NULL)
		redisFree(pub->c);
	pub->c = NULL;
	forget_held(pub);
	fanout_set_conn(FANOUT_DOWN, NULL, err);
	if (strcmp(err, pub->last_logged) == 0)
		return;
	ereport(LOG,
			(errmsg("tokenstore cannot mirror tokens to Redis: %s", err),
			 errhint("Check tokenstore.redis_url and tokenstore.redis_sentinels; tokenstore retries, and PostgreSQL works as usual meanwhile.")));
	strlcpy(pub->last_logged, err, REDIS_ERRLEN);
}

static void
wait_ms(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* The settings the connection depends on, in TopMemoryContext. */
static char *
settings_text(void)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	char	   *text = psprintf("%s\n%s\n%s\n%s\n%d\n%s\n%s\n%s", tokenstore_redis_url,
								tokenstore_redis_sentinels,
								tokenstore_redis_master_name,
								tokenstore_redis_prefix, tokenstore_redis_timeout,
								tokenstore_redis_tls_ca_file,
								tokenstore_redis_tls_cert_file,
								tokenstore_redis_tls_key_file);

	MemoryContextSwitchTo(old);
	return text;
}

static void
drop_subscription(Publisher *pub)
{
	if (pub->sentinel != NULL)
		redisFree(pub->sentinel);
	pub->sentinel = NULL;
}

/* After a reload: start over if the Redis settings changed. */
static void
reconfigure(Publisher *pub)
{
	char	   *now = settings_text();

	if (pub->settings == NULL || strcmp(now, pub->settings) != 0)
	{
		/* another server or prefix: it gets everything, by a new epoch */
		if (pub->c != NULL)
			redisFree(pub->c);
		pub->c = NULL;
		forget_held(pub);
		fanout_set_conn(FANOUT_DOWN, NULL, NULL);
		drop_subscription(pub);
		pub->last_logged[0] = '\0';
		pub->backoff = BACKOFF_MIN_MS;
	}
	if (pub->settings != NULL)
		pfree(pub->settings);
	pub->settings = now;
}

/* Run a pipeline's commands and count them; false (connection lost) on failure. */
static bool
finish(Publisher *pub, Pipeline *p)
{
	(void) pipe_wait(p);
	fanout_count_sent(p->sent, p->errors > 0 || p->failed);
	if (p->failed)
		lost(pub, p->err);
	return !p->failed;
}

static void
start_pipeline(Publisher *pub, Pipeline *p)
{
	memset(p, 0, sizeof(*p));
	p->c = pub->c;
}

/* Write the marker whose absence will tell that Redis lost its data. */
static bool
write_marker(Publisher *pub)
{
	StringInfoData key;
	char		err[REDIS_ERRLEN];
	bool		ok;

	initStringInfo(&key);
	redis_marker_key(&key);
	snprintf(pub->marker, sizeof(pub->marker), "%d-" INT64_FORMAT,
			 MyProcPid, GetCurrentTimestamp());
	ok = redis_command_ok(pub->c, err, 3,
						  (const char *[]) {"SET", key.data, pub->marker});
	if (!ok)
		lost(pub, err);
	pfree(key.data);
	return ok;
}

/*
 * Send the revocations of the last RECENT_MS again, before anything else:
 * a master that was demoted may have taken them without passing them on.
 */
static bool
replay_recent(Publisher *pub)
{
	TimestampTz since = ms_after_now(-RECENT_MS);
	Pipeline	p;
	FanoutMsg  *m;

	start_pipeline(pub, &p);
	for_each_msg(m, pub->recent.data, pub->recent.len)
	{
		if (m->committed_at < since)
			continue;
		if (m->kind == FANOUT_PURGE)
			(void) redis_send_drop_db(&p, fanout_msg_db(m), m->db_len);
		else
			redis_send_drop(&p, fanout_msg_db(m), m->db_len, m->hash,
							fanout_msg_user(m), m->user_len);
	}
	return finish(pub, &p);
}

/* Connect, or wait the backoff; true once connected. */
static bool
publisher_connect(Publisher *pub)
{
	char		err[REDIS_ERRLEN];

	pub->c = redis_connect(err, pub->server, sizeof(pub->server));
	if (pub->c == NULL)
	{
		lost(pub, err);
		wait_ms(pub->backoff);
		pub->backoff = Min(pub->backoff * 2, BACKOFF_MAX_MS);
		return false;
	}
	if (!replay_recent(pub) || !write_marker(pub))
		return false;
	pub->backoff = BACKOFF_MIN_MS;
	pub->last_logged[0] = '\0';
	pub->next_check = ms_after_now(CHECK_EVERY_MS);
	fanout_set_conn(FANOUT_UP, pub->server, NULL);
	ereport(LOG,
			(errmsg("tokenstore mirrors tokens to Redis at %s", pub->server)));
	return true;
}

/* ---- checks ---- */

/*
 * Whether the master still is one, and still holds the marker: if not, it
 * lost its data (the marker is written again, and every database must be
 * written again: a new epoch).
 */
static bool
check_master(Publisher *pub)
{
	StringInfoData key;
	char		err[REDIS_ERRLEN];
	redisReply *role;
	redisReply *marker;
	bool		master;
	bool		kept;

	role = redis_command(pub->c, err, 1, (const char *[]) {"ROLE"});
	if (role == NULL)
	{
		lost(pub, err);
		return false;
	}
	master = role->type == REDIS_REPLY_ARRAY && role->elements > 0 &&
		role->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(role->element[0]->str, "master") == 0;
	freeReplyObject(role);
	if (!master)
	{
		lost(pub, "the server is no longer a master");
		return false;
	}
	initStringInfo(&key);
	redis_marker_key(&key);
	marker = redis_command(pub->c, err, 2, (const char *[]) {"GET", key.data});
	pfree(key.data);
	if (marker == NULL)
	{
		lost(pub, err);
		return false;
	}
	kept = marker->type == REDIS_REPLY_STRING && strcmp(marker->str, pub->marker) == 0;
	freeReplyObject(marker);
	if (kept)
		return true;
	ereport(LOG,
			(errmsg("tokenstore: Redis at %s lost the mirror's data; every database is written again",
					pub->server)));
	fanout_lost();
	return write_marker(pub);
}

/* The subscription to failovers: (re)made when missing, a second apart. */
static void
keep_subscription(Publisher *pub)
{
	char		err[REDIS_ERRLEN];

	if (tokenstore_redis_sentinels[0] == '\0' || pub->sentinel != NULL ||
		GetCurrentTimestamp() < pub->next_subscribe)
		return;
	pub->sentinel = redis_subscribe_switches(err);
	pub->next_subscribe = ms_after_now(CHECK_EVERY_MS);
}

/* Whether the sentinels announced a failover (read without waiting). */
static bool
switch_announced(Publisher *pub)
{
	struct pollfd fd;
	bool		broken;
	bool		switched;

	if (pub->sentinel == NULL)
		return false;
	fd.fd = pub->sentinel->fd;
	fd.events = POLLIN;
	fd.revents = 0;
	if (poll(&fd, 1, 0) <= 0)
		return false;
	switched = redis_switch_announced(pub->sentinel, pub->server, &broken);
	if (broken)
		drop_subscription(pub);
	return switched;
}

/* Every second, and at once on a failover: is the master still right? */
static bool
publisher_checks(Publisher *pub)
{
	keep_subscription(pub);
	if (switch_announced(pub))
	{
		lost(pub, "the sentinels announced a new master");
		return false;
	}
	if (GetCurrentTimestamp() < pub->next_check)
		return true;
	pub->next_check = ms_after_now(CHECK_EVERY_MS);
	if (redis_master_moved(pub->server))
	{
		lost(pub, "the sentinels name a new master");
		return false;
	}
	return check_master(pub);
}

/* Nothing to send: wait for a commit, a failover, or the next check. */
static void
publisher_idle(Publisher *pub)
{
	long		ms = Max(1, (pub->next_check - GetCurrentTimestamp()) / 1000);
	int			events = WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH;

	if (pub->sentinel != NULL)
		events |= WL_SOCKET_READABLE;
	(void) WaitLatchOrSocket(MyLatch, events,
							 pub->sentinel ? pub->sentinel->fd : PGINVALID_SOCKET,
							 Min(ms, CHECK_EVERY_MS), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* ---- sending ---- */

/* The key of a message's token, or with purge of its whole database. */
static GoneKey *
gone_key(GoneKey *key, const FanoutMsg *m, bool purge)
{
	memset(key, 0, sizeof(*key));
	memcpy(key->db, fanout_msg_db(m), Min(m->db_len, NAMEDATALEN - 1));
	key->purge = purge;
	if (!purge)
		memcpy(key->hash, m->hash, sizeof(key->hash));
	return key;
}

/*
 * The tokens the messages write, each with the offset of its last write, or
 * NULL if they write none.
 */
static HTAB *
written_tokens(const char *buf, Size len)
{
	HASHCTL		ctl = {0};
	HTAB	   *written = NULL;
	const FanoutMsg *m;

	ctl.keysize = sizeof(GoneKey);
	ctl.entrysize = sizeof(GoneEntry);
	ctl.hcxt = CurrentMemoryContext;
	for_each_msg(m, buf, len)
	{
		GoneKey		key;

		if (m->kind != FANOUT_SET)
			continue;
		if (written == NULL)
			written = hash_create("tokenstore written tokens", 1024, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		((GoneEntry *) hash_search(written, gone_key(&key, m, false),
								   HASH_ENTER, NULL))->offset = (const char *) m - buf;
	}
	return written;
}

/*
 * Whether a message of `written` writes again the token a removal at
 * `offset` removed (SIZE_MAX: a removal of an earlier batch): the removal
 * no longer stands.
 */
static bool
written_again(HTAB *written, const FanoutMsg *m, Size offset)
{
	GoneKey		key;
	GoneEntry  *w;

	if (written == NULL || m->kind != FANOUT_REMOVE)
		return false;
	w = hash_search(written, gone_key(&key, m, false), HASH_FIND, NULL);
	return w != NULL && (offset == SIZE_MAX || w->offset > offset);
}

/*
 * Keep the revocations about to be sent, to send them again to a new
 * master (or after the batch failed); but not the removals of tokens
 * written again since (a session saved again under the id it had), whose
 * replay would delete a live key.  A purge is replayed all the same (a
 * resync writes again what it took from the database's live tokens).
 */
static void
remember(Publisher *pub, const char *buf, Size len)
{
	TimestampTz since = ms_after_now(-RECENT_MS);
	HTAB	   *written = NULL;
	const FanoutMsg *m;
	Size		drop = 0;

	for_each_msg(m, buf, len)
	{
		if (is_revocation(m) || pub->recent.len > 0)
		{
			written = written_tokens(buf, len);
			break;
		}
	}

	if (written != NULL)
	{
		Size		at = 0;
		Size		kept = 0;

		while (at < (Size) pub->recent.len)
		{
			const FanoutMsg *r = (const FanoutMsg *) (pub->recent.data + at);
			Size		rlen = r->len;

			if (!written_again(written, r, SIZE_MAX))
			{
				memmove(pub->recent.data + kept, r, rlen);
				kept += rlen;
			}
			at += rlen;
		}
		pub->recent.len = kept;
	}
	for_each_msg(m, buf, len)
	{
		if (is_revocation(m) && !written_again(written, m, (const char *) m - buf))
			appendBinaryStringInfo(&pub->recent, (const char *) m, m->len);
	}
	if (written != NULL)
		hash_destroy(written);
	for_each_msg(m, pub->recent.data, pub->recent.len)
	{
		if (m->committed_at >= since && pub->recent.len - drop <= RECENT_MAX)
			break;
		drop += m->len;
	}
	if (drop > 0)
	{
		memmove(pub->recent.data, pub->recent.data + drop, pub->recent.len - drop);
		pub->recent.len -= drop;
	}
}

/*
 * Send messages; held: those a hold may not keep back (revocations, and the
 * expiries the held writes bring forward).  False if the connection failed.
 */
static bool
send_messages(Publisher *pub, const char *buf, Size len, bool held)
{
	TimestampTz now = GetCurrentTimestamp();
	Pipeline	p;
	FanoutMsg  *m;

	/* before sending: what a failed batch carried is replayed all the same */
	remember(pub, buf, len);
	start_pipeline(pub, &p);
	for_each_msg(m, buf, len)
	{
		if (!held || is_revocation(m))
			redis_send_msg(&p, m, now);
		else if (m->kind == FANOUT_SET && m->deadline != DEADLINE_NONE)
			redis_send_cap(&p, fanout_msg_db(m), m->db_len, m->hash,
						   m->deadline);
		if (p.pending >= PIPELINE_DEPTH)
			(void) pipe_wait(&p);
	}
	return finish(pub, &p);
}

/* Whether a revocation later in the held changes supersedes this write. */
static bool
superseded(HTAB *gone, const FanoutMsg *m, Size offset)
{
	GoneKey		key;
	GoneEntry  *token = hash_search(gone, gone_key(&key, m, false), HASH_FIND, NULL);
	GoneEntry  *all = hash_search(gone, gone_key(&key, m, true), HASH_FIND, NULL);

	return (token != NULL && token->offset > offset) ||
		(all != NULL && all->offset > offset);
}

/*
 * The hold is over: send the held writes, in order, but those a later
 * revocation supersedes (the revocations themselves went out at once).
 */
static bool
release_held(Publisher *pub)
{
	HASHCTL		ctl = {0};
	HTAB	   *gone;
	FanoutMsg  *m;
	StringInfoData keep;
	bool		ok;

	ctl.keysize = sizeof(GoneKey);
	ctl.entrysize = sizeof(GoneEntry);
	ctl.hcxt = CurrentMemoryContext;
	gone = hash_create("tokenstore held revocations", 1024, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for_each_msg(m, pub->held.data, pub->held.len)
	{
		GoneKey		key;

		if (is_revocation(m))
			((GoneEntry *) hash_search(gone, gone_key(&key, m, m->kind == FANOUT_PURGE),
									   HASH_ENTER, NULL))->offset = (char *) m - pub->held.data;
	}
	initStringInfo(&keep);
	for_each_msg(m, pub->held.data, pub->held.len)
	{
		if (!is_revocation(m) && !superseded(gone, m, (char *) m - pub->held.data))
			appendBinaryStringInfo(&keep, (const char *) m, m->len);
	}
	ok = send_messages(pub, keep.data, keep.len, false);
	hash_destroy(gone);
	pfree(keep.data);
	forget_held(pub);
	return ok;
}

/*
 * Keep what a resynchronisation holds back, in order, and send its
 * revocations and shortened expiries now; too much of it, and Redis must be
 * written again anyway.
 */
static bool
hold(Publisher *pub, Size len)
{
	FanoutMsg  *m;

	if (!send_messages(pub, pub->buf, len, true))
		return false;
	if (pub->held.len + len > HELD_MAX)
	{
		forget_held(pub);
		fanout_lost();
	}
	appendBinaryStringInfo(&pub->held, pub->buf, len);
	for_each_msg(m, pub->buf, len)
	{
		if (is_revocation(m))
			continue;
		pub->held_writes++;
		pub->held_oldest = pub->held_oldest ? pub->held_oldest : m->committed_at;
	}
	fanout_set_held(pub->held_writes, pub->held_oldest);
	return true;
}

/*
 * One round: send what was held back once the hold is over, then the next
 * batch; after a small one, let the next gather for a moment.
 */
static void
publisher_round(Publisher *pub)
{
	bool		held;
	Size		len = fanout_take(pub->buf, PUBLISH_BUFFER, &held);

	mark_ended(pub->buf, len);
	if (held && len > 0)
		(void) hold(pub, len);
	else if (!held && pub->held.len > 0 && !release_held(pub))
	{
		/* the batch taken is not sent: its revocations are replayed */
		remember(pub, pub->buf, len);
		return;
	}
	if (len == 0)
		publisher_idle(pub);
	else if (!held && send_messages(pub, pub->buf, len, false) &&
			 len < PUBLISH_BUFFER / 8)
		(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, GATHER_MS,
						 PG_WAIT_EXTENSION);
}

void
tokenstore_publisher_main(Datum arg)
{
	Publisher	pub;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	/* no database: only to show in pg_stat_activity */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	fanout_publisher_attach(MyLatch);
	memset(&pub, 0, sizeof(pub));
	pub.backoff = BACKOFF_MIN_MS;
	pub.settings = settings_text();
	pub.buf = MemoryContextAlloc(TopMemoryContext, PUBLISH_BUFFER);
	initStringInfo(&pub.held);
	initStringInfo(&pub.recent);
	pub.cxt = AllocSetContextCreate(TopMemoryContext, "tokenstore publisher",
									ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(pub.cxt);

	while (!ShutdownRequestPending)
	{
		MemoryContextReset(pub.cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			reconfigure(&pub);
		}
		if (!redis_configured())
		{
			fanout_set_conn(FANOUT_OFF, NULL, "");
			wait_ms(-1);
			continue;
		}
		if ((pub.c == NULL && !publisher_connect(&pub)) || !publisher_checks(&pub))
			continue;
		publisher_round(&pub);
	}
	if (pub.c != NULL)
		redisFree(pub.c);
	drop_subscription(&pub);
	fanout_set_conn(FANOUT_DOWN, NULL, NULL);
	proc_exit(0);
}
