-- PostgreSQL twin of migrations/sqlite/0011_trust_policies.sql.
-- Keyless CI (issue 18): trust policies that exchange a pipeline's OIDC token for an access
-- token of one of the organization's service accounts, and the OIDC tokens already exchanged.
--
-- Each exchange starts a session of the policy's service account: a refresh_tokens row whose
-- secret is never issued, tagged with the policy (trust_policy_id) and expiring with its access
-- token. The access token names that session, so revoking one job's token ends that job only,
-- and disabling, deleting or rewriting the policy revokes all its sessions in one statement:
-- every access token it issued ends at once, on every replica, through the same standing check
-- as any other session. Nothing existing changes: the new tables start empty and the new
-- column is NULL on every existing row.
CREATE TABLE trust_policies (
    id                     TEXT PRIMARY KEY,
    org_id                 TEXT NOT NULL REFERENCES organizations (id),
    name                   TEXT NOT NULL,
    description            TEXT,
    issuer                 TEXT NOT NULL,
    audience               TEXT NOT NULL,
    -- JSON: [{"claim": ..., "match": "exact" | "glob", "value": ...}, ...]
    conditions             TEXT NOT NULL,
    service_account_id     TEXT NOT NULL REFERENCES users (id),
    -- Space-separated API scopes ('' : the service account's full role).
    scopes                 TEXT NOT NULL,
    access_token_ttl_secs  BIGINT NOT NULL,
    max_token_age_secs     BIGINT NOT NULL,
    enabled                BOOLEAN NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    -- The last exchange (ms), written with it.
    last_used_at           BIGINT,
    UNIQUE (org_id, name)
);
CREATE INDEX trust_policies_issuer ON trust_policies (issuer) WHERE enabled;
CREATE INDEX trust_policies_service_account ON trust_policies (service_account_id);

ALTER TABLE refresh_tokens ADD COLUMN trust_policy_id TEXT;
CREATE INDEX refresh_tokens_trust_policy ON refresh_tokens (trust_policy_id)
    WHERE trust_policy_id IS NOT NULL AND revoked_at IS NULL;

-- Each OIDC token is exchanged once (replay protection shared by every replica): its issuer's
-- jti, or the token's SHA-256 when it has none, kept until the token expires.
CREATE TABLE oidc_token_uses (
    token_key   TEXT PRIMARY KEY,
    issuer      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX oidc_token_uses_expires ON oidc_token_uses (expires_at);
