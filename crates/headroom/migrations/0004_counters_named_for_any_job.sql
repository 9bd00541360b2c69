-- The counters of a task serve copies and purges alike, so their columns
-- say what they count for any job: items listed (objects, or files
-- scanned), done (copied, or deleted), skipped (up to date, or kept),
-- failed, and the bytes of those done. The API shows them under each
-- job's own words.
ALTER TABLE tasks RENAME COLUMN objects_copied TO items_done;
ALTER TABLE tasks RENAME COLUMN bytes_copied TO bytes_done;
ALTER TABLE tasks RENAME COLUMN objects_listed TO items_listed;
ALTER TABLE tasks RENAME COLUMN objects_skipped TO items_skipped;
ALTER TABLE tasks RENAME COLUMN objects_failed TO items_failed;
ALTER TABLE tasks RENAME COLUMN attempt_objects_copied TO attempt_items_done;
ALTER TABLE tasks RENAME COLUMN attempt_bytes_copied TO attempt_bytes_done;
