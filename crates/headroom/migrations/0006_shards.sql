-- A task's work is cut into shards: ranges of the source's keys in key
-- order, (after_key, through_key], NULL meaning the first or the last key.
-- Replicas claim, renew (fenced by owner and attempt) and end shards, not
-- tasks, so one task runs on many replicas at once. A task starts as one
-- shard over every key; the replica that claims the last shard (the one
-- with no end) cuts it after a number of keys and queues the rest as the
-- next shard, so a listing is never held in memory or in one row.
CREATE TABLE shards (
    task_id TEXT NOT NULL,
    no BIGINT NOT NULL,
    after_key TEXT,
    through_key TEXT,
    -- queued | running | succeeded | failed | cancelled | interrupted
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- Totals over every attempt of the shard: a resumed attempt starts
    -- from its checkpoint's counts, so each key is counted once.
    items_listed BIGINT NOT NULL DEFAULT 0,
    items_done BIGINT NOT NULL DEFAULT 0,
    items_skipped BIGINT NOT NULL DEFAULT 0,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    -- The current (or last) attempt.
    items_failed BIGINT NOT NULL DEFAULT 0,
    attempt_items_listed BIGINT NOT NULL DEFAULT 0,
    attempt_items_done BIGINT NOT NULL DEFAULT 0,
    attempt_bytes_done BIGINT NOT NULL DEFAULT 0,
    -- The last key of the shard's completed prefix (every key up to it is
    -- copied or up to date), and those keys' counts.
    checkpoint_key TEXT,
    checkpoint_items_listed BIGINT NOT NULL DEFAULT 0,
    checkpoint_items_done BIGINT NOT NULL DEFAULT 0,
    checkpoint_items_skipped BIGINT NOT NULL DEFAULT 0,
    checkpoint_bytes_done BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    started_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, no)
);
CREATE INDEX shards_by_status ON shards (status, lease_expires_at);

-- Every task so far becomes its own single shard, with its counters,
-- checkpoint and lease.
INSERT INTO shards (task_id, no, status, attempts, items_done, bytes_done, items_listed,
    items_skipped, items_failed, attempt_items_listed, attempt_items_done, attempt_bytes_done,
    checkpoint_key, error, lease_owner, lease_expires_at, started_at, updated_at)
SELECT id, 0, status, attempts, items_done, bytes_done, items_listed,
    items_skipped, items_failed, items_listed, attempt_items_done, attempt_bytes_done,
    checkpoint_key, error, lease_owner, lease_expires_at, started_at, updated_at
FROM tasks;

-- A task's counters are the sums of its shards' (one aggregate), its
-- leases are its shards'.
DROP INDEX tasks_by_lease;
ALTER TABLE tasks DROP COLUMN items_done;
ALTER TABLE tasks DROP COLUMN bytes_done;
ALTER TABLE tasks DROP COLUMN items_listed;
ALTER TABLE tasks DROP COLUMN items_skipped;
ALTER TABLE tasks DROP COLUMN items_failed;
ALTER TABLE tasks DROP COLUMN attempt_items_done;
ALTER TABLE tasks DROP COLUMN attempt_bytes_done;
ALTER TABLE tasks DROP COLUMN checkpoint_key;
ALTER TABLE tasks DROP COLUMN lease_owner;
ALTER TABLE tasks DROP COLUMN lease_expires_at;
-- A task's attempts are its shards' (the most any took).
ALTER TABLE tasks DROP COLUMN attempts;
