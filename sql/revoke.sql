-- Revocation: one token, a whole user, all but the current one.
SELECT tokenstore.token_make('alice') AS a1 \gset
SELECT tokenstore.token_make('alice') AS a2 \gset
SELECT tokenstore.token_make('alice') AS a3 \gset
SELECT tokenstore.token_make('bob') AS b1 \gset

SELECT tokenstore.token_delete(:'a1') AS deleted;
SELECT tokenstore.token_delete(:'a1') AS deleted_again;
SELECT tokenstore.token_user(:'a1') AS a1;
SELECT tokenstore.token_delete(NULL) AS null_token;
SELECT tokenstore.token_delete('never-made-token-1') AS unknown;

-- "sign out other devices": all but the token of this request
SELECT tokenstore.token_delete_user('alice', keep_token => :'a2') AS others;
SELECT tokenstore.token_user(:'a2') AS a2, tokenstore.token_user(:'a3') AS a3;
-- a keep_token of another user protects nothing of this one
SELECT tokenstore.token_delete_user('alice', keep_token => :'b1') AS all_of_alice;
SELECT tokenstore.token_user(:'a2') AS a2, tokenstore.token_user(:'b1') AS b1;
SELECT tokenstore.token_delete_user('alice') AS nothing_left;
-- dead tokens are removed but not counted
SELECT tokenstore.token_make('bob') IS NOT NULL AS b2;
UPDATE tokenstore.token SET expires_at = now() - interval '1 s'
 WHERE token_hash = sha256(convert_to(:'b1', 'UTF8'));
SELECT tokenstore.token_delete_user('bob') AS live_revoked;
SELECT count(*) AS bob_rows FROM tokenstore.token WHERE user_id = 'bob';
