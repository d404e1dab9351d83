-- Install the extension, and a helper that shows the SQLSTATE a statement
-- raises (messages are shown by the other tests; this pins the codes).
CREATE EXTENSION tokenstore;
\dx tokenstore

CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END $$;

-- The objects the extension owns.
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tokenstore')
   AND deptype = 'e'
 ORDER BY 1;
