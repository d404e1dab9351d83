/*
 * standby_lag: how long after a revocation's commit on a primary its hot
 * standby refuses the token.
 *
 * Used by test/bench/standby.sh, which compiles it at run time:
 *
 *   gcc -O2 -Wall -Wextra -I"$(pg_config --includedir)" standby_lag.c \
 *       -lpq -lpthread
 *
 * Usage: standby_lag PRIMARY_CONNINFO STANDBY_CONNINFO SECONDS MAX_SAMPLES
 *                    INTERVAL_MS
 *
 * In a loop, for up to SECONDS or MAX_SAMPLES samples:
 *   - the primary makes a token, `SELECT tokenstore.token_make('probe')`
 *     (autocommit);
 *   - a poller thread, on its own connection to the standby, checks it with
 *     `tokenstore.token_user($1)` (prepared) until the standby answers the
 *     user (the insert is replayed; that check fills the standby's cache),
 *     and twice more (cache hits), then checks it in a tight loop;
 *   - meanwhile the primary revokes it: `BEGIN`, `token_delete($1)`, then
 *     `COMMIT; SELECT clock_timestamp()` in one query string, so that the
 *     server's clock is read right after the commit (its WAL flushed) in the
 *     same backend: t0;
 *   - the poller takes the client's clock (CLOCK_REALTIME, the clock
 *     clock_timestamp() reads: same machine) when the first NULL arrives:
 *     t1, and the sample is t1 - t0.  A token still answered 5 s after its
 *     revocation's commit counts as a miss.
 *   Then it sleeps INTERVAL_MS.
 * A third thread, on another connection to the primary, samples
 * pg_stat_replication.replay_lag every 20 ms for as long.
 *
 * Prints one line: "samples misses p50_us p99_us max_us replay_samples
 * replay_nulls replay_p50_us replay_max_us" (percentiles by nearest rank;
 * "-" for what has no sample).  Exit status 0 when it ran (even with
 * misses), 1 on errors (a token the standby did not answer within 5 s of
 * its creation is one: replay or the standby's cache is broken).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#define LAG_PROGNAME	"standby_lag"
#include "lag.h"

#define TIMEOUT_US		(5 * 1000000LL)
#define SAMPLER_NS		(20 * 1000000L)
#define MAX_REPLAY		100000

enum state
{
	IDLE,						/* nothing to do */
	ARMED,						/* a new token in token: wait until answered */
	READY,						/* answered and cached: polling for NULL */
	DONE,						/* refused (or missed, or failed) */
	QUIT
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static enum state state = IDLE;
static char *token;				/* the sample's token, set by main */
static long long refused_at;	/* t1, us since the epoch */
static int	outcome;			/* 1 refused, 0 missed, -1 error */
static long long revoked_at;	/* t0, set by main; 0 until known */

static int	sampler_stop;		/* __atomic */
static long long replay[MAX_REPLAY];
static long	n_replay,
			n_replay_null;

/*
 * CLOCK_REALTIME: t1 is compared with t0, the server's clock_timestamp(),
 * which reads this clock (same machine)
 */
static long long
now_us(void)
{
	return clock_ns(CLOCK_REALTIME) / 1000;
}

/* the standby's answer for tok: 1 a user, 0 NULL, -1 error */
static int
check(PGconn *sb, const char *tok)
{
	PGresult   *res = PQexecPrepared(sb, "check", 1, &tok, NULL, NULL, 0);
	int			r = -1;

	if (res == NULL)
		fprintf(stderr, "standby_lag: check on the standby: %s", PQerrorMessage(sb));
	else if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		fprintf(stderr, "standby_lag: check on the standby: %s", PQresultErrorMessage(res));
	else
		r = !PQgetisnull(res, 0, 0);
	PQclear(res);
	return r;
}

static void
set_state(enum state s)
{
	pthread_mutex_lock(&mu);
	state = s;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void
finish(int result, long long t1)
{
	pthread_mutex_lock(&mu);
	outcome = result;
	refused_at = t1;
	state = DONE;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void *
poller(void *arg)
{
	PGconn	   *sb = arg;

	for (;;)
	{
		const char *tok;
		long long	start;
		int			r = 0,
					i;

		pthread_mutex_lock(&mu);
		while (state != ARMED && state != QUIT)
			pthread_cond_wait(&cv, &mu);
		if (state == QUIT)
		{
			pthread_mutex_unlock(&mu);
			return NULL;
		}
		tok = token;
		pthread_mutex_unlock(&mu);

		/* until the standby has replayed the token's insert */
		start = now_us();
		while ((r = check(sb, tok)) == 0 && now_us() - start < TIMEOUT_US)
			sleep_ns(100000);
		if (r <= 0)
		{
			if (r == 0)
				fprintf(stderr, "standby_lag: the standby did not answer a new token within 5 s\n");
			finish(-1, 0);
			continue;
		}
		/* cached now: two hits */
		for (i = 0; i < 2; i++)
			if (check(sb, tok) != 1)
			{
				fprintf(stderr, "standby_lag: the standby stopped answering a live token\n");
				finish(-1, 0);
				break;
			}
		if (i < 2)
			continue;
		set_state(READY);

		/* the tight loop: until the first NULL */
		for (;;)
		{
			long long	t0,
						t1;

			r = check(sb, tok);
			t1 = now_us();
			if (r < 0)
			{
				finish(-1, 0);
				break;
			}
			if (r == 0)
			{
				finish(1, t1);
				break;
			}
			pthread_mutex_lock(&mu);
			t0 = revoked_at;
			pthread_mutex_unlock(&mu);
			if (t0 != 0 && t1 - t0 > TIMEOUT_US)
			{
				finish(0, 0);
				break;
			}
		}
	}
}

static void *
sampler(void *arg)
{
	PGconn	   *pg = arg;

	while (!__atomic_load_n(&sampler_stop, __ATOMIC_RELAXED))
	{
		PGresult   *res = PQexec(pg, "SELECT (extract(epoch FROM replay_lag) * 1000000)::bigint"
								 " FROM pg_stat_replication");

		if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "standby_lag: pg_stat_replication: %s", PQerrorMessage(pg));
			PQclear(res);
			return NULL;
		}
		if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0))
			n_replay_null++;
		else if (n_replay < MAX_REPLAY)
			replay[n_replay++] = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
		sleep_ns(SAMPLER_NS);
	}
	return NULL;
}

/* make a token on the primary: a malloc'ed copy, or NULL */
static char *
make_token(PGconn *pg)
{
	PGresult   *res = PQexec(pg, "SELECT tokenstore.token_make('probe')");
	char	   *tok = NULL;

	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK ||
		PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		fprintf(stderr, "standby_lag: token_make: %s", PQerrorMessage(pg));
	else if ((tok = strdup(PQgetvalue(res, 0, 0))) == NULL)
		fprintf(stderr, "standby_lag: out of memory\n");
	PQclear(res);
	return tok;
}

/* revoke tok on the primary; the server's clock right after the commit, in
 * us since the epoch, or 0 on error */
static long long
revoke(PGconn *pg, const char *tok)
{
	PGresult   *res;
	long long	t0 = 0;

	res = PQexec(pg, "BEGIN");
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "standby_lag: BEGIN: %s", PQerrorMessage(pg));
		PQclear(res);
		return 0;
	}
	PQclear(res);
	res = PQexecParams(pg, "SELECT tokenstore.token_delete($1)", 1, NULL, &tok, NULL, NULL, 0);
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
		strcmp(PQgetvalue(res, 0, 0), "t") != 0)
	{
		fprintf(stderr, "standby_lag: token_delete did not revoke the token: %s",
				PQerrorMessage(pg));
		PQclear(res);
		return 0;
	}
	PQclear(res);
	/* the commit, then the clock in the same query string: a transaction
	 * statement in a multi-statement string commits at once */
	res = PQexec(pg, "COMMIT; SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint");
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		fprintf(stderr, "standby_lag: COMMIT: %s", PQerrorMessage(pg));
	else
		t0 = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return t0;
}

int
main(int argc, char **argv)
{
	long		seconds,
				max_samples,
				interval_ms;
	PGconn	   *pg = NULL,
			   *sb = NULL,
			   *pg_stat = NULL;
	PGresult   *res;
	pthread_t	poll_thread,
				sample_thread;
	int			polling = 0,
				sampling = 0;
	long long  *lags = NULL;
	long		n = 0,
				misses = 0;
	long long	deadline;
	int			status = 1;

	if (argc != 6)
	{
		fprintf(stderr, "usage: standby_lag PRIMARY_CONNINFO STANDBY_CONNINFO SECONDS "
				"MAX_SAMPLES INTERVAL_MS\n");
		return 1;
	}
	if (parse_run_args(argv + 3, &seconds, &max_samples, &interval_ms) != 0)
		return 1;
	if ((lags = malloc(sizeof(long long) * (size_t) max_samples)) == NULL)
	{
		fprintf(stderr, "standby_lag: out of memory\n");
		return 1;
	}
	if ((pg = connect_to(argv[1], "the primary")) == NULL ||
		(pg_stat = connect_to(argv[1], "the primary")) == NULL ||
		(sb = connect_to(argv[2], "the standby")) == NULL)
		goto done;
	res = PQprepare(sb, "check", "SELECT tokenstore.token_user($1)", 1, NULL);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "standby_lag: prepare on the standby: %s", PQerrorMessage(sb));
		PQclear(res);
		goto done;
	}
	PQclear(res);

	if (pthread_create(&poll_thread, NULL, poller, sb) != 0)
	{
		fprintf(stderr, "standby_lag: pthread_create failed\n");
		goto done;
	}
	polling = 1;
	if (pthread_create(&sample_thread, NULL, sampler, pg_stat) != 0)
	{
		fprintf(stderr, "standby_lag: pthread_create failed\n");
		goto done;
	}
	sampling = 1;

	deadline = now_us() + seconds * 1000000LL;
	while (n + misses < max_samples && now_us() < deadline)
	{
		char	   *tok = make_token(pg);
		long long	t0;
		int			result,
					ready;

		if (tok == NULL)
			goto done;
		pthread_mutex_lock(&mu);
		token = tok;
		revoked_at = 0;
		state = ARMED;
		pthread_cond_broadcast(&cv);
		while (state == ARMED)
			pthread_cond_wait(&cv, &mu);
		ready = state == READY;
		pthread_mutex_unlock(&mu);
		t0 = ready ? revoke(pg, tok) : 0;
		if (ready)
		{
			/* a failed revocation (t0 0): stop the poller, then give up */
			pthread_mutex_lock(&mu);
			revoked_at = t0 != 0 ? t0 : 1;
			pthread_mutex_unlock(&mu);
		}
		pthread_mutex_lock(&mu);
		while (state != DONE)
			pthread_cond_wait(&cv, &mu);
		result = outcome;
		state = IDLE;
		pthread_mutex_unlock(&mu);
		pthread_mutex_lock(&mu);
		token = NULL;
		pthread_mutex_unlock(&mu);
		free(tok);
		if (result < 0 || t0 == 0)
			goto done;
		if (result == 1)
			lags[n++] = refused_at - t0;
		else
			misses++;
		if (interval_ms > 0)
			sleep_ns(interval_ms * 1000000L);
	}

	if (n == 0)
		printf("0 %ld - - -", misses);
	else
	{
		qsort(lags, (size_t) n, sizeof(long long), cmp_ll);
		printf("%ld %ld %lld %lld %lld", n, misses, percentile(lags, n, 0.50),
			   percentile(lags, n, 0.99), lags[n - 1]);
	}
	__atomic_store_n(&sampler_stop, 1, __ATOMIC_RELAXED);
	pthread_join(sample_thread, NULL);
	sampling = 0;
	if (n_replay == 0)
		printf(" 0 %ld - -\n", n_replay_null);
	else
	{
		qsort(replay, (size_t) n_replay, sizeof(long long), cmp_ll);
		printf(" %ld %ld %lld %lld\n", n_replay, n_replay_null,
			   percentile(replay, n_replay, 0.50), replay[n_replay - 1]);
	}
	if (fflush(stdout) != 0)
	{
		perror("standby_lag: stdout");
		goto done;
	}
	status = 0;

done:
	if (sampling)
	{
		__atomic_store_n(&sampler_stop, 1, __ATOMIC_RELAXED);
		pthread_join(sample_thread, NULL);
	}
	if (polling)
	{
		set_state(QUIT);
		pthread_join(poll_thread, NULL);
	}
	PQfinish(pg);
	PQfinish(pg_stat);
	PQfinish(sb);
	free(lags);
	return status;
}
