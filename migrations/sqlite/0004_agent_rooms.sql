-- Seed schema (agent-to-agent rooms): one room per pair of agents, ids sorted.
CREATE TABLE agent_rooms (
    room_id    TEXT NOT NULL UNIQUE,
    agent_a_id TEXT NOT NULL,
    agent_b_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_a_id, agent_b_id)
);
