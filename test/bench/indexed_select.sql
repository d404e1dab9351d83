\set i random(1, :n)
SELECT user_id FROM bench.t WHERE token = 'bench-token-' || lpad(:i::text, 12, '0');
