\set i random(1, 1000000000)
INSERT INTO bench.plain_token (token_hash, user_id, info, created_at, last_used_at, expires_at, sweep_at)
	VALUES (sha256(convert_to(gen_random_uuid()::text, 'UTF8')), 'bench-user-' || :i, '{}', now(), now(),
			now() + interval '30 days', now() + interval '30 days');
