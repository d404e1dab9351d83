/*
 * cache.h: the shared-memory token cache (the hot tier).
 */
#ifndef TOKENSTORE_CACHE_H
#define TOKENSTORE_CACHE_H

#include "datatype/timestamp.h"
#include "deadline.h"
#include "token.h"
#include "utils/jsonb.h"

#define CACHE_USER_ID_MAX	64

/* What an entry knows of a token besides its key and last use. */
typedef struct CacheValues
{
	uint8		user_len;
	char		user_id[CACHE_USER_ID_MAX];
	TimestampTz expires_at;		/* DEADLINE_NONE when none */
	int64		idle_us;		/* 0 when none */
} CacheValues;

/*
 * What a session's check reads besides the entry: the info, the data and
 * the creation time.  Kept in a separate area of the cache (see cache.c),
 * at most CACHE_PAYLOAD_MAX bytes of info and data; larger ones are read
 * from the table.  Varlenas in plain (untoasted, 4-byte header) form.
 */
typedef struct CachePayload
{
	TimestampTz created_at;
	Jsonb	   *info;
	bytea	   *data;			/* NULL: none */
} CachePayload;

#define CACHE_PAYLOAD_MAX	8192

typedef enum CacheResult
{
	CACHE_MISS,
	CACHE_LIVE,
	CACHE_DEAD
} CacheResult;

/* A dirty last use, collected for a flush. */
typedef struct CacheDirty
{
	Oid			dbid;
	TokenKey	key;
	uint64		observed;		/* packed value seen, for cache_mark_clean */
	TimestampTz last_used;
} CacheDirty;

/* Cache-wide counters, for the stats view. */
typedef struct CacheStats
{
	int64		capacity;
	int64		entries;
	int64		hits;
	int64		misses;
	int64		fills;
	int64		refused;
	int64		evictions;
} CacheStats;

/* Whether a hot standby may use its cache (see cache.c). */
typedef enum CacheStandbyState
{
	CACHE_STANDBY_OFF,
	CACHE_STANDBY_SETTLING,
	CACHE_STANDBY_ON
} CacheStandbyState;

extern Size cache_shmem_size(void);
extern void cache_shmem_request(void);
extern void cache_shmem_startup(void);
extern bool cache_enabled(void);

/* backends: the hot path and fills */
extern bool cache_payload_fits(Size info_size, Size data_size);
extern CacheResult cache_check(const TokenKey *key, TimestampTz now,
							   CacheValues *values, CachePayload *payload);
extern void cache_drop_dead(const TokenKey *key, TimestampTz now);
extern void cache_count_miss(void);
extern uint64 cache_generation(const TokenKey *key);
extern bool cache_fill(const TokenKey *key, const CacheValues *values,
					   const CachePayload *payload, TimestampTz last_used,
					   bool dirty, uint64 generation);
extern bool cache_record_use(const TokenKey *key, TimestampTz now);
extern TimestampTz cache_last_used(const TokenKey *key);

/* commit time (xact.c): no allocation, no ERROR */
extern void cache_update(const TokenKey *key, const CacheValues *values,
						 const CachePayload *payload, bool set_used,
						 TimestampTz last_used);
extern void cache_remove(const TokenKey *key);
extern void cache_purge_db(Oid dbid);
extern void cache_mark_clean(Oid dbid, const TokenKey *key, uint64 observed);

/* a hot standby: replay (the startup process) and the stats view */
extern void cache_replay_change(Oid dbid, TransactionId xid,
								const TokenKey *keys, int nkeys, bool purge);
extern void cache_replay_state(bool on);
extern CacheStandbyState cache_standby_state(void);

/* the background */
extern int	cache_collect_dirty(Oid dbid, CacheDirty *out, int max);
extern int64 cache_count_dirty(Oid dbid, int64 *entries);
extern int64 cache_maintain(TimestampTz now);
extern void cache_stats(CacheStats *stats);

#endif
