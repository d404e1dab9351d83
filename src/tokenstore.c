/*-------------------------------------------------------------------------
 *
 * tokenstore.c
 *	  Loading the module: every tokenstore.* setting is defined here, and
 *	  the processes that run as long as the server are registered.
 *
 * The settings of the functions can be changed per session or per role,
 * since the functions take the same choices as arguments anyway (but the
 * token prefix, which every session must judge alike).  Those of
 * the background reload on SIGHUP; the size of the cache needs a restart.
 * When tokenstore is not in shared_preload_libraries there is no cache and
 * no worker, and the functions work on the table alone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "cache.h"
#include "common/int.h"
#include "compat.h"
#include "fanout.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "redis.h"
#include "registry.h"
#include "standby.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "worker.h"
#include "xact.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *tokenstore_token_prefix = NULL;
int			tokenstore_default_ttl = 0;
int			tokenstore_default_idle_timeout = 0;
static char *default_ttl_text = NULL;
static char *default_idle_timeout_text = NULL;
int			tokenstore_login_mode = LOGIN_MULTI;
int			tokenstore_max_tokens_per_user = 0;
int			tokenstore_touch_interval = 1000;
bool		tokenstore_notify = false;
int			tokenstore_max_cached_tokens = 100000;
int			tokenstore_max_cached_data = 32768;
int			tokenstore_flush_interval = 10000;
int			tokenstore_sweep_interval = 60;
int			tokenstore_last_used_resolution = 60000;
char	   *tokenstore_redis_url = NULL;
char	   *tokenstore_redis_sentinels = NULL;
char	   *tokenstore_redis_master_name = NULL;
char	   *tokenstore_redis_prefix = NULL;
int			tokenstore_redis_timeout = 1000;
char	   *tokenstore_redis_tls_ca_file = NULL;
char	   *tokenstore_redis_tls_cert_file = NULL;
char	   *tokenstore_redis_tls_key_file = NULL;
int			tokenstore_redis_queue_size = 16384;
bool		tokenstore_debug_pause_resync = false;
bool		tokenstore_standby_cache = false;
char	   *tokenstore_primary_conninfo = NULL;
bool		tokenstore_debug_hold_fill = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry login_mode_options[] = {
	{"multi", LOGIN_MULTI, false},
	{"single", LOGIN_SINGLE, false},
	{"share", LOGIN_SHARE, false},
	{NULL, 0, false}
};

/* The mode called name (exact, lower case), as the functions accept it. */
bool
login_mode_parse(const char *name, LoginMode *mode)
{
	const struct config_enum_entry *entry;

	for (entry = login_mode_options; entry->name != NULL; entry++)
	{
		if (strcmp(entry->name, name) == 0)
		{
			*mode = (LoginMode) entry->val;
			return true;
		}
	}
	return false;
}

/*
 * A prefix must survive URLs and headers untouched: [A-Za-z0-9_-]{0,16}.
 * Each refusal sets its own message: PostgreSQL's default one repeats the
 * whole value, which may be huge (or a token) and would reach the log.
 */
static bool
check_token_prefix(char **newval, void **extra, GucSource source)
{
	const char *p;
	size_t		len = strlen(*newval);

	if (len > TOKEN_PREFIX_MAX)
	{
		GUC_check_errmsg("tokenstore.token_prefix is too long");
		GUC_check_errdetail("The prefix may have at most %d characters; the value given has %zu bytes.",
							TOKEN_PREFIX_MAX, len);
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
		{
			GUC_check_errmsg("invalid value for parameter \"tokenstore.token_prefix\"");
			GUC_check_errdetail("The prefix may contain only letters, digits, \"_\" and \"-\".");
			return false;
		}
	}
	return true;
}

/*
 * A duration in interval syntax ('30 days', '1 hour 30 minutes'), in whole
 * seconds (months count 30 days); false if it is not one.  A duration
 * beyond what int64 holds comes out as PG_INT64_MAX (or MIN): out of range.
 */
static bool
parse_interval_seconds(const char *value, int64 *seconds)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm;
	int64		days;

	if (strlen(value) >= MAXDATELEN ||
		ParseDateTime(value, workbuf, sizeof(workbuf), field, ftype,
					  MAXDATEFIELDS, &nf) != 0 ||
		DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm) != 0 ||
		dtype != DTK_DELTA)
		return false;
	days = ((int64) itm.tm_year * MONTHS_PER_YEAR + itm.tm_mon) * DAYS_PER_MONTH +
		itm.tm_mday;
	if (pg_mul_s64_overflow(days, SECS_PER_DAY, seconds) ||
		pg_add_s64_overflow(*seconds, itm.tm_usec / USECS_PER_SEC, seconds))
		*seconds = (days < 0) ? PG_INT64_MIN : PG_INT64_MAX;
	return true;
}

/*
 * A duration setting: what a setting in seconds takes ('3600', '30d',
 * '12h') or interval syntax ('30 days'), from 0 (none) to DURATION_MAX
 * seconds.  The seconds go to the assign hook as the extra.  Every refusal
 * has a message of its own that names the setting and never repeats the
 * value (PostgreSQL's default message would, whatever its size); one over
 * the bound is SQLSTATE 22008, as an interval argument out of range is.
 */
#define DURATION_MAX	INT_MAX

static bool
check_duration(const char *name, char **newval, void **extra)
{
	int			ival;
	int64		seconds;
	int		   *result;

	if (parse_int(*newval, &ival, GUC_UNIT_S, NULL))
		seconds = ival;
	else if (!parse_interval_seconds(*newval, &seconds))
	{
		GUC_check_errmsg("invalid value for parameter \"%s\"", name);
		GUC_check_errdetail("A duration is an interval such as '30 days' or '1 hour', or seconds.");
		return false;
	}
	if (seconds < 0)
	{
		GUC_check_errmsg("invalid value for parameter \"%s\"", name);
		GUC_check_errdetail("A duration must not be negative; 0 means none.");
		return false;
	}
	if (seconds > DURATION_MAX)
	{
		GUC_check_errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE);
		GUC_check_errmsg("value of parameter \"%s\" is out of range", name);
		GUC_check_errdetail("A duration may be at most %d seconds (about 68 years).",
							DURATION_MAX);
		return false;
	}
	result = guc_malloc(LOG, sizeof(int));
	if (result == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	*result = (int) seconds;
	*extra = result;
	return true;
}

static bool
check_default_ttl(char **newval, void **extra, GucSource source)
{
	return check_duration("tokenstore.default_ttl", newval, extra);
}

static bool
check_default_idle_timeout(char **newval, void **extra, GucSource source)
{
	return check_duration("tokenstore.default_idle_timeout", newval, extra);
}

static void
assign_default_ttl(const char *newval, void *extra)
{
	tokenstore_default_ttl = *(int *) extra;
}

static void
assign_default_idle_timeout(const char *newval, void *extra)
{
	tokenstore_default_idle_timeout = *(int *) extra;
}

/*
 * A tokenstore process that runs as long as the server (a bgworker), from
 * the end of recovery or, on a hot standby, from its consistent state.
 */
static void
register_process(const char *function, const char *type,
				 BgWorkerStartTime start)
{
	BackgroundWorker worker;

	registry_describe(&worker, function, type);
	worker.bgw_start_time = start;
	RegisterBackgroundWorker(&worker);
}

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	cache_shmem_request();
	registry_shmem_request();
	fanout_shmem_request();
	standby_shmem_request();
}

static void
shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cache_shmem_startup();
	registry_shmem_startup();
	fanout_shmem_startup();
	standby_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

static void
define_background_settings(void)
{
	DefineCustomIntVariable("tokenstore.flush_interval",
							"How often the worker writes last uses from the cache to the table.",
							NULL,
							&tokenstore_flush_interval,
							10000, 100, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.sweep_interval",
							"How often the worker deletes expired tokens.",
							NULL,
							&tokenstore_sweep_interval,
							60, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.last_used_resolution",
							"How far last_used_at in the table may lag a cached token's use before the worker writes it.",
							"Idle-timeout tokens are written when it lags a tenth of their timeout, if that is less.",
							&tokenstore_last_used_resolution,
							60000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/* The Redis mirror: all reload on SIGHUP (the queue's size is with the cache's). */
static void
define_redis_settings(void)
{
	DefineCustomStringVariable("tokenstore.redis_url",
							   "Redis server that mirrors the tokens: redis://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path[?db=N] (empty: no mirror).",
							   NULL,
							   &tokenstore_redis_url,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_sentinels",
							   "Sentinels that name the Redis master: host:port, comma-separated (empty: none).",
							   NULL,
							   &tokenstore_redis_sentinels,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_master_name",
							   "Name of the master the sentinels monitor.",
							   NULL,
							   &tokenstore_redis_master_name,
							   "mymaster",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_prefix",
							   "Prefix of every Redis key and channel tokenstore writes.",
							   NULL,
							   &tokenstore_redis_prefix,
							   "tokenstore:",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.redis_timeout",
							"Timeout of connecting to Redis and of each exchange with it.",
							NULL,
							&tokenstore_redis_timeout,
							1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_tls_ca_file",
							   "Certificate authorities that sign the Redis server's certificate, for rediss:// (empty: the system's).",
							   NULL,
							   &tokenstore_redis_tls_ca_file,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_tls_cert_file",
							   "Client certificate shown to Redis, for rediss:// (empty: none).",
							   NULL,
							   &tokenstore_redis_tls_cert_file,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.redis_tls_key_file",
							   "Private key of the client certificate, for rediss:// (empty: none).",
							   NULL,
							   &tokenstore_redis_tls_key_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("tokenstore.primary_conninfo",
							   "Where a hot standby sends the uses its checks recorded (empty: primary_conninfo).",
							   NULL,
							   &tokenstore_primary_conninfo,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("tokenstore.debug_hold_fill",
							 "For tests only: a check that read a token from the table takes the shared advisory lock 7370 before it fills the cache.",
							 NULL,
							 &tokenstore_debug_hold_fill,
							 false,
							 PGC_SUSET, GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("tokenstore.debug_pause_resync",
							 "For tests only: holds every resynchronisation of Redis between two pages.",
							 NULL,
							 &tokenstore_debug_pause_resync,
							 false,
							 PGC_SIGHUP, GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
}

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	DefineCustomStringVariable("tokenstore.token_prefix",
							   "Prefix of generated tokens, so secret scanners can spot them.",
							   NULL,
							   &tokenstore_token_prefix,
							   "tks_",
							   PGC_SIGHUP, 0,
							   check_token_prefix, NULL, NULL);
	DefineCustomStringVariable("tokenstore.default_ttl",
							   "Absolute lifetime of a token made without a ttl, such as '30 days' (0: none).",
							   NULL,
							   &default_ttl_text,
							   "30 days",
							   PGC_USERSET, 0,
							   check_default_ttl, assign_default_ttl, NULL);
	DefineCustomStringVariable("tokenstore.default_idle_timeout",
							   "Idle timeout of a token made without one, such as '2 hours' (0: none).",
							   NULL,
							   &default_idle_timeout_text,
							   "0",
							   PGC_USERSET, 0,
							   check_default_idle_timeout, assign_default_idle_timeout, NULL);
	DefineCustomEnumVariable("tokenstore.login_mode",
							 "Login mode of token_make calls that give none: multi, single or share.",
							 NULL,
							 &tokenstore_login_mode,
							 LOGIN_MULTI, login_mode_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.max_tokens_per_user",
							"Most live tokens a user keeps in multi mode; the least recently used go first (0: no limit).",
							NULL,
							&tokenstore_max_tokens_per_user,
							0, 0, INT_MAX,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.touch_interval",
							"How stale last_used_at may get before a check writes it to the table.",
							NULL,
							&tokenstore_touch_interval,
							1000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("tokenstore.notify",
							 "Send a NOTIFY on channel tokenstore for every token event.",
							 NULL,
							 &tokenstore_notify,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	define_background_settings();
	define_redis_settings();

	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("tokenstore.max_cached_tokens",
								"Capacity of the shared-memory token cache (0: no cache).",
								NULL,
								&tokenstore_max_cached_tokens,
								100000, 0, INT_MAX / 2,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
		DefineCustomIntVariable("tokenstore.max_cached_data",
								"Shared memory for the info and data of cached tokens (0: none cached).",
								NULL,
								&tokenstore_max_cached_data,
								32768, 0, INT_MAX / 1024,
								PGC_POSTMASTER, GUC_UNIT_KB,
								NULL, NULL, NULL);
		DefineCustomBoolVariable("tokenstore.standby_cache",
								 "Log what hot standbys' caches must forget to WAL, so they answer checks from their own caches; every standby must preload tokenstore.",
								 NULL,
								 &tokenstore_standby_cache,
								 false,
								 PGC_POSTMASTER, 0,
								 NULL, NULL, NULL);
		DefineCustomIntVariable("tokenstore.redis_queue_size",
								"Shared memory for committed changes waiting to be sent to Redis.",
								NULL,
								&tokenstore_redis_queue_size,
								16384, 64, INT_MAX / 1024,
								PGC_POSTMASTER, GUC_UNIT_KB,
								NULL, NULL, NULL);
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = shmem_startup;
		xact_init();
		redis_init();
		standby_init();
		register_process("tokenstore_launcher_main", "tokenstore launcher",
						 BgWorkerStart_RecoveryFinished);
		register_process("tokenstore_publisher_main", "tokenstore publisher",
						 BgWorkerStart_RecoveryFinished);
		register_process("tokenstore_sender_main", "tokenstore standby sender",
						 BgWorkerStart_ConsistentState);
	}

	MarkGUCPrefixReserved("tokenstore");
}
