# Backups that restore: pg_dump and pg_restore (or psql) of a database with
# tokenstore give a database whose tokens all work, and a stolen dump gives
# no usable token.
#
# Tokens of every kind (multi, single, share, ttl, idle timeout, both, a
# caller-provided token, one rotated and in its grace period, one revoked,
# one past its deadline but not swept, uses only in the cache) are dumped,
# then restored four ways: (a) pg_dump -Fc + pg_restore into a new
# database, (b) pg_restore --clean --if-exists into the same database (the
# extension is dropped and made again), (c) a plain dump through psql -1
# into a new database, (d) a plain --clean --if-exists dump through psql -1
# into an existing copy that has changed since.  Each restore exits 0 with
# nothing on stderr, and then every token answers with its user, info,
# creation and deadlines, the shared tokens are handed out again, the token
# in grace stays in grace, dead tokens stay dead, the application role's
# grants work (and give no more than before), and the restored database's
# cache and Redis mirror are its own: a token revoked there stops answering
# there at once and still answers in the original, a token only the
# overwritten database had stops answering, Redis gets exactly the restored
# tokens and no key for the dead one, and the original's keys stay as they
# were.  pg_dump reads the table: a use only the cache knew of is not in the
# dump, unless token_flush() wrote it first.
#
# The dump holds neither a token (as text or hex) nor the sealing key
# ($PGDATA/tokenstore.key).  On another server (another key) every token
# still checks, and a share login of a user whose share token cannot be
# unsealed gets a new token, never an error; with the first server's key
# file copied into the data directory (the README's backup procedure), the
# original shared token comes back.
#
# Last, a database owner who is not a superuser dumps their database and
# restores it into a new database they own, with a superuser's help only
# where PostgreSQL demands one: read access to tokenstore.token for the
# dump; for the restore, CREATE EXTENSION, then the owner restores every
# entry but tokenstore's, then the superuser restores tokenstore's (the
# tokens and the grants on its objects).  Both pg_restore runs exit 0, the
# tokens work, the owner's row-level security keyed on them works, and the
# grants are those of the original.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use File::Copy ();
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TokenstoreRedis;
use TokenstoreTest;

my $redis = TokenstoreRedis->new;
# No worker round after each database's first one (flush_interval = 1h):
# uses stay in the cache until the test flushes them.
my $node = TokenstoreTest::node('dump',
	conf => "tokenstore.redis_url = '" . $redis->url . "'\n"
	  . "tokenstore.flush_interval = '1h'\n");
my $dir = PostgreSQL::Test::Utils::tempdir('dumps');
my $src = 'src';

# run(NODE, CMD...): run a client program against NODE; (exit code, stdout,
# stderr).
sub run
{
	my ($n, @cmd) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGHOST} = $n->host;
	local $ENV{PGPORT} = $n->port;

	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($? >> 8, $out, $err);
}

# run_ok(NODE, WHAT, CMD...): run CMD, pass WHAT if it exits 0 and writes
# nothing on stderr (pg_restore reports each failed statement there, and
# exits 1 when it went past errors); return its stdout.
sub run_ok
{
	my ($n, $what, @cmd) = @_;
	my ($rc, $out, $err) = run($n, @cmd);
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok($rc == 0 && $err eq '', $what)
	  or diag("@cmd\nexit code $rc, stderr:\n$err");
	return $out;
}

# conn(NODE, DB, USER): a connection string for -d.
sub conn
{
	my ($n, $db, $user) = @_;
	return $n->connstr($db) . (defined $user ? " user=$user" : '');
}

sub q_lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# tagged(OUTPUT): psql -A lines "tag|rest..." as { tag => [rest, ...] }.
sub tagged
{
	my ($out) = @_;
	my %h;
	foreach (split /\n/, $out)
	{
		my ($tag, $rest) = split /\|/, $_, 2;
		push @{ $h{$tag} }, $rest;
	}
	return \%h;
}

# ---- tokens of every kind, in database src ----
$node->safe_psql('postgres', "CREATE ROLE app LOGIN; CREATE DATABASE $src");
$node->safe_psql($src,
	'CREATE EXTENSION tokenstore; GRANT USAGE ON SCHEMA tokenstore TO app; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app');
TokenstoreTest::wait_for($node, $src,
	"SELECT (SELECT state FROM tokenstore.redis_stats) = 'up' AND last_flush IS NOT NULL FROM tokenstore.stats WHERE datname = '$src'",
	't', "the mirror is up and src's worker has had its first round (the next is an hour away)");

my @kinds = (    # name, user, more arguments of token_make
	[ 'multi', 'ann', q{'{"device": "laptop"}'} ],
	[ 'multi2', 'ann', q{'{"device": "phone"}', max_tokens => 2} ],
	[ 'single', 'cat', q{mode => 'single'} ],
	[ 'share', 'dan', q{'{"team": true}', mode => 'share'} ],
	[ 'share_ttl', 'dag', q{ttl => '5 days', mode => 'share'} ],
	[ 'ttl', 'eve', q{ttl => '2 days'} ],
	[ 'idle', 'fay', q{idle_timeout => '1 hour'} ],
	[ 'both', 'gus', q{ttl => '3 days', idle_timeout => '30 minutes'} ],
	[ 'cached_use', 'hal', q{idle_timeout => '2 hours'} ],
	[ 'given', 'ivy', q{token => 'a-caller-provided-session-id'} ],
	# each revoked in one restored copy, and live in the others
	map { [ "revoke_$_", "rev_$_", '' ] } qw(a b c d));
my (%token, %user, %dead);
my $out = $node->safe_psql($src,
	join('', map { 'SELECT tokenstore.token_make(' . q_lit($_->[1]) . ($_->[2] ? ", $_->[2]" : '') . ");\n" } @kinds)
	  . qq{SELECT tokenstore.token_make('jon', '{"rotated": "yes"}') AS graced \\gset
		SELECT :'graced';
		SELECT tokenstore.token_rotate(:'graced', grace => '1 hour');
		SELECT tokenstore.token_make('kim') AS revoked \\gset
		SELECT :'revoked', tokenstore.token_delete(:'revoked');
		SELECT tokenstore.token_make('lou', ttl => '1 day') AS expired \\gset
		UPDATE tokenstore.token SET expires_at = now() - interval '1 minute'
		 WHERE token_hash = sha256(convert_to(:'expired', 'UTF8'));
		SELECT :'expired', tokenstore.token_user(:'expired') IS NULL, tokenstore.token_refresh(:'graced');
	});
my @lines = split /\n/, $out;
foreach my $kind (@kinds)
{
	$token{ $kind->[0] } = shift @lines;
	$user{ $kind->[0] } = $kind->[1];
}
($token{graced}, $token{graced_heir}) = splice(@lines, 0, 2);
$user{graced} = $user{graced_heir} = 'jon';
my ($revoked_ok, $expired_ok);
($dead{revoked}, $revoked_ok) = split /\|/, shift @lines;
($dead{expired}, $expired_ok) = split /\|/, shift @lines, 2;
is($revoked_ok, 't', 'a token is revoked before the dump');
is($expired_ok, 't|f',
	'one is past its deadline (not swept), and the rotated one is in grace (token_refresh refuses it)');

# What a restore must give back, per token: the user, token_check's info,
# creation and deadline (for an idle token: that it is its last use plus
# the idle timeout, capped by the absolute deadline), the row's deadline,
# idle timeout, sealed secret and grace.
my $values = join(', ', map { '(' . q_lit($_) . ', ' . q_lit($token{$_}) . ')' } sort keys %token);
my $state_query = qq{
	SELECT 'state', v.n, tokenstore.token_user(v.t),
		format('%s / %s / %s / %s / %s', c.user_id, c.info, c.created_at,
			CASE WHEN r.idle_timeout IS NULL THEN c.expires_at::text ELSE 'idle' END,
			c.expires_at IS NOT DISTINCT FROM least(r.expires_at, c.last_used_at + r.idle_timeout)),
		format('%s / %s / %s / %s', r.expires_at, r.idle_timeout, r.share_secret IS NOT NULL,
			r.rotated_at IS NOT NULL)
	  FROM (VALUES $values) v(n, t)
	  LEFT JOIN LATERAL tokenstore.token_check(v.t) c ON true
	  LEFT JOIN tokenstore.token r ON r.token_hash = sha256(convert_to(v.t, 'UTF8'))
	 ORDER BY v.n;
};

# states(TAGGED): the 'state' rows as { name => { user, check, row } }.
sub states
{
	my ($t) = @_;
	my %s;
	foreach (@{ $t->{state} // [] })
	{
		my ($name, $user, $check, $row) = split /\|/, $_, 4;
		$s{$name} = { user => $user, check => $check, row => $row };
	}
	return \%s;
}

# hal's last use as the functions see it (the cache: the check just made)
# and as the table has it
my $uses = q{
	SELECT 'use', (SELECT l.last_used_at FROM tokenstore.token_list('hal') l),
		(SELECT last_used_at FROM tokenstore.token WHERE user_id = 'hal');
};
my $t = tagged($node->safe_psql($src, $state_query . $uses));
my $before = states($t);
foreach my $name (sort keys %token)
{
	is($before->{$name}{user}, $user{$name}, "token '$name' answers in src");
	like($before->{$name}{check}, qr{^\Q$user{$name}\E / \{.*\} / .+ / t$},
		"and token_check gives its row, with a consistent deadline");
}
my ($cached_use, $stored_use) = split /\|/, $t->{use}[0];
ok($cached_use gt $stored_use, "a use is only in the cache ($cached_use, table $stored_use)");

# ---- the dumps ----
my $custom = "$dir/src.dump";
my $plain = "$dir/src.sql";
my $plain_clean = "$dir/src_clean.sql";
run_ok($node, 'pg_dump -Fc', 'pg_dump', '-Fc', '-f', $custom, '-d', conn($node, $src));
is($node->safe_psql($src,
		"SELECT tokenstore.token_flush() > 0; SELECT last_used_at FROM tokenstore.token WHERE user_id = 'hal'"),
	"t\n$cached_use", 'token_flush() writes the cached uses to the table');
run_ok($node, 'pg_dump, plain', 'pg_dump', '-f', $plain, '-d', conn($node, $src));
run_ok($node, 'pg_dump --clean --if-exists, plain',
	'pg_dump', '--clean', '--if-exists', '-f', $plain_clean, '-d', conn($node, $src));

# redis_right(DB): once what DB committed has reached Redis (a token made
# now has its key: the queue is sent in order), Redis has no key for the
# dead token; after a sweep removes its row, Redis holds exactly the
# table's tokens.
sub redis_right
{
	my ($db) = @_;
	my $dead_key = "tokenstore:$db:token:" . sha256_hex($dead{expired});
	my $marker = $node->safe_psql($db, "SELECT tokenstore.token_make('marker')");
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	TokenstoreRedis::wait_redis(
		sub { $redis->cli('EXISTS', "tokenstore:$db:token:" . sha256_hex($marker)) },
		'1', "$db: what it committed has reached Redis");
	is($redis->cli('EXISTS', $dead_key), '0', "$db: Redis has no key for the dead token");
	$node->safe_psql($db, 'SELECT tokenstore.token_sweep()');
	TokenstoreRedis::wait_redis(sub { TokenstoreRedis::mismatch($node, $db, $redis) }, '',
		"$db: Redis holds exactly its tokens");
}

# redis_of(DB): the keys of DB in Redis, with their values.
sub redis_of
{
	my ($db) = @_;
	my $all = $redis->contents;
	return { map { $_ => $all->{$_} } grep { /^tokenstore:\Q$db\E:/ } keys %$all };
}

# Redis of src as it stands (flushed uses included), to compare after each
# restore into another database.
redis_right($src);
my $src_redis = redis_of($src);
ok(scalar(keys %$src_redis) > scalar(keys %token), 'src has its keys in Redis');

sub src_redis_untouched
{
	my ($what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is_deeply(redis_of($src), $src_redis, "$what: the keys of src in Redis are untouched");
}

# ---- a stolen dump reveals no usable token ----
my $key_file = slurp_file($node->data_dir . '/tokenstore.key');
my (undef, $key_hex) = split /\n/, $key_file;
like($key_hex, qr/^[0-9a-f]{64}$/, 'the sealing key file holds 64 hex digits');
my %dump_text = (
	plain => slurp_file($plain),
	'plain --clean' => slurp_file($plain_clean),
	custom => run_ok($node, 'pg_restore -f - of the custom dump', 'pg_restore', '-f', '-', $custom));
my %all_tokens = (%token, map { ("dead $_" => $dead{$_}) } keys %dead);
foreach my $kind (sort keys %dump_text)
{
	my $text = $dump_text{$kind};
	my $rows = scalar(keys %token) + 1;    # and the expired one
	like($text, qr/^COPY tokenstore\.token .*\n(?:.*\n){$rows}\\\.$/m,
		"the $kind dump has the $rows rows of tokenstore.token");
	my @found = grep {
		index($text, $all_tokens{$_}) >= 0
		  || index(lc $text, unpack('H*', $all_tokens{$_})) >= 0
	} sort keys %all_tokens;
	is("@found", '', "the $kind dump holds no token, as text or as hex");
	ok(index(lc $text, $key_hex) < 0, "the $kind dump does not hold the sealing key");
}

# ---- verifying a restored database ----

# verify(NODE, DB, WHAT, same_server => BOOL): every token answers as
# before the dump, dead ones stay dead, the token in grace stays in grace,
# share logins hand out the shared tokens (on the same server), the
# application role's grants work and give no more than before.
sub verify
{
	my ($n, $db, $what, %opt) = @_;
	my $same_server = $opt{same_server} // 1;
	my $dead_values = join(', ', map { '(' . q_lit($_) . ', ' . q_lit($dead{$_}) . ')' } sort keys %dead);
	my $t = tagged($n->safe_psql($db, $state_query . qq{
		SELECT 'dead', n, tokenstore.token_user(t) IS NULL FROM (VALUES $dead_values) d(n, t) ORDER BY n;
		SELECT 'grace', tokenstore.token_refresh('$token{graced}');
	} . ($same_server ? qq{
		SELECT 'share', tokenstore.token_make('dan', mode => 'share'), tokenstore.token_make('dag', mode => 'share');
	} : '') . qq{
		SET ROLE app;
		SELECT 'app', tokenstore.token_user('$token{multi}'), (SELECT count(*) FROM tokenstore.token_list('ann'));
		RESET ROLE;
		SELECT 'privileges', has_table_privilege('app', 'tokenstore.token', 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE'),
			has_schema_privilege('app', 'tokenstore_internal', 'USAGE');
	}));
	my $after = states($t);
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	foreach my $name (sort keys %token)
	{
		is($after->{$name}{user}, $user{$name}, "$what: token '$name' answers with its user");
		is($after->{$name}{check}, $before->{$name}{check},
			"$what: token '$name' has the same info, creation and deadline");
		is($after->{$name}{row}, $before->{$name}{row},
			"$what: token '$name' has the same stored deadlines, secret and grace");
	}
	is(join(' ', @{ $t->{dead} }), 'expired|t revoked|t', "$what: dead tokens stay dead");
	is($t->{grace}[0], 'f', "$what: the rotated token is still in grace");
	is($t->{share}[0], "$token{share}|$token{share_ttl}",
		"$what: share logins hand out the same tokens") if $same_server;
	is($t->{app}[0], 'ann|2', "$what: the application role checks and lists tokens");
	is($t->{privileges}[0], 'f|f',
		"$what: and still cannot touch the table or the internal schema");
}

# revoke_here(DB, NAME, OTHER): revoke token NAME in DB after a check has
# cached it; it stops answering there at once, and still answers in OTHER.
sub revoke_here
{
	my ($db, $name, $other) = @_;
	my $tok = $token{$name};
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	is($node->safe_psql($db,
			"SELECT tokenstore.token_user('$tok'); SELECT tokenstore.token_delete('$tok'); SELECT tokenstore.token_user('$tok') IS NULL"),
		"$user{$name}\nt\nt", "$db: token '$name' revoked there stops answering at once");
	is($node->safe_psql($other, "SELECT tokenstore.token_user('$tok')"), $user{$name},
		"and still answers in $other");
}

my $table_use = "SELECT last_used_at FROM tokenstore.token WHERE user_id = 'hal'";

# ---- (a) pg_dump -Fc, pg_restore into a new database ----
$node->safe_psql('postgres', 'CREATE DATABASE a');
run_ok($node, '(a) pg_restore into a new database exits 0, no error',
	'pg_restore', '-d', conn($node, 'a'), $custom);
is($node->safe_psql('a', $table_use), $stored_use,
	'(a) the last uses are those the table had at the dump (pg_dump does not see the cache)');
verify($node, 'a', '(a)');
redis_right('a');
src_redis_untouched('(a)');
{
	# each key's value is src's, but for idle deadlines (the custom dump was
	# taken before token_flush() wrote the uses that moved them)
	my $a_redis = redis_of('a');
	my @differ;
	foreach my $name (sort keys %token)
	{
		my $hash = sha256_hex($token{$name});
		my ($want, $got) = map { JSON::PP::decode_json($_ // '{}') }
		  $src_redis->{"tokenstore:$src:token:$hash"}, $a_redis->{"tokenstore:a:token:$hash"};
		if ($user{$name} =~ /^(fay|gus|hal)$/)
		{
			delete $_->{expires_at} foreach $want, $got;
		}
		push @differ, $name
		  unless %$want
		  && JSON::PP->new->canonical->encode($want) eq JSON::PP->new->canonical->encode($got);
	}
	is("@differ", '', "(a) each token's JSON in Redis is src's");
}
revoke_here('a', 'revoke_a', $src);

# ---- (c) plain dump through psql -1 into a new database ----
$node->safe_psql('postgres', 'CREATE DATABASE c');
run_ok($node, '(c) psql -1 -v ON_ERROR_STOP=1 -f of the plain dump exits 0, no error',
	'psql', '-X', '-q', '-1', '-v', 'ON_ERROR_STOP=1', '-f', $plain, '-d', conn($node, 'c'));
is($node->safe_psql('c', $table_use), $cached_use,
	'(c) a use written by token_flush() before the dump is carried');
verify($node, 'c', '(c)');
redis_right('c');
src_redis_untouched('(c)');
revoke_here('c', 'revoke_c', $src);

# ---- (d) plain --clean --if-exists into the existing copy c, changed ----
# c now has a token of its own (checked, so cached) and lacks revoke_c:
# the restore must leave exactly the dump's tokens, in table and cache.
my $own = $node->safe_psql('c',
	"SELECT tokenstore.token_make('mia') AS own \\gset\nSELECT :'own', tokenstore.token_user(:'own')");
like($own, qr/\|mia$/, '(d) before: c has a token of its own, cached');
$own =~ s/\|mia$//;
run_ok($node, '(d) psql -1 -f of the plain --clean --if-exists dump into c exits 0, no error',
	'psql', '-X', '-q', '-1', '-v', 'ON_ERROR_STOP=1', '-f', $plain_clean, '-d',
	conn($node, 'c'));
is($node->safe_psql('c', "SELECT tokenstore.token_user('$own') IS NULL"), 't',
	"(d) c's own token, not in the dump, stops answering");
verify($node, 'c', '(d)');
redis_right('c');
revoke_here('c', 'revoke_d', $src);

# ---- (b) pg_restore --clean --if-exists into src itself ----
my $later = $node->safe_psql($src,
	"SELECT tokenstore.token_make('ned') AS later \\gset\nSELECT :'later', tokenstore.token_user(:'later'), tokenstore.token_delete('$token{revoke_b}')");
like($later, qr/\|ned\|t$/, '(b) before: src has a token made after the dump (cached), and lost one');
$later =~ s/\|ned\|t$//;
run_ok($node, '(b) pg_restore --clean --if-exists into the same database exits 0, no error',
	'pg_restore', '--clean', '--if-exists', '-d', conn($node, $src), $custom);
is($node->safe_psql($src, "SELECT tokenstore.token_user('$later') IS NULL"), 't',
	'(b) the token made after the dump stops answering');
verify($node, $src, '(b)');
redis_right($src);
revoke_here($src, 'revoke_b', 'a');

# ---- another server: another sealing key ----
my $other = TokenstoreTest::node('other');
$other->safe_psql('postgres', 'CREATE ROLE app LOGIN; CREATE DATABASE r1');
run_ok($other, 'another server: pg_restore exits 0, no error',
	'pg_restore', '-d', conn($other, 'r1'), $custom);
verify($other, 'r1', 'another server', same_server => 0);
my $offset = -s $other->logfile;
my ($ret, $new_share, $err) = $other->psql('r1',
	"SELECT tokenstore.token_make('dan', mode => 'share')");
is("$ret|$err", '0|', 'another server: a share login whose token cannot be unsealed is no error');
like($new_share, qr/^tks_[A-Za-z0-9_-]{49}$/, 'it returns a token');
isnt($new_share, $token{share}, 'a new one');
like(TokenstoreTest::log_since($other, $offset),
	qr/LOG:  tokenstore cannot unseal share-mode token [0-9a-f]{32} with this server's key; the login gets a new one/,
	'the log says why');
isnt(slurp_file($other->data_dir . '/tokenstore.key'), $key_file,
	'the other server has a key of its own');
is($other->safe_psql('r1',
		"SELECT tokenstore.token_user('$token{share}'); SELECT tokenstore.token_user('$new_share'); SELECT tokenstore.token_make('dan', mode => 'share')"),
	"dan\ndan\n$new_share",
	'the old shared token still checks, so does the new one, and the next share login gets the new one');

# The README's procedure: the first server's key file in the data directory.
$other->stop;
File::Copy::copy($node->data_dir . '/tokenstore.key', $other->data_dir . '/tokenstore.key')
  or die "copy: $!";
chmod 0600, $other->data_dir . '/tokenstore.key';
$other->start;
$other->safe_psql('postgres', 'CREATE DATABASE r2');
run_ok($other, 'with the key file copied: pg_restore exits 0, no error',
	'pg_restore', '-d', conn($other, 'r2'), $custom);
verify($other, 'r2', 'with the key file copied');
($ret, my $again, $err) = $other->psql('r1',
	"SELECT tokenstore.token_make('dan', mode => 'share')");
ok($ret == 0 && $err eq '' && $again =~ /^tks_/ && $again ne $new_share,
	'in the database restored before the key changed, a share login is no error either (a new token)');

# ---- a database owner who is not a superuser ----
$node->safe_psql('postgres', 'CREATE ROLE owner LOGIN; CREATE DATABASE odb OWNER owner');
# the owner's objects name tokenstore's functions: USAGE on the schema
$node->safe_psql('odb', q{
	CREATE EXTENSION tokenstore;
	GRANT USAGE ON SCHEMA tokenstore TO app; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app;
	GRANT USAGE ON SCHEMA tokenstore TO owner;
});
$node->safe_psql('odb', q{
	CREATE TABLE notes (id int PRIMARY KEY, owner_id text NOT NULL, body text);
	ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
	CREATE POLICY own_notes ON notes
		USING (owner_id = (SELECT tokenstore.token_user(current_setting('app.token', true))));
	GRANT SELECT ON notes TO app;
	INSERT INTO notes VALUES (1, 'ann', 'for ann'), (2, 'bea', 'for bea');
}, extra_params => [ '-U', 'owner' ]);
my ($ann, $bea) = split /\n/, $node->safe_psql('odb',
	"SELECT tokenstore.token_make('ann'); SELECT tokenstore.token_make('bea', mode => 'share')",
	extra_params => [ '-U', 'app' ]);
my $owner_dump = "$dir/odb.dump";

my ($rc, $stdout);
($rc, $stdout, $err) = run($node, 'pg_dump', '-Fc', '-f', $owner_dump, '-d', conn($node, 'odb', 'owner'));
like($err, qr/permission denied for table token/,
	'owner: pg_dump cannot read tokenstore.token without a grant');
$node->safe_psql('odb', 'GRANT SELECT ON tokenstore.token TO owner');
run_ok($node, 'owner: pg_dump -Fc with SELECT on tokenstore.token',
	'pg_dump', '-Fc', '-f', $owner_dump, '-d', conn($node, 'odb', 'owner'));

# superuser: the new database, the extension, USAGE on its schema
$node->safe_psql('postgres', 'CREATE DATABASE odb2 OWNER owner');
$node->safe_psql('odb2', 'CREATE EXTENSION tokenstore; GRANT USAGE ON SCHEMA tokenstore TO owner');
# the archive's entries: tokenstore's, and the owner's
my @entries = split /\n/, run_ok($node, 'pg_restore -l', 'pg_restore', '-l', $owner_dump);
my $ext_entry = qr/ (SCHEMA - tokenstore|EXTENSION - tokenstore|COMMENT - EXTENSION tokenstore|TABLE DATA tokenstore|ACL - SCHEMA tokenstore|ACL tokenstore) /;
my $su_entry = qr/ (TABLE DATA tokenstore|ACL - SCHEMA tokenstore|ACL tokenstore) /;
my @owner_list = grep { !/$ext_entry/ } @entries;
my @su_list = grep { /$su_entry/ } @entries;
ok((grep { /TABLE DATA public notes/ } @owner_list)
	  && (grep { /POLICY public notes own_notes/ } @owner_list)
	  && !(grep { /^[^;].*tokenstore/ } @owner_list),
	"owner's list: the owner's objects, none of tokenstore's");
is(scalar(@su_list), scalar(grep { /^\d+;.* tokenstore / && !/ (SCHEMA|EXTENSION) - tokenstore / && !/COMMENT - EXTENSION/ } @entries),
	"superuser's list: tokenstore's entries but the schema, the extension and its comment");
PostgreSQL::Test::Utils::append_to_file("$dir/owner.list", join("\n", @owner_list) . "\n");
PostgreSQL::Test::Utils::append_to_file("$dir/tokenstore.list", join("\n", @su_list) . "\n");
run_ok($node, 'owner: pg_restore -L owner.list exits 0, no error',
	'pg_restore', '-L', "$dir/owner.list", '-d', conn($node, 'odb2', 'owner'), $owner_dump);
run_ok($node, 'superuser: pg_restore -L tokenstore.list exits 0, no error',
	'pg_restore', '-L', "$dir/tokenstore.list", '-d', conn($node, 'odb2'), $owner_dump);

is($node->safe_psql('odb2', qq{
		SELECT tokenstore.token_user('$ann'); SELECT tokenstore.token_user('$bea');
		SELECT tokenstore.token_make('bea', mode => 'share');
		SET app.token = '$ann'; SELECT string_agg(body, ',') FROM notes;
	}, extra_params => [ '-U', 'app' ]),
	"ann\nbea\n$bea\nfor ann",
	"owner: as the application, the tokens work, the shared one is handed out again, the policy keyed on them works");
my $acls = q{
	SELECT string_agg(d, ', ' ORDER BY d)
	  FROM (SELECT format('%s %s %s %s', o, grantee::regrole, grantor::regrole, privilege_type) d
			  FROM (SELECT 'schema' o, (aclexplode(nspacl)).* FROM pg_namespace WHERE nspname = 'tokenstore'
					UNION ALL SELECT 'table', (aclexplode(relacl)).* FROM pg_class WHERE oid = 'tokenstore.token'::regclass
					UNION ALL SELECT p.proname, (aclexplode(p.proacl)).* FROM pg_proc p
					 WHERE p.pronamespace IN ('tokenstore'::regnamespace, 'tokenstore_internal'::regnamespace)) a) e};
is($node->safe_psql('odb2', $acls), $node->safe_psql('odb', $acls),
	"owner: tokenstore's objects have the grants of the original");
run_ok($node, 'owner: pg_dump of the restored database',
	'pg_dump', '-Fc', '-f', "$dir/odb2.dump", '-d', conn($node, 'odb2', 'owner'));

done_testing();
