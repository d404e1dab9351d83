\set i random(1, :n)
SELECT tokenstore.token_user('bench-token-' || lpad(:i::text, 12, '0'));
