-- Tasks of `headroom serve`. One schema for SQLite and PostgreSQL: text
-- ids chosen by the service, integers as BIGINT, times as Unix
-- milliseconds, the job's options as JSON text.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    -- Runs so far, including a resumed one.
    attempts BIGINT NOT NULL DEFAULT 0,
    -- Totals over every attempt.
    objects_copied BIGINT NOT NULL DEFAULT 0,
    bytes_copied BIGINT NOT NULL DEFAULT 0,
    -- The current (or last) attempt.
    objects_listed BIGINT NOT NULL DEFAULT 0,
    objects_skipped BIGINT NOT NULL DEFAULT 0,
    objects_failed BIGINT NOT NULL DEFAULT 0,
    attempt_objects_copied BIGINT NOT NULL DEFAULT 0,
    attempt_bytes_copied BIGINT NOT NULL DEFAULT 0,
    -- The checkpoint: the last key of the completed prefix of the listing.
    checkpoint_key TEXT,
    error TEXT
);

CREATE INDEX tasks_by_status ON tasks (status, created_at);
