//! The records the store reads and writes: organizations, users, tokens, codes, keys, audit
//! events and attempt counters, as the domain sees them.

use std::sync::Arc;

/// An organization (a Prismatic tenant).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub created_at: i64,
}

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub token_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub removed_at: Option<i64>,
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub dark_mode: bool,
    pub dark_mode_sync_with_os: bool,
    /// The sign-in identity this member belongs to; `None` only for users removed before
    /// identities existed.
    pub identity_id: Option<String>,
    /// When the member joined; `None` while the membership waits for its identity to accept.
    pub joined_at: Option<i64>,
    /// `person`, or `service` for a service account (no identity, no email, never an Owner).
    pub kind: String,
    /// What a service account is for (people have none).
    pub description: Option<String>,
}

impl User {
    /// Whether the membership is in force (accepted, not removed): only such a member signs
    /// in, holds tokens, or counts as one of an identity's organizations.
    pub fn is_joined(&self) -> bool {
        self.joined_at.is_some() && self.removed_at.is_none()
    }

    /// Whether this member is a service account rather than a person.
    pub fn is_service_account(&self) -> bool {
        self.kind == SERVICE_ACCOUNT_KIND
    }
}

/// The `users.kind` of a service account.
pub const SERVICE_ACCOUNT_KIND: &str = "service";

/// A service account to create: a member of `org_id` that is not a person.
#[derive(Debug, Clone)]
pub struct NewServiceAccount {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub role: String,
    pub description: Option<String>,
    pub created_at: i64,
}

/// Changes to a service account; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountChanges {
    pub name: Option<String>,
    /// A role key; never `owner`.
    pub role: Option<String>,
    pub description: Option<String>,
}

/// A named token about to expire, and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExpiringToken {
    pub token_id: String,
    pub name: Option<String>,
    pub expires_at: i64,
    pub org_name: String,
    /// The token's principal (a person's name, or the service account's).
    pub principal_name: String,
    /// Whose mailbox: the person's, or (a service account's token) the active member who
    /// minted it; `None` when nobody can be told.
    pub recipient: Option<String>,
}

/// An organization-defined scope (e.g. `deploy:prod`) and who may hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgScope {
    pub name: String,
    pub description: Option<String>,
    pub created_at: i64,
    /// Role keys it is granted to.
    pub roles: Vec<String>,
    /// Service accounts (user ids) it is granted to.
    pub service_accounts: Vec<String>,
}

/// Who an organization-defined scope is granted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// Every member with this role (its key).
    Role(String),
    /// One service account (its user id).
    ServiceAccount(String),
}

impl Grantee {
    /// The stored form: `role:<key>` or `user:<id>`.
    pub fn key(&self) -> String {
        match self {
            Grantee::Role(role) => format!("role:{role}"),
            Grantee::ServiceAccount(id) => format!("user:{id}"),
        }
    }
}

/// A person who signs in: one email across every organization, one password.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Identity {
    pub id: String,
    pub email: String,
    /// Whether a password was set through a link mailed to the address.
    pub email_verified: bool,
    pub has_password: bool,
    /// The organization whose Owners and Admins may be handed the first-password link
    /// (it created this identity while no SMTP server was configured).
    pub invited_by_org: Option<String>,
    pub created_at: i64,
}

/// An identity with its password hash, for sign-in.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityCredentials {
    #[sqlx(flatten)]
    pub identity: Identity,
    pub password_hash: Option<String>,
}

/// One of an identity's memberships: the member and its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user: User,
    pub org: Organization,
}

/// A live browser session: whose identity, and (for a session started before identities
/// existed) the one member it may act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    pub identity: Identity,
    pub only_user_id: Option<String>,
}

/// How a member joins when its identity exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinExisting {
    /// At once (an operator added it).
    AtOnce,
    /// Pending until the identity accepts it (an Owner or Admin added it).
    Pending,
    /// Refused: the caller only creates new identities.
    Refuse,
}

/// How an invitation reaches the person who sets the password with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Mailed to the address: using it verifies the email.
    Email,
    /// Shown to the Owner or Admin who created it (no SMTP server configured): it sets the
    /// password only while the identity belongs to that one organization.
    Handed,
    /// Printed for an operator (`prismd users invite-link`), who is trusted with any password.
    Operator,
}

impl Delivery {
    pub fn key(self) -> &'static str {
        match self {
            Delivery::Email => "email",
            Delivery::Handed => "handed",
            Delivery::Operator => "operator",
        }
    }
}

/// What adding a member did.
#[derive(Debug, Clone)]
pub struct AddedMember {
    pub user: User,
    /// Whether the identity was created by this call (it had no other membership).
    pub new_identity: bool,
}

/// Who asks for a change of a member, checked inside the write: `None` is an operator.
pub type Actor<'a> = Option<&'a str>;

/// Why a change of a member was refused (the rule was checked in the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No active member with that id.
    NotFound,
    /// The actor may not (an Admin acting on an Owner or making one; not an Owner or Admin).
    Forbidden,
    /// The organization would be left without an active Owner.
    LastOwner,
    /// The identity is a member of the organization already.
    AlreadyMember,
    /// An identity with that email exists, and the caller only creates new ones (or gave a
    /// password, which only the identity sets).
    IdentityExists,
    /// A live service account of the organization has that name.
    NameTaken,
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub dark_mode: Option<bool>,
    pub dark_mode_sync_with_os: Option<bool>,
    /// A new role (its key, e.g. `admin`). Refused, like the whole change, when it would
    /// leave the organization without an active Owner.
    pub role: Option<String>,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    /// For a new identity only: its first password (an operator's `users add`).
    pub password_hash: Option<String>,
    pub external_id: Option<String>,
    pub created_at: i64,
    /// What happens when an identity with this email exists.
    pub join_existing: JoinExisting,
    /// For a new identity: the organization whose Admins are handed its first-password link.
    pub invited_by_org: Option<String>,
}

/// An organization to create.
#[derive(Debug, Clone)]
pub struct NewOrganization {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub created_at: i64,
}

/// A refresh token to store. Only the SHA-256 of the secret is kept.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub id: String,
    pub token_hash: [u8; 32],
    pub user_id: String,
    pub client_id: String,
    pub name: Option<String>,
    pub scope: String,
    pub created_at: i64,
    /// The authorization code this token was issued for, if any: a replay of that code
    /// revokes this token.
    pub from_code: Option<[u8; 32]>,
    /// Minted with a name by `createToken`: the name is unique among the principal's live
    /// named tokens.
    pub named: bool,
    /// When it stops working (ms); `None`: never.
    pub expires_at: Option<i64>,
    /// The member who minted it, when not an operator.
    pub created_by: Option<String>,
}

/// A live session (refresh token) as its user sees it: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    /// The refresh token's id (a UUID); access tokens carry it as `sid`.
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    /// "CLI login", "Device login", or the name given when it was minted.
    pub name: Option<String>,
    pub created_at: i64,
    /// Written in batches, so up to a minute (plus a few seconds) behind.
    pub last_used_at: Option<i64>,
    pub last_used_addr: Option<String>,
    /// Its OAuth scope: API scope names when it is restricted (see `domain::scopes`).
    pub scope: String,
    /// Minted with a unique name (`createToken`).
    pub named: bool,
    /// When it stops working (ms); `None`: never.
    pub expires_at: Option<i64>,
}

/// The columns of a [`SessionRecord`] (`t`: refresh_tokens), the same on both backends.
pub(crate) const SESSION_COLUMNS: &str = "t.id, t.user_id, t.client_id, t.name, t.created_at, \
     t.last_used_at, t.last_used_addr, t.scope, t.named, t.expires_at";

/// The standing rule (`domain::standing`) as SQL over `t` (refresh_tokens) and `u` (its user):
/// a session listed as live must be one the token endpoint would honour.
pub(crate) const LIVE_SESSION: &str =
    "t.revoked_at IS NULL AND t.user_epoch = u.token_epoch AND u.removed_at IS NULL";

/// Most sessions [`Store::list_sessions`] returns: a list for people to read, not an export.
pub const MAX_LISTED_SESSIONS: i64 = 500;

/// An authorization code to store (its hash), bound to client, redirect URI and challenge.
#[derive(Debug, Clone)]
pub struct NewAuthorizationCode {
    pub code_hash: [u8; 32],
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// An authorization code as redeemed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthorizationCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub user_id: String,
    pub expires_at: i64,
}

/// An authorization code presented again after it was spent: whose it was, and whether it
/// was replayed before.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SpentCode {
    pub user_id: String,
    pub org_id: String,
    pub replayed_at: Option<i64>,
    pub refresh_token_id: Option<String>,
}

/// Reads a [`SpentCode`] by code hash (`$1`), the same on both backends.
pub(crate) const SPENT_CODE: &str = "SELECT c.user_id, u.org_id, c.replayed_at, c.refresh_token_id \
     FROM authorization_codes c JOIN users u ON u.id = c.user_id WHERE c.code_hash = $1";

impl SpentCode {
    /// The audit row of its first replay: `replay` about the code's user, with the session it
    /// issued (if any) and whether the replay revoked it.
    pub(crate) fn replay_event(&self, replay: AuditEvent, revoked: bool) -> AuditEvent {
        AuditEvent {
            org_id: Some(self.org_id.clone()),
            subject_user_id: Some(self.user_id.clone()),
            detail: Some(
                serde_json::json!({ "token_id": self.refresh_token_id, "revoked": revoked })
                    .to_string(),
            ),
            ..replay
        }
    }
}

/// What presenting an authorization code did.
#[derive(Debug, Clone)]
pub enum CodeRedemption {
    /// First use: the code is now spent.
    Redeemed(AuthorizationCode),
    /// Used before: the refresh token issued from it (if any) has been revoked.
    Replayed,
    Unknown,
}

/// A device authorization to store (RFC 8628).
#[derive(Debug, Clone)]
pub struct NewDeviceCode {
    pub device_code_hash: [u8; 32],
    pub user_code_hash: [u8; 32],
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub interval_secs: i64,
}

/// A device authorization as polled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCode {
    pub client_id: String,
    pub scope: String,
    pub expires_at: i64,
    pub interval_secs: i64,
    pub last_polled_at: Option<i64>,
    pub status: String,
    pub user_id: Option<String>,
}

/// Everything the refresh exchange needs, read in one indexed look-up by token hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshGrant {
    pub token_id: String,
    pub token_epoch: i64,
    /// Set when this one session was revoked on its own (RFC 7009 revocation of one token,
    /// session management); revoke-all moves the user's epoch instead.
    pub token_revoked_at: Option<i64>,
    pub client_id: String,
    pub scope: String,
    pub user_id: String,
    pub user_epoch: i64,
    pub user_removed_at: Option<i64>,
    pub org_id: String,
    pub tenant_id: String,
    /// When the token was minted: what a maximum age is measured from.
    pub token_created_at: i64,
    /// Its last use as written so far (batched, so up to a minute behind; the process's own
    /// pending uses are in `domain::usage`).
    pub token_last_used_at: Option<i64>,
    /// The organization's session policy, read in the same look-up.
    #[sqlx(flatten)]
    pub policy: SessionPolicy,
    /// The user's role (its key): a restricted token's scopes are narrowed to it.
    pub role: String,
    /// When the token stops working (ms); `None`: never.
    pub token_expires_at: Option<i64>,
    /// For a restricted token (its scope names an API scope), the organization's own scopes
    /// its user may hold now, space-separated: read in the same look-up, so a restricted
    /// exchange reads nothing more, and cached with the grant (a change of grants is audited
    /// about no one user, which drops every cached grant). `None` for an unrestricted token.
    pub held_org_scopes: Option<String>,
}

/// Decides whether presenting a refresh token with this grant revokes all of its user's
/// tokens, and returns the audit event to record if so. Called where the revoke is written,
/// so it must be quick and must not wait on anything.
pub type RevokeDecision = Arc<dyn Fn(&RefreshGrant) -> Option<AuditEvent> + Send + Sync>;

/// A revoke-all made through [`Store::revoke_all_by_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedAll {
    pub user_id: String,
    /// False when a concurrent revoke moved the user's epoch first: the tokens are dead
    /// either way, and only that one wrote an audit row.
    pub moved: bool,
    /// The identity's other members whose epochs moved with it (a person's own revoke-all
    /// ends their tokens in every organization).
    pub siblings: Vec<String>,
}

/// An organization's session policy (issue 7). `None` turns a limit off, the default, for
/// parity with Prismatic, where refresh tokens live until revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionPolicy {
    /// A refresh token not used for longer than this (seconds) is refused.
    pub idle_expiry_secs: Option<i64>,
    /// A refresh token older than this (seconds) is refused.
    pub max_age_secs: Option<i64>,
}

/// The caller behind an access token: the user, their organization and the state of the
/// session the token was issued from, read in one look-up.
#[derive(Debug, Clone)]
pub struct PrincipalRecord {
    pub user: User,
    pub org: Organization,
    /// `None` when the session row does not exist (or belongs to someone else).
    pub session_revoked_at: Option<Option<i64>>,
    /// The session's creation and last use as written so far (`None` without a session row),
    /// which the organization's session policy counts from.
    pub session_created_at: Option<i64>,
    pub session_last_used_at: Option<i64>,
    /// The organization's session policy, read in the same look-up.
    pub policy: SessionPolicy,
    /// The organization's own scopes the user may hold now (by their role's grants or their
    /// own), space-separated, read in the same look-up: cached with the principal, which a
    /// change of grants (audited about no one user) drops everywhere.
    pub held_org_scopes: String,
}

/// The last use of a refresh token, recorded in batches off the hot path.
#[derive(Debug, Clone)]
pub struct TokenUse {
    pub token_id: String,
    pub at: i64,
    pub address: Option<String>,
}

/// A signing key as stored. `private_key` is PKCS#8, or sealed with the key encryption key
/// (`tokens::at_rest`).
#[derive(Clone, sqlx::FromRow)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// What [`KeyStore::delete_retired_signing_key`] did.
///
/// [`KeyStore::delete_retired_signing_key`]: crate::store::KeyStore::delete_retired_signing_key
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDeletion {
    Deleted,
    /// The key signs new tokens: rotate first.
    Active,
    NotFound,
}

// By hand, so that no log line or error that prints a record can show its private key.
impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A new stored form of one signing key's private key (sealing it with a key encryption
/// key), applied only if the row still holds `previous`.
#[derive(Clone)]
pub struct PrivateKeyReplacement {
    pub kid: String,
    pub previous: Vec<u8>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for PrivateKeyReplacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKeyReplacement")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A security event, written in the same transaction as the change it describes.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: i64,
    pub action: &'static str,
    pub actor: String,
    pub org_id: Option<String>,
    pub subject_user_id: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// Free-form JSON; never a secret.
    pub detail: Option<String>,
}

/// How many failures a key may have and how it is locked after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Failures within [`AttemptPolicy::window_ms`] that lock the key (this many, in a row).
    pub max_failures: i64,
    /// How long failures are counted from the first one, in ms.
    pub window_ms: i64,
    /// The first lock, in ms; each further failure doubles it.
    pub lock_ms: i64,
    /// The longest lock, in ms.
    pub max_lock_ms: i64,
}

impl AttemptPolicy {
    /// The lock after `failures` failures, in ms: none below the threshold, then doubling.
    pub fn lock_for(&self, failures: i64) -> i64 {
        if failures < self.max_failures.max(1) {
            return 0;
        }
        let doublings = u32::try_from((failures - self.max_failures).clamp(0, 32)).unwrap_or(32);
        self.lock_ms
            .saturating_mul(1_i64 << doublings)
            .min(self.max_lock_ms)
            .max(0)
    }
}

/// The failures counted for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptCounter {
    pub failures: i64,
    pub window_start: i64,
    /// Refused until then (ms); 0 or in the past when not locked.
    pub locked_until: i64,
}

/// An audit event as read back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub action: String,
    pub actor: String,
    pub org_id: Option<String>,
    pub subject_user_id: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Option<String>,
}

/// A resource server: an OAuth client of someone's own API that may introspect access tokens
/// (RFC 7662), as stored. `id` is its `client_id`; `secret_hash` the SHA-256 of its client
/// secret. `org_id` `None`: an instance-wide one (an operator's), which may ask about the
/// tokens of every organization.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ResourceServerRecord {
    pub id: String,
    pub org_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub secret_set_at: i64,
}

/// A trust policy (keyless CI): which OIDC tokens of one issuer act as one of the
/// organization's service accounts, as stored. `conditions` is the JSON list the domain
/// parses (`oidc::claims::ClaimCondition`); `scopes` is space-separated ('' : the account's
/// full role).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrustPolicyRecord {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub conditions: String,
    pub service_account_id: String,
    pub scopes: String,
    pub access_token_ttl_secs: i64,
    pub max_token_age_secs: i64,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

/// An enabled trust policy of an issuer, with what an exchange under it needs, read in one
/// look-up: its organization and its service account's standing and grants.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TrustCandidate {
    #[sqlx(flatten)]
    pub policy: TrustPolicyRecord,
    pub tenant_id: String,
    pub account_role: String,
    pub account_epoch: i64,
    pub account_removed_at: Option<i64>,
    /// The organization's own scopes the account may hold now, space-separated.
    pub held_org_scopes: String,
}

/// The name a trust policy's sessions show in its service account's session list.
pub fn policy_session_name(policy_name: &str) -> String {
    format!("trust policy {policy_name}")
}

/// One exchange of an OIDC token under a trust policy, written in one transaction with its
/// audit row: the token's replay key is spent, and a session of the policy's service account
/// starts (a refresh token row whose secret is never issued, tagged with the policy and
/// expiring with the access token that names it).
#[derive(Debug, Clone)]
pub struct PolicyExchange {
    pub policy_id: String,
    pub service_account_id: String,
    /// The token's replay key (its issuer and jti, or its hash) and when it expires (ms).
    pub token_key: String,
    pub issuer: String,
    pub token_expires_at: i64,
    pub at: i64,
    pub session_id: String,
    /// A random hash no secret has: nobody can present the session as a refresh token.
    pub session_hash: [u8; 32],
    pub session_name: String,
    /// The scope of the access token (what the session shows).
    pub scope: String,
    /// When the access token, and with it the session, ends (ms).
    pub session_expires_at: i64,
}

/// What writing an exchange found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeWrite {
    /// Recorded, with the session the access token names.
    Issued,
    /// The token was exchanged before (here or on another replica).
    Replayed,
    /// The policy was disabled, deleted or moved to another account, or its service account
    /// removed, meanwhile.
    PolicyGone,
}
