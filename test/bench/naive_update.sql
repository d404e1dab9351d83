\set i random(1, :n)
UPDATE bench.t SET last_use = now() WHERE token = 'bench-token-' || lpad(:i::text, 12, '0') RETURNING user_id;
