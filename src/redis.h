/*
 * redis.h: the Redis mirror's publisher and resynchronisation.
 */
#ifndef TOKENSTORE_REDIS_H
#define TOKENSTORE_REDIS_H

extern void redis_init(void);
extern void redis_register_publisher(void);
extern bool redis_resync_db(void);

#endif
