-- The service's totals (`/metrics`) count what was copied and deleted,
-- so they leave out dry runs, whose counts are what they would have done.
-- Earlier tasks are marked from their spec, which the service stores as
-- compact JSON: there the words can appear only as a key (quotes inside
-- values are escaped).
ALTER TABLE tasks ADD COLUMN dry_run BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET dry_run = 1 WHERE spec LIKE '%"dry_run":true%';
-- A sync's deletions (its `items_done` are its copies), written when it
-- ends; a purge's deletions are its `items_done`.
ALTER TABLE shards ADD COLUMN items_deleted BIGINT NOT NULL DEFAULT 0;
