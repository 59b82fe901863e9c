-- Token introspection (issue 19): the resource servers, OAuth clients of their own, that may
-- ask POST /oauth/introspect (RFC 7662) whether an access token stands and whom it speaks for.
--
-- A resource server belongs to one organization and learns only about its members' tokens;
-- one without an organization (org_id NULL, created by an operator) may ask about any. Its
-- client secret (prism_cs_...) is kept only as its SHA-256, as refresh tokens are. Nothing
-- existing changes: the new table starts empty.
CREATE TABLE resource_servers (
    -- The client_id it authenticates with.
    id            TEXT PRIMARY KEY,
    org_id        TEXT REFERENCES organizations (id),
    name          TEXT NOT NULL,
    description   TEXT,
    secret_hash   BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    -- When its secret was last set (created or rotated).
    secret_set_at BIGINT NOT NULL
);
-- Names are unique per organization, and among the instance-wide ones.
CREATE UNIQUE INDEX resource_servers_name ON resource_servers (COALESCE(org_id, ''), name);
