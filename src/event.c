/*-------------------------------------------------------------------------
 *
 * event.c
 *	  Token events as NOTIFY on channel "tokenstore", when tokenstore.notify
 *	  is on: the watcher hooks of token-go, delivered the PostgreSQL way.
 *
 * NOTIFY is transactional, so listeners hear only of committed changes, in
 * commit order.  A payload is a JSON object with "event" and, as they apply,
 * "user_id", "token_id", "old_token_id" and "count"; never a token.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/async.h"
#include "event.h"
#include "lib/stringinfo.h"
#include "store.h"
#include "tokenstore.h"
#include "utils/json.h"

#define EVENT_CHANNEL "tokenstore"

static void
begin_payload(StringInfo buf, const char *event, const char *user_id)
{
	initStringInfo(buf);
	appendStringInfoString(buf, "{\"event\": ");
	escape_json(buf, event);
	if (user_id != NULL)
	{
		appendStringInfoString(buf, ", \"user_id\": ");
		escape_json(buf, user_id);
	}
}

static void
send_payload(StringInfo buf)
{
	appendStringInfoChar(buf, '}');
	Async_Notify(EVENT_CHANNEL, buf->data);
	pfree(buf->data);
}

static void
append_id(StringInfo buf, const char *field, const TokenKey *key)
{
	char	   *id = token_id_text(key);

	appendStringInfo(buf, ", \"%s\": \"%s\"", field, id);
	pfree(id);
}

/* An event about one token (and, for a rotation, the token it replaced). */
void
event_token(const char *event, const char *user_id, const TokenKey *key,
			const TokenKey *old_key)
{
	StringInfoData buf;

	if (!tokenstore_notify)
		return;
	begin_payload(&buf, event, user_id);
	append_id(&buf, "token_id", key);
	if (old_key != NULL)
		append_id(&buf, "old_token_id", old_key);
	send_payload(&buf);
}

/* One event per token in a List of RevokedToken *. */
void
event_revoked(const char *event, List *revoked)
{
	ListCell   *lc;

	foreach(lc, revoked)
	{
		RevokedToken *r = lfirst(lc);

		event_token(event, r->user_id, &r->key, NULL);
	}
}

/* A summary event: how many tokens one call revoked. */
void
event_count(const char *event, const char *user_id, int64 count)
{
	StringInfoData buf;

	if (!tokenstore_notify || count == 0)
		return;
	begin_payload(&buf, event, user_id);
	appendStringInfo(&buf, ", \"count\": " INT64_FORMAT, count);
	send_payload(&buf);
}
