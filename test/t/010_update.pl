# ALTER EXTENSION tokenstore UPDATE keeps every token.  Version 1.0 is
# installed (its script is kept for this), tokens of every kind are made
# (the three login modes, idle and absolute deadlines, uses still in the
# cache and uses flushed to the table, the Redis mirror on), and after the
# update each one answers as before: same user, same deadline, the shared
# token handed out again, Redis still exact.  The tokens are made by this
# library under the 1.0 objects, which it serves as 1.0 did (so that nothing
# stops between installing a new library and updating); SQL objects of a
# version it does not know are refused with a message that says what to run.
# The update from 1.0 brings hand-edited times within 1.1's bounds (each
# token alive or dead as before, and nothing out of range afterwards); the
# updates from 1.1 and from 1.2 (through 1.3 to 1.4) keep tokens of every
# kind too, and 1.2's sessions with their data.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreRedis;
use TokenstoreTest;

my $redis = TokenstoreRedis->new;
my $node = PostgreSQL::Test::Cluster->new('update');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'tokenstore'\n"
	  . "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.flush_interval = '200ms'\n");
$node->start;
my $db = 'postgres';
$node->safe_psql($db, "CREATE EXTENSION tokenstore VERSION '1.0'");
is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'tokenstore'"),
	'1.0', 'version 1.0 is installed');

# Tokens of every kind, made in database $dbname under whatever objects it
# has: the three login modes, idle and absolute deadlines, a caller's token,
# a rotation in its grace period, and one use flushed to the table.  (A use
# left only in the cache is the caller's, once flushes are an hour apart.)
sub kinds
{
	my ($dbname) = @_;
	my %made;
	my $make = sub {
		my ($name, $args) = @_;
		$made{$name} = $node->safe_psql($dbname, "SELECT tokenstore.token_make($args)");
	};
	$make->('multi', "'ann', '{\"device\": \"laptop\"}'");
	$make->('limited', "'bob', max_tokens => 2");
	$make->('limited2', "'bob', max_tokens => 2");
	$make->('single', "'cat', mode => 'single'");
	$make->('share', "'dan', '{\"team\": true}', mode => 'share'");
	$make->('ttl', "'eve', ttl => '2 days'");
	$make->('idle', "'fay', idle_timeout => '1 hour'");
	$make->('both', "'gus', ttl => '3 days', idle_timeout => '30 minutes'");
	$make->('cached_use', "'hal', idle_timeout => '2 hours'");
	$make->('given', "'ivy', token => 'a-caller-provided-session-id'");
	$make->('graced', "'jon'");
	$made{graced_heir} = $node->safe_psql($dbname,
		"SELECT tokenstore.token_rotate('$made{graced}', grace => '1 hour')");
	$node->safe_psql($dbname, "SELECT tokenstore.token_user('$made{idle}')");
	$node->safe_psql($dbname, 'SELECT tokenstore.token_flush()');
	return \%made;
}

# What must not change: the user a check answers, the row's deadlines and
# creation; and the last use (cached or written) may only move forward.
my $state = "coalesce(tokenstore.token_user(t), '-') || (SELECT format('|%s|%s|%s|%s', created_at, expires_at, idle_timeout, share_secret IS NOT NULL) FROM tokenstore.token WHERE token_hash = sha256(convert_to(t, 'UTF8')))";
my $last_use = "SELECT l.last_used_at FROM tokenstore.token_list(%s) l WHERE l.token_id = encode(substr(sha256(convert_to('%s', 'UTF8')), 1, 16), 'hex')";
sub states
{
	my ($dbname, $tokens) = @_;
	my %st;
	$st{$_} = $node->safe_psql($dbname, "SELECT $state FROM (SELECT '$tokens->{$_}'::text AS t) s")
	  foreach sort keys %$tokens;
	$st{'last use of cached_use'} =
	  $node->safe_psql($dbname, sprintf($last_use, "'hal'", $tokens->{cached_use}));
	return \%st;
}

# After an update of $dbname: every token as before, the cached use still
# counted, the shared token handed out again.
sub check_kinds
{
	my ($dbname, $tokens, $before, $what) = @_;
	foreach my $name (sort keys %$tokens)
	{
		is($node->safe_psql($dbname, "SELECT $state FROM (SELECT '$tokens->{$name}'::text AS t) s"),
			$before->{$name}, "$what: token '$name': same user and deadline");
	}
	is($node->safe_psql($dbname,
			'SELECT (' . sprintf($last_use, "'hal'", $tokens->{cached_use})
			  . ") >= '$before->{'last use of cached_use'}'"),
		't', "$what: a use only the cache knew of is still counted");
	is($node->safe_psql($dbname, "SELECT tokenstore.token_make('dan', mode => 'share')"),
		$tokens->{share}, "$what: the shared token is handed out again");
}

my %token = %{ kinds($db) };

# Under the 1.0 objects (no data column) token_check is served from the
# cache too, and sees a change of info at once.
my $check_device =
  "SELECT info->>'device' FROM tokenstore.token_check('$token{multi}')";
is($node->safe_psql($db, $check_device), 'laptop', '1.0 objects: token_check');
my $hits = TokenstoreTest::stats($node, $db)->{hits};
$node->safe_psql($db,
	"SELECT tokenstore.token_set_info('$token{multi}', '{\"device\": \"phone\"}')");
is($node->safe_psql($db, $check_device), 'phone', '1.0 objects: a change of info is seen');
is(TokenstoreTest::stats($node, $db)->{hits} - $hits, 1, 'from the cache');
$node->safe_psql($db,
	"SELECT tokenstore.token_set_info('$token{multi}', '{\"device\": \"laptop\"}')");

# a use still only in the cache (the other databases' too, from here on)
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.flush_interval = '1h'; SELECT pg_reload_conf()");
sleep 1;
$node->safe_psql($db, "SELECT tokenstore.token_user('$token{cached_use}')");

my $before = states($db, \%token);
TokenstoreTest::wait_for($node, $db, 'SELECT state FROM tokenstore.redis_stats', 'up',
	'the mirror is up');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'Redis holds every 1.0 token');

# Objects of a version the library does not know: refused, with what to do.
$node->safe_psql($db, "UPDATE pg_extension SET extversion = '0.9' WHERE extname = 'tokenstore'");
my ($ret, $out, $err) = $node->psql($db, "SELECT tokenstore.token_make('kim')");
like($err, qr/SQL objects are at version 0\.9, its library at version 1\.4.*\n.*ALTER EXTENSION tokenstore UPDATE/,
	'SQL objects of an unknown version: an error that says to run ALTER EXTENSION ... UPDATE');
$node->safe_psql($db, "UPDATE pg_extension SET extversion = '1.0' WHERE extname = 'tokenstore'");
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token{multi}')"),
	'ann', 'and under 1.0 again, checks answer');
($ret, $out, $err) = $node->psql($db, 'SELECT * FROM tokenstore.stats');
is($ret, 0, 'the 1.0 stats view answers');

$node->safe_psql($db, 'ALTER EXTENSION tokenstore UPDATE');
is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'tokenstore'"),
	'1.4', 'the update reaches 1.4');

check_kinds($db, \%token, $before, 'from 1.0');
ok(-f $node->data_dir . '/tokenstore.key', 'the sealing key is a file in the data directory');
is($node->safe_psql($db, "SELECT count(*) FROM pg_class WHERE relname = 'secret' AND relnamespace = 'tokenstore'::regnamespace"),
	'0', 'the key is no longer in the database');
is($node->safe_psql($db, "SELECT tokenstore.token_make('kim') IS NOT NULL"),
	't', 'tokens are made again');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
	'Redis still holds exactly the tokens');

# least privilege after the update: PUBLIC's rights are gone
$node->safe_psql($db, 'CREATE ROLE app LOGIN');
($ret, $out, $err) = $node->psql($db, "SELECT tokenstore.token_user('$token{multi}')",
	extra_params => [ '-U', 'app' ]);
like($err, qr/permission denied/, 'after the update PUBLIC may not call the functions');
$node->safe_psql($db,
	'GRANT USAGE ON SCHEMA tokenstore TO app; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app');
is($node->safe_psql($db, "SELECT tokenstore.token_user('$token{multi}')",
		extra_params => [ '-U', 'app' ]),
	'ann', 'the README grants give the application its rights back');

# the extension's initial privileges (pg_dump leaves them out of a dump)
my $init_privs = q{
	SELECT string_agg(format('%s %s', pg_describe_object(classoid, objoid, objsubid), initprivs), ', '
					  ORDER BY pg_describe_object(classoid, objoid, objsubid))
	  FROM pg_init_privs
	 WHERE objoid IN (SELECT objid FROM pg_depend
					   WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tokenstore'))
};

# the updated schema is the one a new installation gets
my $schema = q{
	SELECT string_agg(format('%s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY c.relname, a.attnum)
	  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	 WHERE c.relnamespace IN ('tokenstore'::regnamespace, 'tokenstore_internal'::regnamespace)
	   AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT string_agg(format('%s %s', relname, reloptions), ', ' ORDER BY relname) FROM pg_class
	 WHERE relnamespace IN ('tokenstore'::regnamespace, 'tokenstore_internal'::regnamespace)
	UNION ALL
} . $init_privs . q{
	UNION ALL
	SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ' ORDER BY conname) FROM pg_constraint
	 WHERE conrelid = 'tokenstore.token'::regclass
	UNION ALL
	SELECT string_agg(format('%s.%s(%s) %s', pronamespace::regnamespace, proname,
			pg_get_function_identity_arguments(oid), proacl), ', ' ORDER BY proname)
	  FROM pg_proc WHERE pronamespace IN ('tokenstore'::regnamespace, 'tokenstore_internal'::regnamespace)
	UNION ALL
	SELECT string_agg(tgname || ' ' || tgenabled::text || ' ' || pg_get_triggerdef(oid), ', ' ORDER BY tgname) FROM pg_trigger
	 WHERE tgrelid = 'tokenstore.token'::regclass
	UNION ALL
	SELECT string_agg(d, ', ' ORDER BY d)
	  FROM (SELECT pg_describe_object(classid, objid, objsubid) || ' ' || coalesce(obj_description(objid, classid::regclass::name), '-') AS d
	  FROM pg_depend WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tokenstore')
	   AND deptype = 'e' AND classid <> 'pg_type'::regclass) members
};
my $updated = $node->safe_psql($db, $schema);
$node->safe_psql($db, 'REVOKE ALL ON SCHEMA tokenstore FROM app; REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokenstore FROM app');
$updated = $node->safe_psql($db, $schema);
$node->safe_psql($db, 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION tokenstore');
is($node->safe_psql('fresh', $schema), $updated,
	'an updated database has the objects, storage options, constraints, triggers, privileges and initial privileges (what pg_dump leaves out) of a new one');

# 1.0 to 1.1 bounds stored times, which 1.0 did not (only idle_timeout's
# days and months were refused): rows an operator edited by hand are brought
# within the bounds, and every token lives or is dead as before.  The edits
# and the update are one transaction, so that no sweep comes between.
$node->safe_psql($db, 'CREATE DATABASE v10');
$node->safe_psql('v10', "CREATE EXTENSION tokenstore VERSION '1.0'");
my %odd = (
	no_end => [ "'kay'", "expires_at = 'infinity'" ],
	far_end => [ "'kay'", "expires_at = '20000-01-01 00:00:00+00'" ],
	far_times => [ "'kay'", "created_at = 'infinity', last_used_at = '20000-01-01 00:00:00+00'" ],
	long_idle => [ "'kay', idle_timeout => '1 hour'", "idle_timeout = '100000000 hours'" ],
	past_end => [ "'lou'", "expires_at = '-infinity'" ],
	never_used => [ "'lou', idle_timeout => '1 hour'", "last_used_at = '-infinity', created_at = '-infinity'" ],
	used_1999 => [ "'lou', idle_timeout => '1 hour'", "last_used_at = '1999-06-01 00:00:00+00'" ],
	never_used_long_idle =>
	  [ "'lou', idle_timeout => '1 hour'", "last_used_at = '-infinity', idle_timeout = '100000000 hours'" ]);
my %odd_token;
my $edits = '';
my $odd_row = "WHERE token_hash = sha256(convert_to('%s', 'UTF8'))";
foreach my $name (sort keys %odd)
{
	$odd_token{$name} =
	  $node->safe_psql('v10', "SELECT tokenstore.token_make($odd{$name}[0])");
	$edits .= "UPDATE tokenstore.token SET $odd{$name}[1] " . sprintf($odd_row, $odd_token{$name}) . ";\n";
}
($ret, $out, $err) = $node->psql('v10',
	"UPDATE tokenstore.token SET idle_timeout = '1 day' " . sprintf($odd_row, $odd_token{long_idle}));
like($err, qr/violates check constraint "token_idle_timeout_check"/,
	'1.0 refused idle timeouts with days (nothing to bound there)');
($ret, $out, $err) = $node->psql('v10',
	"UPDATE tokenstore.token SET idle_timeout = '1 mon' " . sprintf($odd_row, $odd_token{long_idle}));
like($err, qr/violates check constraint "token_idle_timeout_check"/, 'and with months');
my $odd_times = "SELECT format('%%s|%%s|%%s|%%s', created_at, last_used_at, expires_at, idle_timeout) FROM tokenstore.token $odd_row";
my $log_offset = -s $node->logfile;
my $bounded = $node->safe_psql('v10',
	"SET timezone = 'UTC';\nBEGIN;\n$edits"
	  . "ALTER EXTENSION tokenstore UPDATE;\n"
	  . join(";\n", map { sprintf($odd_times, $odd_token{$_}) } sort keys %odd)
	  . ";\nCOMMIT;");
my %odd_after;
@odd_after{ sort keys %odd } = split /\n/, $bounded;
my %odd_want = (
	no_end => qr/^[^|]+\|[^|]+\|\|$/,
	far_end => qr/^[^|]+\|[^|]+\|9999-12-31 23:59:59\+00\|$/,
	far_times => qr/^9999-12-31 23:59:59\+00\|9999-12-31 23:59:59\+00\|[^|]+\|$/,
	long_idle => qr/^[^|]+\|[^|]+\|[^|]+\|72000000:00:00$/,
	past_end => qr/^[^|]+\|[^|]+\|1970-01-01 00:00:00\+00\|$/,
	never_used => qr/^1970-01-01 00:00:00\+00\|1970-01-01 00:00:00\+00\|1970-01-01 00:00:00\+00\|01:00:00$/,
	used_1999 => qr/^[^|]+\|1999-06-01 00:00:00\+00\|[^|]+\|01:00:00$/,
	never_used_long_idle => qr/^[^|]+\|1970-01-01 00:00:00\+00\|1970-01-01 00:00:00\+00\|72000000:00:00$/);
foreach my $name (sort keys %odd)
{
	like($odd_after{$name}, $odd_want{$name},
		"1.0 to 1.1: '$name' brought within the bounds as the script says ($odd{$name}[1])");
}
is($node->safe_psql('v10',
		'SELECT ' . join(' || ', map { "coalesce(tokenstore.token_user('$odd_token{$_}'), '-')" } sort keys %odd)),
	'kaykaykay--kay--',
	'a token alive before lives on, a dead one stays dead (far_end far_times long_idle never_used never_used_long_idle no_end past_end used_1999)');
is($node->safe_psql('v10', "SELECT count(*) FROM tokenstore.token_list('kay')"),
	'4', 'token_list lists the bounded tokens');
is($node->safe_psql('v10', "SELECT count(*) FROM tokenstore.token_list('lou')"),
	'0', 'and none of the dead ones');
$node->safe_psql('v10', 'SELECT tokenstore.token_sweep()');
is($node->safe_psql('v10', "SELECT count(*) FROM tokenstore.token WHERE user_id = 'lou'"),
	'0', 'token_sweep deletes the dead ones');
is($node->safe_psql('v10', "SELECT tokenstore.token_delete('$odd_token{far_times}')"),
	't', 'token_delete revokes a bounded token');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, 'v10', $redis) }, '',
	'Redis holds exactly the bounded tokens');
my $swept = $node->safe_psql('v10', 'SELECT now()');

# 1.1 to 1.2: served as 1.1 until the update; token_rotate, whose signature
# grew, keeps its grants; the new functions wait for the README's grant
$node->safe_psql($db, 'CREATE DATABASE v11');
$node->safe_psql('v11', "CREATE EXTENSION tokenstore VERSION '1.1'");
$node->safe_psql('v11',
	'GRANT USAGE ON SCHEMA tokenstore TO app; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app');
my $v11 = $node->safe_psql('v11', "SELECT tokenstore.token_make('lea')", extra_params => [ '-U', 'app' ]);
my $v11_heir = $node->safe_psql('v11', "SELECT tokenstore.token_rotate('$v11', '1 hour')",
	extra_params => [ '-U', 'app' ]);
is($node->safe_psql('v11', "SELECT tokenstore.token_user('$v11') || tokenstore.token_user('$v11_heir')"),
	'lealea', 'under 1.1 objects this library makes, rotates and checks tokens');
my %v11 = %{ kinds('v11') };
$node->safe_psql('v11', "SELECT tokenstore.token_user('$v11{cached_use}')");
my $v11_before = states('v11', \%v11);
$node->safe_psql('v11', 'ALTER EXTENSION tokenstore UPDATE');
check_kinds('v11', \%v11, $v11_before, 'from 1.1');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, 'v11', $redis) }, '',
	'Redis holds exactly the tokens of 1.1');
is($node->safe_psql('v11', "SELECT tokenstore.token_rotate('$v11_heir') IS NOT NULL",
		extra_params => [ '-U', 'app' ]),
	't', 'after the update from 1.1 the application may still rotate');
($ret, $out, $err) = $node->psql('v11',
	"SELECT tokenstore.token_save('session-id-1234567890', NULL, 'x', NULL)",
	extra_params => [ '-U', 'app' ]);
like($err, qr/permission denied for function token_save/,
	'the new functions are not granted by the update');
$node->safe_psql('v11', 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app');
is($node->safe_psql('v11', "SELECT tokenstore.token_save('session-id-1234567890', NULL, 'x', NULL)",
		extra_params => [ '-U', 'app' ]),
	't', 'the README grant, run again, gives them');
is($node->safe_psql('v11', 'SELECT count(*) FROM tokenstore.token_list(\'lea\')'),
	'2', 'the tokens of 1.1 are all there (one in its grace period, one heir)');

# 1.2 to 1.3: the same table, served as it is; the update adds the standby's
# functions and the stats view's last columns, readable by monitoring roles
$node->safe_psql($db, 'CREATE DATABASE v12');
$node->safe_psql('v12', "CREATE EXTENSION tokenstore VERSION '1.2'");
$node->safe_psql('v12', 'CREATE ROLE watcher LOGIN IN ROLE pg_monitor');
my $v12 = $node->safe_psql('v12', "SELECT tokenstore.token_make('max')");
is($node->safe_psql('v12', "SELECT tokenstore.token_user('$v12')"), 'max',
	'under 1.2 objects this library makes and checks tokens');
my %v12 = %{ kinds('v12') };
$node->safe_psql('v12', "SELECT tokenstore.token_user('$v12{cached_use}')");
# and 1.2's sessions: one of a user, with info and an idle timeout, and an
# anonymous one
$v12{session} = 'a-session-of-sam-0123456789';
$v12{anonymous} = 'an-anonymous-session-0123456789';
is($node->safe_psql('v12',
		"SELECT tokenstore.token_save('$v12{session}', 'sam', '\\x00ff0a'::bytea, now() + '1 day', '1 hour', '{\"csrf\": \"x\"}')"
		  . " AND tokenstore.token_save('$v12{anonymous}', NULL, convert_to('cart: 3 items', 'UTF8'), now() + '2 hours')"),
	't', 'under 1.2 objects this library saves sessions');
my $v12_data = "SELECT encode(tokenstore.token_data('$v12{session}'), 'hex') || '|' || encode(tokenstore.token_data('$v12{anonymous}'), 'hex')";
is($node->safe_psql('v12', $v12_data), '00ff0a|636172743a2033206974656d73',
	'and reads their data');
my $v12_before = states('v12', \%v12);
$node->safe_psql('v12', "ALTER EXTENSION tokenstore UPDATE TO '1.3'");
is($node->safe_psql('v12', "SELECT tokenstore.token_user('$v12')"), 'max',
	'and after the update to 1.3 the token lives on');
check_kinds('v12', \%v12, $v12_before, 'from 1.2 to 1.3');
is($node->safe_psql('v12', $v12_data), '00ff0a|636172743a2033206974656d73',
	'from 1.2 to 1.3: the sessions keep their data');
is($node->safe_psql('v12', 'SELECT standby_cache, cache_lag IS NULL FROM tokenstore.stats WHERE datname = current_database()',
		extra_params => [ '-U', 'watcher' ]),
	'off|t', 'the stats view gains its standby columns, and monitoring roles read it');

# 1.3 to 1.4: served as 1.3 until the update (token_make and token_refresh
# without their new arguments); both are created anew with more arguments
# and keep the grants they had, a grant option included, so the application
# uses the new arguments at once, with no new grant
$node->safe_psql('v12',
	'GRANT USAGE ON SCHEMA tokenstore TO app; '
	  . 'GRANT EXECUTE ON FUNCTION tokenstore.token_make(text, jsonb, interval, interval, text, integer, text), '
	  . 'tokenstore.token_user(text) TO app; '
	  . 'GRANT EXECUTE ON FUNCTION tokenstore.token_refresh(text, interval) TO app WITH GRANT OPTION');
my $v13 = $node->safe_psql('v12',
	"SELECT tokenstore.token_make('noa', ttl => '2 days', idle_timeout => '1 hour')",
	extra_params => [ '-U', 'app' ]);
is($node->safe_psql('v12', "SELECT tokenstore.token_refresh('$v13', '3 days')",
		extra_params => [ '-U', 'app' ]),
	't', 'under 1.3 objects this library makes and refreshes tokens');
my $v13_state = "SELECT format('%s|%s|%s|%s', tokenstore.token_user('$v13'), created_at, expires_at, idle_timeout) FROM tokenstore.token WHERE token_hash = sha256(convert_to('$v13', 'UTF8'))";
my $v13_before = $node->safe_psql('v12', $v13_state);
my $grants = q{
	SELECT string_agg(format('%s %s %s %s', p.proname, p.pronargs, a.grantee::regrole, a.is_grantable), ', '
					  ORDER BY p.proname, p.pronargs)
	  FROM pg_proc p, aclexplode(p.proacl) a
	 WHERE p.pronamespace = 'tokenstore'::regnamespace AND p.proname IN ('token_make', 'token_refresh')
	   AND a.grantee <> p.proowner
};
is($node->safe_psql('v12', $grants), 'token_make 7 app f, token_refresh 2 app t',
	'the grants of 1.3');
$node->safe_psql('v12', 'ALTER EXTENSION tokenstore UPDATE');
is($node->safe_psql('v12', "SELECT extversion FROM pg_extension WHERE extname = 'tokenstore'"),
	'1.4', 'the update from 1.3 reaches 1.4');
is($node->safe_psql('v12', $v13_state), $v13_before,
	'the token of 1.3 lives on: same user, creation and deadlines');
check_kinds('v12', \%v12, $v12_before, 'from 1.3 to 1.4');
is($node->safe_psql('v12', $v12_data), '00ff0a|636172743a2033206974656d73',
	'from 1.3 to 1.4: the sessions keep their data');
TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, 'v12', $redis) }, '',
	'Redis holds exactly the tokens and sessions of 1.2');
is($node->safe_psql('v12', $grants), 'token_make 8 app f, token_refresh 4 app t',
	'token_make and token_refresh have their new arguments and the grants of the old ones, the grant option too');
my $v14 = $node->safe_psql('v12', "SELECT tokenstore.token_make('noa', expires_at => 'infinity')",
	extra_params => [ '-U', 'app' ]);
is($node->safe_psql('v12',
		"SELECT tokenstore.token_refresh('$v13', idle_timeout => '5 minutes', expires_at => 'infinity')",
		extra_params => [ '-U', 'app' ]),
	't', 'the application refreshes with the new arguments');
# the grants the updates carried (token_rotate's to 1.2, token_make's and
# token_refresh's to 1.4) are grants a dump keeps, not initial privileges
is($node->safe_psql('v11', $init_privs), $node->safe_psql('fresh', $init_privs),
	'after 1.1 to 1.4 the initial privileges are a new installation\'s: a dump keeps the carried grants');
is($node->safe_psql('v12', $init_privs), $node->safe_psql('fresh', $init_privs),
	'after 1.2 to 1.4 too');
is($node->safe_psql('v12',
		"SELECT string_agg(format('%s %s', expires_at IS NULL, coalesce(idle_timeout::text, '-')), ', ' ORDER BY created_at) "
		  . "FROM tokenstore.token WHERE user_id = 'noa'"),
	't 00:05:00, t -', 'expires_at and idle_timeout did what they say');
is($node->safe_psql('v12', "SELECT tokenstore.token_user('$v13') || tokenstore.token_user('$v14')",
		extra_params => [ '-U', 'app' ]),
	'noanoa', 'and both tokens check');

# The worker sweeps every database, the bounded tokens' too, and nothing it
# did since the update of v10 ran out of the range of timestamptz.
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.flush_interval = '200ms'; "
	  . "ALTER SYSTEM SET tokenstore.sweep_interval = '1s'; SELECT pg_reload_conf()");
TokenstoreTest::wait_for_within($node, $db,
	"SELECT count(*) FILTER (WHERE last_sweep > '$swept') FROM tokenstore.stats", '5', 30,
	"the worker sweeps each database after the updates, v10's bounded tokens too");
unlike(TokenstoreTest::log_since($node, $log_offset), qr/out of range/,
	'and nothing in the log says "out of range"');

done_testing();
