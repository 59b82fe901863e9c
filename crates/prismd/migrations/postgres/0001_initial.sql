-- The first schema: organizations, users, refresh tokens (sessions), signing keys, audit events.
-- PostgreSQL twin of migrations/sqlite/0001_initial.sql: the same tables, columns and indexes.
-- Timestamps are BIGINT milliseconds since the Unix epoch, passed in from Rust (no now()), so
-- the Rust record types read the same values from both backends.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tenant_id   TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
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
    token_epoch    BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    removed_at     BIGINT
);

-- A removed account keeps its row (tokens and audit events point at it); the address can be
-- used again by a new account.
CREATE UNIQUE INDEX users_active_email ON users (org_id, email) WHERE removed_at IS NULL;

CREATE TABLE refresh_tokens (
    id              TEXT PRIMARY KEY,
    token_hash      BYTEA NOT NULL UNIQUE,
    user_id         TEXT NOT NULL REFERENCES users (id),
    user_epoch      BIGINT NOT NULL,
    client_id       TEXT NOT NULL,
    name            TEXT,
    scope           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    last_used_addr  TEXT,
    revoked_at      BIGINT
);

CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    algorithm    TEXT NOT NULL,
    private_key  BYTEA NOT NULL,
    public_key   BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);

CREATE TABLE audit_events (
    -- Ids only grow, like SQLite's AUTOINCREMENT: "newest first" orders by id.
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               BIGINT NOT NULL,
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
