-- Background cleanup deletes expired and dead rows in small batches; each batch finds its
-- rows through one of these indexes (or one made earlier) instead of scanning its table.

-- Sessions revoked one by one, by when.
CREATE INDEX refresh_tokens_revoked ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

-- Users whose epoch has moved (revoke-all, removal): their tokens of older epochs are dead.
-- updated_at is at or after the last move, so "updated before the cutoff" is conservative.
CREATE INDEX users_epoch_moved ON users (updated_at) WHERE token_epoch > 0;

-- Codes never redeemed are garbage once expired; redeemed ones are kept longer, so that a
-- replay still revokes the tokens issued from them (found by authorization_codes_expires).
CREATE INDEX authorization_codes_unused ON authorization_codes (expires_at) WHERE used_at IS NULL;

-- Spent invitations.
CREATE INDEX invitations_used ON invitations (used_at) WHERE used_at IS NOT NULL;

-- Retired signing keys, deleted once they no longer verify anything.
CREATE INDEX signing_keys_retired ON signing_keys (retired_at) WHERE retired_at IS NOT NULL;
