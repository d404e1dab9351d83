# pg_upgrade keeps every token.  A cluster of an older major (the newest
# installed beside this one with tokenstore built for it, under
# /usr/lib/postgresql, or TOKENSTORE_UPGRADE_FROM; test/run.sh copies 15
# beside 17 and 17 beside 18, with the libraries they lack in their lib
# folder, which goes on LD_LIBRARY_PATH for them) holds tokens of every
# kind in two databases, uses in the cache and in the table; it is upgraded
# to this major with pg_upgrade, following the README (tokenstore installed
# for the new major first; after pg_upgrade, $PGDATA/tokenstore.key and the
# last uses saved at shutdown, $PGDATA/tokenstore.last_used, copied into the
# new data directory).  Afterwards every token answers with the same user
# and deadline, share-mode logins hand out the same tokens, a use the old
# server saved at shutdown reaches the new table, and the worker and the
# cache run.
use strict;
use warnings;
use File::Copy ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreTest;

# The newest older major installed with tokenstore, or none.
sub older_install
{
	my $this = PostgreSQL::Test::Cluster->new('probe')->pg_version->major;
	my @older = sort { $b <=> $a } grep { $_ < $this }
	  map { m{/(\d+)/lib/tokenstore\.so$} ? $1 : () }
	  glob('/usr/lib/postgresql/*/lib/tokenstore.so');
	return @older ? "/usr/lib/postgresql/$older[0]" : undef;
}

# A cluster of this major; initdb turns data checksums on from 18, and
# pg_upgrade needs both alike.
sub new_cluster
{
	my $node = PostgreSQL::Test::Cluster->new(shift);
	$node->init($node->pg_version >= 18 ? (extra => ['--no-data-checksums']) : ());
	return $node;
}

# pg_upgrade from one stopped cluster to another; whether it worked.
sub upgrade
{
	my ($from, $to) = @_;
	return run_log(
		[
			'pg_upgrade', '--no-sync',
			'-d', $from->data_dir, '-D', $to->data_dir,
			'-b', $from->config_data('--bindir'), '-B', $to->config_data('--bindir'),
			'-s', $to->host, '-p', $from->port, '-P', $to->port,
		]);
}

# Whether the two majors' servers upgrade a cluster that holds one plain
# table: when they do not, the packages are at fault, not tokenstore.
sub plain_upgrade_works
{
	my $install = shift;
	my $from = PostgreSQL::Test::Cluster->new('plain_old', install_path => $install);
	$from->init;
	$from->start;
	$from->safe_psql('postgres', 'CREATE TABLE plain (a int)');
	$from->stop;
	return upgrade($from, new_cluster('plain_new'));
}

my $old_install = $ENV{TOKENSTORE_UPGRADE_FROM} // older_install();
plan skip_all => 'no older major with tokenstore installed beside this one to upgrade from'
  unless $old_install;

my $old = PostgreSQL::Test::Cluster->new('old', install_path => $old_install);
$old->init;
$old->append_conf('postgresql.conf',
	"shared_preload_libraries = 'tokenstore'\ntokenstore.flush_interval = '1h'\n");
$old->start;
my @dbs = ('postgres', 'second');
$old->safe_psql('postgres', 'CREATE DATABASE second');
my %token;
my $state = "tokenstore.token_user(t) || (SELECT format('|%s|%s|%s|%s', created_at, expires_at, idle_timeout, share_secret IS NOT NULL) FROM tokenstore.token WHERE token_hash = sha256(convert_to(t, 'UTF8')))";
my %before;
# the query of a token's last use in the table; its value before the stop, per database
sub last_use
{
	return "SELECT last_used_at FROM tokenstore.token WHERE token_hash = sha256(convert_to('$_[0]', 'UTF8'))";
}
my %flushed;
foreach my $db (@dbs)
{
	$old->safe_psql($db, 'CREATE EXTENSION tokenstore');
	foreach my $kind (
		[ multi => "'ann', '{\"device\": \"laptop\"}'" ],
		[ single => "'bob', mode => 'single'" ],
		[ share => "'cat', mode => 'share'" ],
		[ ttl => "'dan', ttl => '2 days'" ],
		[ idle => "'eve', idle_timeout => '1 hour'" ],
		[ given => "'fay', token => 'a-caller-provided-token-$db'" ])
	{
		my ($name, $args) = @$kind;
		$token{$db}{$name} = $old->safe_psql($db, "SELECT tokenstore.token_make($args)");
	}
	$old->safe_psql($db, "SELECT tokenstore.token_user('$token{$db}{idle}')");
	$old->safe_psql($db, 'SELECT tokenstore.token_flush()');
	$flushed{$db} = $old->safe_psql($db, last_use($token{$db}{multi}));
	$old->safe_psql($db, "SELECT tokenstore.token_user('$token{$db}{multi}')");
	$before{$db}{$_} = $old->safe_psql($db,
		"SELECT $state FROM (SELECT '$token{$db}{$_}'::text AS t) s")
	  foreach keys %{ $token{$db} };
}
my $old_version = $old->safe_psql('postgres', 'SHOW server_version_num');
$old->stop;
# (asserted once the upgrade may no longer skip the whole script)
my $saved = -e $old->data_dir . '/tokenstore.last_used';

my $new = new_cluster('new');
$new->append_conf('postgresql.conf',
	"shared_preload_libraries = 'tokenstore'\ntokenstore.flush_interval = '200ms'\n");

my $workdir = PostgreSQL::Test::Utils::tempdir('pg_upgrade');
chdir $workdir;
local $ENV{LD_LIBRARY_PATH} = "$old_install/lib";
my $upgraded = upgrade($old, $new);
plan skip_all => "pg_upgrade from $old_version fails for a cluster of one plain table too: these servers' packages do not upgrade one another"
  if !$upgraded && !plain_upgrade_works($old_install);
ok($upgraded, "pg_upgrade from $old_version")
  or die "pg_upgrade failed: nothing to check after it";
ok($saved, 'the old server had saved the uses only its cache knew of');
# The README's step after pg_upgrade: the key (replacing any the new
# server made) and the saved last uses, when pg_upgrade's start of the old
# server did not apply them already.
foreach my $file ('tokenstore.key', 'tokenstore.last_used')
{
	my $from = $old->data_dir . "/$file";
	next if $file eq 'tokenstore.last_used' && !-e $from;
	File::Copy::copy($from, $new->data_dir . "/$file")
	  or die "could not copy $file: $!";
	chmod 0600, $new->data_dir . "/$file";
}
$new->start;

foreach my $db (@dbs)
{
	foreach my $name (sort keys %{ $token{$db} })
	{
		is($new->safe_psql($db, "SELECT $state FROM (SELECT '$token{$db}{$name}'::text AS t) s"),
			$before{$db}{$name}, "$db: token '$name' answers with the same user and deadline");
	}
	ok($new->poll_query_until($db,
			'SELECT (' . last_use($token{$db}{multi}) . ") > '$flushed{$db}'"),
		"$db: the use the old server saved at shutdown reaches the table");
	is($new->safe_psql($db, "SELECT tokenstore.token_make('cat', mode => 'share')"),
		$token{$db}{share}, "$db: the shared token is handed out again (the key file was copied)");
	is($new->safe_psql($db, "SELECT tokenstore.token_user(tokenstore.token_make('gus'))"),
		'gus', "$db: new tokens are made and checked");
	# Checked above, so cached: a hit.
	$new->safe_psql($db, "SELECT tokenstore.token_user('$token{$db}{multi}')");
	TokenstoreTest::wait_for($new, $db,
		"SELECT last_flush IS NOT NULL AND hits > 0 FROM tokenstore.stats WHERE datname = current_database()",
		't', "$db: the worker runs and the cache answers");
}

done_testing();
