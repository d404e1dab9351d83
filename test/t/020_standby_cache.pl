# Read scale-out: hot standbys with a cache of their own
# (tokenstore.standby_cache = on on the primary), kept in step by the
# primary's invalidation records in WAL.
#
#  1. A primary with the setting, standby1 streaming from it and standby2
#     cascading from standby1; both say standby_cache 'on' in
#     tokenstore.stats (cache_lag 0 once caught up; the primary's NULL).
#  2. Checks on a standby are answered from its cache: hits and entries.
#     With standby2's replay paused, what it received shows as cache_lag.
#  3. Every kind of revocation and change, each made on the primary with the
#     token cached on both standbys first, is seen on standby1 and standby2
#     as soon as wait_for_catchup returns (2,000 checks of the victims, no
#     live answer), the others of the same user still answer: token_delete,
#     token_delete_id, token_delete_user (with and without keep_token), a
#     single-mode login, max_tokens, an operator's UPDATE of the deadline
#     (then token_sweep), token_refresh (to 0, and to a later deadline:
#     token_check's expires_at), token_set_info (token_check's info),
#     token_rotate (without grace: the old one dead; with grace: its new
#     deadline), an operator's DELETE and UPDATE of user_id, token_save of
#     new data (token_data) and token_delete_sessions, TRUNCATE, DROP
#     EXTENSION (then CREATE EXTENSION, the same token string made for
#     another user), DROP DATABASE (its entries go; recreated, the same
#     string answers its new user), bulk DELETEs of 3,000 tokens and of
#     67,000 (more than a transaction tracks: a purge of the database).
#     Meanwhile two clients check 48 tokens
#     on standby1 again and again; afterwards no check that began after a
#     revocation was replayed there answered the old user, and every check
#     that ended before the revocation was sent answered it.
#  4. The fill race, forced: a check on standby1 read a token from the
#     table and waits (tokenstore.debug_hold_fill, a held advisory lock)
#     before filling its cache; without a revocation meanwhile, it fills;
#     with the token revoked on the primary and replayed meanwhile, it must
#     not: the next check answers NULL and no entry was added.
#  5. A token with a 4-second idle timeout, checked only on standby1 every
#     half second for 10 s, stays alive on the primary too: the standby sends
#     its uses (last_used_at moves in the primary's table), and answers them
#     all from its cache (the writes of its uses do not invalidate it).
#  6. While the primary is down, a cached token still answers on the
#     standby; its use waits and reaches the primary's table once it is back.
# 6b. The primary restarted with standby_cache off: its first revocation is
#     seen, the standbys say 'off', empty their caches and answer from the
#     table (a revocation logged nowhere is seen too); restarted with it on,
#     they turn on again.
#  7. An immediate stop of the primary under a load of token_make and
#     token_delete (checked on standby1 meanwhile), 100 revocations and more
#     since the last checkpoint: the primary's crash recovery ends (its
#     replay of them never waits), and afterwards both standbys
#     answer every token as their table and the primary do, acknowledged
#     revocations dead, acknowledged tokens alive.
#  8. A standby made from a base backup taken under load settles while a
#     transaction that ran at its first "on" record is open, then turns
#     'on' and answers as the primary, revocations included.
# 10. (a) With standby_cache off, a standby without the preload replays and
#     answers (007 covers a preloaded standby of such a primary);
#     (b) with it on, a standby without the preload stops replaying at the
#     first tokenstore record, saying "resource manager with ID 128 not
#     registered", and shuts down.
#  9. The primary stops; the standby of (8) is promoted: what it cached
#     still answers, a revocation there is seen at once, and the use it
#     recorded before the promotion (unsendable, the primary being down)
#     reaches its own table.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreTest;
use TokenstoreLoad;

my $db = 'postgres';
my $begin = time;
my $logdir = PostgreSQL::Test::Utils::tempdir();

# ---- 1. the primary, a streaming standby and a cascading one ----

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
# hot_standby_feedback: a check held on a standby (4.) must not be
# cancelled by the replay of a cleanup; wal_retrieve_retry_interval: the
# standbys reconnect quickly after the primary's restarts (6., 7.);
# wal_keep_size: the checkpoints of the base backups (8., 10.) must not
# remove WAL that a standby still streams (no slots here).  All are copied
# to every standby by its base backup.
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'tokenstore'
tokenstore.last_used_resolution = 0
tokenstore.standby_cache = on
tokenstore.flush_interval = '1s'
hot_standby_feedback = on
wal_retrieve_retry_interval = '200ms'
wal_keep_size = '1GB'
log_statement = none
});
$primary->start;
$primary->safe_psql($db, 'CREATE EXTENSION tokenstore');

# p(SQL), s1(SQL), s2(SQL): run SQL on the primary, standby1, standby2
sub p { return $primary->safe_psql($db, $_[0]); }

my $standby1 = PostgreSQL::Test::Cluster->new('standby1');
my $standby2 = PostgreSQL::Test::Cluster->new('standby2');
$primary->backup('b1');
$standby1->init_from_backup($primary, 'b1', has_streaming => 1);
$standby1->start;
$standby2->init_from_backup($primary, 'b1');
$standby2->enable_streaming($standby1);
# its uses go to the primary, not to standby1 (which could not record them)
$standby2->append_conf('postgresql.conf',
	"tokenstore.primary_conninfo = '" . $primary->connstr . "'\n");
$standby2->start;

sub s1 { return $standby1->safe_psql($db, $_[0]); }
sub s2 { return $standby2->safe_psql($db, $_[0]); }

my @standbys = ($standby1, $standby2);    # those section 3 checks
my @direct = ($standby1);                 # streaming from the primary

# catchup(): every standby has replayed what the primary has written (the
# cascading one through standby1); returns the time standby1's wait ended.
sub catchup
{
	my $lsn = $primary->lsn('write');
	my $replayed;

	$primary->wait_for_catchup($_, 'replay', $lsn) for @direct;
	$replayed = time;
	$standby1->wait_for_catchup($standby2, 'replay', $lsn);
	return $replayed;
}

# sv(NODE, COLUMN, DB): a column of the node's tokenstore.stats row for
# the database it is read in
sub sv
{
	my ($node, $column, $d) = @_;
	return $node->safe_psql($d // $db,
		"SELECT $column FROM tokenstore.stats WHERE datname = current_database()");
}

# wait_on(NODE, WHAT): poll until the node's stats say standby_cache 'on'.
# The primary writes its "on" record every flush interval while WAL moves,
# so meanwhile the test moves it (a transaction with an xid).
sub wait_on
{
	my ($node, $what) = @_;
	my $deadline = time + 60;
	my $state = '';

	while (1)
	{
		my ($ret, $out) = $node->psql($db,
			"SELECT standby_cache FROM tokenstore.stats WHERE datname = current_database()");
		$state = $out if $ret == 0;
		last if $state eq 'on' || time > $deadline;
		$primary->psql($db, 'SELECT txid_current()');
		usleep(100_000);
	}
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is($state, 'on', $what);
}

# arr(TOKENS...): a text[] literal of tokens (generated tokens and the
# test's own strings hold no quote, comma or brace)
sub arr { return "'{" . join(',', @_) . "}'::text[]"; }

# answers(NODE, DB, TOKENS...): each token's token_user, '-' for NULL
sub answers
{
	my ($node, $d, @t) = @_;
	return $node->safe_psql($d,
		"SELECT string_agg(coalesce(tokenstore.token_user(t), '-'), ' ' ORDER BY n) "
		  . "FROM unnest(" . arr(@t) . ") WITH ORDINALITY AS u(t, n)");
}

# stale(NODE, DB, TOKENS...): "LIVE/CHECKS" of about 2,000 checks of the
# tokens in one statement: how many answered a user.  (The argument depends
# on the round, so that each check runs.)
sub stale
{
	my ($node, $d, @t) = @_;
	my $rounds = int((2000 + @t - 1) / @t);
	return $node->safe_psql($d, qq{
		SELECT count(*) FILTER (WHERE tokenstore.token_user(CASE WHEN g > 0 THEN t END) IS NOT NULL)
			   || '/' || count(*)
		  FROM generate_series(1, $rounds) g, unnest(} . arr(@t) . ') t');
}

sub row_of { return "token_hash = sha256(convert_to('$_[0]', 'UTF8'))"; }

sub first_ten { my @l = @_; return join("\n", @l[ 0 .. ($#l < 9 ? $#l : 9) ]); }

is(p("SELECT standby_cache || ' ' || coalesce(cache_lag::text, 'null') FROM tokenstore.stats WHERE datname = current_database()"),
	'on null', 'the primary says standby_cache on, and has no cache lag');
wait_on($standby1, 'standby1 (streaming) turns its cache on');
wait_on($standby2, 'standby2 (cascading from standby1) turns its cache on');
catchup();
for my $node (@standbys)
{
	TokenstoreTest::wait_for_within($node, $db,
		"SELECT cache_lag = interval '0' FROM tokenstore.stats WHERE datname = current_database()",
		't', 10, $node->name . ': cache_lag is 0 once replay caught up');
	cmp_ok(sv($node, 'capacity'), '>', 0, $node->name . ': the cache has room');
}

# ---- 2. hits on a standby ----

my $hit = p("SELECT tokenstore.token_make('hilda')");
catchup();
for my $node (@standbys)
{
	my $name = $node->name;
	my $before = TokenstoreTest::stats($node, $db);
	is(answers($node, $db, $hit), 'hilda', "$name: a token made on the primary answers");
	my $mid = TokenstoreTest::stats($node, $db);
	is(answers($node, $db, $hit), 'hilda', "$name: and again");
	my $after = TokenstoreTest::stats($node, $db);
	cmp_ok($mid->{fills} - $before->{fills}, '>=', 1, "$name: the first check filled the cache");
	cmp_ok($after->{hits} - $mid->{hits}, '>=', 1, "$name: the second was a hit");
	cmp_ok($after->{hits}, '>', 0, "$name: stats show hits");
	cmp_ok($after->{entries}, '>', 0, "$name: and entries");
}

# cache_lag: with standby2's replay paused, what it received and did not
# replay shows as a lag; it is back to 0 once replay caught up
s2('SELECT pg_wal_replay_pause()');
p("SELECT tokenstore.token_make('lagging')");
my $lsn = $primary->lsn('write');
TokenstoreTest::wait_for_within($standby2, $db, "SELECT pg_last_wal_receive_lsn() >= '$lsn'",
	't', 30, 'replay paused: standby2 receives a commit');
TokenstoreTest::wait_for_within($standby2, $db,
	"SELECT cache_lag > interval '0' FROM tokenstore.stats WHERE datname = current_database()",
	't', 10, 'replay paused: standby2 shows a cache lag');
s2('SELECT pg_wal_replay_resume()');
catchup();
TokenstoreTest::wait_for_within($standby2, $db,
	"SELECT cache_lag = interval '0' FROM tokenstore.stats WHERE datname = current_database()",
	't', 10, 'replay resumed: the lag is 0 again');

# ---- 3. every kind of revocation, under a check load on standby1 ----

# 48 tokens, 4 per user u0 .. u11: token i belongs to 'u' || (i / 4)
my @load = split / /, p(
	"SELECT string_agg(tokenstore.token_make('u' || (i / 4)), ' ' ORDER BY i) FROM generate_series(0, 47) i");
my @owner = map { 'u' . int($_ / 4) } 0 .. 47;
is(scalar(@load), 48, '48 load tokens made');
catchup();

my $stop_load = "$logdir/stop-load";
my @load_logs = map { "$logdir/load-$_.log" } 1 .. 2;

# A load client on standby1: checks all 48 tokens in one statement, 40
# times a second; logs "ck T0 T1 ANSWERS" (before sending, after the
# answer) or "err ...".
sub load_client
{
	my ($file) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($standby1, $db);
	my $query = "SELECT string_agg(coalesce(tokenstore.token_user(t), '-'), ' ' ORDER BY n) "
	  . "FROM unnest(" . arr(@load) . ") WITH ORDINALITY AS u(t, n);";
	my $deadline = time + 240;
	my $next = time;

	while (!-e $stop_load && time < $deadline)
	{
		$next += 1 / 40;    # pacing, not waiting for anything
		usleep(($next - time) * 1e6) if $next > time;
		my $t0 = time;
		my ($st, @out) = $s->query($query);
		my $t1 = time;
		last if $st eq 'lost';
		print $log ($st eq 'ok' && @out == 1
			? sprintf("ck %.6f %.6f %s\n", $t0, $t1, $out[0])
			: "err @out\n");
	}
	return;
}

my @load_pids = map {
	my $file = $_;
	TokenstoreLoad::spawn(sub { load_client($file) })
} @load_logs;
my $wait_until = time + 30;
usleep(50_000)
  while (grep { /^ck / } TokenstoreLoad::lines(@load_logs)) < 20 && time < $wait_until;
cmp_ok(scalar(grep { /^ck / } TokenstoreLoad::lines(@load_logs)), '>=', 20,
	'the load clients check on standby1');

my %events;    # load token index => [[SENT, REPLAYED, ANSWER AFTER], ...]

# prime(WHAT, TOKENS, EXPECTED): on each standby the tokens answer EXPECTED
# (user ids, '-' for none), checked twice: the second time from the cache
# (hits counted; standby1's load adds its own).
sub prime
{
	my ($what, $tokens, $expected) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	for my $node (@standbys)
	{
		my $name = $node->name;
		is(answers($node, $db, @$tokens), $expected, "$what: $name answers before");
		my $before = sv($node, 'hits');
		answers($node, $db, @$tokens);
		cmp_ok(sv($node, 'hits') - $before, '>=', scalar(@$tokens),
			"$what: $name answers from its cache");
	}
}

# change(SQL, INDICES, ANSWER): run SQL on the primary (the revocation or
# change of the load tokens INDICES, which then answer ANSWER: '-' or a
# user), catch the standbys up; returns SQL's output.
sub change
{
	my ($sql, $indices, $answer) = @_;
	my $sent = time;
	my $out = p($sql);
	my $replayed = catchup();

	push @{ $events{$_} }, [ $sent, $replayed, $answer ] for @{ $indices // [] };
	return $out;
}

# dead(WHAT, TOKENS...): on both standbys, 2,000 checks of the tokens
# right after the catch-up answer no user
sub dead
{
	my ($what, @t) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	for my $node (@standbys)
	{
		like(stale($node, $db, @t), qr{^0/\d+$},
			"$what: dead on " . $node->name . ' at once (no live answer in 2,000 checks)');
		is($node->safe_psql($db,
				'SELECT (SELECT count(*) FROM unnest(' . arr(@t) . ') t WHERE tokenstore.token_touch(t)) '
				  . "|| '/' || (SELECT count(*) FROM unnest(" . arr(@t) . ') t, tokenstore.token_check(t) c)'),
			'0/0', "$what: token_touch and token_check on " . $node->name . ' too');
	}
}

# same(WHAT, TOKENS, EXPECTED): on both standbys the tokens answer EXPECTED
sub same
{
	my ($what, $tokens, $expected) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	is(answers($_, $db, @$tokens), $expected, "$what: " . $_->name . ' answers')
	  for @standbys;
}

sub users_of { return join(' ', map { $owner[$_] } @_); }

# token_delete
prime('token_delete', [ @load[ 0 .. 3 ] ], users_of(0 .. 3));
is(change("SELECT tokenstore.token_delete('$load[0]')", [0], '-'), 't', 'token_delete');
dead('token_delete', $load[0]);
same('token_delete: the user\'s other tokens', [ @load[ 1 .. 3 ] ], users_of(1 .. 3));

# token_delete_id (the handle is the hex of the first 16 bytes of the hash)
prime('token_delete_id', [ @load[ 4 .. 7 ] ], users_of(4 .. 7));
my $id = p("SELECT encode(substring(sha256(convert_to('$load[4]', 'UTF8')) FROM 1 FOR 16), 'hex')");
is(p("SELECT count(*) FROM tokenstore.token_list('u1') WHERE token_id = '$id'"), '1',
	'token_delete_id: token_list shows the handle');
is(change("SELECT tokenstore.token_delete_id('$id')", [4], '-'), 't', 'token_delete_id');
dead('token_delete_id', $load[4]);
same('token_delete_id: the others', [ @load[ 5 .. 7 ] ], users_of(5 .. 7));

# token_delete_user
prime('token_delete_user', [ @load[ 8 .. 11 ] ], users_of(8 .. 11));
is(change("SELECT tokenstore.token_delete_user('u2')", [ 8 .. 11 ], '-'), '4', 'token_delete_user');
dead('token_delete_user', @load[ 8 .. 11 ]);

# token_delete_user with keep_token
prime('token_delete_user keep_token', [ @load[ 12 .. 15 ] ], users_of(12 .. 15));
is(change("SELECT tokenstore.token_delete_user('u3', keep_token => '$load[12]')", [ 13 .. 15 ], '-'),
	'3', 'token_delete_user with keep_token');
dead('token_delete_user keep_token', @load[ 13 .. 15 ]);
same('token_delete_user keep_token: the kept one', [ $load[12] ], 'u3');

# a single-mode login revokes the user's other tokens
prime('single mode', [ @load[ 16 .. 19 ] ], users_of(16 .. 19));
my $single = change("SELECT tokenstore.token_make('u4', mode => 'single')", [ 16 .. 19 ], '-');
dead('single mode', @load[ 16 .. 19 ]);
same('single mode: the new token', [$single], 'u4');

# max_tokens => 1 revokes all the user's others
prime('max_tokens', [ @load[ 20 .. 23 ] ], users_of(20 .. 23));
my $only = change("SELECT tokenstore.token_make('u5', max_tokens => 1)", [ 20 .. 23 ], '-');
dead('max_tokens', @load[ 20 .. 23 ]);
same('max_tokens: the new token', [$only], 'u5');

# an operator moves a deadline to the past; then the sweep deletes the row
prime('expired by UPDATE', [ @load[ 24 .. 27 ] ], users_of(24 .. 27));
is(change("UPDATE tokenstore.token SET expires_at = now() - interval '1 second' WHERE "
		  . row_of($load[24]) . " RETURNING 'expired'", [24], '-'),
	'expired', 'an operator\'s UPDATE of expires_at');
dead('expired by UPDATE', $load[24]);
same('expired by UPDATE: the others', [ @load[ 25 .. 27 ] ], users_of(25 .. 27));
cmp_ok(change('SELECT tokenstore.token_sweep()'), '>=', 1, 'token_sweep deletes its row');
is(p('SELECT count(*) FROM tokenstore.token WHERE ' . row_of($load[24])), '0', 'the row is gone');
dead('swept', $load[24]);

# token_refresh to 0 ends a token
prime('token_refresh 0', [ @load[ 28 .. 31 ] ], users_of(28 .. 31));
is(change("SELECT tokenstore.token_refresh('$load[28]', '0')", [28], '-'), 't', 'token_refresh to 0');
dead('token_refresh 0', $load[28]);
same('token_refresh 0: the others', [ @load[ 29 .. 31 ] ], users_of(29 .. 31));

# token_refresh to a later deadline, token_set_info: what token_check shows
my ($later, $infod) = split / /, p(
	q{SELECT tokenstore.token_make('rita', ttl => '1 hour') || ' ' || tokenstore.token_make('ines', '{"v": 1}')});
catchup();
my $check = "SELECT user_id || ' ' || info::text || ' ' || extract(epoch FROM expires_at) FROM tokenstore.token_check('%s')";
my $deadline_of = "SELECT extract(epoch FROM expires_at) FROM tokenstore.token WHERE %s";
for my $node (@standbys)
{
	my $want = p(sprintf($deadline_of, row_of($later)));
	is($node->safe_psql($db, sprintf($check, $later)), qq{rita {} $want},
		'token_refresh later: ' . $node->name . '\'s token_check before');
	is($node->safe_psql($db, sprintf($check, $infod)) =~ s/ \S+$//r, 'ines {"v": 1}',
		'token_set_info: ' . $node->name . '\'s token_check before');
}
prime('token_refresh later, token_set_info', [ $later, $infod ], 'rita ines');
is(change("SELECT tokenstore.token_refresh('$later', '3 hours')"), 't', 'token_refresh to 3 hours');
is(change(qq{SELECT tokenstore.token_set_info('$infod', '{"v": 2}')}), 't', 'token_set_info');
my $refreshed = p(sprintf($deadline_of, row_of($later)));
for my $node (@standbys)
{
	is($node->safe_psql($db, sprintf($check, $later)), qq{rita {} $refreshed},
		'token_refresh later: ' . $node->name . '\'s token_check shows the new deadline at once');
	is($node->safe_psql($db, sprintf($check, $infod)) =~ s/ \S+$//r, 'ines {"v": 2}',
		'token_set_info: ' . $node->name . '\'s token_check shows the new info at once');
}

# token_rotate without grace: the old one dies
prime('token_rotate', [ @load[ 32 .. 35 ] ], users_of(32 .. 35));
my $heir = change("SELECT tokenstore.token_rotate('$load[32]')", [32], '-');
like($heir, qr/^tks_/, 'token_rotate without grace');
dead('token_rotate', $load[32]);
same('token_rotate: the new token and the others', [ $heir, @load[ 33 .. 35 ] ], users_of(32 .. 35));

# token_rotate with grace: the old one lives until the new final deadline
my $graced = p("SELECT tokenstore.token_make('gina')");
catchup();
prime('token_rotate grace', [$graced], 'gina');
my $heir2 = change("SELECT tokenstore.token_rotate('$graced', grace => '1 hour')");
my $grace_end = p(sprintf($deadline_of, row_of($graced)));
for my $node (@standbys)
{
	is($node->safe_psql($db, sprintf($check, $graced)), "gina {} $grace_end",
		'token_rotate grace: ' . $node->name . '\'s token_check shows the end of the grace at once');
	is(answers($node, $db, $heir2), 'gina', 'token_rotate grace: the new token on ' . $node->name);
}

# an operator's DELETE
prime('operator DELETE', [ @load[ 36 .. 39 ] ], users_of(36 .. 39));
is(change('DELETE FROM tokenstore.token WHERE ' . row_of($load[36]) . " RETURNING 'deleted'", [36], '-'),
	'deleted', 'an operator\'s DELETE');
dead('operator DELETE', $load[36]);
same('operator DELETE: the others', [ @load[ 37 .. 39 ] ], users_of(37 .. 39));

# an operator's UPDATE of the user
prime('operator UPDATE of user_id', [ @load[ 40 .. 43 ] ], users_of(40 .. 43));
is(change("UPDATE tokenstore.token SET user_id = 'u10x' WHERE " . row_of($load[40]) . " RETURNING 'moved'",
		[40], 'u10x'),
	'moved', 'an operator\'s UPDATE of user_id');
for my $node (@standbys)
{
	is($node->safe_psql($db, "SELECT count(*) FROM generate_series(1, 2000) g "
			  . "WHERE tokenstore.token_user(CASE WHEN g > 0 THEN '$load[40]' END) IS DISTINCT FROM 'u10x'"),
		'0', 'operator UPDATE of user_id: ' . $node->name . ' answers the new user at once (2,000 checks)');
}

# sessions: token_save of new data, then token_delete_sessions
my $sess = 'standby-session-0123456789abcdef';
p("SELECT tokenstore.token_save('$sess', 'sam', '\\x01', now() + interval '1 hour')");
catchup();
my $data = "SELECT coalesce(encode(tokenstore.token_data('$sess'), 'hex'), 'none')";
is($_->safe_psql($db, "$data; $data"), "01\n01", 'token_save: ' . $_->name . ' reads its data')
  for @standbys;
is(change("SELECT tokenstore.token_save('$sess', 'sam', '\\x02', now() + interval '1 hour')"), 'f',
	'token_save replaces the data');
is($_->safe_psql($db, $data), '02', 'token_save: ' . $_->name . ' reads the new data at once')
  for @standbys;
is(change('SELECT tokenstore.token_delete_sessions()'), '1', 'token_delete_sessions');
is($_->safe_psql($db, "$data || ' ' || coalesce(tokenstore.token_user('$sess'), 'dead')"), 'none dead',
	'token_delete_sessions: ' . $_->name . ' sees it at once')
  for @standbys;
dead('token_delete_sessions', $sess);

# Bulk revocations: 70,000 tokens an operator wrote, cached on both
# standbys; a DELETE of 3,000 of them in one statement (one record of 3,000
# keys), then of the other 67,000 (more changes than a transaction keeps
# track of: logged as a purge of the database)
my $bulk = 70000;
my $bulk_check = "SELECT count(*) FILTER (WHERE tokenstore.token_user('bulk-token-' || i) IS NOT NULL) || '/' || count(*) "
  . 'FROM generate_series(%d, %d, %d) i';
p('INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at) '
	  . "SELECT sha256(convert_to('bulk-token-' || i, 'UTF8')), 'bulk', now(), now() FROM generate_series(1, $bulk) i");
catchup();
for my $node (@standbys)
{
	is($node->safe_psql($db, sprintf($bulk_check, 1, $bulk, 1)), "$bulk/$bulk",
		'bulk: ' . $node->name . " answers all $bulk tokens");
	cmp_ok(sv($node, 'cached'), '>=', $bulk, 'bulk: ' . $node->name . ' has them cached');
}
is(change('DELETE FROM tokenstore.token WHERE token_hash IN '
		  . "(SELECT sha256(convert_to('bulk-token-' || i, 'UTF8')) FROM generate_series(1, 3000) i)"),
	'', 'bulk: a DELETE of 3,000 in one statement');
for my $node (@standbys)
{
	is($node->safe_psql($db, sprintf($bulk_check, 1, 3000, 1)), '0/3000',
		'bulk: ' . $node->name . ' answers none of the 3,000 at once');
	is($node->safe_psql($db, sprintf($bulk_check, 3001, $bulk, 67)), '1000/1000',
		'bulk: and a thousand of the others');
}
change("DELETE FROM tokenstore.token WHERE user_id = 'bulk'");
for my $node (@standbys)
{
	is($node->safe_psql($db, sprintf($bulk_check, 3001, $bulk, 33)), '0/2031',
		'bulk: after a DELETE of 67,000, ' . $node->name . ' answers none (2,031 of them checked) at once');
}
same('bulk: the other tokens of the database', [ @load[ 1 .. 3 ] ], users_of(1 .. 3));

# TRUNCATE: every token goes; a string made anew afterwards answers its new user
my $reborn = 'truncated-then-made-again-0123456789';
p("SELECT tokenstore.token_make('before', token => '$reborn')");
catchup();
my @live_load = grep { !$events{$_} } 0 .. 47;
prime('TRUNCATE', [ $reborn, @load[@live_load] ], join(' ', 'before', users_of(@live_load)));
change('TRUNCATE tokenstore.token', [ 0 .. 47 ], '-');
dead('TRUNCATE', $reborn, @load, $single, $only, $heir, $heir2, $later, $infod, $hit);
change("SELECT tokenstore.token_make('after', token => '$reborn')");
same('TRUNCATE: the same string made again', [$reborn], 'after');

# DROP EXTENSION, in a database of its own; CREATE EXTENSION again and the
# same string made for another user
my $dropped = 'dropped-extension-token-0123456789';
p('CREATE DATABASE dropext');
$primary->safe_psql('dropext', 'CREATE EXTENSION tokenstore');
$primary->safe_psql('dropext', "SELECT tokenstore.token_make('old', token => '$dropped')");
catchup();
for my $node (@standbys)
{
	is($node->safe_psql('dropext', "SELECT tokenstore.token_user('$dropped'); SELECT tokenstore.token_user('$dropped')"),
		"old\nold", 'DROP EXTENSION: ' . $node->name . ' answers before');
}
$primary->safe_psql('dropext', 'DROP EXTENSION tokenstore');
catchup();
for my $node (@standbys)
{
	my ($ret, $out, $err) = $node->psql('dropext', "SELECT tokenstore.token_user('$dropped')");
	ok($ret != 0 || $out eq '', 'DROP EXTENSION: ' . $node->name . ' gives no answer at once')
	  or diag("returned $ret: $out");
	note('DROP EXTENSION: ' . $node->name . " then says: $err");
}
$primary->safe_psql('dropext', 'CREATE EXTENSION tokenstore');
catchup();
is(answers($_, 'dropext', $dropped), '-', 'CREATE EXTENSION again: the old token is unknown on ' . $_->name)
  for @standbys;
$primary->safe_psql('dropext', "SELECT tokenstore.token_make('new', token => '$dropped')");
catchup();
is(answers($_, 'dropext', $dropped), 'new', 'made again for another user: ' . $_->name . ' answers that user')
  for @standbys;

# DROP DATABASE: its cache entries go; recreated, the same string answers
# its new user
my $dbtoken = 'dropped-database-token-0123456789';
p('CREATE DATABASE db2');
$primary->safe_psql('db2', 'CREATE EXTENSION tokenstore');
$primary->safe_psql('db2', "SELECT tokenstore.token_make('dave', token => '$dbtoken'); "
	  . "CREATE TABLE toks AS SELECT tokenstore.token_make('d' || i) AS t FROM generate_series(1, 200) i");
catchup();
my %entries;
for my $node (@standbys)
{
	is($node->safe_psql('db2', "SELECT count(tokenstore.token_user(t)) FROM toks; "
			  . "SELECT count(tokenstore.token_user(t)) FROM toks; SELECT tokenstore.token_user('$dbtoken')"),
		"200\n200\ndave", 'DROP DATABASE: ' . $node->name . ' answers 201 tokens there');
	cmp_ok(sv($node, 'cached', 'db2'), '>=', 201, 'DROP DATABASE: ' . $node->name . ' has them cached');
	$entries{ $node->name } = sv($node, 'entries');
}
p('DROP DATABASE db2 WITH (FORCE)');
catchup();
for my $node (@standbys)
{
	my $now = sv($node, 'entries');
	cmp_ok($now, '<=', $entries{ $node->name } - 201,
		'DROP DATABASE: ' . $node->name . "'s cache entries went ($entries{$node->name} -> $now)");
	is($node->safe_psql($db, "SELECT count(*) FROM tokenstore.stats WHERE datname = 'db2'"), '0',
		'DROP DATABASE: ' . $node->name . '\'s stats no longer list it');
}
p('CREATE DATABASE db2');
$primary->safe_psql('db2', 'CREATE EXTENSION tokenstore');
$primary->safe_psql('db2', "SELECT tokenstore.token_make('erin', token => '$dbtoken')");
catchup();
is(answers($_, 'db2', $dbtoken), 'erin', 'DROP DATABASE: recreated, ' . $_->name . ' answers the new user')
  for @standbys;

# the load's verdict
open my $fh, '>', $stop_load or die $!;
close $fh;
is(TokenstoreLoad::reap(\@load_pids, 30), 0, 'the load clients stopped');

# Each load check of each token, sent at T0 and answered at T1: after a
# change of the token was replayed on standby1 (T0 later than the end of
# the catch-up), it must give the new answer; before the change was sent
# (T1 earlier), the old one; a check concurrent with a change may give
# either, and is not judged.
my %n = (checks => 0, before => 0, after => 0, overlap => 0);
my (@late, @wrong, @errors);
for my $line (TokenstoreLoad::lines(@load_logs))
{
	if ($line =~ /^err /)
	{
		push @errors, $line;
		next;
	}
	next unless $line =~ /^ck (\S+) (\S+) (.*)$/;
	my ($t0, $t1, @a) = ($1, $2, split / /, $3);

	$n{checks}++;
	for my $i (0 .. 47)
	{
		my $want = $owner[$i];
		my $overlap = 0;
		my $after = 0;

		for my $e (@{ $events{$i} // [] })
		{
			my ($sent, $replayed, $answer) = @$e;

			if ($t0 > $replayed)
			{
				$want = $answer;
				$after = 1;
			}
			elsif ($t1 < $sent)
			{
				last;
			}
			else
			{
				$overlap = 1;
				last;
			}
		}
		if ($overlap)
		{
			$n{overlap}++;
			next;
		}
		$n{ $after ? 'after' : 'before' }++;
		next if ($a[$i] // '') eq $want;
		push @{ $after ? \@late : \@wrong },
		  sprintf('load token %d (%s) answered %s, not %s, at %.3f', $i, $owner[$i], $a[$i] // 'nothing', $want, $t0);
	}
}
note("load on standby1: $n{checks} statements, $n{before} checks before a change, "
	  . "$n{after} after one was replayed, $n{overlap} concurrent with one");
is(join("\n", @errors), '', 'no load check met an error');
cmp_ok($n{after}, '>=', 1000, "$n{after} load checks began after a change of their token was replayed on standby1");
is(scalar(@late), 0, 'none of them gave the old answer') or diag(first_ten(@late));
is(scalar(@wrong), 0, "every other load check answered the token's user") or diag(first_ten(@wrong));

# ---- 4. the fill race ----

# hold_fill(TOKEN, REVOKE): session B checks TOKEN on standby1 with its
# fill held by session A's advisory lock; with REVOKE, the token is revoked
# on the primary and replayed while B waits.  Returns B's answer and the
# change of standby1's cache entries across B's check.
sub hold_fill
{
	my ($token, $revoke) = @_;
	my $holder = $standby1->background_psql($db);
	my $held = $standby1->background_psql($db);
	my $bpid = $held->query_safe('SELECT pg_backend_pid()');
	my $before = sv($standby1, 'entries');

	$holder->query_safe('SELECT pg_advisory_lock(7370)');
	$held->query_safe('SET tokenstore.debug_hold_fill = on');
	$held->query_until(qr/checking/,
		"\\echo checking\nSELECT coalesce(tokenstore.token_user('$token'), 'dead');\n\\echo checked\n");
	TokenstoreTest::wait_for_within($standby1, $db,
		"SELECT wait_event_type || ' ' || wait_event FROM pg_stat_activity WHERE pid = $bpid",
		'Lock advisory', 30, 'fill race: B read the token and waits before filling');
	if ($revoke)
	{
		is(p("SELECT tokenstore.token_delete('$token')"), 't', 'fill race: the token is revoked on the primary');
		catchup();
		is(answers($standby2, $db, $token), '-', 'fill race: standby2 sees it');
	}
	$holder->query_safe('SELECT pg_advisory_unlock(7370)');
	my $out = $held->query_until(qr/checked\n/, '');
	$out =~ s/\s*checked\n$//;
	$holder->quit;
	$held->quit;
	return ($out, sv($standby1, 'entries') - $before);
}

my ($fresh, $raced) = split / /, p(
	"SELECT tokenstore.token_make('fay') || ' ' || tokenstore.token_make('ray')");
catchup();
my ($answer, $added) = hold_fill($fresh, 0);
is($answer, 'fay', 'fill race, no revocation: B answers the user');
is($added, 1, 'and fills the cache');
my $hits = sv($standby1, 'hits');
is(answers($standby1, $db, $fresh), 'fay', 'the next check answers');
cmp_ok(sv($standby1, 'hits') - $hits, '>=', 1, 'from the cache');

($answer, $added) = hold_fill($raced, 1);
like($answer, qr/^(ray|dead)$/, "fill race: B answers what it read ($answer)");
is($added, 0, 'fill race: the fill after the revocation was not inserted');
is(answers($standby1, $db, $raced), '-', 'fill race: the next check on standby1 answers NULL');
like(stale($standby1, $db, $raced), qr{^0/\d+$}, 'fill race: and so do 2,000 more');

# ---- 5. an idle timeout kept alive by checks on a standby only ----

my $idler = p("SELECT tokenstore.token_make('idler', idle_timeout => '4 seconds')");
my $made_at = p('SELECT last_used_at FROM tokenstore.token WHERE ' . row_of($idler));
catchup();
my $idle_before = TokenstoreTest::stats($standby1, $db);
my $start = time;
my ($checks, $moved, @dead) = (0, 'f');
while (1)
{
	my $ans = answers($standby1, $db, $idler);
	my $elapsed = time - $start;

	$checks++;
	push @dead, sprintf('%.1f s: %s', $elapsed, $ans) if $ans ne 'idler';
	$moved = p("SELECT last_used_at >= '$made_at'::timestamptz + interval '5 seconds' "
		  . 'FROM tokenstore.token WHERE ' . row_of($idler))
	  if $elapsed > 5;
	last if ($elapsed >= 10 && $moved eq 't') || $elapsed > 30;
	usleep(500_000);    # a user's next request, not a wait for anything
}
my $idle_after = TokenstoreTest::stats($standby1, $db);
note(sprintf('idle timeout: %d checks on standby1 in %.1f s: %d hits, %d fills', $checks, time - $start,
		$idle_after->{hits} - $idle_before->{hits}, $idle_after->{fills} - $idle_before->{fills}));
cmp_ok($idle_after->{hits} - $idle_before->{hits}, '>=', $checks - 1,
	'idle timeout: standby1 answered from its cache throughout (its uses, written on the primary, '
	  . 'do not push its entry out)');
is(scalar(@dead), 0, 'idle timeout 4 s: every check on standby1, one each half second for 10 s, answered')
  or diag(first_ten(@dead));
is($moved, 't', 'the primary\'s table has the standby\'s uses (last_used_at moved 5 s on)');
is(p("SELECT tokenstore.token_user('$idler')"), 'idler',
	'and the primary still answers the token, idle there for 10 s and more');
cmp_ok(sv($standby1, 'rows_flushed'), '>', 0, 'standby1 counts the uses it sent');

# ---- 6. uses wait while the primary is down ----

my $pete = p("SELECT tokenstore.token_make('pete')");
catchup();
is(answers($standby1, $db, $pete), 'pete', 'primary down: the token is cached on standby1 first');
$primary->stop('fast');
my $t6 = s1('SELECT clock_timestamp()');
$hits = sv($standby1, 'hits');
is(answers($standby1, $db, $pete), 'pete', 'primary down: standby1 still answers');
cmp_ok(sv($standby1, 'hits') - $hits, '>=', 1, 'primary down: from its cache');
cmp_ok(sv($standby1, 'dirty'), '>=', 1, 'primary down: the use waits on standby1');
$primary->start;
TokenstoreTest::wait_for_within($primary, $db,
	"SELECT last_used_at >= '$t6' FROM tokenstore.token WHERE " . row_of($pete),
	't', 30, 'primary back: the use made while it was down reaches its table');
TokenstoreTest::wait_for_within($standby1, $db,
	'SELECT dirty FROM tokenstore.stats WHERE datname = current_database()',
	'0', 30, 'primary back: nothing waits on standby1');
catchup();

# ---- 6b. the primary restarted with standby_cache off, then on again ----

# Off: the primary stops logging its changes; before its first change it
# tells the standbys, which empty their caches and answer from the table.
my @offs = split / /, p("SELECT string_agg(tokenstore.token_make('otto'), ' ') FROM generate_series(1, 2)");
catchup();
prime('standby_cache off', \@offs, 'otto otto');
$primary->adjust_conf('postgresql.conf', 'tokenstore.standby_cache', 'off');
$primary->restart;
is(sv($primary, 'standby_cache'), 'off', 'standby_cache off: the primary says so');
is(p("SELECT tokenstore.token_delete('$offs[0]')"), 't', 'standby_cache off: its first revocation');
catchup();
dead('standby_cache off: the first revocation', $offs[0]);
for my $node (@standbys)
{
	is(sv($node, 'standby_cache'), 'off', 'standby_cache off: ' . $node->name . ' turned its cache off');
	is(sv($node, 'entries'), '0', 'standby_cache off: ' . $node->name . '\'s cache is empty');
}
is(p("SELECT tokenstore.token_delete('$offs[1]')"), 't', 'standby_cache off: a revocation logged nowhere');
catchup();
dead('standby_cache off: the revocation logged nowhere', $offs[1]);
my $otto = p("SELECT tokenstore.token_make('otto')");
catchup();
for my $node (@standbys)
{
	my $before = sv($node, 'hits');
	is(answers($node, $db, $otto, $otto), 'otto otto', 'standby_cache off: ' . $node->name . ' answers from its table');
	is(sv($node, 'hits') - $before, 0, 'standby_cache off: ' . $node->name . ' does not use its cache');
}

# On again: the standbys turn their caches on, and follow revocations
$primary->adjust_conf('postgresql.conf', 'tokenstore.standby_cache', 'on');
$primary->restart;
wait_on($_, 'standby_cache on again: ' . $_->name . ' turns its cache on') for @standbys;
catchup();
prime('standby_cache on again', [$otto], 'otto');
change("SELECT tokenstore.token_delete('$otto')");
dead('standby_cache on again', $otto);

# ---- 7. an immediate stop of the primary under a revocation load ----

# maker(FILE, NAME, STOP): on the primary, makes tokens for users NAME-0
# .. NAME-4 and revokes some, 60 operations a second, until STOP exists or
# the server goes: "make TOKEN USER", "try TOKEN" (a revocation was sent),
# "delete TOKEN" (acknowledged), "err ..."
sub maker
{
	my ($file, $name, $stop) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($primary, $db);
	my $deadline = time + 90;
	my $next = time;
	my @live;

	while (!-e $stop && time < $deadline)
	{
		$next += 1 / 60;
		usleep(($next - time) * 1e6) if $next > time;
		if (@live < 5 || rand() < 0.6)
		{
			my $user = "$name-" . int(rand 5);
			my ($st, @out) = $s->query("SELECT tokenstore.token_make('$user');");
			last if $st eq 'lost';
			if ($st eq 'ok' && @out == 1 && $out[0] =~ /^(tks_\S+)$/)
			{
				print $log "make $1 $user\n";
				push @live, $1;
			}
			else
			{
				print $log "err make: @out\n";
			}
		}
		else
		{
			my $t = splice(@live, int(rand @live), 1);
			print $log "try $t\n";
			my ($st, @out) = $s->query("SELECT tokenstore.token_delete('$t');");
			last if $st eq 'lost';
			print $log ($st eq 'ok' && "@out" eq 't' ? "delete $t\n" : "err delete $t: @out\n");
		}
	}
	return;
}

# checker(FILE, NODE, LOGS, STOP): on NODE, checks 20 of the tokens the
# makers logged, in one statement, 50 times a second: "ok" or "err ..."
sub checker
{
	my ($file, $node, $logs, $stop) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($node, $db);
	my $deadline = time + 90;
	my $next = time;
	my @known;
	my $round = 0;

	while (!-e $stop && time < $deadline)
	{
		$next += 1 / 50;
		usleep(($next - time) * 1e6) if $next > time;
		@known = map { /^make (\S+) / ? $1 : () } TokenstoreLoad::lines(@$logs)
		  if $round++ % 10 == 0;
		next unless @known;
		my @pick = map { $known[ int(rand @known) ] } 1 .. 20;
		my ($st, @out) = $s->query('SELECT count(tokenstore.token_user(t)) FROM unnest(' . arr(@pick) . ') t;');
		last if $st eq 'lost';
		print $log ($st eq 'ok' ? "ok\n" : "err @out\n");
	}
	return;
}

# round_state(LOGS): token => [user, 'live' | 'revoked' | 'doubt'] and the
# "err" lines
sub round_state
{
	my %state;
	my @err;

	for my $line (TokenstoreLoad::lines(@_))
	{
		if ($line =~ /^make (\S+) (\S+)$/) { $state{$1} = [ $2, 'live' ]; }
		elsif ($line =~ /^try (\S+)$/) { $state{$1}[1] = 'doubt'; }
		elsif ($line =~ /^delete (\S+)$/) { $state{$1}[1] = 'revoked'; }
		elsif ($line =~ /^err /) { push @err, $line; }
	}
	return (\%state, \@err);
}

# agree(WHAT, STATE, NODES): every token of the round answers on each of
# NODES as that node's table says, and as the primary answers; acknowledged
# tokens answer their user, acknowledged revocations hold.
sub agree
{
	my ($what, $state, @nodes) = @_;
	my @t = sort keys %$state;
	my $table = 'SELECT string_agg(coalesce((SELECT user_id FROM tokenstore.token WHERE token_hash = '
	  . "sha256(convert_to(t, 'UTF8')) AND (expires_at IS NULL OR expires_at > now())), '-'), ' ' ORDER BY n) "
	  . 'FROM unnest(' . arr(@t) . ') WITH ORDINALITY AS u(t, n)';
	my @primary = split / /, answers($primary, $db, @t);
	my (@ack, %count);
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	for my $k (0 .. $#t)
	{
		my ($user, $st) = @{ $state->{ $t[$k] } };
		$count{$st}++;
		next if $st eq 'doubt';
		my $want = $st eq 'live' ? $user : '-';
		push @ack, "$t[$k] ($st, $user): the primary answers $primary[$k]" if $primary[$k] ne $want;
	}
	note(sprintf('%s: %d tokens, %d acknowledged live, %d acknowledged revoked, %d in doubt',
			$what, scalar(@t), $count{live} // 0, $count{revoked} // 0, $count{doubt} // 0));
	is(scalar(@ack), 0, "$what: the primary answers every acknowledged token and revocation")
	  or diag(first_ten(@ack));
	for my $node (@nodes)
	{
		my @answer = split / /, answers($node, $db, @t);
		my @row = split / /, $node->safe_psql($db, $table);
		my @bad;

		for my $k (0 .. $#t)
		{
			push @bad, "$t[$k]: " . $node->name . " answers $answer[$k], its table says $row[$k], the primary $primary[$k]"
			  if $answer[$k] ne $row[$k] || $answer[$k] ne $primary[$k];
		}
		is(scalar(@bad), 0, "$what: " . $node->name . ' answers all ' . scalar(@t)
			  . ' tokens as its table and the primary do')
		  or diag(first_ten(@bad));
	}
}

my $stop7 = "$logdir/stop-crash";
my @crash_logs = map { "$logdir/crash-make-$_.log" } 1 .. 2;
my @makers = map {
	my $i = $_;
	TokenstoreLoad::spawn(sub { maker($crash_logs[ $i - 1 ], "crash$i", $stop7) })
} 1 .. 2;
my $check7 = TokenstoreLoad::spawn(sub { checker("$logdir/crash-check.log", $standby1, \@crash_logs, $stop7) });
# At least 100 revocations since the last checkpoint (the restart of 6b):
# more transactions to replay than the server has connection slots.
$wait_until = time + 60;
usleep(50_000)
  while (grep { /^delete / } TokenstoreLoad::lines(@crash_logs)) < 100 && time < $wait_until;
my ($state7) = round_state(@crash_logs);
cmp_ok(scalar(grep { $_->[1] eq 'revoked' } values %$state7), '>=', 100,
	'crash: the makers made and revoked tokens on the primary');
$primary->stop('immediate');
is(TokenstoreLoad::reap(\@makers, 30), 0, 'crash: the makers saw the primary go');
ok($primary->start(fail_ok => 1), 'crash: the primary starts again (its crash recovery ends)')
  or die "the primary did not start again after an immediate stop\n";
catchup();
open $fh, '>', $stop7 or die $!;
close $fh;
is(TokenstoreLoad::reap([$check7], 30), 0, 'crash: the checker on standby1 stopped');
my ($errors7);
($state7, $errors7) = round_state(@crash_logs, "$logdir/crash-check.log");
is(scalar(@$errors7), 0, 'crash: no client met an error before the stop') or diag(first_ten(@$errors7));
cmp_ok(scalar(grep { /^ok$/ } TokenstoreLoad::lines("$logdir/crash-check.log")), '>=', 20,
	'crash: the checker checked on standby1 meanwhile');
note('crash: standby_cache after the restart: ' . join(', ', map { $_->name . ' ' . sv($_, 'standby_cache') } @standbys));
agree('after an immediate stop of the primary', $state7, @standbys);

# ---- 8. a standby from a base backup taken under load ----

my $stop8 = "$logdir/stop-busy";
my @busy_logs = map { "$logdir/busy-make-$_.log" } 1 .. 2;
@makers = map {
	my $i = $_;
	TokenstoreLoad::spawn(sub { maker($busy_logs[ $i - 1 ], "busy$i", $stop8) })
} 1 .. 2;
my $check8 = TokenstoreLoad::spawn(sub { checker("$logdir/busy-check.log", $primary, \@busy_logs, $stop8) });
$wait_until = time + 60;
usleep(50_000)
  while (grep { /^(make|delete) / } TokenstoreLoad::lines(@busy_logs)) < 60 && time < $wait_until;
my $busy_hits = sv($primary, 'hits');
# a transaction that runs when the new standby replays its first "on"
# record: the standby settles until it has ended
my $open = $primary->background_psql($db);
$open->query_safe('BEGIN; SELECT txid_current()');
$primary->backup('busy');
my $standby3 = PostgreSQL::Test::Cluster->new('standby3');
$standby3->init_from_backup($primary, 'busy', has_streaming => 1);
$standby3->start;
push @direct, $standby3;
TokenstoreTest::wait_for_within($standby3, $db,
	'SELECT standby_cache FROM tokenstore.stats WHERE datname = current_database()',
	'settling', 30, 'busy backup: the new standby settles');
catchup();
is(sv($standby3, 'standby_cache'), 'settling',
	'busy backup: and stays so, replay caught up, while a transaction that ran then is open');
$open->query_safe('COMMIT');
$open->quit;
wait_on($standby3, 'busy backup: once it ended, the new standby turns its cache on');
cmp_ok(sv($primary, 'hits') - $busy_hits, '>', 0, 'busy backup: the primary\'s cache was busy meanwhile');
open $fh, '>', $stop8 or die $!;
close $fh;
is(TokenstoreLoad::reap([ @makers, $check8 ], 30), 0, 'busy backup: the load stopped');
catchup();
my ($state8, $errors8) = round_state(@busy_logs, "$logdir/busy-check.log");
is(scalar(@$errors8), 0, 'busy backup: no client met an error') or diag(first_ten(@$errors8));
agree('busy backup', $state8, $standby3);
# ten live tokens: those the load left live, and new ones if it left fewer
my @live8 = grep { $state8->{$_}[1] eq 'live' } sort keys %$state8;
splice(@live8, 10) if @live8 > 10;
my @users8 = map { $state8->{$_}[0] } @live8;
if (@live8 < 10)
{
	my $more = 10 - @live8;
	push @live8, split /\n/, p("SELECT tokenstore.token_make('busy-more') FROM generate_series(1, $more)");
	push @users8, ('busy-more') x $more;
	catchup();
}
my $users8 = join(' ', @users8);
is(answers($standby3, $db, @live8), $users8, 'busy backup: ten live tokens answer on the new standby');
$hits = sv($standby3, 'hits');
answers($standby3, $db, @live8);
cmp_ok(sv($standby3, 'hits') - $hits, '>=', 10, 'busy backup: from its cache');
is(p('SELECT count(*) FILTER (WHERE tokenstore.token_delete(t)) FROM unnest(' . arr(@live8) . ') t'),
	'10', 'busy backup: revoked on the primary');
catchup();
like(stale($standby3, $db, @live8), qr{^0/\d+$}, 'busy backup: dead on the new standby at once');

# ---- 10. standbys without the preload ----

# (a) standby_cache off: nothing of tokenstore in WAL, such a standby replays
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init(allows_streaming => 1);
$plain->append_conf('postgresql.conf', "shared_preload_libraries = 'tokenstore'\n");
$plain->start;
$plain->safe_psql($db, 'CREATE EXTENSION tokenstore');
is(sv($plain, 'standby_cache'), 'off', 'standby_cache is off by default');
my $plain_token = $plain->safe_psql($db, "SELECT tokenstore.token_make('paula')");
$plain->backup('plain');
my $plain_standby = PostgreSQL::Test::Cluster->new('plain_standby');
$plain_standby->init_from_backup($plain, 'plain', has_streaming => 1);
$plain_standby->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$plain_standby->start;
$plain->safe_psql($db, "SELECT tokenstore.token_make('quinn')");
$plain->wait_for_catchup($plain_standby);
is(answers($plain_standby, $db, $plain_token), 'paula',
	'standby_cache off: a standby without the preload answers from its table');
$plain->safe_psql($db, "SELECT tokenstore.token_delete('$plain_token')");
$plain->wait_for_catchup($plain_standby);
is(answers($plain_standby, $db, $plain_token), '-', 'and replays the revocation');
unlike(slurp_file($plain_standby->logfile), qr/resource manager/, 'no word of a resource manager in its log');
$plain_standby->stop;
$plain->stop;

# (b) standby_cache on: a standby without the preload stops at the first
# tokenstore record
$primary->backup('nopreload');
my $nopreload = PostgreSQL::Test::Cluster->new('nopreload');
$nopreload->init_from_backup($primary, 'nopreload', has_streaming => 1);
$nopreload->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
my $started = $nopreload->start(fail_ok => 1);
note('without the preload, the standby ' . ($started ? 'started' : 'did not even start'));
my $victim = p("SELECT tokenstore.token_make('victor')");
p("SELECT tokenstore.token_delete('$victim')");
my $logged = 0;
$wait_until = time + 30;
while (!$logged && time < $wait_until)
{
	$logged = slurp_file($nopreload->logfile) =~ /resource manager with ID 128 not registered/;
	usleep(100_000) unless $logged;
}
ok($logged, 'without the preload: the standby\'s log says "resource manager with ID 128 not registered"');
my $pidfile = $nopreload->data_dir . '/postmaster.pid';
$wait_until = time + 30;
usleep(100_000) while -e $pidfile && time < $wait_until;
ok(!-e $pidfile, 'and the standby shut down');
$nopreload->stop('immediate', fail_ok => 1);

# ---- 9. promotion (the primary gone) ----

my ($y1, $y2) = split / /, p("SELECT tokenstore.token_make('yuri') || ' ' || tokenstore.token_make('yves')");
catchup();
is(answers($standby3, $db, $y1, $y2), 'yuri yves', 'promotion: two tokens cached on standby3');
$primary->stop('fast');
my $t9 = $standby3->safe_psql($db, 'SELECT clock_timestamp()');
is(answers($standby3, $db, $y1), 'yuri', 'promotion: the primary down, standby3 answers');
cmp_ok(sv($standby3, 'dirty'), '>=', 1, 'promotion: the use waits');
$standby3->promote;
$standby3->poll_query_until($db, 'SELECT NOT pg_is_in_recovery()')
  or die 'standby3 was not promoted';
TokenstoreTest::wait_for_within($standby3, $db,
	"SELECT last_used_at >= '$t9' FROM tokenstore.token WHERE " . row_of($y1),
	't', 30, 'promotion: the use recorded before reaches its own table');
$hits = sv($standby3, 'hits');
is(answers($standby3, $db, $y1, $y2), 'yuri yves', 'promotion: the cached tokens still answer');
note('promotion: hits of those checks ' . (sv($standby3, 'hits') - $hits));
is($standby3->safe_psql($db, "SELECT tokenstore.token_delete('$y2')"), 't',
	'promotion: a revocation on the promoted server');
like(stale($standby3, $db, $y2), qr{^0/\d+$}, 'promotion: is seen at once');
my $new = $standby3->safe_psql($db, "SELECT tokenstore.token_make('zoe')");
$hits = sv($standby3, 'hits');
is(answers($standby3, $db, $new), 'zoe', 'promotion: a token made there answers');
cmp_ok(sv($standby3, 'hits') - $hits, '>=', 1, 'promotion: from the cache');
is(sv($standby3, "standby_cache || ' ' || coalesce(cache_lag::text, 'null')"), 'on null',
	'promotion: its stats are a primary\'s');

note(sprintf('020_standby_cache ran in %.0f s', time - $begin));
done_testing();
