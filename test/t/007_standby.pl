# Without tokenstore.standby_cache on the primary (the default), a hot
# standby answers checks from the table, never from its cache: the primary
# logs nothing for it, so a cache there could not learn of revocations.  A
# token checked on the standby again and again is dead there as soon as its
# revocation on the primary is replayed.  (With the setting: 020.)
#
# The sealing key: a primary that preloads tokenstore makes
# $PGDATA/tokenstore.key when it starts, so a base backup taken before any
# share-mode login carries it, and after promotion the standby hands out the
# primary's shared tokens.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use TokenstoreTest;

my $db = 'postgres';
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'tokenstore'\n");
$primary->start;
$primary->safe_psql($db, 'CREATE EXTENSION tokenstore');
my $token = $primary->safe_psql($db, "SELECT tokenstore.token_make('alice')");

# The launcher makes the key at its start; give it a deadline.
my $key_file = $primary->data_dir . '/tokenstore.key';
my $deadline = Time::HiRes::time() + 30;
Time::HiRes::usleep(100_000) until -e $key_file || Time::HiRes::time() > $deadline;
ok(-e $key_file, 'a fresh primary with the preload has its sealing key');
is($primary->safe_psql($db,
		'SELECT count(*) FROM tokenstore.token WHERE share_secret IS NOT NULL'),
	'0', 'before any share-mode token was made');

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is(slurp_file($standby->data_dir . '/tokenstore.key'), slurp_file($key_file),
	'the base backup carried the key to the standby');

my $check = "SELECT coalesce(tokenstore.token_user('$token'), 'dead')";
is($standby->safe_psql($db, "$check FROM generate_series(1, 3)"),
	"alice\nalice\nalice", 'the standby answers checks');
is($standby->safe_psql($db,
		"SELECT concat_ws('/', capacity, hits, entries) FROM tokenstore.stats WHERE datname = current_database()"),
	'0/0/0', 'without its cache');
is($standby->safe_psql($db, 'SELECT standby_cache FROM tokenstore.stats'),
	'off', 'and the stats say so');
ok(!-e $primary->data_dir . '/tokenstore.standby_cache',
	'the primary never told its standbys to use their caches');

$primary->safe_psql($db, "SELECT tokenstore.token_delete('$token')");
$primary->wait_for_catchup($standby);
is($standby->safe_psql($db, $check), 'dead',
	'a revocation is seen once it is replayed');

my $shared = $primary->safe_psql($db,
	"SELECT tokenstore.token_make('carol', mode => 'share')");
$primary->wait_for_catchup($standby);

$standby->promote;
$standby->poll_query_until($db, 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
my $new = $standby->safe_psql($db, "SELECT tokenstore.token_make('bob')");
is($standby->safe_psql($db, "SELECT tokenstore.token_user('$new')"), 'bob',
	'after promotion tokens are made and checked');
is($standby->safe_psql($db,
		'SELECT hits FROM tokenstore.stats WHERE datname = current_database()'),
	'1', 'and the cache is in use');
is($standby->safe_psql($db, $check), 'dead', 'the revoked token stays dead');
is($standby->safe_psql($db, "SELECT tokenstore.token_make('carol', mode => 'share')"),
	$shared, "a share-mode login hands out the primary's shared token");
is(slurp_file($standby->data_dir . '/tokenstore.key'), slurp_file($key_file),
	'the promoted server kept the primary\'s key');

done_testing();
