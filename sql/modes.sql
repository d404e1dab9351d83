-- Login modes: multi (with and without a limit), single, share.
SET tokenstore.touch_interval = 0;

-- multi, unlimited
SELECT count(tokenstore.token_make('multi')) AS made FROM generate_series(1, 3);
SELECT count(*) AS live FROM tokenstore.token_list('multi');

-- multi with max_tokens: the least recently used go, the new one stays
SELECT tokenstore.token_make('lim', max_tokens => 2) AS a \gset
SELECT tokenstore.token_make('lim', max_tokens => 2) AS b \gset
SELECT tokenstore.token_user(:'a') AS a_used;   -- now b is least recently used
SELECT tokenstore.token_make('lim', max_tokens => 2) AS c \gset
SELECT tokenstore.token_user(:'a') AS a, tokenstore.token_user(:'b') AS b,
	   tokenstore.token_user(:'c') AS c;
SELECT count(*) AS live FROM tokenstore.token_list('lim');
SELECT tokenstore.token_make('lim', max_tokens => 1) AS d \gset
SELECT tokenstore.token_user(:'a') AS a, tokenstore.token_user(:'c') AS c,
	   tokenstore.token_user(:'d') AS d;
-- max_tokens => 0 means no limit, as does the default setting
SELECT count(tokenstore.token_make('lim', max_tokens => 0)) FROM generate_series(1, 3);
SELECT count(*) AS live FROM tokenstore.token_list('lim');
-- the setting applies when the argument is NULL
SET tokenstore.max_tokens_per_user = 2;
SELECT tokenstore.token_make('lim') AS e \gset
SELECT count(*) AS live FROM tokenstore.token_list('lim');
SELECT tokenstore.token_user(:'e') AS e;
RESET tokenstore.max_tokens_per_user;
-- dead tokens do not count against the limit
SELECT tokenstore.token_make('lim2', max_tokens => 2) AS f \gset
UPDATE tokenstore.token SET expires_at = now() - interval '1 s' WHERE user_id = 'lim2';
SELECT tokenstore.token_make('lim2', max_tokens => 2) AS g \gset
SELECT tokenstore.token_make('lim2', max_tokens => 2) AS h \gset
SELECT tokenstore.token_user(:'g') AS g, tokenstore.token_user(:'h') AS h;

-- single: a new login revokes every other token of the user
SELECT tokenstore.token_make('solo') AS s1 \gset
SELECT tokenstore.token_make('solo') AS s2 \gset
SELECT tokenstore.token_make('solo', mode => 'single') AS s3 \gset
SELECT tokenstore.token_user(:'s1') AS s1, tokenstore.token_user(:'s2') AS s2,
	   tokenstore.token_user(:'s3') AS s3;
SET tokenstore.login_mode = 'single';
SELECT tokenstore.token_make('solo') AS s4 \gset
SELECT tokenstore.token_user(:'s3') AS s3, tokenstore.token_user(:'s4') AS s4;
SELECT tokenstore.token_make('solo', mode => 'multi') IS NOT NULL AS multi_again;
SELECT count(*) AS live FROM tokenstore.token_list('solo');
RESET tokenstore.login_mode;

-- share: every login of the user gets the same token while it lives
SELECT tokenstore.token_make('team', '{"n": 1}', mode => 'share') AS sh1 \gset
SELECT tokenstore.token_make('team', '{"n": 2}', mode => 'share') = :'sh1' AS same_token;
SELECT tokenstore.token_make('team') <> :'sh1' AS multi_is_separate;
SELECT count(*) AS live FROM tokenstore.token_list('team');
SELECT info FROM tokenstore.token_check(:'sh1');
-- only share-mode rows keep the token, sealed: never as plain text
SELECT count(*) FILTER (WHERE share_secret IS NOT NULL) AS sealed,
	   count(*) FILTER (WHERE position(convert_to(:'sh1', 'UTF8') IN share_secret) > 0) AS plain
  FROM tokenstore.token WHERE user_id = 'team';
SET tokenstore.login_mode = 'share';
SELECT tokenstore.token_make('team') = :'sh1' AS setting_share;
RESET tokenstore.login_mode;
-- once it is revoked (or dead), the next share login makes a new one
SELECT tokenstore.token_delete(:'sh1');
SELECT tokenstore.token_make('team', mode => 'share') AS sh2 \gset
SELECT :'sh2' <> :'sh1' AS new_token, tokenstore.token_user(:'sh2') AS sh2_user;
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'sh2', 'UTF8'));
SELECT tokenstore.token_make('team', mode => 'share') NOT IN (:'sh1', :'sh2') AS fresh_after_expiry;
-- a single-mode login revokes the shared token too
SELECT tokenstore.token_make('team', mode => 'share') AS sh3 \gset
SELECT tokenstore.token_make('team', mode => 'single') IS NOT NULL AS single_login;
SELECT tokenstore.token_user(:'sh3') IS NULL AS shared_revoked;
-- a sealed copy that this server's key cannot open (a dump restored on
-- another server, or an edit) is never served: the login gets a new shared
-- token, the old one still works for whoever holds it
SELECT tokenstore.token_make('team2', mode => 'share') AS sh4 \gset
UPDATE tokenstore.token SET share_secret = '\x00'::bytea || share_secret
 WHERE token_hash = sha256(convert_to(:'sh4', 'UTF8'));
SELECT tokenstore.token_make('team2', mode => 'share') AS sh5 \gset
SELECT :'sh5' <> :'sh4' AS new_shared_token, tokenstore.token_user(:'sh4') AS old_still_works;
SELECT tokenstore.token_make('team2', mode => 'share') = :'sh5' AS new_one_is_shared;

SELECT tokenstore.token_delete_user(u)
  FROM unnest(ARRAY['multi', 'lim', 'lim2', 'solo', 'team', 'team2']) u;
RESET tokenstore.touch_interval;
