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

-- a token in its grace period dies at its grace deadline, whatever is
-- called on it: a refresh does not extend it, and it has no second heir
-- (rotating a leaked token ends it, even if the thief rotates it too)
SELECT tokenstore.token_make('rot-grace', ttl => '1 day') AS g0 \gset
SELECT tokenstore.token_rotate(:'g0', grace => '1 hour') AS g1 \gset
SELECT expires_at AS grace_end FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'g0', 'UTF8')) \gset
SELECT tokenstore.token_refresh(:'g0') AS refresh_no_deadline,
	   tokenstore.token_refresh(:'g0', '10 days') AS refresh_longer,
	   tokenstore.token_rotate(:'g0') IS NULL AS no_second_heir,
	   tokenstore.token_rotate(:'g0', grace => '1 day') IS NULL AS nor_with_grace;
SELECT tokenstore.token_set_info(:'g0', '{"note": "in grace"}') AS info_still_settable,
	   tokenstore.token_user(:'g0') AS still_works_in_grace;
SELECT expires_at = :'grace_end' AS deadline_unchanged,
	   expires_at <= now() + interval '1 hour' AS within_grace
  FROM tokenstore.token WHERE token_hash = sha256(convert_to(:'g0', 'UTF8'));
SELECT tokenstore.token_rotate(:'g1') IS NOT NULL AS heir_rotates;
-- a share-mode token in its grace period is not handed out again
SELECT tokenstore.token_make('rot-grace-share', mode => 'share') AS gs0 \gset
SELECT tokenstore.token_rotate(:'gs0', grace => '1 hour') AS gs1 \gset
SELECT tokenstore.token_make('rot-grace-share', mode => 'share') = :'gs1' AS heir_is_shared;

SELECT tokenstore.token_delete_user(u)
  FROM unnest(ARRAY['rot', 'rot-share', 'rot-grace', 'rot-grace-share']) u;
