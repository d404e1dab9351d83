/*
 * redis.h: the Redis mirror, as the rest of tokenstore sees it: the
 * publisher process (redis_publisher.c), a database's resynchronisation
 * (redis_resync.c), and the log hook that keeps passwords out of the log
 * (redis_client.c).
 */
#ifndef TOKENSTORE_REDIS_H
#define TOKENSTORE_REDIS_H

extern void redis_init(void);
extern bool redis_resync_db(void);

#endif
