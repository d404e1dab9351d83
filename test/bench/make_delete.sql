\set i random(1, 1000000000)
SELECT tokenstore.token_make('bench-user-' || :i) AS tok \gset
SELECT tokenstore.token_delete(:tok);
