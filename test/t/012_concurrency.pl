# Concurrency invariants under load, with clients that are forked processes
# with a psql each (real parallel sessions), logging what the server
# answered with Time::HiRes times (one clock: one machine).
#
# (a) Per-user rules.  Four clients log in seven users as fast as they can:
# three in multi mode with max_tokens => 3, two in single mode, two in share
# mode (one client in REPEATABLE READ transactions, where a serialization
# failure is an allowed answer), and check their tokens now and then
# (which changes the least recently used order).  Meanwhile the test
# samples the live tokens of every user, alternately from the table (one
# snapshot) and through token_list, and at no sample may a user have more
# than its limit: 3, 1 (single), 1 (share).  Every share login of a user
# returns the same token.  Afterwards each user has exactly its limit of
# live tokens, all of them tokens that a client was given.
#
# (b) Revocation is instant.  One client revokes 100 tokens one by one, in
# five ways (token_delete, token_delete_user, token_rotate with grace 0, an
# operator's DELETE and UPDATE of the deadline), each in a transaction, and
# records when each COMMIT returned.  Three clients keep checking the tokens
# around the one being revoked (one of them inside REPEATABLE READ
# transactions that began earlier) and record when each check started
# (before sending it) and ended.  A check that started after the
# revocation's COMMIT returned must not answer the user; a check that ended
# before the revocation was sent must answer it.  Half the tokens were made
# by token_make (cached at commit), half written to the table by hand
# (cached by their first check: the miss, fill and revoke paths all run).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TokenstoreTest;
use TokenstoreLoad;

my $db = 'postgres';
my $node = TokenstoreTest::node('concurrency',
	conf => "tokenstore.flush_interval = '500ms'\nlog_statement = none\n");
my $logdir = PostgreSQL::Test::Utils::tempdir();
my $main = TokenstoreLoad::session($node, $db);

# sql(SQL): run SQL in the test's session; the test dies if it fails.
sub sql
{
	my ($query) = @_;
	my ($st, @out) = $main->query("$query;");
	die "$query\nfailed ($st): @out\n" unless $st eq 'ok';
	return join("\n", @out);
}

sub first_ten { my @l = @_; return join("\n", @l[ 0 .. ($#l < 9 ? $#l : 9) ]); }

# ======== (a) per-user rules ========

my %limit = (m1 => 3, m2 => 3, m3 => 3, s1 => 1, s2 => 1, h1 => 1, h2 => 1);
my %mode = map { $_ => /^m/ ? 'multi' : /^s/ ? 'single' : 'share' } keys %limit;
my @users = sort keys %limit;
my $stop = "$logdir/stop-logins";

# A login client: "mk USER TOKEN" for each login answered, "ser USER" for a
# serialization failure (REPEATABLE READ only), "err ..." for anything else.
sub login_client
{
	my ($file, $rr) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($node, $db);
	my $deadline = time + 60;
	my @mine;

	while (!-e $stop && time < $deadline)
	{
		my $user = $users[ int(rand @users) ];
		my $make = "SELECT tokenstore.token_make('$user', mode => '$mode{$user}'"
		  . ($mode{$user} eq 'multi' ? ", max_tokens => $limit{$user}" : '') . ');';
		my ($st, @out) = $s->query($rr
			? "BEGIN ISOLATION LEVEL REPEATABLE READ;\n$make\nCOMMIT;"
			: $make);

		last if $st eq 'lost';
		if ($st eq 'ok' && @out == 1 && $out[0] =~ /^(tks_\S+)$/)
		{
			print $log "mk $user $1\n";
			push @mine, $1;
		}
		elsif ($rr && grep { /could not serialize access/ } @out)
		{
			print $log "ser $user\n";
		}
		else
		{
			print $log "err $user: @out\n";
		}
		# now and then a check of one of its recent tokens (dead or alive)
		if (@mine && rand() < 0.3)
		{
			($st, @out) = $s->query("SELECT tokenstore.token_user('$mine[-1 - int(rand(@mine < 5 ? @mine : 5))]');");
			last if $st eq 'lost';
			print $log "err check: @out\n" unless $st eq 'ok';
		}
	}
	return;
}

my @login_logs = map { "$logdir/login-$_.log" } 1 .. 4;
my @pids = map {
	my $i = $_;
	TokenstoreLoad::spawn(sub { login_client($login_logs[ $i - 1 ], $i == 4) })
} 1 .. 4;

# The sampler: live tokens per user, from the table in one snapshot, or
# through token_list (one call per user).
my $in = join(',', map { "'$_'" } @users);
my %query = (
	table => "SELECT string_agg(user_id || '=' || n, ' ') FROM "
	  . "(SELECT user_id, count(*) AS n FROM tokenstore.token WHERE user_id IN ($in) "
	  . "AND (expires_at IS NULL OR expires_at > now()) GROUP BY user_id) c",
	token_list => "SELECT string_agg(u || '=' || (SELECT count(*) FROM tokenstore.token_list(u)), ' ') "
	  . "FROM unnest(ARRAY[$in]) u");
my %samples = (table => 0, token_list => 0);
my (%max, @over);
my $start = time;
my $logins = 0;

while (1)
{
	my $how = ($samples{table} + $samples{token_list}) % 2 ? 'token_list' : 'table';
	my %n = map { split /=/ } split / /, sql($query{$how});

	$samples{$how}++;
	for my $user (@users)
	{
		my $n = $n{$user} // 0;

		$max{$user} = $n if $n > ($max{$user} // 0);
		push @over, "$how sample $samples{$how}: $user has $n live tokens (limit $limit{$user})"
		  if $n > $limit{$user};
	}
	# at least 4 s and 600 logins, at most 20 s
	if (($samples{table} + $samples{token_list}) % 20 == 0)
	{
		$logins = grep { /^mk / } TokenstoreLoad::lines(@login_logs);
		last if time - $start > 20 || (time - $start > 4 && $logins >= 600);
	}
}
open my $fh, '>', $stop or die $!;
close $fh;
is(TokenstoreLoad::reap(\@pids, 30), 0, 'the login clients stopped');

my @lines = TokenstoreLoad::lines(@login_logs);
my %tokens;    # user => { token => logins }
for (@lines)
{
	$tokens{$1}{$2}++ if /^mk (\S+) (\S+)$/;
}
my $total = grep { /^mk / } @lines;
my $samples = $samples{table} + $samples{token_list};
note(sprintf('%d logins (%d serialization failures in REPEATABLE READ), %d samples (%d from the table, %d through token_list) in %.1f s',
		$total, scalar(grep { /^ser / } @lines), $samples, $samples{table},
		$samples{token_list}, time - $start));
is(join("\n", grep { /^err / } @lines), '', 'no login met an error');
cmp_ok($total, '>=', 300, "the clients logged in $total times");
cmp_ok($samples, '>=', 100, "the sampler took $samples samples meanwhile");
is(scalar(@over), 0,
	"at none of the $samples samples did a user have more live tokens than its limit")
  or diag(first_ten(@over));
is(join(' ', map { "$_=" . ($max{$_} // 0) } @users),
	join(' ', map { "$_=$limit{$_}" } @users),
	'and the samples saw every user at its limit');
for my $user (grep { $mode{$_} eq 'share' } @users)
{
	my @distinct = keys %{ $tokens{$user} // {} };
	my $n = 0;
	$n += $_ for values %{ $tokens{$user} // {} };
	is(scalar(@distinct), 1, "all $n concurrent share logins of $user got the same token");
}

# Afterwards: each user has exactly its limit of live tokens, and they are
# tokens that logins returned (the table holds no others).
my @given = map { keys %{ $tokens{$_} } } @users;
my %answer = map { split / /, $_, 2 } split /\n/,
  sql("SELECT t || ' ' || coalesce(tokenstore.token_user(t), 'dead') FROM unnest('{"
	  . join(',', @given) . "}'::text[]) t");
my %live;
for my $user (@users)
{
	$live{$user} = grep { ($answer{$_} // '') eq $user } keys %{ $tokens{$user} };
}
my %rows = map { split /=/ } split / /, sql(
	"SELECT string_agg(user_id || '=' || n, ' ') FROM (SELECT user_id, count(*) AS n "
	  . "FROM tokenstore.token WHERE user_id IN ($in) GROUP BY user_id) c");
is(join(' ', map { "$_=$live{$_}/" . ($rows{$_} // 0) } @users),
	join(' ', map { "$_=$limit{$_}/$limit{$_}" } @users),
	'afterwards every user has its limit of live tokens (given by a login / rows in the table)');

# ======== (b) revocation is instant ========

my $count = 100;
my @token;
my $made = sql("SELECT string_agg(tokenstore.token_make('r' || i), ' ' ORDER BY i) "
	  . "FROM generate_series(0, $count - 1, 2) i");
my @made = split / /, $made;
for my $i (0 .. $count - 1)
{
	$token[$i] = $i % 2 == 0 ? $made[ $i / 2 ] : sprintf('hand-made-token-%05d-%s', $i, 'x' x 8);
}
sql('INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at) SELECT '
	  . "sha256(convert_to(t, 'UTF8')), 'r' || i, now(), now() FROM "
	  . "unnest('{" . join(',', map { $token[$_] } grep { $_ % 2 } 0 .. $count - 1)
	  . "}'::text[], ARRAY(SELECT generate_series(1, $count - 1, 2))) AS h(t, i)");
# live: the made ones answer their user (they are cached anyway); the hand
# made ones are only counted in the table, so that their first check, a
# miss that fills the cache, comes while the revocations run
is(sql("SELECT count(*) FROM generate_series(0, $count - 1, 2) i "
		  . "WHERE tokenstore.token_user(('{" . join(',', @made) . "}'::text[])[i / 2 + 1]) = 'r' || i")
	  . '/'
	  . sql("SELECT count(*) FROM tokenstore.token WHERE token_hash IN (SELECT sha256(convert_to(t, 'UTF8')) "
		  . "FROM unnest('{" . join(',', @token) . "}'::text[]) t) AND (expires_at IS NULL OR expires_at > now())"),
	($count / 2) . "/$count", "$count tokens to revoke, each of its own user, all live");

my $before = TokenstoreTest::stats($node, $db);
my $revoker_log = "$logdir/revoker.log";
$stop = "$logdir/stop-checks";

# The revoker: "rv I T0 TACK" once the COMMIT of token I's revocation has
# returned (T0: before it was sent), "err ..." otherwise.  At most 30 a
# second, so that the checks crowd around each.
sub revoker
{
	my $log = TokenstoreLoad::logger($revoker_log);
	my $s = TokenstoreLoad::session($node, $db);
	my $next = time;

	for my $i (0 .. $count - 1)
	{
		my $t = $token[$i];
		my $row = "token_hash = sha256(convert_to('$t', 'UTF8'))";
		my ($how, $want) = @{
			[
				[ "SELECT tokenstore.token_delete('$t')", 't' ],
				[ "SELECT tokenstore.token_delete_user('r$i')", '1' ],
				[ "SELECT tokenstore.token_rotate('$t', grace => '0') IS NOT NULL", 't' ],
				[ "DELETE FROM tokenstore.token WHERE $row RETURNING 'deleted'", 'deleted' ],
				[ "UPDATE tokenstore.token SET expires_at = now() - interval '1 s' WHERE $row RETURNING 'expired'", 'expired' ],
			]->[ $i % 5 ]
		};

		$next += 1 / 30;    # pacing, not waiting for anything
		usleep(($next - time) * 1e6) if $next > time;
		my $t0 = time;
		my ($st, @out) = $s->query("BEGIN;\n$how;\nCOMMIT;");
		my $tack = time;
		last if $st eq 'lost';
		print $log ($st eq 'ok' && "@out" eq $want
			? sprintf("rv %d %.6f %.6f\n", $i, $t0, $tack)
			: "err revoke $i: @out\n");
	}
	return;
}

# A checker: "ck I TSTART TEND ANSWER", checking the tokens from two before
# to three after the one being revoked next; with $rr, inside REPEATABLE
# READ transactions of 50 checks each.
sub checker
{
	my ($file, $rr) = @_;
	my $log = TokenstoreLoad::logger($file);
	my $s = TokenstoreLoad::session($node, $db);
	my $deadline = time + 60;
	my $in_xact = 0;
	my $next = time;

	while (!-e $stop && time < $deadline)
	{
		my $done = grep { /^rv / } TokenstoreLoad::lines($revoker_log);

		# pacing (at most 250 checks a second), so that the revoker is not
		# starved of the two cores
		$next += 1 / 250;
		usleep(($next - time) * 1e6) if $next > time;
		my $i = $done - 2 + int(rand 6);
		my ($st, @out);

		$i = 0 if $i < 0;
		$i = $count - 1 if $i >= $count;
		if ($rr && $in_xact == 0)
		{
			($st, @out) = $s->query("BEGIN ISOLATION LEVEL REPEATABLE READ;\nSELECT 1;");
			last if $st eq 'lost';
		}
		my $t0 = time;
		($st, @out) = $s->query("SELECT coalesce(tokenstore.token_user('$token[$i]'), 'dead');");
		my $t1 = time;
		last if $st eq 'lost';
		print $log ($st eq 'ok' && @out == 1
			? sprintf("ck %d %.6f %.6f %s\n", $i, $t0, $t1, $out[0])
			: "err check $i: @out\n");
		if ($rr && ++$in_xact == 50)
		{
			($st, @out) = $s->query('COMMIT;');
			last if $st eq 'lost';
			$in_xact = 0;
		}
	}
	return;
}

my @check_logs = map { "$logdir/checker-$_.log" } 1 .. 3;
@pids = map {
	my $i = $_;
	TokenstoreLoad::spawn(sub { checker($check_logs[ $i - 1 ], $i == 3) })
} 1 .. 3;
my $revoker = TokenstoreLoad::spawn(\&revoker);
$start = time;
is(TokenstoreLoad::reap([$revoker], 60), 0, 'the revoker finished');
open $fh, '>', $stop or die $!;
close $fh;
is(TokenstoreLoad::reap(\@pids, 30), 0, 'the checkers stopped');
my $elapsed = time - $start;

my %rv;
my @errors;
for (TokenstoreLoad::lines($revoker_log, @check_logs))
{
	$rv{$1} = [ $2, $3 ] if /^rv (\d+) (\S+) (\S+)$/;
	push @errors, $_ if /^err /;
}
is(join("\n", @errors), '', 'no revocation or check met an error');
is(scalar(keys %rv), $count, "all $count revocations committed");

my %n = (after => 0, before => 0, overlap => 0, rr => 0);
my @late;
my @refused;
for my $k (0 .. 2)
{
	for (TokenstoreLoad::lines($check_logs[$k]))
	{
		next unless /^ck (\d+) (\S+) (\S+) (\S+)$/;
		my ($i, $t0, $t1, $answer) = ($1, $2, $3, $4);
		my ($r0, $rack) = @{ $rv{$i} // [ 9e99, 9e99 ] };

		if ($t0 > $rack)
		{
			$n{after}++;
			$n{rr}++ if $k == 2;
			push @late, sprintf('token %d (r%d) answered %s to a check %.1f ms after its revocation committed',
				$i, $i, $answer, ($t0 - $rack) * 1000)
			  if $answer ne 'dead';
		}
		elsif ($t1 < $r0)
		{
			$n{before}++;
			push @refused, "token $i (r$i) answered $answer before its revocation"
			  if $answer ne "r$i";
		}
		else
		{
			$n{overlap}++;
		}
	}
}
my $after = TokenstoreTest::stats($node, $db);
note(sprintf('%d checks in %.1f s: %d after the revocation (%d inside REPEATABLE READ), '
		  . '%d before, %d concurrent with it; cache hits %d, misses %d, fills %d',
		$n{after} + $n{before} + $n{overlap}, $elapsed, $n{after}, $n{rr}, $n{before},
		$n{overlap}, $after->{hits} - $before->{hits},
		$after->{misses} - $before->{misses}, $after->{fills} - $before->{fills}));
cmp_ok($n{after}, '>=', 100, "$n{after} checks started after their token's revocation had committed");
cmp_ok($n{rr}, '>=', 50, "$n{rr} of them inside REPEATABLE READ transactions");
is(scalar(@late), 0, 'none of them answered the user') or diag(first_ten(@late));
cmp_ok($n{before}, '>=', 100, "$n{before} checks ended before their token's revocation was sent");
is(scalar(@refused), 0, 'all of them answered the user') or diag(first_ten(@refused));
is(sql("SELECT count(tokenstore.token_user(t)) FROM unnest('{" . join(',', @token) . "}'::text[]) t"),
	'0', 'afterwards every revoked token is dead');

done_testing();
