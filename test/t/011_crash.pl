# Crash under load.  Three clients (forked processes, each with a psql of
# its own) make, rotate (grace 0) and revoke tokens and check their own
# tokens, concurrently, and log each result whose commit the server
# acknowledged: a token from token_make, a token_delete that returned true,
# a rotation's new token (its old one revoked).  An operation whose answer
# never came is "in doubt" and judged by nobody.  The server then goes down
# in the middle of that load, five ways:
#   - an immediate stop (pg_ctl -m immediate);
#   - SIGKILL of the postmaster: every child of it notices and exits, and
#     the framework starts the server again;
#   - SIGKILL of the launcher while a worker flushes thousands of dirty
#     last uses (a client checks 8,000 tokens again and again), of such a
#     worker itself, and of a worker while it sweeps 20,000 expired tokens:
#     the postmaster restarts everything (crash recovery).
# After each restart: every acknowledged token of every round so far answers
# token_user with its user, every acknowledged revocation stays revoked, and
# at most the last uses made after the last flush are lost: ten probe tokens
# (their stored last use moved an hour back by hand, so that the worker
# writes a new use whatever its resolution) are used, a flush is seen in
# tokenstore.stats, the use in the table and its WAL on disk (the worker
# commits asynchronously), they are used again, and after the crash their
# stored last use is not older than the flushed use.  After the sweep was
# killed, it resumes and the expired tokens stay dead.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreTest;
use TokenstoreLoad;

my $db = 'postgres';
my $node = TokenstoreTest::node('crash',
	conf => "tokenstore.flush_interval = '200ms'\n"
	  . "tokenstore.sweep_interval = '1h'\n"
	  . "restart_after_crash = on\n"
	  . "log_statement = none\n");
my $logdir = PostgreSQL::Test::Utils::tempdir();
my $stats = "SELECT %s FROM tokenstore.stats WHERE datname = current_database()";
my $clients = 3;
my $rate = 40;     # operations a second per client: load, not saturation
my $bulk = 8000;
my @logs;          # the log file of every client so far
my $main;          # the test's own session

# sql(SQL): run SQL in the test's session (opened again after a crash);
# the test dies if it fails.
sub sql
{
	my ($query) = @_;
	$main = TokenstoreLoad::session($node, $db) unless $main && $main->{alive};
	my ($st, @out) = $main->query("$query;");
	die "$query\nfailed ($st): @out\n" unless $st eq 'ok';
	return join("\n", @out);
}

# gone(): the server went down; the test's session with it
sub gone
{
	$main->finish if $main;
	$main = undef;
}

# poll(SQL, EXPECTED, SECONDS, WHAT): until SQL returns EXPECTED
sub poll
{
	my ($query, $expected, $seconds, $what) = @_;
	my $deadline = time + $seconds;
	my $got;

	while (1)
	{
		$got = sql($query);
		last if $got eq $expected || time > $deadline;
		usleep(20_000);
	}
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is($got, $expected, $what);
}

# Tokens written to the table by hand (an operator may), for a client that
# checks them all again and again: each check leaves a dirty last use that
# the table lags by a day (the flush phases move the stored one back), so
# the worker has long flushes to be killed in.
sql(qq{
	CREATE TABLE bulk AS
		SELECT 'bulk-token-' || lpad(i::text, 8, '0') AS t FROM generate_series(1, $bulk) i;
	INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at)
		SELECT sha256(convert_to(t, 'UTF8')), 'bulk', now() - interval '1 day', now() - interval '1 day'
		  FROM bulk});

# ---- the clients ----

# A client of round NAME: makes tokens for its own users, deletes, rotates
# and checks its own live tokens (nobody else touches them), $rate
# operations a second, until it loses its connection.  Log lines:
# "make TOKEN USER", "try TOKEN" (a delete or a rotation of TOKEN was sent),
# "delete TOKEN", "rotate OLD NEW USER", "use TOKEN", "err ..." (anything
# unexpected).
sub load_client
{
	my ($file, $name) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($node, $db);
	my $deadline = time + 120;    # never outlive a stuck test
	my $next = time;
	my @live;

	while (time < $deadline)
	{
		my $r = rand;
		my ($st, @out);

		# pacing, not waiting for anything
		$next += 1 / $rate;
		usleep(($next - time) * 1e6) if $next > time;
		if (@live < 4 || $r < 0.35)
		{
			my $user = "$name-" . int(rand 8);

			($st, @out) = $s->query(
				"BEGIN;\nSELECT tokenstore.token_make('$user');\nCOMMIT;");
			last if $st eq 'lost';
			if ($st eq 'ok' && @out == 1 && $out[0] =~ /^(tks_\S+)$/)
			{
				print $log "make $1 $user\n";
				push @live, [ $1, $user ];
			}
			else
			{
				print $log "err make: @out\n";
			}
		}
		elsif ($r < 0.65)
		{
			my ($token, $user) = @{ splice(@live, int(rand @live), 1) };
			my $rotate = $r >= 0.5;

			print $log "try $token\n";
			($st, @out) = $s->query(
				"BEGIN;\n"
				  . ($rotate
					? "SELECT coalesce(tokenstore.token_rotate('$token', grace => '0'), 'dead');\n"
					: "SELECT tokenstore.token_delete('$token');\n")
				  . "COMMIT;");
			last if $st eq 'lost';
			if ($st eq 'ok' && @out == 1 && !$rotate && $out[0] eq 't')
			{
				print $log "delete $token\n";
			}
			elsif ($st eq 'ok' && @out == 1 && $rotate && $out[0] =~ /^(tks_\S+)$/)
			{
				print $log "rotate $token $1 $user\n";
				push @live, [ $1, $user ];
			}
			else
			{
				print $log "err " . ($rotate ? 'rotate' : 'delete') . " $token: @out\n";
			}
		}
		else
		{
			my ($token, $user) = @{ $live[ int(rand @live) ] };

			($st, @out) = $s->query(
				"SELECT coalesce(tokenstore.token_user('$token'), 'dead');");
			last if $st eq 'lost';
			print $log ($st eq 'ok' && "@out" eq $user
				? "use $token\n"
				: "err use $token ($user): @out\n");
		}
	}
	return;
}

# A client that checks the bulk tokens in one statement, again and again,
# as fast as it can, until it loses its connection: "pass" when all of them
# answered, "err ..." otherwise.
sub bulk_client
{
	my ($file) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($node, $db);
	my $deadline = time + 120;

	while (time < $deadline)
	{
		my ($st, @out) =
		  $s->query('SELECT count(tokenstore.token_user(t)) FROM bulk;');
		last if $st eq 'lost';
		print $log ($st eq 'ok' && "@out" eq $bulk ? "pass\n" : "err bulk: @out\n");
	}
	return;
}

# start_load(NAME): the clients of round NAME; returns their pids.
sub start_load
{
	my ($name) = @_;
	my @pids;

	for my $i (1 .. $clients)
	{
		my $file = "$logdir/$name-$i.log";

		push @logs, $file;
		push @pids, TokenstoreLoad::spawn(sub { load_client($file, "$name$i") });
	}
	return \@pids;
}

# acknowledged(FILES): how many results the clients logged
sub acknowledged
{
	return scalar grep { /^(make|delete|rotate|use) / } TokenstoreLoad::lines(@_);
}

# wait_load(NAME, N): wait until the clients of round NAME have N more
# acknowledged results than now: the load is on.
sub wait_load
{
	my ($name, $n, $what) = @_;
	my @files = grep { m{/$name-\d+\.log$} } @logs;
	my $want = acknowledged(@files) + $n;
	my $deadline = time + 60;

	usleep(20_000) while (acknowledged(@files) < $want && time < $deadline);
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	cmp_ok(acknowledged(@files), '>=', $want, "$name: $what");
}

# ---- judging ----

# The state of every token the clients learnt of, from their logs:
# token => [user, 'live' | 'revoked' | 'doubt'], and the "err" lines.
sub judge_logs
{
	my %state;
	my @errors;

	for my $line (TokenstoreLoad::lines(@logs))
	{
		if ($line =~ /^make (\S+) (\S+)$/)
		{
			$state{$1} = [ $2, 'live' ];
		}
		elsif ($line =~ /^try (\S+)$/)
		{
			$state{$1}[1] = 'doubt';
		}
		elsif ($line =~ /^delete (\S+)$/)
		{
			$state{$1}[1] = 'revoked';
		}
		elsif ($line =~ /^rotate (\S+) (\S+) (\S+)$/)
		{
			$state{$1}[1] = 'revoked';
			$state{$2} = [ $3, 'live' ];
		}
		elsif ($line =~ /^err /)
		{
			push @errors, $line;
		}
	}
	return (\%state, \@errors);
}

sub first_ten { my @l = @_; return join("\n", @l[ 0 .. ($#l < 9 ? $#l : 9) ]); }

# verify(WHAT): every acknowledged token answers its user, every
# acknowledged revocation stays revoked, and no client met an error.
sub verify
{
	my ($what) = @_;
	my ($state, $errors) = judge_logs();
	my @checked = sort grep { $state->{$_}[1] ne 'doubt' } keys %$state;
	my %count = (live => 0, revoked => 0, doubt => 0);
	my (@wrong, %answer);

	$count{ $_->[1] }++ for values %$state;
	%answer = map { split / /, $_, 2 } split /\n/,
	  sql("SELECT t || ' ' || coalesce(tokenstore.token_user(t), 'dead') FROM unnest('{"
		  . join(',', @checked) . "}'::text[]) t");
	for my $token (@checked)
	{
		my ($user, $st) = @{ $state->{$token} };
		my $want = $st eq 'live' ? $user : 'dead';
		my $got = $answer{$token} // 'missing';

		push @wrong, "$token ($st, $user): $got" if $got ne $want;
	}
	note("$what: $count{live} live and $count{revoked} revoked tokens acknowledged "
		  . "and checked, $count{doubt} in doubt (their answer never came)");
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is(scalar(@wrong), 0,
		"$what: all $count{live} acknowledged tokens answer their user, "
		  . "all $count{revoked} acknowledged revocations hold")
	  or diag(first_ten(@wrong));
	is(scalar(@$errors), 0, "$what: no client met an error")
	  or diag(first_ten(@$errors));
}

# probe(NAME): ten tokens whose stored last use an operator moves an hour
# back (so that a use lags the table by more than the resolution the worker
# writes uses at: today a minute, or a tenth of an idle timeout), used
# after T1; a flush seen after that use, and the use in the table, on disk;
# then used again after T3.  Returns what probe_after needs.
sub probe
{
	my ($name) = @_;
	my $user = "probe-$name";
	my $array = 'ARRAY[' . join(',', map { "'$_'" } split / /, sql(
		"SELECT string_agg(tokenstore.token_make('$user'), ' ') FROM generate_series(1, 10)"))
	  . ']';
	my $rows = "FROM tokenstore.token WHERE token_hash IN "
	  . "(SELECT sha256(convert_to(t, 'UTF8')) FROM unnest($array) t)";
	my $use = "SELECT count(*) FROM unnest($array) t WHERE tokenstore.token_user(t) = '$user'";
	my ($t1, $t2, $t3, $lsn);

	sql("UPDATE tokenstore.token SET last_used_at = now() - interval '1 hour' WHERE token_hash IN "
		  . "(SELECT sha256(convert_to(t, 'UTF8')) FROM unnest($array) t)");
	$t1 = sql('SELECT clock_timestamp()');
	is(sql($use), '10', "$name: ten probe tokens used");
	$t2 = sql('SELECT clock_timestamp()');
	poll(sprintf($stats, "last_flush > '$t2'"), 't', 30,
		"$name: the worker flushed after that use");
	poll("SELECT count(*) $rows AND last_used_at >= '$t1'", '10', 30,
		"$name: the use is in the table");
	# The worker commits asynchronously (synchronous_commit = off, as
	# autovacuum does): its flush is durable once the WAL writer has written
	# it, within 3 x wal_writer_delay.
	$lsn = sql('SELECT pg_current_wal_insert_lsn()');
	poll("SELECT pg_current_wal_flush_lsn() >= '$lsn'", 't', 30,
		"$name: and on disk");
	$t3 = sql('SELECT clock_timestamp()');
	is(sql($use), '10', "$name: used again (that use may be lost)");
	return { name => $name, rows => $rows, t1 => $t1, t3 => $t3 };
}

# probe_after(PROBE): right after the restart, before any check of them
sub probe_after
{
	my ($p) = @_;
	my ($flushed, $later, $all) = split /\|/, sql(qq{
		SELECT count(*) FILTER (WHERE last_used_at >= '$p->{t1}'),
			   count(*) FILTER (WHERE last_used_at >= '$p->{t3}'), count(*)
		  $p->{rows}});

	is("$flushed/$all", '10/10',
		"$p->{name}: the flushed uses survived (stored last use not older than the use before the last flush)");
	note("$p->{name}: $later of the 10 uses after that flush reached the table too");
}

# postmaster(): the postmaster's pid, from its lock file
sub postmaster
{
	open my $fh, '<', $node->data_dir . '/postmaster.pid' or die $!;
	chomp(my $pid = <$fh>);
	close $fh;
	return $pid;
}

# kill_busy(ACTIVITY, DIRTY, VICTIM): wait until a tokenstore worker is busy
# with ACTIVITY in a transaction (with at least DIRTY dirty last uses in the
# cache), and SIGKILL VICTIM ('worker': that worker, 'launcher': the
# launcher).  A worker lives for one round only (here at most half a
# second), so the victim must still be that process, a child of the
# postmaster, when the signal goes: else the test looks again.  Returns
# the pid killed, the launcher's and the dirty last uses then (nothing if
# that did not happen within 30 s).
sub kill_busy
{
	my ($activity, $dirty, $victim) = @_;
	my $postmaster = postmaster();
	my $deadline = time + 30;

	while (time < $deadline)
	{
		my ($worker, $launcher, $n) = split / /, sql(qq{
			SELECT w.pid || ' ' || l.pid || ' ' || s.dirty
			  FROM pg_stat_activity w, pg_stat_activity l, tokenstore.stats s
			 WHERE w.backend_type = 'tokenstore worker' AND w.state = 'active'
			   AND w.query = '$activity'
			   AND l.backend_type = 'tokenstore launcher'
			   AND s.datname = current_database() AND s.dirty >= $dirty});
		my $pid = $victim eq 'launcher' ? $launcher : $worker;

		return ($pid, $launcher, $n)
		  if defined $pid
		  && TokenstoreLoad::server_process($pid, $postmaster, qr/tokenstore $victim/)
		  && kill('KILL', $pid);
		usleep(5_000);
	}
	return;
}

# crash_restarted(OFFSET, VICTIM, LAUNCHER, WHAT): the postmaster saw VICTIM
# die of SIGKILL, restarted everything, and a new launcher runs.
sub crash_restarted
{
	my ($offset, $victim, $launcher, $what) = @_;

	TokenstoreTest::wait_for_within($node, $db,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tokenstore launcher' AND pid <> $launcher",
		'1', 60, "$what: the server is back, with a new launcher");
	like(TokenstoreTest::log_since($node, $offset),
		qr/\(PID $victim\) was terminated by signal 9.*terminating any other active server processes.*all server processes terminated; reinitializing/s,
		"$what: the postmaster went through crash recovery");
}

# ---- (a) an immediate stop ----
my $load = start_load('stop');
wait_load('stop', 80, 'the clients work');
my $probe = probe('stop');
wait_load('stop', 30, 'and go on working');
$node->stop('immediate');
gone();
is(TokenstoreLoad::reap($load, 30), 0, 'stop: every client saw the server go');
$node->start;
probe_after($probe);
verify('after an immediate stop');

# ---- (b) SIGKILL of the postmaster ----
$load = start_load('pmkill');
wait_load('pmkill', 80, 'the clients work');
$probe = probe('pmkill');
wait_load('pmkill', 30, 'and go on working');
my $postmaster = postmaster();
my @children = TokenstoreLoad::server_children($postmaster);
cmp_ok(scalar(@children), '>=', 3 + $clients,
	'pmkill: the postmaster has its children (launcher, backends, ...)');
$node->kill9;
gone();
# Every child notices the postmaster's death and exits.  The postmaster
# itself must also be gone, reaped by whoever adopted it (until then its pid
# in the lock files still looks alive to the next postmaster).
my $deadline = time + 60;
usleep(50_000)
  while ((grep { TokenstoreLoad::running($_) } @children) || -e "/proc/$postmaster")
  && time < $deadline;
is(join(' ', grep { TokenstoreLoad::running($_) } @children), '',
	'pmkill: after the postmaster died of SIGKILL, every child of it exited');
if (-e "/proc/$postmaster")
{
	# A zombie nobody reaps (a container's init that does not): the
	# framework cannot start the server over its lock files, so remove them.
	note("pmkill: postmaster $postmaster not reaped after 60 s; removing its lock files");
	unlink($node->data_dir . '/postmaster.pid',
		$node->host . '/.s.PGSQL.' . $node->port . '.lock');
}
is(TokenstoreLoad::reap($load, 30), 0, 'pmkill: every client saw the server go');
$node->start;
probe_after($probe);
verify('after SIGKILL of the postmaster');

# ---- (c) SIGKILL of the launcher, and of a worker, in the middle of a flush ----
for my $victim ('launcher', 'worker')
{
	my $name = "flush$victim";

	$load = start_load($name);
	wait_load($name, 80, 'the clients work');
	$probe = probe($name);
	# only now: while it runs, the worker's rounds are all flushing
	sql("UPDATE tokenstore.token SET last_used_at = now() - interval '1 day' WHERE user_id = 'bulk'");
	push @logs, "$logdir/$name-bulk.log";
	push @$load, TokenstoreLoad::spawn(sub { bulk_client("$logdir/$name-bulk.log") });
	my $offset = -s $node->logfile;
	my ($pid, $launcher, $dirty) =
	  kill_busy('tokenstore: flushing last uses', 4000, $victim);
	gone();
	ok(defined $pid, "$name: SIGKILL of the $victim while a worker flushed, with "
		  . ($dirty // 0) . ' dirty last uses in the cache');
	die "$name: no busy worker seen in 30 s\n" unless defined $pid;
	is(TokenstoreLoad::reap($load, 30), 0, "$name: every client saw the crash");
	crash_restarted($offset, $pid, $launcher,
		"$name: SIGKILL of the $victim while the worker flushed");
	probe_after($probe);
	verify("after SIGKILL of the $victim mid-flush");
}

# ---- (c) SIGKILL of a worker in the middle of a sweep ----
$load = start_load('sweep');
wait_load('sweep', 80, 'the clients work');
$probe = probe('sweep');
sql(q{
	INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at, expires_at)
		SELECT sha256(convert_to('expired-token-' || i, 'UTF8')), 'expired',
			   now() - interval '1 day', now() - interval '1 day', now() - interval '1 hour'
		  FROM generate_series(1, 20000) i});
sql('ALTER SYSTEM SET tokenstore.sweep_interval = 1');
sql('SELECT pg_reload_conf()');
my $offset = -s $node->logfile;
my ($worker, $launcher) = kill_busy('tokenstore: sweeping expired tokens', 0, 'worker');
gone();
ok(defined $worker, 'sweep: SIGKILL of a worker while it swept 20,000 expired tokens');
die "sweep: no busy worker seen in 30 s\n" unless defined $worker;
is(TokenstoreLoad::reap($load, 30), 0, 'sweep: every client saw the crash');
crash_restarted($offset, $worker, $launcher,
	'sweep: SIGKILL of the worker while it swept');
probe_after($probe);
verify('after SIGKILL of a worker mid-sweep');
my $left = sql("SELECT count(*) FROM tokenstore.token WHERE user_id = 'expired'");
cmp_ok($left, '>', 0, "sweep: the kill interrupted the sweep ($left expired rows left)");
is(sql("SELECT count(tokenstore.token_user('expired-token-' || i)) FROM generate_series(1, 20000, 100) i"),
	'0', 'sweep: the expired tokens left are dead');
poll("SELECT count(*) < $left FROM tokenstore.token WHERE user_id = 'expired'",
	't', 30, 'sweep: after the restart the sweep goes on');

# Last, with no load: everything acknowledged in every round still holds.
verify('at the end');

done_testing();
