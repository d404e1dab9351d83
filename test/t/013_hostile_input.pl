# Hostile input: thousands of seeded random calls of every function of the
# API and of every setting the application may set, made by a role with the
# application's two grants only: NULLs, empty and 1 MB strings, extreme and
# mixed-unit intervals (infinite ones where the server has them: PostgreSQL
# 17 on), deadlines just before and past the year 10000, 10,000-level and
# megabyte info, malformed token_ids, absurd max_tokens, unknown modes, user
# ids at and past 64 bytes (multibyte too), tokens of 15, 16, 1024 and 1025
# bytes, generated-looking tokens with bad checksums, weird unicode,
# sessions (token_save, token_data, token_touch, token_sessions,
# token_delete_sessions, token_rotate's sign-in and new_token) with empty,
# malformed and 1 MB data and past, pre-2000, infinite and out-of-range
# expires_at, and probes of what the role must not reach (the table, the
# internal schema's helpers: token_record_uses too).  The calls run in subtransactions
# (chunks of TokenstoreFuzz's fuzz.run, under each isolation level) and as
# top-level statements, some in read-only or rolled-back transactions.
#
# Every call works or fails with an SQLSTATE it may fail with: never an
# internal error (XX000), never a statement timeout (a hang), never a crash
# (postmaster, launcher and publisher keep their pids; the log has no
# signal, PANIC, TRAP, worker failure or resource-leak warning).  Nothing
# is left behind by a call that failed or rolled back: no row of its user,
# no working caller-provided token, no cache entry, no Redis key (Redis
# holds exactly the table's tokens); every token that answers has its row
# and every clearly live one answers.  The database then dumps and restores
# (pg_dump -Fc, pg_restore into a new database) with the same live tokens,
# all working, and mirrored to Redis.
#
# The seed is printed; TOKENSTORE_FUZZ_SEED=N replays a run (up to what the
# clock decides: tokens that expire, deadlines near the limit).
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use TokenstoreFuzz;
use TokenstoreRedis;
use TokenstoreTest;

my $seed = $ENV{TOKENSTORE_FUZZ_SEED} // 1 + int(rand(2_000_000_000));
die "TOKENSTORE_FUZZ_SEED must be a positive integer, not '$seed'"
  unless $seed =~ /^[0-9]{1,15}$/;
diag("fuzz seed $seed (TOKENSTORE_FUZZ_SEED=$seed replays this run)");
srand($seed);

my $chunks = 40;         # subtransaction pass: chunks of calls, one
my $per_chunk = 50;      # statement (and statement_timeout) each
my $top_calls = 300;     # top-level pass: one statement per call
my $db = 'fuzz';
my @app = (extra_params => [ '-U', 'app' ]);
my $started = Time::HiRes::time();

# The SQLSTATEs a call may fail with (besides function-specific rules).
my @allowed = qw(
  22004 22023 22008 23505 42501
  22P02 22007 22015 22003 22P05 22021
  54000 54001 40001 25006
  55P02 42602 42704);
# Live "clearly": no deadline within two days, so that neither the sweep
# nor the passing of time changes the set during the test.
my $clearly_live = q{(t.expires_at IS NULL OR t.expires_at > now() + interval '2 days')
	AND (t.idle_timeout IS NULL OR t.idle_timeout > interval '2 days')};

# chunk_seed(N): setseed()'s argument for chunk N, from the seed.
sub chunk_seed
{
	my ($n) = @_;
	return sprintf('%.6f', (($seed * 7919 + $n * 104729) % 1999999) / 1000000 - 1);
}

sub phase
{
	my ($what, $since) = @_;
	note(sprintf('%s: %.1f s', $what, Time::HiRes::time() - $since));
	return Time::HiRes::time();
}

my $redis = TokenstoreRedis->new;
my $node = TokenstoreTest::node('hostile',
	conf => "log_error_verbosity = verbose\n"
	  . "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.flush_interval = '2s'\n"
	  . "tokenstore.sweep_interval = '1s'\n");
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, 'CREATE EXTENSION tokenstore');
$node->safe_psql($db,
	'CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA tokenstore TO app; '
	  . 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app; '
	  . "ALTER ROLE app SET statement_timeout = '10s'");
TokenstoreFuzz::install($node, $db, 'app');
is($node->safe_psql($db,
		"SELECT rolsuper || ' ' || (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = 'app'"),
	'false 0', 'the fuzzing role is no superuser and a member of no role')
  or BAIL_OUT('wrong role');
my $version = $node->safe_psql($db, 'SHOW server_version_num');
note($version >= 170000
	? "PostgreSQL $version: 'infinity' and '-infinity' are intervals the functions get"
	: "PostgreSQL $version: 'infinity' intervals do not exist, their text is an input error (22007)");

TokenstoreTest::wait_for($node, $db, 'SELECT state FROM tokenstore.redis_stats', 'up',
	'the Redis mirror is up');
my $processes = q{SELECT string_agg(backend_type || ' ' || pid, ', ' ORDER BY backend_type)
	FROM pg_stat_activity WHERE backend_type IN ('tokenstore launcher', 'tokenstore publisher')};
my $before = $node->safe_psql($db, $processes);
like($before, qr/^tokenstore launcher \d+, tokenstore publisher \d+$/,
	'launcher and publisher run');
my ($postmaster) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
my $t = phase('setup', $started);

# ---- pass 1: chunks of calls, each call in a subtransaction ----
# One session runs every chunk, each a statement of its own (so a hang is
# a statement timeout of one chunk), under a random isolation level; the
# NOTICE that precedes each call names the one that was running.
my @isolation = ('read committed', 'repeatable read', 'serializable');
my $script = '';
for my $c (0 .. $chunks - 1)
{
	my ($first, $last) = ($c * $per_chunk + 1, ($c + 1) * $per_chunk);
	my $iso = $isolation[ int(rand(@isolation)) ];

	$script .= "SET default_transaction_isolation = '$iso';\n"
	  . 'SELECT setseed(' . chunk_seed($c) . ");\n"
	  . "SELECT fuzz.run($first, $last);\n"
	  . "\\echo \@\@chunk $c :SQLSTATE\n";
}
my ($ret, $out, $err) = $node->psql($db, $script, @app, on_error_stop => 0);
my @done = $out =~ /^\@\@chunk \d+ 00000$/mg;
my ($begun, @failures);
foreach (split /\n/, $err)
{
	$begun = $1 if /fuzz call (\d+: .*)$/;
	push @failures, "$1\n  while running call " . ($begun // 'none') if /(?:ERROR|FATAL|PANIC):\s+(.*)$/;
}
is(scalar(@done) . ' ' . join("\n", @failures), "$chunks ",
	sprintf('%d calls in subtransactions, %d per statement, none past statement_timeout',
		$chunks * $per_chunk, $per_chunk))
  or diag("seed $seed, psql exit code $ret");
$t = phase('subtransaction pass', $t);

# ---- pass 2: top-level statements, one per call ----
# Each call is planned by a statement of its own (so that its plan stays
# when it fails), then run: in autocommit, in a read-only transaction, in a
# transaction rolled back, or in a savepoint rolled back.  psql reports
# each call's SQLSTATE.
my $first_top = $chunks * $per_chunk + 1;
my $last_top = $first_top + $top_calls - 1;
my %pass;
$script = 'SELECT setseed(' . chunk_seed($chunks) . ");\n";
for my $i ($first_top .. $last_top)
{
	my $r = rand();
	my $call = "SELECT fuzz.exec($i) IS NOT NULL;\n\\echo \@\@ $i :SQLSTATE\n\\echo \@\@m :'LAST_ERROR_MESSAGE'\n";

	$pass{$i} =
	    $r < 0.7 ? 'top-level'
	  : $r < 0.8 ? 'read-only'
	  : $r < 0.9 ? 'rolled back'
	  : 'savepoint rolled back';
	$script .= "SELECT fuzz.plan_one($i);\n"
	  . ($pass{$i} eq 'top-level' ? $call
		: $pass{$i} eq 'read-only' ? "BEGIN READ ONLY;\n${call}COMMIT;\n"
		: $pass{$i} eq 'rolled back' ? "BEGIN;\n${call}ROLLBACK;\n"
		: "BEGIN;\nSAVEPOINT s;\n${call}ROLLBACK TO SAVEPOINT s;\nCOMMIT;\n");
}
($ret, $out, $err) = $node->psql($db, $script, @app, on_error_stop => 0);
my (%state, %message, $current);
foreach (split /\n/, $out)
{
	if (/^\@\@ (\d+) ([0-9A-Z]{5})$/)
	{
		$state{$1} = $2;
		$current = $1;
	}
	elsif (/^\@\@m (.*)$/ && defined $current && $state{$current} ne '00000')
	{
		$message{$current} = $1;
	}
}
is($ret . ' ' . scalar(keys %state), "0 $top_calls",
	"$top_calls calls as top-level statements, each with its SQLSTATE")
  or diag("psql exit code $ret\n" . substr($err, -2000));
if (%state)
{
	my $dollar = sub { my $m = $_[0] // return 'NULL'; $m =~ s/\$m\$//g; return "\$m\$$m\$m\$"; };
	$node->safe_psql($db,
		'INSERT INTO fuzz.result (i, sqlstate, message, pass) VALUES '
		  . join(",\n",
			map { "($_, '$state{$_}', " . $dollar->($message{$_}) . ", '$pass{$_}')" }
			sort { $a <=> $b } keys %state));
}
$t = phase('top-level pass', $t);

# ---- every outcome is one a call may have ----
# The checks share one session (starting psql for each costs more than
# most of them, on a busy machine).
my $session = $node->background_psql($db);
my $q = sub { return $session->query_safe($_[0]); };
my $calls = $chunks * $per_chunk + $top_calls;
is($q->('SELECT count(*) || \' \' || count(r.i) FROM fuzz.plan p LEFT JOIN fuzz.result r USING (i)'),
	"$calls $calls", "all $calls calls were planned and have an outcome");
note("outcomes (function: SQLSTATE count, ...):\n"
	  . $q->(q{SELECT fn || ': ' || string_agg(sqlstate || ' ' || n, ', ' ORDER BY sqlstate)
		  FROM (SELECT p.fn, r.sqlstate, count(*) n FROM fuzz.plan p JOIN fuzz.result r USING (i)
				GROUP BY 1, 2) s GROUP BY fn ORDER BY fn}));
note('slowest calls in subtransactions (ms):'
	  . $q->(q{SELECT string_agg(E'\n' || round(r.ms) || ' ' || p.display, '' ORDER BY r.ms DESC)
		  FROM (SELECT * FROM fuzz.result WHERE ms IS NOT NULL ORDER BY ms DESC LIMIT 5) r
		  JOIN fuzz.plan p USING (i)}));
my $allowed = join(', ', map { "'$_'" } '00000', @allowed);
is($q->(qq{
	SELECT string_agg(format('call %s (%s): %s -> %s %s', r.i, r.pass, p.display,
							 r.sqlstate, coalesce(r.message, '')), E'\\n' ORDER BY r.i)
	FROM fuzz.result r JOIN fuzz.plan p USING (i)
	WHERE NOT CASE
		WHEN p.fn = 'probe' THEN r.sqlstate = '42501'
			OR (r.pass = 'read-only' AND r.sqlstate = '25006')
		WHEN p.fn IN ('token_user', 'token_check', 'token_data', 'token_touch')
			THEN r.sqlstate = '00000'
		-- (under REPEATABLE READ and SERIALIZABLE, a row the worker's flush
		-- or sweep changed after the snapshot is a serialization failure,
		-- as for any write: see src/store.c)
		WHEN p.fn = 'token_delete' THEN r.sqlstate IN ('00000', '25006', '40001')
		ELSE r.sqlstate IN ($allowed) END}),
	'',
	'every call worked or failed with an SQLSTATE it may fail with (checks never fail, probes are refused)')
  or diag("seed $seed");
is($q->(q{SELECT count(*) FILTER (WHERE sqlstate LIKE 'XX%') || ' ' || count(*) FILTER (WHERE sqlstate = '57014') FROM fuzz.result}),
	'0 0', 'no internal error (XX000), no statement timeout');
is($q->(q{
	SELECT string_agg(f, ' ') FROM unnest(ARRAY['token_make', 'token_user', 'token_check',
		'token_list', 'token_refresh', 'token_set_info', 'token_delete', 'token_delete_id',
		'token_delete_user', 'token_rotate', 'token_sweep', 'token_flush', 'token_save',
		'token_data', 'token_touch', 'token_sessions', 'token_delete_sessions',
		'set_config']) f
	WHERE NOT EXISTS (SELECT FROM fuzz.plan p JOIN fuzz.result r USING (i)
					  WHERE p.fn = f AND r.sqlstate = '00000')}),
	'', 'every function and set_config worked at least once');
# (results are recorded by the subtransaction pass)
is($q->(q{
	SELECT string_agg(what, ', ') FROM (VALUES
		('token_save made a session', 'token_save', 'true', '%'),
		('token_data returned data', 'token_data', '_%', '%'),
		('token_touch found a live token', 'token_touch', 'true', '%'),
		('token_sessions listed one', 'token_sessions', '_%', '%'),
		('token_rotate attached a user', 'token_rotate', '_%', '%user_id => %'),
		('token_rotate took a new_token', 'token_rotate', '_%', '%new_token => %')
	) v(what, f, result, call)
	WHERE NOT EXISTS (SELECT FROM fuzz.plan p JOIN fuzz.result r USING (i)
					  WHERE p.fn = f AND r.sqlstate = '00000' AND r.result LIKE v.result
						AND p.sql LIKE v.call)}),
	'', 'the sessions\' functions and token_rotate\'s sign-in and new_token did their work at least once');
is($q->(q{
	SELECT string_agg(s, ' ') FROM unnest(ARRAY['22004', '22023', '22008', '23505', '22P02']) s
	WHERE NOT EXISTS (SELECT FROM fuzz.plan p JOIN fuzz.result r USING (i)
					  WHERE p.fn = 'token_make' AND r.sqlstate = s)}),
	'', 'token_make was refused with 22004, 22023, 22008, 23505 and 22P02');
ok($q->(q{SELECT count(*) FROM fuzz.plan p JOIN fuzz.result r USING (i) WHERE p.fn = 'probe'}) > 0,
	'the role probed the table, the internal schema, the views, redis_url and the key file');
my ($denied, undef, $denial) = $node->psql($db,
	"\\set VERBOSITY verbose\nSELECT tokenstore_internal.token_record_uses(ARRAY[sha256('x')], ARRAY[now()])",
	@app);
like($denial, qr/ERROR:\s+42501:/,
	'the role may not record uses (tokenstore_internal.token_record_uses): 42501');

# ---- nothing is left behind by a failed or rolled-back call ----
# User ids that could be valid are unique to their call: a row whose user
# no committed, successful token_make named is a leftover.
my $committed = q{r.sqlstate = '00000' AND r.pass IN ('subtransaction', 'top-level')};
my $failed_makes = $q->(qq{
	SELECT count(*) FROM fuzz.plan p JOIN fuzz.result r USING (i)
	WHERE p.fn = 'token_make' AND NOT ($committed)
	  AND octet_length(p.make_user) BETWEEN 1 AND 64});
ok($failed_makes > 0,
	"$failed_makes token_make calls with a valid-looking user id failed or rolled back");
is($q->(qq{
	SELECT count(*) || coalesce(': ' || string_agg(DISTINCT user_id, ', '), '')
	FROM tokenstore.token t
	WHERE t.user_id IS NOT NULL
	  AND NOT EXISTS (SELECT FROM fuzz.plan p JOIN fuzz.result r USING (i)
					  WHERE p.fn IN ('token_make', 'token_save', 'token_rotate')
						AND $committed AND p.make_user = t.user_id)}),
	'0', 'no row whose user only failed or rolled-back calls named');
my ($given, $working) = split /\|/, $q->(qq{
	SELECT count(*), count(*) FILTER (WHERE tokenstore.token_touch(p.given_token)
		OR EXISTS (SELECT FROM tokenstore.token t
				   WHERE t.token_hash = sha256(convert_to(p.given_token, 'UTF8'))))
	FROM fuzz.plan p JOIN fuzz.result r USING (i)
	WHERE p.fn IN ('token_make', 'token_save', 'token_rotate') AND p.given_unique
	  AND NOT ($committed)});
ok($given > 0,
	"$given failed or rolled-back token_make, token_save and token_rotate calls gave a token of their own");
is($working, '0', 'none of those tokens works or has a row (nor a cache entry)');

# Every token of the pool that answers has its row, with that user; every
# clearly live row of the pool answers.  (As the superuser, with the
# default prefix: a token generated under another prefix has another
# length, so it is no mistyped one here.  Left out: caller-provided tokens
# shaped like generated ones of the default prefix, which a session with
# another prefix may save; see the TODO test below.)
my $pool = q{(SELECT DISTINCT token FROM fuzz.tokens
	WHERE NOT (given AND token ~ '^tks_[A-Za-z0-9_-]{49}$')) f};
is($q->(qq{
	SELECT count(*) FROM $pool
	WHERE tokenstore.token_user(f.token) IS DISTINCT FROM
		(SELECT t.user_id FROM tokenstore.token t
		 WHERE t.token_hash = sha256(convert_to(f.token, 'UTF8')))
	  AND tokenstore.token_user(f.token) IS NOT NULL}),
	'0', 'every token that answers has its row and its user');
my $pool_live = qq{
	SELECT count(*) || ' ' || count(*) FILTER (WHERE tokenstore.token_user(f.token) IS NOT DISTINCT FROM t.user_id)
	FROM $pool JOIN tokenstore.token t ON t.token_hash = sha256(convert_to(f.token, 'UTF8'))
	WHERE $clearly_live};
my ($live, $answering) = split / /, $q->($pool_live);
ok($live > 0, "$live tokens of the pool are clearly live");
is($answering, $live, 'and every one answers with its user');

# The cache holds no entry without a row (an entry of a failed token_make
# would be one): its entries are at most the rows.
$q->('SELECT tokenstore.token_sweep()');
TokenstoreTest::wait_for_within($node, $db,
	"SELECT cached <= (SELECT count(*) FROM tokenstore.token) FROM tokenstore.stats WHERE datname = '$db'",
	't', 10, 'the cache holds no more entries than the table has rows');
note('cache entries, rows: '
	  . $q->("SELECT cached || ', ' || (SELECT count(*) FROM tokenstore.token) FROM tokenstore.stats WHERE datname = '$db'"));

# converge(WHAT, CODE, SECONDS): poll CODE until it returns '', then pass
# WHAT; its first answer and the time taken go to the log.
sub converge
{
	my ($what, $code, $seconds) = @_;
	my $start = Time::HiRes::time();
	my $first = $code->();
	my $diff = $first;

	while ($diff ne '' && Time::HiRes::time() < $start + $seconds)
	{
		Time::HiRes::usleep(200_000);
		$diff = $code->();
	}
	note(sprintf("%s: %s after %.1f s; first seen:\n%s", $what,
		$diff eq '' ? 'reached' : 'not reached', Time::HiRes::time() - $start,
		substr($first, 0, 2000)));
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is($diff, '', $what);
}

# Redis holds exactly the table's tokens, once the queue is sent and the
# tokens that expired meanwhile are swept (here, not by the worker: the
# launcher may be slow to run it, see 014_soak.pl).
sub redis_mismatch
{
	my ($d) = @_;
	$node->safe_psql($d, 'SELECT tokenstore.token_sweep()');
	return TokenstoreFuzz::redis_mismatch($node, $d, $redis);
}
converge('Redis holds exactly the tokens of the table: no key of a failed call',
	sub { redis_mismatch($db) }, 60);
note('redis_stats: '
	  . $q->(q{SELECT format('state %s, sent %s, errors %s, overflows %s, resyncs %s, last_error %s',
			state, sent, errors, overflows, resyncs, last_error) FROM tokenstore.redis_stats}));
$t = phase('checks', $t);

# ---- the database dumps and restores ----
my $digest = qq{SELECT count(*) || ' ' || md5(string_agg(encode(token_hash, 'hex') || user_id
		|| info::text || coalesce(expires_at::text, '-') || coalesce(idle_timeout::text, '-')
		|| created_at::text, ',' ORDER BY token_hash))
	FROM tokenstore.token t WHERE $clearly_live};
my $source = $q->($digest);
my $dump = $node->basedir . '/fuzz.dump';
$node->command_ok(
	[ 'pg_dump', '-Fc', '--exclude-table-data=fuzz.plan', '-f', $dump, '-d', $db ],
	'pg_dump -Fc of the fuzzed database');
$q->('CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'restored', $dump ],
	'pg_restore into a new database, the extension included');
my $restored = $node->background_psql('restored');
is($restored->query_safe($digest), $source,
	'the restored database has the same clearly live tokens (users, info, deadlines)');
is($restored->query_safe($pool_live), "$live $live",
	"all $live clearly live tokens of the pool work in the restored database");
is($restored->query_safe("SELECT tokenstore.token_user(tokenstore.token_make('after-restore'))"),
	'after-restore', 'and it makes new tokens');
$restored->quit;
converge('the restored tokens are mirrored to Redis too',
	sub { redis_mismatch('restored') }, 60);
$t = phase('dump and restore', $t);

# ---- "mistyped" must not depend on a session ----
# A caller-provided token shaped like a generated one of the prefix, with a
# bad checksum, is refused; a session may not switch to another prefix to
# save it (the prefix is server-wide), so every session judges it alike.
my $real = $q->("SELECT tokenstore.token_make('prefix-victim')");
(my $forged = $real) =~ s/(.)$/$1 eq 'A' ? 'B' : 'A'/e;
my ($made) = $node->psql($db,
	"SET tokenstore.token_prefix = 'abc_'; SELECT tokenstore.token_make('prefix-other', token => '$forged')",
	@app);
ok($made != 0 || $q->("SELECT tokenstore.token_user('$forged')") eq 'prefix-other',
	'a caller-provided token cannot be saved under another prefix than the server\'s');
$session->quit;

# ---- the server stayed up ----
is($node->safe_psql($db, $processes), $before,
	'launcher and publisher kept their pids: no crash and restart');
my ($postmaster_now) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
is($postmaster_now, $postmaster, 'the postmaster is the same');
TokenstoreTest::wait_for_within($node, 'postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()},
	'0', 10, 'no session of the fuzz is left');
my $log = slurp_file($node->logfile);
my @crashes = $log =~ /^.*(?:terminated by signal|was terminated|exited with exit code [1-9]|PANIC|TRAP:|reinitializing).*$/mg;
is(join("\n", @crashes), '', 'the log shows no crash, PANIC, assertion or failed worker');
my @internal = $log =~ /^.*(?:ERROR|FATAL):\s+XX\d\d\d:.*$/mg;
is(join("\n", @internal), '', 'the log shows no internal error, workers and publisher included');
my @leaks = grep { /leak|not closed|still referenced|not released/i } $log =~ /^.*WARNING:.*$/mg;
is(join("\n", @leaks), '', 'the log shows no resource-leak warning');
phase('total', $started);

done_testing();
