-- The device authorization grant (RFC 8628): a machine without a browser gets a device code
-- to poll with and a short user code a person approves on any device. Only hashes of both
-- codes are stored.
-- PostgreSQL twin of migrations/sqlite/0004_device_codes.sql.

CREATE TABLE device_codes (
    device_code_hash  BYTEA PRIMARY KEY,
    user_code_hash    BYTEA NOT NULL UNIQUE,
    client_id         TEXT NOT NULL,
    scope             TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    interval_secs     BIGINT NOT NULL,
    last_polled_at    BIGINT,
    -- pending, approved, denied or redeemed
    status            TEXT NOT NULL,
    user_id           TEXT REFERENCES users (id)
);

CREATE INDEX device_codes_expires ON device_codes (expires_at);
