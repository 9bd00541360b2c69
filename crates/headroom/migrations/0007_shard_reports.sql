-- What a finished shard reports besides its counters, as JSON: a sync's
-- deletions, a check's differences (sync and check tasks are one shard).
ALTER TABLE shards ADD COLUMN report TEXT;
