# The Redis mirror, when all goes well: every committed change to a token
# reaches a real Redis (asynchronously, so each check polls with a
# deadline), in the keys and channel services read, and the token itself
# never does (only its SHA-256).  Rolled-back changes never reach it, and
# each database writes under a name of its own.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use JSON::PP ();
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreRedis;
use TokenstoreTest;

my $redis = TokenstoreRedis->new(password => 'happy-path-secret');
my $node = TokenstoreTest::node('redis',
	conf => "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.flush_interval = '200ms'\n"
	  . "tokenstore.sweep_interval = '1s'\n"
	  # "without ttl" below means without a deadline, not the default one
	  . "tokenstore.default_ttl = 0\n");
my $db = 'postgres';
my $redis_stats = 'SELECT %s FROM tokenstore.redis_stats';
my @tokens;    # every token made, none of which may ever be in Redis

# key(TOKEN, DB), user_key(USER, DB): key names, DB as in keys.
sub key
{
	my ($token, $d) = @_;
	return 'tokenstore:' . ($d // $db) . ':token:' . sha256_hex($token);
}

sub user_key
{
	my ($user, $d) = @_;
	return 'tokenstore:' . ($d // $db) . ":user:$user";
}

sub make
{
	my ($args, $d) = @_;
	my $token = $node->safe_psql($d // $db, "SELECT tokenstore.token_make($args)");
	push @tokens, $token;
	return $token;
}

# present(KEY): 1 or 0, as EXISTS says.
sub present { return $redis->cli('EXISTS', $_[0]); }

sub members
{
	my ($user, $d) = @_;
	return join(' ', sort split /\n/, $redis->cli('SMEMBERS', user_key($user, $d)));
}

TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'the mirror is up once CREATE EXTENSION has had its database resynced');
is($node->safe_psql($db, sprintf($redis_stats, 'server')),
	'127.0.0.1:' . $redis->port, 'redis_stats names the server');
is($node->safe_psql($db,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore publisher'"),
	'1', 'the publisher shows in pg_stat_activity');

# ---- a token's key, value, expiry and user set ----
my $alice = make(q{'alice', info => '{"device": "phone"}', ttl => '1 hour'});
my $key = key($alice);
TokenstoreRedis::wait_redis(sub { present($key) }, '1',
	'token_make writes the key named by the SHA-256 of the token');
my $json = $redis->json($key);
my $row = "FROM tokenstore.token WHERE token_hash = sha256(convert_to('$alice', 'UTF8'))";
my $utc = q{to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')};
my ($created, $expires) = split /\|/,
  $node->safe_psql($db,
	sprintf("SELECT $utc, $utc $row", 'created_at', 'expires_at'));
is($json->{user_id}, 'alice', 'the JSON has the user');
is_deeply($json->{info}, { device => 'phone' }, 'and the info');
is($json->{created_at}, $created, 'and created_at, in UTC');
is($json->{expires_at}, $expires, 'and expires_at');
is($json->{token_id}, substr(sha256_hex($alice), 0, 32), 'and the token_id');
my $pttl = $redis->cli('PTTL', $key);
ok($pttl > 3_590_000 && $pttl <= 3_600_000, "the key expires with the token ($pttl ms)");
TokenstoreRedis::wait_redis(sub { members('alice') }, $key,
	"the user's set holds the key");

my $forever = make(q{'alice'});
TokenstoreRedis::wait_redis(sub { $redis->cli('PTTL', key($forever)) }, '-1',
	'a token without deadline has a key without expiry');
TokenstoreRedis::wait_redis(sub { members('alice') },
	join(' ', sort(key($alice), key($forever))), "the user's set holds both keys");

# ---- changes of a live token ----
is($node->safe_psql($db, "SELECT tokenstore.token_refresh('$alice', ttl => '2 hours')"),
	't', 'token_refresh with a new ttl');
TokenstoreRedis::wait_redis(
	sub {
		my $p = $redis->cli('PTTL', $key);
		$p > 7_190_000 && $p <= 7_200_000 ? 'moved' : $p;
	},
	'moved', 'the key expires with the new deadline');
is($node->safe_psql($db, "SELECT tokenstore.token_refresh('$alice')"),
	't', 'token_refresh without ttl lifts the deadline');
TokenstoreRedis::wait_redis(sub { $redis->cli('PTTL', $key) }, '-1',
	'and the key no longer expires');
TokenstoreRedis::wait_redis(
	sub { my $j = $redis->json($key); defined $j->{expires_at} ? $j->{expires_at} : 'null' },
	'null', 'its JSON says so');
is($node->safe_psql($db,
		qq{SELECT tokenstore.token_set_info('$alice', '{"device": "laptop"}')}),
	't', 'token_set_info');
TokenstoreRedis::wait_redis(sub { $redis->json($key)->{info}{device} // '' },
	'laptop', 'the JSON has the new info');

# An idle deadline moves forward when the worker flushes a use.
my $idler = make(q{'idler', idle_timeout => '10 s'});
TokenstoreRedis::wait_redis(sub { present(key($idler)) }, '1', 'the idle token has its key');
$pttl = $redis->cli('PTTL', key($idler));
ok($pttl > 0 && $pttl <= 10_000, "it expires within the idle timeout ($pttl ms)");
my $expiry = $redis->cli('PEXPIRETIME', key($idler));
# The next use must be measurably later: a second after the use the key's
# expiry counts from (its expiry less the 10 s idle timeout), by the server's clock.
TokenstoreRedis::wait_redis(
	sub {
		$node->safe_psql($db,
			'SELECT (extract(epoch FROM pg_catalog.clock_timestamp()) * 1000)::bigint > '
			  . ($expiry - 10_000 + 1_000));
	},
	't', 'a second passes after the last use', 10);
is($node->safe_psql($db, "SELECT tokenstore.token_user('$idler')"), 'idler', 'a use');
TokenstoreRedis::wait_redis(
	sub {
		my $now = $redis->cli('PEXPIRETIME', key($idler));
		$now > $expiry + 500 ? 'later' : "$now, was $expiry";
	},
	'later', 'after the flush the key expires later (about 1 s)');

# ---- revocations: keys and user sets go, and the channel says so ----
my $events = $redis->subscribe('tokenstore:events');
my %revoked;    # token => user: each must have its revoke event

my $bob = make(q{'bob'});
my ($carol1, $carol2, $carol3) = map { make(q{'carol'}) } 1 .. 3;
my $dave1 = make(q{'dave'});
TokenstoreRedis::wait_redis(sub { present(key($dave1)) }, '1', 'tokens to revoke are written');

is($node->safe_psql($db, "SELECT tokenstore.token_delete('$bob')"), 't', 'token_delete');
$revoked{$bob} = 'bob';
TokenstoreRedis::wait_redis(sub { present(key($bob)) . members('bob') }, '0',
	'its key and user set go');

my $id = substr(sha256_hex($carol1), 0, 32);
is($node->safe_psql($db, "SELECT tokenstore.token_delete_id('$id')"), 't', 'token_delete_id');
$revoked{$carol1} = 'carol';
TokenstoreRedis::wait_redis(sub { present(key($carol1)) }, '0', 'its key goes');
TokenstoreRedis::wait_redis(sub { members('carol') },
	join(' ', sort(key($carol2), key($carol3))), 'and it leaves the user set');

is($node->safe_psql($db,
		"SELECT tokenstore.token_delete_user('carol', keep_token => '$carol3')"),
	'1', 'token_delete_user with keep_token');
$revoked{$carol2} = 'carol';
TokenstoreRedis::wait_redis(sub { members('carol') }, key($carol3),
	'the kept token is alone in the user set');
is(present(key($carol2)) . present(key($carol3)), '01',
	'its key stays, the other goes');

my $dave2 = make(q{'dave', mode => 'single'});
$revoked{$dave1} = 'dave';
TokenstoreRedis::wait_redis(sub { present(key($dave1)) }, '0',
	'a single-mode login removes the older key');
TokenstoreRedis::wait_redis(sub { members('dave') }, key($dave2),
	'and the user set holds the new one only');

# Direct DML as superuser goes through the same triggers.
my @erin = map { make(q{'erin'}) } 1 .. 2;
TokenstoreRedis::wait_redis(sub { members('erin') }, join(' ', sort map { key($_) } @erin),
	'erin has two keys');
$node->safe_psql($db, "DELETE FROM tokenstore.token WHERE user_id = 'erin'");
$revoked{$_} = 'erin' foreach @erin;
TokenstoreRedis::wait_redis(sub { join('', map { present(key($_)) } @erin) . members('erin') },
	'00', 'DELETE FROM tokenstore.token removes the keys and the user set');

# events(): the events received so far, decoded, by token_hash.
sub events
{
	return map {
		my $e = eval { JSON::PP::decode_json($_) } // {};
		(($e->{token_hash} // '') => $e)
	} $events->messages;
}
TokenstoreRedis::wait_redis(
	sub {
		my %event = events();
		join(' ', map { "$revoked{$_}'s missing" }
			  grep { !$event{ sha256_hex($_) } } sort keys %revoked);
	},
	'', 'a revoke event per revoked token');
my %event = events();
is_deeply(
	{ map { $_ => $event{ sha256_hex($_) } } sort keys %revoked },
	{
		map {
			$_ => {
				event => 'revoke',
				database => $db,
				user_id => $revoked{$_},
				token_hash => sha256_hex($_),
				key => key($_)
			}
		} sort keys %revoked
	},
	'each event names the database, user, hash and key');
my @leaks = grep { my $m = $_; grep { index($m, $_) >= 0 } @tokens } $events->messages;
is(scalar(@leaks), 0, 'no event carries a token') or diag(join("\n", @leaks));

# ---- the sweep ----
my $short = make(q{'short', ttl => '5 s'});
my $short_keep = make(q{'short'});
TokenstoreRedis::wait_redis(sub { members('short') },
	join(' ', sort(key($short), key($short_keep))), 'a token with ttl 5 s is written');
TokenstoreTest::wait_for($node, $db,
	"SELECT count(*) FROM tokenstore.token WHERE user_id = 'short'",
	'1', 'the sweep deletes its row');
# Redis expires the key by itself; the user set is the sweep's doing.
TokenstoreRedis::wait_redis(sub { present(key($short)) . ' ' . members('short') },
	'0 ' . key($short_keep), 'and its key leaves Redis and the user set');

# ---- rolled back changes never reach Redis ----
my $ghost1 = $node->safe_psql($db,
	"BEGIN; SELECT tokenstore.token_make('ghost'); ROLLBACK;");
push @tokens, $ghost1;
my ($ghost2, $kept) = split /\n/, $node->safe_psql($db, q{
	BEGIN;
	SAVEPOINT s;
	SELECT tokenstore.token_make('ghost');
	ROLLBACK TO SAVEPOINT s;
	SELECT tokenstore.token_make('kept');
	COMMIT;
});
push @tokens, $ghost2, $kept;
my $later = make(q{'later'});
# The queue is sent in commit order: once the later commit is in Redis,
# anything committed before it would be too.
TokenstoreRedis::wait_redis(sub { present(key($later)) . present(key($kept)) }, '11',
	'the commits around the rollbacks are written');
is(present(key($ghost1)) . present(key($ghost2)) . members('ghost'), '00',
	'a rolled back token_make, or one in a rolled back savepoint, never is');

# ---- two databases ----
my $resyncs = $node->safe_psql($db, sprintf($redis_stats, 'resyncs'));
$node->safe_psql($db, 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION tokenstore');
$node->safe_psql($db, 'CREATE DATABASE "odd db:1"');
$node->safe_psql('odd db:1', 'CREATE EXTENSION tokenstore');
my $here = make(q{'frank'});
my $there = make(q{'frank'}, 'other');
my $odd = make(q{'frank'}, 'odd db:1');
TokenstoreRedis::wait_redis(
	sub {
		join(' ', present(key($here)), present(key($there, 'other')),
			present(key($odd, 'odd%20db%3A1')), present(key($there)));
	},
	'1 1 1 0', 'each database writes under its own name (percent-encoded)');
is(members('frank', 'other'), key($there, 'other'), 'and has its own user sets');
is(members('frank'), key($here), 'separate from the other databases');
# Creating the extension in a database writes that database alone to Redis:
# the others were missed nothing.
TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'state'), 'up',
	'the mirror is up with the new databases');
is($node->safe_psql($db, sprintf($redis_stats, 'resyncs')), $resyncs + 2,
	'two resyncs: the new databases, not this one');

# TRUNCATE purges the database's keys, and no other database's.
my @before_truncate = $redis->scan('tokenstore:postgres:*');
cmp_ok(scalar(@before_truncate), '>', 5, 'postgres has keys');
$node->safe_psql($db, 'TRUNCATE tokenstore.token');
TokenstoreRedis::wait_redis(sub { scalar(my @k = $redis->scan('tokenstore:postgres:*')) }, '0',
	'TRUNCATE tokenstore.token removes every key of the database');
is(present(key($there, 'other')), '1', 'and none of another database');
TokenstoreRedis::wait_redis(
	sub { scalar grep { /"event": *"purge"/ && /"database": *"postgres"/ } $events->messages },
	'1', 'a purge event says so');

# DROP DATABASE purges that database's keys.
$node->safe_psql($db, 'DROP DATABASE "odd db:1"');
TokenstoreRedis::wait_redis(sub { scalar(my @k = $redis->scan('tokenstore:odd%20db%3A1:*')) }, '0',
	'DROP DATABASE removes the keys of the database');
is(present(key($there, 'other')), '1', 'and none of another database');
$events->stop;

# ---- what is left ----
my $contents = $redis->contents;
my @found;
foreach my $token (@tokens)
{
	my $body = substr($token, 4);    # without the tks_ prefix
	push @found, $token
	  if grep { index($_, $body) >= 0 }
	  map { ($_, ref $contents->{$_} ? @{ $contents->{$_} } : $contents->{$_}) }
	  keys %$contents;
}
is(scalar(@found), 0, 'no token text is anywhere in Redis, key or value')
  or diag(join("\n", @found));
make(q{'grace', ttl => '1 day'});
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'after all this, Redis holds exactly the live tokens of postgres');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, 'other', $redis) }, '',
	'and of the other database');

TokenstoreTest::wait_for($node, $db, sprintf($redis_stats, 'queued'), '0',
	'nothing stays queued');
# (up once the databases left after the DROP DATABASE above have had their round)
TokenstoreTest::wait_for($node, $db,
	sprintf($redis_stats, 'state, sent > 0, errors, overflows, oldest_unsent IS NULL'),
	'up|t|0|0|t', 'redis_stats: up, commands sent, no errors, no overflow');

done_testing();
