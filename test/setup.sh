#!/usr/bin/env bash
# Install what tokenstore needs on the host (Debian bookworm, as root), then
# build and install the extension for one PostgreSQL major.  Shared by
# `make demo` and `make bench`; `make test` (test/run.sh) sources it for
# setup_packages and setup_install only.
#
#   test/setup.sh [MAJOR]     MAJOR defaults to 15, the one bookworm ships
#
# PG_CONFIG in the environment names the pg_config to build with (default
# /usr/lib/postgresql/MAJOR/bin/pg_config); one outside /usr/lib/postgresql
# is taken as a PostgreSQL installed by other means, so only the other
# packages are installed.

SETUP_DEFAULT_MAJOR=15

# setup_pg_config MAJOR: the pg_config to build with.
setup_pg_config() {
	echo "${PG_CONFIG:-/usr/lib/postgresql/$1/bin/pg_config}"
}

# setup_packages MAJOR: the host packages the build and the suites need.
setup_packages() {
	local major=$1
	echo make gcc libssl-dev libhiredis-dev libpq-dev pkg-config perl \
		libipc-run-perl redis-server redis-sentinel redis-tools openssl
	if [[ $(setup_pg_config "$major") == /usr/lib/postgresql/$major/bin/pg_config ]]; then
		echo "postgresql-$major postgresql-server-dev-$major postgresql-client-$major"
	fi
}

# setup_install PKG...: install the packages that are missing, with one
# apt-get update; no service may start while they install (the suites start
# servers of their own, on private ports).
setup_install() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	if ((EUID != 0)); then
		echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
		return 1
	fi
	echo "setup: installing ${missing[*]}"
	# A subshell, so that its trap is its own when this file is sourced.
	(
		set -e
		policy=/usr/sbin/policy-rc.d
		if [[ ! -e $policy ]]; then
			printf '#!/bin/sh\nexit 101\n' >"$policy"
			chmod +x "$policy"
			trap 'rm -f "$policy"' EXIT
		fi
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"${missing[@]}" >/dev/null
	)
}

# setup_main [MAJOR]: packages, then build and install from this tree.
setup_main() {
	local major=${1:-$SETUP_DEFAULT_MAJOR} pg_config
	pg_config=$(setup_pg_config "$major")
	# shellcheck disable=SC2046 # a list of package names
	setup_install $(setup_packages "$major")
	make -s PG_CONFIG="$pg_config"
	make -s PG_CONFIG="$pg_config" install
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -euo pipefail
	cd "$(dirname "$0")/.."
	setup_main "$@"
fi
