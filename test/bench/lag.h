/*
 * lag.h: helpers shared by the lag probes redis_lag.c and standby_lag.c.
 *
 * Each probe is compiled on its own, from one source file, by the script
 * that runs it (test/bench/redis.sh, test/bench/standby.sh), so what they
 * share is a header of static inline functions, found next to them, rather
 * than a library to build and link.
 *
 * Define LAG_PROGNAME, the program's name as a string literal, before
 * including this: the messages start with it, as the probes' own do.
 */
#ifndef LAG_H
#define LAG_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <libpq-fe.h>

#ifndef LAG_PROGNAME
#error "define LAG_PROGNAME before including lag.h"
#endif

/*
 * The clock which, in ns.  The caller picks it: a lag measured on this
 * machine alone wants CLOCK_MONOTONIC, one against a server's clock
 * CLOCK_REALTIME.  A clock that cannot be read ends the program.
 */
static inline long long
clock_ns(clockid_t which)
{
	struct timespec ts;

	if (clock_gettime(which, &ts) != 0)
	{
		perror(LAG_PROGNAME ": clock_gettime");
		exit(1);
	}
	return (long long) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * Sleep ns nanoseconds, going on after a signal.  0, or -1 with errno set:
 * nothing is reported here, since some callers give up on a failure and
 * others carry on.
 */
static inline int
sleep_ns(long long ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t) (ns / 1000000000LL);
	ts.tv_nsec = (long) (ns % 1000000000LL);
	while (nanosleep(&ts, &ts) != 0)
	{
		if (errno != EINTR)
			return -1;
	}
	return 0;
}

/* the argument s, what, as a long in min..max into *out; 0 on success */
static inline int
parse_long(const char *s, const char *what, long min, long max, long *out)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
	{
		fprintf(stderr, LAG_PROGNAME ": bad %s: \"%s\" (expected %ld..%ld)\n",
				what, s, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

/*
 * The arguments both probes end with, SECONDS MAX_SAMPLES INTERVAL_MS, from
 * args[0..2]: for how long to sample, and how often.  0 on success.
 */
static inline int
parse_run_args(char **args, long *seconds, long *max_samples,
			   long *interval_ms)
{
	if (parse_long(args[0], "SECONDS", 1, 86400, seconds) != 0 ||
		parse_long(args[1], "MAX_SAMPLES", 1, 10000000, max_samples) != 0 ||
		parse_long(args[2], "INTERVAL_MS", 0, 60000, interval_ms) != 0)
		return -1;
	return 0;
}

/*
 * A connection to the server what (as the message names it: "PostgreSQL",
 * "the primary"), or NULL once the failure is reported.
 */
static inline PGconn *
connect_to(const char *conninfo, const char *what)
{
	PGconn	   *conn = PQconnectdb(conninfo);

	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, LAG_PROGNAME ": connect to %s: %s", what,
				conn ? PQerrorMessage(conn) : "out of memory\n");
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* qsort comparator for long long */
static inline int
cmp_ll(const void *a, const void *b)
{
	long long	x = *(const long long *) a;
	long long	y = *(const long long *) b;

	return (x > y) - (x < y);
}

/* nearest-rank percentile p (0..1) of sorted v[0..n-1], n > 0 */
static inline long long
percentile(const long long *v, long n, double p)
{
	long		rank = (long) (p * (double) n + 0.999999);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

#endif							/* LAG_H */
