/*
 * store.h: the token table, through SPI.
 */
#ifndef TOKENSTORE_STORE_H
#define TOKENSTORE_STORE_H

#include "cache.h"
#include "deadline.h"
#include "nodes/pg_list.h"
#include "token.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* One row of tokenstore.token, copied into the caller's memory. */
typedef struct TokenRow
{
	TokenKey	key;
	char	   *user_id;		/* NULL: an anonymous session */
	Jsonb	   *info;
	TimestampTz created_at;
	TimestampTz last_used_at;
	TimestampTz expires_at;		/* absolute deadline, DEADLINE_NONE: none */
	int64		idle_us;		/* idle timeout in microseconds, 0: none */
	bytea	   *share_secret;	/* sealed token of a share-mode row, or NULL */
	bool		rotated;		/* replaced with a grace period: expires_at is final */
	bytea	   *data;			/* a session's data, when asked for; else NULL */
} TokenRow;

/* What a flush did with one dirty use. */
typedef enum FlushOutcome
{
	FLUSH_CLEAN,				/* the table has it (or the row is gone) */
	FLUSH_WRITTEN,				/* written: the row's deadline is below */
	FLUSH_LATER					/* within the resolution, or the row is held */
} FlushOutcome;

typedef struct FlushResult
{
	FlushOutcome outcome;
	bool		idle;			/* WRITTEN: the token has an idle timeout */
	TimestampTz deadline;		/* WRITTEN: its deadline after the write */
} FlushResult;

/* The deadline of a row a statement changed. */
typedef struct RowDeadline
{
	int64		idle_us;		/* its idle timeout, 0: none */
	TimestampTz deadline;
} RowDeadline;

/* A live token that a call revoked: what events (and caches) need of it. */
typedef struct RevokedToken
{
	TokenKey	key;
	char	   *user_id;
} RevokedToken;

/* The earlier of a row's deadlines, judged on its last use. */
static inline TimestampTz
row_deadline(const TokenRow *row)
{
	return token_deadline(row->expires_at, row->idle_us, row->last_used_at);
}

extern bool store_version_ok(void);
extern void store_check_version(void);
extern void store_begin(void);
extern void store_end(void);

extern bool store_find(const TokenKey *key, TimestampTz now, TokenRow *row);
extern bool store_find_data(const TokenKey *key, TimestampTz now, TokenRow *row);
extern bool store_lock_live(const TokenKey *key, TimestampTz now, TokenRow *row);
extern bool store_touch(const TokenKey *key, TimestampTz now, RowDeadline *out);
extern List *store_list(const char *user_id, TimestampTz now);

extern bool store_insert(const TokenRow *row, bool given);
extern void store_lock_user(const char *user_id);
extern List *store_revoke_lru(const char *user_id, TimestampTz now, int64 keep);
extern bool store_find_share(const char *user_id, TimestampTz now,
							 TokenKey *key, bytea **sealed);
extern bytea *store_seal_secret(void);

extern bool store_refresh(const TokenKey *key, TimestampTz now,
						  TimestampTz expires_at, const int64 *idle_us,
						  RowDeadline *out);
extern bool store_set_info(const TokenKey *key, TimestampTz now, Jsonb *info);
extern void store_retire(const TokenKey *key, TimestampTz now,
						 TimestampTz deadline);

extern RevokedToken *store_delete(const TokenKey *key, TimestampTz now);
extern RevokedToken *store_delete_id(const uint8 *id_bytes, TimestampTz now);
extern List *store_delete_user(const char *user_id, const TokenKey *keep,
							   TimestampTz now);
extern bool store_save(const TokenRow *row, bool *created);
extern List *store_sessions(TimestampTz now);
extern List *store_delete_sessions(TimestampTz now, bool anonymous_only);
extern int64 store_sweep(TimestampTz now, int batch, bool *more);
extern int64 store_sweep_among(TimestampTz now, const TokenKey *keys, int n,
							   bool *more);
extern TokenKey *store_sweep_keys(TimestampTz now, int batch, int *n);
extern int64 store_flush(const CacheDirty *dirty, int n, int64 resolution,
						 FlushResult *results);
extern List *store_live_page(const TokenKey *after, TimestampTz now, int limit);
extern void store_live_among(const TokenKey *keys, int n, const char *user,
							 TimestampTz now, bool *live,
							 TimestampTz *deadlines);

#endif
