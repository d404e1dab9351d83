# The Redis mirror over TLS: where tokenstore is built against hiredis with
# TLS (hiredis_ssl, as on PostgreSQL 17 and 18 here), a rediss:// URL
# mirrors every change through an encrypted connection whose server
# certificate is checked against tokenstore.redis_tls_ca_file (a server
# signed by another authority is refused, and said so); where it is not
# (hiredis 0.14), a rediss:// URL is refused with a clear error and nothing
# else breaks.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreRedis;
use TokenstoreTest;

my $tls = system('pkg-config --exists hiredis_ssl') == 0;
my $redis = TokenstoreRedis->new(tls => 1);
my $node = TokenstoreTest::node('tls',
	conf => "tokenstore.redis_url = '" . $redis->tls_url . "'\n"
	  . "tokenstore.redis_tls_ca_file = '" . $redis->ca_file . "'\n");
my $db = 'postgres';
my $state = 'SELECT state FROM tokenstore.redis_stats';

if (!$tls)
{
	TokenstoreTest::wait_for($node, $db, $state, 'down',
		'without TLS in this build, a rediss:// URL leaves the mirror down');
	like($node->safe_psql($db, 'SELECT last_error FROM tokenstore.redis_stats'),
		qr/rediss:\/\/ needs TLS, and this build of tokenstore has none/,
		'and says why');
	my $token = $node->safe_psql($db, "SELECT tokenstore.token_make('alice')");
	is($node->safe_psql($db, "SELECT tokenstore.token_user('$token')"), 'alice',
		'tokens work as usual meanwhile');
	done_testing();
	exit;
}

TokenstoreTest::wait_for($node, $db, $state, 'up', 'the mirror is up over TLS');
my $token = $node->safe_psql($db, "SELECT tokenstore.token_make('alice', '{\"tls\": true}')");
my $key = "tokenstore:$db:token:" . sha256_hex($token);
TokenstoreRedis::wait_redis(sub { $redis->cli('EXISTS', $key) }, '1',
	'a new token reaches Redis through TLS');
is($redis->json($key)->{user_id}, 'alice', 'with its user');
$node->safe_psql($db, "SELECT tokenstore.token_delete('$token')");
TokenstoreRedis::wait_redis(sub { $redis->cli('EXISTS', $key) }, '0',
	'its revocation too');

# a server whose certificate another authority signed is refused
my $other = TokenstoreRedis->new(tls => 1, name => 'other');
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.redis_url = '" . $other->tls_url . "'; SELECT pg_reload_conf()");
TokenstoreTest::wait_for($node, $db, $state, 'down',
	'a server signed by another authority is refused');
like($node->safe_psql($db, 'SELECT last_error FROM tokenstore.redis_stats'),
	qr/certificate|TLS|SSL/i, 'with the TLS error');
is($other->cli('DBSIZE'), '0', 'and gets nothing');

done_testing();
