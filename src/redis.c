/*-------------------------------------------------------------------------
 *
 * redis.c
 *	  The Redis mirror: reaching the master (directly or through sentinels),
 *	  the publisher process that sends the queued changes, and the
 *	  resynchronisation a worker runs for its database.
 *
 * Keys, for database db (its name, bytes outside [A-Za-z0-9_.-]
 * percent-encoded, so that no database's keys match another's pattern):
 *
 *	 <prefix><db>:token:<hex SHA-256>	JSON of the live token, expiring at
 *										its deadline
 *	 <prefix><db>:user:<user id>		set of the user's token keys
 *	 <prefix>events						channel: a message per revocation
 *
 * The publisher connects to no database.  It copies batches of messages out
 * of the queue (fanout.c) and pipelines their commands with socket timeouts;
 * no lock is held while it talks to Redis, and no backend ever waits for
 * it.  Any failure (a refused or broken connection, a timeout, a master that
 * became a replica) drops the connection; reconnecting starts a new epoch,
 * after which every database's worker writes its live tokens again and
 * removes keys that match none.  When idle it pings Redis every second, so
 * a restart is noticed without traffic.
 *
 * The password never reaches the server log: a log hook masks the password
 * of any redis:// or unix:// URL in every log line (PostgreSQL itself logs
 * a setting's new value when the configuration is reloaded).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include <hiredis/hiredis.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fanout.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "redis.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "store.h"
#include "tcop/tcopprot.h"
#include "tokenstore.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "worker.h"

#define PUBLISH_BUFFER		(512 * 1024)
/* changes kept unsent while a resynchronisation holds, at most */
#define HELD_MAX			(256 * 1024 * 1024)
/* replies read after this many pipelined commands */
#define PIPELINE_DEPTH		10000
#define RESYNC_PAGE			1000
#define BACKOFF_MIN_MS		100
#define BACKOFF_MAX_MS		5000
#define PING_EVERY_MS		1000
/* after a small batch, let changes gather this long: fewer, fuller batches */
#define GATHER_MS			2
#define ERRLEN				256

/* Where the master is and how to log in. */
typedef struct RedisTarget
{
	bool		unix_socket;
	char		host[MAXPGPATH];	/* or the socket's path */
	int			port;
	char		user[128];
	char		password[256];
	int			db;
} RedisTarget;

/* Commands sent without waiting, and their replies read in one go. */
typedef struct Pipeline
{
	redisContext *c;
	int			pending;
	int64		sent;
	bool		failed;			/* the connection is unusable */
	int64		errors;			/* commands Redis refused */
	char		err[ERRLEN];
} Pipeline;

static emit_log_hook_type prev_emit_log_hook = NULL;

PGDLLEXPORT void tokenstore_publisher_main(Datum arg);

/* ---- keeping passwords out of the log ---- */

/* Overwrite the password of every redis:// or unix:// URL in s. */
static void
mask_passwords(char *s)
{
	char	   *p = s;

	while (s != NULL && (p = strstr(p, "://")) != NULL)
	{
		char	   *start = p + 3;
		char	   *end = start + strcspn(start, " \t\n'\"");
		char	   *at = NULL;
		char	   *colon;
		char	   *q;

		if (!((p - s >= 5 && strncmp(p - 5, "redis", 5) == 0) ||
			  (p - s >= 4 && strncmp(p - 4, "unix", 4) == 0)))
		{
			p = start;
			continue;
		}
		for (q = start; q < end; q++)
			if (*q == '@')
				at = q;
		colon = at ? memchr(start, ':', at - start) : NULL;
		if (colon)
			memset(colon + 1, '*', at - colon - 1);
		p = end;
	}
}

static void
emit_log(ErrorData *edata)
{
	if (edata->output_to_server)
	{
		mask_passwords(edata->message);
		mask_passwords(edata->detail);
		mask_passwords(edata->context);
		if (debug_query_string != NULL &&
			(strstr(debug_query_string, "redis://") != NULL ||
			 strstr(debug_query_string, "unix://") != NULL))
			edata->hide_stmt = true;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
redis_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = emit_log;
}

void
redis_register_publisher(void)
{
	BackgroundWorker worker;

	worker_describe(&worker, "tokenstore_publisher_main", "tokenstore publisher");
	worker.bgw_flags |= BGWORKER_BACKEND_DATABASE_CONNECTION;
	RegisterBackgroundWorker(&worker);
}

/* ---- settings ---- */

static bool
copy_part(char *dst, size_t size, const char *src, size_t len)
{
	if (len >= size)
		return false;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return true;
}

/* "?db=N" of a unix:// URL, or "/N" of a redis:// one. */
static bool
parse_db(const char *s, int *db)
{
	char	   *end;
	long		n;

	if (*s == '\0')
		return true;
	errno = 0;
	n = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || end == s || n < 0 || n > INT_MAX)
		return false;
	*db = (int) n;
	return true;
}

/* The host part of a redis:// URL: host[:port][/db]. */
static bool
parse_host(const char *p, RedisTarget *t)
{
	size_t		hostlen = strcspn(p, ":/");
	char	   *end;
	long		port;

	if (!copy_part(t->host, sizeof(t->host), p, hostlen))
		return false;
	p += hostlen;
	if (*p == ':')
	{
		errno = 0;
		port = strtol(p + 1, &end, 10);
		if (errno != 0 || end == p + 1 || port < 1 || port > 65535)
			return false;
		t->port = (int) port;
		p = end;
	}
	if (*p == '/')
		return parse_db(p + 1, &t->db);
	return *p == '\0';
}

/* The path part of a unix:// URL: /path[?db=N]. */
static bool
parse_path(const char *p, RedisTarget *t)
{
	size_t		pathlen = strcspn(p, "?");

	if (*p != '/' || !copy_part(t->host, sizeof(t->host), p, pathlen))
		return false;
	p += pathlen;
	if (*p == '\0')
		return true;
	if (strncmp(p, "?db=", 4) != 0)
		return false;
	return parse_db(p + 4, &t->db);
}

/*
 * tokenstore.redis_url into *t.  The host may be left out when sentinels
 * name the master.
 */
static bool
parse_url(const char *url, RedisTarget *t, char *err)
{
	const char *p;
	const char *at;
	const char *colon;
	bool		ok;

	memset(t, 0, sizeof(*t));
	t->port = 6379;
	if (strncmp(url, "redis://", 8) == 0)
		p = url + 8;
	else if (strncmp(url, "unix://", 7) == 0)
	{
		t->unix_socket = true;
		p = url + 7;
	}
	else
	{
		snprintf(err, ERRLEN, "invalid tokenstore.redis_url: it must start with redis:// or unix://");
		return false;
	}
	at = strrchr(p, '@');
	if (at != NULL)
	{
		colon = memchr(p, ':', at - p);
		if (colon == NULL)
			ok = copy_part(t->user, sizeof(t->user), p, at - p);
		else
			ok = copy_part(t->user, sizeof(t->user), p, colon - p) &&
				copy_part(t->password, sizeof(t->password), colon + 1, at - colon - 1);
		if (!ok)
		{
			snprintf(err, ERRLEN, "invalid tokenstore.redis_url: user or password too long");
			return false;
		}
		p = at + 1;
	}
	ok = t->unix_socket ? parse_path(p, t) : parse_host(p, t);
	if (!ok)
		snprintf(err, ERRLEN, "invalid tokenstore.redis_url: expected %s",
				 t->unix_socket ? "unix://[[user]:password@]/path[?db=N]" :
				 "redis://[[user]:password@]host[:port][/db]");
	return ok;
}

static bool
mirror_configured(void)
{
	return tokenstore_redis_url[0] != '\0' || tokenstore_redis_sentinels[0] != '\0';
}

/* ---- talking to Redis ---- */

static struct timeval
timeout_tv(void)
{
	struct timeval tv;

	tv.tv_sec = tokenstore_redis_timeout / 1000;
	tv.tv_usec = (tokenstore_redis_timeout % 1000) * 1000;
	return tv;
}

static void
describe(const RedisTarget *t, char *out, size_t size)
{
	if (t->unix_socket)
		snprintf(out, size, "%s", t->host);
	else
		snprintf(out, size, "%s:%d", t->host, t->port);
}

/* Run one command; the reply, or NULL with *err set. */
static redisReply *
command(redisContext *c, char *err, int argc, const char **argv)
{
	size_t		lens[6];
	redisReply *reply;
	int			i;

	Assert(argc <= lengthof(lens));
	for (i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	reply = redisCommandArgv(c, argc, argv, lens);
	if (reply == NULL)
	{
		snprintf(err, ERRLEN, "%s failed: %s", argv[0],
				 c->err ? c->errstr : "no reply");
		return NULL;
	}
	if (reply->type == REDIS_REPLY_ERROR)
	{
		snprintf(err, ERRLEN, "%s failed: %s", argv[0], reply->str);
		freeReplyObject(reply);
		return NULL;
	}
	return reply;
}

static bool
command_ok(redisContext *c, char *err, int argc, const char **argv)
{
	redisReply *reply = command(c, err, argc, argv);

	if (reply == NULL)
		return false;
	freeReplyObject(reply);
	return true;
}

/* Log in, choose the database, and make sure this is a master. */
static bool
prepare(redisContext *c, const RedisTarget *t, char *err)
{
	char		db[16];
	redisReply *reply;
	bool		master;

	if (t->password[0] != '\0')
	{
		const char *with_user[] = {"AUTH", t->user, t->password};
		const char *without[] = {"AUTH", t->password};

		if (t->user[0] != '\0' ? !command_ok(c, err, 3, with_user) :
			!command_ok(c, err, 2, without))
			return false;
	}
	if (t->db != 0)
	{
		const char *select[] = {"SELECT", db};

		snprintf(db, sizeof(db), "%d", t->db);
		if (!command_ok(c, err, 2, select))
			return false;
	}
	reply = command(c, err, 1, (const char *[]) {"ROLE"});
	if (reply == NULL)
		return false;
	master = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(reply->element[0]->str, "master") == 0;
	freeReplyObject(reply);
	if (!master)
		snprintf(err, ERRLEN, "the server is not a master");
	return master;
}

static redisContext *
connect_target(const RedisTarget *t, char *err)
{
	char		where[MAXPGPATH + 16];
	char		why[ERRLEN];
	redisContext *c;

	describe(t, where, sizeof(where));
	c = t->unix_socket ? redisConnectUnixWithTimeout(t->host, timeout_tv()) :
		redisConnectWithTimeout(t->host, t->port, timeout_tv());
	if (c == NULL)
	{
		snprintf(err, ERRLEN, "could not allocate a Redis connection");
		return NULL;
	}
	if (c->err)
		snprintf(why, sizeof(why), "%s", c->errstr);
	else if (redisSetTimeout(c, timeout_tv()) != REDIS_OK)
		snprintf(why, sizeof(why), "could not set its timeout");
	else if (prepare(c, t, why))
		return c;
	snprintf(err, ERRLEN, "Redis at %s: %s", where, why);
	redisFree(c);
	return NULL;
}

/* Ask one sentinel where the master is, into t->host and t->port. */
static bool
ask_sentinel(const char *host, int port, RedisTarget *t, char *err)
{
	redisContext *s = redisConnectWithTimeout(host, port, timeout_tv());
	const char *argv[] = {"SENTINEL", "get-master-addr-by-name",
	tokenstore_redis_master_name};
	redisReply *reply;
	bool		ok;

	if (s == NULL || s->err)
	{
		snprintf(err, ERRLEN, "sentinel %s:%d: %s", host, port,
				 s ? s->errstr : "out of memory");
		if (s)
			redisFree(s);
		return false;
	}
	(void) redisSetTimeout(s, timeout_tv());
	reply = command(s, err, 3, argv);
	ok = reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
		reply->elements == 2 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		reply->element[1]->type == REDIS_REPLY_STRING &&
		copy_part(t->host, sizeof(t->host), reply->element[0]->str,
				  reply->element[0]->len);
	if (ok)
		t->port = atoi(reply->element[1]->str);
	else if (reply != NULL)
		snprintf(err, ERRLEN, "sentinel %s:%d does not know master \"%s\"",
				 host, port, tokenstore_redis_master_name);
	if (reply)
		freeReplyObject(reply);
	redisFree(s);
	return ok;
}

/* Where the first sentinel of the list that answers puts the master. */
static bool
ask_sentinels(RedisTarget *t, char *err)
{
	char	   *list = pstrdup(tokenstore_redis_sentinels);
	char	   *save = NULL;
	char	   *item;
	bool		found = false;

	snprintf(err, ERRLEN, "invalid tokenstore.redis_sentinels: expected host:port[,host:port...]");
	for (item = strtok_r(list, ", ", &save); item != NULL && !found;
		 item = strtok_r(NULL, ", ", &save))
	{
		char	   *colon = strrchr(item, ':');

		if (colon == NULL)
			break;
		*colon = '\0';
		found = ask_sentinel(item, atoi(colon + 1), t, err);
	}
	pfree(list);
	return found;
}

/* The settings' target: the URL's, with the master the sentinels name. */
static bool
target_from_settings(RedisTarget *t, char *err)
{
	if (!parse_url(tokenstore_redis_url[0] ? tokenstore_redis_url : "redis://",
				   t, err))
		return false;
	if (tokenstore_redis_sentinels[0] != '\0')
		return ask_sentinels(t, err);
	if (t->host[0] == '\0')
	{
		snprintf(err, ERRLEN, "invalid tokenstore.redis_url: no host");
		return false;
	}
	return true;
}

/* Connect to the master the settings name; NULL with *err set. */
static redisContext *
redis_connect(char *err, char *server, size_t size)
{
	RedisTarget t;
	redisContext *c;

	if (!target_from_settings(&t, err))
		return NULL;
	c = connect_target(&t, err);
	if (c != NULL)
		describe(&t, server, size);
	return c;
}

/*
 * Whether the sentinels now name another master than server (a failover
 * happened, and the old master may still take writes for a while).
 */
static bool
master_moved(const char *server)
{
	RedisTarget t;
	char		err[ERRLEN];
	char		now[MAXPGPATH + 16];

	if (tokenstore_redis_sentinels[0] == '\0' || !target_from_settings(&t, err))
		return false;
	describe(&t, now, sizeof(now));
	return strcmp(now, server) != 0;
}

/* ---- pipelines ---- */

static void
pipe_send(Pipeline *p, int argc, const char **argv, const size_t *lens)
{
	if (p->failed)
		return;
	if (redisAppendCommandArgv(p->c, argc, argv, lens) != REDIS_OK)
	{
		p->failed = true;
		snprintf(p->err, ERRLEN, "%s", p->c->errstr);
		return;
	}
	p->pending++;
	p->sent++;
}

/*
 * Read every pending reply.  A command Redis refuses is counted and logged
 * once; READONLY means the master was demoted, which fails the connection.
 */
static bool
pipe_wait(Pipeline *p)
{
	while (p->pending > 0 && !p->failed)
	{
		redisReply *reply = NULL;

		if (redisGetReply(p->c, (void **) &reply) != REDIS_OK || reply == NULL)
		{
			p->failed = true;
			snprintf(p->err, ERRLEN, "%s", p->c->err ? p->c->errstr : "no reply");
			break;
		}
		p->pending--;
		if (reply->type == REDIS_REPLY_ERROR)
		{
			if (p->errors++ == 0)
				ereport(LOG,
						(errmsg("tokenstore: Redis refused a command: %s", reply->str)));
			if (strncmp(reply->str, "READONLY", 8) == 0)
			{
				p->failed = true;
				snprintf(p->err, ERRLEN, "%s", reply->str);
			}
		}
		freeReplyObject(reply);
	}
	return !p->failed;
}

/* ---- keys ---- */

static void
append_db(StringInfo buf, const char *db, int len)
{
	int			i;

	appendStringInfoString(buf, tokenstore_redis_prefix);
	for (i = 0; i < len; i++)
	{
		unsigned char ch = (unsigned char) db[i];

		if (isalnum(ch) || ch == '_' || ch == '.' || ch == '-')
			appendStringInfoChar(buf, ch);
		else
			appendStringInfo(buf, "%%%02X", ch);
	}
	appendStringInfoChar(buf, ':');
}

static void
append_hex(StringInfo buf, const uint8 *bytes, int len)
{
	int			i;

	for (i = 0; i < len; i++)
		appendStringInfo(buf, "%02x", bytes[i]);
}

static void
token_key_name(StringInfo buf, const char *db, int dblen, const uint8 *hash)
{
	resetStringInfo(buf);
	append_db(buf, db, dblen);
	appendStringInfoString(buf, "token:");
	append_hex(buf, hash, PG_SHA256_DIGEST_LENGTH);
}

static void
user_key_name(StringInfo buf, const char *db, int dblen, const char *user,
			  int userlen)
{
	resetStringInfo(buf);
	append_db(buf, db, dblen);
	appendStringInfoString(buf, "user:");
	appendBinaryStringInfo(buf, user, userlen);
}

/* A glob pattern matching the keys under the prefix and db, then tail. */
static void
pattern(StringInfo buf, const char *db, int dblen, const char *tail)
{
	StringInfoData raw;
	const char *p;

	initStringInfo(&raw);
	append_db(&raw, db, dblen);
	resetStringInfo(buf);
	for (p = raw.data; *p; p++)
	{
		if (strchr("*?[]\\", *p) != NULL)
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *p);
	}
	appendStringInfoString(buf, tail);
	pfree(raw.data);
}

static int64
unix_ms(TimestampTz t)
{
	return t / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

/* ---- the commands of each change ---- */

/* Write a live token's key and add it to its user's set. */
static void
send_set(Pipeline *p, const char *db, int dblen, const uint8 *hash,
		 const char *user, int userlen, const char *value, int valuelen,
		 TimestampTz deadline)
{
	StringInfoData key;
	StringInfoData ukey;
	char		ms[32];
	const char *set[] = {"SET", NULL, value, "PXAT", ms};
	size_t		setlens[5] = {3, 0, valuelen, 4, 0};
	const char *sadd[] = {"SADD", NULL, NULL};
	size_t		saddlens[3] = {4, 0, 0};

	initStringInfo(&key);
	initStringInfo(&ukey);
	token_key_name(&key, db, dblen, hash);
	user_key_name(&ukey, db, dblen, user, userlen);
	set[1] = key.data;
	setlens[1] = key.len;
	snprintf(ms, sizeof(ms), INT64_FORMAT, unix_ms(deadline));
	setlens[4] = strlen(ms);
	pipe_send(p, deadline == DEADLINE_NONE ? 3 : 5, set, setlens);
	sadd[1] = ukey.data;
	saddlens[1] = ukey.len;
	sadd[2] = key.data;
	saddlens[2] = key.len;
	pipe_send(p, 3, sadd, saddlens);
	pfree(key.data);
	pfree(ukey.data);
}

static void
send_publish(Pipeline *p, StringInfo event)
{
	StringInfoData channel;
	const char *argv[] = {"PUBLISH", NULL, event->data};
	size_t		lens[3] = {7, 0, event->len};

	initStringInfo(&channel);
	appendStringInfo(&channel, "%sevents", tokenstore_redis_prefix);
	argv[1] = channel.data;
	lens[1] = channel.len;
	pipe_send(p, 3, argv, lens);
	pfree(channel.data);
}

/* Delete a revoked token's key, drop it from its user's set, publish. */
static void
send_remove(Pipeline *p, const FanoutMsg *m)
{
	StringInfoData key;
	StringInfoData ukey;
	StringInfoData event;
	const char *del[] = {"DEL", NULL};
	size_t		dellens[2] = {3, 0};
	const char *srem[] = {"SREM", NULL, NULL};
	size_t		sremlens[3] = {4, 0, 0};

	initStringInfo(&key);
	initStringInfo(&ukey);
	initStringInfo(&event);
	token_key_name(&key, fanout_msg_db(m), m->db_len, m->hash);
	user_key_name(&ukey, fanout_msg_db(m), m->db_len, fanout_msg_user(m), m->user_len);
	del[1] = key.data;
	dellens[1] = key.len;
	pipe_send(p, 2, del, dellens);
	srem[1] = ukey.data;
	sremlens[1] = ukey.len;
	srem[2] = key.data;
	sremlens[2] = key.len;
	pipe_send(p, 3, srem, sremlens);

	appendStringInfoString(&event, "{\"event\": \"revoke\", \"database\": ");
	escape_json(&event, pnstrdup(fanout_msg_db(m), m->db_len));
	appendStringInfoString(&event, ", \"user_id\": ");
	escape_json(&event, pnstrdup(fanout_msg_user(m), m->user_len));
	appendStringInfoString(&event, ", \"token_hash\": \"");
	append_hex(&event, m->hash, PG_SHA256_DIGEST_LENGTH);
	appendStringInfoString(&event, "\", \"key\": ");
	escape_json(&event, key.data);
	appendStringInfoChar(&event, '}');
	send_publish(p, &event);
	pfree(key.data);
	pfree(ukey.data);
	pfree(event.data);
}

static void
send_expire(Pipeline *p, const FanoutMsg *m)
{
	StringInfoData key;
	char		ms[32];
	const char *argv[] = {"PEXPIREAT", NULL, ms};
	size_t		lens[3] = {9, 0, 0};

	initStringInfo(&key);
	token_key_name(&key, fanout_msg_db(m), m->db_len, m->hash);
	argv[1] = key.data;
	lens[1] = key.len;
	snprintf(ms, sizeof(ms), INT64_FORMAT, unix_ms(m->deadline));
	lens[2] = strlen(ms);
	pipe_send(p, 3, argv, lens);
	pfree(key.data);
}

/*
 * Delete every key matching the pattern, or, with keep, those of them that
 * keep says no to (keep sees a batch of key names and sets drop[i]).
 */
typedef void (*KeepFunc) (redisReply **keys, int n, bool *drop);

static bool
scan_delete(Pipeline *p, const char *match, KeepFunc keep)
{
	char		cursor[32] = "0";

	do
	{
		const char *argv[] = {"SCAN", cursor, "MATCH", match, "COUNT", "1000"};
		redisReply *reply;
		redisReply *keys;
		bool	   *drop;
		int			i;

		if (!pipe_wait(p))
			return false;
		reply = command(p->c, p->err, 6, argv);
		if (reply != NULL &&
			(reply->type != REDIS_REPLY_ARRAY || reply->elements != 2))
		{
			snprintf(p->err, ERRLEN, "SCAN failed: bad reply");
			freeReplyObject(reply);
			reply = NULL;
		}
		if (reply == NULL)
		{
			p->failed = true;
			return false;
		}
		p->sent++;
		strlcpy(cursor, reply->element[0]->str, sizeof(cursor));
		keys = reply->element[1];
		drop = palloc0(sizeof(bool) * Max(keys->elements, 1));
		if (keep != NULL)
			keep(keys->element, keys->elements, drop);
		for (i = 0; i < keys->elements; i++)
		{
			const char *del[] = {"UNLINK", keys->element[i]->str};
			size_t		dellens[2] = {6, keys->element[i]->len};

			if (keep == NULL || drop[i])
				pipe_send(p, 2, del, dellens);
		}
		pfree(drop);
		freeReplyObject(reply);
	} while (strcmp(cursor, "0") != 0);
	return pipe_wait(p);
}

static void
send_purge(Pipeline *p, const FanoutMsg *m)
{
	StringInfoData match;
	StringInfoData event;

	initStringInfo(&match);
	initStringInfo(&event);
	pattern(&match, fanout_msg_db(m), m->db_len, "*");
	if (!scan_delete(p, match.data, NULL))
		return;
	appendStringInfoString(&event, "{\"event\": \"purge\", \"database\": ");
	escape_json(&event, pnstrdup(fanout_msg_db(m), m->db_len));
	appendStringInfoChar(&event, '}');
	send_publish(p, &event);
	pfree(match.data);
	pfree(event.data);
}

static void
send_msg(Pipeline *p, const FanoutMsg *m, TimestampTz now)
{
	switch ((FanoutKind) m->kind)
	{
		case FANOUT_SET:
			if (m->deadline <= now)
				send_remove(p, m);
			else
				send_set(p, fanout_msg_db(m), m->db_len, m->hash,
						 fanout_msg_user(m), m->user_len,
						 fanout_msg_value(m), m->value_len, m->deadline);
			break;
		case FANOUT_EXPIRE:
			send_expire(p, m);
			break;
		case FANOUT_REMOVE:
			send_remove(p, m);
			break;
		case FANOUT_PURGE:
			send_purge(p, m);
			break;
	}
}

/* ---- the publisher ---- */

static bool
send_batch(Pipeline *p, const char *buf, Size len)
{
	TimestampTz now = GetCurrentTimestamp();
	Size		off = 0;

	while (off < len && !p->failed)
	{
		const FanoutMsg *m = (const FanoutMsg *) (buf + off);

		send_msg(p, m, now);
		off += m->len;
		if (p->pending >= PIPELINE_DEPTH)
			(void) pipe_wait(p);
	}
	return pipe_wait(p);
}

/* The publisher's connection and what it remembers between rounds. */
typedef struct Publisher
{
	redisContext *c;
	char		server[MAXPGPATH + 16];
	char		last_logged[ERRLEN];
	long		backoff;
	TimestampTz next_check;		/* when to ask the sentinels again */
	char	   *settings;		/* the settings it connected with */
	char	   *buf;
	StringInfoData held;		/* taken while a resync holds, unsent */
	MemoryContext cxt;
} Publisher;

/* Drop the connection; log the reason once, not at every retry. */
static void
lost(Publisher *pub, const char *err)
{
	if (pub->c != NULL)
		redisFree(pub->c);
	pub->c = NULL;
	resetStringInfo(&pub->held);
	fanout_set_conn(FANOUT_DOWN, NULL, err);
	if (strcmp(err, pub->last_logged) == 0)
		return;
	ereport(LOG,
			(errmsg("tokenstore cannot mirror tokens to Redis: %s", err),
			 errhint("Check tokenstore.redis_url and tokenstore.redis_sentinels; tokenstore retries, and PostgreSQL works as usual meanwhile.")));
	strlcpy(pub->last_logged, err, ERRLEN);
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
	char	   *text = psprintf("%s\n%s\n%s\n%s\n%d", tokenstore_redis_url,
								tokenstore_redis_sentinels,
								tokenstore_redis_master_name,
								tokenstore_redis_prefix, tokenstore_redis_timeout);

	MemoryContextSwitchTo(old);
	return text;
}

/* After a reload: start over if the Redis settings changed. */
static void
reconfigure(Publisher *pub)
{
	char	   *now = settings_text();

	if (pub->settings == NULL || strcmp(now, pub->settings) != 0)
	{
		if (pub->c != NULL)
			redisFree(pub->c);
		pub->c = NULL;
		pub->last_logged[0] = '\0';
		pub->backoff = BACKOFF_MIN_MS;
	}
	if (pub->settings != NULL)
		pfree(pub->settings);
	pub->settings = now;
}

/* Connect, or wait the backoff; true once connected. */
static bool
publisher_connect(Publisher *pub)
{
	char		err[ERRLEN];

	pub->c = redis_connect(err, pub->server, sizeof(pub->server));
	if (pub->c == NULL)
	{
		lost(pub, err);
		wait_ms(pub->backoff);
		pub->backoff = Min(pub->backoff * 2, BACKOFF_MAX_MS);
		return false;
	}
	pub->backoff = BACKOFF_MIN_MS;
	pub->last_logged[0] = '\0';
	pub->next_check = GetCurrentTimestamp() + PING_EVERY_MS * (int64) 1000;
	fanout_set_conn(FANOUT_UP, pub->server, NULL);
	ereport(LOG,
			(errmsg("tokenstore mirrors tokens to Redis at %s", pub->server)));
	return true;
}

/* Every second: is the master still the one the sentinels name? */
static bool
publisher_master_ok(Publisher *pub)
{
	if (GetCurrentTimestamp() < pub->next_check)
		return true;
	pub->next_check = GetCurrentTimestamp() + PING_EVERY_MS * (int64) 1000;
	if (!master_moved(pub->server))
		return true;
	lost(pub, "the sentinels name a new master");
	return false;
}

/* Nothing to send: wait for a commit, and ping when none comes. */
static void
publisher_idle(Publisher *pub)
{
	char		err[ERRLEN];
	int			rc = WaitLatch(MyLatch,
							   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   PING_EVERY_MS, PG_WAIT_EXTENSION);

	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if ((rc & WL_TIMEOUT) && !command_ok(pub->c, err, 1, (const char *[]) {"PING"}))
		lost(pub, err);
}

static bool
publisher_send(Publisher *pub, const char *buf, Size len)
{
	Pipeline	p;

	memset(&p, 0, sizeof(p));
	p.c = pub->c;
	(void) send_batch(&p, buf, len);
	fanout_count_sent(p.sent, p.errors > 0 || p.failed);
	if (p.failed)
		lost(pub, p.err);
	return !p.failed;
}

/*
 * Keep what a resynchronisation holds back, in order; too much of it, and
 * Redis must be written again anyway.
 */
static void
publisher_keep(Publisher *pub, Size len)
{
	if (pub->held.len + len > HELD_MAX)
	{
		resetStringInfo(&pub->held);
		fanout_lost();
	}
	appendBinaryStringInfo(&pub->held, pub->buf, len);
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

	if (held && len > 0)
		publisher_keep(pub, len);
	else if (!held && pub->held.len > 0)
	{
		if (!publisher_send(pub, pub->held.data, pub->held.len))
			return;
		resetStringInfo(&pub->held);
	}
	if (len == 0)
		publisher_idle(pub);
	else if (!held && publisher_send(pub, pub->buf, len) &&
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
		if (!mirror_configured())
		{
			fanout_set_conn(FANOUT_OFF, NULL, "");
			wait_ms(-1);
			continue;
		}
		if ((pub.c == NULL && !publisher_connect(&pub)) ||
			!publisher_master_ok(&pub))
			continue;
		publisher_round(&pub);
	}
	if (pub.c != NULL)
		redisFree(pub.c);
	fanout_set_conn(FANOUT_DOWN, NULL, NULL);
	proc_exit(0);
}

/* ---- resynchronisation, in a database's worker ---- */

static const char *resync_db;
static int	resync_dblen;

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The hash at the end of a token key; false if it does not end in one. */
static bool
key_hash(const redisReply *key, TokenKey *out)
{
	const char *hex = key->str + key->len - 2 * PG_SHA256_DIGEST_LENGTH;
	int			i;

	if (key->len < 2 * PG_SHA256_DIGEST_LENGTH)
		return false;
	for (i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		int			hi = hex_digit(hex[2 * i]);
		int			lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out->bytes[i] = (uint8) (hi << 4 | lo);
	}
	return true;
}

/* keep: drop the keys whose tokens are not live. */
static void
drop_dead(redisReply **keys, int n, bool *drop)
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
	{
		store_begin();
		store_live_among(hashes, nhashes, GetCurrentTimestamp(), live);
		store_end();
	}
	for (i = 0; i < nhashes; i++)
		drop[index[i]] = !live[i];
	pfree(hashes);
	pfree(live);
	pfree(index);
}

/* Write one page of live tokens; the key of the last, or false at the end. */
static bool
write_page(Pipeline *p, TokenKey *after)
{
	TimestampTz now = GetCurrentTimestamp();
	List	   *rows;
	ListCell   *lc;

	store_begin();
	rows = store_live_page(after, now, RESYNC_PAGE);
	store_end();
	foreach(lc, rows)
	{
		TokenRow   *row = lfirst(lc);
		int			user_len = strlen(row->user_id);
		int			len;
		char	   *value = fanout_token_json(&row->key, row->user_id, user_len,
											  row->info, row->created_at,
											  row->expires_at, &len);

		send_set(p, resync_db, resync_dblen, row->key.bytes, row->user_id,
				 user_len, value, len, row_deadline(row));
		*after = row->key;
	}
	return list_length(rows) == RESYNC_PAGE;
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
	bool		more;

	do
	{
		more = write_page(p, &after);
		MemoryContextReset(page_cxt);
		CHECK_FOR_INTERRUPTS();
	} while (more && pipe_wait(p));
	MemoryContextSwitchTo(old);
	MemoryContextDelete(page_cxt);
	return pipe_wait(p);
}

static bool
resync(Pipeline *p)
{
	StringInfoData match;

	initStringInfo(&match);
	pattern(&match, resync_db, resync_dblen, "user:*");
	if (!scan_delete(p, match.data, NULL) || !write_live(p))
		return false;
	pattern(&match, resync_db, resync_dblen, "token:*");
	return scan_delete(p, match.data, drop_dead);
}

/*
 * Make Redis hold exactly the live tokens of this database.  Runs in a
 * transaction of the worker; false (logged) when Redis could not be reached
 * or the publisher would not hold.
 */
bool
redis_resync_db(void)
{
	char		err[ERRLEN];
	char		server[MAXPGPATH + 16];
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
