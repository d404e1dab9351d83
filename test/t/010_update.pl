# ALTER EXTENSION tokenstore UPDATE keeps every token.  Version 1.0 is
# installed (its script is kept for this), tokens of every kind are made
# (the three login modes, idle and absolute deadlines, uses still in the
# cache and uses flushed to the table, the Redis mirror on), and after the
# update each one answers as before: same user, same deadline, the shared
# token handed out again, Redis still exact.  The tokens are made by this
# library under the 1.0 objects, which it serves as 1.0 did (so that nothing
# stops between installing a new library and updating); SQL objects of a
# version it does not know are refused with a message that says what to run.
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

# tokens of every kind
my %token;
sub make
{
	my ($name, $args) = @_;
	$token{$name} = $node->safe_psql($db, "SELECT tokenstore.token_make($args)");
}
make('multi', "'ann', '{\"device\": \"laptop\"}'");
make('limited', "'bob', max_tokens => 2");
make('limited2', "'bob', max_tokens => 2");
make('single', "'cat', mode => 'single'");
make('share', "'dan', '{\"team\": true}', mode => 'share'");
make('ttl', "'eve', ttl => '2 days'");
make('idle', "'fay', idle_timeout => '1 hour'");
make('both', "'gus', ttl => '3 days', idle_timeout => '30 minutes'");
make('cached_use', "'hal', idle_timeout => '2 hours'");
make('given', "'ivy', token => 'a-caller-provided-session-id'");
make('graced', "'jon'");
$token{graced_heir} = $node->safe_psql($db,
	"SELECT tokenstore.token_rotate('$token{graced}', grace => '1 hour')");

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

# one use flushed to the table, one still only in the cache
$node->safe_psql($db, "SELECT tokenstore.token_user('$token{idle}')");
$node->safe_psql($db, 'SELECT tokenstore.token_flush()');
$node->safe_psql($db,
	"ALTER SYSTEM SET tokenstore.flush_interval = '1h'; SELECT pg_reload_conf()");
sleep 1;
$node->safe_psql($db, "SELECT tokenstore.token_user('$token{cached_use}')");

# what must not change: the user a check answers, the row's deadlines and
# creation; and the last use (cached or written) may only move forward
my $state = "tokenstore.token_user(t) || (SELECT format('|%s|%s|%s|%s', created_at, expires_at, idle_timeout, share_secret IS NOT NULL) FROM tokenstore.token WHERE token_hash = sha256(convert_to(t, 'UTF8')))";
my $last_use = "SELECT l.last_used_at FROM tokenstore.token_list(%s) l WHERE l.token_id = encode(substr(sha256(convert_to('%s', 'UTF8')), 1, 16), 'hex')";
my (%before, %used);
$before{$_} = $node->safe_psql($db, "SELECT $state FROM (SELECT '$token{$_}'::text AS t) s")
  foreach sort keys %token;
$used{cached_use} = $node->safe_psql($db, sprintf($last_use, "'hal'", $token{cached_use}));
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

foreach my $name (sort keys %token)
{
	is($node->safe_psql($db, "SELECT $state FROM (SELECT '$token{$name}'::text AS t) s"),
		$before{$name}, "token '$name': same user and deadline after the update");
}
is($node->safe_psql($db,
		'SELECT (' . sprintf($last_use, "'hal'", $token{cached_use}) . ") >= '$used{cached_use}'"),
	't', 'a use only the cache knew of is still counted');
is($node->safe_psql($db, "SELECT tokenstore.token_make('dan', mode => 'share')"),
	$token{share}, 'the shared token is handed out again (sealed anew with the key file)');
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
	'an updated database has the objects, storage options, constraints, triggers and privileges of a new one');

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
$node->safe_psql('v11', 'ALTER EXTENSION tokenstore UPDATE');
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
$node->safe_psql('v12', "ALTER EXTENSION tokenstore UPDATE TO '1.3'");
is($node->safe_psql('v12', "SELECT tokenstore.token_user('$v12')"), 'max',
	'and after the update to 1.3 the token lives on');
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
is($node->safe_psql('v12', $grants), 'token_make 8 app f, token_refresh 4 app t',
	'token_make and token_refresh have their new arguments and the grants of the old ones, the grant option too');
my $v14 = $node->safe_psql('v12', "SELECT tokenstore.token_make('noa', expires_at => 'infinity')",
	extra_params => [ '-U', 'app' ]);
is($node->safe_psql('v12',
		"SELECT tokenstore.token_refresh('$v13', idle_timeout => '5 minutes', expires_at => 'infinity')",
		extra_params => [ '-U', 'app' ]),
	't', 'the application refreshes with the new arguments');
is($node->safe_psql('v12',
		"SELECT string_agg(format('%s %s', expires_at IS NULL, coalesce(idle_timeout::text, '-')), ', ' ORDER BY created_at) "
		  . "FROM tokenstore.token WHERE user_id = 'noa'"),
	't 00:05:00, t -', 'expires_at and idle_timeout did what they say');
is($node->safe_psql('v12', "SELECT tokenstore.token_user('$v13') || tokenstore.token_user('$v14')",
		extra_params => [ '-U', 'app' ]),
	'noanoa', 'and both tokens check');

done_testing();
