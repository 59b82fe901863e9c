-- Profile fields the GraphQL API exposes, and invitations: single-use, expiring links where a
-- user created without a password sets one. Only hashes of invitation tokens are stored.
-- PostgreSQL twin of migrations/sqlite/0003_profiles_and_invitations.sql.

ALTER TABLE users ADD COLUMN phone TEXT;
ALTER TABLE users ADD COLUMN external_id TEXT;
ALTER TABLE users ADD COLUMN dark_mode BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN dark_mode_sync_with_os BOOLEAN NOT NULL DEFAULT TRUE;

CREATE INDEX users_org_created ON users (org_id, created_at, id);

CREATE TABLE invitations (
    token_hash  BYTEA PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE INDEX invitations_user ON invitations (user_id);
CREATE INDEX invitations_expires ON invitations (expires_at);
