-- Failed logins and refreshes, counted per key (`login:acct:<sha-256 of the email>`,
-- `login:addr:<address>`, `refresh:addr:<address>`, `device:addr:<address>`), shared by every
-- replica on the database. A row exists only after a failure; a success deletes it.
CREATE TABLE attempt_counters (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    -- The first failure of the current window, in ms since the epoch.
    window_start BIGINT NOT NULL,
    -- Refused until then (ms since the epoch); 0 when not locked.
    locked_until BIGINT NOT NULL
);

-- Background cleanup finds counters whose window and lock have long passed (such a row counts
-- the same as no row) through this index.
CREATE INDEX attempt_counters_window ON attempt_counters (window_start);
