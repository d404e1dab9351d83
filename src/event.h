/*
 * event.h: NOTIFY events on channel tokenstore.
 */
#ifndef TOKENSTORE_EVENT_H
#define TOKENSTORE_EVENT_H

#include "nodes/pg_list.h"
#include "token.h"

extern void event_token(const char *event, const char *user_id,
						const TokenKey *key, const TokenKey *old_key);
extern void event_revoked(const char *event, List *revoked);
extern void event_count(const char *event, const char *user_id, int64 count);

#endif
