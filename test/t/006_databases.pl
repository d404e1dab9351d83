# tokenstore in several databases of one server.  The cache is keyed by
# database: one token string made in two databases for two users answers
# each database's own user, and revoking it in one leaves the other.  Each
# database's uses are flushed by its own worker and have their own row in
# tokenstore.stats; a database gets its worker within seconds of CREATE
# EXTENSION, and so does a copy made with CREATE DATABASE ... TEMPLATE.  The
# short-lived workers never keep a database busy for long: CREATE DATABASE
# from a template with tokenstore, ALTER DATABASE RENAME and plain DROP
# DATABASE succeed (retried, as a user would, while they report the database
# busy), and a dropped database's cache entries and stats row go.  After
# DROP EXTENSION and CREATE EXTENSION a token cached before is never served
# again, even when its string is made anew for another user.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use TokenstoreTest;

my $node = TokenstoreTest::node('databases',
	conf => "tokenstore.flush_interval = '200ms'\n");
my $flushed = "SELECT last_used_at > '%s' FROM tokenstore.token WHERE user_id = '%s'";
my $stored = "SELECT last_used_at FROM tokenstore.token WHERE user_id = '%s'";

is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore launcher'"),
	'1', 'pg_stat_activity shows the tokenstore launcher');

# busy(SQL, WHAT): run SQL in postgres; while it fails because another
# session is connected to the database it needs alone, run it again, as a
# user would, for up to 30 s.  Asserts it succeeded; returns the attempts.
sub busy
{
	my ($sql, $what) = @_;
	my $deadline = time + 30;
	my ($ret, $out, $err);
	my $attempts = 0;

	do
	{
		$attempts++;
		($ret, $out, $err) = $node->psql('postgres', $sql);
	} while ($ret != 0 && $err =~ /is being accessed by other users/
		&& time < $deadline);
	is($ret, 0, $what) or diag($err);
	note("$what: $attempts attempt(s)");
	return $attempts;
}

# ---- two databases, one token string ----
$node->safe_psql('postgres', 'CREATE DATABASE db2');
$node->safe_psql('db2', 'CREATE EXTENSION tokenstore');
my $same = 'same-string-in-both-databases-0001';
$node->safe_psql('postgres', "SELECT tokenstore.token_make('alice', token => '$same')");
$node->safe_psql('db2', "SELECT tokenstore.token_make('bob', token => '$same')");
my $used_alice = $node->safe_psql('postgres', sprintf($stored, 'alice'));
my $used_bob = $node->safe_psql('db2', sprintf($stored, 'bob'));
my $before = TokenstoreTest::stats($node, 'postgres');
is($node->safe_psql('postgres', "SELECT tokenstore.token_user('$same')"), 'alice',
	'postgres serves its user');
is($node->safe_psql('db2', "SELECT tokenstore.token_user('$same')"), 'bob',
	'db2 serves its user for the same string');
my $s = TokenstoreTest::stats($node, 'postgres');
is($s->{hits} - $before->{hits}, 2, 'both from the cache');

TokenstoreTest::wait_for($node, 'postgres',
	"SELECT string_agg(datname, ',' ORDER BY datname) FROM tokenstore.stats",
	'db2,postgres', 'stats has one row per database with tokenstore');
TokenstoreTest::wait_for($node, 'postgres', sprintf($flushed, $used_alice, 'alice'),
	't', "postgres's use is flushed");
TokenstoreTest::wait_for($node, 'db2', sprintf($flushed, $used_bob, 'bob'),
	't', "db2's use is flushed");
is($node->safe_psql('postgres',
		"SELECT string_agg(datname || ':' || (rows_flushed > 0), ',' ORDER BY datname) FROM tokenstore.stats"),
	'db2:true,postgres:true', 'each by its own worker');

is($node->safe_psql('db2', "SELECT tokenstore.token_delete('$same')"), 't', 'revoked in db2');
is($node->safe_psql('db2', "SELECT coalesce(tokenstore.token_user('$same'), 'dead')"),
	'dead', 'dead in db2');
is($node->safe_psql('postgres', "SELECT tokenstore.token_user('$same')"), 'alice',
	'alive in postgres');

# ---- a new database gets its worker within seconds ----
$node->safe_psql('postgres', 'CREATE DATABASE db3');
$node->safe_psql('db3', 'CREATE EXTENSION tokenstore');
my $carol = $node->safe_psql('db3', "SELECT tokenstore.token_make('carol')");
my $used_carol = $node->safe_psql('db3', sprintf($stored, 'carol'));
is($node->safe_psql('db3', "SELECT tokenstore.token_user('$carol')"), 'carol', 'a check in db3');
TokenstoreTest::wait_for_within($node, 'db3', sprintf($flushed, $used_carol, 'carol'),
	't', 30, 'db3 gets its worker within seconds of CREATE EXTENSION');

# ---- a copy of a database with tokenstore ----
my $dave = $node->safe_psql('db2', "SELECT tokenstore.token_make('dave')");
busy('CREATE DATABASE x TEMPLATE db2', 'CREATE DATABASE x TEMPLATE db2 succeeds');
is($node->safe_psql('x', "SELECT tokenstore.token_user('$dave')"), 'dave',
	'the copy has the tokens of its template');
my $used_dave = $node->safe_psql('x', sprintf($stored, 'dave'));
is($node->safe_psql('x', "SELECT tokenstore.token_user('$dave')"), 'dave', 'a check in x');
TokenstoreTest::wait_for_within($node, 'x', sprintf($flushed, $used_dave, 'dave'),
	't', 30, 'the copy gets its worker within seconds');
is($node->safe_psql('x', "SELECT tokenstore.token_delete('$dave')"), 't', 'revoked in x');
is($node->safe_psql('db2', "SELECT tokenstore.token_user('$dave')"), 'dave',
	'alive in its template');

# ---- rename, then drop ----
busy('ALTER DATABASE db3 RENAME TO db3b', 'ALTER DATABASE db3 RENAME TO db3b succeeds');
is($node->safe_psql('db3b', "SELECT tokenstore.token_user('$carol')"), 'carol',
	'the renamed database serves its tokens');
$s = TokenstoreTest::stats($node, 'postgres', 'db3b');
cmp_ok($s->{cached}, '>=', 1, 'stats shows it under its new name, with its cache entries');
my $db3b_cached = $s->{cached};
my $entries = $s->{entries};
my $offset = -s $node->logfile;
busy('DROP DATABASE db3b', 'plain DROP DATABASE db3b succeeds');
my $drop_time = $node->safe_psql('postgres', 'SELECT now()');
$s = TokenstoreTest::stats($node, 'postgres');
is($s->{entries}, $entries - $db3b_cached, 'its cache entries went');
is($node->safe_psql('postgres', "SELECT count(*) FROM tokenstore.stats WHERE datname LIKE 'db3%'"),
	'0', 'its stats row went');
# Two more rounds of the workers: none tries the dropped database again.
TokenstoreTest::wait_for($node, 'postgres',
	"SELECT last_flush > '$drop_time'::timestamptz + interval '0.5 s' FROM tokenstore.stats WHERE datname = 'postgres'",
	't', 'the workers go on');
my @missing = TokenstoreTest::log_since($node, $offset) =~ /FATAL:.*database \d+ does not exist/g;
cmp_ok(scalar(@missing), '<=', 1, 'the launcher forgets the dropped database');

# ---- DROP EXTENSION, CREATE EXTENSION ----
my $again = 'reused-string-after-recreate-0001';
my $session = $node->background_psql('db2');
$node->safe_psql('db2', "SELECT tokenstore.token_make('erin', token => '$again')");
is($session->query_safe("SELECT tokenstore.token_user('$again')"), 'erin',
	'a token cached in db2');
$node->safe_psql('db2', 'DROP EXTENSION tokenstore');
$node->safe_psql('db2', 'CREATE EXTENSION tokenstore');
is($node->safe_psql('db2', "SELECT coalesce(tokenstore.token_user('$again'), 'dead')"),
	'dead', 'is never served after DROP and CREATE EXTENSION');
is($session->query_safe("SELECT coalesce(tokenstore.token_user('$again'), 'dead')"),
	'dead', 'not even to a session that checked it before');
$node->safe_psql('db2', "SELECT tokenstore.token_make('frank', token => '$again')");
is($node->safe_psql('db2', "SELECT tokenstore.token_user('$again')"), 'frank',
	'the same string made for another user serves the new user');
is($session->query_safe("SELECT tokenstore.token_user('$again')"), 'frank',
	'in every session');
# The same in one transaction.
$node->safe_psql('db2', 'BEGIN; DROP EXTENSION tokenstore; CREATE EXTENSION tokenstore; COMMIT;');
is($session->query_safe("SELECT coalesce(tokenstore.token_user('$again'), 'dead')"),
	'dead', 'dropped and created in one transaction: dead too');
$node->safe_psql('db2', "SELECT tokenstore.token_make('grace', token => '$again')");
is($session->query_safe("SELECT tokenstore.token_user('$again')"), 'grace',
	'and made anew for another user, that user is served');
$session->quit;
my $used_grace = $node->safe_psql('db2', sprintf($stored, 'grace'));
is($node->safe_psql('db2', "SELECT tokenstore.token_user('$again')"), 'grace', 'a check');
TokenstoreTest::wait_for($node, 'db2', sprintf($flushed, $used_grace, 'grace'),
	't', 'the re-created extension is flushed by a worker');
is($node->safe_psql('postgres', "SELECT tokenstore.token_user('$same')"), 'alice',
	'postgres never noticed');

done_testing();
