-- CREATE EXTENSION installs only into a schema tokenstore of its own: one
-- that another role created first (and could have filled with look-alike
-- functions, run as the superuser installing) is refused, and nothing of it
-- runs.  Every built-in the install script calls is qualified.  The same
-- check (extension/schema_check.sql) guards the 1.0 script and the update
-- from 1.0.
\set SHOW_CONTEXT never
SELECT current_database() AS regress_db, current_user AS admin \gset
CREATE ROLE tokenstore_mallory LOGIN;
CREATE DATABASE tokenstore_install;
GRANT CREATE ON DATABASE tokenstore_install TO tokenstore_mallory;
\c tokenstore_install :admin
-- the trap: look-alikes of built-ins the install script calls, which would
-- make their caller's role a superuser
CREATE PROCEDURE public.lay_trap() LANGUAGE plpgsql AS $proc$
BEGIN
	CREATE SCHEMA tokenstore;
	CREATE FUNCTION tokenstore.convert_to(text, text) RETURNS bytea LANGUAGE sql
		AS $$ ALTER ROLE tokenstore_mallory SUPERUSER; SELECT '\x00'::bytea $$;
	CREATE FUNCTION tokenstore.sha256(bytea) RETURNS bytea LANGUAGE sql
		AS $$ ALTER ROLE tokenstore_mallory SUPERUSER; SELECT '\x00'::bytea $$;
END
$proc$;

-- a role with CREATE on the database lays it ...
\c tokenstore_install tokenstore_mallory
CALL public.lay_trap();
-- ... which the superuser's CREATE EXTENSION refuses
\c tokenstore_install :admin
CREATE EXTENSION tokenstore;
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'tokenstore_mallory';
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'tokenstore';
DROP SCHEMA tokenstore CASCADE;

-- an empty schema of the installing role's (as a restore creates it) is fine;
-- one that lets another role create objects is not
CREATE SCHEMA tokenstore;
GRANT CREATE ON SCHEMA tokenstore TO tokenstore_mallory;
CREATE EXTENSION tokenstore;
REVOKE CREATE ON SCHEMA tokenstore FROM tokenstore_mallory;
CREATE EXTENSION tokenstore;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'tokenstore';
-- nothing of it is PUBLIC's
SELECT count(*) AS public_grants
  FROM pg_class c CROSS JOIN aclexplode(c.relacl) a
 WHERE c.relnamespace = 'tokenstore'::regnamespace AND a.grantee = 0;
SELECT count(*) AS public_functions
  FROM pg_proc p
 WHERE p.pronamespace IN ('tokenstore'::regnamespace, 'tokenstore_internal'::regnamespace)
   AND has_function_privilege('public', p.oid, 'EXECUTE');
SELECT has_schema_privilege('public', 'tokenstore', 'USAGE') AS public_usage,
	   has_schema_privilege('public', 'tokenstore_internal', 'USAGE') AS public_internal;

DROP EXTENSION tokenstore;
DROP SCHEMA tokenstore;

-- version 1.0, kept for updates and still installable, refuses the trap
-- too (with its built-ins and operators qualified, it would not spring it)
\c tokenstore_install tokenstore_mallory
CALL public.lay_trap();
\c tokenstore_install :admin
CREATE EXTENSION tokenstore VERSION '1.0';
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'tokenstore_mallory';
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'tokenstore';
DROP SCHEMA tokenstore CASCADE;

-- the update from 1.0 checks again: a schema that another role came to own
-- or to write to since, or that holds a look-alike, is refused before the
-- update changes anything
CREATE EXTENSION tokenstore VERSION '1.0';
GRANT CREATE ON SCHEMA tokenstore TO tokenstore_mallory;
ALTER EXTENSION tokenstore UPDATE;
REVOKE CREATE ON SCHEMA tokenstore FROM tokenstore_mallory;
ALTER SCHEMA tokenstore OWNER TO tokenstore_mallory;
ALTER EXTENSION tokenstore UPDATE;
\c tokenstore_install tokenstore_mallory
CREATE FUNCTION tokenstore.token_check(varchar) RETURNS text LANGUAGE sql AS 'SELECT NULL';
\c tokenstore_install :admin
ALTER SCHEMA tokenstore OWNER TO :"admin";
ALTER EXTENSION tokenstore UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'tokenstore';
-- once the look-alike is gone, the update goes through
DROP FUNCTION tokenstore.token_check(varchar);
ALTER EXTENSION tokenstore UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'tokenstore')
	AS updated
  FROM pg_extension WHERE extname = 'tokenstore';
DROP EXTENSION tokenstore;

\c :regress_db :admin
DROP DATABASE tokenstore_install;
DROP ROLE tokenstore_mallory;
