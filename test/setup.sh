#!/usr/bin/env bash
# Install what tokenstore needs (Debian bookworm, as root), then build and
# install the extension.  Shared by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
packages=(make gcc postgresql-15 postgresql-server-dev-15 postgresql-client-15
	libssl-dev libhiredis-dev libipc-run-perl redis-server redis-sentinel
	redis-tools libpq-dev)

missing=()
for pkg in "${packages[@]}"; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	apt-get update -qq
	# Packages must not start system services (redis-server on port 6379):
	# the tests start servers of their own, on private ports.
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install
