# tokenstore: PGXS build, and the two commands of the README.
#
#   make demo   install what is missing, build, start a local server, show it
#   make test   install what is missing, build, run every suite

EXTENSION = tokenstore
MODULE_big = tokenstore
OBJS = src/tokenstore.o src/api.o src/token.o src/store.o src/event.o \
	src/cache.o src/xact.o src/worker.o src/fanout.o src/redis.o
DATA = tokenstore--1.0.sql
PGFILEDESC = "tokenstore - session and API-token store"

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lcrypto -lhiredis

# pg_regress: sql/ and expected/ (installcheck starts a throwaway server)
REGRESS = setup make check list modes expiry revoke rotate errors \
	privileges transactions
REGRESS_OPTS = --temp-instance=tmp_regress --temp-config=test/tokenstore.conf

# isolation: test/isolation/specs and test/isolation/expected
ISOLATION = login_limit revoke_visibility notify cache_visibility \
	cache_fill_race
ISOLATION_OPTS = --temp-instance=tmp_isolation \
	--temp-config=test/tokenstore.conf --inputdir=test/isolation \
	--outputdir=output_iso

# TAP: test/t/*.pl, with the helpers in test/perl (added below, after PGXS)
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

EXTRA_CLEAN = output_iso tmp_regress tmp_isolation

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
PG_PROVE_FLAGS += -I $(srcdir)/test/perl
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

test:
	@bash test/run.sh

# One target per suite, so that test/run.sh can run all three and count.
regresscheck:
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)

isolationcheck:
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)

tapcheck:
	$(prove_installcheck)
