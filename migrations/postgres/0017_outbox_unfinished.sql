-- The schedulers ask which queues have unfinished jobs at every wake-up. With the index
-- of every job ever queued by (queue, done_at, failed_at) beside the partial index of
-- the unfinished ones (0012), SQLite's planner answered from the full index, walking
-- every finished job kept for retention: a cost that grew with the days kept. The
-- partial index answers every question about unfinished jobs.
DROP INDEX outbox_pending;
