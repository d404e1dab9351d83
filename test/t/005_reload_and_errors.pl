# The background follows its settings and survives its errors.  Reload: with
# tokenstore.flush_interval = 1h a use stays in the cache; after ALTER SYSTEM
# and pg_reload_conf() (SIGHUP) to 200ms the launcher flushes it within
# seconds.  Errors: a worker whose flush fails is run again about once per
# flush_interval (never in a storm), the launcher and the server stay up and
# checks keep answering meanwhile, and once the cause is gone the flush
# succeeds.  One bad row stops nothing: with a trigger refusing the update
# and the delete of one user's rows, the worker flushes the other uses and
# sweeps the other expired rows, names the culprits by token_id in the log
# once per round, and takes them as soon as the trigger is gone.  The token
# prefix is the server's, changed by a reload.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreTest;

my $db = 'postgres';
my $stats = "SELECT %s FROM tokenstore.stats WHERE datname = current_database()";

# ---- reload ----
my $node = TokenstoreTest::node('reload',
	conf => "tokenstore.flush_interval = '1h'\n");
TokenstoreTest::wait_for($node, $db, sprintf($stats, 'last_flush IS NOT NULL'),
	't', 'the first worker ran after CREATE EXTENSION');

my $token = $node->safe_psql($db, "SELECT tokenstore.token_make('alice')");
my $row = "FROM tokenstore.token WHERE token_hash = sha256(convert_to('$token', 'UTF8'))";
my $stored = $node->safe_psql($db, "SELECT last_used_at $row");
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice', 'a check');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '1', 'its use is in the cache');
is($node->safe_psql($db, "SELECT last_used_at = '$stored' $row"), 't',
	'and not in the table: with flush_interval = 1h nothing flushes it');

$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.flush_interval = '200ms'");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
TokenstoreTest::wait_for($node, $db, 'SHOW tokenstore.flush_interval', '200ms',
	'the server has reloaded its configuration');
TokenstoreTest::wait_for_within($node, $db, "SELECT last_used_at > '$stored' $row",
	't', 10, 'after the reload the launcher flushes the use within seconds');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice',
	'the token still works');

# another prefix, server-wide: new tokens take it, old ones still work
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.token_prefix = 'acme_'; SELECT pg_reload_conf()");
TokenstoreTest::wait_for($node, $db, 'SHOW tokenstore.token_prefix', 'acme_',
	'the new prefix is loaded');
like($node->safe_psql($db, "SELECT tokenstore.token_make('bob')"),
	qr/^acme_[A-Za-z0-9_-]{49}$/, 'new tokens have the new prefix');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice',
	'tokens made under the old prefix still work');
$node->stop;

# ---- a failing flush ----
my $interval = 0.5;
$node = TokenstoreTest::node('errors',
	conf => "tokenstore.flush_interval = '500ms'\n");
TokenstoreTest::wait_for($node, $db, sprintf($stats, 'last_flush IS NOT NULL'),
	't', 'the first worker ran after CREATE EXTENSION');
my $launcher = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'tokenstore launcher'";
my $launcher_pid = $node->safe_psql($db, $launcher);
like($launcher_pid, qr/^\d+$/, 'one launcher runs');

$token = $node->safe_psql($db, "SELECT tokenstore.token_make('bob')");
$row = "FROM tokenstore.token WHERE token_hash = sha256(convert_to('$token', 'UTF8'))";
$stored = $node->safe_psql($db, "SELECT last_used_at $row");
# Any write of a last use to the table fails; new tokens and checks do not.
$node->safe_psql($db, q{
	CREATE FUNCTION public.refuse_touch() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN RAISE EXCEPTION 'tokenstore-test: flush refused'; END$$;
	CREATE TRIGGER refuse_touch BEFORE UPDATE ON tokenstore.token FOR EACH ROW
		WHEN (OLD.last_used_at IS DISTINCT FROM NEW.last_used_at)
		EXECUTE FUNCTION public.refuse_touch();
});

my $offset = -s $node->logfile;
my $start = time;
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'bob',
	'a check (its use is dirty, and its flush will fail)');

# Watch the log until the failure has repeated a few times.
my $errors = 0;
my $elapsed;
my $deadline = $start + $PostgreSQL::Test::Utils::timeout_default;
while (time < $deadline)
{
	my @lines = TokenstoreTest::log_since($node, $offset) =~
	  /tokenstore worker: .* failed: tokenstore-test: flush refused/g;
	$elapsed = time - $start;
	$errors = @lines;
	last if $errors >= 5;
	usleep(100_000);
}
cmp_ok($errors, '>=', 5, 'the failing worker is run again');
my $bound = int($elapsed / $interval) + 2;
cmp_ok($errors, '<=', $bound,
	sprintf('about once per flush_interval, no storm (%.1f s)', $elapsed));

is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'bob',
	'checks keep answering while the flush fails');
my $other = $node->safe_psql($db, "SELECT tokenstore.token_make('carol')");
is($node->safe_psql($db, "SELECT tokenstore.token_user('$other')"), 'carol',
	'and tokens can be made');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '2', 'the uses stay dirty');
is($node->safe_psql($db, "SELECT last_used_at = '$stored' $row"), 't',
	'and out of the table');
is($node->safe_psql($db, $launcher), $launcher_pid, 'the launcher is the same process');

$node->safe_psql($db, 'DROP TRIGGER refuse_touch ON tokenstore.token');
TokenstoreTest::wait_for($node, $db, "SELECT last_used_at > '$stored' $row",
	't', 'once the cause is gone the flush succeeds');
TokenstoreTest::wait_for($node, $db, sprintf($stats, 'dirty'), '0',
	'and nothing stays dirty');
is($node->safe_psql($db, $launcher), $launcher_pid, 'the launcher never restarted');
unlike(TokenstoreTest::log_since($node, $offset),
	qr/terminated by signal|terminating any other active server processes/,
	'no server process crashed');
$node->stop;

# ---- one bad row ----
$interval = 0.2;
$node = TokenstoreTest::node('culprit',
	conf => "tokenstore.flush_interval = '200ms'\ntokenstore.sweep_interval = '1s'\n");
TokenstoreTest::wait_for($node, $db, sprintf($stats, 'last_flush IS NOT NULL'),
	't', 'the first worker ran after CREATE EXTENSION');
my $make = "SELECT tokenstore.token_make('%s', ttl => '%s')";
my @live = map { $node->safe_psql($db, sprintf($make, "live$_", '1 day')) } 1 .. 5;
my @dead = map { $node->safe_psql($db, sprintf($make, "dead$_", '1 second')) } 1 .. 5;
my $bad_live = $node->safe_psql($db, sprintf($make, 'mallory', '1 day'));
my $bad_dead = $node->safe_psql($db, sprintf($make, 'mallory', '1 second'));
my $id = "SELECT encode(substr(token_hash, 1, 16), 'hex') FROM tokenstore.token "
  . "WHERE token_hash = sha256(convert_to('%s', 'UTF8'))";
my $bad_live_id = $node->safe_psql($db, sprintf($id, $bad_live));
my $bad_dead_id = $node->safe_psql($db, sprintf($id, $bad_dead));
like($bad_live_id, qr/^[0-9a-f]{32}$/, 'the culprits\' token_ids');

# Every update and delete of mallory's rows fails, nobody else's.
$node->safe_psql($db, q{
	CREATE FUNCTION public.refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN RAISE EXCEPTION 'tokenstore-test: mallory refused'; END$$;
	CREATE TRIGGER refuse_mallory BEFORE UPDATE OR DELETE ON tokenstore.token
		FOR EACH ROW WHEN (OLD.user_id = 'mallory')
		EXECUTE FUNCTION public.refuse_mallory();
});
$offset = -s $node->logfile;
$start = time;
$node->safe_psql($db, join('; ',
	map { "SELECT tokenstore.token_user('$_')" } @live, $bad_live));
my $flushed = "SELECT count(*) FROM tokenstore.token "
  . "WHERE user_id %s AND last_used_at > created_at";
TokenstoreTest::wait_for_within($node, $db, sprintf($flushed, "LIKE 'live%'"),
	'5', 10, 'beside a use whose flush fails, the other uses are flushed');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id LIKE 'dead%'",
	'0', 10, 'beside a row whose sweep fails, the other expired rows are swept');
my $log = '';
$deadline = time + 10;
while (time < $deadline)
{
	$log = TokenstoreTest::log_since($node, $offset);
	last if $log =~ /sweeping the row of token_id $bad_dead_id failed/;
	usleep(100_000);
}
like($log,
	qr/tokenstore worker: flushing the last use of token_id $bad_live_id failed: tokenstore-test: mallory refused/,
	'the log names the use that could not be flushed by its token_id');
like($log,
	qr/tokenstore worker: sweeping the row of token_id $bad_dead_id failed: tokenstore-test: mallory refused/,
	'and the row that could not be swept');
$elapsed = time - $start;
my @lines = $log =~ /flushing the last use of token_id $bad_live_id/g;
cmp_ok(scalar(@lines), '<=', int($elapsed / $interval) + 2,
	sprintf('once per round at most (%d lines in %.1f s)', scalar(@lines), $elapsed));
unlike(join("\n", grep { !/statement: / } split(/\n/, $log)),
	qr/\Q$bad_live\E|\Q$bad_dead\E/,
	'the server\'s own lines hold no token (the test\'s statements do)');
is($node->safe_psql($db, sprintf($flushed, "= 'mallory'")), '0',
	'the culprit\'s use is not in the table');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '1', 'but stays dirty in the cache');
is($node->safe_psql($db, "SELECT count(*) FROM tokenstore.token WHERE user_id = 'mallory'"),
	'2', 'and its expired row stays');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$live[0]')"), 'live1',
	'checks answer meanwhile');

$node->safe_psql($db, 'DROP TRIGGER refuse_mallory ON tokenstore.token');
TokenstoreTest::wait_for_within($node, $db, sprintf($flushed, "= 'mallory'"),
	'1', 10, 'once the cause is gone the culprit\'s use is flushed');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'mallory'",
	'1', 10, 'and its expired row swept');
TokenstoreTest::wait_for_within($node, $db, sprintf($stats, 'dirty'), '0', 10,
	'nothing stays dirty');

done_testing();
