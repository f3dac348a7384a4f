-- Per-conversation settings changed with chat commands.
CREATE TABLE room_settings (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    default_agent   TEXT,
    mention_only    BIGINT,
    answer_unlinked BIGINT,
    updated_at      BIGINT NOT NULL
);

-- Tokens used per agent turn, as the model endpoint reported them.
CREATE TABLE agent_usage (
    seq             BIGSERIAL PRIMARY KEY,
    turn_key        TEXT NOT NULL UNIQUE,
    agent_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX agent_usage_conversation ON agent_usage (conversation_id, agent_id);
