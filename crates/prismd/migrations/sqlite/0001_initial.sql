-- The first schema: organizations, users, refresh tokens (sessions), signing keys, audit events.
-- Timestamps are integer milliseconds since the Unix epoch, passed in from Rust, so the same
-- statements run on SQLite and PostgreSQL.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tenant_id   TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations (id),
    email          TEXT NOT NULL,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL,
    password_hash  TEXT,
    -- Bumped by revoke-all: every refresh token and access token carries the epoch it was
    -- issued under, and only the current epoch is honoured. One write revokes everything.
    token_epoch    INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    removed_at     INTEGER
);

-- A removed account keeps its row (tokens and audit events point at it); the address can be
-- used again by a new account.
CREATE UNIQUE INDEX users_active_email ON users (org_id, email) WHERE removed_at IS NULL;

CREATE TABLE refresh_tokens (
    id              TEXT PRIMARY KEY,
    token_hash      BLOB NOT NULL UNIQUE,
    user_id         TEXT NOT NULL REFERENCES users (id),
    user_epoch      INTEGER NOT NULL,
    client_id       TEXT NOT NULL,
    name            TEXT,
    scope           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    last_used_addr  TEXT,
    revoked_at      INTEGER
);

CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    algorithm    TEXT NOT NULL,
    private_key  BLOB NOT NULL,
    public_key   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER
);

CREATE TABLE audit_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    at               INTEGER NOT NULL,
    action           TEXT NOT NULL,
    actor            TEXT NOT NULL,
    org_id           TEXT,
    subject_user_id  TEXT,
    address          TEXT,
    user_agent       TEXT,
    detail           TEXT
);

CREATE INDEX audit_events_org_at ON audit_events (org_id, at);
CREATE INDEX audit_events_at ON audit_events (at);
