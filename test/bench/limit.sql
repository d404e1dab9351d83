\set i random(1, :n)
SELECT 'bench-token-' || lpad(:i::text, 12, '0');
