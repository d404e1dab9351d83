# Without tokenstore.standby_cache on the primary (the default), a hot
# standby answers checks from the table, never from its cache: the primary
# logs nothing for it, so a cache there could not learn of revocations.  A
# token checked on the standby again and again is dead there as soon as its
# revocation on the primary is replayed.  (With the setting: 020.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreTest;

my $db = 'postgres';
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'tokenstore'\n");
$primary->start;
$primary->safe_psql($db, 'CREATE EXTENSION tokenstore');
my $token = $primary->safe_psql($db, "SELECT tokenstore.token_make('alice')");

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

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

done_testing();
