-- The service's totals (`/metrics`) count what was copied and deleted.
-- Whether a task is a dry run, whose counts are what it would have done:
-- tasks so far
-- are read from their spec, stored as compact JSON by the service, in
-- which the key can appear only as a key (quotes in values are escaped).
ALTER TABLE tasks ADD COLUMN dry_run BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET dry_run = 1 WHERE spec LIKE '%"dry_run":true%';
-- A sync's deletions (its `items_done` are its copies), written when it
-- ends; a purge's deletions are its `items_done`.
ALTER TABLE shards ADD COLUMN items_deleted BIGINT NOT NULL DEFAULT 0;
