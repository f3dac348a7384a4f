-- Agent rooms belong to an account: one room per account and pair of agents (ids
-- sorted), and only the owner is invited by `!pair`. Rooms opened before had one room
-- per pair for everyone; they keep working as agent rooms under the owner '' (nobody),
-- and nobody is invited into them any more.
ALTER TABLE agent_rooms ADD COLUMN owner_account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agent_rooms DROP CONSTRAINT agent_rooms_pkey;
ALTER TABLE agent_rooms ADD PRIMARY KEY (owner_account_id, agent_a_id, agent_b_id);
