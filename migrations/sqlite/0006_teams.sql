CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (team_id, account_id)
);

-- Seed schema (team <-> Space).
CREATE TABLE team_matrix_spaces (
    team_id    TEXT PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
    space_id   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- A conversation is shared with at most one team.
CREATE TABLE conversation_shares (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    team_id         TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    shared_at       BIGINT NOT NULL
);

-- People invited to a room because of its share: unsharing removes only them.
CREATE TABLE share_invites (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
