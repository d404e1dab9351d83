/*-------------------------------------------------------------------------
 *
 * api.c
 *	  The SQL-callable functions: argument checks, errors, result rows.
 *
 * Every function reads the clock once and uses that instant for every
 * deadline it checks or sets, so one call never disagrees with itself.
 * Bad input is an error with an errcode and a message that says what to
 * change; a NULL token is simply no token (NULL, false or no row).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "cache.h"
#include "commands/dbcommands.h"
#include "common/int.h"
#include "compat.h"
#include "datatype/timestamp.h"
#include "deadline.h"
#include "event.h"
#include "fanout.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "store.h"
#include "token.h"
#include "tokenstore.h"
#include "replication/walreceiver.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "registry.h"
#include "worker.h"
#include "xact.h"

#define USER_ID_MAX_BYTES	CACHE_USER_ID_MAX
/* the longest argument an error message repeats: shorter than any token */
#define QUOTE_MAX			(TOKEN_MIN_LEN - 1)
/* the advisory lock tokenstore.debug_hold_fill takes (tests only) */
#define HOLD_FILL_LOCK		7370
/* 365.25 / 12 days: a month, when only the order of magnitude matters */
#define USECS_PER_AVG_MONTH	(INT64CONST(2629800) * USECS_PER_SEC)

PG_FUNCTION_INFO_V1(token_make);
PG_FUNCTION_INFO_V1(token_user);
PG_FUNCTION_INFO_V1(token_check);
PG_FUNCTION_INFO_V1(token_list);
PG_FUNCTION_INFO_V1(token_refresh);
PG_FUNCTION_INFO_V1(token_set_info);
PG_FUNCTION_INFO_V1(token_delete);
PG_FUNCTION_INFO_V1(token_delete_id);
PG_FUNCTION_INFO_V1(token_delete_user);
PG_FUNCTION_INFO_V1(token_rotate);
PG_FUNCTION_INFO_V1(token_save);
PG_FUNCTION_INFO_V1(token_data);
PG_FUNCTION_INFO_V1(token_touch);
PG_FUNCTION_INFO_V1(token_sessions);
PG_FUNCTION_INFO_V1(token_delete_sessions);
PG_FUNCTION_INFO_V1(token_sweep);
PG_FUNCTION_INFO_V1(token_flush);
PG_FUNCTION_INFO_V1(token_last_used);
PG_FUNCTION_INFO_V1(token_stats);
PG_FUNCTION_INFO_V1(token_redis_stats);
PG_FUNCTION_INFO_V1(token_reseal);
PG_FUNCTION_INFO_V1(token_record_uses);
PG_FUNCTION_INFO_V1(token_standby_state);

/* ---- arguments ---- */

/*
 * A value an error message may repeat, or NULL: only one shorter than the
 * shortest token a caller may give and not starting with the token prefix,
 * so that neither a huge argument nor a token passed in the wrong place (or
 * a piece of one) reaches the log.
 */
static const char *
quotable(text *t)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	size_t		prefix_len = strlen(tokenstore_token_prefix);

	if (len > QUOTE_MAX)
		return NULL;
	if (prefix_len > 0 && (size_t) len >= prefix_len &&
		memcmp(VARDATA_ANY(t), tokenstore_token_prefix, prefix_len) == 0)
		return NULL;
	return text_to_cstring(t);
}

/* A user id, or NULL where none is allowed (a session's). */
static char *
arg_user_id_or_null(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		return NULL;
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id must not be empty")));
	if (len > USER_ID_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id is too long"),
				 errdetail("A user_id may have at most %d bytes; this one has %d.",
						   USER_ID_MAX_BYTES, len)));
	return text_to_cstring(t);
}

static char *
arg_user_id(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("user_id must not be null")));
	return arg_user_id_or_null(fcinfo, argno);
}

/*
 * The key of the token argument; false if it is NULL or mistyped (a token
 * that no lookup could find).
 */
static bool
arg_token(FunctionCallInfo fcinfo, int argno, TokenKey *key)
{
	text	   *t;

	if (PG_ARGISNULL(argno))
		return false;
	t = PG_GETARG_TEXT_PP(argno);
	if (token_is_mistyped(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
						  tokenstore_token_prefix))
		return false;
	token_key(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), key);
	return true;
}

/* info as given, '{}' for NULL; anything but an object is an error. */
static Jsonb *
arg_info(FunctionCallInfo fcinfo, int argno)
{
	Jsonb	   *info;

	if (PG_ARGISNULL(argno))
		return DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												  CStringGetDatum("{}")));
	info = PG_GETARG_JSONB_P(argno);
	if (!JB_ROOT_IS_OBJECT(info) || JB_ROOT_IS_SCALAR(info))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("info must be a JSON object"),
				 errdetail("The value given is a JSON %s.",
						   text_to_cstring(DatumGetTextPP(DirectFunctionCall1(jsonb_typeof,
																			  JsonbPGetDatum(info))))),
				 errhint("Wrap it in an object, for example {\"data\": ...}.")));
	return info;
}

static char *
interval_text(Interval *span)
{
	return DatumGetCString(DirectFunctionCall1(interval_out,
											   IntervalPGetDatum(span)));
}

static void
negative_idle_error(Interval *span)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("idle_timeout must not be negative"),
			 errdetail("The value given is %s.", interval_text(span)),
			 errhint("Pass 0 for no idle timeout.")));
}

static void
out_of_range_error(const char *name, Interval *span, const char *limit)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("%s is out of range", name),
			 errdetail("The value given is %s; %s.", interval_text(span), limit)));
}

/*
 * An interval as microseconds, months counted at their average length:
 * enough to tell a span that no deadline can reach from one that fits.
 * False if it does not fit in 64 bits.
 */
static bool
interval_magnitude(Interval *span, int64 *usecs)
{
	int64		months;
	int64		days;

	return !pg_mul_s64_overflow(span->month, USECS_PER_AVG_MONTH, &months) &&
		!pg_mul_s64_overflow(span->day, USECS_PER_DAY, &days) &&
		!pg_add_s64_overflow(months, days, usecs) &&
		!pg_add_s64_overflow(*usecs, span->time, usecs);
}

#define DEADLINE_LIMIT_TEXT "a deadline must be before the year 10000"

/*
 * now + span on the calendar, for a ttl: DEADLINE_NONE for 'infinity', and
 * now (a token dead at once) for a span of zero or less; an error past
 * TIME_LIMIT.  The magnitude is checked first (with a year to spare for the
 * calendar's irregularities), so that the calendar arithmetic itself cannot
 * overflow.
 */
static TimestampTz
deadline_after(TimestampTz now, Interval *span)
{
	int64		magnitude;
	TimestampTz deadline;

	if (INTERVAL_IS_NOEND(span))
		return DEADLINE_NONE;
	if (INTERVAL_IS_NOBEGIN(span))
		return now;
	if (!interval_magnitude(span, &magnitude) ||
		magnitude > TIME_LIMIT - now + USECS_PER_DAY * DAYS_PER_YEAR)
		out_of_range_error("ttl", span, DEADLINE_LIMIT_TEXT);
	if (magnitude < -(now - MIN_TIMESTAMP) + USECS_PER_DAY * DAYS_PER_YEAR)
		return now;
	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(now),
													   IntervalPGetDatum(span)));
	if (deadline >= TIME_LIMIT)
		out_of_range_error("ttl", span, DEADLINE_LIMIT_TEXT);
	return Max(deadline, now);
}

/* The deadline of the tokenstore.default_ttl setting from now. */
static TimestampTz
default_deadline(TimestampTz now)
{
	return tokenstore_default_ttl > 0 ?
		now + (int64) tokenstore_default_ttl * USECS_PER_SEC : DEADLINE_NONE;
}

/*
 * The absolute deadline for a ttl argument (NULL: the setting):
 * DEADLINE_NONE when there is none.
 */
static TimestampTz
arg_ttl(FunctionCallInfo fcinfo, int argno, TimestampTz now)
{
	if (PG_ARGISNULL(argno))
		return default_deadline(now);
	return deadline_after(now, PG_GETARG_INTERVAL_P(argno));
}

/*
 * An absolute deadline argument (NULL: the setting from now): 'infinity'
 * is none, and one already past (or '-infinity') is now, a token dead at
 * once.
 */
static TimestampTz
arg_expires_at(FunctionCallInfo fcinfo, int argno, TimestampTz now)
{
	TimestampTz t;

	if (PG_ARGISNULL(argno))
		return default_deadline(now);
	t = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_IS_NOEND(t))
		return DEADLINE_NONE;
	if (t >= TIME_LIMIT)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("expires_at is out of range"),
				 errdetail("The value given is %s; %s.",
						   timestamptz_to_str(t), DEADLINE_LIMIT_TEXT),
				 errhint("Pass 'infinity' for no deadline.")));
	return Max(t, now);
}

/*
 * The absolute deadline of a call that takes a ttl (argument ttl_argno) and
 * an expires_at (argument at_argno, which the SQL objects before 1.4 lack):
 * one of them, or neither for the setting.
 */
static TimestampTz
arg_deadline(FunctionCallInfo fcinfo, int ttl_argno, int at_argno,
			 TimestampTz now)
{
	if (PG_NARGS() <= at_argno || PG_ARGISNULL(at_argno))
		return arg_ttl(fcinfo, ttl_argno, now);
	if (!PG_ARGISNULL(ttl_argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl and expires_at cannot both be given"),
				 errdetail("ttl is a deadline from now, expires_at the instant itself: one absolute deadline takes one of them."),
				 errhint("Pass only one, or neither to use tokenstore.default_ttl; expires_at => 'infinity' is no deadline.")));
	return arg_expires_at(fcinfo, at_argno, now);
}

/*
 * An interval as a fixed number of microseconds (a day is 24 hours, a month
 * 30 days), so that idle deadlines are plain arithmetic everywhere: an
 * error unless 0 <= result <= limit.
 */
static int64
interval_usecs(const char *name, Interval *span, int64 limit,
			   const char *limit_text)
{
	int64		usecs;

	if (pg_mul_s64_overflow((int64) span->month * DAYS_PER_MONTH + span->day,
							USECS_PER_DAY, &usecs) ||
		pg_add_s64_overflow(usecs, span->time, &usecs) ||
		usecs > limit)
		out_of_range_error(name, span, limit_text);
	return usecs;
}

/*
 * Idle timeout in microseconds (NULL: the setting); 0 means none, and so
 * do '0' and 'infinity'.
 */
static int64
arg_idle(FunctionCallInfo fcinfo, int argno)
{
	Interval   *idle;
	int64		usecs;

	if (PG_ARGISNULL(argno))
		return (int64) tokenstore_default_idle_timeout * USECS_PER_SEC;
	idle = PG_GETARG_INTERVAL_P(argno);
	if (INTERVAL_IS_NOEND(idle))
		return 0;
	if (INTERVAL_IS_NOBEGIN(idle))
		negative_idle_error(idle);
	usecs = interval_usecs("idle_timeout", idle, IDLE_LIMIT,
						   "an idle timeout may be at most 72000000 hours");
	if (usecs < 0)
		negative_idle_error(idle);
	return usecs;
}

static LoginMode
arg_mode(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;
	LoginMode	mode;

	if (PG_ARGISNULL(argno))
		return (LoginMode) tokenstore_login_mode;
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (!login_mode_parse(name, &mode))
	{
		const char *quoted = quotable(PG_GETARG_TEXT_PP(argno));

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 quoted ? errmsg("unknown login mode \"%s\"", quoted) :
				 errmsg("unknown login mode"),
				 quoted ? 0 :
				 errdetail("The value given has %zu bytes; it is not shown, since it may be a token.",
						   strlen(name)),
				 errhint("The login modes are multi, single and share.")));
	}
	return mode;
}

static int64
arg_max_tokens(FunctionCallInfo fcinfo, int argno)
{
	int32		max_tokens;

	if (PG_ARGISNULL(argno))
		return tokenstore_max_tokens_per_user;
	max_tokens = PG_GETARG_INT32(argno);
	if (max_tokens < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tokens must not be negative"),
				 errhint("Use 0 for no limit.")));
	return max_tokens;
}

/* A caller-provided token, checked; NULL when none was given. */
static text *
arg_given_token(FunctionCallInfo fcinfo, int argno, LoginMode mode)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		return NULL;
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len < TOKEN_MIN_LEN || len > TOKEN_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a caller-provided token must have %d to %d bytes",
						TOKEN_MIN_LEN, TOKEN_MAX_LEN),
				 errdetail("The token given has %d bytes.", len)));
	if (token_is_mistyped(VARDATA_ANY(t), len, tokenstore_token_prefix))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a caller-provided token has the form of a generated token but not its checksum"),
				 errdetail("Such a token would be rejected by every check."),
				 errhint("Give caller-provided tokens another prefix than \"%s\", or let token_make generate the token.",
						 tokenstore_token_prefix)));
	if (mode == LOGIN_SHARE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("login mode share does not take a caller-provided token"),
				 errdetail("Every share-mode login of a user gets the one token tokenstore made for it.")));
	return t;
}

static void
duplicate_token_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("token already exists")));
}

/* What the cache keeps of a row; an anonymous session's user_len is 0. */
static void
cache_values(const TokenRow *row, CacheValues *values)
{
	values->user_len = row->user_id ? strlen(row->user_id) : 0;
	memcpy(values->user_id, row->user_id, values->user_len);
	values->expires_at = row->expires_at;
	values->idle_us = row->idle_us;
}

/* What the cache keeps of a row beside its entry (see cache.h). */
static void
cache_payload(const TokenRow *row, CachePayload *payload)
{
	payload->created_at = row->created_at;
	payload->info = row->info;
	payload->data = row->data;
}

/*
 * Have a new token in the cache when its transaction commits: a session
 * with its payload (its finds read it), other tokens without (most are
 * only ever checked for their user; token_check fills it in).
 */
static void
prewarm(const TokenRow *row)
{
	CacheValues values;
	CachePayload payload;

	if (!cache_enabled())
		return;
	cache_values(row, &values);
	cache_payload(row, &payload);
	xact_queue_fill(&row->key, &values, row->data ? &payload : NULL,
					row->last_used_at);
}

/* ---- token_make ---- */

/*
 * The user's live share-mode token, or NULL; called with the user locked.
 * One this server's key cannot unseal (restored from another server's dump,
 * or edited by hand) stays valid for whoever holds it, but cannot be handed
 * out again: the login then makes a new shared token.
 */
static char *
shared_token(const char *user_id, TimestampTz now)
{
	TokenKey	key;
	bytea	   *sealed;
	char	   *token;

	if (!store_find_share(user_id, now, &key, &sealed))
		return NULL;
	token = token_unseal(store_seal_secret(), &key, sealed);
	if (token == NULL)
		ereport(LOG,
				(errmsg("tokenstore cannot unseal share-mode token %s with this server's key; the login gets a new one",
						token_id_text(&key)),
				 errhint("A dump restored on another server carries no sealing key: see \"Backups\" in tokenstore's README.")));
	return token;
}

Datum
token_make(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenRow	row = {0};
	LoginMode	mode = arg_mode(fcinfo, 4);
	int64		max_tokens = arg_max_tokens(fcinfo, 5);
	text	   *given = arg_given_token(fcinfo, 6, mode);
	text	   *token;
	List	   *revoked = NIL;

	row.user_id = arg_user_id(fcinfo, 0);
	row.info = arg_info(fcinfo, 1);
	row.expires_at = arg_deadline(fcinfo, 2, 7, now);
	row.idle_us = arg_idle(fcinfo, 3);
	row.created_at = now;
	row.last_used_at = now;
	token = given ? given : cstring_to_text(token_generate(tokenstore_token_prefix));
	token_key(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &row.key);

	store_begin();
	if (mode != LOGIN_MULTI || max_tokens > 0)
		store_lock_user(row.user_id);
	if (mode == LOGIN_SHARE)
	{
		char	   *existing = shared_token(row.user_id, now);

		if (existing != NULL)
		{
			store_end();
			PG_RETURN_TEXT_P(cstring_to_text(existing));
		}
		row.share_secret = token_seal(store_seal_secret(), &row.key,
									  VARDATA_ANY(token),
									  VARSIZE_ANY_EXHDR(token));
	}
	if (mode == LOGIN_SINGLE)
		revoked = store_revoke_lru(row.user_id, now, 0);
	else if (max_tokens > 0)
		revoked = store_revoke_lru(row.user_id, now, max_tokens - 1);
	if (!store_insert(&row, given != NULL))
		duplicate_token_error();
	store_end();
	prewarm(&row);

	event_revoked("replace", revoked);
	event_token("make", row.user_id, &row.key, NULL);
	PG_RETURN_TEXT_P(token);
}

/* ---- checks ---- */

/* A use written to a row moved its idle deadline: Redis must follow. */
static void
expire_in_redis(const TokenKey *key, const RowDeadline *written)
{
	if (written->idle_us > 0)
		xact_queue_expire(key, written->deadline);
}

/*
 * Fill the cache with a row read from the table (the generation was read
 * before): its entry, and its payload when read with its data (the row's
 * varlenas are plain: see store.c).  Whether the entry is there afterwards.
 */
static bool
fill_from_row(const TokenRow *row, TimestampTz now, bool with_data,
			  uint64 generation)
{
	CacheValues values;
	CachePayload payload;

	cache_values(row, &values);
	cache_payload(row, &payload);
	with_data = with_data &&
		cache_payload_fits(VARSIZE(row->info), row->data ? VARSIZE(row->data) : 0);
	return cache_fill(&row->key, &values, with_data ? &payload : NULL, now,
					  true, generation);
}

/*
 * Tests only: hold a fill that read the table until a test session lets
 * it go, so that a revocation can commit (or replay) in between.
 */
static void
hold_fill(void)
{
	if (!tokenstore_debug_hold_fill)
		return;
	DirectFunctionCall1(pg_advisory_lock_shared_int8,
						Int64GetDatum(HOLD_FILL_LOCK));
	DirectFunctionCall1(pg_advisory_unlock_shared_int8,
						Int64GetDatum(HOLD_FILL_LOCK));
}

/*
 * Record a use of a live token found in the table: in its cache entry, or in
 * a new one if this transaction may fill the cache (then with the payload,
 * if read with its data), or else in the table once touch_interval has
 * passed.
 */
static void
record_use(const TokenRow *row, TimestampTz now, bool with_data,
		   bool may_fill, uint64 generation)
{
	RowDeadline written;

	if (cache_enabled())
	{
		bool		recorded = cache_record_use(&row->key, now);

		if (may_fill && (!recorded || with_data))
		{
			hold_fill();
			recorded = fill_from_row(row, now, with_data, generation) || recorded;
		}
		if (recorded)
			return;
	}
	if (row->last_used_at <= now - (int64) tokenstore_touch_interval * 1000 &&
		store_touch(&row->key, now, &written))
		expire_in_redis(&row->key, &written);
}

/*
 * Find the live token with this key in the table (with its data, if asked)
 * and record this use; the row shows the use (last_used_at = now) wherever
 * it was recorded.
 */
static bool
check_in_table(const TokenKey *key, TimestampTz now, TokenRow *row,
			   bool with_data)
{
	bool		may_fill = cache_enabled() && xact_may_fill();
	uint64		generation = may_fill ? cache_generation(key) : 0;
	bool		found;

	store_begin();
	found = with_data ? store_find_data(key, now, row) :
		store_find(key, now, row);
	if (found)
		record_use(row, now, with_data, may_fill, generation);
	store_end();
	if (found)
		row->last_used_at = now;
	return found;
}

/*
 * A check answered by the cache, when it can: true if the token is live
 * there (with *values, and *payload if asked for).  A transaction that
 * changed tokens never asks it: the table shows its own changes, the cache
 * only after commit.
 */
static bool
check_cached(const TokenKey *key, TimestampTz now, CacheValues *values,
			 CachePayload *payload)
{
	if (!cache_enabled() || xact_has_token_changes())
		return false;
	switch (cache_check(key, now, values, payload))
	{
		case CACHE_LIVE:
			return true;
		case CACHE_DEAD:
			cache_drop_dead(key, now);
			break;
		case CACHE_MISS:
			break;
	}
	cache_count_miss();
	return false;
}

/*
 * The hot path: whether the token is live, and its user in *values (an
 * anonymous session's user_len is 0).  On a cache hit no table is read and
 * nothing is written.
 */
static bool
check_hot(FunctionCallInfo fcinfo, CacheValues *values)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenKey	key;
	TokenRow	row;

	if (!arg_token(fcinfo, 0, &key))
		return false;
	if (check_cached(&key, now, values, NULL))
		return true;
	if (!check_in_table(&key, now, &row, false))
		return false;
	cache_values(&row, values);
	return true;
}

/*
 * The hot path of checks that return the row: as check_hot, with the
 * token's info, data and times in *row (last_used_at is this use).
 */
static bool
check_hot_row(FunctionCallInfo fcinfo, TokenRow *row)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenKey	key;
	CacheValues values;
	CachePayload payload;

	if (!arg_token(fcinfo, 0, &key))
		return false;
	if (!check_cached(&key, now, &values, &payload))
		return check_in_table(&key, now, row, true);
	memset(row, 0, sizeof(*row));
	row->key = key;
	row->user_id = values.user_len == 0 ? NULL :
		pnstrdup(values.user_id, values.user_len);
	row->expires_at = values.expires_at;
	row->idle_us = values.idle_us;
	row->info = payload.info;
	row->data = payload.data;
	row->created_at = payload.created_at;
	row->last_used_at = now;
	return true;
}

Datum
token_user(PG_FUNCTION_ARGS)
{
	CacheValues values;

	if (!check_hot(fcinfo, &values) || values.user_len == 0)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(values.user_id, values.user_len));
}

Datum
token_touch(PG_FUNCTION_ARGS)
{
	CacheValues values;

	PG_RETURN_BOOL(check_hot(fcinfo, &values));
}

/* A user id for a result column: an anonymous session's is NULL. */
static Datum
user_datum(const char *user_id, bool *isnull)
{
	*isnull = user_id == NULL;
	return *isnull ? (Datum) 0 : CStringGetTextDatum(user_id);
}

/* Put one result row of (head, info, created, last used, deadline). */
static void
put_row(ReturnSetInfo *rsinfo, Datum head, bool head_null, const TokenRow *row)
{
	Datum		values[5];
	bool		nulls[5] = {head_null, false, false, false, false};
	TimestampTz deadline = row_deadline(row);

	values[0] = head;
	values[1] = JsonbPGetDatum(row->info);
	values[2] = TimestampTzGetDatum(row->created_at);
	values[3] = TimestampTzGetDatum(row->last_used_at);
	values[4] = TimestampTzGetDatum(deadline);
	nulls[4] = deadline == DEADLINE_NONE;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

Datum
token_check(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TokenRow	row;

	InitMaterializedSRF(fcinfo, 0);
	if (check_hot_row(fcinfo, &row))
	{
		bool		isnull;
		Datum		user = user_datum(row.user_id, &isnull);

		put_row(rsinfo, user, isnull, &row);
	}
	return (Datum) 0;
}

Datum
token_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *user_id = arg_user_id(fcinfo, 0);
	TimestampTz now = GetCurrentTimestamp();
	List	   *rows;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	store_begin();
	rows = store_list(user_id, now);
	store_end();
	foreach(lc, rows)
	{
		TokenRow   *row = lfirst(lc);

		put_row(rsinfo, CStringGetTextDatum(token_id_text(&row->key)), false, row);
	}
	return (Datum) 0;
}

/* ---- changes to one token ---- */

Datum
token_refresh(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenKey	key;
	TimestampTz deadline = arg_deadline(fcinfo, 1, 3, now);

	/* NULL keeps the idle timeout (and the SQL objects before 1.4 lack it) */
	bool		set_idle = PG_NARGS() > 2 && !PG_ARGISNULL(2);
	int64		idle_us = set_idle ? arg_idle(fcinfo, 2) : 0;
	RowDeadline written;
	bool		done;

	if (!arg_token(fcinfo, 0, &key))
		PG_RETURN_BOOL(false);
	store_begin();
	done = store_refresh(&key, now, deadline, set_idle ? &idle_us : NULL,
						 &written);
	store_end();

	/*
	 * The refresh is a use: the cache must know it, and Redis learns the idle
	 * deadline it moved even when the absolute one stayed (the row's trigger
	 * then has nothing to say).
	 */
	if (done && cache_enabled())
		(void) cache_record_use(&key, now);
	if (done)
		expire_in_redis(&key, &written);
	PG_RETURN_BOOL(done);
}

Datum
token_set_info(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	Jsonb	   *info = arg_info(fcinfo, 1);
	TokenKey	key;
	bool		done;

	if (!arg_token(fcinfo, 0, &key))
		PG_RETURN_BOOL(false);
	store_begin();
	done = store_set_info(&key, now, info);
	store_end();
	PG_RETURN_BOOL(done);
}

/* Report one revoked token (or none) as a delete. */
static bool
deleted(RevokedToken *r)
{
	if (r == NULL)
		return false;
	event_token("delete", r->user_id, &r->key, NULL);
	return true;
}

Datum
token_delete(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenKey	key;
	RevokedToken *r;

	if (!arg_token(fcinfo, 0, &key))
		PG_RETURN_BOOL(false);
	store_begin();
	r = store_delete(&key, now);
	store_end();
	PG_RETURN_BOOL(deleted(r));
}

Datum
token_delete_id(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	uint8		id_bytes[TOKEN_ID_BYTES];
	text	   *id;
	RevokedToken *r;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	id = PG_GETARG_TEXT_PP(0);
	/* the value is never repeated: it may be a token passed by mistake */
	if (!token_id_parse(VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id), id_bytes))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid token_id"),
				 errdetail("A token_id is %d hexadecimal digits, as token_list shows it; the value given has %d bytes.",
						   TOKEN_ID_LEN, (int) VARSIZE_ANY_EXHDR(id)),
				 errhint("token_delete takes a token, token_delete_id the token_id of one.")));
	store_begin();
	r = store_delete_id(id_bytes, now);
	store_end();
	PG_RETURN_BOOL(deleted(r));
}

Datum
token_delete_user(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *user_id = arg_user_id(fcinfo, 0);
	TokenKey	keep;
	bool		has_keep = arg_token(fcinfo, 1, &keep);
	List	   *revoked;

	store_begin();
	revoked = store_delete_user(user_id, has_keep ? &keep : NULL, now);
	store_end();
	event_count("delete_user", user_id, list_length(revoked));
	PG_RETURN_INT64(list_length(revoked));
}

Datum
token_rotate(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenKey	old_key;
	TokenRow	row;
	int64		grace = 0;
	char	   *user_id;
	text	   *given;
	text	   *token;

	if (!PG_ARGISNULL(1))
	{
		grace = interval_usecs("grace", PG_GETARG_INTERVAL_P(1),
							   TIME_LIMIT - 1 - now, DEADLINE_LIMIT_TEXT);
		if (grace < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("grace must not be negative"),
					 errhint("Pass NULL or 0 to end the old token now.")));
	}
	/* under the SQL objects of 1.1 the function has two arguments */
	user_id = PG_NARGS() > 2 ? arg_user_id_or_null(fcinfo, 2) : NULL;
	given = PG_NARGS() > 3 ? arg_given_token(fcinfo, 3, LOGIN_MULTI) : NULL;
	if (!arg_token(fcinfo, 0, &old_key))
		PG_RETURN_NULL();
	token = given ? given : cstring_to_text(token_generate(tokenstore_token_prefix));

	store_begin();

	/*
	 * The per-user lock first, as token_make takes it, so that a rotation
	 * and a single-mode or limited login of the same user cannot both keep
	 * a token; the row's user is only known after a first read.
	 */
	if (store_find(&old_key, now, &row) && (user_id || row.user_id))
		store_lock_user(user_id ? user_id : row.user_id);
	/* a token in its grace period was replaced already: no second heir */
	if (!store_lock_live(&old_key, now, &row) || row.rotated)
	{
		store_end();
		PG_RETURN_NULL();
	}
	if (user_id != NULL && row.user_id != NULL && strcmp(user_id, row.user_id) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("token_rotate cannot give a token to another user"),
				 errhint("user_id attaches a user to an anonymous session; a token that has one keeps it.")));
	if (user_id != NULL)
		row.user_id = user_id;
	token_key(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &row.key);
	row.created_at = now;
	row.last_used_at = now;
	if (row.share_secret != NULL)
		row.share_secret = token_seal(store_seal_secret(), &row.key,
									  VARDATA_ANY(token),
									  VARSIZE_ANY_EXHDR(token));
	if (!store_insert(&row, given != NULL))
		duplicate_token_error();
	if (grace == 0)
		(void) store_delete(&old_key, now);
	else
		store_retire(&old_key, now, now + grace);
	store_end();
	prewarm(&row);

	event_token("rotate", row.user_id, &row.key, &old_key);
	PG_RETURN_TEXT_P(token);
}

/* ---- sessions ---- */

static void
taken_token_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("token is taken"),
			 errdetail("A live token with this id belongs to another user (or to none), or is not a session (token_make made it), or was replaced by token_rotate."),
			 errhint("Give a new session a new id; attach a user at sign-in with token_rotate(token, user_id => ...).")));
}

/* A session's data: NULL is an empty payload. */
static bytea *
arg_data(FunctionCallInfo fcinfo, int argno)
{
	bytea	   *empty;

	if (!PG_ARGISNULL(argno))
		return PG_GETARG_BYTEA_PP(argno);
	empty = palloc(VARHDRSZ);
	SET_VARSIZE(empty, VARHDRSZ);
	return empty;
}

/*
 * token_save(token, user_id, data, expires_at, idle_timeout, info): a web
 * framework's save, one statement (see store_save).  Per-user rules do not
 * apply: a session is the framework's.
 */
Datum
token_save(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	TokenRow	row = {0};
	text	   *token;
	bool		created;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("token must not be null")));
	token = arg_given_token(fcinfo, 0, LOGIN_MULTI);
	row.user_id = arg_user_id_or_null(fcinfo, 1);
	row.data = arg_data(fcinfo, 2);
	row.expires_at = arg_expires_at(fcinfo, 3, now);
	row.idle_us = arg_idle(fcinfo, 4);
	row.info = arg_info(fcinfo, 5);
	row.created_at = now;
	row.last_used_at = now;
	token_key(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &row.key);

	store_begin();
	if (!store_save(&row, &created))
		taken_token_error();
	store_end();
	if (created)
	{
		prewarm(&row);
		event_token("make", row.user_id, &row.key, NULL);
	}
	else if (cache_enabled())
		(void) cache_record_use(&row.key, now);
	PG_RETURN_BOOL(created);
}

/* The data of a live session; NULL for other tokens. */
Datum
token_data(PG_FUNCTION_ARGS)
{
	TokenRow	row;

	if (!check_hot_row(fcinfo, &row) || row.data == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(row.data);
}

Datum
token_sessions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	List	   *rows;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	store_begin();
	rows = store_sessions(now);
	store_end();
	foreach(lc, rows)
	{
		TokenRow   *row = lfirst(lc);
		TimestampTz deadline = row_deadline(row);
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = CStringGetTextDatum(token_id_text(&row->key));
		values[1] = user_datum(row->user_id, &nulls[1]);
		values[2] = PointerGetDatum(row->data);
		values[3] = TimestampTzGetDatum(deadline);
		nulls[3] = deadline == DEADLINE_NONE;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

Datum
token_delete_sessions(PG_FUNCTION_ARGS)
{
	bool		anonymous_only = !PG_ARGISNULL(0) && PG_GETARG_BOOL(0);
	List	   *revoked;

	store_begin();
	revoked = store_delete_sessions(GetCurrentTimestamp(), anonymous_only);
	store_end();
	event_revoked("delete", revoked);
	PG_RETURN_INT64(list_length(revoked));
}

Datum
token_sweep(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		swept;
	bool		more;

	store_begin();
	swept = store_sweep(now, PG_INT32_MAX, &more);
	store_end();
	event_count("sweep", NULL, swept);
	PG_RETURN_INT64(swept);
}

/* ---- the hot tier's own entry points ---- */

Datum
token_flush(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(worker_flush_all());
}

/*
 * tokenstore.last_used(token_hash, stored): the later of a row's stored last
 * use and the one the cache has recorded since.  Internal to the store's
 * statements.
 */
Datum
token_last_used(PG_FUNCTION_ARGS)
{
	bytea	   *hash = PG_GETARG_BYTEA_PP(0);
	TimestampTz stored = PG_GETARG_TIMESTAMPTZ(1);
	TokenKey	key;

	if (!cache_enabled() || VARSIZE_ANY_EXHDR(hash) != sizeof(key.bytes))
		PG_RETURN_TIMESTAMPTZ(stored);
	memcpy(key.bytes, VARDATA_ANY(hash), sizeof(key.bytes));
	PG_RETURN_TIMESTAMPTZ(Max(stored, cache_last_used(&key)));
}

static Datum
timestamp_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

/*
 * The databases the workers know, and this one, where the extension exists
 * though its first worker may not have run yet (or never will: no preload).
 * dbs has room for one more than the registry holds.
 */
static int
known_databases(RegistryDbStats *dbs)
{
	int			ndbs = registry_db_stats(dbs, REGISTRY_MAX_DATABASES);
	int			i;

	for (i = 0; i < ndbs; i++)
		if (dbs[i].dbid == MyDatabaseId)
			return ndbs;
	memset(&dbs[ndbs], 0, sizeof(RegistryDbStats));
	dbs[ndbs].dbid = MyDatabaseId;
	return ndbs + 1;
}

/* The rows of the tokenstore.stats view: one per database with tokenstore. */
Datum
token_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RegistryDbStats *dbs = palloc(sizeof(RegistryDbStats) * (REGISTRY_MAX_DATABASES + 1));
	int			ndbs = known_databases(dbs);
	CacheStats	cache;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	cache_stats(&cache);
	for (i = 0; i < ndbs; i++)
	{
		Datum		values[14];
		bool		nulls[14] = {0};
		char	   *datname = get_database_name(dbs[i].dbid);
		int64		entries = 0;
		int64		dirty = cache_enabled() ?
			cache_count_dirty(dbs[i].dbid, &entries) : 0;

		if (datname == NULL)
			continue;
		values[0] = CStringGetTextDatum(datname);
		values[1] = Int64GetDatum(entries);
		values[2] = Int64GetDatum(dirty);
		values[3] = timestamp_or_null(dbs[i].last_flush, &nulls[3]);
		values[4] = timestamp_or_null(dbs[i].last_sweep, &nulls[4]);
		values[5] = Int64GetDatum(dbs[i].rows_flushed);
		values[6] = Int64GetDatum(dbs[i].rows_swept);
		values[7] = Int64GetDatum(cache.capacity);
		values[8] = Int64GetDatum(cache.entries);
		values[9] = Int64GetDatum(cache.hits);
		values[10] = Int64GetDatum(cache.misses);
		values[11] = Int64GetDatum(cache.fills);
		values[12] = Int64GetDatum(cache.refused);
		values[13] = Int64GetDatum(cache.evictions);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

static const char *
redis_state(const FanoutStats *stats)
{
	switch (stats->conn)
	{
		case FANOUT_OFF:
			return "off";
		case FANOUT_DOWN:
			return "down";
		case FANOUT_UP:
			break;
	}
	return registry_synced(stats->epoch) ? "up" : "resync";
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = s[0] == '\0';
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

/* The row of the tokenstore.redis_stats view. */
Datum
token_redis_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	FanoutStats stats;
	Datum		values[11];
	bool		nulls[11] = {0};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	fanout_stats(&stats);
	values[0] = CStringGetTextDatum(redis_state(&stats));
	values[1] = text_or_null(stats.server, &nulls[1]);
	values[2] = Int64GetDatum(stats.queued + stats.held);
	values[3] = Int64GetDatum(stats.queue_bytes);
	values[4] = Int64GetDatum(stats.sent);
	values[5] = Int64GetDatum(stats.errors);
	values[6] = Int64GetDatum(stats.overflows);
	values[7] = Int64GetDatum(stats.resyncs);
	nulls[8] = stats.oldest == 0;
	if (!nulls[8])
		values[8] = DirectFunctionCall2(timestamp_mi,
										TimestampTzGetDatum(GetCurrentTimestamp()),
										TimestampTzGetDatum(stats.oldest));
	values[9] = text_or_null(stats.last_error, &nulls[9]);
	/* 1.0's view has no column held: a prefix of these */
	values[10] = Int64GetDatum(stats.held);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * The row of tokenstore_internal.token_standby_state, the last columns of
 * the stats view: on a primary the setting; on a standby the state of its
 * cache and how far the view of it lags (0 when replay has caught up with
 * what was received, else since the last replayed commit).
 */
Datum
token_standby_state(PG_FUNCTION_ARGS)
{
	static const char *const states[] = {"off", "settling", "on"};
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, true};
	TimestampTz replayed;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (!RecoveryInProgress())
	{
		values[0] = CStringGetTextDatum(tokenstore_standby_cache ? "on" : "off");
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
	}
	values[0] = CStringGetTextDatum(states[cache_standby_state()]);
	replayed = GetLatestXTime();
	nulls[1] = false;
	if (GetXLogReplayRecPtr(NULL) >= GetWalRcvFlushRecPtr(NULL, NULL))
		values[1] = IntervalPGetDatum(palloc0(sizeof(Interval)));
	else if (replayed != 0)
		values[1] = DirectFunctionCall2(timestamp_mi,
										TimestampTzGetDatum(GetCurrentTimestamp()),
										TimestampTzGetDatum(replayed));
	else
		nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * A use a standby recorded: in this server's cache entry, or else in the
 * table (with Redis told of the moved idle deadline).
 */
static bool
record_remote_use(const TokenKey *key, TimestampTz used)
{
	RowDeadline written;

	if (cache_enabled() && !xact_has_token_changes() &&
		cache_record_use(key, used))
		return true;
	if (!store_touch(key, used, &written))
		return false;
	expire_in_redis(key, &written);
	return true;
}

/*
 * tokenstore_internal.token_record_uses(token_hashes, used_at): the uses a
 * standby's checks recorded, sent by its sender.  A use is never later
 * than now.  How many were recorded (a token gone or used later since is
 * not).
 */
Datum
token_record_uses(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	Datum	   *hashes;
	Datum	   *times;
	bool	   *hash_nulls;
	bool	   *time_nulls;
	int			nhashes;
	int			ntimes;
	TokenKey   *keys;
	int64		recorded = 0;
	int			i;

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), BYTEAOID, -1, false,
					  TYPALIGN_INT, &hashes, &hash_nulls, &nhashes);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TIMESTAMPTZOID,
					  sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &times, &time_nulls, &ntimes);
	if (nhashes != ntimes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("token_hashes and used_at must have as many elements, not %d and %d",
						nhashes, ntimes)));
	keys = palloc(sizeof(TokenKey) * Max(nhashes, 1));
	for (i = 0; i < nhashes; i++)
	{
		bytea	   *hash;

		if (hash_nulls[i] || time_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("token_hashes and used_at must not contain nulls")));
		hash = DatumGetByteaPP(hashes[i]);
		if (VARSIZE_ANY_EXHDR(hash) != sizeof(keys[i].bytes))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a token hash is %d bytes, not %d",
							(int) sizeof(keys[i].bytes), (int) VARSIZE_ANY_EXHDR(hash))));
		memcpy(keys[i].bytes, VARDATA_ANY(hash), sizeof(keys[i].bytes));
	}
	store_begin();
	for (i = 0; i < nhashes; i++)
		if (record_remote_use(&keys[i], Min(DatumGetTimestampTz(times[i]), now)))
			recorded++;
	store_end();
	PG_RETURN_INT64(recorded);
}

/*
 * tokenstore_internal.token_reseal(token_hash, sealed, old_key): a share-mode
 * token sealed under 1.0's key, sealed under the key file's.  Used by the
 * update script only.
 */
Datum
token_reseal(PG_FUNCTION_ARGS)
{
	bytea	   *hash = PG_GETARG_BYTEA_PP(0);
	bytea	   *sealed = PG_GETARG_BYTEA_PP(1);
	bytea	   *old_key = PG_GETARG_BYTEA_PP(2);
	TokenKey	key;
	bytea	   *resealed;

	if (VARSIZE_ANY_EXHDR(hash) != sizeof(key.bytes))
		PG_RETURN_NULL();
	memcpy(key.bytes, VARDATA_ANY(hash), sizeof(key.bytes));
	resealed = token_reseal_from(old_key, &key, sealed);
	if (resealed == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(resealed);
}
