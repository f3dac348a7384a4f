-- The newest Discord message id (a snowflake) handed to the hub per Discord channel, so
-- that after a restart or a gateway reconnect the adapter fetches what it missed
-- (GET /channels/{id}/messages?after=<last_message_id>).
CREATE TABLE discord_cursors (
    channel_id      TEXT PRIMARY KEY,
    last_message_id BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
