-- Each account's personal Space; its conversation rooms are the Space's children.
CREATE TABLE personal_spaces (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    space_id   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
