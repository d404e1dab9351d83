-- Tables of the benchmark: the hand-written designs tokenstore is compared with.
CREATE EXTENSION tokenstore;
CREATE SCHEMA bench;
-- what users write by hand: tokens in plain text, an index, a last-use column
CREATE TABLE bench.t (token text PRIMARY KEY, user_id text NOT NULL, last_use timestamptz NOT NULL);
-- the same row token_make writes, into a table of the same shape without tokenstore
CREATE TABLE bench.plain_token (LIKE tokenstore.token INCLUDING ALL);
-- elapsed milliseconds of a statement
CREATE FUNCTION bench.ms(stmt text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
	EXECUTE stmt;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
-- n tokens 'bench-token-000000000001'.., in tokenstore and in bench.t
CREATE FUNCTION bench.fill(n int) RETURNS void LANGUAGE sql AS $$
	INSERT INTO tokenstore.token (token_hash, user_id, created_at, last_used_at)
	SELECT sha256(convert_to('bench-token-' || lpad(i::text, 12, '0'), 'UTF8')), 'user' || i, now(), now()
	  FROM generate_series((SELECT count(*) FROM bench.t)::int + 1, n) i;
	INSERT INTO bench.t
	SELECT 'bench-token-' || lpad(i::text, 12, '0'), 'user' || i, now()
	  FROM generate_series((SELECT count(*) FROM bench.t)::int + 1, n) i;
$$;
