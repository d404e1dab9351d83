-- Deadlines: ttl (absolute), idle_timeout (since last use), refresh, sweep.
-- Deadlines are moved into the past by editing the table, as an operator
-- may; one test waits on the real clock.
SET tokenstore.touch_interval = 0;

SELECT tokenstore.token_make('exp', ttl => '1 hour') AS t \gset
SELECT expires_at - created_at AS ttl FROM tokenstore.token_check(:'t');
SELECT tokenstore.token_make('exp', idle_timeout => '30 min') AS i \gset
SELECT expires_at - last_used_at AS idle FROM tokenstore.token_check(:'i');
-- both: the earlier deadline shows
SELECT tokenstore.token_make('exp', ttl => '1 hour', idle_timeout => '10 min') AS b \gset
SELECT expires_at - last_used_at AS earlier FROM tokenstore.token_check(:'b');
-- idle timeouts are kept as plain durations: a day is 24 hours
SELECT tokenstore.token_make('exp', idle_timeout => '1 day') AS d \gset
SELECT idle_timeout FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'d', 'UTF8'));

-- past its absolute deadline a token is dead everywhere, before any sweep
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'t', 'UTF8'));
SELECT tokenstore.token_user(:'t') AS user_of_dead;
SELECT count(*) AS check_rows FROM tokenstore.token_check(:'t');
SELECT count(*) AS listed FROM tokenstore.token_list('exp')
 WHERE token_id = encode(substr(sha256(convert_to(:'t', 'UTF8')), 1, 16), 'hex');
SELECT tokenstore.token_refresh(:'t', '1 hour') AS refresh_never_resurrects;
SELECT tokenstore.token_set_info(:'t', '{"x": 1}') AS set_info_dead;
SELECT tokenstore.token_rotate(:'t') IS NULL AS rotate_dead;
SELECT tokenstore.token_user(:'t') AS still_dead;

-- idle: dead once last_used_at + idle_timeout has passed
UPDATE tokenstore.token SET last_used_at = now() - interval '31 min'
 WHERE token_hash = sha256(convert_to(:'i', 'UTF8'));
SELECT tokenstore.token_user(:'i') AS idle_dead;
-- a use keeps an idle token alive: its deadline moves with last_used_at
UPDATE tokenstore.token SET last_used_at = now() - interval '9 min'
 WHERE token_hash = sha256(convert_to(:'b', 'UTF8'));
SELECT tokenstore.token_user(:'b') AS used_in_time;
SELECT expires_at > now() + interval '9 min' AS deadline_moved FROM tokenstore.token_check(:'b');

-- the real clock: a token of 200 ms is dead 300 ms later
SELECT tokenstore.token_make('exp', ttl => '200 ms') AS short \gset
SELECT tokenstore.token_user(:'short') AS alive_now;
SELECT pg_sleep(0.3);
SELECT tokenstore.token_user(:'short') AS dead_later;

-- defaults from the settings (0 = none)
SET tokenstore.default_ttl = '2h';
SET tokenstore.default_idle_timeout = '15min';
SELECT tokenstore.token_make('exp') AS g \gset
SELECT expires_at - last_used_at AS idle_default,
	   (SELECT expires_at - created_at FROM tokenstore.token
		 WHERE token_hash = sha256(convert_to(:'g', 'UTF8'))) AS ttl_default
  FROM tokenstore.token_check(:'g');
RESET tokenstore.default_ttl;
RESET tokenstore.default_idle_timeout;
-- the built-in defaults: 30 days, no idle timeout; 0 means none
SHOW tokenstore.default_ttl;
SHOW tokenstore.default_idle_timeout;
SET tokenstore.default_ttl = 0;
SELECT expires_at IS NULL AS no_deadline
  FROM tokenstore.token_check(tokenstore.token_make('exp'));

-- refresh: the absolute deadline becomes now + ttl
SELECT tokenstore.token_make('exp', ttl => '1 minute') AS r \gset
SELECT tokenstore.token_refresh(:'r', '2 hours') AS refreshed;
SELECT expires_at - last_used_at AS new_ttl FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'r', 'UTF8'));
SET tokenstore.default_ttl = '3h';
SELECT tokenstore.token_refresh(:'r') AS refreshed_default;
SELECT expires_at - last_used_at AS default_ttl FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'r', 'UTF8'));
SET tokenstore.default_ttl = 0;
-- with no ttl and no default, refresh lifts the absolute deadline
SELECT tokenstore.token_refresh(:'r') AS refreshed_no_deadline;
SELECT expires_at IS NULL AS no_deadline FROM tokenstore.token_check(:'r');
SELECT tokenstore.token_refresh(NULL) AS null_token;
SELECT tokenstore.token_refresh('unknown-token-xyz', '1 hour') AS unknown;

-- token_set_info replaces the info of a live token
SELECT tokenstore.token_set_info(:'r', '{"theme": "dark"}') AS set;
SELECT info FROM tokenstore.token_check(:'r');
SELECT tokenstore.token_set_info(:'r', NULL) AS cleared;
SELECT info FROM tokenstore.token_check(:'r');
SELECT tokenstore.token_set_info(NULL, '{}') AS null_token;

-- sweep removes dead rows, and only those
SELECT count(*) AS rows_before FROM tokenstore.token WHERE user_id = 'exp';
SELECT tokenstore.token_sweep() AS swept;
SELECT count(*) AS rows_after FROM tokenstore.token WHERE user_id = 'exp';
SELECT tokenstore.token_sweep() AS swept_again;

-- the longest deadlines allowed work with every function (no arithmetic
-- on them overflows); an edit beyond the bounds is refused by the table
SELECT tokenstore.token_make('exp-far', idle_timeout => '72000000 hours',
							 ttl => '9999-12-31 00:00:00+00'::timestamptz - now()) AS far \gset
SELECT tokenstore.token_user(:'far') AS far_user;
SELECT count(*) AS far_listed FROM tokenstore.token_list('exp-far');
SELECT tokenstore.token_rotate(:'far', grace => '1 hour') IS NOT NULL AS far_rotated;
SELECT tokenstore.token_refresh(tokenstore.token_make('exp-far', idle_timeout => '72000000 hours'),
								'9999-12-30 00:00:00+00'::timestamptz - now()) AS far_refreshed;
SELECT tokenstore.token_make('exp-far', mode => 'single', max_tokens => 1) IS NOT NULL AS far_single;
SELECT count(*) AS far_left FROM tokenstore.token_list('exp-far');
SELECT sqlstate_of($$UPDATE tokenstore.token SET expires_at = 'infinity' WHERE user_id = 'exp-far'$$) AS edit_infinity,
	   sqlstate_of($$UPDATE tokenstore.token SET last_used_at = '20000-01-01' WHERE user_id = 'exp-far'$$) AS edit_far_use,
	   sqlstate_of($$UPDATE tokenstore.token SET idle_timeout = '100000000 hours' WHERE user_id = 'exp-far'$$) AS edit_long_idle;
SELECT tokenstore.token_delete_user('exp-far') AS far_deleted;

-- times before 2000 (the cache packs them too): an idle token whose last
-- use an operator moves back is dead at once, cached or not, and swept
SELECT tokenstore.token_make('exp-old', idle_timeout => '1 hour') AS old1 \gset
SELECT tokenstore.token_make('exp-old', idle_timeout => '1 hour') AS old2 \gset
SELECT tokenstore.token_user(:'old1') AS cached1, tokenstore.token_user(:'old2') AS cached2;
UPDATE tokenstore.token SET last_used_at = '1999-12-31 23:00:00+00'
 WHERE token_hash = sha256(convert_to(:'old1', 'UTF8'));
UPDATE tokenstore.token SET last_used_at = '4713-11-25 00:00:00+00 BC'
 WHERE token_hash = sha256(convert_to(:'old2', 'UTF8'));
SELECT tokenstore.token_user(:'old1') AS dead1, tokenstore.token_user(:'old2') AS dead2;
SELECT tokenstore.token_flush() >= 0 AS flushed;
SELECT count(*) AS old_rows_before FROM tokenstore.token WHERE user_id = 'exp-old';
SELECT tokenstore.token_sweep() >= 2 AS swept_old;
SELECT count(*) AS old_rows_after FROM tokenstore.token WHERE user_id = 'exp-old';

-- an interval setting is written as an interval is
SET tokenstore.default_ttl = '1 day 12 hours';
SHOW tokenstore.default_ttl;
SELECT tokenstore.token_make('exp') AS d36 \gset
SELECT expires_at - created_at AS ttl_36h FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'d36', 'UTF8'));

-- expires_at: an absolute deadline for token_make and token_refresh, as
-- token_save takes; 'infinity' is none on every version, whatever
-- default_ttl says (a ttl can say it only where intervals can be infinite)
SELECT tokenstore.token_make('exp', expires_at => 'infinity') AS inf \gset
SELECT expires_at IS NULL AS make_no_deadline FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'inf', 'UTF8'));
SELECT tokenstore.token_make('exp', expires_at => '2100-01-01 00:00:00+00') AS at \gset
SELECT expires_at = '2100-01-01 00:00:00+00' AS make_at_instant FROM tokenstore.token_check(:'at');
SELECT tokenstore.token_user(tokenstore.token_make('exp', expires_at => now() - interval '1 s')) IS NULL
	AS make_past_dead,
	   tokenstore.token_user(tokenstore.token_make('exp', expires_at => '-infinity')) IS NULL
	AS make_minus_infinity_dead;
SELECT tokenstore.token_refresh(:'at', expires_at => 'infinity') AS refreshed;
SELECT expires_at IS NULL AS refresh_no_deadline FROM tokenstore.token_check(:'at');
SELECT tokenstore.token_refresh(:'at', expires_at => '2100-01-02 00:00:00+00') AS refreshed;
SELECT expires_at = '2100-01-02 00:00:00+00' AS refresh_at_instant FROM tokenstore.token_check(:'at');
SELECT tokenstore.token_refresh(:'at') AS refreshed;
SELECT expires_at - last_used_at AS refresh_default FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'at', 'UTF8'));
SELECT tokenstore.token_refresh(:'at', expires_at => now() - interval '1 s') AS refreshed,
	   tokenstore.token_user(:'at') IS NULL AS refresh_past_ended;
-- one absolute deadline: ttl and expires_at together are an error
SELECT tokenstore.token_make('exp', ttl => '1 hour', expires_at => 'infinity');
SELECT sqlstate_of($$SELECT tokenstore.token_refresh('any-token-12345678', ttl => '1 hour', expires_at => 'infinity')$$)
	AS refresh_both;
SELECT sqlstate_of($$SELECT tokenstore.token_make('exp', expires_at => '10000-01-01')$$) AS make_beyond;
RESET tokenstore.default_ttl;

-- token_refresh's idle_timeout replaces the token's (0: none; NULL keeps it)
SELECT tokenstore.token_make('exp', idle_timeout => '10 min') AS lengthen \gset
SELECT tokenstore.token_make('exp', idle_timeout => '2 hours') AS shorten \gset
SELECT tokenstore.token_make('exp', idle_timeout => '10 min') AS lift \gset
SELECT tokenstore.token_refresh(:'lengthen', idle_timeout => '2 hours') AS lengthened,
	   tokenstore.token_refresh(:'shorten', idle_timeout => '10 min') AS shortened,
	   tokenstore.token_refresh(:'lift', idle_timeout => '0') AS lifted;
SELECT (SELECT idle_timeout FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'lengthen', 'UTF8'))) AS lengthened,
	   (SELECT idle_timeout FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'shorten', 'UTF8'))) AS shortened,
	   (SELECT idle_timeout FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'lift', 'UTF8'))) AS lifted;
-- checks see the new timeouts at once (the deadline they answer is the idle one)
SELECT (SELECT expires_at - last_used_at FROM tokenstore.token_check(:'lengthen')) AS lengthened,
	   (SELECT expires_at - last_used_at FROM tokenstore.token_check(:'shorten')) AS shortened,
	   (SELECT expires_at > now() + interval '29 days' FROM tokenstore.token_check(:'lift')) AS lifted;
-- 30 minutes unused: past the old timeout of the first, the new one of the
-- second; a year unused: no idle timeout left on the third
UPDATE tokenstore.token SET last_used_at = now() - interval '30 min'
 WHERE token_hash IN (sha256(convert_to(:'lengthen', 'UTF8')), sha256(convert_to(:'shorten', 'UTF8')));
UPDATE tokenstore.token SET last_used_at = now() - interval '1 year'
 WHERE token_hash = sha256(convert_to(:'lift', 'UTF8'));
SELECT tokenstore.token_user(:'lengthen') AS lives_past_old_timeout,
	   tokenstore.token_user(:'shorten') IS NULL AS dies_after_new_timeout,
	   tokenstore.token_user(:'lift') AS lives_without_timeout;
-- NULL keeps it; the refresh is a use, from which it counts
SELECT tokenstore.token_refresh(:'lengthen', '1 day') AS refreshed;
SELECT idle_timeout, last_used_at > now() - interval '1 min' AS used_now FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'lengthen', 'UTF8'));
-- validated as token_make's; a dead token or one in a rotation's grace is refused
SELECT sqlstate_of(format('SELECT tokenstore.token_refresh(%L, idle_timeout => %L)', :'lengthen', '-1 min')) AS negative_idle,
	   sqlstate_of(format('SELECT tokenstore.token_refresh(%L, idle_timeout => %L)', :'lengthen', '72000001 hours')) AS long_idle;
SELECT tokenstore.token_refresh(:'shorten', idle_timeout => '1 day') AS dead_refused;
SELECT tokenstore.token_rotate(:'lengthen', grace => '1 hour') IS NOT NULL AS rotated;
SELECT tokenstore.token_refresh(:'lengthen', idle_timeout => '0') AS graced_refused,
	   (SELECT idle_timeout FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'lengthen', 'UTF8'))) AS graced_kept;

SELECT tokenstore.token_delete_user('exp');
RESET tokenstore.touch_interval;
