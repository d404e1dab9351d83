-- token_rotate: a new token with the same user, info and deadlines.
SELECT tokenstore.token_make('rot', '{"device": "phone"}', ttl => '1 day',
							 idle_timeout => '1 hour') AS old \gset
SELECT expires_at AS old_deadline FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'old', 'UTF8')) \gset
SELECT tokenstore.token_rotate(:'old') AS new \gset
SELECT :'new' <> :'old' AS new_token, :'new' ~ '^tks_' AS generated;
SELECT tokenstore.token_user(:'old') IS NULL AS old_dead_now,
	   tokenstore.token_user(:'new') AS new_user;
SELECT info, (SELECT expires_at = :'old_deadline' AND idle_timeout = '1 hour'
				FROM tokenstore.token
			   WHERE token_hash = sha256(convert_to(:'new', 'UTF8'))) AS same_deadlines
  FROM tokenstore.token_check(:'new');
SELECT tokenstore.token_rotate(:'old') IS NULL AS rotate_old_again;

-- with grace, the old token lives on briefly for requests in flight
SELECT tokenstore.token_rotate(:'new', grace => '30 seconds') AS newer \gset
SELECT tokenstore.token_user(:'new') AS old_in_grace,
	   tokenstore.token_user(:'newer') AS newer_user;
SELECT expires_at <= now() + interval '30 seconds' AS grace_deadline
  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'new', 'UTF8'));
SELECT tokenstore.token_rotate(:'newer', grace => '0') IS NOT NULL AS zero_grace;
SELECT tokenstore.token_user(:'newer') IS NULL AS zero_grace_ends_now;

SELECT tokenstore.token_rotate(NULL) IS NULL AS null_token;
SELECT tokenstore.token_rotate('never-made-token-2') IS NULL AS unknown;

-- a rotated share-mode token stays the user's shared token
SELECT tokenstore.token_make('rot-share', mode => 'share') AS sh \gset
SELECT tokenstore.token_rotate(:'sh') AS sh2 \gset
SELECT tokenstore.token_make('rot-share', mode => 'share') = :'sh2' AS shares_rotated;

SELECT tokenstore.token_delete_user(u) FROM unnest(ARRAY['rot', 'rot-share']) u;
