-- Bad input: every error has a code and a message a person can act on,
-- and leaves no half-made token behind.
\set SHOW_CONTEXT never

-- user ids
SELECT tokenstore.token_make(NULL);
SELECT tokenstore.token_make('');
SELECT tokenstore.token_make(repeat('x', 65));
SELECT tokenstore.token_make(repeat('é', 33));
SELECT tokenstore.token_list(NULL);
SELECT tokenstore.token_delete_user('');
-- info
SELECT tokenstore.token_make('err', '[1, 2]');
SELECT tokenstore.token_make('err', '"text"');
SELECT tokenstore.token_make('err', 'null');
SELECT tokenstore.token_set_info('whatever-token-1', '42');
-- deadlines
SELECT tokenstore.token_make('err', idle_timeout => '-1 hour');
SELECT tokenstore.token_rotate('whatever-token-1', grace => '-1 second');
SELECT tokenstore.token_save('session-id-12345678', NULL, NULL, '10000-01-01');
SELECT tokenstore.token_save('session-id-12345678', NULL, NULL, NULL, '-1 s');
-- settings: a refusal names the setting and what it takes, never the value;
-- a duration over its bound (2147483647 seconds, about 68 years) is 22008
SET tokenstore.default_ttl = -1;
SET tokenstore.default_ttl = 'thirty days';
SET tokenstore.default_ttl = '70 years';
SET tokenstore.default_idle_timeout = '3000000000';
SET tokenstore.default_idle_timeout = '2147483648s';
SELECT set_config('tokenstore.default_idle_timeout', repeat('9', 1000000), false);
SELECT set_config('tokenstore.default_ttl', repeat('x', 1000000), false);
SET tokenstore.default_ttl = 2147483647;
SHOW tokenstore.default_ttl;
RESET tokenstore.default_ttl;
ALTER SYSTEM SET tokenstore.token_prefix = 'a-prefix-too-long';
ALTER SYSTEM SET tokenstore.token_prefix = 'tks.';
-- modes and limits
SELECT tokenstore.token_make('err', mode => 'double');
SELECT tokenstore.token_make('err', mode => 'Single');
SELECT tokenstore.token_make('err', max_tokens => -1);
SET tokenstore.login_mode = 'double';
SELECT sqlstate_of('SET tokenstore.max_tokens_per_user = -1') AS negative_max_tokens;
-- caller-provided tokens
SELECT tokenstore.token_make('err', token => 'short');
SELECT tokenstore.token_make('err', token => repeat('x', 1025));
SELECT tokenstore.token_make('err', token => 'tks_' || repeat('A', 49));
SELECT tokenstore.token_make('err', mode => 'share', token => 'a-shared-token-given');
-- token ids
SELECT tokenstore.token_delete_id('xyz');
SELECT tokenstore.token_delete_id(repeat('g', 32));
-- errors never repeat a huge argument, nor a token passed for an id
SELECT tokenstore.token_delete_id(repeat('x', 1000000));
SELECT tokenstore.token_delete_id(tokenstore.token_make('err-echo'));
SELECT tokenstore.token_make('err', mode => repeat('m', 1000000));
SELECT tokenstore.token_make('err', mode => 'sixteen-byte-arg');
SELECT tokenstore.token_make('err', mode => 'fifteen-byte-ar');
SELECT tokenstore.token_make('err', mode => 'tks_AbC');
SELECT tokenstore.token_delete_user('err-echo');
-- deadlines past the year 9999, or beyond what a timestamp holds: refused
-- (a stored one would break every later deadline computation)
SELECT sqlstate_of($$SELECT tokenstore.token_make('err', idle_timeout => '294276-12-31 23:59:58+00'::timestamptz - now())$$) AS idle_to_the_end_of_time;
SELECT tokenstore.token_make('err', idle_timeout => '72000001 hours');
SELECT tokenstore.token_make('err', ttl => '8000 years');
SELECT tokenstore.token_make('err', ttl => '178000000 years');
SELECT tokenstore.token_make('err', ttl => '-178000000 years');
SELECT tokenstore.token_make('err', ttl => '2147483647 days 2147483647 months');
SELECT tokenstore.token_refresh('whatever-token-1', '9000 years');
SELECT tokenstore.token_rotate('whatever-token-1', grace => '106742155 days');
SELECT tokenstore.token_rotate('whatever-token-1', grace => '106751000 days');
SELECT tokenstore.token_rotate('whatever-token-1', grace => '2147483647 months');

-- the codes, pinned
SELECT stmt, sqlstate_of(stmt) FROM (VALUES
	('SELECT tokenstore.token_make(NULL)'),
	('SELECT tokenstore.token_make('''')'),
	('SELECT tokenstore.token_make(repeat(''x'', 65))'),
	('SELECT tokenstore.token_make(''err'', ''[]'')'),
	('SELECT tokenstore.token_make(''err'', idle_timeout => ''-1 s'')'),
	('SELECT tokenstore.token_make(''err'', mode => ''x'')'),
	('SELECT tokenstore.token_make(''err'', max_tokens => -1)'),
	('SELECT tokenstore.token_make(''err'', token => ''short'')'),
	('SELECT tokenstore.token_make(''dup'', token => ''duplicate-token-1'')'),
	('SELECT tokenstore.token_make(''dup'', token => ''duplicate-token-1'')'),
	('SELECT tokenstore.token_delete_id(''xyz'')'),
	('SELECT tokenstore.token_make(''err'', ttl => ''8000 years'')'),
	('SELECT tokenstore.token_make(''err'', idle_timeout => ''72000001 hours'')'),
	('SELECT tokenstore.token_rotate(''whatever-token-1'', grace => ''106751000 days'')'),
	('SELECT tokenstore.token_save(''short'', NULL, NULL, NULL)'),
	('SELECT tokenstore.token_save(NULL, NULL, NULL, NULL)'),
	('SELECT tokenstore.token_save(''session-id-12345678'', NULL, NULL, ''10000-01-01'')'),
	('SELECT tokenstore.token_save(''session-id-12345678'', NULL, NULL, NULL, ''-1 s'')'),
	('SELECT tokenstore.token_rotate(''whatever-token-1'', new_token => ''short'')'),
	('SET tokenstore.default_ttl = ''thirty days'''),
	('SET tokenstore.default_ttl = -1'),
	('SET tokenstore.default_ttl = ''70 years'''),
	('SET tokenstore.default_idle_timeout = ''3000000000''')
) AS s(stmt);

-- nothing was made for the failed calls
SELECT count(*) AS err_rows FROM tokenstore.token WHERE user_id = 'err';
SELECT tokenstore.token_delete_user('dup');
