-- One sign-in identity per person, a member (a `users` row) per organization (issue 16).
--
-- Before this, a password belonged to a per-organization user row keyed by an email any
-- organization's Admin could type, and a sign-in tried the password against every such row.
-- Now an identity is the person who signs in: a globally unique email, one password, whether
-- the email is verified. A member is that identity's user in one organization, with its role;
-- user ids, roles, refresh tokens and audit rows stay per member.
--
-- The upgrade keeps every user, token and audit row. No password becomes valid anywhere it was
-- not valid before: an identity keeps a password only when its email had exactly one active
-- user, so one organization's password never opens another. Emails with users in several
-- organizations start without a password; they are listed in identity_upgrade_notices, and
-- the server logs them until each has a password again (`prismd users set-password`, or a
-- reset link by email).

CREATE TABLE identities (
    id              TEXT PRIMARY KEY,
    -- Normalised (trimmed, lower case).
    email           TEXT NOT NULL UNIQUE,
    password_hash   TEXT,
    -- Set when a password was chosen through a link mailed to the address (an invitation or a
    -- reset): only then may the identity accept a membership another organization offers it.
    email_verified  BOOLEAN NOT NULL DEFAULT FALSE,
    -- Without SMTP, the organization whose Owners and Admins were handed this identity's
    -- first-password link (they created the identity). Cleared once a password is set.
    invited_by_org  TEXT REFERENCES organizations (id),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- A member's identity (NULL only for users removed before identities existed), and when it
-- joined: NULL while the membership waits for its identity to accept it.
ALTER TABLE users ADD COLUMN identity_id TEXT REFERENCES identities (id);
ALTER TABLE users ADD COLUMN joined_at INTEGER;

CREATE TABLE identity_upgrade_notices (
    email       TEXT PRIMARY KEY,
    -- How many organizations had an active user with this email, and how many of them a
    -- password.
    organizations  INTEGER NOT NULL,
    passwords      INTEGER NOT NULL
);

INSERT INTO identity_upgrade_notices (email, organizations, passwords)
SELECT email, COUNT(*), COUNT(password_hash)
FROM users WHERE removed_at IS NULL
GROUP BY email HAVING COUNT(*) > 1 AND COUNT(password_hash) > 0;

INSERT INTO identities (id, email, password_hash, email_verified, created_at, updated_at)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(2)) || '-'
             || hex(randomblob(2)) || '-' || hex(randomblob(6))),
       email,
       CASE WHEN COUNT(*) = 1 THEN MAX(password_hash) END,
       FALSE, MIN(created_at), MAX(updated_at)
FROM users WHERE removed_at IS NULL
GROUP BY email;

UPDATE users SET identity_id = (SELECT i.id FROM identities i WHERE i.email = users.email)
WHERE removed_at IS NULL;
UPDATE users SET joined_at = created_at;
-- Passwords live on identities now; the per-organization copies must never be read again.
UPDATE users SET password_hash = NULL;

CREATE INDEX users_identity ON users (identity_id);
CREATE UNIQUE INDEX users_active_identity_org ON users (org_id, identity_id) WHERE removed_at IS NULL;

-- An invitation of an email that now has users in several organizations could set the password
-- of an identity that reaches all of them: such links die here (an operator or a reset link
-- gives that identity its password).
UPDATE invitations SET used_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE used_at IS NULL AND user_id IN (
    SELECT u.id FROM users u WHERE u.email IN (
        SELECT email FROM users WHERE removed_at IS NULL GROUP BY email HAVING COUNT(*) > 1));
-- How an invitation reached its holder: 'email' (delivered to the mailbox, so using it
-- verifies the address) or 'handed' (shown to the inviting Admin).
ALTER TABLE invitations ADD COLUMN delivery TEXT NOT NULL DEFAULT 'handed';

-- Browser sessions belong to identities. One started before this upgrade signed in to one
-- user only, and stays limited to that member (only_user_id).
CREATE TABLE browser_sessions_v2 (
    id_hash       BLOB PRIMARY KEY,
    identity_id   TEXT NOT NULL REFERENCES identities (id),
    only_user_id  TEXT REFERENCES users (id),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
INSERT INTO browser_sessions_v2 (id_hash, identity_id, only_user_id, created_at, expires_at)
SELECT b.id_hash, u.identity_id, b.user_id, b.created_at, b.expires_at
FROM browser_sessions b JOIN users u ON u.id = b.user_id
WHERE u.identity_id IS NOT NULL AND u.removed_at IS NULL;
DROP TABLE browser_sessions;
ALTER TABLE browser_sessions_v2 RENAME TO browser_sessions;
CREATE INDEX browser_sessions_expires ON browser_sessions (expires_at);
CREATE INDEX browser_sessions_identity ON browser_sessions (identity_id);

-- A refresh token minted before this upgrade was minted for one user, by that user's own
-- password or an operator: it stays with that member. A refresh with `tenant_id` moves only
-- tokens minted since, when the person signed in as their identity.
ALTER TABLE refresh_tokens ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE refresh_tokens SET pinned = TRUE;

-- "Forgot password": single-use, expiring links mailed to an identity's address. Only hashes
-- of their tokens are stored.
CREATE TABLE password_resets (
    token_hash   BLOB PRIMARY KEY,
    identity_id  TEXT NOT NULL REFERENCES identities (id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);
CREATE INDEX password_resets_identity ON password_resets (identity_id);
CREATE INDEX password_resets_expires ON password_resets (expires_at);
CREATE INDEX password_resets_used ON password_resets (used_at) WHERE used_at IS NOT NULL;
