-- A cancel is recorded before it takes effect: a service that dies before
-- the task's end is written does not run it again at the next start.
ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
-- /readyz proves the database takes writes by updating this one row.
CREATE TABLE readiness (id INTEGER PRIMARY KEY, checked_at BIGINT NOT NULL);
INSERT INTO readiness (id, checked_at) VALUES (1, 0);
