/*-------------------------------------------------------------------------
 *
 * tokenstore.c
 *	  Loading the module: every tokenstore.* setting is defined here.
 *
 * All settings can be changed per session or per role, since the functions
 * take the same choices as arguments anyway.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "token.h"
#include "tokenstore.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *tokenstore_token_prefix = NULL;
int			tokenstore_default_ttl = 0;
int			tokenstore_default_idle_timeout = 0;
int			tokenstore_login_mode = LOGIN_MULTI;
int			tokenstore_max_tokens_per_user = 0;
int			tokenstore_touch_interval = 1000;
bool		tokenstore_notify = false;

static const struct config_enum_entry login_mode_options[] = {
	{"multi", LOGIN_MULTI, false},
	{"single", LOGIN_SINGLE, false},
	{"share", LOGIN_SHARE, false},
	{NULL, 0, false}
};

/* The mode called name (exact, lower case), as the functions accept it. */
bool
login_mode_parse(const char *name, LoginMode *mode)
{
	const struct config_enum_entry *entry;

	for (entry = login_mode_options; entry->name != NULL; entry++)
	{
		if (strcmp(entry->name, name) == 0)
		{
			*mode = (LoginMode) entry->val;
			return true;
		}
	}
	return false;
}

/* A prefix must survive URLs and headers untouched: [A-Za-z0-9_-]{0,16}. */
static bool
check_token_prefix(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (strlen(*newval) > TOKEN_PREFIX_MAX)
	{
		GUC_check_errdetail("The prefix may have at most %d characters.",
							TOKEN_PREFIX_MAX);
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
		{
			GUC_check_errdetail("The prefix may contain only letters, digits, \"_\" and \"-\".");
			return false;
		}
	}
	return true;
}

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	DefineCustomStringVariable("tokenstore.token_prefix",
							   "Prefix of generated tokens, so secret scanners can spot them.",
							   NULL,
							   &tokenstore_token_prefix,
							   "tks_",
							   PGC_USERSET, 0,
							   check_token_prefix, NULL, NULL);
	DefineCustomIntVariable("tokenstore.default_ttl",
							"Absolute lifetime of a token made without a ttl (0: none).",
							NULL,
							&tokenstore_default_ttl,
							0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.default_idle_timeout",
							"Idle timeout of a token made without one (0: none).",
							NULL,
							&tokenstore_default_idle_timeout,
							0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("tokenstore.login_mode",
							 "Login mode of token_make calls that give none: multi, single or share.",
							 NULL,
							 &tokenstore_login_mode,
							 LOGIN_MULTI, login_mode_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.max_tokens_per_user",
							"Most live tokens a user keeps in multi mode; the least recently used go first (0: no limit).",
							NULL,
							&tokenstore_max_tokens_per_user,
							0, 0, INT_MAX,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("tokenstore.touch_interval",
							"How stale last_used_at may get before a check writes it to the table.",
							NULL,
							&tokenstore_touch_interval,
							1000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("tokenstore.notify",
							 "Send a NOTIFY on channel tokenstore for every token event.",
							 NULL,
							 &tokenstore_notify,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("tokenstore");
}
