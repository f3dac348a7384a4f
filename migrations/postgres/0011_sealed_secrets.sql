-- Secrets kept in the database (bridge tokens, model API keys), each sealed with
-- AES-256-GCM under the key in MOSAIC_AS_SECRET_KEY: `v1:<key id>:<base64 nonce+ciphertext>`.
-- The name is bound into the seal, so a value cannot be moved to another name.
CREATE TABLE sealed_secrets (
    name       TEXT PRIMARY KEY,
    sealed     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
