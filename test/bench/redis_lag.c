/*
 * redis_lag: how long after a commit a token becomes visible in Redis.
 *
 * Used by test/bench/redis.sh, which compiles it at run time:
 *
 *   gcc -O2 -Wall -Wextra -I"$(pg_config --includedir)" redis_lag.c \
 *       -lpq -lhiredis -lcrypto
 *
 * Usage: redis_lag CONNINFO REDIS_HOST REDIS_PORT KEY_PREFIX SECONDS
 *                  MAX_SAMPLES INTERVAL_MS
 *
 * In a loop, for up to SECONDS or MAX_SAMPLES samples: make a token with
 * `SELECT tokenstore.token_make('probe')` (autocommit, so the commit is done
 * when the call returns; t0 is taken right after it returns), compute the
 * hex SHA-256 of the token, then poll `EXISTS KEY_PREFIX<hex>` (sleeping
 * 0.2 ms between polls) until the key exists (t1), and record t1 - t0; then
 * sleep INTERVAL_MS.  A key not seen within 5 s counts as a miss.
 *
 * Prints one line: "samples misses p50_ms p99_ms max_ms" (percentiles by
 * nearest rank over the samples seen; "- - -" when none was seen).
 * Exit status 0 when it ran (even with misses), 1 on errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <openssl/evp.h>

#define LAG_PROGNAME	"redis_lag"
#include "lag.h"

#define MISS_TIMEOUT_NS	(5 * 1000000000LL)
#define POLL_SLEEP_NS	200000L

/* t0 and t1 are both taken here: the monotonic clock will do */
static long long
now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* hex SHA-256 of the bytes of s into hex (65 bytes); 0 on success */
static int
sha256_hex(const char *s, char *hex)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	unsigned int i;

	if (EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL) != 1 || len != 32)
	{
		fprintf(stderr, "redis_lag: EVP_Digest failed\n");
		return -1;
	}
	for (i = 0; i < len; i++)
		if (snprintf(hex + 2 * i, 3, "%02x", md[i]) != 2)
			return -1;
	hex[64] = '\0';
	return 0;
}

/* make a token; malloc'ed copy of it into *token; 0 on success */
static int
make_token(PGconn *pg, char **token)
{
	PGresult   *res;
	int			rc = -1;

	res = PQexec(pg, "SELECT tokenstore.token_make('probe')");
	if (res == NULL)
		fprintf(stderr, "redis_lag: token_make: %s", PQerrorMessage(pg));
	else if (PQresultStatus(res) != PGRES_TUPLES_OK)
		fprintf(stderr, "redis_lag: token_make: %s", PQresultErrorMessage(res));
	else if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0))
		fprintf(stderr, "redis_lag: token_make returned no token\n");
	else if ((*token = strdup(PQgetvalue(res, 0, 0))) == NULL)
		fprintf(stderr, "redis_lag: out of memory\n");
	else
		rc = 0;
	PQclear(res);
	return rc;
}

/* EXISTS key: 1 or 0, -1 on error */
static int
key_exists(redisContext *rc, const char *key)
{
	redisReply *reply;
	int			result = -1;

	reply = redisCommand(rc, "EXISTS %s", key);
	if (reply == NULL)
		fprintf(stderr, "redis_lag: EXISTS: %s\n", rc->errstr);
	else if (reply->type == REDIS_REPLY_INTEGER)
		result = reply->integer > 0;
	else if (reply->type == REDIS_REPLY_ERROR)
		fprintf(stderr, "redis_lag: EXISTS: %s\n", reply->str);
	else
		fprintf(stderr, "redis_lag: EXISTS: unexpected reply type %d\n", reply->type);
	if (reply != NULL)
		freeReplyObject(reply);
	return result;
}

int
main(int argc, char **argv)
{
	long		port,
				seconds,
				max_samples,
				interval_ms;
	PGconn	   *pg = NULL;
	redisContext *rc = NULL;
	long long  *lags = NULL;
	long		n = 0,
				misses = 0;
	char	   *key = NULL;
	size_t		prefix_len;
	long long	deadline;
	int			status = 1;

	if (argc != 8)
	{
		fprintf(stderr, "usage: redis_lag CONNINFO REDIS_HOST REDIS_PORT KEY_PREFIX "
				"SECONDS MAX_SAMPLES INTERVAL_MS\n");
		return 1;
	}
	if (parse_long(argv[3], "REDIS_PORT", 1, 65535, &port) != 0 ||
		parse_run_args(argv + 5, &seconds, &max_samples, &interval_ms) != 0)
		return 1;

	prefix_len = strlen(argv[4]);
	if ((key = malloc(prefix_len + 65)) == NULL ||
		(lags = malloc(sizeof(long long) * (size_t) max_samples)) == NULL)
	{
		fprintf(stderr, "redis_lag: out of memory\n");
		goto done;
	}
	memcpy(key, argv[4], prefix_len);

	if ((pg = connect_to(argv[1], "PostgreSQL")) == NULL)
		goto done;
	rc = redisConnect(argv[2], (int) port);
	if (rc == NULL || rc->err)
	{
		fprintf(stderr, "redis_lag: connect to Redis: %s\n",
				rc ? rc->errstr : "out of memory");
		goto done;
	}

	deadline = now_ns() + seconds * 1000000000LL;
	while (n + misses < max_samples && now_ns() < deadline)
	{
		char	   *token = NULL;
		long long	t0,
					t1;
		int			seen = 0;

		if (make_token(pg, &token) != 0)
			goto done;
		t0 = now_ns();
		if (sha256_hex(token, key + prefix_len) != 0)
		{
			free(token);
			goto done;
		}
		free(token);
		for (;;)
		{
			int			e = key_exists(rc, key);

			t1 = now_ns();
			if (e < 0)
				goto done;
			if (e)
			{
				seen = 1;
				break;
			}
			if (t1 - t0 > MISS_TIMEOUT_NS)
				break;
			if (sleep_ns(POLL_SLEEP_NS) != 0)
			{
				perror("redis_lag: nanosleep");
				goto done;
			}
		}
		if (seen)
			lags[n++] = t1 - t0;
		else
			misses++;
		if (interval_ms > 0 && sleep_ns(interval_ms * 1000000LL) != 0)
		{
			perror("redis_lag: nanosleep");
			goto done;
		}
	}

	if (n == 0)
		printf("0 %ld - - -\n", misses);
	else
	{
		qsort(lags, (size_t) n, sizeof(long long), cmp_ll);
		printf("%ld %ld %.2f %.2f %.2f\n", n, misses,
			   (double) percentile(lags, n, 0.50) / 1e6,
			   (double) percentile(lags, n, 0.99) / 1e6,
			   (double) lags[n - 1] / 1e6);
	}
	if (fflush(stdout) != 0)
	{
		perror("redis_lag: stdout");
		goto done;
	}
	status = 0;

done:
	if (rc != NULL)
		redisFree(rc);
	if (pg != NULL)
		PQfinish(pg);
	free(lags);
	free(key);
	return status;
}
