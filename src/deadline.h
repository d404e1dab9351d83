/*-------------------------------------------------------------------------
 *
 * deadline.h
 *	  A token's deadline, computed in one place, with one spelling of "no
 *	  deadline" (DEADLINE_NONE) and arithmetic that cannot overflow.
 *
 * A token is dead once the earlier of its absolute deadline (expires_at)
 * and its idle deadline (last use + idle timeout) has passed.  The table's
 * CHECK constraints keep every stored time finite and before the year 10000
 * (TIME_LIMIT) and every idle timeout at most IDLE_LIMIT, and the functions
 * refuse arguments beyond them; the helpers here saturate anyway, so that a
 * row edited past the bounds under an older schema cannot wrap around.
 *
 *-------------------------------------------------------------------------
 */
#ifndef TOKENSTORE_DEADLINE_H
#define TOKENSTORE_DEADLINE_H

#include "common/int.h"
#include "datatype/timestamp.h"

/* no deadline: later than every time */
#define DEADLINE_NONE		DT_NOEND

/* 10000-01-01 00:00:00 UTC: every stored time is earlier */
#define TIME_LIMIT			INT64CONST(252455616000000000)
/* 72,000,000 hours: the longest idle timeout */
#define IDLE_LIMIT			(INT64CONST(72000000) * USECS_PER_HOUR)

/* t + us, saturating at DEADLINE_NONE (us >= 0) */
static inline TimestampTz
time_add(TimestampTz t, int64 us)
{
	TimestampTz sum;

	if (t == DT_NOEND || pg_add_s64_overflow(t, us, &sum))
		return DEADLINE_NONE;
	return sum;
}

/*
 * The deadline of a token whose absolute deadline is expires_at
 * (DEADLINE_NONE: none) and idle timeout idle_us (0: none), last used at
 * last_used.
 */
static inline TimestampTz
token_deadline(TimestampTz expires_at, int64 idle_us, TimestampTz last_used)
{
	if (idle_us <= 0)
		return expires_at;
	return Min(expires_at, time_add(last_used, idle_us));
}

#endif
