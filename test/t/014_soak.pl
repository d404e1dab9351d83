# Soak: millions of cache hits, misses and session finds in one backend, and
# thousands of runs of the per-database worker, keep private memory flat.
#
# One session checks cached tokens two million times and unknown tokens
# (each a read of the table) two million times, and finds the data of
# sessions (token_data of tokens token_save made) a million times, in
# rounds; each round also changes the info and deadline of some tokens
# (cache updates at commit, and commands the publisher sends to Redis).
# The cache has room for every token (a full one thrashes, reported; no
# memory question).  Between rounds the session samples its own memory
# contexts (pg_backend_memory_contexts) and its RssAnon (/proc/PID/status).
# Meanwhile the launcher, at a flush interval of 100 ms (the least the
# setting allows), runs workers back to back in nine databases: a run of
# each every 100 ms, as the machine allows (3,000 wanted within 35 s, 1,000
# needed; a worker takes about 10 ms on an idle machine, over 100 ms on a
# busy one).  Worker runs are counted exactly
# from the server log: at log_min_messages = debug1 the postmaster logs
# each start of a background worker by name (the databases themselves log
# at warning, so that the log holds little else); pg_stat_activity cannot
# count processes that live for milliseconds, and the stats' counters move
# only when there is something to flush or sweep.  The launcher's and the
# publisher's memory contexts (pg_log_backend_memory_contexts: the bytes in
# use, exact) and RssAnon are read after a warm-up and at the end.  Every
# growth must stay under a limit the test prints with the numbers.
#
# The databases are registered, and Redis written, before the 100 ms
# interval starts, so that the rounds measured are ordinary ones.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use TokenstoreRedis;
use TokenstoreTest;

my $rounds = 10;            # after two warm-up rounds, each of:
my $hits = 200_000;         #   checks of the 1,000 cached tokens
my $misses = 200_000;       #   checks of unknown tokens
my $finds = 100_000;        #   token_data of the 1,000 saved sessions
my $changes = 200;          #   tokens whose info and deadline change
my $worker_runs = 3000;     # wanted after the warm-up, within:
my $deadline = 35;          # seconds of soak, and at the very least:
my $worker_runs_min = 1000; # (a worker takes about 10 ms on an idle
                            # machine, over 100 ms on a busy one)
# Limits of growth.  Bytes in use are exact: a leak of one chunk (24 bytes
# at least) per hundred worker runs, per Redis command or per hundred
# checks exceeds them.
my %limit = (
	backend_contexts => 64 * 1024,     # the session's memory contexts
	backend_rss => 1024 * 1024,        # its RssAnon
	process_used => 1024,              # bytes in use, launcher and publisher
	process_rss => 1024 * 1024,        # their RssAnon
);
my @databases = ('postgres', map { "soak$_" } 1 .. 8);

my $redis = TokenstoreRedis->new;
my $node = TokenstoreTest::node('soak',
	conf => "log_min_messages = debug1\n"
	  . "tokenstore.sweep_interval = '1s'\n"
	  . "tokenstore.redis_url = '" . $redis->url . "'\n");
foreach my $db (@databases)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db") unless $db eq 'postgres';
	$node->safe_psql($db, 'CREATE EXTENSION IF NOT EXISTS tokenstore');
	$node->safe_psql('postgres', "ALTER DATABASE $db SET log_min_messages = warning");
}
$node->safe_psql('postgres', qq{
	CREATE TABLE hot AS
		SELECT tokenstore.token_make('hot' || g) AS token FROM generate_series(1, 1000) g;
	CREATE TABLE changing AS
		SELECT tokenstore.token_make('changing' || g) AS token FROM generate_series(1, $changes) g;
	CREATE TABLE sessions AS
		SELECT 'soak-session-' || lpad(g::text, 6, '0') AS token FROM generate_series(1, 1000) g;
	SELECT count(tokenstore.token_save(token, NULL, convert_to(repeat('d', 500), 'UTF8'),
									   now() + interval '1 day')) FROM sessions});
TokenstoreTest::wait_for($node, 'postgres',
	q{SELECT count(*) = } . scalar(@databases) . q{ AND bool_and(last_flush IS NOT NULL) AND (SELECT state = 'up' FROM tokenstore.redis_stats)
	  FROM tokenstore.stats},
	't', 'the three databases are registered and written to Redis');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET tokenstore.flush_interval = '100ms'; SELECT pg_reload_conf()");

my %pid = map { (split / /)[0] => (split / /)[1] } split /\n/,
  $node->safe_psql('postgres', q{
	SELECT replace(backend_type, 'tokenstore ', '') || ' ' || pid FROM pg_stat_activity
	WHERE backend_type IN ('tokenstore launcher', 'tokenstore publisher')});
ok($pid{launcher} && $pid{publisher}, "launcher ($pid{launcher}) and publisher ($pid{publisher}) run");

# rss(PID): RssAnon of PID, in bytes (the servers run as this test's user).
sub rss
{
	my ($pid) = @_;
	my ($kb) = slurp_file("/proc/$pid/status") =~ /^RssAnon:\s+(\d+) kB/m;
	die "no RssAnon for PID $pid" unless defined $kb;
	return $kb * 1024;
}

# used(PID): the bytes in use in PID's memory contexts, as PID logs them
# when asked by pg_log_backend_memory_contexts.
sub used
{
	my ($pid) = @_;
	my $offset = -s $node->logfile;
	my $until = Time::HiRes::time() + 30;

	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)") eq 't'
	  or die "cannot ask PID $pid for its memory contexts";
	while (Time::HiRes::time() < $until)
	{
		return $1
		  if slurp_file($node->logfile, $offset) =~
		  /\[$pid\][^\n]*Grand total: \d+ bytes in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/;
		usleep(100_000);
	}
	die "PID $pid did not log its memory contexts";
}

# worker_runs(OFFSET): worker starts logged after OFFSET, by database OID.
sub worker_runs
{
	my ($offset) = @_;
	my %runs;
	$runs{$_}++
	  foreach slurp_file($node->logfile, $offset) =~
	  /starting background worker process "tokenstore worker for database (\d+)"/g;
	return \%runs;
}

sub sum { my $s = 0; $s += $_ foreach @_; return $s; }

# The cache's counters (of all databases, in every row) and the publisher's.
my $stats = q{SELECT hits || ' ' || misses || ' ' || (SELECT sent FROM tokenstore.redis_stats)
	FROM tokenstore.stats LIMIT 1};

# The soaking session, and its work of one round: returns the total of its
# memory contexts after it.
my $session = $node->background_psql('postgres');
$session->set_query_timer_restart;    # the framework's timeout, per round
my $backend = $session->query_safe('SELECT pg_backend_pid()');
my ($miss_from, $round, $found_data) = (0, 0, 0);
sub round
{
	my $hit_reps = $hits / 1000;
	my $find_reps = $finds / 1000;
	my $t0 = Time::HiRes::time();
	my $out = $session->query_safe(
		"SELECT count(tokenstore.token_user(h.token)) FROM generate_series(1, $hit_reps) g, hot h;\n"
		  . 'SELECT count(tokenstore.token_user(\'soak-unknown-\' || g)) FROM generate_series('
		  . ($miss_from + 1) . ', ' . ($miss_from + $misses) . ") g;\n"
		  . "SELECT count(*) FILTER (WHERE octet_length(tokenstore.token_data(s.token)) = 500)\n"
		  . "  FROM generate_series(1, $find_reps) g, sessions s;\n"
		  . "SELECT count(*) FILTER (WHERE tokenstore.token_set_info(c.token, '{\"round\": $round}')\n"
		  . "  AND tokenstore.token_refresh(c.token, '1 day')) FROM changing c;\n"
		  . 'SELECT sum(total_bytes) FROM pg_backend_memory_contexts');
	my ($found, $unknown, $data, $changed, $contexts) = split /\n/, $out;
	$miss_from += $misses;
	$found_data += $data;
	note(sprintf('round %d: %.1f s', $round, Time::HiRes::time() - $t0));
	$round++;
	die "round: $out"
	  unless $found == $hits && $unknown == 0 && $data == $finds && $changed == $changes;
	return $contexts;
}

# ---- warm-up: two rounds, twenty worker runs ----
my $started = Time::HiRes::time();
my $log_offset = -s $node->logfile;
round();
usleep(100_000) while sum(values %{ worker_runs($log_offset) }) < 20
  && Time::HiRes::time() < $started + $deadline;
my %start = (
	backend_contexts => round(),
	backend_rss => rss($backend),
	launcher_used => used($pid{launcher}),
	launcher_rss => rss($pid{launcher}),
	publisher_used => used($pid{publisher}),
	publisher_rss => rss($pid{publisher}));
my @counters = split / /, $node->safe_psql('postgres', $stats);
my $data_from = $found_data;
$log_offset = -s $node->logfile;
my $soak = Time::HiRes::time();
note(sprintf('warm-up: %.1f s', $soak - $started));

# ---- the soak ----
my @series = ($start{backend_contexts});
push @series, round() for 1 .. $rounds;
my $backend_rss = rss($backend);
my $load_done = Time::HiRes::time();
usleep(200_000) while sum(values %{ worker_runs($log_offset) }) < $worker_runs
  && Time::HiRes::time() < $soak + $deadline;
my %end = (
	backend_contexts => $series[-1],
	backend_rss => $backend_rss,
	launcher_used => used($pid{launcher}),
	launcher_rss => rss($pid{launcher}),
	publisher_used => used($pid{publisher}),
	publisher_rss => rss($pid{publisher}));
my $runs = worker_runs($log_offset);
my $soaked = Time::HiRes::time() - $soak;
my @after = split / /, $node->safe_psql('postgres', $stats);
$session->quit;

# ---- the work was done ----
my %oid;
foreach my $line (split /\n/,
	$node->safe_psql('postgres', 'SELECT datname, oid FROM pg_database'))
{
	my ($name, $oid) = split /\|/, $line;
	$oid{$name} = $oid;
}
note(sprintf("soak: %.1f s (the session's rounds: %.1f s); worker runs by database: %s",
	$soaked, $load_done - $soak,
	join(', ', map { "$_ " . ($runs->{ $oid{$_} } // 0) } @databases)));
my ($hit_n, $miss_n, $sent_n) = map { $after[$_] - $counters[$_] } 0 .. 2;
ok($hit_n >= $rounds * $hits, "the session's checks hit the cache ($hit_n hits)");
ok($miss_n >= $rounds * $misses, "and missed it for unknown tokens ($miss_n misses)");
is($found_data - $data_from, $rounds * $finds,
	"token_data found the sessions' data every time ($rounds x $finds finds)");
ok($sent_n >= $rounds * $changes, "the publisher sent the changes to Redis ($sent_n commands)");
my $total_runs = sum(values %$runs);
ok($total_runs >= $worker_runs_min,
	"$total_runs worker runs (wanted $worker_runs within $deadline s, at least $worker_runs_min)");
note("fewer than $worker_runs worker runs: the machine is busy") if $total_runs < $worker_runs;
# The launcher starts the database that has waited longest: however slow
# the workers, every database gets its rounds.
is(join(', ', map { "$_ " . ($runs->{ $oid{$_} } // 0) }
		grep { ($runs->{ $oid{$_} } // 0) < 10 } @databases),
	'', 'every database had at least 10 worker runs');

# ---- memory stayed flat ----
note("the session's memory contexts, bytes, after each round: @series");
foreach my $what (qw(backend_contexts backend_rss launcher_used launcher_rss publisher_used publisher_rss))
{
	my $kind = $what =~ /^backend/ ? $what : $what =~ /_rss$/ ? 'process_rss' : 'process_used';
	my $growth = $end{$what} - $start{$what};

	ok($growth <= $limit{$kind},
		sprintf('%s grew by %d bytes (%d to %d; limit %d)', $what, $growth,
			$start{$what}, $end{$what}, $limit{$kind}));
}

# Nothing failed meanwhile.
my @failures = slurp_file($node->logfile) =~
  /^.*(?:terminated by signal|exited with exit code [1-9]|PANIC|TRAP:|tokenstore worker: .* failed).*$/mg;
is(join("\n", @failures), '', 'no process crashed or failed');
note(sprintf('total: %.1f s', Time::HiRes::time() - $started));

done_testing();
