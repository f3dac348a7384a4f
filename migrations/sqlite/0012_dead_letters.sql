-- Bounded retries and dead letters: failing work is retried with backoff, then set
-- aside (failed_at) with the reason, until an operator retries or drops it.
ALTER TABLE outbox ADD COLUMN dead_reason TEXT;
-- When the work first failed: it is given up after failing for too long.
ALTER TABLE outbox ADD COLUMN failing_since BIGINT;

-- Pushed events are handled in order per room: a room whose event cannot be handled
-- now waits (not_before) without holding up the other rooms.
ALTER TABLE inbox_events ADD COLUMN room_id TEXT NOT NULL DEFAULT '';
ALTER TABLE inbox_events ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbox_events ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbox_events ADD COLUMN last_error TEXT;
ALTER TABLE inbox_events ADD COLUMN failed_at BIGINT;
ALTER TABLE inbox_events ADD COLUMN failing_since BIGINT;
ALTER TABLE inbox_events ADD COLUMN dead_reason TEXT;
CREATE INDEX inbox_events_dead ON inbox_events (failed_at) WHERE failed_at IS NOT NULL;
CREATE INDEX outbox_dead ON outbox (failed_at) WHERE failed_at IS NOT NULL;

-- Unfinished work only: the lanes' and the inbox's reads stay small however much
-- finished work the tables keep.
CREATE INDEX outbox_unfinished ON outbox (queue, seq) WHERE done_at IS NULL AND failed_at IS NULL;
CREATE INDEX inbox_events_unfinished ON inbox_events (seq) WHERE processed_at IS NULL AND failed_at IS NULL;
