\set i random(1, 1000000000)
SELECT tokenstore.token_make('bench-user-' || :i);
