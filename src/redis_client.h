/*
 * redis_client.h: talking to Redis, shared by the publisher
 * (redis_publisher.c) and the resynchronisation (redis_resync.c).
 */
#ifndef TOKENSTORE_REDIS_CLIENT_H
#define TOKENSTORE_REDIS_CLIENT_H

#include <hiredis/hiredis.h>

#include "fanout.h"
#include "lib/stringinfo.h"

#define REDIS_ERRLEN		256
#define REDIS_SERVER_LEN	(MAXPGPATH + 16)

/* Commands sent without waiting, and their replies read in one go. */
typedef struct Pipeline
{
	redisContext *c;
	int			pending;
	int64		sent;
	bool		failed;			/* the connection is unusable */
	int64		errors;			/* commands Redis refused */
	char		err[REDIS_ERRLEN];
} Pipeline;

/* Which of n key names (from SCAN) to delete: drop[i] for keys[i]. */
typedef void (*KeepFunc) (redisReply **keys, int n, bool *drop);

/* A batch of names a cursor walk returned; false to stop the walk. */
typedef bool (*ScanFunc) (Pipeline *p, redisReply **names, int n, void *arg);

extern bool redis_configured(void);
extern redisContext *redis_connect(char *err, char *server, size_t size);
extern bool redis_master_moved(const char *server);
extern redisContext *redis_subscribe_switches(char *err);
extern bool redis_switch_announced(redisContext *sub, const char *server,
								   bool *broken);
extern redisReply *redis_command(redisContext *c, char *err, int argc,
								 const char **argv);
extern bool redis_command_ok(redisContext *c, char *err, int argc,
							 const char **argv);

extern void pipe_send(Pipeline *p, int argc, const char **argv,
					  const size_t *lens);
extern bool pipe_wait(Pipeline *p);

extern void redis_marker_key(StringInfo buf);
extern void redis_pattern(StringInfo buf, const char *db, int dblen,
						  const char *tail);
extern void redis_user_key(StringInfo buf, const char *db, int dblen,
						   const char *user, int userlen);
extern void redis_send_set(Pipeline *p, const char *db, int dblen,
						   const uint8 *hash, const char *user, int userlen,
						   const char *value, int valuelen,
						   TimestampTz deadline);
extern void redis_send_drop(Pipeline *p, const char *db, int dblen,
							const uint8 *hash, const char *user, int userlen);
extern void redis_send_cap(Pipeline *p, const char *db, int dblen,
						   const uint8 *hash, TimestampTz deadline);
extern bool redis_send_drop_db(Pipeline *p, const char *db, int dblen);
extern void redis_send_msg(Pipeline *p, const FanoutMsg *m, TimestampTz now);
extern bool redis_scan(Pipeline *p, const char *set, const char *match,
					   ScanFunc visit, void *arg);
extern bool redis_scan_delete(Pipeline *p, const char *match, KeepFunc keep);

#endif
