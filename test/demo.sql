-- The demo session of `make demo`: every tokenstore function once.
\pset footer off
-- start from a clean slate, so the demo can run again (other users stay)
SELECT tokenstore.token_delete_user('alice') + tokenstore.token_delete_user('bob') AS cleared;

-- log alice in twice (two devices); keep the tokens in psql variables
SELECT tokenstore.token_make('alice', '{"device": "laptop"}', ttl => '30 days') AS laptop \gset
SELECT tokenstore.token_make('alice', '{"device": "phone"}', idle_timeout => '2 hours') AS phone \gset
SELECT tokenstore.token_make('alice', '{"device": "tablet"}') IS NOT NULL AS tablet;
\echo laptop token: :laptop

-- every request: who is this?
SELECT tokenstore.token_user(:'laptop') AS user_id;
SELECT * FROM tokenstore.token_check(:'phone');

-- a mistyped token is turned away without a lookup
SELECT tokenstore.token_user(:'laptop' || 'x') AS mistyped;

-- the "your devices" page
SELECT token_id, info->>'device' AS device, expires_at FROM tokenstore.token_list('alice');

-- change what is attached to a session, extend it, rotate it
SELECT tokenstore.token_set_info(:'phone', '{"device": "phone", "trusted": true}');
SELECT tokenstore.token_refresh(:'laptop', '90 days');
SELECT tokenstore.token_rotate(:'laptop') AS laptop \gset
SELECT tokenstore.token_user(:'laptop') AS rotated_user;

-- login modes: single revokes the others, share hands out one token
SELECT tokenstore.token_make('bob', mode => 'share') = tokenstore.token_make('bob', mode => 'share') AS same_share_token;
SELECT tokenstore.token_make('bob', mode => 'single') AS bob \gset
SELECT count(*) AS bob_tokens FROM tokenstore.token_list('bob');

-- sign out: one token, one device by its id, all but this one, everyone
SELECT tokenstore.token_delete(:'bob');
SELECT tokenstore.token_delete_id(token_id) FROM tokenstore.token_list('alice') LIMIT 1;
SELECT tokenstore.token_delete_user('alice', keep_token => :'laptop') AS signed_out_elsewhere;
SELECT tokenstore.token_delete_user('alice') AS signed_out;
SELECT tokenstore.token_sweep() AS swept;

-- a web framework's session store: a visitor's session (no user yet), its
-- data on every request, and sign-in (a new id, the user attached)
SELECT tokenstore.token_save('demo-session-0123456789abcdef', NULL,
							 convert_to('{"cart": [42]}', 'UTF8'), now() + interval '2 hours') AS new_session;
SELECT convert_from(tokenstore.token_data('demo-session-0123456789abcdef'), 'UTF8') AS session_data;
SELECT tokenstore.token_rotate('demo-session-0123456789abcdef', user_id => 'carol') AS signed_in \gset
SELECT tokenstore.token_user(:'signed_in') AS user_id,
	   convert_from(tokenstore.token_data(:'signed_in'), 'UTF8') AS data_kept;
SELECT tokenstore.token_delete(:'signed_in') AS signed_out;
