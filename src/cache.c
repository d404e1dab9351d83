/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  The hot tier: a fixed-size, partitioned hash in shared memory from
 *	  (database, SHA-256 of a token) to what a check needs: the user id, the
 *	  deadlines and the last use; and beside it the payload area, which
 *	  holds what a session's check reads besides (info, data, creation).
 *
 * The entry table
 * ---------------
 * Open addressing, a region of slots per partition: the slot is the entry
 * (104 bytes), found through an array of 4-byte tags (a slice of the hash;
 * 0 marks a free slot) probed linearly from the key's home slot, so a hit
 * reads one line of tags and one entry, and a token costs about 118 bytes
 * of shared memory, everything counted.  Removal shifts the rest of a probe
 * run back, so no tombstones build up.  The cache holds at most
 * max_cached_tokens entries (an atomic count); each region has some slack
 * over its share (for the spread of the hash) and refuses an insert when
 * one slot is left free, which ends every probe.  An entry holds up to
 * ENTRY_USER_INLINE bytes of the user id; a longer one keeps the rest in a
 * chunk of the payload area (without room there, the token is not cached).
 * No entry ever holds the token.
 *
 * The payload area
 * ----------------
 * A second fixed-size hash, of chunks of PAYLOAD_CHUNK_BYTES keyed by
 * (entry key, chunk number): a token's info and data, up to
 * CACHE_PAYLOAD_MAX bytes, take as many chunks as they need, so a token
 * without a payload costs nothing there and a small one little.  Its size
 * is its own setting (tokenstore.max_cached_data).  A chunk's hash code
 * differs from its entry's only above the partition bits, so the entry and
 * all its chunks are guarded by one partition lock and change together.
 * An entry may lack its payload (a token made by token_make until its
 * first token_check, one too large, or the area was full): a check that
 * needs it then reads the table, which fills it in.
 * Every removal of an entry removes its chunks.
 *
 * Locking rules
 * -------------
 * - Each of CACHE_PARTITIONS LWLocks guards the entries whose hash code
 *   falls in its partition (the low bits; the hash code is taken from the
 *   SHA-256 itself, which is uniform).
 * - A hit takes its partition lock in shared mode, copies what it needs and
 *   records the use with an atomic write of the entry's "used" word; no
 *   exclusive lock and no spinlock.  Concurrent hits on one entry may store
 *   their clocks in either order; the difference is microseconds.
 * - The used word packs the last use with a dirty bit, set by every use and
 *   cleared by a flush with a compare-and-swap, so a use that lands during
 *   a flush stays dirty.  The time is kept as its distance from the first
 *   timestamp PostgreSQL can represent, which fits 63 bits for every time
 *   before the year 287000: a time that does not fit (only an operator's
 *   edit can make one) is never cached, so every packed time round-trips.
 * - Inserting, changing and removing entries take the partition lock
 *   exclusively, for a probe and a few stores: never across I/O, SPI or
 *   anything that can ERROR.  A full region or payload area refuses an
 *   entry, it never errors.
 * - Every change of an entry's token in the table bumps the partition's
 *   generation counter (see xact.c), so a fill that read the table before
 *   such a change sees the bump and stays out (cache_generation before the
 *   read, cache_fill after).
 * - Passes over the whole table (flush, stats, eviction) take all partition
 *   locks in shared mode in partition order, as the lock manager does; they
 *   read and collect, and removals happen afterwards one partition at a
 *   time.  Only a purge (TRUNCATE, DROP EXTENSION, DROP DATABASE) takes all
 *   of them exclusively.
 *
 * On a hot standby
 * ----------------
 * Replay fires no triggers, so a standby's cache learns of changes from the
 * primary's WAL (see standby.c): the startup process removes the entries a
 * transaction changed and bumps their partitions' generations when it
 * replays the record the transaction logged just before its commit record.
 * Between the two records the old row is still what a standby's snapshot
 * shows, so the transaction's xid is noted first, and no fill on the
 * standby is allowed while a noted xid is still in progress.  The cache is
 * used on a standby only between the primary's "on" record and an "off"
 * one; after "on" it settles first: no fill until every transaction that
 * was running then (whose records may precede what this standby replayed)
 * has ended.  A standby's entry judges the idle deadline on the standby's
 * own uses, which may be older than the primary's, so an entry past its
 * deadline is read again from the table instead of being taken as dead.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/transam.h"
#include "access/twophase.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "cache.h"
#include "compat.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tokenstore.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"

#define CACHE_PARTITIONS	128
#define CACHE_TRANCHE		"tokenstore cache"

/* Eviction starts above the high watermark and stops at the low one. */
#define CACHE_HIGH_PERCENT	90
#define CACHE_LOW_PERCENT	80
/* Most keys one maintenance pass removes. */
#define CACHE_MAINTAIN_MAX	100000
/* Buckets of the age histogram: log2 of the age in milliseconds. */
#define AGE_BUCKETS			48

typedef struct CacheKey
{
	Oid			dbid;
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
} CacheKey;

/* Bytes of payload per chunk: a chunk is 240 bytes with its key. */
#define PAYLOAD_CHUNK_BYTES	200

/* The bytes of a user id an entry holds; the rest take a payload chunk. */
#define ENTRY_USER_INLINE	43

typedef struct CacheEntry
{
	pg_atomic_uint64 used;		/* (last use << 1) | dirty */
	TimestampTz expires_at;
	int64		idle_us;
	CacheKey	key;
	uint8		user_len;
	char		user_id[ENTRY_USER_INLINE];
} CacheEntry;

StaticAssertDecl(sizeof(CacheEntry) == 104, "a cache entry is 104 bytes");

typedef struct PayloadKey
{
	CacheKey	entry;
	uint32		chunk;
} PayloadKey;

typedef struct PayloadChunk
{
	PayloadKey	key;
	char		bytes[PAYLOAD_CHUNK_BYTES];
} PayloadChunk;

/* The chunk that holds the rest of a long user id. */
#define USER_CHUNK			PG_UINT32_MAX

StaticAssertDecl(CACHE_USER_ID_MAX - ENTRY_USER_INLINE <= PAYLOAD_CHUNK_BYTES,
				 "the rest of a user id fits a chunk");

/*
 * The start of chunk 0: the payload is this head, then info, then data
 * (each a whole varlena).
 */
typedef struct PayloadHead
{
	int32		nchunks;
	int32		info_size;
	int32		data_size;		/* -1: no data */
	TimestampTz created_at;
} PayloadHead;

/* The largest payload, head included. */
#define PAYLOAD_STREAM_MAX	(sizeof(PayloadHead) + CACHE_PAYLOAD_MAX)

/* Written only by their backend; read by the stats view. */
typedef struct BackendCounters
{
	pg_atomic_uint64 hits;
	pg_atomic_uint64 misses;
} BackendCounters;

typedef struct CacheShared
{
	pg_atomic_uint64 generation[CACHE_PARTITIONS];
	pg_atomic_uint64 fills;
	pg_atomic_uint64 refused;
	pg_atomic_uint64 evictions;
	pg_atomic_uint64 entries;	/* never above max_cached_tokens */
	int32		used_slots[CACHE_PARTITIONS];	/* entries per region */
	int			nbackends;
	BackendCounters counters[FLEXIBLE_ARRAY_MEMBER];
} CacheShared;

/*
 * What a hot standby knows of the primary's WAL: whether the cache may be
 * used, and the transactions whose changes it replayed before their commit.
 * The array has room for every transaction the primary can run at once (a
 * standby's max_connections and friends are at least the primary's).
 */
typedef struct StandbyShared
{
	pg_atomic_uint32 state;		/* a CacheStandbyState */
	slock_t		mutex;			/* guards what follows */
	TransactionId horizon;		/* SETTLING: until all before it ended */
	int			nxids;
	TransactionId xids[FLEXIBLE_ARRAY_MEMBER];	/* noted, maybe running */
} StandbyShared;

/* The generation a fill may not match: the standby has not settled. */
#define GENERATION_UNSETTLED	PG_UINT64_MAX

static CacheShared *shared = NULL;
static StandbyShared *standby = NULL;
static uint32 *tags = NULL;
static CacheEntry *entries = NULL;
static uint32 region_slots = 0;
static HTAB *payload_htab = NULL;
static LWLockPadded *locks = NULL;

/*
 * A payload as one stream of bytes, between the chunks and the caller: a
 * process's own (no call nests in another), so that a check does not grow
 * the stack by 8 kB.
 */
static char stream[PAYLOAD_STREAM_MAX];

static int
backend_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

static Size
shared_size(void)
{
	return add_size(offsetof(CacheShared, counters),
					mul_size(backend_slots(), sizeof(BackendCounters)));
}

/*
 * Slots per partition: its share of the capacity, 5 % more, and room for
 * the spread of a uniform hash over the partitions (four standard
 * deviations, and a few slots for tiny caches).
 */
static uint32
slots_per_region(void)
{
	double		share = (double) tokenstore_max_cached_tokens / CACHE_PARTITIONS;

	return (uint32) ceil(share * 1.05 + 4 * sqrt(share) + 4);
}

static Size
standby_size(void)
{
	return add_size(offsetof(StandbyShared, xids),
					mul_size(backend_slots(), sizeof(TransactionId)));
}

static Size
slots_size(void)
{
	Size		slots = mul_size(slots_per_region(), CACHE_PARTITIONS);

	return add_size(mul_size(slots, sizeof(uint32)),
					mul_size(slots, sizeof(CacheEntry)));
}

/* How many chunks tokenstore.max_cached_data buys, everything counted. */
static long
payload_capacity(void)
{
	Size		chunk = MAXALIGN(sizeof(HASHELEMENT)) +
		MAXALIGN(sizeof(PayloadChunk)) + sizeof(void *);

	return (long) Min((int64) tokenstore_max_cached_data * 1024 / chunk,
					  INT_MAX);
}

Size
cache_shmem_size(void)
{
	Size		size = add_size(add_size(shared_size(), standby_size()),
									slots_size());

	if (payload_capacity() > 0)
		size = add_size(size, hash_estimate_size(payload_capacity(),
												 sizeof(PayloadChunk)));
	return size;
}

void
cache_shmem_request(void)
{
	if (tokenstore_max_cached_tokens <= 0)
		return;
	RequestAddinShmemSpace(cache_shmem_size());
	RequestNamedLWLockTranche(CACHE_TRANCHE, CACHE_PARTITIONS);
}

static uint32
key_hash(const void *key, Size keysize)
{
	const CacheKey *k = key;
	uint32		h;

	memcpy(&h, k->hash, sizeof(h));
	return h ^ k->dbid;
}

/* A chunk's hash code: its entry's, changed only above the partition bits. */
static inline uint32
chunk_hashcode(uint32 entry_hashcode, uint32 chunk)
{
	return entry_hashcode ^ ((chunk * 0x9E3779B1u) & ~(uint32) (CACHE_PARTITIONS - 1));
}

static uint32
payload_key_hash(const void *key, Size keysize)
{
	const PayloadKey *k = key;

	return chunk_hashcode(key_hash(&k->entry, sizeof(k->entry)), k->chunk);
}

/* Attach; the caller holds AddinShmemInitLock. */
void
cache_shmem_startup(void)
{
	HASHCTL		info;
	bool		found;
	int			i;

	shared = NULL;
	standby = NULL;
	tags = NULL;
	entries = NULL;
	payload_htab = NULL;
	locks = NULL;
	if (tokenstore_max_cached_tokens <= 0)
		return;

	shared = ShmemInitStruct("tokenstore cache", shared_size(), &found);
	if (!found)
	{
		for (i = 0; i < CACHE_PARTITIONS; i++)
			pg_atomic_init_u64(&shared->generation[i], 0);
		pg_atomic_init_u64(&shared->fills, 0);
		pg_atomic_init_u64(&shared->refused, 0);
		pg_atomic_init_u64(&shared->evictions, 0);
		pg_atomic_init_u64(&shared->entries, 0);
		memset(shared->used_slots, 0, sizeof(shared->used_slots));
		shared->nbackends = backend_slots();
		for (i = 0; i < shared->nbackends; i++)
		{
			pg_atomic_init_u64(&shared->counters[i].hits, 0);
			pg_atomic_init_u64(&shared->counters[i].misses, 0);
		}
	}
	standby = ShmemInitStruct("tokenstore cache standby", standby_size(), &found);
	if (!found)
	{
		pg_atomic_init_u32(&standby->state, CACHE_STANDBY_OFF);
		SpinLockInit(&standby->mutex);
		standby->horizon = InvalidTransactionId;
		standby->nxids = 0;
	}
	locks = GetNamedLWLockTranche(CACHE_TRANCHE);

	region_slots = slots_per_region();
	tags = ShmemInitStruct("tokenstore cache slots", slots_size(), &found);
	entries = (CacheEntry *) (tags + (Size) region_slots * CACHE_PARTITIONS);
	if (!found)
		memset(tags, 0, (Size) region_slots * CACHE_PARTITIONS * sizeof(uint32));
	if (payload_capacity() == 0)
		return;
	info.num_partitions = CACHE_PARTITIONS;
	info.keysize = sizeof(PayloadKey);
	info.entrysize = sizeof(PayloadChunk);
	info.hash = payload_key_hash;
	payload_htab = ShmemInitHash("tokenstore cache payloads",
								 payload_capacity(), payload_capacity(),
								 &info,
								 HASH_ELEM | HASH_FUNCTION | HASH_PARTITION |
								 HASH_FIXED_SIZE);
}

/*
 * Whether this process may use the cache.  During recovery only while the
 * primary's WAL says it logs what the cache must forget (standby.c).
 */
bool
cache_enabled(void)
{
	return tags != NULL &&
		(!RecoveryInProgress() ||
		 pg_atomic_read_u32(&standby->state) != CACHE_STANDBY_OFF);
}

/* ---- keys, locks and packed uses ---- */

static inline uint32
make_key(CacheKey *ck, Oid dbid, const TokenKey *key)
{
	ck->dbid = dbid;
	memcpy(ck->hash, key->bytes, sizeof(ck->hash));
	return key_hash(ck, sizeof(*ck));
}

static inline LWLock *
partition_lock(uint32 hashcode)
{
	return &locks[hashcode % CACHE_PARTITIONS].lock;
}

/* the latest time the used word can hold: MIN_TIMESTAMP + 2^63 - 1 */
#define USED_MAX	(MIN_TIMESTAMP + PG_INT64_MAX)

/* Whether the used word can hold t (see the locking rules). */
static inline bool
used_fits(TimestampTz t)
{
	return t >= MIN_TIMESTAMP && t <= USED_MAX;
}

static inline uint64
used_pack(TimestampTz t, bool dirty)
{
	Assert(used_fits(t));
	return ((uint64) (t - MIN_TIMESTAMP) << 1) | (dirty ? 1 : 0);
}

static inline TimestampTz
used_time(uint64 used)
{
	return (TimestampTz) (used >> 1) + MIN_TIMESTAMP;
}

static inline bool
entry_live(const CacheEntry *e, TimestampTz last_used, TimestampTz now)
{
	return now < token_deadline(e->expires_at, e->idle_us, last_used);
}

static void
lock_all(LWLockMode mode)
{
	int			i;

	for (i = 0; i < CACHE_PARTITIONS; i++)
		LWLockAcquire(&locks[i].lock, mode);
}

static void
unlock_all(void)
{
	int			i;

	for (i = CACHE_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&locks[i].lock);
}

/* ---- the entry table: the caller holds the partition lock ---- */

/* A key's slot tag: a slice of its hash other than the partition's, never 0. */
static inline uint32
key_tag(const CacheKey *ck)
{
	uint32		tag;

	memcpy(&tag, ck->hash + 8, sizeof(tag));
	return tag != 0 ? tag : 1;
}

/* The slot in its region where a key's probe starts. */
static inline uint32
key_home(const CacheKey *ck)
{
	uint32		h;

	memcpy(&h, ck->hash + 4, sizeof(h));
	return (uint32) (((uint64) (h ^ ck->dbid) * region_slots) >> 32);
}

/* The first slot of a partition's region. */
static inline Size
region_start(uint32 hashcode)
{
	return (Size) (hashcode % CACHE_PARTITIONS) * region_slots;
}

static inline uint32
next_slot(uint32 i)
{
	return i + 1 < region_slots ? i + 1 : 0;
}

/* A key's entry, or NULL. */
static CacheEntry *
entry_find(const CacheKey *ck, uint32 hashcode)
{
	Size		start = region_start(hashcode);
	uint32		tag = key_tag(ck);
	uint32		i;

	for (i = key_home(ck); tags[start + i] != 0; i = next_slot(i))
	{
		if (tags[start + i] == tag &&
			memcmp(&entries[start + i].key, ck, sizeof(*ck)) == 0)
			return &entries[start + i];
	}
	return NULL;
}

/*
 * A new entry for a key that has none (its key set), or NULL if the cache
 * or the region is full.
 */
static CacheEntry *
entry_insert(const CacheKey *ck, uint32 hashcode)
{
	uint32		partition = hashcode % CACHE_PARTITIONS;
	Size		start = region_start(hashcode);
	uint32		i;

	if (shared->used_slots[partition] >= (int32) region_slots - 1)
		return NULL;
	if (pg_atomic_fetch_add_u64(&shared->entries, 1) >=
		(uint64) tokenstore_max_cached_tokens)
	{
		pg_atomic_fetch_sub_u64(&shared->entries, 1);
		return NULL;
	}
	for (i = key_home(ck); tags[start + i] != 0; i = next_slot(i))
		;
	tags[start + i] = key_tag(ck);
	entries[start + i].key = *ck;
	shared->used_slots[partition]++;
	return &entries[start + i];
}

/*
 * Whether the entry in slot i, whose home is `home`, may move back to the
 * hole: the hole lies on its probe path, from its home up to i.
 */
static inline bool
can_move_back(uint32 home, uint32 hole, uint32 i)
{
	if (hole <= i)
		return home <= hole || home > i;
	return home <= hole && home > i;
}

/*
 * Free an entry's slot, and move the entries after it in its probe run
 * back, so that every entry stays reachable from its home.
 */
static void
slot_free(CacheEntry *e, uint32 hashcode)
{
	Size		start = region_start(hashcode);
	uint32		hole = (uint32) (e - &entries[start]);
	uint32		i;

	for (i = next_slot(hole); tags[start + i] != 0; i = next_slot(i))
	{
		if (!can_move_back(key_home(&entries[start + i].key), hole, i))
			continue;
		tags[start + hole] = tags[start + i];
		memcpy(&entries[start + hole], &entries[start + i], sizeof(CacheEntry));
		hole = i;
	}
	tags[start + hole] = 0;
	shared->used_slots[hashcode % CACHE_PARTITIONS]--;
	pg_atomic_fetch_sub_u64(&shared->entries, 1);
}

/* The entry in slot i of a partition's region, or NULL if it is free. */
static inline CacheEntry *
slot_entry(int partition, uint32 i)
{
	Size		slot = (Size) partition * region_slots + i;

	return tags[slot] != 0 ? &entries[slot] : NULL;
}

static int64
entry_count(void)
{
	return (int64) pg_atomic_read_u64(&shared->entries);
}

static inline BackendCounters *
my_counters(void)
{
	return &shared->counters[MyProcNumber];
}

static inline void
count(pg_atomic_uint64 *counter)
{
	pg_atomic_write_u64(counter, pg_atomic_read_u64(counter) + 1);
}

/* ---- payloads: the caller holds the partition lock ---- */

bool
cache_payload_fits(Size info_size, Size data_size)
{
	return payload_htab != NULL && info_size <= CACHE_PAYLOAD_MAX &&
		data_size <= CACHE_PAYLOAD_MAX - info_size;
}

/* The length of a payload's stream, head included. */
static inline Size
stream_length(const PayloadHead *head)
{
	return sizeof(*head) + head->info_size + Max(head->data_size, 0);
}

/* The payload into the stream; its length, or 0 if too large. */
static Size
payload_write(const CachePayload *payload)
{
	PayloadHead head = {0};

	head.info_size = VARSIZE(payload->info);
	head.data_size = payload->data ? VARSIZE(payload->data) : -1;
	head.created_at = payload->created_at;
	if (!cache_payload_fits(head.info_size, Max(head.data_size, 0)))
		return 0;
	memcpy(stream + sizeof(head), payload->info, head.info_size);
	if (payload->data)
		memcpy(stream + sizeof(head) + head.info_size, payload->data,
			   head.data_size);
	head.nchunks = (stream_length(&head) + PAYLOAD_CHUNK_BYTES - 1) /
		PAYLOAD_CHUNK_BYTES;
	memcpy(stream, &head, sizeof(head));
	return stream_length(&head);
}

static PayloadChunk *
chunk_search(const CacheKey *ck, uint32 hashcode, uint32 chunk,
			 HASHACTION action)
{
	PayloadKey	pk;

	memset(&pk, 0, sizeof(pk));
	pk.entry = *ck;
	pk.chunk = chunk;
	return hash_search_with_hash_value(payload_htab, &pk,
									   chunk_hashcode(hashcode, chunk),
									   action, NULL);
}

static inline bool
has_payload(const CacheKey *ck, uint32 hashcode)
{
	return payload_htab != NULL &&
		chunk_search(ck, hashcode, 0, HASH_FIND) != NULL;
}

/* Remove the first n chunks of an entry's payload. */
static void
chunks_remove(const CacheKey *ck, uint32 hashcode, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		(void) chunk_search(ck, hashcode, i, HASH_REMOVE);
}

static void
payload_remove(const CacheKey *ck, uint32 hashcode)
{
	PayloadChunk *c;
	PayloadHead head;

	if (payload_htab == NULL)
		return;
	c = chunk_search(ck, hashcode, 0, HASH_FIND);
	if (c == NULL)
		return;
	memcpy(&head, c->bytes, sizeof(head));
	chunks_remove(ck, hashcode, head.nchunks);
}

/*
 * Store a payload (replacing any); without one, or when it does not fit or
 * the area is full, the entry is left without.  Never ERRORs.
 */
static void
payload_store(const CacheKey *ck, uint32 hashcode, const CachePayload *payload)
{
	Size		len;
	int			i;

	payload_remove(ck, hashcode);
	if (payload == NULL || (len = payload_write(payload)) == 0)
		return;
	for (i = 0; (Size) i * PAYLOAD_CHUNK_BYTES < len; i++)
	{
		PayloadChunk *c = chunk_search(ck, hashcode, i, HASH_ENTER_NULL);

		if (c == NULL)
		{
			chunks_remove(ck, hashcode, i);
			return;
		}
		memcpy(c->bytes, stream + (Size) i * PAYLOAD_CHUNK_BYTES,
			   Min(PAYLOAD_CHUNK_BYTES, len - (Size) i * PAYLOAD_CHUNK_BYTES));
	}
}

/*
 * A committed change of the row: the entry's payload replaced, if it has
 * one; one without gets one only for a session (with data), as a new
 * token does (see prewarm in api.c).
 */
static void
payload_update(const CacheKey *ck, uint32 hashcode, const CachePayload *payload)
{
	if ((payload != NULL && payload->data != NULL) || has_payload(ck, hashcode))
		payload_store(ck, hashcode, payload);
}

/* Copy an entry's payload into the stream; false if it has none. */
static bool
payload_read(const CacheKey *ck, uint32 hashcode)
{
	PayloadChunk *c;
	PayloadHead head;
	Size		len;
	int			i;

	if (payload_htab == NULL ||
		(c = chunk_search(ck, hashcode, 0, HASH_FIND)) == NULL)
		return false;
	memcpy(&head, c->bytes, sizeof(head));
	len = stream_length(&head);
	for (i = 0; i < head.nchunks; i++)
	{
		if (i > 0 && (c = chunk_search(ck, hashcode, i, HASH_FIND)) == NULL)
			return false;
		memcpy(stream + (Size) i * PAYLOAD_CHUNK_BYTES, c->bytes,
			   Min(PAYLOAD_CHUNK_BYTES, len - (Size) i * PAYLOAD_CHUNK_BYTES));
	}
	return true;
}

/* The payload in the stream (from payload_read), in palloc'd memory. */
static void
payload_unpack(CachePayload *payload)
{
	PayloadHead head;

	memcpy(&head, stream, sizeof(head));
	payload->created_at = head.created_at;
	payload->info = palloc(head.info_size);
	memcpy(payload->info, stream + sizeof(head), head.info_size);
	payload->data = NULL;
	if (head.data_size >= 0)
	{
		payload->data = palloc(head.data_size);
		memcpy(payload->data, stream + sizeof(head) + head.info_size,
			   head.data_size);
	}
}

/*
 * Give an entry its values; the end of a user id longer than an entry holds
 * goes to a chunk.  False if there was no room for that chunk.
 */
static bool
entry_set(CacheEntry *e, uint32 hashcode, const CacheValues *values)
{
	int			inline_len = Min(values->user_len, ENTRY_USER_INLINE);

	if (e->user_len > ENTRY_USER_INLINE && values->user_len <= ENTRY_USER_INLINE)
		(void) chunk_search(&e->key, hashcode, USER_CHUNK, HASH_REMOVE);
	if (values->user_len > ENTRY_USER_INLINE)
	{
		PayloadChunk *c = payload_htab == NULL ? NULL :
			chunk_search(&e->key, hashcode, USER_CHUNK, HASH_ENTER_NULL);

		if (c == NULL)
			return false;
		memcpy(c->bytes, values->user_id + ENTRY_USER_INLINE,
			   values->user_len - ENTRY_USER_INLINE);
	}
	e->user_len = values->user_len;
	memcpy(e->user_id, values->user_id, inline_len);
	e->expires_at = values->expires_at;
	e->idle_us = values->idle_us;
	return true;
}

/* An entry's values; false if the end of its user id has gone missing. */
static bool
entry_get(const CacheEntry *e, uint32 hashcode, CacheValues *values)
{
	values->user_len = e->user_len;
	memcpy(values->user_id, e->user_id, Min(e->user_len, ENTRY_USER_INLINE));
	values->expires_at = e->expires_at;
	values->idle_us = e->idle_us;
	if (e->user_len > ENTRY_USER_INLINE)
	{
		PayloadChunk *c = chunk_search(&e->key, hashcode, USER_CHUNK, HASH_FIND);

		if (c == NULL)
			return false;
		memcpy(values->user_id + ENTRY_USER_INLINE, c->bytes,
			   e->user_len - ENTRY_USER_INLINE);
	}
	return true;
}

/* Remove an entry, its payload and the end of its user id. */
static void
entry_drop(CacheEntry *e, uint32 hashcode)
{
	CacheKey	ck = e->key;

	if (e->user_len > ENTRY_USER_INLINE)
		(void) chunk_search(&ck, hashcode, USER_CHUNK, HASH_REMOVE);
	slot_free(e, hashcode);
	payload_remove(&ck, hashcode);
}

/* Remove a key's entry, if any. */
static void
entry_remove(const CacheKey *ck, uint32 hashcode)
{
	CacheEntry *e = entry_find(ck, hashcode);

	if (e != NULL)
		entry_drop(e, hashcode);
}

/* ---- the hot path ---- */

/*
 * Look a token up.  CACHE_LIVE: *values (and *payload, if asked for) are
 * filled and the use recorded.  CACHE_DEAD: the entry's deadlines have
 * passed.  CACHE_MISS: no entry, or no payload when one was asked for.
 */
CacheResult
cache_check(const TokenKey *key, TimestampTz now, CacheValues *values,
			CachePayload *payload)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;
	uint64		used;
	CacheResult result;

	LWLockAcquire(lock, LW_SHARED);
	e = entry_find(&ck, hashcode);
	if (e == NULL)
		result = CACHE_MISS;
	else
	{
		used = pg_atomic_read_u64(&e->used);
		if (!entry_live(e, used_time(used), now))
			result = CACHE_DEAD;
		else if (!entry_get(e, hashcode, values) ||
				 (payload != NULL && !payload_read(&ck, hashcode)))
			result = CACHE_MISS;
		else
		{
			if (now > used_time(used))
				pg_atomic_write_u64(&e->used, used_pack(now, true));
			result = CACHE_LIVE;
		}
	}
	LWLockRelease(lock);

	if (result == CACHE_LIVE && payload != NULL)
		payload_unpack(payload);
	if (result == CACHE_LIVE)
		count(&my_counters()->hits);
	return result;
}

/* Remove an entry whose deadlines have passed (they cannot come back). */
void
cache_drop_dead(const TokenKey *key, TimestampTz now)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = entry_find(&ck, hashcode);
	if (e != NULL && !entry_live(e, used_time(pg_atomic_read_u64(&e->used)), now))
		entry_drop(e, hashcode);
	LWLockRelease(lock);
}

void
cache_count_miss(void)
{
	count(&my_counters()->misses);
}

/* Remove a database's entry, and move its partition's generation on. */
static void
remove_key(Oid dbid, const TokenKey *key)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, dbid, key);
	LWLock	   *lock = partition_lock(hashcode);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry_remove(&ck, hashcode);
	pg_atomic_fetch_add_u64(&shared->generation[hashcode % CACHE_PARTITIONS], 1);
	LWLockRelease(lock);
}

/* ---- a hot standby ---- */

/*
 * Whether every noted transaction has ended; those that have are
 * forgotten.  (In progress means running on the primary as far as replay
 * has got: a commit or abort record not replayed yet.)
 */
static bool
standby_xids_done(void)
{
	TransactionId *xids;
	bool	   *running;
	int			n;
	int			i;
	bool		done = true;

	SpinLockAcquire(&standby->mutex);
	n = standby->nxids;
	SpinLockRelease(&standby->mutex);
	if (n == 0)
		return true;
	xids = palloc(sizeof(TransactionId) * backend_slots());
	SpinLockAcquire(&standby->mutex);
	n = standby->nxids;
	memcpy(xids, standby->xids, sizeof(TransactionId) * n);
	SpinLockRelease(&standby->mutex);

	running = palloc(sizeof(bool) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		running[i] = TransactionIdIsInProgress(xids[i]);
		done = done && !running[i];
	}
	/* forget the ended ones (others may have forgotten some, or noted more) */
	SpinLockAcquire(&standby->mutex);
	for (i = 0; i < standby->nxids;)
	{
		int			j;

		for (j = 0; j < n && (xids[j] != standby->xids[i] || running[j]); j++)
			;
		if (j < n)
			standby->xids[i] = standby->xids[--standby->nxids];
		else
			i++;
	}
	SpinLockRelease(&standby->mutex);
	pfree(running);
	pfree(xids);
	return done;
}

/*
 * SETTLING: whether every transaction that ran when the "on" record was
 * replayed has ended (the oldest one a new snapshot sees running comes
 * after them); then the standby is on.
 */
static bool
standby_settle(void)
{
	TransactionId horizon;

	SpinLockAcquire(&standby->mutex);
	horizon = standby->horizon;
	SpinLockRelease(&standby->mutex);
	if (TransactionIdPrecedes(GetLatestSnapshot()->xmin, horizon))
		return false;
	SpinLockAcquire(&standby->mutex);
	if (standby->horizon == horizon &&
		pg_atomic_read_u32(&standby->state) == CACHE_STANDBY_SETTLING)
		pg_atomic_write_u32(&standby->state, CACHE_STANDBY_ON);
	SpinLockRelease(&standby->mutex);
	return true;
}

/* Whether a backend of a standby may fill the cache now. */
static bool
standby_settled(void)
{
	switch ((CacheStandbyState) pg_atomic_read_u32(&standby->state))
	{
		case CACHE_STANDBY_OFF:
			return false;
		case CACHE_STANDBY_SETTLING:
			if (!standby_settle())
				return false;
			break;
		case CACHE_STANDBY_ON:
			break;
	}
	return standby_xids_done();
}

/* The standby's state, for the stats view (settling ends here too). */
CacheStandbyState
cache_standby_state(void)
{
	if (standby == NULL || !RecoveryInProgress())
		return CACHE_STANDBY_OFF;
	if (pg_atomic_read_u32(&standby->state) == CACHE_STANDBY_SETTLING)
		(void) standby_settle();
	return (CacheStandbyState) pg_atomic_read_u32(&standby->state);
}

/*
 * Replay of the start of the settling: every transaction before the next
 * xid may have logged changes this standby did not replay.
 */
static void
standby_start_settling(void)
{
	TransactionId next = XidFromFullTransactionId(ReadNextFullTransactionId());

	SpinLockAcquire(&standby->mutex);
	standby->horizon = next;
	standby->nxids = 0;
	pg_atomic_write_u32(&standby->state, CACHE_STANDBY_SETTLING);
	SpinLockRelease(&standby->mutex);
}

/*
 * Note a transaction whose changes are replayed before its commit.  With
 * no room left once the ended ones are forgotten (a standby that runs fewer
 * connections than the primary, or transactions a crash of the primary cut
 * short, forgotten only at its next running-transactions record), settle
 * again instead: that waits for every transaction so far.  Never waits.
 */
static void
standby_note_xid(TransactionId xid)
{
	int			attempt;

	if (!TransactionIdIsValid(xid))
		return;
	for (attempt = 0; attempt < 2; attempt++)
	{
		bool		noted = false;

		if (attempt > 0)
			(void) standby_xids_done();
		SpinLockAcquire(&standby->mutex);
		if (standby->nxids < backend_slots())
		{
			standby->xids[standby->nxids++] = xid;
			noted = true;
		}
		SpinLockRelease(&standby->mutex);
		if (noted)
			return;
	}
	standby_start_settling();
}

/*
 * Replay: the transaction xid changed these tokens of a database, or all of
 * them (purge).  Runs in the startup process, before the commit's replay.
 */
void
cache_replay_change(Oid dbid, TransactionId xid, const TokenKey *keys,
					int nkeys, bool purge)
{
	int			i;

	if (tags == NULL)
		return;
	/*
	 * Noted before the generations move (see cache_generation); only once
	 * the cache is on: until then, the settling covers every transaction.
	 */
	if (pg_atomic_read_u32(&standby->state) != CACHE_STANDBY_OFF)
		standby_note_xid(xid);
	if (purge)
		cache_purge_db(dbid);
	for (i = 0; i < nkeys; i++)
		remove_key(dbid, &keys[i]);
}

/*
 * Replay of the primary's "on" (it logs what the cache must forget) or
 * "off" (it stops doing so: the cache is emptied and unused).  Crash
 * recovery ignores "on": no check runs before it ends.
 */
void
cache_replay_state(bool on)
{
	if (tags == NULL)
		return;
	if (!on)
	{
		pg_atomic_write_u32(&standby->state, CACHE_STANDBY_OFF);
		cache_purge_db(InvalidOid);
	}
	else if (standbyState != STANDBY_DISABLED &&
			 pg_atomic_read_u32(&standby->state) == CACHE_STANDBY_OFF)
		standby_start_settling();
}

/* The generation to pass to cache_fill, read before reading the table. */
uint64
cache_generation(const TokenKey *key)
{
	CacheKey	ck;
	uint64		generation;

	generation = pg_atomic_read_u64(&shared->generation[make_key(&ck, MyDatabaseId, key) % CACHE_PARTITIONS]);
	pg_read_barrier();
	if (RecoveryInProgress() && !standby_settled())
		return GENERATION_UNSETTLED;
	return generation;
}

/*
 * Insert an entry unless one exists, with the payload if given (or give an
 * existing entry the payload it lacks), unless the partition changed since
 * `generation` was read; false if the entry is not there afterwards (the
 * cache refused it: full, or a change raced).  Safe at commit time.
 */
bool
cache_fill(const TokenKey *key, const CacheValues *values,
		   const CachePayload *payload, TimestampTz last_used, bool dirty,
		   uint64 generation)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e = NULL;
	bool		found = false;
	bool		raced;

	if (!used_fits(last_used))
		return false;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	raced = pg_atomic_read_u64(&shared->generation[hashcode % CACHE_PARTITIONS]) != generation;
	if (!raced)
	{
		e = entry_find(&ck, hashcode);
		found = e != NULL;
		if (!found && (e = entry_insert(&ck, hashcode)) != NULL)
		{
			e->user_len = 0;
			pg_atomic_init_u64(&e->used, used_pack(last_used, dirty));
			if (!entry_set(e, hashcode, values))
			{
				slot_free(e, hashcode);
				e = NULL;
			}
		}
		if (e != NULL && payload != NULL &&
			(!found || !has_payload(&ck, hashcode)))
			payload_store(&ck, hashcode, payload);
	}
	LWLockRelease(lock);

	if (e != NULL && !found)
		pg_atomic_fetch_add_u64(&shared->fills, 1);
	else if (e == NULL && !raced)
		pg_atomic_fetch_add_u64(&shared->refused, 1);
	return e != NULL;
}

/* Record a use on an existing entry; false if there is none. */
bool
cache_record_use(const TokenKey *key, TimestampTz now)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;

	LWLockAcquire(lock, LW_SHARED);
	e = entry_find(&ck, hashcode);
	if (e != NULL && now > used_time(pg_atomic_read_u64(&e->used)))
		pg_atomic_write_u64(&e->used, used_pack(now, true));
	LWLockRelease(lock);
	return e != NULL;
}

/* The last use the cache knows of, or DT_NOBEGIN (earlier than any). */
TimestampTz
cache_last_used(const TokenKey *key)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;
	TimestampTz last_used = DT_NOBEGIN;

	LWLockAcquire(lock, LW_SHARED);
	e = entry_find(&ck, hashcode);
	if (e != NULL)
		last_used = used_time(pg_atomic_read_u64(&e->used));
	LWLockRelease(lock);
	return last_used;
}

/* ---- commit time ---- */

/*
 * A committed UPDATE of the token's row: take its new values and payload
 * (NULL: none the cache can hold; see payload_update), and its last use
 * too when set_used (an operator moved it back; a time the entry cannot
 * hold removes it).
 */
void
cache_update(const TokenKey *key, const CacheValues *values,
			 const CachePayload *payload, bool set_used,
			 TimestampTz last_used)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, MyDatabaseId, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = entry_find(&ck, hashcode);
	if (e != NULL && ((set_used && !used_fits(last_used)) ||
					  !entry_set(e, hashcode, values)))
		entry_drop(e, hashcode);
	else if (e != NULL)
	{
		payload_update(&ck, hashcode, payload);
		if (set_used)
			pg_atomic_write_u64(&e->used, used_pack(last_used, false));
	}
	pg_atomic_fetch_add_u64(&shared->generation[hashcode % CACHE_PARTITIONS], 1);
	LWLockRelease(lock);
}

/* A committed DELETE of the token's row. */
void
cache_remove(const TokenKey *key)
{
	remove_key(MyDatabaseId, key);
}

/*
 * Remove every entry of a database (TRUNCATE, DROP EXTENSION, DROP
 * DATABASE), or of all (InvalidOid).
 */
void
cache_purge_db(Oid dbid)
{
	HASH_SEQ_STATUS status;
	CacheEntry *e;
	int			i;
	uint32		slot;

	lock_all(LW_EXCLUSIVE);
	for (i = 0; i < CACHE_PARTITIONS; i++)
	{
		/* a removal may move a later entry into this slot: look again */
		for (slot = 0; slot < region_slots; slot++)
		{
			while ((e = slot_entry(i, slot)) != NULL &&
				   (!OidIsValid(dbid) || e->key.dbid == dbid))
				slot_free(e, i);
		}
	}
	if (payload_htab != NULL)
	{
		PayloadChunk *c;

		hash_seq_init(&status, payload_htab);
		while ((c = hash_seq_search(&status)) != NULL)
		{
			if (!OidIsValid(dbid) || c->key.entry.dbid == dbid)
				hash_search(payload_htab, &c->key, HASH_REMOVE, NULL);
		}
	}
	for (i = 0; i < CACHE_PARTITIONS; i++)
		pg_atomic_fetch_add_u64(&shared->generation[i], 1);
	unlock_all();
}

/* A flush of `observed` committed: clear the dirty bit unless used since. */
void
cache_mark_clean(Oid dbid, const TokenKey *key, uint64 observed)
{
	CacheKey	ck;
	uint32		hashcode = make_key(&ck, dbid, key);
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;

	LWLockAcquire(lock, LW_SHARED);
	e = entry_find(&ck, hashcode);
	if (e != NULL)
	{
		uint64		expected = observed;

		(void) pg_atomic_compare_exchange_u64(&e->used, &expected,
											  observed & ~(uint64) 1);
	}
	LWLockRelease(lock);
}

/* ---- the background ---- */

/* Up to max dirty entries of a database (InvalidOid: of all), for a flush. */
int
cache_collect_dirty(Oid dbid, CacheDirty *out, int max)
{
	CacheEntry *e;
	int			n = 0;
	int			i;
	uint32		slot;

	lock_all(LW_SHARED);
	for (i = 0; i < CACHE_PARTITIONS && n < max; i++)
	{
		for (slot = 0; slot < region_slots && n < max; slot++)
		{
			uint64		used;

			if ((e = slot_entry(i, slot)) == NULL)
				continue;
			used = pg_atomic_read_u64(&e->used);
			if ((OidIsValid(dbid) && e->key.dbid != dbid) || (used & 1) == 0)
				continue;
			out[n].dbid = e->key.dbid;
			memcpy(out[n].key.bytes, e->key.hash, sizeof(out[n].key.bytes));
			out[n].observed = used;
			out[n].last_used = used_time(used);
			n++;
		}
	}
	unlock_all();
	return n;
}

/* Dirty entries (and, in *entries, all entries) of a database. */
int64
cache_count_dirty(Oid dbid, int64 *entries)
{
	CacheEntry *e;
	int64		dirty = 0;
	int			i;
	uint32		slot;

	*entries = 0;
	lock_all(LW_SHARED);
	for (i = 0; i < CACHE_PARTITIONS; i++)
	{
		for (slot = 0; slot < region_slots; slot++)
		{
			if ((e = slot_entry(i, slot)) == NULL || e->key.dbid != dbid)
				continue;
			(*entries)++;
			if (pg_atomic_read_u64(&e->used) & 1)
				dirty++;
		}
	}
	unlock_all();
	return dirty;
}

static int
age_bucket(TimestampTz now, TimestampTz last_used)
{
	int64		age_ms = (now - last_used) / 1000;
	int			bucket = 0;

	while (age_ms > 1 && bucket < AGE_BUCKETS - 1)
	{
		age_ms >>= 1;
		bucket++;
	}
	return bucket;
}

/*
 * Collect the keys to drop: expired entries, and, when the cache is above
 * its high watermark, clean entries in buckets of age > cutoff and `quota`
 * of those in the cutoff bucket (enough to reach the low watermark, not the
 * whole bucket).
 */
static int
collect_victims(TimestampTz now, int cutoff, int64 quota, CacheKey *victims,
				int max, int64 *age_counts)
{
	int			n = 0;
	int			i;
	uint32		slot;

	lock_all(LW_SHARED);
	for (i = 0; i < CACHE_PARTITIONS && n < max; i++)
	{
		for (slot = 0; slot < region_slots && n < max; slot++)
		{
			CacheEntry *e = slot_entry(i, slot);
			uint64		used;
			int			bucket;
			bool		dead;

			if (e == NULL)
				continue;
			used = pg_atomic_read_u64(&e->used);
			bucket = age_bucket(now, used_time(used));
			dead = !entry_live(e, used_time(used), now);
			if (age_counts != NULL && !dead && (used & 1) == 0)
				age_counts[bucket]++;
			if (dead || ((used & 1) == 0 &&
						 (bucket > cutoff || (bucket == cutoff && quota > 0))))
			{
				if (!dead && bucket == cutoff)
					quota--;
				victims[n++] = e->key;
			}
		}
	}
	unlock_all();
	return n;
}

/* Drop one victim if it still qualifies; true if it went. */
static bool
drop_victim(const CacheKey *ck, TimestampTz now, int cutoff)
{
	uint32		hashcode = key_hash(ck, sizeof(*ck));
	LWLock	   *lock = partition_lock(hashcode);
	CacheEntry *e;
	bool		dropped = false;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = entry_find(ck, hashcode);
	if (e != NULL)
	{
		uint64		used = pg_atomic_read_u64(&e->used);

		if (!entry_live(e, used_time(used), now) ||
			((used & 1) == 0 && age_bucket(now, used_time(used)) >= cutoff))
		{
			entry_drop(e, hashcode);
			dropped = true;
		}
	}
	LWLockRelease(lock);
	return dropped;
}

/*
 * How many of `entries` to drop so that the cache, or its payload area, is
 * down to its low watermark once above the high one; 0 if neither is.  The
 * area's excess is turned into entries in proportion: an estimate, which
 * the next pass corrects.
 */
static int64
cache_excess(int64 entries)
{
	int64		capacity = tokenstore_max_cached_tokens;
	int64		excess = 0;

	if (entries > capacity * CACHE_HIGH_PERCENT / 100)
		excess = entries - capacity * CACHE_LOW_PERCENT / 100;
	if (payload_htab != NULL && entries > 0)
	{
		int64		chunks = hash_get_num_entries(payload_htab);
		int64		room = payload_capacity();

		if (chunks > room * CACHE_HIGH_PERCENT / 100)
			excess = Max(excess, entries *
						 (chunks - room * CACHE_LOW_PERCENT / 100) / chunks);
	}
	return excess;
}

/*
 * Drop expired entries and, above the high watermark (of the entries or of
 * the payload area), the least recently used clean entries down to the low
 * one.  Dirty entries stay until a flush has written their last use.
 * Returns how many went.
 */
int64
cache_maintain(TimestampTz now)
{
	int64		age_counts[AGE_BUCKETS] = {0};
	int			cutoff = AGE_BUCKETS;
	int			max = Min(CACHE_MAINTAIN_MAX, tokenstore_max_cached_tokens);
	CacheKey   *victims = palloc(sizeof(CacheKey) * max);
	int			n;
	int			i;
	int64		excess;
	int64		dropped = 0;

	/* first pass: expired entries, and the ages of the clean ones */
	n = collect_victims(now, AGE_BUCKETS, 0, victims, max, age_counts);
	for (i = 0; i < n; i++)
		dropped += drop_victim(&victims[i], now, AGE_BUCKETS) ? 1 : 0;
	excess = cache_excess(entry_count());
	n = 0;
	if (excess > 0)
	{
		/* the oldest buckets whole, and of the next what is still needed */
		for (cutoff = AGE_BUCKETS - 1; cutoff > 0; cutoff--)
		{
			if (excess <= age_counts[cutoff])
				break;
			excess -= age_counts[cutoff];
		}
		n = collect_victims(now, cutoff, excess, victims, max, NULL);
	}
	for (i = 0; i < n; i++)
		dropped += drop_victim(&victims[i], now, cutoff) ? 1 : 0;
	pfree(victims);
	pg_atomic_fetch_add_u64(&shared->evictions, dropped);
	return dropped;
}

void
cache_stats(CacheStats *stats)
{
	int			i;

	memset(stats, 0, sizeof(*stats));
	if (!cache_enabled())
		return;
	stats->capacity = tokenstore_max_cached_tokens;
	stats->entries = entry_count();
	for (i = 0; i < shared->nbackends; i++)
	{
		stats->hits += pg_atomic_read_u64(&shared->counters[i].hits);
		stats->misses += pg_atomic_read_u64(&shared->counters[i].misses);
	}
	stats->fills = pg_atomic_read_u64(&shared->fills);
	stats->refused = pg_atomic_read_u64(&shared->refused);
	stats->evictions = pg_atomic_read_u64(&shared->evictions);
}
