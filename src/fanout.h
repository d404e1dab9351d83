/*
 * fanout.h: the queue of committed token changes bound for Redis.
 */
#ifndef TOKENSTORE_FANOUT_H
#define TOKENSTORE_FANOUT_H

#include "datatype/timestamp.h"
#include "deadline.h"
#include "lib/stringinfo.h"
#include "storage/latch.h"
#include "token.h"
#include "utils/json.h"
#include "utils/jsonb.h"

/* a bigger message is not queued: the resync carries the change instead */
#define FANOUT_MSG_MAX		(256 * 1024)

typedef enum FanoutKind
{
	FANOUT_SET,					/* write the token's key, add it to its user's set */
	FANOUT_EXPIRE,				/* move the key's deadline (a use was flushed) */
	FANOUT_REMOVE,				/* delete the key, drop it from the set, publish */
	FANOUT_PURGE				/* delete every key of a database, publish */
} FanoutKind;

/*
 * One change, as queued.  The length is MAXALIGNed so that messages copied
 * out of the queue in a row can be read in place.
 */
typedef struct FanoutMsg
{
	uint32		len;			/* of the whole message, padding included */
	uint8		kind;
	TimestampTz committed_at;
	TimestampTz deadline;		/* SET and EXPIRE; DEADLINE_NONE: none */
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	uint16		db_len;
	uint16		user_len;
	uint32		value_len;
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* database, user id, value */
} FanoutMsg;

#define fanout_msg_db(m)	((m)->data)
#define fanout_msg_user(m)	((m)->data + (m)->db_len)
#define fanout_msg_value(m) ((m)->data + (m)->db_len + (m)->user_len)

/* A user id as JSON: an anonymous session's (length 0) is null. */
static inline void
fanout_append_user_json(StringInfo buf, const char *user_id, int user_len)
{
	if (user_len > 0)
		escape_json(buf, pnstrdup(user_id, user_len));
	else
		appendStringInfoString(buf, "null");
}

/* Where a transaction's messages wait in the queue until it commits. */
typedef struct FanoutReservation
{
	uint64		pos;			/* of its block */
	uint64		resets;			/* the queue's resets when it was made */
} FanoutReservation;

typedef enum FanoutConn
{
	FANOUT_OFF,					/* not configured */
	FANOUT_DOWN,				/* configured, not connected */
	FANOUT_UP					/* connected to a master */
} FanoutConn;

/* What the redis_stats view shows. */
typedef struct FanoutStats
{
	FanoutConn	conn;
	uint64		epoch;
	bool		epoch_read;		/* a resync has read the table in this epoch */
	char		server[256];
	char		last_error[256];
	int64		queued;
	int64		queue_bytes;
	int64		held;			/* writes the publisher holds during a resync */
	TimestampTz held_oldest;	/* committed_at of the oldest of them; 0: none */
	TimestampTz oldest;			/* committed_at of the oldest waiting; 0: none */
	int64		sent;
	int64		errors;
	int64		overflows;
	int64		resyncs;
} FanoutStats;

extern void fanout_shmem_request(void);
extern void fanout_shmem_startup(void);

/* backends: building messages in the transaction, queueing them at commit */
extern bool fanout_loaded(void);
extern bool fanout_active(void);
extern char *fanout_token_json(const TokenKey *key, const char *user_id,
							   int user_len, Jsonb *info,
							   TimestampTz created_at, TimestampTz expires_at,
							   int *len);
extern FanoutMsg *fanout_msg_set(const TokenKey *key, const char *user_id,
								 int user_len, Jsonb *info,
								 TimestampTz created_at, TimestampTz expires_at,
								 TimestampTz deadline);
extern FanoutMsg *fanout_msg_expire(const TokenKey *key, TimestampTz deadline);
extern FanoutMsg *fanout_msg_remove(const TokenKey *key, const char *user_id,
									int user_len);
extern FanoutMsg *fanout_msg_purge(const char *datname);
extern bool fanout_reserve(FanoutMsg **msgs, int n, FanoutReservation *r);
extern void fanout_resolve(const FanoutReservation *r, bool committed);
extern void fanout_lost(void);

/* the publisher */
extern void fanout_publisher_attach(Latch *latch);
extern void fanout_set_conn(FanoutConn conn, const char *server,
							const char *error);
extern Size fanout_take(char *buf, Size max, bool *held);
extern void fanout_count_sent(int64 commands, bool error);
extern void fanout_set_held(int64 count, TimestampTz oldest);

/* the workers' resynchronisation */
extern bool fanout_up(uint64 *epoch);
extern bool fanout_hold(void);
extern void fanout_release(void);
extern void fanout_count_resync(void);

extern void fanout_stats(FanoutStats *stats);

#endif
