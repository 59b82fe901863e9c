-- The device authorization grant (RFC 8628): a machine without a browser gets a device code
-- to poll with and a short user code a person approves on any device. Only hashes of both
-- codes are stored.

CREATE TABLE device_codes (
    device_code_hash  BLOB PRIMARY KEY,
    user_code_hash    BLOB NOT NULL UNIQUE,
    client_id         TEXT NOT NULL,
    scope             TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    interval_secs     INTEGER NOT NULL,
    last_polled_at    INTEGER,
    -- pending, approved, denied or redeemed
    status            TEXT NOT NULL,
    user_id           TEXT REFERENCES users (id)
);

CREATE INDEX device_codes_expires ON device_codes (expires_at);
