-- Seed schema (retention). room_id is a room id or '*' for every room of a type;
-- retention_days NULL keeps messages forever.
CREATE TABLE room_retention_policies (
    room_id        TEXT NOT NULL,
    retention_days BIGINT,
    applies_to     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (room_id, applies_to)
);
