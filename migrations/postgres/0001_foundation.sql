-- PostgreSQL dialect of migrations/sqlite. Times are unix milliseconds (BIGINT); ids and JSON are TEXT, so the same queries run
-- on SQLite and PostgreSQL through sqlx's Any driver.

CREATE TABLE accounts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT,
    created_at   BIGINT NOT NULL
);

-- Seed schema (identity mapping).
CREATE TABLE channel_identities (
    channel_name    TEXT NOT NULL,
    channel_user_id TEXT NOT NULL,
    mosaic_user_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    linked_at       BIGINT NOT NULL,
    PRIMARY KEY (channel_name, channel_user_id)
);
CREATE INDEX channel_identities_account ON channel_identities (mosaic_user_id);

-- Only the SHA-256 of a token is kept.
CREATE TABLE link_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    used_by    TEXT
);

CREATE TABLE link_failures (
    seq          BIGSERIAL PRIMARY KEY,
    sender       TEXT NOT NULL,
    attempted_at BIGINT NOT NULL
);
CREATE INDEX link_failures_sender ON link_failures (sender, attempted_at);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    owner_account_id TEXT REFERENCES accounts(id) ON DELETE SET NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    archived_at      BIGINT
);

-- Seed schema (room <-> conversation).
CREATE TABLE conversation_matrix_rooms (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    room_id         TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL
);

-- Append-only: rows are inserted, never updated.
CREATE TABLE messages (
    seq                BIGSERIAL PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    conversation_id    TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    channel            TEXT NOT NULL,
    channel_id         TEXT NOT NULL,
    channel_message_id TEXT,
    sender_id          TEXT NOT NULL,
    sender_type        TEXT NOT NULL,
    content_type       TEXT NOT NULL,
    thread_id          TEXT,
    reply_to_id        TEXT,
    body               TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    UNIQUE (channel, channel_message_id)
);
CREATE INDEX messages_conversation ON messages (conversation_id, seq);

-- Where each message landed on each surface (for replies, edits and threads).
CREATE TABLE message_refs (
    channel    TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    native_id  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (channel, channel_id, native_id)
);
CREATE INDEX message_refs_message ON message_refs (message_id, channel);

-- Homeserver transactions, keyed by the homeserver's txnId.
CREATE TABLE txn_inbox (
    txn_id      TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    event_count BIGINT NOT NULL
);

CREATE TABLE inbox_events (
    seq          BIGSERIAL PRIMARY KEY,
    txn_id       TEXT NOT NULL REFERENCES txn_inbox(txn_id),
    event        TEXT NOT NULL,
    processed_at BIGINT
);
CREATE INDEX inbox_events_pending ON inbox_events (processed_at, seq);

-- Outgoing work (sends to a surface, agent turns), one ordered queue per worker.
CREATE TABLE outbox (
    seq        BIGSERIAL PRIMARY KEY,
    queue      TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    not_before BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    done_at    BIGINT,
    failed_at  BIGINT
);
CREATE INDEX outbox_pending ON outbox (queue, done_at, failed_at, seq);

-- Membership as seen through pushed events and joined_members.
CREATE TABLE room_members (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Ghost users this service has registered on the homeserver.
CREATE TABLE ghosts (
    user_id       TEXT PRIMARY KEY,
    display_name  TEXT,
    registered_at BIGINT NOT NULL
);
