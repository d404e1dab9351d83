/*-------------------------------------------------------------------------
 *
 * redis_client.c
 *	  Talking to Redis: the settings' URL and sentinels, connections,
 *	  pipelines, the keys, and the commands of each change.  Used by the
 *	  publisher (redis_publisher.c) and a database's resynchronisation
 *	  (redis_resync.c).
 *
 * Keys, for database db (its name, bytes outside [A-Za-z0-9_.-]
 * percent-encoded, so that no database's keys match another's pattern):
 *
 *	 <prefix><db>:token:<hex SHA-256>	JSON of the live token, expiring at
 *										its deadline
 *	 <prefix><db>:user:<user id>		set of the user's token keys
 *	 <prefix>events						channel: a message per revocation
 *	 <prefix>mirror.<system id>			the marker of the publisher of the
 *										cluster with that system identifier:
 *										gone means Redis lost its data
 *
 * hiredis calls are not interruptible: every connection has socket
 * timeouts (tokenstore.redis_timeout), replies are freed before anything can
 * raise an error, and no lock is ever held while talking to Redis.
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

#include "access/xlog.h"
#include "fanout.h"
#include "lib/stringinfo.h"
#include "redis.h"
#include "redis_client.h"
#ifdef TOKENSTORE_TLS
#include <hiredis/hiredis_ssl.h>
#endif
#include "tcop/tcopprot.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/json.h"
#include "utils/timestamp.h"

/* Where the master is and how to log in. */
typedef struct RedisTarget
{
	bool		unix_socket;
	bool		tls;			/* rediss:// */
	char		host[MAXPGPATH];	/* or the socket's path */
	int			port;
	char		user[128];
	char		password[256];
	int			db;
} RedisTarget;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* ---- keeping passwords out of the log ---- */

/* Overwrite the password of every redis://, rediss:// or unix:// URL in s. */
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
			  (p - s >= 6 && strncmp(p - 6, "rediss", 6) == 0) ||
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
			 strstr(debug_query_string, "rediss://") != NULL ||
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
	else if (strncmp(url, "rediss://", 9) == 0)
	{
		t->tls = true;
		p = url + 9;
	}
	else if (strncmp(url, "unix://", 7) == 0)
	{
		t->unix_socket = true;
		p = url + 7;
	}
	else
	{
		snprintf(err, REDIS_ERRLEN, "invalid tokenstore.redis_url: it must start with redis://, rediss:// or unix://");
		return false;
	}
#ifndef TOKENSTORE_TLS
	if (t->tls)
	{
		snprintf(err, REDIS_ERRLEN,
				 "tokenstore.redis_url: rediss:// needs TLS, and this build of tokenstore has none (hiredis %d.%d without hiredis_ssl; TLS needs hiredis 1.0 or later)",
				 HIREDIS_MAJOR, HIREDIS_MINOR);
		return false;
	}
#endif
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
			snprintf(err, REDIS_ERRLEN, "invalid tokenstore.redis_url: user or password too long");
			return false;
		}
		p = at + 1;
	}
	ok = t->unix_socket ? parse_path(p, t) : parse_host(p, t);
	if (!ok)
		snprintf(err, REDIS_ERRLEN, "invalid tokenstore.redis_url: expected %s",
				 t->unix_socket ? "unix://[[user]:password@]/path[?db=N]" :
				 "redis[s]://[[user]:password@]host[:port][/db]");
	return ok;
}

bool
redis_configured(void)
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
redisReply *
redis_command(redisContext *c, char *err, int argc, const char **argv)
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
		snprintf(err, REDIS_ERRLEN, "%s failed: %s", argv[0],
				 c->err ? c->errstr : "no reply");
		return NULL;
	}
	if (reply->type == REDIS_REPLY_ERROR)
	{
		snprintf(err, REDIS_ERRLEN, "%s failed: %s", argv[0], reply->str);
		freeReplyObject(reply);
		return NULL;
	}
	return reply;
}

bool
redis_command_ok(redisContext *c, char *err, int argc, const char **argv)
{
	redisReply *reply = redis_command(c, err, argc, argv);

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

		if (t->user[0] != '\0' ? !redis_command_ok(c, err, 3, with_user) :
			!redis_command_ok(c, err, 2, without))
			return false;
	}
	if (t->db != 0)
	{
		const char *select[] = {"SELECT", db};

		snprintf(db, sizeof(db), "%d", t->db);
		if (!redis_command_ok(c, err, 2, select))
			return false;
	}
	reply = redis_command(c, err, 1, (const char *[]) {"ROLE"});
	if (reply == NULL)
		return false;
	master = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		strcmp(reply->element[0]->str, "master") == 0;
	freeReplyObject(reply);
	if (!master)
		snprintf(err, REDIS_ERRLEN, "the server is not a master");
	return master;
}

#ifdef TOKENSTORE_TLS
static const char *
setting_or_null(const char *value)
{
	return value[0] != '\0' ? value : NULL;
}

/*
 * Turn the connection to TLS, the server's certificate verified against
 * tokenstore.redis_tls_ca_file (or the system's authorities), with a client
 * certificate when one is set.
 */
static bool
start_tls(redisContext *c, const RedisTarget *t, char *err)
{
	static bool initialized = false;
	redisSSLContextError why = REDIS_SSL_CTX_NONE;
	redisSSLContext *ssl;
	bool		ok;

	if (!initialized)
	{
		(void) redisInitOpenSSL();
		initialized = true;
	}
	ssl = redisCreateSSLContext(setting_or_null(tokenstore_redis_tls_ca_file), NULL,
								setting_or_null(tokenstore_redis_tls_cert_file),
								setting_or_null(tokenstore_redis_tls_key_file),
								t->host, &why);
	if (ssl == NULL)
	{
		snprintf(err, REDIS_ERRLEN, "TLS: %s", redisSSLContextGetError(why));
		return false;
	}
	ok = redisInitiateSSLWithContext(c, ssl) == REDIS_OK;
	if (!ok)
		snprintf(err, REDIS_ERRLEN, "TLS: %s", c->errstr);
	/* the connection keeps its own reference to what it needs */
	redisFreeSSLContext(ssl);
	return ok;
}
#else
static bool
start_tls(redisContext *c, const RedisTarget *t, char *err)
{
	snprintf(err, REDIS_ERRLEN, "TLS is not in this build");
	return false;
}
#endif

static redisContext *
connect_target(const RedisTarget *t, char *err)
{
	char		where[REDIS_SERVER_LEN];
	char		why[REDIS_ERRLEN];
	redisContext *c;

	describe(t, where, sizeof(where));
	c = t->unix_socket ? redisConnectUnixWithTimeout(t->host, timeout_tv()) :
		redisConnectWithTimeout(t->host, t->port, timeout_tv());
	if (c == NULL)
	{
		snprintf(err, REDIS_ERRLEN, "could not allocate a Redis connection");
		return NULL;
	}
	if (c->err)
		snprintf(why, sizeof(why), "%s", c->errstr);
	else if (redisSetTimeout(c, timeout_tv()) != REDIS_OK)
		snprintf(why, sizeof(why), "could not set its timeout");
	else if (t->tls && !start_tls(c, t, why))
		 /* why is set */ ;
	else if (prepare(c, t, why))
		return c;
	snprintf(err, REDIS_ERRLEN, "Redis at %s: %s", where, why);
	redisFree(c);
	return NULL;
}

/*
 * What to do with a sentinel: true when done (the iteration stops); *keep
 * to keep the connection.
 */
typedef bool (*SentinelFunc) (redisContext *s, const char *where, void *arg,
							  bool *keep, char *err);

/*
 * Connect to the sentinels of the list in turn and call fn on each, until
 * one call is done; false (with *err) if none was.
 */
static bool
each_sentinel(SentinelFunc fn, void *arg, char *err)
{
	char	   *list = pstrdup(tokenstore_redis_sentinels);
	char	   *save = NULL;
	char	   *item;
	bool		done = false;

	snprintf(err, REDIS_ERRLEN, "invalid tokenstore.redis_sentinels: expected host:port[,host:port...]");
	for (item = strtok_r(list, ", ", &save); item != NULL && !done;
		 item = strtok_r(NULL, ", ", &save))
	{
		char	   *colon = strrchr(item, ':');
		redisContext *s;
		bool		keep = false;

		if (colon == NULL)
			break;
		*colon = '\0';
		s = redisConnectWithTimeout(item, atoi(colon + 1), timeout_tv());
		*colon = ':';
		if (s == NULL || s->err)
			snprintf(err, REDIS_ERRLEN, "sentinel %s: %s", item,
					 s ? s->errstr : "out of memory");
		else if (redisSetTimeout(s, timeout_tv()) != REDIS_OK)
			snprintf(err, REDIS_ERRLEN, "sentinel %s: could not set its timeout", item);
		else
			done = fn(s, item, arg, &keep, err);
		if (s != NULL && !keep)
			redisFree(s);
	}
	pfree(list);
	return done;
}

/* SentinelFunc: where the master is, into the RedisTarget arg. */
static bool
ask_master(redisContext *s, const char *where, void *arg, bool *keep,
		   char *err)
{
	RedisTarget *t = arg;
	const char *argv[] = {"SENTINEL", "get-master-addr-by-name",
	tokenstore_redis_master_name};
	redisReply *reply = redis_command(s, err, 3, argv);
	bool		ok;

	ok = reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
		reply->elements == 2 &&
		reply->element[0]->type == REDIS_REPLY_STRING &&
		reply->element[1]->type == REDIS_REPLY_STRING &&
		copy_part(t->host, sizeof(t->host), reply->element[0]->str,
				  reply->element[0]->len);
	if (ok)
		t->port = atoi(reply->element[1]->str);
	else if (reply != NULL)
		snprintf(err, REDIS_ERRLEN, "sentinel %s does not know master \"%s\"",
				 where, tokenstore_redis_master_name);
	if (reply)
		freeReplyObject(reply);
	return ok;
}

/* SentinelFunc: a connection subscribed to the sentinel's switches. */
static bool
subscribe(redisContext *s, const char *where, void *arg, bool *keep,
		  char *err)
{
	redisReply *reply = redis_command(s, err, 2,
									  (const char *[]) {"SUBSCRIBE", "+switch-master"});

	if (reply == NULL)
		return false;
	freeReplyObject(reply);
	*(redisContext **) arg = s;
	*keep = true;
	return true;
}

/*
 * A connection to a sentinel subscribed to "+switch-master", so that a
 * failover is noticed when the sentinels announce it; NULL (with *err) if
 * no sentinel answers.
 */
redisContext *
redis_subscribe_switches(char *err)
{
	redisContext *sub = NULL;

	(void) each_sentinel(subscribe, &sub, err);
	return sub;
}

/*
 * Read what the subscription has received (call it when its socket is
 * readable: it reads once, then takes every message read): true if the
 * sentinels announced that our master is now another than server.
 * *broken if the subscription failed (connect it again).
 */
bool
redis_switch_announced(redisContext *sub, const char *server, bool *broken)
{
	bool		switched = false;
	void	   *reply = NULL;

	*broken = redisBufferRead(sub) != REDIS_OK;
	while (!*broken && redisReaderGetReply(sub->reader, &reply) == REDIS_OK &&
		   reply != NULL)
	{
		redisReply *r = reply;
		char		name[NAMEDATALEN + 1];
		char		host[MAXPGPATH];
		int			port;
		char		now[REDIS_SERVER_LEN];

		/* ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"] */
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
			r->element[2]->type == REDIS_REPLY_STRING &&
			sscanf(r->element[2]->str, "%" CppAsString2(NAMEDATALEN) "s %*s %*s %1023s %d",
				   name, host, &port) == 3 &&
			strcmp(name, tokenstore_redis_master_name) == 0)
		{
			snprintf(now, sizeof(now), "%s:%d", host, port);
			switched = switched || strcmp(now, server) != 0;
		}
		freeReplyObject(reply);
		reply = NULL;
	}
	return switched;
}

/* The settings' target: the URL's, with the master the sentinels name. */
static bool
target_from_settings(RedisTarget *t, char *err)
{
	if (!parse_url(tokenstore_redis_url[0] ? tokenstore_redis_url : "redis://",
				   t, err))
		return false;
	if (tokenstore_redis_sentinels[0] != '\0')
		return each_sentinel(ask_master, t, err);
	if (t->host[0] == '\0')
	{
		snprintf(err, REDIS_ERRLEN, "invalid tokenstore.redis_url: no host");
		return false;
	}
	return true;
}

/* Connect to the master the settings name; NULL with *err set. */
redisContext *
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
bool
redis_master_moved(const char *server)
{
	RedisTarget t;
	char		err[REDIS_ERRLEN];
	char		now[REDIS_SERVER_LEN];

	if (tokenstore_redis_sentinels[0] == '\0' || !target_from_settings(&t, err))
		return false;
	describe(&t, now, sizeof(now));
	return strcmp(now, server) != 0;
}

/* ---- pipelines ---- */

void
pipe_send(Pipeline *p, int argc, const char **argv, const size_t *lens)
{
	if (p->failed)
		return;
	if (redisAppendCommandArgv(p->c, argc, argv, lens) != REDIS_OK)
	{
		p->failed = true;
		snprintf(p->err, REDIS_ERRLEN, "%s", p->c->errstr);
		return;
	}
	p->pending++;
	p->sent++;
}

/*
 * Read every pending reply.  A command Redis refuses is counted and logged
 * once; READONLY means the master was demoted, which fails the connection.
 */
bool
pipe_wait(Pipeline *p)
{
	while (p->pending > 0 && !p->failed)
	{
		redisReply *reply = NULL;

		if (redisGetReply(p->c, (void **) &reply) != REDIS_OK || reply == NULL)
		{
			p->failed = true;
			snprintf(p->err, REDIS_ERRLEN, "%s", p->c->err ? p->c->errstr : "no reply");
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
				snprintf(p->err, REDIS_ERRLEN, "%s", reply->str);
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
token_key_name(StringInfo buf, const char *db, int dblen, const uint8 *hash)
{
	resetStringInfo(buf);
	append_db(buf, db, dblen);
	appendStringInfo(buf, "token:%s", hex_text(hash, PG_SHA256_DIGEST_LENGTH));
}

/* The name of a user's set of token keys. */
void
redis_user_key(StringInfo buf, const char *db, int dblen, const char *user,
			   int userlen)
{
	resetStringInfo(buf);
	append_db(buf, db, dblen);
	appendStringInfoString(buf, "user:");
	appendBinaryStringInfo(buf, user, userlen);
}

/*
 * The key whose absence tells the publisher that Redis lost its data: one
 * per cluster (its system identifier), so that clusters sharing a Redis and
 * a prefix do not take each other's marker for their own.  No ':' follows
 * the prefix, so no database's pattern matches it.
 */
void
redis_marker_key(StringInfo buf)
{
	resetStringInfo(buf);
	appendStringInfo(buf, "%smirror." UINT64_FORMAT, tokenstore_redis_prefix,
					 GetSystemIdentifier());
}

/* A glob pattern matching the keys under the prefix and db, then tail. */
void
redis_pattern(StringInfo buf, const char *db, int dblen, const char *tail)
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

/* Write a live token's key and add it to its user's set (if it has a user). */
void
redis_send_set(Pipeline *p, const char *db, int dblen, const uint8 *hash,
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
	redis_user_key(&ukey, db, dblen, user, userlen);
	set[1] = key.data;
	setlens[1] = key.len;
	snprintf(ms, sizeof(ms), INT64_FORMAT, unix_ms(deadline));
	setlens[4] = strlen(ms);
	pipe_send(p, deadline == DEADLINE_NONE ? 3 : 5, set, setlens);
	sadd[1] = ukey.data;
	saddlens[1] = ukey.len;
	sadd[2] = key.data;
	saddlens[2] = key.len;
	if (userlen > 0)
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

/* Delete a token's key and drop it from its user's set, if any (no event). */
void
redis_send_drop(Pipeline *p, const char *db, int dblen, const uint8 *hash,
				const char *user, int userlen)
{
	StringInfoData key;
	StringInfoData ukey;
	const char *del[] = {"DEL", NULL};
	size_t		dellens[2] = {3, 0};
	const char *srem[] = {"SREM", NULL, NULL};
	size_t		sremlens[3] = {4, 0, 0};

	initStringInfo(&key);
	initStringInfo(&ukey);
	token_key_name(&key, db, dblen, hash);
	redis_user_key(&ukey, db, dblen, user, userlen);
	del[1] = key.data;
	dellens[1] = key.len;
	pipe_send(p, 2, del, dellens);
	srem[1] = ukey.data;
	sremlens[1] = ukey.len;
	srem[2] = key.data;
	sremlens[2] = key.len;
	if (userlen > 0)
		pipe_send(p, 3, srem, sremlens);
	pfree(key.data);
	pfree(ukey.data);
}

/* A revocation: drop the token, and publish it. */
static void
send_remove(Pipeline *p, const FanoutMsg *m)
{
	StringInfoData key;
	StringInfoData event;

	redis_send_drop(p, fanout_msg_db(m), m->db_len, m->hash,
					fanout_msg_user(m), m->user_len);
	initStringInfo(&key);
	initStringInfo(&event);
	token_key_name(&key, fanout_msg_db(m), m->db_len, m->hash);
	appendStringInfoString(&event, "{\"event\": \"revoke\", \"database\": ");
	escape_json(&event, pnstrdup(fanout_msg_db(m), m->db_len));
	appendStringInfoString(&event, ", \"user_id\": ");
	fanout_append_user_json(&event, fanout_msg_user(m), m->user_len);
	appendStringInfo(&event, ", \"token_hash\": \"%s\", \"key\": ",
					 hex_text(m->hash, PG_SHA256_DIGEST_LENGTH));
	escape_json(&event, key.data);
	appendStringInfoChar(&event, '}');
	send_publish(p, &event);
	pfree(key.data);
	pfree(event.data);
}

/* PEXPIREAT of a token's key; with lt, only if it brings the expiry nearer. */
static void
send_pexpireat(Pipeline *p, const char *db, int dblen, const uint8 *hash,
			   TimestampTz deadline, bool lt)
{
	StringInfoData key;
	char		ms[32];
	const char *argv[] = {"PEXPIREAT", NULL, ms, "LT"};
	size_t		lens[4] = {9, 0, 0, 2};

	initStringInfo(&key);
	token_key_name(&key, db, dblen, hash);
	argv[1] = key.data;
	lens[1] = key.len;
	snprintf(ms, sizeof(ms), INT64_FORMAT, unix_ms(deadline));
	lens[2] = strlen(ms);
	pipe_send(p, lt ? 4 : 3, argv, lens);
	pfree(key.data);
}

/*
 * Bring a token key's expiry forward to deadline, if it is later (or none):
 * never creates the key, never extends it (PEXPIREAT ... LT, Redis 7.0).
 */
void
redis_send_cap(Pipeline *p, const char *db, int dblen, const uint8 *hash,
			   TimestampTz deadline)
{
	send_pexpireat(p, db, dblen, hash, deadline, true);
}

/* The next batch of a cursor's walk: SCAN of keys, or SSCAN of a set. */
static redisReply *
scan_batch(Pipeline *p, const char *set, const char *match, const char *cursor)
{
	const char *scan[] = {"SCAN", cursor, "MATCH", match, "COUNT", "1000"};
	const char *sscan[] = {"SSCAN", set, cursor, "COUNT", "1000"};
	redisReply *reply;

	if (!pipe_wait(p))
		return NULL;
	reply = set ? redis_command(p->c, p->err, lengthof(sscan), sscan) :
		redis_command(p->c, p->err, lengthof(scan), scan);
	if (reply != NULL &&
		(reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		 reply->element[0]->type != REDIS_REPLY_STRING ||
		 reply->element[1]->type != REDIS_REPLY_ARRAY))
	{
		snprintf(p->err, REDIS_ERRLEN, "%s failed: bad reply", set ? "SSCAN" : "SCAN");
		freeReplyObject(reply);
		reply = NULL;
	}
	if (reply == NULL)
		p->failed = true;
	else
		p->sent++;
	return reply;
}

/*
 * Walk a cursor to its end: the keys matching match, or (with set) the
 * members of that set, a batch at a time, each given to visit, whose
 * commands are pipelined.  False (p->err says why) if Redis failed or visit
 * said to stop.
 */
bool
redis_scan(Pipeline *p, const char *set, const char *match, ScanFunc visit,
		   void *arg)
{
	char		cursor[32] = "0";
	bool		ok = true;

	do
	{
		redisReply *volatile reply = scan_batch(p, set, match, cursor);

		if (reply == NULL)
			return false;
		strlcpy(cursor, reply->element[0]->str, sizeof(cursor));
		PG_TRY();
		{
			ok = visit(p, reply->element[1]->element,
					   reply->element[1]->elements, arg);
		}
		PG_FINALLY();
		{
			freeReplyObject(reply);
		}
		PG_END_TRY();
	} while (ok && strcmp(cursor, "0") != 0);
	return ok && pipe_wait(p);
}

/* ScanFunc of redis_scan_delete: arg points to its KeepFunc. */
static bool
delete_batch(Pipeline *p, redisReply **keys, int n, void *arg)
{
	KeepFunc	keep = *(KeepFunc *) arg;
	bool	   *drop = palloc0(sizeof(bool) * Max(n, 1));
	int			i;

	if (keep != NULL)
		keep(keys, n, drop);
	for (i = 0; i < n; i++)
	{
		const char *del[] = {"UNLINK", keys[i]->str};
		size_t		dellens[2] = {6, keys[i]->len};

		if (keep == NULL || drop[i])
			pipe_send(p, 2, del, dellens);
	}
	pfree(drop);
	return !p->failed;
}

/*
 * Delete every key matching the pattern, or, with keep, those of them that
 * keep says no to (keep sees a batch of key names and sets drop[i]).
 */
bool
redis_scan_delete(Pipeline *p, const char *match, KeepFunc keep)
{
	return redis_scan(p, NULL, match, delete_batch, &keep);
}

/* Delete every key of a database (no event). */
bool
redis_send_drop_db(Pipeline *p, const char *db, int dblen)
{
	StringInfoData match;
	bool		ok;

	initStringInfo(&match);
	redis_pattern(&match, db, dblen, "*");
	ok = redis_scan_delete(p, match.data, NULL);
	pfree(match.data);
	return ok;
}

static void
send_purge(Pipeline *p, const FanoutMsg *m)
{
	StringInfoData event;

	if (!redis_send_drop_db(p, fanout_msg_db(m), m->db_len))
		return;
	initStringInfo(&event);
	appendStringInfoString(&event, "{\"event\": \"purge\", \"database\": ");
	escape_json(&event, pnstrdup(fanout_msg_db(m), m->db_len));
	appendStringInfoChar(&event, '}');
	send_publish(p, &event);
	pfree(event.data);
}

void
redis_send_msg(Pipeline *p, const FanoutMsg *m, TimestampTz now)
{
	switch ((FanoutKind) m->kind)
	{
		case FANOUT_SET:
			if (m->deadline <= now)
				send_remove(p, m);
			else
				redis_send_set(p, fanout_msg_db(m), m->db_len, m->hash,
						 fanout_msg_user(m), m->user_len,
						 fanout_msg_value(m), m->value_len, m->deadline);
			break;
		case FANOUT_EXPIRE:
			send_pexpireat(p, fanout_msg_db(m), m->db_len, m->hash, m->deadline,
						   false);
			break;
		case FANOUT_REMOVE:
			send_remove(p, m);
			break;
		case FANOUT_PURGE:
			send_purge(p, m);
			break;
	}
}

