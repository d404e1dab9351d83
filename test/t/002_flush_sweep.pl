# The worker's two jobs.  Flush: a cached check records its use in shared
# memory only; the worker (or token_flush()) writes it to the table, and
# the stats view counts it.  Sweep: expired tokens are deleted without
# anyone calling token_sweep(), but a token in constant use is never swept
# however stale its row would be without the flush (kktoken's bug).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreTest;

my $node = TokenstoreTest::node('flush_sweep',
	conf => "tokenstore.flush_interval = '1h'\ntokenstore.sweep_interval = '1h'\n");
my $db = 'postgres';
my $stats = "SELECT %s FROM tokenstore.stats WHERE datname = current_database()";

is($node->safe_psql($db,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore launcher'"),
	'1', 'the launcher shows in pg_stat_activity');
# CREATE EXTENSION had the launcher run a first worker here; after it,
# nothing flushes for an hour.
TokenstoreTest::wait_for($node, $db, sprintf($stats, 'last_flush IS NOT NULL'),
	't', 'the first worker ran soon after CREATE EXTENSION');

my $token = $node->safe_psql($db, "SELECT tokenstore.token_make('alice')");
my $row = "FROM tokenstore.token WHERE token_hash = sha256(convert_to('$token', 'UTF8'))";
my $stored = $node->safe_psql($db, "SELECT last_used_at $row");
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice', 'a check');
is($node->safe_psql($db, "SELECT last_used_at = '$stored' $row"),
	't', 'a cached check writes nothing to the table');
is($node->safe_psql($db,
		"SELECT last_used_at > '$stored' FROM tokenstore.token_check('$token')"),
	't', 'but the functions see the use');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '1', 'the use is dirty');
is($node->safe_psql($db, 'SELECT tokenstore.token_flush()'), '1', 'token_flush writes one row');
is($node->safe_psql($db, "SELECT last_used_at > '$stored' $row"),
	't', 'the use is in the table');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '0', 'nothing is dirty');
is($node->safe_psql($db, 'SELECT tokenstore.token_flush()'), '0', 'a second flush writes nothing');

# The worker flushes on its own, every flush_interval (reloaded), each use
# that the table lags by last_used_resolution: with an hour, a use of a
# token without an idle timeout waits (dirty, saved at shutdown), one of a
# token with a 20-second idle timeout is written at two seconds' lag.
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.flush_interval = '200ms'");
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.last_used_resolution = '1h'");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
my $idle = $node->safe_psql($db, "SELECT tokenstore.token_make('idle20', idle_timeout => '20 s')");
my $idle_stored = $node->safe_psql($db, "SELECT last_used_at FROM tokenstore.token WHERE user_id = 'idle20'");
$stored = $node->safe_psql($db, "SELECT last_used_at $row");
sleep 3;    # a lag of more than a tenth of the idle timeout
$node->safe_psql($db, "SELECT tokenstore.token_user('$token'), tokenstore.token_user('$idle')");
TokenstoreTest::wait_for($node, $db,
	"SELECT last_used_at > '$idle_stored' FROM tokenstore.token WHERE user_id = 'idle20'",
	't', 'an idle token\'s use is written once the table lags it by a tenth of its timeout');
is($node->safe_psql($db, "SELECT last_used_at = '$stored' $row"), 't',
	'a use the table lags by less than the resolution is not written');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '1', 'it stays dirty');
# gone before its idle deadline comes due: moving a due sweep bound later
# is an update of an indexed column, which would spoil the HOT count below
$node->safe_psql($db, "SELECT tokenstore.token_delete('$idle')");
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.last_used_resolution = 0");
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.sweep_interval = '1s'");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
my $flushed = $node->safe_psql($db, sprintf($stats, 'rows_flushed'));
$stored = $node->safe_psql($db, "SELECT last_used_at $row");
$node->safe_psql($db, "SELECT tokenstore.token_user('$token')");
TokenstoreTest::wait_for($node, $db, "SELECT last_used_at > '$stored' $row",
	't', 'the worker writes the use to the table');
TokenstoreTest::wait_for($node, $db, sprintf($stats, "rows_flushed > $flushed"),
	't', 'the stats view counts the flushed rows');
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'tokenstore worker'",
	't', 'workers show in pg_stat_activity');
TokenstoreTest::wait_for($node, $db,
	"SELECT n_tup_hot_upd >= 2 AND n_tup_hot_upd = n_tup_upd FROM pg_stat_user_tables WHERE relid = 'tokenstore.token'::regclass",
	't', 'flushes are HOT updates (no index covers last_used_at)');

# The sweep: tokens past their absolute or idle deadline are deleted.
$node->safe_psql($db, q{
	SELECT tokenstore.token_make('short', ttl => '1 s');
	SELECT tokenstore.token_make('cold', idle_timeout => '1 s');
	SELECT tokenstore.token_make('edited');
	UPDATE tokenstore.token SET expires_at = now() - interval '1 s' WHERE user_id = 'edited';
});
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id IN ('short', 'cold', 'edited')",
	'0', 'expired tokens are swept without token_sweep()');
cmp_ok($node->safe_psql($db, sprintf($stats, 'rows_swept')), '>=', 3,
	'the stats view counts the swept rows');

# A token in use for five seconds with a two-second idle timeout: sweeps run
# every second meanwhile, and none takes it.
my $hot = $node->safe_psql($db,
	"SELECT tokenstore.token_make('hot', idle_timeout => '2 s')");
my $cold = $node->safe_psql($db,
	"SELECT tokenstore.token_make('cold', idle_timeout => '2 s')");
is($node->safe_psql($db, qq{
	SELECT count(*) FILTER (WHERE u = 'hot')
	  FROM (SELECT tokenstore.token_user('$hot') AS u, pg_sleep(0.2)
			  FROM generate_series(1, 25)) uses}),
	'25', 'a token in constant use never expires');
is($node->safe_psql($db,
		"SELECT count(*) FROM tokenstore.token WHERE user_id = 'hot'"),
	'1', 'and its row is never swept');
is($node->safe_psql($db,
		"SELECT count(*) FROM tokenstore.token WHERE user_id = 'cold'"),
	'0', 'while the unused one was');

# A flush bigger than a transaction's queue of cache actions (65,536) writes
# every use and leaves the cache as it was.  The worker must neither share
# the work nor sweep meanwhile, so it goes back to sleep first.
$node->safe_psql($db, "ALTER SYSTEM RESET tokenstore.flush_interval");
$node->safe_psql($db, "ALTER SYSTEM RESET tokenstore.sweep_interval");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore worker'",
	'0', 'the worker is idle');
$node->safe_psql($db,
	"CREATE TABLE many AS SELECT tokenstore.token_make('many' || i) AS token FROM generate_series(1, 70000) i");
is($node->safe_psql($db, 'SELECT count(tokenstore.token_user(token)) FROM many'),
	'70000', '70,000 checks');
my $entries = $node->safe_psql($db, sprintf($stats, 'entries'));
cmp_ok($entries, '>=', 70000, 'all cached');
is($node->safe_psql($db, 'SELECT tokenstore.token_flush()'), '70000',
	'one token_flush writes all their uses');
is($node->safe_psql($db, sprintf($stats, 'entries')), $entries, 'and keeps them cached');
$node->safe_psql($db, 'DELETE FROM tokenstore.token WHERE user_id LIKE \'many%\'; DROP TABLE many');

done_testing();
