-- token_list and token_delete_id: the "your devices" page.
SET tokenstore.touch_interval = 0;
SELECT tokenstore.token_make('alice', '{"device": "laptop"}') AS laptop \gset
SELECT tokenstore.token_make('alice', '{"device": "phone"}', idle_timeout => '1 hour') AS phone \gset
SELECT tokenstore.token_make('alice', '{"device": "tablet"}', ttl => '1 day') AS tablet \gset
SELECT tokenstore.token_make('bob', '{"device": "desktop"}') IS NOT NULL AS bobs;

-- oldest first; handles, never tokens; expires_at is the earlier deadline
SELECT info->>'device' AS device, token_id ~ '^[0-9a-f]{32}$' AS handle,
	   expires_at - created_at AS lifetime
  FROM tokenstore.token_list('alice');
SELECT count(*) AS tokens_in_list FROM tokenstore.token_list('alice') l
 WHERE l.token_id IN (:'laptop', :'phone', :'tablet');

-- the handle is the first 16 bytes of the token's SHA-256
SELECT token_id = encode(substr(sha256(convert_to(:'phone', 'UTF8')), 1, 16), 'hex') AS phone_handle
  FROM tokenstore.token_list('alice') WHERE info->>'device' = 'phone';

-- a use shows in last_used_at and moves the idle deadline
SELECT tokenstore.token_user(:'phone') IS NOT NULL AS used;
SELECT last_used_at > created_at AS used_later,
	   expires_at = last_used_at + interval '1 hour' AS idle_deadline
  FROM tokenstore.token_list('alice') WHERE info->>'device' = 'phone';

-- dead tokens are not listed
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'tablet', 'UTF8'));
SELECT info->>'device' AS device FROM tokenstore.token_list('alice');

-- "sign out that device"
SELECT tokenstore.token_delete_id(token_id) AS deleted
  FROM tokenstore.token_list('alice') WHERE info->>'device' = 'phone';
SELECT tokenstore.token_user(:'phone') IS NULL AS phone_signed_out;
SELECT tokenstore.token_user(:'laptop') AS laptop_still_in;
SELECT tokenstore.token_delete_id(encode(substr(sha256(convert_to(:'phone', 'UTF8')), 1, 16), 'hex')) AS again;
SELECT tokenstore.token_delete_id(upper(encode(substr(sha256(convert_to(:'laptop', 'UTF8')), 1, 16), 'hex'))) AS upper_case_handle;
SELECT tokenstore.token_delete_id('00000000000000000000000000000000') AS unknown;
SELECT tokenstore.token_delete_id(NULL) AS null_id;
-- the handle of a dead token deletes its row but reports false
SELECT tokenstore.token_delete_id(encode(substr(sha256(convert_to(:'tablet', 'UTF8')), 1, 16), 'hex')) AS dead;
SELECT count(*) AS tablet_rows FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'tablet', 'UTF8'));

SELECT count(*) AS alice_left FROM tokenstore.token_list('alice');
SELECT count(*) AS nobody FROM tokenstore.token_list('nobody');
SELECT tokenstore.token_delete_user('bob');
RESET tokenstore.touch_interval;
