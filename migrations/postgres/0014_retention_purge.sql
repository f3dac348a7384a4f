-- Whether the retention job may also purge the homeserver's copy of a room: only when
-- the room's policy was set by an admin (or the operator, through the admin API).
-- Policies set before were set by anyone with the room's power; the homeserver keeps
-- their rooms' history until an admin sets the policy again.
ALTER TABLE room_retention_policies ADD COLUMN purge_homeserver BIGINT NOT NULL DEFAULT 0;
UPDATE room_retention_policies SET purge_homeserver = 1 WHERE room_id = '*';
