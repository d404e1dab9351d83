#!/usr/bin/env bash
# Debian chroots for the PostgreSQL majors bookworm does not ship: trixie for
# 17, sid for 18.  Bookworm's glibc is too old for their binaries, so the
# tests of those majors run inside a minimal chroot of the suite that ships
# them, made with debootstrap from the mirror the host's apt already uses.
#
#   test/chroot.sh create MAJOR          make the chroot if missing; print its folder
#   test/chroot.sh run MAJOR USER CMD... run CMD inside, as USER (root, postgres)
#   test/chroot.sh shell MAJOR [USER]    an interactive shell inside
#   test/chroot.sh remove MAJOR          delete the chroot (refused while mounted)
#
# Or source it and use chroot_create, chroot_mount, chroot_exec and
# chroot_release (test/run.sh does).  Root only.
#
# Environment:
#   TOKENSTORE_CHROOT_DIR  folder holding one chroot per suite
#                          (default /var/cache/tokenstore/chroots)
#
# A chroot is built in a temporary folder beside its final one and renamed
# when complete, so an interrupted build is never taken for a chroot; a lock
# per suite keeps two runs from building or using the same chroot at once.
# /proc, /dev and /dev/shm are bound in only while something runs inside,
# and unbound on every way out.

CHROOT_BASE=${TOKENSTORE_CHROOT_DIR:-/var/cache/tokenstore/chroots}
CHROOT_NEED_MB=2500
CHROOT_BINDS=(/proc /dev /dev/shm)
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CHROOT_MOUNTED=()	# chroots this shell has bound /proc etc. into
declare -A CHROOT_LOCK_FD=()	# suite -> file descriptor of its held lock

# chroot_suite MAJOR: the Debian suite whose own packages carry MAJOR.
chroot_suite() {
	case $1 in
	17) echo trixie ;;
	18) echo sid ;;
	*)
		echo "chroot: no Debian suite known for PostgreSQL $1 (17: trixie, 18: sid)" >&2
		return 1
		;;
	esac
}

# chroot_dir MAJOR: where the chroot of MAJOR lives once complete.
chroot_dir() {
	local suite
	suite=$(chroot_suite "$1") || return 1
	echo "$CHROOT_BASE/$suite"
}

# chroot_packages MAJOR: what the build and every suite need inside; the TAP
# helpers use only core Perl modules (JSON::PP, Digest::SHA: package perl).
chroot_packages() {
	echo "postgresql-$1 postgresql-server-dev-$1 postgresql-client-$1" \
		libhiredis-dev libssl-dev libpq-dev pkg-config make gcc libc6-dev \
		perl libipc-run-perl redis-server redis-sentinel redis-tools openssl
}

# chroot_mirror: the Debian URI the host's apt uses for bookworm, read now
# (deb822 .sources first, then a one-line sources.list), so that no mirror
# name is ever written down here.
chroot_mirror() {
	local uri
	uri=$(awk '
		FNR == 1 || /^[ \t]*$/ { if (suite && uris) exit; suite = 0; uris = "" }
		/^[ \t]*(#|$)/ { next }
		tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
		tolower($1) == "uris:" { uris = $2 }
		END { if (suite && uris) print uris }
	' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	if [[ -z $uri && -r /etc/apt/sources.list ]]; then
		uri=$(awk '$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
			if ($(i + 1) == "bookworm") { print $i; exit }
		}' /etc/apt/sources.list)
	fi
	if [[ -z $uri ]]; then
		echo "chroot: no Debian URI for bookworm in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2
		return 1
	fi
	echo "$uri"
}

# chroot_lock SUITE: hold the suite's lock until this shell exits (taken
# once; later calls are no-ops), so a chroot is built and used by one run
# at a time.
chroot_lock() {
	local suite=$1 fd
	[[ -n ${CHROOT_LOCK_FD[$suite]:-} ]] && return 0
	mkdir -p "$CHROOT_BASE"
	exec {fd}>"$CHROOT_BASE/.$suite.lock"
	if ! flock -n "$fd"; then
		echo "chroot: waiting for another run that uses the $suite chroot"
		flock "$fd"
	fi
	CHROOT_LOCK_FD[$suite]=$fd
}

# chroot_unlock SUITE: let other runs use the suite's chroot again.
chroot_unlock() {
	local fd=${CHROOT_LOCK_FD[$1]:-}
	[[ -n $fd ]] || return 0
	exec {fd}>&-
	unset 'CHROOT_LOCK_FD[$1]'
}

# chroot_mounts_under DIR: the mount points at or below DIR, deepest last.
chroot_mounts_under() {
	awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts
}

# chroot_mount DIR: bind /proc, /dev, /dev/shm into DIR, private so that
# nothing propagates back to the host; binds left by a killed run are
# dropped first (the caller holds the lock: nobody else is inside).
chroot_mount() {
	local dir=$1 src
	chroot_umount "$dir" || return 1
	CHROOT_MOUNTED+=("$dir")
	for src in "${CHROOT_BINDS[@]}"; do
		mkdir -p "$dir$src"
		mount --bind "$src" "$dir$src" && mount --make-private "$dir$src" || return 1
	done
}

# chroot_kill_inside DIR: stop what still runs with DIR as its root (a server
# a failed or interrupted suite left behind), or /dev stays busy.
chroot_kill_inside() {
	local dir=$1 pids
	# One find over /proc, not a readlink per process (slow when loaded).
	mapfile -t pids < <(find /proc/[0-9]*/root -maxdepth 0 -lname "$dir" 2>/dev/null |
		sed -nE 's#^/proc/([0-9]+)/root$#\1#p')
	((${#pids[@]})) || return 0
	echo "chroot: stopping processes left in $dir: ${pids[*]}" >&2
	kill -TERM "${pids[@]}" 2>/dev/null
	for _ in $(seq 1 50); do
		kill -0 "${pids[@]}" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "${pids[@]}" 2>/dev/null
	sleep 0.2
}

# chroot_umount DIR: unbind everything below DIR, deepest first; lazily if
# something still holds it, so that no bind outlives the run.
chroot_umount() {
	local dir=$1 m mounts
	mapfile -t mounts < <(chroot_mounts_under "$dir")
	((${#mounts[@]})) || return 0
	chroot_kill_inside "$dir"
	for ((m = ${#mounts[@]} - 1; m >= 0; m--)); do
		umount "${mounts[m]}" 2>/dev/null || umount -l "${mounts[m]}" || true
	done
	if [[ -n $(chroot_mounts_under "$dir") ]]; then
		echo "chroot: could not unmount everything below $dir:" >&2
		chroot_mounts_under "$dir" >&2
		return 1
	fi
}

# chroot_release: unbind every chroot this shell bound (for EXIT traps).
chroot_release() {
	local dir rc=0
	for dir in "${CHROOT_MOUNTED[@]}"; do
		chroot_umount "$dir" || rc=1
	done
	CHROOT_MOUNTED=()
	return $rc
}

# chroot_remove_tree DIR: rm -rf, but never while anything is mounted below
# DIR (a bound /dev would take the host's device nodes with it).
chroot_remove_tree() {
	local dir=$1
	[[ -e $dir ]] || return 0
	chroot_umount "$dir" || return 1
	if [[ -n $(chroot_mounts_under "$dir") ]]; then
		echo "chroot: refusing to delete $dir: something is mounted below it" >&2
		return 1
	fi
	rm -rf --one-file-system "$dir"
}

# chroot_exec DIR USER CMD...: run CMD in DIR as USER of the chroot's own
# passwd (its postgres uid is not the host's), with a clean environment;
# CMD may start with VAR=value words (env(1) takes them).
chroot_exec() {
	local dir=$1 user=$2 uid gid home
	shift 2
	IFS=: read -r _ _ uid gid _ home _ < <(grep "^$user:" "$dir/etc/passwd")
	if [[ -z $uid ]]; then
		echo "chroot: no user $user in $dir/etc/passwd" >&2
		return 1
	fi
	chroot --userspec="$uid:$gid" "$dir" env -i PATH="$CHROOT_PATH" HOME="$home" \
		USER="$user" LOGNAME="$user" LANG=C.UTF-8 "$@"
}

# chroot_host_tools: debootstrap on the host (apt-get update only when it
# must be installed), under a lock: two suites may be built at once.
chroot_host_tools() {
	command -v debootstrap >/dev/null && return 0
	(
		flock 8
		command -v debootstrap >/dev/null && exit 0
		echo "chroot: installing debootstrap on the host"
		apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
	) 8>"$CHROOT_BASE/.host-apt.lock"
}

# chroot_check_space: about 2 GB per chroot; say so plainly when short.
chroot_check_space() {
	local avail
	mkdir -p "$CHROOT_BASE"
	avail=$(df --output=avail -BM "$CHROOT_BASE" | tail -n 1 | tr -dc 0-9)
	if ((avail < CHROOT_NEED_MB)); then
		echo "chroot: not enough disk space in $CHROOT_BASE: ${avail} MB free, a chroot needs about ${CHROOT_NEED_MB} MB." >&2
		echo "chroot: free some space or set TOKENSTORE_CHROOT_DIR to a folder on a larger disk." >&2
		return 1
	fi
}

# chroot_configure DIR: before any package is installed: no service may
# start, postgresql-common must not create a cluster, no recommends, and
# a dated Release file (sid's snapshot) is accepted.
chroot_configure() {
	local dir=$1
	printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
	chmod 755 "$dir/usr/sbin/policy-rc.d"
	mkdir -p "$dir/etc/postgresql-common"
	echo 'create_main_cluster = false' >"$dir/etc/postgresql-common/createcluster.conf"
	cat >"$dir/etc/apt/apt.conf.d/90tokenstore" <<-'CONF'
		Acquire::Check-Valid-Until "false";
		Acquire::Languages "none";
		APT::Install-Recommends "false";
		APT::Install-Suggests "false";
	CONF
	cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null
	cp /etc/hosts "$dir/etc/hosts"
}

# chroot_apt DIR ARGS...: apt-get inside DIR, quiet and non-interactive.
chroot_apt() {
	local dir=$1
	shift
	chroot_exec "$dir" root DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 "$@"
}

# chroot_missing DIR MAJOR: the packages of chroot_packages not installed
# (one dpkg-query: it runs before every use of the chroot).
chroot_missing() {
	local dir=$1 pkg installed
	# shellcheck disable=SC2016,SC2046 # a dpkg-query format; package names
	installed=$(chroot_exec "$dir" root dpkg-query -W -f '${Package} ${Status}\n' \
		$(chroot_packages "$2") 2>/dev/null | awk '/ install ok installed$/ { print $1 }')
	for pkg in $(chroot_packages "$2"); do
		[[ $'\n'$installed$'\n' == *$'\n'$pkg$'\n'* ]] || echo "$pkg"
	done
}

# chroot_install DIR MAJOR LOG: install what is missing (all of it on a new
# chroot; a package added to the list later, on an old one).
chroot_install() {
	local dir=$1 major=$2 log=$3 missing
	missing=$(chroot_missing "$dir" "$major" | tr '\n' ' ')
	[[ -n ${missing// /} ]] || return 0
	echo "chroot: installing for PostgreSQL $major: $missing"
	chroot_mount "$dir" || return 1
	# shellcheck disable=SC2086 # a list of package names
	if ! { chroot_apt "$dir" update && chroot_apt "$dir" install $missing &&
		chroot_apt "$dir" clean; } >>"$log" 2>&1; then
		chroot_umount "$dir"
		echo "chroot: apt-get failed in the chroot for PostgreSQL $major; the end of $log:" >&2
		tail -n 30 "$log" >&2
		return 1
	fi
	chroot_umount "$dir"
	if [[ ! -x $dir/usr/lib/postgresql/$major/bin/pg_config ]]; then
		echo "chroot: no /usr/lib/postgresql/$major/bin/pg_config in the chroot after installing" >&2
		return 1
	fi
}

# chroot_build SUITE TMP LOG: debootstrap and configure a new chroot in TMP.
chroot_build() {
	local suite=$1 tmp=$2 log=$3 mirror
	mirror=$(chroot_mirror) || return 1
	chroot_check_space || return 1
	chroot_host_tools || return 1
	if ! debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$log" 2>&1; then
		echo "chroot: debootstrap of $suite failed; the end of $log:" >&2
		tail -n 30 "$log" >&2
		return 1
	fi
	chroot_configure "$tmp"
}

# chroot_create MAJOR: make sure the chroot of MAJOR exists, complete and with
# every package; build it first if missing.  Takes the suite's lock (kept
# until the shell exits).  Prints progress and times on stdout.
chroot_create() {
	local major=$1 suite dir tmp log t0 t1 t2 stale
	suite=$(chroot_suite "$major") || return 1
	dir=$CHROOT_BASE/$suite
	log=$CHROOT_BASE/$suite.log
	if [[ $CHROOT_BASE =~ [[:space:]] || $CHROOT_BASE != /* ]]; then
		echo "chroot: TOKENSTORE_CHROOT_DIR must be an absolute path without spaces" >&2
		return 1
	fi
	chroot_lock "$suite" || return 1
	# Under the lock a temporary folder is what an interrupted build left.
	for stale in "$CHROOT_BASE/.$suite.tmp."*; do
		[[ -e $stale ]] && { chroot_remove_tree "$stale" || return 1; }
	done
	if [[ -d $dir && ! -e $dir/.tokenstore-complete ]]; then
		echo "chroot: $dir is incomplete; building it again"
		chroot_remove_tree "$dir" || return 1
	fi
	if [[ ! -d $dir ]]; then
		tmp=$(mktemp -d "$CHROOT_BASE/.$suite.tmp.XXXXXX") || return 1
		chmod 755 "$tmp"	# the chroot's /: its postgres user must enter it
		CHROOT_MOUNTED+=("$tmp")	# debootstrap binds /proc itself
		echo "chroot: building $suite for PostgreSQL $major in $dir (log: $log)"
		t0=$SECONDS
		chroot_build "$suite" "$tmp" "$log" || { chroot_remove_tree "$tmp"; return 1; }
		t1=$SECONDS
		chroot_install "$tmp" "$major" "$log" || { chroot_remove_tree "$tmp"; return 1; }
		t2=$SECONDS
		date -u +%FT%TZ >"$tmp/.tokenstore-complete"
		mv -T "$tmp" "$dir" || { chroot_remove_tree "$tmp"; return 1; }
		echo "chroot: $suite ready: debootstrap $((t1 - t0)) s, packages $((t2 - t1)) s"
	else
		chroot_install "$dir" "$major" "$log" || return 1
	fi
}

# chroot_main: the command-line interface described at the top.
chroot_main() {
	local cmd=${1:-} major=${2:-} dir rc
	if ((EUID != 0)); then
		echo "chroot: run as root" >&2
		return 1
	fi
	[[ -n $major ]] || { sed -n '7,10p' "${BASH_SOURCE[0]}" >&2; return 2; }
	dir=$(chroot_dir "$major") || return 1
	trap 'chroot_release' EXIT
	trap 'exit 130' INT TERM HUP
	case $cmd in
	create)
		chroot_create "$major" >&2 && echo "$dir"
		;;
	run | shell)
		chroot_create "$major" >&2 || return 1
		chroot_mount "$dir" || return 1
		if [[ $cmd == shell ]]; then
			chroot_exec "$dir" "${3:-root}" TERM="${TERM:-dumb}" bash -l
		else
			(($# >= 4)) || { echo "chroot: run MAJOR USER COMMAND..." >&2; return 2; }
			chroot_exec "$dir" "$3" "${@:4}"
		fi
		rc=$?
		chroot_release
		return $rc
		;;
	remove)
		chroot_lock "$(basename "$dir")"
		chroot_remove_tree "$dir"
		;;
	*)
		sed -n '7,10p' "${BASH_SOURCE[0]}" >&2
		return 2
		;;
	esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -uo pipefail
	chroot_main "$@"
	exit
fi
