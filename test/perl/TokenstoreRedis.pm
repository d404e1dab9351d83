# TokenstoreRedis: real Redis servers for the TAP tests of the Redis fan-out.
#
#   my $redis = TokenstoreRedis->new(password => 'pw');
#   my $replica = TokenstoreRedis->new(password => 'pw', replicaof => $redis);
#   my $sentinel = TokenstoreRedis::sentinel($redis);
#   $redis->cli('GET', $key);
#
# Each server listens on a free private port of 127.0.0.1 and lives in a
# temporary directory under tmp_check, with no persistence: a restart starts
# empty.  Every process started here is killed at exit, also when the test
# dies or is interrupted; a copy of each server's log is left in
# tmp_check/log for post-mortems.
package TokenstoreRedis;

use strict;
use warnings;
use Cwd ();
use File::Basename ();
use File::Copy ();
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

# Servers and subscriptions still running, for the END block.
my %running;

# An interrupted test must still reach the END blocks (ours and the
# Cluster's), or its servers would outlive it.
foreach my $sig (qw(INT TERM HUP))
{
	$SIG{$sig} = sub { diag("killed by SIG$sig"); exit 1; }
	  unless ref $SIG{$sig};
}

END
{
	# Keep the test's exit status: stopping reaps children.
	local $?;
	$_->stop foreach values %running;
}

# new(password => TEXT, replicaof => TokenstoreRedis, name => TEXT,
# tls => 1): start a redis-server and return once it answers PING (for a
# replica: once its link to the master is up).  With tls, it also listens
# with TLS on tls_port, with a certificate of a test authority made for it
# (ca_file); redis-cli keeps using the plain port.
sub new
{
	my ($class, %opt) = @_;
	my $self = bless {
		name => $opt{name} // 'redis',
		password => $opt{password},
		replicaof => $opt{replicaof},
		port => PostgreSQL::Test::Cluster::get_free_port(),
		dir => Cwd::abs_path(PostgreSQL::Test::Utils::tempdir('redis')),
	}, $class;

	if ($opt{tls})
	{
		$self->{tls_port} = PostgreSQL::Test::Cluster::get_free_port();
		_make_certificates($self->{dir});
	}

	$self->_start;
	if ($self->{replicaof})
	{
		_wait_until(
			sub { $self->cli('INFO', 'replication') =~ /^master_link_status:up\r?$/m },
			"replica on port $self->{port} in sync");
	}
	return $self;
}

# sentinel(MASTER, name => TEXT): start a redis-sentinel monitoring MASTER as
# "mymaster" with a quorum of 1, quick to judge a master down and to fail
# over; return once it answers for mymaster.
sub sentinel
{
	my ($master, %opt) = @_;
	my $self = bless {
		name => $opt{name} // 'sentinel',
		sentinel => 1,
		master => $master,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		dir => Cwd::abs_path(PostgreSQL::Test::Utils::tempdir('sentinel')),
	}, __PACKAGE__;

	$self->_start;
	_wait_until(sub { $self->master_port eq $master->port },
		"sentinel on port $self->{port} monitors mymaster");
	return $self;
}

sub port { return $_[0]->{port}; }
sub tls_port { return $_[0]->{tls_port}; }
sub ca_file { return "$_[0]->{dir}/ca.crt"; }

# tls_url(): the rediss:// URL of this server's TLS port, database 0.
sub tls_url
{
	my ($self) = @_;
	return "rediss://127.0.0.1:$self->{tls_port}/0";
}

# A test authority and a server certificate it signs, in DIR.
sub _make_certificates
{
	my ($dir) = @_;

	foreach my $cmd (
		[ 'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
			'-subj', '/CN=tokenstore test CA', '-keyout', "$dir/ca.key", '-out', "$dir/ca.crt" ],
		[ 'openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1',
			'-keyout', "$dir/server.key", '-out', "$dir/server.csr" ],
		[ 'openssl', 'x509', '-req', '-days', '2', '-in', "$dir/server.csr",
			'-CA', "$dir/ca.crt", '-CAkey', "$dir/ca.key", '-CAcreateserial',
			'-out', "$dir/server.crt" ])
	{
		my ($out, $err) = ('', '');
		IPC::Run::run($cmd, '<', \undef, '>', \$out, '2>', \$err)
		  or die "@$cmd failed: $err";
	}
	return;
}
sub pid { return $_[0]->{pid}; }
sub password { return $_[0]->{password}; }

# url(): the tokenstore.redis_url of this server, database 0.
sub url
{
	my ($self) = @_;
	my $auth = defined $self->{password} ? ":$self->{password}@" : '';
	return "redis://${auth}127.0.0.1:$self->{port}/0";
}

# cli(ARGS...): run redis-cli ARGS against this server, return its standard
# output trimmed (replies one per line, errors as "ERR ..." lines).  Never
# dies: a server that does not answer gives '' (its stderr is in last_error).
sub cli
{
	my ($self, @args) = @_;
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $self->{port});
	my ($out, $err) = ('', '');

	push @cmd, '-a', $self->{password}, '--no-auth-warning'
	  if defined $self->{password};
	eval {
		IPC::Run::run([ @cmd, @args ],
			'<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	};
	$err .= $@ if $@;
	$self->{last_error} = $err;
	$out =~ s/^\s+|\s+$//g;
	return $out;
}

sub last_error { return $_[0]->{last_error}; }

# role(): 'master' or 'slave', as ROLE says ('' if no answer).
sub role
{
	my ($self) = @_;
	my ($role) = split /\n/, $self->cli('ROLE');
	return $role // '';
}

# scan(PATTERN): the keys matching PATTERN (SCAN, not KEYS), sorted.
sub scan
{
	my ($self, $pattern) = @_;
	my $out = $self->cli('--scan', '--pattern', $pattern // '*');
	return sort split /\n/, $out;
}

# contents([PATTERN[, MAX]]): every key (matching PATTERN, a KEYS glob;
# default all) with its value, a string (its first MAX bytes, if MAX) or
# (for a set) a sorted array reference of members; other types as their
# TYPE.  Keys and values as Redis holds them (bytes).  undef if Redis gives
# nothing (see last_error).
sub contents
{
	my ($self, $pattern, $max) = @_;

	# one round trip, however many keys: a script reads them all
	my $script = q{
		local all = {}
		local max = tonumber(ARGV[2])
		for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
			local t = redis.call('TYPE', k)['ok']
			if t == 'string' then
				local v = redis.call('GET', k)
				if max > 0 then v = string.sub(v, 1, max) end
				all[k] = v
			elseif t == 'set' then
				local m = redis.call('SMEMBERS', k)
				table.sort(m)
				all[k] = m
			else all[k] = '<' .. t .. '>' end
		end
		return cjson.encode(all)
	};
	my $json = $self->cli('EVAL', $script, '0', $pattern // '*', $max // 0);
	return undef unless defined $json && $json =~ /^\{/;
	return $json eq '{}' ? {} : JSON::PP->new->decode($json);
}

# json(KEY): the JSON value of KEY decoded (undef if none or not JSON).
sub json
{
	my ($self, $key) = @_;
	my $value = $self->cli('GET', $key);
	return undef if $value eq '';
	return eval { JSON::PP::decode_json($value) };
}

# stop(): stop the server (SIGCONT first, for one stopped with SIGSTOP, then
# SIGTERM: with nothing to save it exits at once) and wait for its exit.
sub stop
{
	my ($self) = @_;
	return unless $self->{harness};
	kill 'CONT', $self->{pid} if $self->{pid};
	eval { $self->{harness}->kill_kill(grace => 5); };
	diag("stopping $self->{name} on port $self->{port}: $@") if $@;
	delete $running{"$self"};
	$self->{harness} = undef;
	$self->{pid} = undef;
	# Leave its log where the Cluster leaves the servers' logs.
	my $test = File::Basename::basename($0, '.pl');
	File::Copy::copy("$self->{dir}/server.log",
		"$PostgreSQL::Test::Utils::log_path/${test}_$self->{name}_$self->{port}.log");
	return;
}

# restart(): stop, then start again, empty, on the same port.
sub restart
{
	my ($self) = @_;
	$self->stop;
	$self->_start;
	return;
}

# master_port() (sentinels only): the master's port as the sentinel says.
sub master_port
{
	my ($self) = @_;
	my (undef, $port) =
	  split /\n/, $self->cli('SENTINEL', 'get-master-addr-by-name', 'mymaster');
	return $port // '';
}

# replicas_ok() (sentinels only): how many replicas of mymaster the sentinel
# knows and judges fit to be promoted (connected, not down, link up).
sub replicas_ok
{
	my ($self) = @_;
	my @lines = split /\n/, $self->cli('SENTINEL', 'replicas', 'mymaster');
	my ($ok, %field) = (0);

	# The reply is one flat list of name/value pairs per replica, each
	# starting with "name".
	for (my $i = 0; $i + 1 < @lines; $i += 2)
	{
		if ($lines[$i] eq 'name' && %field)
		{
			$ok++ if _fit(\%field);
			%field = ();
		}
		$field{ $lines[$i] } = $lines[ $i + 1 ];
	}
	$ok++ if %field && _fit(\%field);
	return $ok;
}

sub _fit
{
	my ($field) = @_;
	return ($field->{flags} // '') eq 'slave'
	  && ($field->{'master-link-status'} // '') eq 'ok';
}

# failover() (sentinels only): SENTINEL FAILOVER mymaster, repeated while
# the sentinel has no replica to promote yet; returns once the sentinel
# names a new master, and that master says it is one.
sub failover
{
	my ($self) = @_;
	my $old = $self->master_port;
	my $reply;

	_wait_until(sub { $self->replicas_ok > 0 },
		'the sentinel knows a replica fit for promotion');
	_wait_until(
		sub {
			$reply = $self->cli('SENTINEL', 'failover', 'mymaster');
			$reply eq 'OK' || $reply =~ /INPROG/;
		},
		'SENTINEL FAILOVER accepted');
	_wait_until(sub { my $p = $self->master_port; $p ne '' && $p ne $old },
		'the sentinel names a new master');
	return $self->master_port;
}

# wait_redis(CODE, EXPECTED, WHAT, SECONDS): poll CODE every 50 ms until it
# returns EXPECTED (default '1'), then pass the test WHAT; fail it after
# SECONDS (default 30) with CODE's last answer.  For what the publisher
# delivers asynchronously, usually within milliseconds.
sub wait_redis
{
	my ($code, $expected, $what, $seconds) = @_;
	my $deadline = Time::HiRes::time() + ($seconds // 30);
	my $got;

	$expected //= '1';
	while (1)
	{
		$got = $code->() // '';
		last if $got eq $expected || Time::HiRes::time() > $deadline;
		Time::HiRes::usleep(50_000);
	}
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return ok($got eq $expected, $what)
	  || diag("after " . ($seconds // 30) . " s: got\n$got\nexpected\n$expected");
}

# mismatch(NODE, DB, REDIS, DBKEY): how REDIS differs from what database DB
# has (DBKEY: its name as it appears in keys, default DB): '' when every
# token in tokenstore.token has its key, with its user in the JSON and in
# its user's set, and Redis holds nothing else under tokenstore:DBKEY:.
sub mismatch
{
	my ($node, $db, $redis, $dbkey) = @_;
	my $ns = 'tokenstore:' . ($dbkey // $db) . ':';
	my (%want, %sets, @diff);

	foreach (split /\n/,
		$node->safe_psql($db,
			"SELECT encode(token_hash, 'hex'), user_id FROM tokenstore.token"))
	{
		my ($hash, $user) = split /\|/, $_, 2;
		$want{"${ns}token:$hash"} = $user;
		# an anonymous session (NULL user) is in no user's set
		push @{ $sets{"${ns}user:$user"} }, "${ns}token:$hash" if $user ne '';
	}

	my $all = $redis->contents;
	my @keys = sort grep { /^\Q$ns\E/ } keys %$all;
	my @tokens = grep { /^\Q$ns\Etoken:/ } @keys;
	my @users = grep { /^\Q$ns\Euser:/ } @keys;
	my @stray = grep { !/^\Q$ns\E(token|user):/ } @keys;

	push @diff, map { "missing $_" } grep { !exists $all->{$_} } sort keys %want;
	push @diff, map { "revoked or stray $_" } grep { !exists $want{$_} } @tokens;
	push @diff, map { "unknown key $_" } @stray;
	foreach my $token (grep { exists $want{$_} } @tokens)
	{
		my $value = eval { JSON::PP::decode_json($all->{$token}) };
		my $user = ref $value eq 'HASH' ? $value->{user_id} // '' : '';
		push @diff, "$token has user '$user', not '$want{$token}'"
		  if $user ne $want{$token};
	}
	foreach my $set (sort(keys %sets), grep { !$sets{$_} } @users)
	{
		my $have = join(' ', @{ ref $all->{$set} ? $all->{$set} : [] });
		my $want = join(' ', sort @{ $sets{$set} // [] });
		push @diff, "set $set is {$have}, not {$want}" if $have ne $want;
	}
	return join("\n", @diff);
}

# subscribe(CHANNEL): a redis-cli SUBSCRIBE running in the background
# (killed at exit at the latest), returned once subscribed.
sub subscribe
{
	my ($self, $channel) = @_;
	my $sub = TokenstoreRedis::Subscription->_new($self, $channel);
	return $sub;
}

# _start(): write the configuration, start the process, wait for PING.
sub _start
{
	my ($self) = @_;
	my $dir = $self->{dir};    # absolute: the server changes to it first
	my @conf = (
		"port $self->{port}",
		'bind 127.0.0.1',
		'daemonize no',
		qq{dir "$dir"},
		qq{logfile "$dir/server.log"},
		'loglevel verbose');
	my @cmd;

	if ($self->{sentinel})
	{
		my $master = $self->{master};

		push @conf,
		  "sentinel monitor mymaster 127.0.0.1 $master->{port} 1",
		  'sentinel down-after-milliseconds mymaster 1000',
		  'sentinel failover-timeout mymaster 5000';
		push @conf, 'sentinel auth-pass mymaster ' . _quote($master->{password})
		  if defined $master->{password};
		@cmd = ('redis-sentinel', "$dir/sentinel.conf");
	}
	else
	{
		# No persistence: a restart starts empty.  A master with replicas
		# must not wait for them when told to stop.
		push @conf, q{save ""}, 'appendonly no', 'shutdown-timeout 0';
		push @conf, "tls-port $self->{tls_port}",
		  "tls-cert-file $dir/server.crt", "tls-key-file $dir/server.key",
		  "tls-ca-cert-file $dir/ca.crt", 'tls-auth-clients no'
		  if $self->{tls_port};
		push @conf, 'requirepass ' . _quote($self->{password})
		  if defined $self->{password};
		# A master may become a replica after a failover: it then needs the
		# password of its new master, taken to be its own.
		my $master = $self->{replicaof} // $self;
		push @conf, "replicaof 127.0.0.1 $master->{port}" if $self->{replicaof};
		push @conf, 'masterauth ' . _quote($master->{password})
		  if defined $master->{password};
		@cmd = ('redis-server', "$dir/redis.conf");
	}
	# The sentinel rewrites its file; both are written afresh on each start.
	open(my $fh, '>', $cmd[1]) or die "could not write $cmd[1]: $!";
	print $fh map { "$_\n" } @conf;
	close($fh);

	$self->{harness} = IPC::Run::start(\@cmd,
		'<', \undef, '>>', "$dir/stdout.log", '2>>', "$dir/stdout.log");
	$self->{pid} = $self->{harness}->{KIDS}[0]{PID};
	$running{"$self"} = $self;
	_wait_until(
		sub {
			# A configuration the server refuses ends it at once.
			my $out = slurp_file("$dir/stdout.log");
			die "$self->{name} did not start:\n$out" if $out =~ /FATAL/;
			$self->cli('PING') eq 'PONG';
		},
		"$self->{name} answers PING on port $self->{port}");
	# The pid IPC::Run forked is the server's (exec, no shell between).
	my ($pid) = $self->cli('INFO', 'server') =~ /^process_id:(\d+)/m;
	die "$self->{name}: process_id $pid, started $self->{pid}"
	  unless defined $pid && $pid == $self->{pid};
	note("$self->{name} started on port $self->{port}, pid $pid");
	return;
}

sub _quote
{
	my ($value) = @_;
	$value =~ s/(["\\])/\\$1/g;
	return qq{"$value"};
}

# _wait_until(CODE, WHAT): poll CODE until true; die after the framework's
# deadline (a server that never comes up is no test result).
sub _wait_until
{
	my ($code, $what) = @_;
	my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;

	until ($code->())
	{
		die "timed out waiting: $what" if Time::HiRes::time() > $deadline;
		Time::HiRes::usleep(50_000);
	}
	return;
}

# A background SUBSCRIBE: messages() returns the payloads received so far.
package TokenstoreRedis::Subscription;

use strict;
use warnings;

sub _new
{
	my ($class, $redis, $channel) = @_;
	my $self = bless { channel => $channel, out => '', err => '' }, $class;
	my @cmd = ('redis-cli', '-h', '127.0.0.1', '-p', $redis->port);

	push @cmd, '-a', $redis->password, '--no-auth-warning'
	  if defined $redis->password;
	$self->{harness} = IPC::Run::start([ @cmd, 'SUBSCRIBE', $channel ],
		'<', \undef, '>', \$self->{out}, '2>', \$self->{err},
		IPC::Run::timeout(2 * $PostgreSQL::Test::Utils::timeout_default));
	$running{"$self"} = $self;
	TokenstoreRedis::_wait_until(
		sub {
			$self->{harness}->pump_nb;
			$self->{out} =~ /^subscribe\n\Q$channel\E\n1\n/;
		},
		"SUBSCRIBE $channel");
	return $self;
}

# messages(): every message payload received so far, in order.
sub messages
{
	my ($self) = @_;
	my @lines;
	my @messages;

	$self->{harness}->pump_nb if $self->{harness};
	@lines = split /\n/, $self->{out};
	for (my $i = 0; $i + 2 < @lines; $i++)
	{
		if ($lines[$i] eq 'message' && $lines[ $i + 1 ] eq $self->{channel})
		{
			push @messages, $lines[ $i + 2 ];
			$i += 2;
		}
	}
	return @messages;
}

sub stop
{
	my ($self) = @_;
	return unless $self->{harness};
	eval { $self->{harness}->kill_kill(grace => 5); };
	delete $running{"$self"};
	$self->{harness} = undef;
	return;
}

1;
