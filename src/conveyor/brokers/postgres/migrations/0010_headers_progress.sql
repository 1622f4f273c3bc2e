-- Job headers (docs/hooks.md): a small JSON object of str to str stored with the job, NULL
-- without any (which costs a row no bytes beyond its null bitmap). Written by enqueue, read by
-- get and by the reservation (joined by id to what the reserve function returns).
ALTER TABLE {schema}.jobs ADD COLUMN headers jsonb;
-- The latest progress a running job reported (docs/hooks.md): [value, message], NULL for none.
ALTER TABLE {schema}.jobs ADD COLUMN progress jsonb;
