#!/usr/bin/env bash
# Tests of connect-tokenstore against a running PostgreSQL with tokenstore 1.2
# created in the database that PGHOST, PGPORT, PGDATABASE and PGUSER name
# (trust authentication).  Starts and stops no server.  Every test begins by
# revoking every session of that database: give it a database of its own.
#
#   PGHOST=/run/postgresql PGPORT=5432 PGDATABASE=sessions PGUSER=app contrib/express/test.sh
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1; then
	# shellcheck source-path=SCRIPTDIR
	source ../../test/setup.sh
	setup_install nodejs npm
fi

if [[ ! -d node_modules ]]; then
	if [[ -f package-lock.json ]]; then
		npm ci --no-audit --no-fund --loglevel=error >/dev/null
	else
		npm install --no-audit --no-fund --loglevel=error >/dev/null
	fi
fi

echo "connect-tokenstore: node $(node --version), database ${PGDATABASE:-(default)} on ${PGHOST:-(default)}:${PGPORT:-(default)} as ${PGUSER:-(default)}"
# One file, one process: the tests share the database's sessions.
exec node --test --test-reporter=spec test/store.test.js
