# The worker keeps up under load and never waits for an application:
#  - while clients check tokens without pause (with the default resolution
#    of last uses), expired rows piling up are swept (flush and sweep share
#    each round, so neither starves);
#  - a transaction that holds a token's row and stays open (the common
#    "idle in transaction" bug) stops neither the flush of the other tokens
#    nor the sweep, in its database or another; the held token's use waits,
#    dirty, and is written once the row is free;
#  - a table locked by a long TRUNCATE-like lock in one database costs its
#    worker a lock timeout and a log line, and the other database goes on;
#  - server-wide default_transaction_read_only = on does not stop the
#    worker, which runs with settings of its own.
use strict;
use warnings;
use IPC::Run ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use TokenstoreTest;

my $node = TokenstoreTest::node('worker_load',
	conf => "tokenstore.flush_interval = '500ms'\n"
	  . "tokenstore.sweep_interval = '1s'\n"
	  . "tokenstore.last_used_resolution = '1min'\n"
	  . "max_connections = 30\n"
	  . "log_statement = 'none'\n");
my $db = 'postgres';
my $stats = "SELECT %s FROM tokenstore.stats WHERE datname = current_database()";

# expired(DB, N, USER): insert N rows past their deadline, as a site's
# tokens end; the sweep must find them
sub expired
{
	my ($d, $n, $user) = @_;
	$node->safe_psql($d, qq{
		SET default_transaction_read_only = off;
		INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at, expires_at)
		SELECT sha256(convert_to('$user' || i || random(), 'UTF8')), '$user', now() - interval '1 day',
			   now() - interval '1 day', now() - interval '1 minute'
		  FROM generate_series(1, $n) i});
}

sub remaining
{
	my ($d, $user) = @_;
	return $node->safe_psql($d, "SELECT count(*) FROM tokenstore.token WHERE user_id = '$user'");
}

# ---- the sweep keeps up while clients check without pause ----
$node->safe_psql($db, q{
	CREATE TABLE live AS
	SELECT i, tokenstore.token_make('live' || (i % 1000), idle_timeout => '1 hour') AS token
	  FROM generate_series(1, 20000) i;
	CREATE INDEX ON live (i);
	GRANT SELECT ON live TO PUBLIC});
my $script = $node->basedir . '/check.sql';
PostgreSQL::Test::Utils::append_to_file($script,
	"\\set n random(1, 20000)\nSELECT tokenstore.token_user(token) FROM live WHERE i = :n;\n");
my $load_seconds = 25;
my ($out, $err) = ('', '');
my $pgbench = IPC::Run::start(
	[ 'pgbench', '-n', '-M', 'prepared', '-c', '4', '-j', '2',
		'-T', $load_seconds, '-f', $script, $node->connstr($db) ],
	'>', \$out, '2>', \$err);
my $started = time;
expired($db, 10000, 'gone');
my $piled = time;
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone'", '0',
	15, '10,000 expired rows are swept while four clients check without pause');
my $took = time - $piled;
note(sprintf('swept 10,000 rows in %.1f s under load (%.0f rows/s)', $took, 10000 / $took));
ok(time - $started < $load_seconds, 'and the load was still running');
expired($db, 2000, 'gone2');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone2'", '0',
	8, 'rows that expire during the load are swept too');
$pgbench->finish;
like($out, qr/number of transactions actually processed: [1-9]/, 'the clients checked all along')
  or diag($err);

# from here on, every use is written at the next flush
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.last_used_resolution = 0; SELECT pg_reload_conf()");

# ---- one open transaction holding a row stops nothing ----
$node->safe_psql($db, 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION tokenstore');
my $held = $node->safe_psql($db, "SELECT tokenstore.token_make('held')");
my $free = $node->safe_psql($db, "SELECT tokenstore.token_make('free')");
my $stored = "SELECT last_used_at FROM tokenstore.token WHERE user_id = '%s'";
my $moved = "SELECT last_used_at > '%s' FROM tokenstore.token WHERE user_id = '%s'";
my $held_before = $node->safe_psql($db, sprintf($stored, 'held'));
my $free_before = $node->safe_psql($db, sprintf($stored, 'free'));
my $app = $node->background_psql($db);
$app->query_safe("BEGIN; SELECT tokenstore.token_refresh('$held', '1 day')");
$node->safe_psql($db, "SELECT tokenstore.token_user('$held'), tokenstore.token_user('$free')");
expired($db, 1000, 'gone3');
expired('other', 1000, 'gone4');
TokenstoreTest::wait_for_within($node, $db, sprintf($moved, $free_before, 'free'),
	't', 10, 'with a row held by an open transaction, the other uses are flushed');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone3'", '0', 10,
	'its database is swept');
TokenstoreTest::wait_for_within($node, 'other',
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone4'", '0', 10,
	'and so is another database');
is($node->safe_psql($db,
		"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
		  . "WHERE NOT l.granted AND a.backend_type = 'tokenstore worker'"),
	'0', 'no worker waits for a lock');
is($node->safe_psql($db, sprintf($stats, 'dirty > 0')), 't',
	'the held token\'s use stays dirty');
$app->query_safe('COMMIT');
$app->quit;
TokenstoreTest::wait_for_within($node, $db, sprintf($moved, $held_before, 'held'),
	't', 10, 'and is written once the row is free');

# ---- a locked table in one database: a lock timeout there, the other goes on ----
my $offset = -s $node->logfile;
my $locker = $node->background_psql('other');
$locker->query_safe('BEGIN; LOCK TABLE tokenstore.token IN ACCESS EXCLUSIVE MODE');
expired($db, 1000, 'gone5');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone5'", '0', 15,
	'while another database\'s table is locked, this one is swept');
my $gave_up = 0;
my $until = time + 15;
while (!$gave_up && time < $until)
{
	$gave_up = TokenstoreTest::log_since($node, $offset) =~
	  /tokenstore worker: .* failed: canceling statement due to lock timeout/;
	Time::HiRes::usleep(100_000);
}
ok($gave_up, 'the locked database\'s worker gave up its step after a lock timeout, and said so');
$locker->query_safe('ROLLBACK');
$locker->quit;

# ---- default_transaction_read_only = on ----
$node->safe_psql($db,
	"ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()");
expired('other', 500, 'gone6');
TokenstoreTest::wait_for_within($node, 'other',
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'gone6'", '0', 15,
	'with default_transaction_read_only = on the worker still sweeps');
$node->safe_psql($db,
	"SET default_transaction_read_only = off; ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()");

done_testing();
