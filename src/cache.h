/*
 * cache.h: the shared-memory token cache (the hot tier).
 */
#ifndef TOKENSTORE_CACHE_H
#define TOKENSTORE_CACHE_H

#include "datatype/timestamp.h"
#include "deadline.h"
#include "token.h"

#define CACHE_USER_ID_MAX	64

/* What an entry knows of a token besides its key and last use. */
typedef struct CacheValues
{
	uint8		user_len;
	char		user_id[CACHE_USER_ID_MAX];
	TimestampTz expires_at;		/* DEADLINE_NONE when none */
	int64		idle_us;		/* 0 when none */
} CacheValues;

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

extern Size cache_shmem_size(void);
extern void cache_shmem_request(void);
extern void cache_shmem_startup(void);
extern bool cache_enabled(void);

/* backends: the hot path and fills */
extern CacheResult cache_check(const TokenKey *key, TimestampTz now,
							   CacheValues *values);
extern void cache_drop_dead(const TokenKey *key, TimestampTz now);
extern void cache_count_miss(void);
extern uint64 cache_generation(const TokenKey *key);
extern bool cache_fill(const TokenKey *key, const CacheValues *values,
					   TimestampTz last_used, bool dirty, uint64 generation);
extern bool cache_record_use(const TokenKey *key, TimestampTz now);
extern TimestampTz cache_last_used(const TokenKey *key);

/* commit time (xact.c): no allocation, no ERROR */
extern void cache_update(const TokenKey *key, const CacheValues *values,
						 bool set_used, TimestampTz last_used);
extern void cache_remove(const TokenKey *key);
extern void cache_purge_db(Oid dbid);
extern void cache_mark_clean(const TokenKey *key, uint64 observed);

/* the background */
extern int	cache_collect_dirty(Oid dbid, CacheDirty *out, int max);
extern int64 cache_count_dirty(Oid dbid, int64 *entries);
extern int64 cache_maintain(TimestampTz now);
extern void cache_stats(CacheStats *stats);

#endif
