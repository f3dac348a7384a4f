-- Agent rooms belong to an account: one room per account and pair of agents (ids
-- sorted), and only the owner is invited by `!pair`. Rooms opened before had one room
-- per pair for everyone; they keep working as agent rooms under the owner '' (nobody),
-- and nobody is invited into them any more.
CREATE TABLE agent_rooms_owned (
    room_id          TEXT NOT NULL UNIQUE,
    owner_account_id TEXT NOT NULL,
    agent_a_id       TEXT NOT NULL,
    agent_b_id       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (owner_account_id, agent_a_id, agent_b_id)
);
INSERT INTO agent_rooms_owned (room_id, owner_account_id, agent_a_id, agent_b_id, created_at)
    SELECT room_id, '', agent_a_id, agent_b_id, created_at FROM agent_rooms;
DROP TABLE agent_rooms;
ALTER TABLE agent_rooms_owned RENAME TO agent_rooms;
