-- Service accounts and named, scoped, expiring tokens (issue 17).
-- PostgreSQL twin of migrations/sqlite/0010_service_accounts_and_scoped_tokens.sql.
--
-- A service account is a member of an organization that is not a person: a `users` row with
-- kind 'service', no identity, no email, no password, a role that is never Owner. Reusing the
-- users table keeps every hot path (a refresh grant, the principal behind an access token, the
-- standing cache, revoke-all, removal) exactly as it is for people.
--
-- Every existing row is a person; every existing refresh token stays unnamed (names were not
-- unique before), unscoped (its role's full access) and never expires, so nothing that worked
-- before this upgrade changes.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'person';
ALTER TABLE users ADD COLUMN description TEXT;

-- One email per person per organization; service accounts have no email (''), and one name
-- per live service account per organization instead.
DROP INDEX users_active_email;
CREATE UNIQUE INDEX users_active_email ON users (org_id, email)
    WHERE removed_at IS NULL AND kind = 'person';
CREATE UNIQUE INDEX users_active_service_name ON users (org_id, name)
    WHERE removed_at IS NULL AND kind = 'service';

-- A token minted with a name by its principal or a manager (`createToken`): its name is unique
-- among the principal's live named tokens. `expires_at` (ms; NULL: never) is refused like a
-- revocation once passed. `created_by` is the member who minted it (the one mailed before it
-- expires when it belongs to a service account); `expiry_notified_at` is when that mail went.
ALTER TABLE refresh_tokens ADD COLUMN named BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE refresh_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN created_by TEXT;
ALTER TABLE refresh_tokens ADD COLUMN expiry_notified_at BIGINT;
CREATE UNIQUE INDEX refresh_tokens_live_name ON refresh_tokens (user_id, name)
    WHERE named AND revoked_at IS NULL;
CREATE INDEX refresh_tokens_expiring ON refresh_tokens (expires_at)
    WHERE expires_at IS NOT NULL AND expiry_notified_at IS NULL AND revoked_at IS NULL;
-- The cleanup deletes tokens expired longer ago than the dead-token retention.
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at) WHERE expires_at IS NOT NULL;

-- The longest a minted token may live in this organization (seconds; NULL: no maximum).
ALTER TABLE organizations ADD COLUMN max_token_lifetime_secs BIGINT;

-- Scopes an organization declares for its own APIs (e.g. deploy:prod).
CREATE TABLE org_scopes (
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    name         TEXT NOT NULL,
    description  TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

-- Who may hold an organization's scope: a role ('role:<key>') or a service account
-- ('user:<id>').
CREATE TABLE scope_grants (
    org_id      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    grantee     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, scope, grantee),
    FOREIGN KEY (org_id, scope) REFERENCES org_scopes (org_id, name) ON DELETE CASCADE
);
