# The background follows its settings and survives its errors.  Reload: with
# tokenstore.flush_interval = 1h a use stays in the cache; after ALTER SYSTEM
# and pg_reload_conf() (SIGHUP) to 200ms the launcher flushes it within
# seconds.  Errors: a worker whose flush fails is run again about once per
# flush_interval (never in a storm), the launcher and the server stay up and
# checks keep answering meanwhile, and once the cause is gone the flush
# succeeds.  The token prefix is the server's, changed by a reload.
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

done_testing();
