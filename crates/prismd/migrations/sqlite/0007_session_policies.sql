-- Session policies of an organization (issue 7), both off (NULL) by default for parity with
-- Prismatic: a refresh token unused for longer than refresh_idle_expiry_secs, or older than
-- refresh_max_age_secs, is refused like a revoked one. Measured from each token's created_at
-- and last_used_at, so a policy also applies to tokens that existed before it was set.
ALTER TABLE organizations ADD COLUMN refresh_idle_expiry_secs BIGINT;
ALTER TABLE organizations ADD COLUMN refresh_max_age_secs BIGINT;
