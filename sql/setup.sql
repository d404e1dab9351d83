-- Install the extension, and a helper that shows the SQLSTATE a statement
-- raises (messages are shown by the other tests; this pins the codes).
CREATE EXTENSION tokenstore;
SELECT e.extname, e.extversion, n.nspname AS schema
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'tokenstore';

CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END $$;

-- The objects the extension owns (from 17 on, the row and array types of
-- its tables and views are listed as members too: left out here).
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tokenstore')
   AND deptype = 'e' AND classid <> 'pg_type'::regclass
 ORDER BY 1;
