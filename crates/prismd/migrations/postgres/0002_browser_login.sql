-- Browser login: single-use authorization codes (RFC 6749 §4.1 with PKCE) and browser
-- sessions. Only hashes of codes and session cookies are stored.
-- PostgreSQL twin of migrations/sqlite/0002_browser_login.sql.

CREATE TABLE authorization_codes (
    code_hash         BYTEA PRIMARY KEY,
    client_id         TEXT NOT NULL,
    redirect_uri      TEXT NOT NULL,
    code_challenge    TEXT NOT NULL,
    scope             TEXT NOT NULL,
    nonce             TEXT,
    user_id           TEXT NOT NULL REFERENCES users (id),
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    used_at           BIGINT,
    -- Set when a used code is presented again; the refresh token issued from it is revoked.
    replayed_at       BIGINT,
    refresh_token_id  TEXT
);

CREATE INDEX authorization_codes_expires ON authorization_codes (expires_at);

CREATE TABLE browser_sessions (
    id_hash     BYTEA PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX browser_sessions_expires ON browser_sessions (expires_at);
CREATE INDEX browser_sessions_user ON browser_sessions (user_id);
