# TokenstoreLoad: load clients for the crash and concurrency tests.
#
# A client is a forked process of the test with a psql of its own; it sends
# one batch of statements at a time and writes what the server acknowledged
# to a log file of its own, a line at a time, flushed at once.  So what a
# client learnt survives a crash of the server (a table written by the
# clients would crash with it), the clients run truly in parallel (each one
# blocks on its own server process, not on the test's event loop), and the
# test judges the logs afterwards.
#
#   my $pid = TokenstoreLoad::spawn(sub { my $s = TokenstoreLoad::session($node, 'postgres'); ... });
#   my ($status, @lines) = $s->query("SELECT 1;");   # 'ok', 'error' or 'lost'
#   TokenstoreLoad::reap([$pid], 30);                 # how many had to be killed
#
# A client must never call Test::More (the test's counter lives in the
# parent) and never return into the test's code: spawn() ends the child
# with POSIX::_exit, so no END block (which would stop the servers) runs.
package TokenstoreLoad;

use strict;
use warnings;
use IO::Handle;
use IPC::Open3 ();
use POSIX ();
use Time::HiRes ();

my $marker = '__tokenstore_load_done__';
my @sessions;    # this process's sessions, for spawn to close in a child
# what psql prints when the server ends or loses the session
my $gone = qr/terminating connection|server closed the connection|connection to server was lost|no connection to the server|could not (send|receive) data/;

# session(NODE, DB): a psql on DB that reads statements from a pipe, prints
# bare values (-XAtq) and goes on after an error (ON_ERROR_STOP off); its
# stderr comes on the same pipe as its stdout.  A psql that reads a pipe
# exits when it loses its connection: the session is then 'lost'.
sub session
{
	my ($node, $db) = @_;
	my ($in, $out);
	my $pid = IPC::Open3::open3($in, $out, undef,
		$node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=0',
		'-d', $node->connstr($db));

	my $s = bless { pid => $pid, in => $in, out => $out, alive => 1 },
	  'TokenstoreLoad::Session';

	$in->autoflush(1);
	@sessions = ((grep { $_->{alive} } @sessions), $s);
	return $s;
}

# spawn(CODE): run CODE in a child process (a process group of its own, so
# that reap can kill it with its psql) and return the child's pid.
sub spawn
{
	my ($code) = @_;
	my $pid;

	STDOUT->flush;
	STDERR->flush;
	$pid = fork();
	die "fork failed: $!" unless defined $pid;
	return $pid if $pid;

	# The parent's sessions are not the child's: a copy of a pipe to a
	# psql would keep that psql from seeing its input end.
	for my $s (grep { $_->{alive} } @sessions)
	{
		close $s->{in};
		close $s->{out};
		$s->{alive} = 0;
	}
	@sessions = ();

	my $rc = 0;
	eval {
		setpgrp(0, 0);
		$SIG{PIPE} = 'IGNORE';
		$code->();
		1;
	} or do {
		print STDERR "load client $$ died: $@";
		$rc = 1;
	};
	POSIX::_exit($rc);
}

# reap(PIDS, SECONDS): wait up to SECONDS for the children to exit; kill
# what is left (each child's process group).  Returns the number killed.
sub reap
{
	my ($pids, $seconds) = @_;
	my %left = map { $_ => 1 } @$pids;
	my $deadline = Time::HiRes::time() + $seconds;
	my $killed = 0;

	while (%left && Time::HiRes::time() < $deadline)
	{
		for my $pid (keys %left)
		{
			delete $left{$pid}
			  if waitpid($pid, POSIX::WNOHANG()) != 0;
		}
		Time::HiRes::usleep(20_000) if %left;
	}
	for my $pid (keys %left)
	{
		kill 'KILL', -$pid;
		waitpid($pid, 0);
		$killed++;
	}
	return $killed;
}

# logger(FILE): a log file handle, appending, flushed at every line.
sub logger
{
	my ($file) = @_;
	open my $fh, '>>', $file or die "could not open $file: $!";
	$fh->autoflush(1);
	return $fh;
}

# lines(FILES...): every line of the files, in order, without newlines
# (a file not written yet has none).
sub lines
{
	my @lines;

	for my $file (@_)
	{
		open my $fh, '<', $file or next;
		while (my $line = <$fh>)
		{
			chomp $line;
			push @lines, $line;
		}
		close $fh;
	}
	return @lines;
}

# server_children(PID): the pids of the processes whose parent is PID (the
# postmaster's children), from /proc.
sub server_children
{
	my ($ppid) = @_;
	my @pids;

	opendir my $dir, '/proc' or die "cannot read /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dir)
	{
		my $stat = proc_stat($pid);
		push @pids, $pid if defined $stat && $stat->{ppid} == $ppid;
	}
	closedir $dir;
	return @pids;
}

# running(PID): whether process PID exists and is not a zombie (an orphan
# that nobody reaps holds no resources).
sub running
{
	my ($pid) = @_;
	my $stat = proc_stat($pid);
	return defined $stat && $stat->{state} ne 'Z';
}

# server_process(PID, PPID, TITLE): whether PID is a live child of PPID
# whose process title matches TITLE (a regex): the process it was a moment
# ago, not one that took over its pid.
sub server_process
{
	my ($pid, $ppid, $title) = @_;
	my $stat = proc_stat($pid);

	return 0 unless defined $stat && $stat->{state} ne 'Z' && $stat->{ppid} == $ppid;
	open my $fh, '<', "/proc/$pid/cmdline" or return 0;
	my $cmdline = join(' ', split /\0/, do { local $/; <$fh> } // '');
	close $fh;
	return $cmdline =~ $title;
}

sub proc_stat
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or return undef;
	my $line = <$fh>;
	close $fh;
	return undef unless defined $line;
	# pid (comm) state ppid ...; comm may hold spaces and parentheses
	my ($state, $ppid) = $line =~ /\)\s+(\S)\s+(\d+)/s or return undef;
	return { state => $state, ppid => $ppid };
}

package TokenstoreLoad::Session;

# query(SQL): send SQL (one or more statements, each ending with ';') and
# wait for all of it.  Returns (STATUS, LINES...): 'ok' if the last
# statement succeeded and no line reports an error, 'error' if one failed,
# 'lost' if the server ended the session or psql went away (psql reading a
# pipe exits when its connection is lost): the answer to what was in flight
# is then unknown.  LINES are what psql printed, values and messages.
sub query
{
	my ($self, $sql) = @_;
	my @lines;

	return ('lost') unless $self->{alive};
	local $SIG{PIPE} = 'IGNORE';
	if (!print { $self->{in} } "$sql\n\\echo $marker :ERROR\n")
	{
		$self->finish;
		return ('lost');
	}
	while (defined(my $line = readline($self->{out})))
	{
		chomp $line;
		if ($line =~ /^\Q$marker\E (\w+)$/)
		{
			my $failed = $1 ne 'false';

			# The server ended the session (a crash, a shutdown, the
			# postmaster's death): whatever was in flight is unknown.
			if (grep { /$gone/ } @lines)
			{
				$self->finish;
				return ('lost', @lines);
			}
			return ($failed || grep { /\b(ERROR|FATAL|PANIC):/ } @lines)
			  ? 'error'
			  : 'ok', @lines;
		}
		push @lines, $line;
	}
	$self->finish;
	return ('lost', @lines);
}

# finish(): close the pipes and wait for psql to exit.
sub finish
{
	my ($self) = @_;
	return unless $self->{alive};
	$self->{alive} = 0;
	close $self->{in};
	close $self->{out};
	waitpid($self->{pid}, 0);
	return;
}

1;
