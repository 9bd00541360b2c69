-- Lists are newest first, with or without a status: both orders come
-- straight from an index, so a page never sorts the whole history.
DROP INDEX tasks_by_status;
CREATE INDEX tasks_by_status ON tasks (status, created_at, id);
CREATE INDEX tasks_by_created ON tasks (created_at, id);
