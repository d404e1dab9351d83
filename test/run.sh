#!/usr/bin/env bash
# `make test`: install what is missing, build, then run every suite
# (pg_regress, isolation, TAP) as the postgres OS user from a copy of the tree
# that user owns, each against servers it starts and stops itself.  Ends with
# one line "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

bash test/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
work=$(mktemp -d /tmp/tokenstore-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar --exclude=.git --exclude='*.o' --exclude='*.so' --exclude=tmp_check \
	--exclude=results --exclude=output_iso -cf - . | tar -xf - -C "$work"
chown -R postgres: "$work"

passed=0
failed=0

# run_suite NAME TARGET PASS_RE FAIL_RE: run a make target as postgres and
# count its passing and failing lines; a suite that fails without saying
# which test failed counts as one failure.
run_suite() {
	local name=$1 target=$2 pass_re=$3 fail_re=$4 log="$work/$1.log" rc p f
	echo "== $name"
	runuser -u postgres -- make -C "$work" -s PG_CONFIG="$PG_CONFIG" "$target" >"$log" 2>&1
	rc=$?
	p=$(grep -cE "$pass_re" "$log")
	f=$(grep -cE "$fail_re" "$log")
	grep -E "$pass_re|$fail_re" "$log"
	if ((rc != 0)); then
		((f == 0)) && f=1
		echo "-- $name failed (make exit $rc); its output:"
		tail -n 60 "$log"
		for diffs in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
			[ -s "$diffs" ] && head -n 200 "$diffs"
		done
		for logdir in "$work"/tmp_check/log; do
			[ -d "$logdir" ] && tail -n 40 "$logdir"/*
		done
	fi
	passed=$((passed + p))
	failed=$((failed + f))
}

run_suite regress regresscheck '^test .* \.\.\. ok' '^test .* \.\.\. FAILED'
run_suite isolation isolationcheck '^test .* \.\.\. ok' '^test .* \.\.\. FAILED'
run_suite tap tapcheck '^test/t/.*\.pl \.+ ok' '^test/t/.*\.pl \.+ (Failed|Dubious|No subtests)'

echo "$passed passed, $failed failed"
((failed == 0))
