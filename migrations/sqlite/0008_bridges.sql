-- Chats of other surfaces (Discord channels, Telegram chats) and the conversation each
-- belongs to. kind 'bridge': bridged by an admin, messages flow both ways; kind
-- 'direct': a chat that talks to the bot only (commands such as /link), never bridged.
CREATE TABLE bridges (
    channel         TEXT NOT NULL,
    channel_id      TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    -- Redact the bridged copies when a message is deleted on the surface.
    mirror_deletions BIGINT NOT NULL DEFAULT 1,
    created_by      TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (channel, channel_id)
);
CREATE INDEX bridges_conversation ON bridges (conversation_id, kind);
