/*-------------------------------------------------------------------------
 *
 * token.c
 *	  Tokens: making them, recognising mistyped ones, and turning them into
 *	  the keys everything else sees.
 *
 * A generated token is <prefix><body><checksum>: the body is 32 bytes from
 * pg_strong_random in URL-safe base64 (43 characters), and the checksum is
 * the CRC-32C of prefix and body, in the same alphabet (6 characters).  The
 * fixed prefix lets secret scanners spot a leaked token; the checksum lets a
 * mistyped one be turned away without a lookup.
 *
 * A token is known to the rest of tokenstore only by its key, the SHA-256 of
 * its bytes exactly as given (no case folding: "ABC" and "abc" are two
 * tokens).  Its public handle, the token_id, is the hex of the first 16 bytes
 * of the key: enough to tell a user's tokens apart, useless for logging in.
 * Hashing is on every check, so it uses OpenSSL (which PostgreSQL itself
 * links) with one digest context per backend and the algorithm fetched once:
 * a fresh context per call costs more than the whole cache lookup.
 *
 * Share-mode tokens must be handed out again, so they alone are kept, sealed:
 * XORed with a keystream of HMAC-SHA256(secret, key || block number).  The
 * key is unique per token, so no two tokens share a keystream.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "common/hmac.h"
#include "port/pg_crc32c.h"
#include "storage/ipc.h"
#include "token.h"

#define B64_BODY_LEN		43	/* 32 bytes in unpadded base64 */
#define B64_CHECKSUM_LEN	6	/* 4 bytes in unpadded base64 */

static const char b64url[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Unpadded URL-safe base64 of len bytes into dst; returns chars written. */
static int
b64url_encode(const uint8 *src, int len, char *dst)
{
	char	   *p = dst;
	int			i;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32		v = (src[i] << 16) | (src[i + 1] << 8) | src[i + 2];

		*p++ = b64url[(v >> 18) & 0x3F];
		*p++ = b64url[(v >> 12) & 0x3F];
		*p++ = b64url[(v >> 6) & 0x3F];
		*p++ = b64url[v & 0x3F];
	}
	if (i < len)
	{
		uint32		v = src[i] << 16;

		if (i + 1 < len)
			v |= src[i + 1] << 8;
		*p++ = b64url[(v >> 18) & 0x3F];
		*p++ = b64url[(v >> 12) & 0x3F];
		if (i + 1 < len)
			*p++ = b64url[(v >> 6) & 0x3F];
	}
	return p - dst;
}

/* The checksum characters of prefix-and-body, written to dst. */
static void
token_checksum(const char *text, int len, char *dst)
{
	pg_crc32c	crc;
	uint8		be[4];

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, text, len);
	FIN_CRC32C(crc);
	be[0] = crc >> 24;
	be[1] = crc >> 16;
	be[2] = crc >> 8;
	be[3] = crc;
	b64url_encode(be, sizeof(be), dst);
}

/* A new token with the given prefix, palloc'd and NUL-terminated. */
char *
token_generate(const char *prefix)
{
	int			plen = strlen(prefix);
	uint8		random[TOKEN_RANDOM_BYTES];
	char	   *token;

	if (!pg_strong_random(random, sizeof(random)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for a token")));

	token = palloc(plen + B64_BODY_LEN + B64_CHECKSUM_LEN + 1);
	memcpy(token, prefix, plen);
	b64url_encode(random, sizeof(random), token + plen);
	token_checksum(token, plen + B64_BODY_LEN, token + plen + B64_BODY_LEN);
	token[plen + B64_BODY_LEN + B64_CHECKSUM_LEN] = '\0';
	explicit_bzero(random, sizeof(random));
	return token;
}

/*
 * True if the token has the shape of one made with this prefix but its
 * checksum does not match: a typo, or a forgery, that no lookup can find.
 * Tokens of any other shape (caller-provided, or made under an older prefix)
 * are not judged here.
 */
bool
token_is_mistyped(const char *token, int len, const char *prefix)
{
	int			plen = strlen(prefix);
	char		expected[B64_CHECKSUM_LEN + 1];

	if (len != plen + B64_BODY_LEN + B64_CHECKSUM_LEN ||
		memcmp(token, prefix, plen) != 0)
		return false;
	token_checksum(token, plen + B64_BODY_LEN, expected);
	return memcmp(expected, token + plen + B64_BODY_LEN, B64_CHECKSUM_LEN) != 0;
}

static EVP_MD *sha256_md = NULL;
static EVP_MD_CTX *sha256_ctx = NULL;

static void
sha256_release(int code, Datum arg)
{
	EVP_MD_CTX_free(sha256_ctx);
	EVP_MD_free(sha256_md);
	sha256_ctx = NULL;
	sha256_md = NULL;
}

static void
sha256_error(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("could not compute SHA-256 of a token: %s failed", what)));
}

/* key := SHA-256 of the token's bytes. */
void
token_key(const char *token, int len, TokenKey *key)
{
	unsigned int digest_len;

	if (sha256_ctx == NULL)
	{
		sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
		if (sha256_md == NULL)
			sha256_error("EVP_MD_fetch");
		sha256_ctx = EVP_MD_CTX_new();
		if (sha256_ctx == NULL)
		{
			EVP_MD_free(sha256_md);
			sha256_md = NULL;
			sha256_error("EVP_MD_CTX_new");
		}
		on_proc_exit(sha256_release, (Datum) 0);
	}
	if (EVP_DigestInit_ex2(sha256_ctx, sha256_md, NULL) != 1)
		sha256_error("EVP_DigestInit_ex2");
	if (EVP_DigestUpdate(sha256_ctx, token, len) != 1)
		sha256_error("EVP_DigestUpdate");
	if (EVP_DigestFinal_ex(sha256_ctx, key->bytes, &digest_len) != 1 ||
		digest_len != sizeof(key->bytes))
		sha256_error("EVP_DigestFinal_ex");
}

/* The token_id of a key: lower-case hex, palloc'd. */
char *
token_id_text(const TokenKey *key)
{
	static const char hex[] = "0123456789abcdef";
	char	   *id = palloc(TOKEN_ID_LEN + 1);
	int			i;

	for (i = 0; i < TOKEN_ID_BYTES; i++)
	{
		id[2 * i] = hex[key->bytes[i] >> 4];
		id[2 * i + 1] = hex[key->bytes[i] & 0xF];
	}
	id[TOKEN_ID_LEN] = '\0';
	return id;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Parse a token_id into the first TOKEN_ID_BYTES bytes of a key; false if it
 * is not one.
 */
bool
token_id_parse(const char *id, int len, uint8 *prefix)
{
	int			i;

	if (len != TOKEN_ID_LEN)
		return false;
	for (i = 0; i < TOKEN_ID_BYTES; i++)
	{
		int			hi = hex_value(id[2 * i]);
		int			lo = hex_value(id[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		prefix[i] = (hi << 4) | lo;
	}
	return true;
}

/* XOR len bytes of src with the keystream of (secret, key) into dst. */
static void
keystream_xor(const bytea *secret, const TokenKey *key,
			  const uint8 *src, int len, uint8 *dst)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint32		block;
	int			done = 0;

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	for (block = 0; done < len; block++)
	{
		uint8		counter[4] = {block >> 24, block >> 16, block >> 8, block};
		uint8		stream[PG_SHA256_DIGEST_LENGTH];
		int			i;

		if (pg_hmac_init(ctx, (const uint8 *) VARDATA_ANY(secret),
						 VARSIZE_ANY_EXHDR(secret)) < 0 ||
			pg_hmac_update(ctx, key->bytes, sizeof(key->bytes)) < 0 ||
			pg_hmac_update(ctx, counter, sizeof(counter)) < 0 ||
			pg_hmac_final(ctx, stream, sizeof(stream)) < 0)
		{
			const char *reason = pg_hmac_error(ctx);

			pg_hmac_free(ctx);
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not compute HMAC-SHA256: %s", reason)));
		}
		for (i = 0; i < PG_SHA256_DIGEST_LENGTH && done < len; i++, done++)
			dst[done] = src[done] ^ stream[i];
		explicit_bzero(stream, sizeof(stream));
	}
	pg_hmac_free(ctx);
}

/* The sealed form of a share-mode token, for the share_secret column. */
bytea *
token_seal(const bytea *secret, const TokenKey *key, const char *token, int len)
{
	bytea	   *sealed = palloc(VARHDRSZ + len);

	SET_VARSIZE(sealed, VARHDRSZ + len);
	keystream_xor(secret, key, (const uint8 *) token, len,
				  (uint8 *) VARDATA(sealed));
	return sealed;
}

/*
 * The token sealed in share_secret, NUL-terminated; NULL if it does not hash
 * to the key (the secret was replaced, or the row was edited by hand).
 */
char *
token_unseal(const bytea *secret, const TokenKey *key, const bytea *sealed)
{
	int			len = VARSIZE_ANY_EXHDR(sealed);
	char	   *token = palloc(len + 1);
	TokenKey	check;

	keystream_xor(secret, key, (const uint8 *) VARDATA_ANY(sealed), len,
				  (uint8 *) token);
	token[len] = '\0';
	token_key(token, len, &check);
	if (memcmp(check.bytes, key->bytes, sizeof(check.bytes)) != 0)
	{
		explicit_bzero(token, len);
		pfree(token);
		return NULL;
	}
	return token;
}
