-- Whether a task is a dry run, so the service's totals (`/metrics`) count
-- what was copied and deleted, not what dry runs would have. Tasks so far
-- are read from their spec, stored as compact JSON by the service, in
-- which the key can appear only as a key (quotes in values are escaped).
ALTER TABLE tasks ADD COLUMN dry_run BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET dry_run = 1 WHERE spec LIKE '%"dry_run":true%';
