# Without shared_preload_libraries, tokenstore works on its table alone:
# every function answers, a check records the use as a table write at most
# once per tokenstore.touch_interval, a check never waits for a transaction
# holding the token's row, tokens survive a restart, the application's role can
# call the functions but not read the table, and no token reaches the table
# or the server log in plain text.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreTest;

# The test framework logs every statement, literals included; this test
# checks what tokenstore itself logs.
my $node = TokenstoreTest::node('table_only', preload => 0,
	conf => "log_statement = 'none'\n");
my $db = 'postgres';

my $token = $node->safe_psql($db,
	"SELECT tokenstore.token_make('alice', '{\"device\": \"laptop\"}')");
like($token, qr/^tks_[A-Za-z0-9_-]{43}[A-Za-z0-9_-]{6}$/, 'a token has the prefix, 32 bytes and a checksum');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"),
	'alice', 'token_user finds the user');
is($node->safe_psql($db, "SELECT info->>'device' FROM tokenstore.token_list('alice')"),
	'laptop', 'token_list shows the token');
is($node->safe_psql($db, 'SELECT count(*) FROM tokenstore.stats'),
	'1', 'the stats view has a row for this database');
is($node->safe_psql($db, 'SELECT capacity || \'/\' || cached FROM tokenstore.stats'),
	'0/0', 'without the preload there is no cache');
is($node->safe_psql($db, 'SELECT tokenstore.token_flush()'),
	'0', 'token_flush has nothing to flush');

# The use is written to the table, at most once per touch_interval.
my $stored = "SELECT last_used_at FROM tokenstore.token WHERE token_hash = sha256(convert_to('$token', 'UTF8'))";
my $before = $node->safe_psql($db, $stored);
$node->safe_psql($db,
	"SET tokenstore.touch_interval = '1h'; SELECT tokenstore.token_user('$token')");
is($node->safe_psql($db, $stored), $before,
	'a check within touch_interval writes nothing');
$node->safe_psql($db,
	"SET tokenstore.touch_interval = 0; SELECT tokenstore.token_user('$token')");
is($node->safe_psql($db, "SELECT ($stored) > '$before'"),
	't', 'a check after touch_interval records the use in the table');

# A transaction holding the row (refreshing the token) does not stall checks.
my $holder = $node->background_psql($db);
$holder->query_safe("BEGIN; SELECT tokenstore.token_refresh('$token', '1 day')");
my ($ret, $out, $err) = $node->psql($db,
	"SET tokenstore.touch_interval = 0; SET statement_timeout = '5s'; SELECT tokenstore.token_user('$token')");
is($ret, 0, 'a check does not wait for the transaction holding the row');
is($out, 'alice', 'and answers from what committed');
$holder->query_safe('COMMIT');
$holder->quit;

# Privileges: a role granted the API calls the functions but cannot read
# the table.
$node->safe_psql($db,
	'CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA tokenstore TO app; '
	  . 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')", extra_params => [ '-U', 'app' ]),
	'alice', 'the application role can check tokens');
($ret, $out, $err) = $node->psql($db, 'SELECT count(*) FROM tokenstore.token',
	extra_params => [ '-U', 'app' ]);
like($err, qr/permission denied for table token/, 'but cannot read the table');

# Nothing holds the token in plain text: not the table, not the log, not
# even after an error about it.  (PostgreSQL itself logs the text of a
# failing statement: applications pass tokens as bind parameters, which it
# does not log; this test's literals are kept out of the log that way.)
my $quiet = "SET log_min_error_statement = panic;";
$node->safe_psql($db, "SELECT tokenstore.token_make('bob', token => 'caller-provided-token-0001')");
($ret, $out, $err) = $node->psql($db,
	"$quiet SELECT tokenstore.token_make('bob', token => 'caller-provided-token-0001')");
like($err, qr/token already exists/, 'a duplicate caller-provided token is refused');
unlike($err, qr/caller-provided-token/, 'and the error does not show it');
is($node->safe_psql($db,
		"SELECT count(*) FROM tokenstore.token t WHERE t::text LIKE '%$token%' OR t::text LIKE '%caller-provided-token%'"),
	'0', 'no row holds a token');

# Refused values never reach the log: not a 1 MB setting (refused by a
# check hook, whose message PostgreSQL would otherwise quote whole), not a
# token passed as a login mode.  (The statements' own text is kept out of
# the log, as above; the library is loaded first, since without the preload
# a session knows the settings only from then on.)
my $huge = "repeat('hugevalue', 120000)";
my $loaded = "$quiet LOAD 'tokenstore';";
for my $setting (qw(tokenstore.default_ttl tokenstore.default_idle_timeout))
{
	($ret, $out, $err) = $node->psql($db, "$loaded SELECT set_config('$setting', $huge, false)");
	like($err, qr/invalid value for parameter "\Q$setting\E"/, "a 1 MB $setting is refused");
	unlike($err, qr/hugevalue/, 'and the error does not repeat it');
}
($ret, $out, $err) = $node->psql($db,
	"$loaded ALTER SYSTEM SET tokenstore.token_prefix = '" . ('hugevalue' x 120000) . "'");
like($err, qr/tokenstore.token_prefix is too long/, 'a 1 MB token_prefix is refused');
unlike($err, qr/hugevalue/, 'and the error does not repeat it');
($ret, $out, $err) = $node->psql($db, "$loaded SELECT set_config('tokenstore.default_ttl', '$token', false)");
like($err, qr/invalid value for parameter "tokenstore.default_ttl"/, 'a token as default_ttl is refused');
($ret, $out, $err) = $node->psql($db, "$loaded SELECT tokenstore.token_make('bob', mode => '$token')");
like($err, qr/unknown login mode\n/, 'a token passed as the login mode is refused');
unlike($err, qr/\Q@{[substr($token, 4, 8)]}\E/, 'and the error shows no part of it');

# Restart: committed tokens survive, revoked ones stay revoked.
$node->safe_psql($db, "SELECT tokenstore.token_delete('caller-provided-token-0001')");
$node->restart;
is($node->safe_psql($db,
		"SELECT tokenstore.token_user('$token') || ',' || coalesce(tokenstore.token_user('caller-provided-token-0001'), 'none')"),
	'alice,none', 'after a restart the token works and the revoked one stays dead');

$node->stop;
my $log = slurp_file($node->logfile);
like($log, qr/token already exists/, 'the error reached the log');
like($log, qr/unknown login mode/, 'so did the refused login mode');
like($log, qr/tokenstore.token_prefix is too long/, 'and the refused settings');
unlike($log, qr/caller-provided-token|\Q$token\E|\Q@{[substr($token, 4, 8)]}\E/,
	'the log holds no token, nor a piece of one');
unlike($log, qr/hugevalue/, 'nor a refused setting');

done_testing();
