-- One sign-in identity per person, a member (a `users` row) per organization (issue 16).
-- PostgreSQL twin of migrations/sqlite/0009_identities.sql, which says why.

CREATE TABLE identities (
    id              TEXT PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    password_hash   TEXT,
    email_verified  BOOLEAN NOT NULL DEFAULT FALSE,
    invited_by_org  TEXT REFERENCES organizations (id),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

ALTER TABLE users ADD COLUMN identity_id TEXT REFERENCES identities (id);
ALTER TABLE users ADD COLUMN joined_at BIGINT;

CREATE TABLE identity_upgrade_notices (
    email          TEXT PRIMARY KEY,
    organizations  BIGINT NOT NULL,
    passwords      BIGINT NOT NULL
);

INSERT INTO identity_upgrade_notices (email, organizations, passwords)
SELECT email, COUNT(*), COUNT(password_hash)
FROM users WHERE removed_at IS NULL
GROUP BY email HAVING COUNT(*) > 1 AND COUNT(password_hash) > 0;

INSERT INTO identities (id, email, password_hash, email_verified, created_at, updated_at)
SELECT gen_random_uuid()::text, email,
       CASE WHEN COUNT(*) = 1 THEN MAX(password_hash) END,
       FALSE, MIN(created_at), MAX(updated_at)
FROM users WHERE removed_at IS NULL
GROUP BY email;

UPDATE users SET identity_id = i.id FROM identities i
WHERE i.email = users.email AND users.removed_at IS NULL;
UPDATE users SET joined_at = created_at;
UPDATE users SET password_hash = NULL;

CREATE INDEX users_identity ON users (identity_id);
CREATE UNIQUE INDEX users_active_identity_org ON users (org_id, identity_id) WHERE removed_at IS NULL;

UPDATE invitations SET used_at = (EXTRACT(EPOCH FROM now()) * 1000)::bigint
WHERE used_at IS NULL AND user_id IN (
    SELECT u.id FROM users u WHERE u.email IN (
        SELECT email FROM users WHERE removed_at IS NULL GROUP BY email HAVING COUNT(*) > 1));
ALTER TABLE invitations ADD COLUMN delivery TEXT NOT NULL DEFAULT 'handed';

CREATE TABLE browser_sessions_v2 (
    id_hash       BYTEA PRIMARY KEY,
    identity_id   TEXT NOT NULL REFERENCES identities (id),
    only_user_id  TEXT REFERENCES users (id),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
INSERT INTO browser_sessions_v2 (id_hash, identity_id, only_user_id, created_at, expires_at)
SELECT b.id_hash, u.identity_id, b.user_id, b.created_at, b.expires_at
FROM browser_sessions b JOIN users u ON u.id = b.user_id
WHERE u.identity_id IS NOT NULL AND u.removed_at IS NULL;
DROP TABLE browser_sessions;
ALTER TABLE browser_sessions_v2 RENAME TO browser_sessions;
ALTER INDEX browser_sessions_v2_pkey RENAME TO browser_sessions_pkey;
CREATE INDEX browser_sessions_expires ON browser_sessions (expires_at);
CREATE INDEX browser_sessions_identity ON browser_sessions (identity_id);

-- A refresh token minted before this upgrade was minted for one user, by that user's own
-- password or an operator: it stays with that member. A refresh with `tenant_id` moves only
-- tokens minted since, when the person signed in as their identity.
ALTER TABLE refresh_tokens ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE refresh_tokens SET pinned = TRUE;

CREATE TABLE password_resets (
    token_hash   BYTEA PRIMARY KEY,
    identity_id  TEXT NOT NULL REFERENCES identities (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX password_resets_identity ON password_resets (identity_id);
CREATE INDEX password_resets_expires ON password_resets (expires_at);
CREATE INDEX password_resets_used ON password_resets (used_at) WHERE used_at IS NOT NULL;
