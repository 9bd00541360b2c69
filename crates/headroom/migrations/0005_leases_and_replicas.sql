-- A running attempt is held by a lease: the replica that runs it and when
-- the lease expires unless renewed. Every write for the attempt checks
-- the owner and the attempt number (fencing), so a replica whose lease
-- was taken over cannot overwrite the newer attempt.
ALTER TABLE tasks ADD COLUMN lease_owner TEXT;
ALTER TABLE tasks ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX tasks_by_lease ON tasks (status, lease_expires_at);
-- Each replica of the service writes its row every second: the fleet.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    memory_budget BIGINT NOT NULL,
    memory_reserved BIGINT NOT NULL,
    tasks_running BIGINT NOT NULL,
    stopped_at BIGINT
);
-- The memory share a task asked for (NULL: the claiming replica's
-- default), so a replica claims only what its own governor has room for.
ALTER TABLE tasks ADD COLUMN memory_share BIGINT;
