# Restarts and crashes.  A clean shutdown saves the uses still in the cache
# to $PGDATA/tokenstore.last_used, and the first worker after the start
# writes them to the table and the file goes.  After a crash (an immediate
# stop, or a backend killed so that the postmaster reinitialises shared
# memory) the cache starts empty: committed tokens work, revoked ones stay
# dead, and only the uses not yet flushed are lost, as documented.
#
# Files the server reads at its start and cannot use: a last-use file of
# another version is refused (logged, removed, nothing applied); a short or
# corrupt sealing key is logged, left as it is, and share-mode logins fail
# with its error while every other token works.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreTest;

my $db = 'postgres';
my $node = TokenstoreTest::node('restart',
	conf => "tokenstore.flush_interval = '1h'\ntokenstore.sweep_interval = '1h'\n"
	  . "restart_after_crash = on\n");
my $stats = "SELECT %s FROM tokenstore.stats WHERE datname = current_database()";
my $dump = $node->data_dir . '/tokenstore.last_used';

sub last_used
{
	my ($token) = @_;
	return $node->safe_psql($db,
		"SELECT last_used_at FROM tokenstore.token WHERE token_hash = sha256(convert_to('$token', 'UTF8'))");
}

sub user_of
{
	my ($token) = @_;
	return $node->safe_psql($db,
		"SELECT coalesce(tokenstore.token_user('$token'), 'dead')");
}

# wait up to 30 s for file NAME to go; 'absent' or 'present'
sub file_gone
{
	my ($name) = @_;
	my $deadline = time + 30;

	usleep(100_000) while (-e $name && time < $deadline);
	return -e $name ? 'present' : 'absent';
}

# log_shows(OFFSET, RE): whether the log after OFFSET matches RE within 30 s
sub log_shows
{
	my ($offset, $re) = @_;
	my $deadline = time + 30;

	while (TokenstoreTest::log_since($node, $offset) !~ $re)
	{
		return 0 if time > $deadline;
		usleep(100_000);
	}
	return 1;
}

TokenstoreTest::wait_for($node, $db, sprintf($stats, 'last_flush IS NOT NULL'),
	't', 'the first worker ran after CREATE EXTENSION');

# ---- clean restart ----
my $alice = $node->safe_psql($db, "SELECT tokenstore.token_make('alice')");
my $revoked = $node->safe_psql($db, "SELECT tokenstore.token_make('rex')");
$node->safe_psql($db, "SELECT tokenstore.token_delete('$revoked')");
my $stored = last_used($alice);
is(user_of($alice), 'alice', 'a check');
is($node->safe_psql($db, sprintf($stats, 'dirty')), '1',
	'its use is in the cache only (flush_interval = 1h)');

my $offset = -s $node->logfile;
$node->stop;
like(TokenstoreTest::log_since($node, $offset),
	qr/tokenstore saved 1 last uses for the next start/,
	'a clean shutdown saves the use');
ok(-e $dump, 'to tokenstore.last_used');

$node->start;
TokenstoreTest::wait_for($node, $db,
	"SELECT last_used_at > '$stored' FROM tokenstore.token WHERE user_id = 'alice'",
	't', 'after the start the saved use reaches the table');
is(file_gone($dump), 'absent', 'and the file goes');
is($node->safe_psql($db, sprintf($stats, 'entries')), '0', 'the cache starts empty');
is(user_of($alice), 'alice', 'the token works after the restart');
is(user_of($revoked), 'dead', 'the revoked token stays dead');

# ---- a last-use file of another version ----
my $fred = $node->safe_psql($db, "SELECT tokenstore.token_make('fred')");
$stored = last_used($fred);
is(user_of($fred), 'fred', 'a check, cached');
$node->stop;
ok(-e $dump, 'a clean shutdown saves its use');
# The header: magic, version, record size (uint32 each, native order).
open(my $fh, '+<', $dump) or die "open $dump: $!";
binmode $fh;
seek($fh, 4, 0) or die "seek: $!";
print $fh pack('L', 99) or die "write: $!";
close($fh) or die "close: $!";
$offset = -s $node->logfile;
$node->start;
ok(log_shows($offset,
		qr/LOG:  tokenstore ignores "tokenstore.last_used": it was not written by this version of tokenstore/),
	'a last-use file of version 99 is refused with a log line');
is(file_gone($dump), 'absent', 'and removed');
is(last_used($fred), $stored, 'no stored last use changed');
is(user_of($fred), 'fred', 'the token works');

# ---- a sealing key file that cannot be used ----
my $key = $node->data_dir . '/tokenstore.key';
my $shared = $node->safe_psql($db, "SELECT tokenstore.token_make('sam', mode => 'share')");
my $key_text = slurp_file($key);
foreach my $bad ([ short => substr($key_text, 0, 40) ],
	[ corrupt => $key_text =~ s/[0-9a-f](?=\n$)/z/r ])
{
	my ($kind, $text) = @$bad;
	$node->stop;
	open(my $out, '>', $key) or die "open $key: $!";
	print $out $text or die "write: $!";
	close($out) or die "close: $!";
	$offset = -s $node->logfile;
	$node->start;
	my $refused = qr/tokenstore cannot use its sealing key "tokenstore.key": it is not a tokenstore key file of this version/;
	ok(log_shows($offset, qr/ERROR:  $refused/), "a $kind key file: the start logs why");
	my ($ret, $out_text, $err) = $node->psql($db,
		"\\set VERBOSITY verbose\nSELECT tokenstore.token_make('sam', mode => 'share')");
	ok($ret != 0 && $err =~ /ERROR:  F0000: $refused/,
		"a $kind key file: a share-mode login fails with that error")
	  or diag("ret $ret, out $out_text, err $err");
	is(user_of($alice) . ' ' . user_of($shared), 'alice sam',
		"a $kind key file: tokens still check");
	like($node->safe_psql($db, "SELECT tokenstore.token_make('tom')"), qr/^tks_/,
		"a $kind key file: other logins work");
	is(slurp_file($key), $text, "a $kind key file is left as it was");
	unlike(TokenstoreTest::log_since($node, $offset), qr/"tokenstore launcher".* exited/,
		"a $kind key file: the launcher goes on");
}
$node->stop;
open(my $good, '>', $key) or die "open $key: $!";
print $good $key_text or die "write: $!";
close($good) or die "close: $!";
$node->start;
is($node->safe_psql($db, "SELECT tokenstore.token_make('sam', mode => 'share')"),
	$shared, 'the key restored: the shared token is handed out again');

# ---- immediate stop ----
my $bob = $node->safe_psql($db, "SELECT tokenstore.token_make('bob')");
my $gone = $node->safe_psql($db, "SELECT tokenstore.token_make('gina')");
$node->safe_psql($db, "SELECT tokenstore.token_delete('$gone')");
$stored = last_used($bob);
is(user_of($bob), 'bob', 'a check, cached');
is(user_of($gone), 'dead', 'a revoked token');

$offset = -s $node->logfile;
$node->stop('immediate');
unlike(TokenstoreTest::log_since($node, $offset), qr/tokenstore saved/,
	'an immediate stop saves nothing');
ok(!-e $dump, 'and leaves no file');
$node->start;
my $before = TokenstoreTest::stats($node, $db);
is($before->{entries}, '0', 'after the crash the cache starts empty');
is(user_of($bob), 'bob', 'a committed token works');
is(user_of($gone), 'dead', 'a revoked one stays dead');
is(TokenstoreTest::stats($node, $db)->{misses} - ($before->{misses} || 0), 2,
	'both answered from the table');
is(last_used($bob), $stored,
	'the unflushed use was lost (at most one flush interval, as documented)');

# ---- a backend crashes: the postmaster reinitialises shared memory ----
my $carl = $node->safe_psql($db, "SELECT tokenstore.token_make('carl')");
my $dead = $node->safe_psql($db, "SELECT tokenstore.token_make('dora')");
is(user_of($carl) . ' ' . user_of($dead), 'carl dora', 'two cached tokens');
my $victim = $node->background_psql($db, on_error_stop => 0);
my $pid = $victim->query_safe('SELECT pg_backend_pid()');
$node->safe_psql($db, "SELECT tokenstore.token_delete('$dead')");
$offset = -s $node->logfile;
kill 'KILL', $pid;
$victim->quit;
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore launcher'",
	'1', 'after the crash restart the launcher runs again');
like(TokenstoreTest::log_since($node, $offset),
	qr/terminating any other active server processes/,
	'the server went through a crash restart');
is($node->safe_psql($db, sprintf($stats, 'entries')), '0', 'the cache starts empty');
is(user_of($carl) . ' ' . user_of($dead), 'carl dead',
	'the committed token works, the revoked one stays dead');

done_testing();
