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
 * XORed with a keystream of HMAC-SHA256(sealing key, token's key || block
 * number).  The token's key is unique per token, so no two tokens share a
 * keystream.  The sealing key is not in the database, so that a dump
 * reveals no usable token: it is $PGDATA/tokenstore.key, 32 random bytes
 * made when a server that preloads tokenstore starts out of recovery (or by
 * the first process that needs them, without the preload), so that base
 * backups, standbys and rewinds carry it along with the data directory
 * before the first share-mode login (see the README for dumps and
 * pg_upgrade).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "access/xlog.h"
#include "common/file_perm.h"
#include "common/hmac.h"
#include "compat.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "token.h"
#include "utils/builtins.h"

#define SEAL_KEY_FILE		"tokenstore.key"
#define SEAL_KEY_HEADER		"tokenstore sealing key 1\n"
#define SEAL_KEY_BYTES		32
#define SEAL_KEY_FILE_LEN	(sizeof(SEAL_KEY_HEADER) - 1 + 2 * SEAL_KEY_BYTES + 1)

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

/* Lower-case hex of len bytes, NUL-terminated, palloc'd. */
char *
hex_text(const uint8 *bytes, int len)
{
	char	   *hex = palloc(2 * len + 1);

	hex_encode((const char *) bytes, len, hex);
	hex[2 * len] = '\0';
	return hex;
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

/* Parse 2 * n hex digits into n bytes; false (never an error) if not hex. */
bool
hex_parse(const char *hex, int n, uint8 *bytes)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		int			hi = hex_value(hex[2 * i]);
		int			lo = hex_value(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		bytes[i] = (hi << 4) | lo;
	}
	return true;
}

/* The token_id of a key: lower-case hex, palloc'd. */
char *
token_id_text(const TokenKey *key)
{
	return hex_text(key->bytes, TOKEN_ID_BYTES);
}

/*
 * Parse a token_id into the first TOKEN_ID_BYTES bytes of a key; false if it
 * is not one.
 */
bool
token_id_parse(const char *id, int len, uint8 *prefix)
{
	return len == TOKEN_ID_LEN && hex_parse(id, TOKEN_ID_BYTES, prefix);
}

/* ---- the sealing key ---- */

static uint8 sealing_key[SEAL_KEY_BYTES];
static bool sealing_key_loaded = false;

static void
key_file_error(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("tokenstore cannot use its sealing key \"%s\": %s",
					SEAL_KEY_FILE, what),
			 errhint("Restore the file from the backup kept with this server's dumps, or remove it to have a new key made (share-mode users then get new tokens).")));
}

/* Read the key file into sealing_key; false if there is none. */
static bool
read_key_file(void)
{
	char		buf[SEAL_KEY_FILE_LEN + 1];
	FILE	   *file = AllocateFile(SEAL_KEY_FILE, PG_BINARY_R);
	size_t		n;
	bool		valid;

	if (file == NULL)
	{
		if (errno == ENOENT)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read \"%s\": %m", SEAL_KEY_FILE)));
	}
	n = fread(buf, 1, sizeof(buf), file);
	(void) FreeFile(file);
	valid = n == SEAL_KEY_FILE_LEN &&
		memcmp(buf, SEAL_KEY_HEADER, sizeof(SEAL_KEY_HEADER) - 1) == 0 &&
		hex_parse(buf + sizeof(SEAL_KEY_HEADER) - 1, SEAL_KEY_BYTES, sealing_key) &&
		buf[SEAL_KEY_FILE_LEN - 1] == '\n';
	explicit_bzero(buf, sizeof(buf));
	if (!valid)
		key_file_error("it is not a tokenstore key file of this version");
	return true;
}

/*
 * Make a new key file, unless another process makes one first: written
 * under a name of our own, then linked into place (never overwriting).
 */
static void
create_key_file(void)
{
	uint8		key[SEAL_KEY_BYTES];
	char		text[SEAL_KEY_FILE_LEN + 1];
	char		temp[MAXPGPATH];
	int			fd;
	bool		written;

	if (!pg_strong_random(key, sizeof(key)))
		key_file_error("no random bytes to make one");
	strcpy(text, SEAL_KEY_HEADER);
	hex_encode((const char *) key, sizeof(key), text + sizeof(SEAL_KEY_HEADER) - 1);
	text[SEAL_KEY_FILE_LEN - 1] = '\n';
	text[SEAL_KEY_FILE_LEN] = '\0';
	explicit_bzero(key, sizeof(key));
	snprintf(temp, sizeof(temp), "%s.%d.tmp", SEAL_KEY_FILE, MyProcPid);
	fd = OpenTransientFilePerm(temp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY,
							   PG_FILE_MODE_OWNER);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create \"%s\": %m", temp)));
	written = write(fd, text, SEAL_KEY_FILE_LEN) == SEAL_KEY_FILE_LEN &&
		pg_fsync(fd) == 0;
	explicit_bzero(text, sizeof(text));
	if (CloseTransientFile(fd) != 0 || !written ||
		(link(temp, SEAL_KEY_FILE) != 0 && errno != EEXIST))
	{
		int			save_errno = errno;

		(void) unlink(temp);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write \"%s\": %m", SEAL_KEY_FILE)));
	}
	(void) unlink(temp);
	fsync_fname(SEAL_KEY_FILE, false);
	fsync_fname(".", true);
}

/*
 * The sealing key, made on first use.  A standby never makes one: it has
 * its primary's, from the base backup (and seals nothing: it writes no
 * tokens).
 */
static const uint8 *
seal_key(void)
{
	if (sealing_key_loaded)
		return sealing_key;
	if (!read_key_file())
	{
		if (RecoveryInProgress())
			key_file_error("it is missing, and a server in recovery does not make one");
		create_key_file();
		if (!read_key_file())
			key_file_error("it vanished after it was made");
	}
	sealing_key_loaded = true;
	return sealing_key;
}

/*
 * Make the sealing key now if there is none, so that a base backup or a
 * standby taken before the first share-mode login has the key its tokens
 * will be sealed with.  Called by the launcher, which starts only once
 * recovery is over: a standby never makes a key of its own.
 */
void
token_seal_key_ensure(void)
{
	(void) seal_key();
}

/* ---- sealing ---- */

/* XOR len bytes of src with the keystream of (secret, key) into dst. */
static void
keystream_xor(const uint8 *secret, int secret_len, const TokenKey *key,
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

		if (pg_hmac_init(ctx, secret, secret_len) < 0 ||
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

static bytea *
seal_with(const uint8 *secret, int secret_len, const TokenKey *key,
		  const char *token, int len)
{
	bytea	   *sealed = palloc(VARHDRSZ + len);

	SET_VARSIZE(sealed, VARHDRSZ + len);
	keystream_xor(secret, secret_len, key, (const uint8 *) token, len,
				  (uint8 *) VARDATA(sealed));
	return sealed;
}

static char *
unseal_with(const uint8 *secret, int secret_len, const TokenKey *key,
			const bytea *sealed)
{
	int			len = VARSIZE_ANY_EXHDR(sealed);
	char	   *token = palloc(len + 1);
	TokenKey	check;

	keystream_xor(secret, secret_len, key,
				  (const uint8 *) VARDATA_ANY(sealed), len, (uint8 *) token);
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

/*
 * The sealed form of a share-mode token, for the share_secret column: with
 * the key file's key, or with secret when given (the SQL objects of 1.0).
 */
bytea *
token_seal(const bytea *secret, const TokenKey *key, const char *token, int len)
{
	if (secret != NULL)
		return seal_with((const uint8 *) VARDATA_ANY(secret),
						 VARSIZE_ANY_EXHDR(secret), key, token, len);
	return seal_with(seal_key(), SEAL_KEY_BYTES, key, token, len);
}

/*
 * The token sealed in share_secret (with secret, or the key file's key),
 * NUL-terminated; NULL if it does not hash to the key: sealed under another
 * server's key, or edited by hand.
 */
char *
token_unseal(const bytea *secret, const TokenKey *key, const bytea *sealed)
{
	if (secret != NULL)
		return unseal_with((const uint8 *) VARDATA_ANY(secret),
						   VARSIZE_ANY_EXHDR(secret), key, sealed);
	return unseal_with(seal_key(), SEAL_KEY_BYTES, key, sealed);
}

/*
 * A token sealed under an older key (1.0 kept it in a table), sealed anew
 * under the key file's; NULL if the old key does not open it.
 */
bytea *
token_reseal_from(const bytea *old_key, const TokenKey *key, const bytea *sealed)
{
	int			len = VARSIZE_ANY_EXHDR(sealed);
	char	   *token = token_unseal(old_key, key, sealed);
	bytea	   *resealed;

	if (token == NULL)
		return NULL;
	resealed = token_seal(NULL, key, token, len);
	explicit_bzero(token, len);
	pfree(token);
	return resealed;
}
