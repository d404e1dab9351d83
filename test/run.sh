#!/usr/bin/env bash
# `make test`: every suite (pg_regress, isolation, TAP) on every PostgreSQL
# major tokenstore supports, each suite against servers it starts and stops
# itself.  15 runs on the host (bookworm's packages); 17 and 18 run inside
# Debian chroots of trixie and sid, which test/chroot.sh builds on first use
# and reuses.  For each major the tree is copied to a work folder, built and
# installed as root with that major's pg_config, and the suites run as the
# postgres OS user.  A major whose build fails counts as one failure, and the
# run goes on with the next; a build that prints a warning counts as one
# failure too (its suites still run), and so does one with clang on the
# host's major (the clang PGXS uses for bitcode) that prints one.  A TAP
# script that skips itself is counted apart, as skipped.  Ends with one line
# "N passed, S skipped, M failed" over all majors; exits non-zero if anything
# failed.  Run as root.
#
#   make test                                15, 17 and 18
#   make test PG_VERSIONS="17"               only the majors named
#   make test PG_CONFIG=/path/to/pg_config   only that pg_config's
#                                            PostgreSQL, on the host
#
# (PG_VERSIONS and PG_CONFIG are read from the environment when this script
# is run directly.)  PROVE_FLAGS in the environment (say -j2) is handed to
# prove, and PROVE_TESTS (say test/t/019_pg_upgrade.pl) picks the TAP
# scripts (and skips the adapters' suites, test/contrib.sh, which run on
# the host's major only).  TOKENSTORE_CHROOT_DIR: see test/chroot.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
# The same make, on the host and in a chroot: nothing from `make test`.
unset MAKEFLAGS MFLAGS MAKELEVEL
. test/setup.sh
. test/chroot.sh

HOST_MAJOR=$SETUP_DEFAULT_MAJOR	# bookworm's 15; every other major runs in a chroot
ALL_MAJORS="$HOST_MAJOR 17 18"

passed=0
skipped=0
failed=0
summary=()	# one line per major, repeated at the end
works=()	# work folders to delete on the way out

# Per major, set by prepare_host or prepare_chroot:
ROOT=''	# the chroot's folder ('' on the host)
PGC=''	# pg_config, as seen by the commands that run
WORK=''	# the work folder, as seen from the host
WORK_IN=''	# the same, as seen by the commands that run
AS_ROOT=()	# command prefix: run as root (there)
AS_POSTGRES=()	# command prefix: run as the postgres OS user (there)
OWNER=''	# uid:gid of that postgres user

# kill_under DIR: stop what a suite left running from DIR on the host (a
# TAP test's server or Redis, when the run is interrupted): the processes
# whose working folder or command line is inside DIR.  One grep and one find
# over /proc, not a fork per process: a loaded machine forks slowly.  ("[/]"
# keeps grep from finding its own command line.)
kill_under() {
	local dir=$1 pids
	mapfile -t pids < <(
		{
			grep -lsE "[/]${dir#/}" /proc/[0-9]*/cmdline
			find /proc/[0-9]*/cwd -maxdepth 0 -lname "$dir*" 2>/dev/null
		} | sed -nE 's#^/proc/([0-9]+)/.*#\1#p' | sort -u | grep -vx "$$")
	((${#pids[@]})) || return 0
	echo "test: stopping processes left in $dir: ${pids[*]}" >&2
	kill -TERM "${pids[@]}" 2>/dev/null
	sleep 2
	kill -KILL "${pids[@]}" 2>/dev/null
	return 0
}

# The run's own output: a trap can fire inside a function call whose output
# goes to a suite's log (chroot_exec ... >LOG), which cleanup deletes.
exec {OUT}>&1 {ERR}>&2

# cleanup: on every way out (also a failed suite or Ctrl-C): no process,
# work folder or bind mount may outlive the run.
cleanup() {
	local w
	exec 1>&"$OUT" 2>&"$ERR"
	trap - INT TERM HUP
	for w in "${works[@]}"; do
		[[ -d $w ]] && kill_under "$w"
	done
	chroot_release
	for w in "${works[@]}"; do
		rm -rf --one-file-system "$w"
	done
	works=()
}
trap cleanup EXIT
trap 'echo "test: interrupted" >&"$ERR"; exit 130' INT TERM HUP

# pg_config_major PG_CONFIG: its major version (from the path when it is not
# installed yet: setup_install installs Debian's).
pg_config_major() {
	if [[ -x $1 ]]; then
		"$1" --version | sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p'
	elif [[ $1 =~ ^/usr/lib/postgresql/([0-9]+)/bin/pg_config$ ]]; then
		echo "${BASH_REMATCH[1]}"
	fi
}

# on_host MAJOR: whether MAJOR runs on the host (else in a chroot).
on_host() {
	[[ -n ${PG_CONFIG:-} || $1 == "$HOST_MAJOR" ]]
}

# prepare_host MAJOR: a work folder on the host, under the host's lock for
# MAJOR (make install writes the host's PostgreSQL folders).
prepare_host() {
	local major=$1 fd
	exec {fd}>"/run/lock/tokenstore-test-pg$major.lock"
	flock -n "$fd" || { echo "test: waiting for another run on the host's PostgreSQL $major"; flock "$fd"; }
	ROOT=''
	PGC=$(setup_pg_config "$major")
	WORK=$(mktemp -d "/tmp/tokenstore-test-$major.XXXXXX") || return 1
	works+=("$WORK")
	WORK_IN=$WORK
	AS_ROOT=()
	# The chroots' locale, whatever the caller's.
	AS_POSTGRES=(runuser -u postgres -- env LC_ALL=C.UTF-8 LANG=C.UTF-8)
	OWNER=postgres:
}

# prepare_chroot MAJOR: the chroot of MAJOR (built if missing, then locked
# for this run), /proc etc. bound in, and a work folder inside it.
prepare_chroot() {
	local major=$1 stale
	chroot_create "$major" || return 1
	ROOT=$(chroot_dir "$major")
	# Under the lock, work folders found inside are left by a killed run.
	for stale in "$ROOT"/var/tmp/tokenstore-test.*; do
		[[ -e $stale ]] && rm -rf --one-file-system "$stale"
	done
	chroot_mount "$ROOT" || return 1
	PGC=/usr/lib/postgresql/$major/bin/pg_config
	WORK=$(mktemp -d "$ROOT/var/tmp/tokenstore-test.XXXXXX") || return 1
	works+=("$WORK")
	WORK_IN=${WORK#"$ROOT"}
	AS_ROOT=(chroot_exec "$ROOT" root)
	AS_POSTGRES=(chroot_exec "$ROOT" postgres)
	OWNER=$(awk -F: '$1 == "postgres" { print $3 ":" $4 }' "$ROOT/etc/passwd")
}

# finish_major MAJOR: drop the work folder and the binds, free the chroot.
finish_major() {
	local major=$1 w keep=()
	for w in "${works[@]}"; do
		if [[ $w == "$WORK" ]]; then rm -rf --one-file-system "$w"; else keep+=("$w"); fi
	done
	works=("${keep[@]}")
	[[ -n $ROOT ]] && chroot_umount "$ROOT"
	on_host "$major" || chroot_unlock "$(chroot_suite "$major")"
	ROOT='' WORK=''
}

# copy_tree: the checkout without .git and build products, owned by postgres
# once built (git would call a checkout owned by someone else "dubious").
copy_tree() {
	tar -C "$SRC" --exclude=./.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=tmp_check --exclude=tmp_regress --exclude=tmp_isolation \
		--exclude=results --exclude=output_iso --exclude=log \
		--exclude=regression.diffs --exclude=regression.out -cf - . |
		tar -xf - -C "$WORK"
}

# build_install MAJOR: build and install as root with this major's
# pg_config; show the compiler's output (-k: every file's errors at once).
# A build that prints anything (a warning) adds one to build_failed.
build_install() {
	local major=$1 log=$WORK/build.log
	if ! { "${AS_ROOT[@]}" make -C "$WORK_IN" -s -k -j"$(nproc)" PG_CONFIG="$PGC" &&
		"${AS_ROOT[@]}" make -C "$WORK_IN" -s PG_CONFIG="$PGC" install; } >"$log" 2>&1; then
		echo "-- PostgreSQL $major: the build FAILED:"
		show_build_log "$log"
		return 1
	fi
	if [[ -s $log ]]; then
		echo "-- PostgreSQL $major: the build printed warnings (counted as 1 failure):"
		show_build_log "$log"
		build_failed=$((build_failed + 1))
	fi
	chown -R "$OWNER" "$WORK"
}

# clang_build MAJOR: build the tree once with clang, before the real build
# (make clean after it), on the host's major: the clang PGXS compiles
# bitcode with (CLANG in its Makefile.global; postgresql-server-dev-15
# depends on it), else the one on PATH.  The server's CFLAGS are gcc's:
# clang is told to ignore the options it does not know, and, as PGXS does
# for bitcode, the gnu_printf attributes of PostgreSQL's headers.  Anything
# else it prints (a warning) adds one to build_failed, as does no clang.
clang_build() {
	local major=$1 log=$WORK/build-clang.log global clang
	global=$(dirname "$(dirname "$("$PGC" --pgxs)")")/Makefile.global
	clang=$(sed -nE 's/^CLANG = *(.+)$/\1/p' "$global" 2>/dev/null)
	[[ -n $clang ]] || clang=$(command -v clang)
	if [[ -z $clang ]]; then
		echo "-- PostgreSQL $major: no clang to build with (counted as 1 failure)"
		build_failed=$((build_failed + 1))
		return
	fi
	if ! make -C "$WORK_IN" -s -k -j"$(nproc)" PG_CONFIG="$PGC" CC="$clang" \
		COPT='-Wno-unknown-warning-option -Wno-ignored-optimization-argument -Wno-ignored-attributes' \
		>"$log" 2>&1 || [[ -s $log ]]; then
		echo "-- PostgreSQL $major: the build with $clang FAILED or printed warnings (counted as 1 failure):"
		show_build_log "$log"
		build_failed=$((build_failed + 1))
	else
		echo "-- PostgreSQL $major: built with $clang, no warnings"
	fi
	make -C "$WORK_IN" -s PG_CONFIG="$PGC" clean >/dev/null 2>&1
}

# The major each chroot major is upgraded from (test/t/019_pg_upgrade.pl),
# and where each major built in this run lives ('' on the host).  The test
# skips itself, saying so, when pg_upgrade between the two packages fails
# for a plain table too (bookworm's 15.20 and trixie's 17.12 give every
# column a pg_attver option that sid's 18.6 refuses, and RESET (pg_attver)
# in the old cluster leaves it in place): it then counts as skipped.
declare -A PREVIOUS=([17]=15 [18]=17)
declare -A BUILT_ROOT=()

# lib_path ROOT LIB: where ROOT's own loader finds LIB ('' if it does not).
lib_path() {
	local root=$1 path
	if [[ -z $root ]]; then
		path=$(ldconfig -p | awk -v l="$2" '$1 == l { print $NF; exit }')
	else
		path=$(chroot "$root" ldconfig -p | awk -v l="$2" '$1 == l { print $NF; exit }')
	fi
	[[ -n $path ]] && echo "$root$path"
}

# provide_previous MAJOR: the major MAJOR is upgraded from, as this run
# built it (tokenstore installed), copied into MAJOR's chroot at its own
# paths (in place of an earlier run's copy), with the shared libraries its
# programs and tokenstore (hiredis) need and the chroot lacks, in its lib
# folder (the upgrade test puts that on LD_LIBRARY_PATH).
provide_previous() {
	local major=$1 old=${PREVIOUS[$1]:-} from lib path pass missing copy
	[[ -n $old && -n ${BUILT_ROOT[$old]+set} ]] || return 0
	from=${BUILT_ROOT[$old]}
	for copy in "$ROOT"/usr/lib/postgresql/*/.tokenstore-copy; do
		[[ -e $copy ]] || continue
		copy=$(basename "$(dirname "$copy")")
		rm -rf --one-file-system "$ROOT/usr/lib/postgresql/$copy" "$ROOT/usr/share/postgresql/$copy"
	done
	rm -rf --one-file-system "$ROOT/usr/lib/postgresql/$old" "$ROOT/usr/share/postgresql/$old"
	cp -a "$from/usr/lib/postgresql/$old" "$ROOT/usr/lib/postgresql/" &&
		cp -a "$from/usr/share/postgresql/$old" "$ROOT/usr/share/postgresql/" &&
		touch "$ROOT/usr/lib/postgresql/$old/.tokenstore-copy" || return 1
	for pass in 1 2 3; do
		missing=$("${AS_ROOT[@]}" sh -c "LD_LIBRARY_PATH=/usr/lib/postgresql/$old/lib ldd /usr/lib/postgresql/$old/bin/* /usr/lib/postgresql/$old/lib/tokenstore.so 2>/dev/null" |
			awk '/not found/ { print $1 }' | sort -u)
		[[ -n $missing ]] || break
		for lib in $missing; do
			path=$(lib_path "$from" "$lib")
			[[ -n $path ]] && cp -L "$path" "$ROOT/usr/lib/postgresql/$old/lib/"
		done
	done
	echo "-- PostgreSQL $old, as built in this run, is there to upgrade from"
}

# show_build_log LOG: all of it when short, else its errors and its end.
show_build_log() {
	if (($(wc -l <"$1") <= 150)); then
		cat "$1"
	else
		grep -E 'error:|warning:|undefined|Error [0-9]' "$1" | head -n 80
		echo "-- ... the end of it:"
		tail -n 40 "$1"
	fi
}

# show_failure NAME LOG: what a failed suite left: its output, then its
# diffs and its throwaway server's log, or the logs of the failed TAP scripts.
show_failure() {
	local name=$1 log=$2 out tmp f
	echo "-- $name failed; its output:"
	tail -n 60 "$log"
	case $name in
	regress) out=$WORK tmp=$WORK/tmp_regress ;;
	isolation) out=$WORK/output_iso tmp=$WORK/tmp_isolation ;;
	tap) show_tap_logs "$log"; return ;;
	esac
	f=$out/regression.diffs
	[[ -s $f ]] && { echo "-- ${f#"$WORK"/}:"; head -n 200 "$f"; }
	f=$tmp/log/postmaster.log
	[[ -s $f ]] && grep -qE 'FATAL|PANIC' "$f" && { echo "-- ${f#"$WORK"/} (end):"; tail -n 30 "$f"; }
	return 0
}

# show_tap_logs LOG: the end of each failed script's logs (prove's summary
# report names the scripts).
show_tap_logs() {
	local t f
	sed -nE 's#^test/t/(\S+)\.pl +\(Wstat: .*#\1#p' "$1" | sort -u |
		while read -r t; do
			for f in "$WORK/tmp_check/log/regress_log_$t" "$WORK/tmp_check/log/${t}"_*.log; do
				[[ -s $f ]] && { echo "-- ${f#"$WORK"/} (end):"; tail -n 40 "$f"; }
			done
		done
}

# Lines of pg_regress and the isolation tester: "test name ... ok" up to
# 15; from 16 on TAP style, "ok 1         - name   12 ms" ("+" instead of
# "-" in a parallel group) and "not ok 2         - name   15 ms".
RESULT_OK='^(test .* \.\.\. ok|ok [0-9]+ +[-+] )'
RESULT_FAILED='^(test .* \.\.\. FAILED|not ok [0-9]+ +[-+] )'

# regress_results LOG: show each test's line; set res_p and res_f.
regress_results() {
	grep -E "$RESULT_OK|$RESULT_FAILED" "$1"
	res_p=$(grep -cE "$RESULT_OK" "$1")
	res_f=$(grep -cE "$RESULT_FAILED" "$1")
}

# prove_results LOG: prove says "x.pl .. ok" for a passing script and
# "x.pl .. skipped: why" for one that skipped itself, but the verdict on a
# failing one can land lines later, after its diagnostics: count the scripts
# of "Files=N", the failing ones its summary report lists (one that only
# passed TODO tests is listed with status 0 and no parse error: not failed),
# and the skipped ones that are not among them (a script that ran a test
# before skipping itself is a failure).
prove_results() {
	local files failing
	grep -E '^test/t/\S+\.pl \.+ (ok|skipped)' "$1"
	sed -n '/^Test Summary Report/,/^Files=/p' "$1"
	files=$(sed -nE 's/^Files=([0-9]+),.*/\1/p' "$1")
	failing=$(awk '
		/^Test Summary Report/ { report = 1 }
		report && /^test\/t\/[^ ]+\.pl +\(Wstat: / { name = $1; bad[name] = ($0 !~ /Wstat: 0 .*Failed: 0\)/) }
		report && /^  Parse errors:/ { bad[name] = 1 }
		/^Files=/ { report = 0 }
		END { for (n in bad) if (bad[n]) print n }' "$1")
	res_f=$(grep -c . <<<"$failing")
	res_s=$(sed -nE 's/^(test\/t\/\S+\.pl) \.+ skipped.*/\1/p' "$1" | grep -cvxF -e "${failing:-/}")
	res_p=$((${files:-0} - res_f - res_s))
}

# run_suite NAME TARGET COUNTER: run a make target as postgres, show and
# count its results with COUNTER (which sets res_p, res_f and, for TAP,
# res_s); a suite that fails without saying which test failed counts as one
# failure.
run_suite() {
	local name=$1 target=$2 counter=$3 log="$WORK/$1.log" rc t0=$SECONDS res_p res_f res_s=0
	echo "== $name"
	"${AS_POSTGRES[@]}" make -C "$WORK_IN" -s PG_CONFIG="$PGC" ${PROVE_FLAGS:+PROVE_FLAGS="$PROVE_FLAGS"} \
		${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} \
		"$target" >"$log" 2>&1
	rc=$?
	"$counter" "$log"
	if ((rc != 0)); then
		((res_f == 0)) && res_f=1
		show_failure "$name" "$log"
	fi
	echo "-- $name: $res_p passed, $res_s skipped, $res_f failed ($((SECONDS - t0)) s)"
	major_passed=$((major_passed + res_p))
	major_skipped=$((major_skipped + res_s))
	major_failed=$((major_failed + res_f))
}

# run_contrib: the reference adapters' suites (test/contrib.sh), as root
# on the host, against the build just installed; counted like pg_regress.
run_contrib() {
	local log="$WORK/contrib.log" t0=$SECONDS res_p res_f
	echo "== contrib"
	bash "$WORK/test/contrib.sh" >"$log" 2>&1
	regress_results "$log"
	if ((res_f > 0 || res_p == 0)); then
		((res_f == 0)) && res_f=1
		echo "-- contrib failed; its output:"
		grep -vE "$RESULT_OK" "$log" | tail -n 120
	fi
	echo "-- contrib: $res_p passed, $res_f failed ($((SECONDS - t0)) s)"
	major_passed=$((major_passed + res_p))
	major_failed=$((major_failed + res_f))
}

# run_major MAJOR: build and every suite on one major; adds to the totals.
run_major() {
	local major=$1 where t0=$SECONDS major_passed=0 major_skipped=0 major_failed=0 build_failed=0
	if on_host "$major"; then where="host"; else where="chroot: $(chroot_suite "$major")"; fi
	echo
	echo "======== PostgreSQL $major ($where)"
	if on_host "$major"; then prepare_host "$major"; else prepare_chroot "$major"; fi ||
		{ fail_major "$major" "could not prepare its $where"; return; }
	copy_tree || { fail_major "$major" "could not copy the tree"; return; }
	on_host "$major" && clang_build "$major"
	build_install "$major" || { fail_major "$major" "build FAILED"; return; }
	major_failed=$((major_failed + build_failed))
	echo "-- built with $("${AS_ROOT[@]}" "$PGC" --version)"
	BUILT_ROOT[$major]=$ROOT
	[[ -z $ROOT ]] || provide_previous "$major" ||
		echo "-- could not copy PostgreSQL ${PREVIOUS[$major]} here: the upgrade test is skipped"
	run_suite regress regresscheck regress_results
	run_suite isolation isolationcheck regress_results
	run_suite tap tapcheck prove_results
	[[ -n $ROOT || -n ${PROVE_TESTS:-} ]] || run_contrib
	finish_major "$major"
	passed=$((passed + major_passed))
	skipped=$((skipped + major_skipped))
	failed=$((failed + major_failed))
	summary+=("PostgreSQL $major: $major_passed passed, $major_skipped skipped, $major_failed failed ($((SECONDS - t0)) s)")
	echo "======== ${summary[-1]}"
}

# fail_major MAJOR WHY: a major that did not get to its suites: one failure.
fail_major() {
	finish_major "$1"
	failed=$((failed + 1))
	summary+=("PostgreSQL $1: $2 (counted as 1 failure)")
	echo "======== ${summary[-1]}"
}

# plan: the majors to run, checked before anything is installed.
plan() {
	local major
	if [[ -n ${PG_CONFIG:-} ]]; then
		major=$(pg_config_major "$PG_CONFIG")
		[[ -n $major ]] || { echo "test: cannot tell the major version of PG_CONFIG=$PG_CONFIG" >&2; return 1; }
		[[ -z ${PG_VERSIONS:-} ]] || echo "test: PG_CONFIG given: running only its PostgreSQL $major, on the host" >&2
		echo "$major"
		return
	fi
	for major in ${PG_VERSIONS:-$ALL_MAJORS}; do
		if [[ $major != "$HOST_MAJOR" ]] && ! chroot_suite "$major" &>/dev/null; then
			echo "test: PG_VERSIONS: no way to run PostgreSQL $major (known: $ALL_MAJORS)" >&2
			return 1
		fi
		echo "$major"
	done
}

# host_setup MAJORS...: the host's packages, with one apt-get update: those
# of the major run on the host, debootstrap if any runs in a chroot.
host_setup() {
	local major pkgs=()
	for major in "$@"; do
		# shellcheck disable=SC2207 # a list of package names
		if on_host "$major"; then pkgs+=($(setup_packages "$major")); else pkgs+=(debootstrap); fi
	done
	setup_install "${pkgs[@]}"
}

if ((EUID != 0)); then
	echo "test: run as root (it installs packages, builds chroots, and runs the suites as postgres)" >&2
	exit 1
fi
majors=$(plan) || exit 2
# shellcheck disable=SC2086 # a list of major versions
host_setup $majors || { echo "0 passed, 0 skipped, 1 failed"; exit 1; }
t_all=$SECONDS
for major in $majors; do
	run_major "$major"
done

echo
printf '%s\n' "${summary[@]}"
echo "total time $((SECONDS - t_all)) s"
echo "$passed passed, $skipped skipped, $failed failed"
((failed == 0))
