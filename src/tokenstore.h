/*
 * tokenstore.h: the settings every room reads, defined in tokenstore.c.
 */
#ifndef TOKENSTORE_H
#define TOKENSTORE_H

typedef enum LoginMode
{
	LOGIN_MULTI,
	LOGIN_SINGLE,
	LOGIN_SHARE
} LoginMode;

extern char *tokenstore_token_prefix;
extern int	tokenstore_default_ttl;
extern int	tokenstore_default_idle_timeout;
extern int	tokenstore_login_mode;
extern int	tokenstore_max_tokens_per_user;
extern int	tokenstore_touch_interval;
extern bool tokenstore_notify;
extern int	tokenstore_max_cached_tokens;
extern int	tokenstore_max_cached_data;
extern int	tokenstore_flush_interval;
extern int	tokenstore_sweep_interval;
extern int	tokenstore_last_used_resolution;
extern char *tokenstore_redis_url;
extern char *tokenstore_redis_sentinels;
extern char *tokenstore_redis_master_name;
extern char *tokenstore_redis_prefix;
extern int	tokenstore_redis_timeout;
extern char *tokenstore_redis_tls_ca_file;
extern char *tokenstore_redis_tls_cert_file;
extern char *tokenstore_redis_tls_key_file;
extern int	tokenstore_redis_queue_size;
extern bool tokenstore_debug_pause_resync;
extern bool tokenstore_standby_cache;
extern char *tokenstore_primary_conninfo;
extern bool tokenstore_debug_hold_fill;

extern bool login_mode_parse(const char *name, LoginMode *mode);

#endif
