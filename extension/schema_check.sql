/*
 * Schema tokenstore must be the extension's own: owned by the extension's
 * owner, with no other role allowed to create objects in it, and holding
 * nothing but the extension's objects (and what those own: indexes, row and
 * array types).  A schema that another role made first, or could write to,
 * could hold look-alike functions and operators that our statements would
 * run, or let that role add some later.  PostgreSQL creates the schema when
 * it is missing; a pre-existing one is checked here, by CREATE EXTENSION and
 * by the update from 1.0 (whose install script did not check).
 *
 * One piece of SQL: the Makefile puts it in place of the line @SCHEMA_CHECK@
 * of every script that installs or takes over schema tokenstore.
 */
DO $check$
DECLARE
	ext_oid oid;
	ext_owner oid;
	updating boolean;
	owner_ok boolean;
	foreign_acl boolean;
	objects bigint;
BEGIN
	SELECT e.oid, e.extowner INTO ext_oid, ext_owner
	  FROM pg_catalog.pg_extension e
	 WHERE e.extname OPERATOR(pg_catalog.=) 'tokenstore';
	-- an update finds the extension's objects; an install, none yet
	updating := EXISTS (SELECT FROM pg_catalog.pg_depend d
						 WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
						   AND d.refobjid OPERATOR(pg_catalog.=) ext_oid
						   AND d.deptype OPERATOR(pg_catalog.=) 'e');
	SELECT n.nspowner OPERATOR(pg_catalog.=) ext_owner,
		   EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) a
					WHERE a.grantee OPERATOR(pg_catalog.<>) n.nspowner
					  AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE')
	  INTO owner_ok, foreign_acl
	  FROM pg_catalog.pg_namespace n
	 WHERE n.nspname OPERATOR(pg_catalog.=) 'tokenstore';
	-- every object in a schema depends on it (the extension itself too), but
	-- those that belong to another object (indexes, row and array types)
	SELECT pg_catalog.count(*) INTO objects
	  FROM pg_catalog.pg_depend o
	 WHERE o.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
	   AND o.refobjid OPERATOR(pg_catalog.=) 'tokenstore'::pg_catalog.regnamespace
	   AND NOT (o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
				AND o.objid OPERATOR(pg_catalog.=) ext_oid)
	   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
						WHERE d.classid OPERATOR(pg_catalog.=) o.classid
						  AND d.objid OPERATOR(pg_catalog.=) o.objid
						  AND (d.deptype OPERATOR(pg_catalog.=) 'i'
							   OR d.deptype OPERATOR(pg_catalog.=) 'a'
							   OR (d.deptype OPERATOR(pg_catalog.=) 'e'
								   AND d.refobjid OPERATOR(pg_catalog.=) ext_oid)));
	IF NOT owner_ok OR foreign_acl OR objects OPERATOR(pg_catalog.>) 0 THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = CASE WHEN updating
				THEN 'tokenstore cannot be updated: schema tokenstore is not its own'
				ELSE 'tokenstore must be installed into a schema tokenstore of its own' END,
			DETAIL = pg_catalog.format('Schema tokenstore %s.',
				CASE WHEN NOT owner_ok THEN 'belongs to another role than the extension''s owner'
					 WHEN foreign_acl THEN 'lets other roles create objects in it'
					 ELSE 'holds objects that are not tokenstore''s (' OPERATOR(pg_catalog.||)
						  objects OPERATOR(pg_catalog.||) ')' END),
			HINT = CASE WHEN updating
				THEN 'Another role may have put look-alike functions in it: check what it holds and who owns them, make the extension''s owner the schema''s owner, revoke CREATE on it from other roles and drop what is not tokenstore''s, then update again.'
				ELSE 'Drop or rename that schema (after checking what it holds), then run CREATE EXTENSION tokenstore again: it creates the schema itself.' END;
	END IF;
END
$check$;
