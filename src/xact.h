/*
 * xact.h: token changes queued in the transaction, applied to the cache at
 * commit.
 */
#ifndef TOKENSTORE_XACT_H
#define TOKENSTORE_XACT_H

#include "cache.h"

extern void xact_init(void);
extern bool xact_has_token_changes(void);
extern bool xact_may_fill(void);
extern void xact_queue_fill(const TokenKey *key, const CacheValues *values,
							const CachePayload *payload,
							TimestampTz last_used);
extern void xact_queue_clean(const TokenKey *key, uint64 observed);
extern void xact_queue_expire(const TokenKey *key, TimestampTz deadline);

#endif
