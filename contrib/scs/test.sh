#!/usr/bin/env bash
# The SCS session store (contrib/scs): install Go and lib/pq from Debian if
# missing, check formatting, vet, build and run `go test` against the
# database that the standard libpq variables name (PGHOST, a socket folder
# or a host; PGPORT; PGDATABASE; PGUSER; trust or PGPASSWORD).  There the
# tokenstore extension (1.2 or later) must be created, and PGUSER may call
# its functions.  Starts and stops no server.  Offline: GOPATH mode against
# Debian's /usr/share/gocode, nothing downloaded.  Exits non-zero on any
# failure.
#
#   PGHOST=/tmp/pg PGPORT=5432 PGDATABASE=app PGUSER=app contrib/scs/test.sh [go test flags]
#
# Flags given are handed to go test (default -v -count=1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# shellcheck source=SCRIPTDIR/../../test/setup.sh
. "$root/test/setup.sh"
setup_install golang-go golang-github-lib-pq-dev

export PATH=/usr/lib/go/bin:$PATH
tmp=$(mktemp -d /tmp/scs-go.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# GOPATH mode: the package as $tmp/src/tokenstore, lib/pq from Debian.
mkdir -p "$tmp/src"
ln -s "$here" "$tmp/src/tokenstore"
export GO111MODULE=off GOPATH="$tmp:/usr/share/gocode" GOPROXY=off GOFLAGS='' CGO_ENABLED=0
if [[ -z ${GOCACHE:-} && -z ${HOME:-} && -z ${XDG_CACHE_HOME:-} ]]; then
	export GOCACHE=$tmp/cache
fi

echo "scs: $(go version)"
cd "$tmp/src/tokenstore"
unformatted=$(gofmt -l ./*.go)
if [[ -n $unformatted ]]; then
	echo "scs: not gofmt-formatted: $unformatted" >&2
	exit 1
fi
go vet tokenstore
go build tokenstore
(($#)) || set -- -v -count=1
go test "$@" tokenstore
