-- The inbox is read for its unfinished events, and for the rooms whose events wait for a
-- later try. The index of every event ever pushed by `processed_at` made SQLite's planner
-- walk all unfinished events for the second question at every read, which grows with the
-- backlog; the unfinished events have their own partial index (0012), and the waiting
-- ones now get theirs.
DROP INDEX inbox_events_pending;
CREATE INDEX inbox_events_waiting ON inbox_events (not_before, room_id) WHERE processed_at IS NULL AND failed_at IS NULL;
