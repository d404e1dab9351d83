# The Redis mirror when Redis fails.  PostgreSQL never waits for Redis:
# tokens are made and revoked at full speed while it is down or hangs.  Once
# it is back, Redis converges exactly on the table: every live token has its
# key and nothing else is left under the database's prefix, whether Redis
# came back empty, kept revoked tokens while the queue overflowed, holds
# keys nobody wrote, or is a replica promoted by a sentinel.  Bad settings
# are logged clearly, without the password.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreRedis;
use TokenstoreTest;

my $db = 'postgres';
my $redis_stats = 'SELECT %s FROM tokenstore.redis_stats';
my $password = 'fault-secret-4711';

sub key { return "tokenstore:$db:token:" . sha256_hex($_[0]); }

# churn(NODE, N, USERS, DELETE): N token_make (users churn0 .. churnUSERS-1),
# each committed on its own, every DELETE-th token revoked in a transaction
# of its own right after; how many seconds it took.
sub churn
{
	my ($node, $n, $users, $delete) = @_;
	my $start = time;

	$node->safe_psql($db, qq{
		DO \$\$
		DECLARE t text;
		BEGIN
			FOR i IN 1..$n LOOP
				t := tokenstore.token_make('churn' || i % $users);
				COMMIT;
				IF i % $delete = 0 THEN
					PERFORM tokenstore.token_delete(t);
					COMMIT;
				END IF;
			END LOOP;
		END
		\$\$;
	});
	return time - $start;
}

# wait_log(NODE, OFFSET, REGEX, WHAT): poll the server log after OFFSET
# until a line matches REGEX, not counting the lines where PostgreSQL logs
# the statement or the setting's new value; the matching line.
sub wait_log
{
	my ($node, $offset, $re, $what) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	my $line;

	while (1)
	{
		($line) = grep { /$re/ && !/statement: |parameter "[^"]*" changed to/ }
		  split /\n/, TokenstoreTest::log_since($node, $offset);
		last if defined $line || time > $deadline;
		usleep(100_000);
	}
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok(defined $line, $what) and note($line);
	return $line // '';
}

# ---- Redis stopped, then back empty ----
my $redis = TokenstoreRedis->new(password => $password);
my $node = TokenstoreTest::node('faults',
	conf => "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.flush_interval = '200ms'\n"
	  . "tokenstore.sweep_interval = '1s'\n");
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up', 'the mirror is up');
churn($node, 20, 5, 4);
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'Redis holds the live tokens');

$redis->stop;
my $took = churn($node, 300, 10, 2);
cmp_ok($took, '<', 10,
	sprintf('300 token_make and 150 token_delete with Redis down take %.1f s', $took));
TokenstoreTest::wait_for_within($node, $db, sprintf($redis_stats, 'state'), 'down', 10,
	'redis_stats says down');
is($node->safe_psql($db, sprintf($redis_stats, 'server IS NULL, last_error IS NOT NULL')),
	't|t', 'with no server, and the last error');

$redis->restart;
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'Redis back (empty): the mirror is up again');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'and Redis holds exactly the live tokens');

# Keys nobody wrote: a token key of no token, a stray member in a user set.
# A dropped connection has the publisher reconnect, and every reconnect
# resynchronises.
my $stray = "tokenstore:$db:token:" . ('0' x 64);
my $resyncs = $node->safe_psql($db, sprintf($redis_stats, 'resyncs'));
$redis->cli('SET', $stray, '{"user_id": "churn1"}');
$redis->cli('SADD', "tokenstore:$db:user:churn1", $stray);
$redis->cli('SADD', "tokenstore:$db:user:nobody", $stray);
$redis->cli('SET', 'unrelated:key', 'mine');
like($redis->cli('CLIENT', 'KILL', 'TYPE', 'normal'), qr/^[1-9]\d*$/,
	"the publisher's connection is dropped");
TokenstoreTest::wait_for($node, $db,
	sprintf($redis_stats, "state = 'up' AND resyncs > $resyncs"),
	't', 'the publisher reconnects and resynchronises');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'the stray key and set members are gone, the live tokens are all there');
is($redis->cli('GET', 'unrelated:key'), 'mine', 'keys outside the prefix stay');

# ---- bad settings ----
my $offset = -s $node->logfile;
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.redis_url = 'http://nope'");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
wait_log($node, $offset, qr/tokenstore\.redis_url/,
	'a URL that is no redis:// URL is logged, naming tokenstore.redis_url');
TokenstoreTest::wait_for_within($node, $db,
	sprintf($redis_stats, "state IN ('down', 'off')"), 't', 10,
	'redis_stats says down');
my $token = $node->safe_psql($db, "SELECT tokenstore.token_make('badconf')");
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'badconf',
	'tokens are made and checked meanwhile');

my $wrong = 'wrong-pw-0815';
(my $wrong_url = $redis->url) =~ s/\Q$password\E/$wrong/;
$offset = -s $node->logfile;
$node->safe_psql($db, "ALTER SYSTEM SET tokenstore.redis_url = '$wrong_url'");
$node->safe_psql($db, 'SELECT pg_reload_conf()');
wait_log($node, $offset, qr/tokenstore.*(?:AUTH|[Aa]uthenticat|WRONGPASS)/,
	'a wrong password is logged as an authentication failure');
TokenstoreTest::wait_for_within($node, $db, sprintf($redis_stats, 'state'), 'down', 10,
	'redis_stats says down');
unlike($node->safe_psql($db, sprintf($redis_stats, 'last_error')), qr/\Q$wrong\E/,
	'last_error does not show the password');

$node->safe_psql($db, 'ALTER SYSTEM RESET tokenstore.redis_url');
$node->safe_psql($db, 'SELECT pg_reload_conf()');
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'with the setting fixed the mirror is up');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'and has the tokens made meanwhile');
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$wrong\E/, 'the wrong password never appears in the server log');
unlike($log, qr/\Q$password\E/, 'nor does the right one');
$node->stop;
$redis->stop;

# ---- the queue overflows while Redis hangs ----
$redis = TokenstoreRedis->new(password => $password);
$node = TokenstoreTest::node('overflow',
	conf => "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.redis_queue_size = '64kB'\n");
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up', 'the mirror is up');
churn($node, 100, 10, 1000);
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'Redis holds the live tokens');

# A hung server: connections open, nothing answers.
kill 'STOP', $redis->pid;
$took = churn($node, 3000, 10, 3);
cmp_ok($took, '<', 20,
	sprintf('3000 token_make and 1000 token_delete with Redis hung take %.1f s', $took));
# Revoke tokens Redis holds: only the resync can remove their keys now.
is($node->safe_psql($db, "SELECT tokenstore.token_delete_user('churn1') > 0"), 't',
	"a user's tokens are revoked");
TokenstoreTest::wait_for_within($node, $db, sprintf($redis_stats, 'overflows > 0'), 't', 30,
	'the queue overflows');
isnt($node->safe_psql($db, sprintf($redis_stats, 'state')), 'up', 'the mirror is not up');
TokenstoreTest::wait_for_within($node, $db, sprintf($redis_stats, 'state'), 'down', 10,
	'the publisher times out on the hung server');

kill 'CONT', $redis->pid;
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'Redis answers again: the mirror is up');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'and Redis holds exactly the live tokens', 60);
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'queued'), '0',
	'nothing stays queued');

# A resynchronisation while tokens are made: what commits meanwhile waits in
# the publisher's own memory, not in the queue, so even this small queue does
# not overflow however long the resync takes.
$node->safe_psql($db,
	"SELECT count(tokenstore.token_make('bulk' || i)) FROM generate_series(1, 5000) i");
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'a transaction larger than the queue: a resync, then up');
my $overflows = $node->safe_psql($db, sprintf($redis_stats, 'overflows'));
$resyncs = $node->safe_psql($db, sprintf($redis_stats, 'resyncs'));
$redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');
churn($node, 2000, 10, 1000);
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, "resyncs > $resyncs AND state = 'up'"),
	't', 'the connection dropped: a resync, while tokens are made');
is($node->safe_psql($db, sprintf($redis_stats, 'overflows')), $overflows,
	'the queue did not overflow meanwhile');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'and Redis holds exactly the live tokens', 60);
$node->stop;
$redis->stop;

# ---- a sentinel fails the master over ----
my $master = TokenstoreRedis->new(password => $password, name => 'master');
my $replica = TokenstoreRedis->new(password => $password, replicaof => $master,
	name => 'replica');
my $sentinel = TokenstoreRedis::sentinel($master);
$node = TokenstoreTest::node('sentinel',
	conf => "tokenstore.redis_sentinels = '127.0.0.1:" . $sentinel->port . "'\n"
	  . "tokenstore.redis_master_name = 'mymaster'\n"
	  . "tokenstore.redis_url = 'redis://:$password\@/0'\n");
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up', 'the mirror is up');
is($node->safe_psql($db, sprintf($redis_stats, 'server')),
	'127.0.0.1:' . $master->port, 'connected to the master the sentinel names');
my $first = $node->safe_psql($db, "SELECT tokenstore.token_make('before')");
TokenstoreRedis::wait_redis(sub { $master->cli('EXISTS', key($first)) }, '1',
	'a token is written to the master');

is($sentinel->failover, $replica->port, 'SENTINEL FAILOVER promotes the replica');
TokenstoreRedis::wait_redis(sub { $replica->role }, 'master', 'which says it is master');
my $second = $node->safe_psql($db, "SELECT tokenstore.token_make('after')");
is($node->safe_psql($db, "SELECT tokenstore.token_delete('$first')"), 't',
	'a token is revoked');
# The old master may take a while to become a replica; until then it
# accepts what it is sent, and the publisher finds out only then.
TokenstoreRedis::wait_redis(sub { $replica->cli('EXISTS', key($second)) }, '1',
	'a token made after the failover is written to the new master',
	$PostgreSQL::Test::Utils::timeout_default);
TokenstoreTest::wait_for($node, $db,
	sprintf($redis_stats, "state = 'up' AND server = '127.0.0.1:" . $replica->port . "'"),
	't', 'the mirror is up on the new master');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $replica) }, '',
	'which holds exactly the live tokens');
$node->stop;

done_testing();
