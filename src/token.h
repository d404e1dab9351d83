/*
 * token.h: tokens, their SHA-256 keys and their public handles.
 */
#ifndef TOKENSTORE_TOKEN_H
#define TOKENSTORE_TOKEN_H

#include "common/sha2.h"

/* random bytes in a generated token */
#define TOKEN_RANDOM_BYTES		32
/* bounds on a caller-provided token, in bytes */
#define TOKEN_MIN_LEN			16
#define TOKEN_MAX_LEN			1024
/* the longest accepted tokenstore.token_prefix */
#define TOKEN_PREFIX_MAX		16
/* a token_id is the hex of the first TOKEN_ID_BYTES bytes of the key */
#define TOKEN_ID_BYTES			16
#define TOKEN_ID_LEN			(2 * TOKEN_ID_BYTES)

/* SHA-256 of the token's bytes: the only form of a token stored anywhere */
typedef struct TokenKey
{
	uint8		bytes[PG_SHA256_DIGEST_LENGTH];
} TokenKey;

extern char *token_generate(const char *prefix);
extern bool token_is_mistyped(const char *token, int len, const char *prefix);
extern void token_key(const char *token, int len, TokenKey *key);
extern char *hex_text(const uint8 *bytes, int len);
extern bool hex_parse(const char *hex, int n, uint8 *bytes);
extern char *token_id_text(const TokenKey *key);
extern bool token_id_parse(const char *id, int len, uint8 *prefix);
extern void token_seal_key_ensure(void);
extern bytea *token_seal(const bytea *secret, const TokenKey *key,
						 const char *token, int len);
extern char *token_unseal(const bytea *secret, const TokenKey *key,
						  const bytea *sealed);
extern bytea *token_reseal_from(const bytea *old_key, const TokenKey *key,
								const bytea *sealed);

#endif
