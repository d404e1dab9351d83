# A cache far smaller than the tokens in use (tokenstore.max_cached_tokens =
# 100) costs speed, never answers: every check of 500 tokens returns its
# user, tokens the cache refuses are served and their uses recorded from the
# table, and the stats view counts the refusals and the misses.  In the
# background the launcher keeps the cache below capacity: above 90 % it
# evicts the least recently used clean entries (judged by the age of their
# last use, in log2 buckets) down to 80 % or less, and a recently used entry
# stays; expired entries go without anyone checking them.  The same for the
# payload area (a session's info and data), which also holds the end of a
# user id longer than an entry does.  Without a cache
# (max_cached_tokens = 0) every function, and the DDL that drops the table or
# a database, works on the table alone.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreTest;

my $node = TokenstoreTest::node('cache_full',
	conf => "tokenstore.max_cached_tokens = 100\n"
	  . "tokenstore.flush_interval = '200ms'\n");
my $db = 'postgres';
my $s;

sub stats { return TokenstoreTest::stats($node, $db); }

$node->safe_psql($db,
	'CREATE TABLE made (user_id text PRIMARY KEY, token text NOT NULL)');
# "SELECT count of right answers, count" over the tokens of users LIKE $1.
sub check_all
{
	my ($like, $set) = @_;
	return $node->safe_psql($db, ($set // '') . qq{
		SELECT count(*) FILTER (WHERE u IS NOT DISTINCT FROM user_id) || '/' || count(*)
		  FROM (SELECT user_id, tokenstore.token_user(token) AS u
				  FROM made WHERE user_id LIKE '$like' ORDER BY user_id) c});
}

$s = stats();
is("$s->{capacity}/$s->{entries}", '100/0', 'the cache holds 100 tokens and starts empty');

# ---- least recently used first ----
# 85 tokens and one more; a new token is cached at commit, clean.
$node->safe_psql($db, q{
	INSERT INTO made SELECT 'old' || i, tokenstore.token_make('old' || i)
	  FROM generate_series(1, 85) i;
	INSERT INTO made VALUES ('recent', tokenstore.token_make('recent'));
});
$s = stats();
is("$s->{entries}/$s->{dirty}", '86/0', 'new tokens are cached at commit, clean');
# Eviction judges ages in log2 buckets: let the entries get 2 s old, so that
# a use now is in a younger bucket than theirs.
TokenstoreTest::wait_for($node, $db,
	"SELECT now() - max(created_at) > interval '2 s' FROM tokenstore.token",
	't', 'the cached entries age');
my $before = stats();
is(check_all('recent'), '1/1', 'the recent token is used');
$node->safe_psql($db, 'SELECT tokenstore.token_flush()');
is(stats()->{dirty}, '0', 'and its use written, so its entry is clean (evictable)');
# Ten new tokens take the cache to 96 entries, above 90 %.
$node->safe_psql($db, q{
	INSERT INTO made SELECT 'new' || i, tokenstore.token_make('new' || i)
	  FROM generate_series(1, 10) i;
});
TokenstoreTest::wait_for($node, $db,
	"SELECT evictions > $before->{evictions} FROM tokenstore.stats WHERE datname = current_database()",
	't', 'above 90 % of capacity the launcher evicts');
$s = stats();
cmp_ok($s->{entries}, '<=', 80, 'down to 80 % or less');
cmp_ok($s->{evictions} - $before->{evictions}, '>=', 16, 'at least the 16 entries above 80 %');
$before = $s;
is(check_all('recent') . ',' . check_all('new%'), '1/1,10/10',
	'the recently used and the new tokens answer');
$s = stats();
is(($s->{hits} - $before->{hits}) . '/' . ($s->{misses} - $before->{misses}),
	'11/0', 'from the cache: the least recently used entries went, not them');
$before = $s;
is(check_all('old%'), '85/85', 'the old tokens answer');
$s = stats();
cmp_ok($s->{misses} - $before->{misses}, '>=', 16,
	'from the table, for the evicted ones');

# ---- 500 tokens in a cache of 100 ----
$before = stats();
$node->safe_psql($db, q{
	INSERT INTO made SELECT 'full' || i, tokenstore.token_make('full' || i)
	  FROM generate_series(1, 500) i;
});
$s = stats();
cmp_ok($s->{entries}, '<=', 100, 'the cache never holds more than its capacity');
cmp_ok($s->{refused} - $before->{refused}, '>', 0, 'new tokens beyond capacity are refused');
is(($s->{fills} - $before->{fills}) + ($s->{refused} - $before->{refused}), 500,
	'each new token was cached or counted as refused');

# Every check answers; with touch_interval = 0 the uses of the tokens the
# cache refuses are written to the table at once, those of cached ones by the
# worker's flush.
$before = stats();
is(check_all('full%', 'SET tokenstore.touch_interval = 0;'), '500/500',
	'every one of 500 checks returns its user');
$s = stats();
cmp_ok($s->{entries}, '<=', 100, 'the cache still holds at most its capacity');
is(($s->{hits} - $before->{hits}) + ($s->{misses} - $before->{misses}), 500,
	'each check is a hit or a miss');
cmp_ok($s->{misses} - $before->{misses}, '>=', 400,
	'at least the 400 tokens beyond capacity are misses');
cmp_ok($s->{refused} - $before->{refused}, '>', 0, 'checks that could not fill the cache count as refused');
is(check_all('full%'), '500/500', 'and a second round answers the same');
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id LIKE 'full%' AND last_used_at > created_at",
	'500', 'every use reaches the table, from the cache or not');

# The checks filled the cache to capacity with dirty entries; once flushed
# they are evictable, and the launcher brings the cache down.
TokenstoreTest::wait_for($node, $db,
	"SELECT entries <= 80 AND dirty = 0 AND evictions > $before->{evictions} FROM tokenstore.stats WHERE datname = current_database()",
	't', 'the launcher evicts down to 80 % once the uses are flushed');

# ---- expired entries ----
$before = stats();
$node->safe_psql($db, q{
	INSERT INTO made SELECT 'short' || i, tokenstore.token_make('short' || i, ttl => '2 s')
	  FROM generate_series(1, 3) i;
	INSERT INTO made SELECT 'idle' || i, tokenstore.token_make('idle' || i, idle_timeout => '2 s')
	  FROM generate_series(1, 3) i;
});
is(stats()->{cached} - $before->{cached}, 6, 'short-lived tokens are cached');
TokenstoreTest::wait_for($node, $db,
	"SELECT cached = $before->{cached} AND evictions >= $before->{evictions} + 6 FROM tokenstore.stats WHERE datname = current_database()",
	't', 'expired entries are dropped without a check');
is($node->safe_psql($db,
		"SELECT count(tokenstore.token_user(token)) FROM made WHERE user_id ~ '^(short|idle)'"),
	'0', 'and the expired tokens are dead');
is(check_all('%'), '596/602', 'all other tokens still answer');

# ---- a payload area far smaller than the sessions' data ----
# 64 kB holds about 240 chunks of 200 bytes: a few dozen sessions of 1 kB.
# Every find returns its data; those whose data the area refused are read
# from the table; above 90 % of the area the launcher evicts the least
# recently used entries with their data, however few the entries.  Without
# an area (max_cached_data = 0) the entries are cached and the data read.
for my $area ('64kB', '0')
{
	my $small = TokenstoreTest::node("payload_$area",
		conf => "tokenstore.max_cached_tokens = 1000\n"
		  . "tokenstore.max_cached_data = '$area'\n"
		  . "tokenstore.flush_interval = '200ms'\n"
		  . "tokenstore.last_used_resolution = 0\n");
	my $finds = q{
		SELECT count(*) FILTER (WHERE tokenstore.token_data('payload-session-' || lpad(i::text, 8, '0')) =
								convert_to(repeat(i::text, 1000 / length(i::text)), 'UTF8'))
			   || '/' || count(*)
		  FROM generate_series(1, 100) i};
	my $first;

	# A user id longer than an entry holds keeps its end in a chunk of the
	# area: without an area, its token is not cached, and still checked.
	my $long_user = 'u' x 64;
	my $long = $small->safe_psql($db, "SELECT tokenstore.token_make('$long_user')");
	my $before_long = TokenstoreTest::stats($small, $db);
	is($small->safe_psql($db,
			"SELECT tokenstore.token_user('$long') FROM generate_series(1, 3)"),
		join("\n", ($long_user) x 3), "area $area: a 64-byte user id is checked right");
	my $after_long = TokenstoreTest::stats($small, $db);
	is(($after_long->{hits} - $before_long->{hits}) . '/' . ($after_long->{misses} - $before_long->{misses}),
		$area eq '0' ? '0/3' : '3/0',
		"area $area: " . ($area eq '0' ? 'from the table' : 'from the cache'));
	$small->safe_psql($db, q{
		SELECT tokenstore.token_save('payload-session-' || lpad(i::text, 8, '0'), NULL,
									 convert_to(repeat(i::text, 1000 / length(i::text)), 'UTF8'),
									 now() + interval '1 hour')
		  FROM generate_series(1, 100) i});
	$first = TokenstoreTest::stats($small, $db);
	is($small->safe_psql($db, $finds), '100/100', "area $area: every find returns its data");
	$s = TokenstoreTest::stats($small, $db);
	is($s->{hits} + $s->{misses} - $first->{hits} - $first->{misses}, 100,
		"area $area: each find is a hit or a miss");
	if ($area eq '0')
	{
		is("$s->{cached}/" . ($s->{misses} - $first->{misses}), '100/100',
			'no area: the entries are cached, the data read from the table');
		next;
	}
	cmp_ok($s->{hits} - $first->{hits}, '>=', 20, 'some finds are served by the area');
	cmp_ok($s->{misses} - $first->{misses}, '>=', 50, 'the rest read the table');
	TokenstoreTest::wait_for($small, $db,
		"SELECT evictions > 0 FROM tokenstore.stats WHERE datname = current_database()",
		't', 'a full area makes the launcher evict, with 100 entries of 1000');
	is($small->safe_psql($db, $finds), '100/100', 'and every find still returns its data');
}

# ---- no cache ----
my $bare = TokenstoreTest::node('no_cache',
	conf => "tokenstore.max_cached_tokens = 0\ntokenstore.flush_interval = '200ms'\n");
$s = TokenstoreTest::stats($bare, $db);
is("$s->{capacity}/$s->{entries}/$s->{cached}", '0/0/0', 'max_cached_tokens = 0: no cache');
my $token = $bare->safe_psql($db,
	"SELECT tokenstore.token_make('alice', '{\"device\": \"laptop\"}', ttl => '1 day')");
is($bare->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice', 'token_user');
is($bare->safe_psql($db,
		"SELECT user_id || ' ' || (info->>'device') || ' ' || (expires_at > now()) FROM tokenstore.token_check('$token')"),
	'alice laptop true', 'token_check');
my $stored = "SELECT last_used_at FROM tokenstore.token WHERE user_id = 'alice'";
my $used = $bare->safe_psql($db, $stored);
$bare->safe_psql($db,
	"SET tokenstore.touch_interval = 0; SELECT tokenstore.token_user('$token')");
is($bare->safe_psql($db, "SELECT ($stored) > '$used'"), 't',
	'a check records its use in the table');
is($bare->safe_psql($db, "SELECT tokenstore.token_refresh('$token', '2 days')"), 't', 'token_refresh');
is($bare->safe_psql($db, "SELECT tokenstore.token_set_info('$token', '{\"device\": \"phone\"}')"),
	't', 'token_set_info');
is($bare->safe_psql($db,
		"SELECT (info->>'device') || ' ' || (expires_at > now() + interval '1 day') FROM tokenstore.token_list('alice')"),
	'phone true', 'token_list shows the new info and deadline');
my $rotated = $bare->safe_psql($db, "SELECT tokenstore.token_rotate('$token')");
is($bare->safe_psql($db,
		"SELECT coalesce(tokenstore.token_user('$token'), 'dead') || ' ' || tokenstore.token_user('$rotated')"),
	'dead alice', 'token_rotate: the old token is dead, the new one works');
is($bare->safe_psql($db,
		"SELECT tokenstore.token_delete_id(token_id) FROM tokenstore.token_list('alice')"),
	't', 'token_delete_id');
is($bare->safe_psql($db, "SELECT tokenstore.token_user('$rotated')"), '', 'revoked by id');
my $one = $bare->safe_psql($db, "SELECT tokenstore.token_make('bob')");
my $two = $bare->safe_psql($db, "SELECT tokenstore.token_make('bob', mode => 'single')");
is($bare->safe_psql($db,
		"SELECT coalesce(tokenstore.token_user('$one'), 'dead') || ' ' || tokenstore.token_user('$two')"),
	'dead bob', 'single mode revokes the other tokens');
my $share = $bare->safe_psql($db, "SELECT tokenstore.token_make('carol', mode => 'share')");
is($bare->safe_psql($db, "SELECT tokenstore.token_make('carol', mode => 'share')"),
	$share, 'share mode hands out the same token');
is($bare->safe_psql($db, "SELECT tokenstore.token_delete('$share')"), 't', 'token_delete');
is($bare->safe_psql($db, "SELECT tokenstore.token_user('$share')"), '', 'revoked');
$bare->safe_psql($db, "SELECT tokenstore.token_make('dave') FROM generate_series(1, 3)");
is($bare->safe_psql($db, "SELECT tokenstore.token_delete_user('dave')"), '3', 'token_delete_user');
$bare->safe_psql($db, q{
	SELECT tokenstore.token_make('erin');
	UPDATE tokenstore.token SET expires_at = now() - interval '1 s' WHERE user_id = 'erin';
});
is($bare->safe_psql($db, 'SELECT tokenstore.token_sweep()'), '1', 'token_sweep');
is($bare->safe_psql($db, 'SELECT tokenstore.token_flush()'), '0', 'token_flush has nothing to do');
is($bare->safe_psql($db, "SELECT tokenstore.token_user('$two')"), 'bob',
	'the remaining token works');

# DDL that purges the cache has no cache to purge.
my $log_offset = -s $bare->logfile;
my ($ret, $out, $err) = $bare->psql($db, 'CREATE DATABASE scratch');
is($ret, 0, 'CREATE DATABASE');
($ret, $out, $err) = $bare->psql($db, 'DROP DATABASE scratch');
is($ret, 0, 'DROP DATABASE without a cache') or diag($err);
($ret, $out, $err) = $bare->psql($db, 'DROP EXTENSION tokenstore; CREATE EXTENSION tokenstore');
is($ret, 0, 'DROP EXTENSION without a cache') or diag($err);
unlike(TokenstoreTest::log_since($bare, $log_offset),
	qr/terminated by signal|terminating any other active server processes/,
	'no server process crashed');

done_testing();
