-- token_make: the token's form, hashing at rest, caller-provided tokens.
SELECT tokenstore.token_make('alice', '{"device": "laptop"}') AS t1 \gset
SELECT tokenstore.token_make('alice') AS t2 \gset

-- prefix, 43 characters of URL-safe base64 (32 random bytes), 6 of checksum
SELECT :'t1' ~ '^tks_[A-Za-z0-9_-]{49}$' AS well_formed, length(:'t1') AS len;
SELECT :'t1' <> :'t2' AS distinct_tokens;
SELECT tokenstore.token_user(:'t1') AS t1_user, tokenstore.token_user(:'t2') AS t2_user;
SELECT info FROM tokenstore.token_check(:'t1');

-- the table keys on SHA-256 of the exact bytes; the token is nowhere in it
SELECT count(*) AS rows_for_t1 FROM tokenstore.token
 WHERE token_hash = sha256(convert_to(:'t1', 'UTF8'));
SELECT count(*) AS rows_containing_t1 FROM tokenstore.token t
 WHERE position(convert_to(:'t1', 'UTF8') IN t.token_hash) > 0
    OR t::text LIKE '%' || :'t1' || '%';

-- a mistyped token is no token: wrong checksum, wrong case, truncated
SELECT tokenstore.token_user(overlay(:'t1' PLACING
		CASE WHEN substr(:'t1', 10, 1) = 'A' THEN 'B' ELSE 'A' END FROM 10 FOR 1)) AS one_char_changed;
SELECT tokenstore.token_user(upper(:'t1')) AS upper_case;
SELECT tokenstore.token_user(left(:'t1', -1)) AS truncated;

-- the prefix is the server's (postgresql.conf or ALTER SYSTEM, then a
-- reload): every session judges a mistyped token alike; its value is checked
SET tokenstore.token_prefix = 'acme_';
ALTER SYSTEM SET tokenstore.token_prefix = 'has space';
ALTER SYSTEM SET tokenstore.token_prefix = 'a_prefix_far_too_long';

-- caller-provided tokens (the SCS "save" case): taken exactly as given
SELECT tokenstore.token_make('bob', token => 'scs-session-0123456789') AS given;
SELECT tokenstore.token_user('scs-session-0123456789') AS given_user;
SELECT tokenstore.token_user('SCS-SESSION-0123456789') AS other_case;
SELECT tokenstore.token_make('bob', token => '0123456789abcdef') IS NOT NULL AS sixteen_bytes_ok;
SELECT tokenstore.token_make('carol', token => 'scs-session-0123456789');
SELECT tokenstore.token_user('scs-session-0123456789') AS still_bob;

-- user ids: multibyte ids round-trip, 64 bytes is fine
SELECT tokenstore.token_make('jürgen-ユーザー') AS t3 \gset
SELECT tokenstore.token_user(:'t3') AS multibyte_user;
SELECT tokenstore.token_user(tokenstore.token_make(repeat('x', 64))) = repeat('x', 64) AS id_of_64_bytes;

-- clean up for the next test
SELECT tokenstore.token_delete_user(u) FROM unnest(ARRAY['alice', 'bob', 'jürgen-ユーザー', repeat('x', 64)]) u;
