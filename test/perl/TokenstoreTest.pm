# TokenstoreTest: what every TAP test of tokenstore needs and nothing more.
#
#   my $node = TokenstoreTest::node('name', preload => 1, conf => "...");
#
# starts a fresh cluster (tokenstore preloaded unless preload => 0, the
# given extra settings appended) with the extension created in "postgres".
# Its worker writes every cached use at its next flush
# (tokenstore.last_used_resolution = 0), so that tests need not wait a
# minute for one; a test of the resolution sets its own.
# Servers belong to PostgreSQL::Test::Cluster, which stops them at exit,
# also when a test dies.
package TokenstoreTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

# node(NAME, preload => BOOL, conf => TEXT, db => NAME)
sub node
{
	my ($name, %opt) = @_;
	my $preload = $opt{preload} // 1;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'tokenstore'\n"
		  . "tokenstore.last_used_resolution = 0\n") if $preload;
	$node->append_conf('postgresql.conf', $opt{conf}) if $opt{conf};
	$node->start;
	$node->safe_psql($opt{db} // 'postgres', 'CREATE EXTENSION tokenstore');
	return $node;
}

# wait_for(NODE, DB, QUERY, EXPECTED, WHAT): poll until QUERY returns
# EXPECTED (default 't'), failing the test named WHAT after the deadline
# PostgreSQL::Test::Utils gives (180 s unless PG_TEST_TIMEOUT_DEFAULT).
sub wait_for
{
	my ($node, $db, $query, $expected, $what) = @_;
	ok($node->poll_query_until($db, $query, $expected // 't'), $what);
}

# log_since(NODE, OFFSET): the server log written after byte OFFSET
# (take OFFSET from -s $node->logfile before the action).
sub log_since
{
	my ($node, $offset) = @_;
	return slurp_file($node->logfile, $offset);
}

# wait_for_within(NODE, DB, QUERY, EXPECTED, SECONDS, WHAT): wait_for with a
# deadline of its own, SECONDS of wall-clock time, for what must happen
# "within seconds" (the framework's default deadline is meant for slow
# machines, and counts attempts rather than time).
sub wait_for_within
{
	my ($node, $db, $query, $expected, $seconds, $what) = @_;
	my $deadline = Time::HiRes::time() + $seconds;
	my ($ret, $out, $err);

	$expected //= 't';
	while (1)
	{
		($ret, $out, $err) = $node->psql($db, $query);
		last if ($ret == 0 && $out eq $expected)
		  || Time::HiRes::time() > $deadline;
		Time::HiRes::usleep(100_000);
	}
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok($ret == 0 && $out eq $expected, $what)
	  or diag("after $seconds s, $query\nreturns: $out\n$err");
}

# stats(NODE, DB, DATNAME): the tokenstore.stats row of database DATNAME
# (default DB), read in DB, as a hash reference by column name ('' for
# NULL; every column '' when there is no such row).
sub stats
{
	my ($node, $db, $datname) = @_;
	my @columns = qw(datname cached dirty last_flush last_sweep rows_flushed
	  rows_swept capacity entries hits misses fills refused evictions);
	my %row;
	my $out;

	$datname //= $db;
	$out = $node->safe_psql($db,
		'SELECT ' . join(', ', map { qq{"$_"} } @columns)
		  . " FROM tokenstore.stats WHERE datname = '$datname'");
	@row{@columns} =
	  $out ne '' ? split(/\|/, $out, -1) : ('') x scalar(@columns);
	return \%row;
}

1;
