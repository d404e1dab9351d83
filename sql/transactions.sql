-- Everything is transactional: what rolls back never happened.
BEGIN;
SELECT tokenstore.token_make('tx') AS rolled_back \gset
SELECT tokenstore.token_user(:'rolled_back') AS visible_inside;
ROLLBACK;
SELECT tokenstore.token_user(:'rolled_back') AS after_rollback;

BEGIN;
SELECT tokenstore.token_make('tx') AS kept \gset
SAVEPOINT s;
SELECT tokenstore.token_make('tx') AS in_savepoint \gset
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT tokenstore.token_user(:'kept') AS kept, tokenstore.token_user(:'in_savepoint') AS in_savepoint;

-- a revocation that rolls back revokes nothing
BEGIN;
SELECT tokenstore.token_delete(:'kept');
SELECT tokenstore.token_user(:'kept') AS inside;
ROLLBACK;
SELECT tokenstore.token_user(:'kept') AS kept;

-- a single-mode login that rolls back leaves the others in place
BEGIN;
SELECT tokenstore.token_make('tx', mode => 'single') AS single \gset
SELECT tokenstore.token_user(:'kept') AS inside;
ROLLBACK;
SELECT tokenstore.token_user(:'kept') AS kept, tokenstore.token_user(:'single') AS single;

-- a rotation that rolls back: the old token lives, the new never did
BEGIN;
SELECT tokenstore.token_rotate(:'kept') AS rotated \gset
ROLLBACK;
SELECT tokenstore.token_user(:'kept') AS kept, tokenstore.token_user(:'rotated') AS rotated;

-- an error inside a subtransaction (plpgsql EXCEPTION) undoes its make
DO $$
BEGIN
	PERFORM tokenstore.token_make('tx', token => 'subxact-token-00001');
	RAISE EXCEPTION 'fail';
EXCEPTION WHEN OTHERS THEN
	NULL;
END $$;
SELECT tokenstore.token_user('subxact-token-00001') AS made_in_failed_block;

-- REPEATABLE READ: checks and changes work within the transaction
BEGIN ISOLATION LEVEL REPEATABLE READ;
SET LOCAL tokenstore.touch_interval = 0;
SELECT tokenstore.token_make('tx') AS rr \gset
SELECT tokenstore.token_user(:'rr') AS rr_user, tokenstore.token_user(:'kept') AS kept;
SELECT tokenstore.token_delete(:'rr') AS rr_deleted;
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SET LOCAL tokenstore.touch_interval = 0;
SELECT tokenstore.token_user(:'kept') AS serializable_check;
COMMIT;

SELECT tokenstore.token_delete_user('tx');
