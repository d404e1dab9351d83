# tokenstore: PGXS build, and the two commands of the README.
#
#   make demo   install what is missing, build, start a local server, show it
#   make test   install what is missing, build, run every suite on every
#               PostgreSQL major: 15 on the host, 17 and 18 in Debian chroots
#               (test/run.sh, test/chroot.sh; as root)
#     make test PG_VERSIONS="17"             only the majors named
#     make test PG_CONFIG=/path/to/pg_config only that PostgreSQL, on the host
#   make installcheck   the pg_regress suite against a running server
#               (PGHOST, PGPORT, PGUSER as usual)
#   make regresscheck | isolationcheck | tapcheck   one suite against
#               throwaway servers; not as root: as the postgres user, from a
#               copy of the tree that user owns (make test does that)

EXTENSION = tokenstore
# The version, in this one place: the install script, the control file and
# the library are built with it.  A schema change goes into a new version,
# with extension/tokenstore--OLD--NEW.sql and a test that updates to it.
EXTVERSION = 1.4
MODULE_big = tokenstore
OBJS = src/tokenstore.o src/api.o src/token.o src/store.o src/event.o \
	src/cache.o src/xact.o src/registry.o src/worker.o src/fanout.o \
	src/redis_client.o src/redis_publisher.o src/redis_resync.o \
	src/standby.o src/sender.o
# The scripts that install or take over schema tokenstore are built from
# extension/*.in and extension/tokenstore.sql, with the schema check
# (extension/schema_check.sql) in place of their line @SCHEMA_CHECK@.
DATA_built = tokenstore--$(EXTVERSION).sql tokenstore--1.0.sql \
	tokenstore--1.0--1.1.sql tokenstore.control
DATA = $(wildcard extension/tokenstore--*.sql)
PGFILEDESC = "tokenstore - session and API-token store"

PG_CPPFLAGS = -I$(srcdir)/src -I$(libpq_srcdir) -DTOKENSTORE_VERSION='"$(EXTVERSION)"'
SHLIB_LINK = -lcrypto -lhiredis
# the standby's sender talks to the primary
SHLIB_LINK_INTERNAL = $(libpq)
# rediss:// where hiredis has TLS (1.0 and later, as hiredis_ssl)
ifeq ($(shell pkg-config --exists hiredis_ssl 2>/dev/null && echo yes),yes)
PG_CPPFLAGS += -DTOKENSTORE_TLS
SHLIB_LINK += -lhiredis_ssl -lssl
endif

# pg_regress: sql/ and expected/ (installcheck: against a running server;
# regresscheck, below: against a throwaway one)
REGRESS = setup install make check list modes expiry revoke rotate errors \
	privileges transactions session

# isolation: test/isolation/specs and test/isolation/expected
ISOLATION = login_limit revoke_visibility notify cache_visibility \
	cache_fill_race session_save cache_data forged_event
ISOLATION_OPTS = --temp-instance=tmp_isolation \
	--temp-config=test/tokenstore.conf --inputdir=test/isolation \
	--outputdir=output_iso

# TAP: test/t/*.pl, with the helpers in test/perl (added below, after PGXS)
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

EXTRA_CLEAN = output_iso tmp_regress tmp_isolation

# PGXS's installcheck would also run ISOLATION and TAP_TESTS, which need
# throwaway servers with the library preloaded: they run from isolationcheck
# and tapcheck (below) only, so PGXS sees them empty.
ISOLATION_TESTS := $(ISOLATION)
ISOLATION :=
TAP_TESTS :=
EXTRA_CLEAN += tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
PG_PROVE_FLAGS += -I $(srcdir)/test/perl

schema_check = sed -e '/^@SCHEMA_CHECK@$$/{' -e 'r $(word 2,$^)' -e 'd' -e '}' $< >$@
tokenstore--$(EXTVERSION).sql: extension/tokenstore.sql extension/schema_check.sql
	$(schema_check)
tokenstore--%.sql: extension/tokenstore--%.sql.in extension/schema_check.sql
	$(schema_check)

tokenstore.control: tokenstore.control.in Makefile
	sed 's/@EXTVERSION@/$(EXTVERSION)/' $< >$@

# the library refuses SQL objects of another version than its own
$(OBJS): Makefile
else
# Before the set-up has installed PostgreSQL, only demo and test make sense.
all install installcheck:
	@echo "pg_config not found: run 'make demo' or 'make test' first" >&2; exit 1
endif

.PHONY: demo test bench regresscheck isolationcheck tapcheck

demo:
	@bash test/demo.sh

bench:
	@bash test/bench/run.sh

# PG_VERSIONS, and PG_CONFIG when given (not the default above), select
# what test/run.sh runs.
test:
	@PG_VERSIONS='$(PG_VERSIONS)' \
	$(if $(filter command line environment,$(origin PG_CONFIG)),PG_CONFIG='$(PG_CONFIG)') \
	bash test/run.sh

# One target per suite, so that test/run.sh can run all three and count.
# Each starts throwaway servers, which initdb refuses to run as root.
not_root = @if [ "$$(id -u)" = 0 ]; then \
	echo "make $@: the test servers cannot run as root (initdb refuses)." >&2; \
	echo "Run 'make test' instead, or 'make $@' as the postgres user from a copy of the tree that user owns." >&2; \
	exit 1; fi
REGRESSCHECK_OPTS = --temp-instance=tmp_regress --temp-config=test/tokenstore.conf

regresscheck:
	$(not_root)
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESSCHECK_OPTS) $(REGRESS)

isolationcheck:
	$(not_root)
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) \
		--dbname=$(ISOLATION_TESTDB) $(ISOLATION_TESTS)

tapcheck:
	$(not_root)
	$(prove_installcheck)
