//! The storage interface: every operation the domain performs on storage, one trait per
//! aggregate, and [`Store`], all of them together (what the domain holds as `Arc<dyn Store>`).
//! Calling a method needs its trait in scope: `use crate::store::traits::*`.

use async_trait::async_trait;

use super::cache::StandingCache;
use super::*;

/// Organizations and their session policies. Every method is a single short transaction.
#[async_trait]
pub trait OrganizationStore: Send + Sync + 'static {
    /// Creates `org` and `owner` if no organization exists yet. Returns whether it did.
    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The organization created first (the install's default).
    async fn default_organization(&self) -> Result<Option<Organization>, StoreError>;

    /// Every organization, oldest first.
    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError>;

    /// The organization with this tenant id.
    async fn organization_by_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Organization>, StoreError>;

    /// Creates another organization.
    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// The session policy of an organization; `None` when there is no such organization.
    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError>;

    /// Replaces an organization's session policy, if it is still `expected`, and writes
    /// `audit` in the same transaction. The audit row is what tells every replica's cache to
    /// drop the organization's refresh grants (they carry the policy). Returns false when the
    /// organization does not exist or its policy is no longer `expected` (changed meanwhile),
    /// and then writes nothing.
    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;
}

/// Identities (people who sign in) and their members (users of organizations): adding
/// people, profiles, roles, passwords, invitations, resets, memberships and removal. Every
/// method is a single short transaction; role rules are conditions of the statement that
/// writes, so no concurrent change can slip past them.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Adds a member to `user.org_id` for the identity with `user.email`, creating the
    /// identity (with `user.password_hash` and `user.invited_by_org`) when none exists; an
    /// existing one joins as `user.join_existing` says, and is refused when a password is
    /// given for it. `actor` (an Owner or Admin of the organization; only Owners add Owners)
    /// is checked in the write.
    async fn add_member(
        &self,
        user: NewUser,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<AddedMember, Refusal>, StoreError>;

    /// The active (not removed) user of `org_id` with this (normalised) email.
    async fn find_active_user_by_email(
        &self,
        org_id: &str,
        email: &str,
    ) -> Result<Option<User>, StoreError>;

    /// One page of an organization's active people (not service accounts), oldest first,
    /// after the `(created_at, id)` position `after`.
    async fn users_page(
        &self,
        org_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError>;

    /// An active (joined or pending) user of `org_id`.
    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError>;

    /// Changes profile fields (and the role) of an active user. Everyone may change their own
    /// profile; the role and other members' profiles only an Owner, or an Admin for
    /// non-Owners (never making Owners); the organization keeps an active Owner. All checked
    /// in the statement that writes.
    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError>;

    /// Stores an invitation for a member (the hash of its token), replacing earlier ones.
    async fn insert_invitation(
        &self,
        token_hash: &[u8; 32],
        user_id: &str,
        expires_at: i64,
        delivery: Delivery,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// The active member of an unused, unexpired invitation whose identity has no password.
    async fn invitation_user(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError>;

    /// Spends an invitation and sets its identity's first password in one transaction (a
    /// mailed invitation also verifies the email). Returns false when the invitation is used,
    /// expired or unknown, or the identity has a password.
    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The people of an organization (not its service accounts), oldest first.
    async fn list_users(
        &self,
        org_id: &str,
        include_removed: bool,
    ) -> Result<Vec<User>, StoreError>;

    /// Marks a member removed (its tokens die; the identity's other memberships stay), if
    /// `actor` may (an Owner, or an Admin removing a non-Owner) and the organization keeps an
    /// active Owner, checked in the statement that writes.
    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError>;

    /// An identity by id.
    async fn identity(&self, identity_id: &str) -> Result<Option<Identity>, StoreError>;

    /// The identity with this (normalised) email, with its password hash, for sign-in.
    async fn identity_by_email(
        &self,
        email: &str,
    ) -> Result<Option<IdentityCredentials>, StoreError>;

    /// An identity's active memberships, joined and pending, oldest organization first.
    async fn memberships(&self, identity_id: &str) -> Result<Vec<Membership>, StoreError>;

    /// Accepts a pending membership of the identity, only if its email is verified.
    async fn accept_membership(
        &self,
        identity_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Replaces an identity's password hash and ends its browser sessions; `audit` is written
    /// once per member. Returns false when there is no such identity.
    async fn set_identity_password(
        &self,
        identity_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Stores a password-reset link for an identity (its hash), replacing earlier ones;
    /// `audit` is written once per member.
    async fn insert_password_reset(
        &self,
        token_hash: &[u8; 32],
        identity_id: &str,
        expires_at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// The identity of an unused, unexpired reset link.
    async fn password_reset_identity(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<Identity>, StoreError>;

    /// Spends a reset link: sets the password, verifies the email (the link was mailed), ends
    /// browser sessions; `audit` once per member. False when the link is used, expired or
    /// unknown.
    async fn accept_password_reset(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// A joined, active member by id.
    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError>;

    /// Emails the identity upgrade left without a password (they had passwords in several
    /// organizations) that still have none.
    async fn identity_upgrade_notices(&self) -> Result<Vec<String>, StoreError>;
}

/// What a sign-in leaves behind before a token exists: authorization codes, device codes and browser sessions. Every method is a single short transaction.
#[async_trait]
pub trait SignInStore: Send + Sync + 'static {
    /// Stores a new authorization code.
    async fn insert_authorization_code(&self, code: NewAuthorizationCode)
    -> Result<(), StoreError>;

    /// Spends an authorization code. A second presentation marks it replayed and revokes the
    /// refresh token issued from it, in the same transaction; the first replay also writes
    /// `replay` there, about the code's user (the store sets subject and organization, and a
    /// detail with the session id and whether it was revoked). Later replays write no more
    /// rows, so replaying one code cannot grow the audit log.
    async fn redeem_authorization_code(
        &self,
        code_hash: &[u8; 32],
        at: i64,
        replay: AuditEvent,
    ) -> Result<CodeRedemption, StoreError>;

    /// Stores a new device authorization.
    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError>;

    /// How many device authorizations are pending and unexpired at `now` (a read).
    async fn live_device_codes(&self, now: i64) -> Result<i64, StoreError>;

    /// Notes a poll of a device code and returns its state before this poll.
    async fn poll_device_code(
        &self,
        device_code_hash: &[u8; 32],
        at: i64,
    ) -> Result<Option<DeviceCode>, StoreError>;

    /// Moves a pending, unexpired device code (found by its user code) to `approved` (with
    /// the user) or `denied`, with `audit` in the same commit. Returns false (and writes no
    /// audit row) when there is no such pending code.
    async fn decide_device_code(
        &self,
        user_code_hash: &[u8; 32],
        approve_for: Option<&str>,
        at: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Moves an approved device code to `redeemed`; false if it was not approved (any more).
    async fn redeem_device_code(&self, device_code_hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Slows a client down: a longer polling interval from now on.
    async fn slow_down_device_code(
        &self,
        device_code_hash: &[u8; 32],
        interval_secs: i64,
    ) -> Result<(), StoreError>;

    /// Stores a browser session of an identity (the hash of its cookie).
    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        identity_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// An unexpired browser session.
    async fn browser_session(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<BrowserSession>, StoreError>;

    /// Ends a browser session, with `audit` in the same commit; false (no audit row) when there
    /// was none.
    async fn delete_browser_session(
        &self,
        id_hash: &[u8; 32],
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;
}

/// Refresh tokens (sessions), the grants and principals behind tokens, and revocation. Every method is a single short transaction.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new refresh token (its hash) under the user's current epoch, read in the same
    /// statement so a concurrent revoke-all cannot leave it half-dead. Returns false when the
    /// user does not exist or has been removed.
    async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The hot-path look-up: the token with this hash, its user and tenant.
    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError>;

    /// The user, organization (with its session policy) and session state behind an access
    /// token.
    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError>;

    /// Revokes every refresh token and access token of a user in one durable write, by
    /// moving the user's epoch on from `expected_epoch`, and ends their browser sessions. Returns false when the epoch had
    /// already moved (someone else revoked first).
    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Revokes every token of the user behind a refresh token, as [`Store::revoke_all_tokens`]
    /// does, when `decide` (given the token's grant as read where the revoke is written)
    /// returns the audit event to record; `None` when no token has this hash or `decide`
    /// refused. The grant is read next to the write because on SQLite a read on a reader
    /// after each commit costs more than the revoke (see `group_commit`).
    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError>;

    /// Moves a refresh token live under `from_user_id` to the joined member of the same
    /// identity in the organization with `tenant_id`: from then on it is that member's
    /// session (a refresh with `tenant_id`). `audit` (about the old member) is written, and a
    /// copy about the new one. Returns the new member's id; `None` when the token is not live
    /// under `from_user_id`, is pinned to its member (minted before identities existed), is a
    /// named token (minted for one organization, with its scopes), or the identity has no
    /// joined membership there.
    async fn move_refresh_token(
        &self,
        token_id: &str,
        from_user_id: &str,
        tenant_id: &str,
        audit: AuditEvent,
    ) -> Result<Option<String>, StoreError>;

    /// Revokes one session (refresh token) of `user_id`. Returns false if it was not live.
    async fn revoke_session(
        &self,
        token_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// A user's live sessions (not revoked, issued under the user's current epoch, user not
    /// removed), newest first, at most `limit` (capped at [`MAX_LISTED_SESSIONS`]).
    async fn list_sessions(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// The live sessions of each of `user_ids` (same rule and order as
    /// [`Store::list_sessions`], at most `limit_per_user` each), in one statement: a page of
    /// users with their sessions is one read, not one per user. Grouped by user in no
    /// particular order of users.
    async fn list_sessions_of_users(
        &self,
        user_ids: &[&str],
        limit_per_user: i64,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// One live session by id (same rule as [`Store::list_sessions`]), whoever's it is.
    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Records last-use times and addresses of refresh tokens (batched).
    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError>;
}

/// Service accounts, organization-defined scopes and their grants, the organization's token
/// lifetime maximum, and the expiry notices of named tokens. Every method is a single short
/// transaction.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Creates a service account if `actor` may (an Owner, or an Admin; its role is never
    /// `owner`, checked in the insert). Refused with [`Refusal::NameTaken`] when a live service
    /// account of the organization has the name.
    async fn add_service_account(
        &self,
        account: NewServiceAccount,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<User, Refusal>, StoreError>;

    /// The organization's live service accounts, oldest first.
    async fn service_accounts(&self, org_id: &str) -> Result<Vec<User>, StoreError>;

    /// Changes a live service account's name, role (never `owner`) or description (`None`
    /// keeps each), if `actor` may. Returns the account as it is now.
    async fn update_service_account(
        &self,
        user_id: &str,
        changes: ServiceAccountChanges,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<User, Refusal>, StoreError>;

    /// The organization's own scopes with their grants, by name.
    async fn org_scopes(&self, org_id: &str) -> Result<Vec<OrgScope>, StoreError>;

    /// Declares a scope; false when the organization has one of that name.
    async fn create_org_scope(
        &self,
        org_id: &str,
        name: &str,
        description: Option<&str>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Deletes a scope and its grants; false when there is none of that name.
    async fn delete_org_scope(
        &self,
        org_id: &str,
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Grants (`grant`: true) or withdraws a scope; false when the scope does not exist, or
    /// (withdrawing) was not granted to `grantee`.
    async fn set_scope_grant(
        &self,
        org_id: &str,
        scope: &str,
        grantee: &Grantee,
        grant: bool,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The organization's own scopes that a member with `role` (and, for a service account,
    /// `user_id` itself) may hold now.
    async fn held_org_scopes(
        &self,
        org_id: &str,
        role: &str,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError>;

    /// The organization's maximum token lifetime in seconds: `None` when there is no such
    /// organization, `Some(None)` when it has no maximum.
    async fn token_lifetime_max(&self, org_id: &str) -> Result<Option<Option<i64>>, StoreError>;

    /// Sets (or, with `None`, lifts) the maximum token lifetime; false without such an
    /// organization.
    async fn set_token_lifetime_max(
        &self,
        org_id: &str,
        max_secs: Option<i64>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Live named tokens that expire after `now` and at or before `until` whose expiry notice
    /// has not gone yet, soonest first, at most `limit`.
    async fn tokens_expiring(
        &self,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<ExpiringToken>, StoreError>;

    /// Claims the expiry notice of a token (of several replicas, one sends it): false when it
    /// was claimed already.
    async fn claim_expiry_notice(&self, token_id: &str, at: i64) -> Result<bool, StoreError>;

    /// Releases a claimed expiry notice whose mail could not be sent, so it is tried again.
    async fn release_expiry_notice(&self, token_id: &str) -> Result<(), StoreError>;
}

/// Trust policies (keyless CI) and the OIDC tokens exchanged under them. Every method is a
/// single short transaction.
#[async_trait]
pub trait TrustStore: Send + Sync + 'static {
    /// Creates a policy, if `actor` may (an Owner or Admin of the organization; an
    /// operator). Refused with [`Refusal::NotFound`] when the service account is not a live
    /// one of the organization, [`Refusal::NameTaken`] when a policy there has the name.
    async fn create_trust_policy(
        &self,
        policy: TrustPolicyRecord,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError>;

    /// The organization's trust policies, by name.
    async fn trust_policies(&self, org_id: &str) -> Result<Vec<TrustPolicyRecord>, StoreError>;

    /// One policy of the organization.
    async fn trust_policy(
        &self,
        org_id: &str,
        id: &str,
    ) -> Result<Option<TrustPolicyRecord>, StoreError>;

    /// Writes a policy's new state (all its settings; not its times or use), if `actor` may.
    /// With `end_sessions` every session it started is revoked, ending every access token it
    /// issued. `also` is a second audit row of the same commit (about the service account it
    /// no longer acts as). Refusals as for creating.
    async fn update_trust_policy(
        &self,
        policy: TrustPolicyRecord,
        end_sessions: bool,
        actor: Actor<'_>,
        audit: AuditEvent,
        also: Option<AuditEvent>,
    ) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError>;

    /// Deletes a policy and revokes every session it started, if `actor` may.
    async fn delete_trust_policy(
        &self,
        org_id: &str,
        id: &str,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError>;

    /// The enabled policies that trust `issuer`, with what an exchange needs (one read).
    async fn trust_candidates(&self, issuer: &str) -> Result<Vec<TrustCandidate>, StoreError>;

    /// Records an exchange with `audit`: spends the token's replay key, notes the policy's
    /// use and starts the exchange's session.
    async fn record_exchange(
        &self,
        exchange: PolicyExchange,
        audit: AuditEvent,
    ) -> Result<ExchangeWrite, StoreError>;
}

/// Resource servers, the clients that may introspect access tokens. Every method is a single
/// short transaction.
#[async_trait]
pub trait ResourceServerStore: Send + Sync + 'static {
    /// Registers `server`, if `actor` may: an active Owner of its organization, or an
    /// operator (`None`), who alone may register one without an organization. Refused with
    /// [`Refusal::Forbidden`] otherwise, [`Refusal::NameTaken`] when one of the same
    /// organization (or instance-wide, for an instance-wide one) has its name.
    async fn create_resource_server(
        &self,
        server: ResourceServerRecord,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<ResourceServerRecord, Refusal>, StoreError>;

    /// The resource servers of an organization (`None`: the instance-wide ones), by name.
    async fn resource_servers(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<ResourceServerRecord>, StoreError>;

    /// One resource server by its client id, whatever its organization: what its client
    /// authentication reads.
    async fn resource_server(&self, id: &str) -> Result<Option<ResourceServerRecord>, StoreError>;

    /// Replaces the secret hash of the resource server `id` of `org_id` (`None`:
    /// instance-wide) at `at`, if `actor` may (as for creating): the old secret stops
    /// working with the commit. [`Refusal::NotFound`] when there is no such server there.
    async fn set_resource_server_secret(
        &self,
        org_id: Option<&str>,
        id: &str,
        secret_hash: Vec<u8>,
        at: i64,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<ResourceServerRecord, Refusal>, StoreError>;

    /// Deletes the resource server `id` of `org_id`, if `actor` may: its secret stops working
    /// with the commit. [`Refusal::NotFound`] when there is no such server there.
    async fn delete_resource_server(
        &self,
        org_id: Option<&str>,
        id: &str,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError>;
}

/// Signing keys. Every method is a single short transaction.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Every signing key, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Stores `key` unless an active (not retired) key exists already.
    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError>;

    /// Makes `key` the active signing key and retires every key active until now (its
    /// `retired_at` becomes `key.created_at`), with `audit`, in one transaction that also
    /// excludes a concurrent first-key creation. Returns the kids it retired.
    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError>;

    /// [`Store::rotate_signing_key`], but only if no active key was created at or after
    /// `active_created_before` (milliseconds), checked inside the rotation's transaction and
    /// lock: of several processes racing to rotate an old key, one does. `None` when the
    /// active key is that new, with nothing written.
    async fn rotate_signing_key_if_stale(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
        active_created_before: i64,
    ) -> Result<Option<Vec<String>>, StoreError>;

    /// Deletes the retired signing key `kid` with `audit`, under the signing-key lock: every
    /// token it signed stops verifying once a process reloads its keys (the change feed makes
    /// each one do so). Refused without deleting when the key is the active one, or unknown.
    async fn delete_retired_signing_key(
        &self,
        kid: &str,
        audit: AuditEvent,
    ) -> Result<KeyDeletion, StoreError>;

    /// Replaces the stored private key of each named signing key whose row still holds
    /// `previous`, with `audit`, in one transaction (under the signing-key lock). Returns the
    /// kids it replaced; when none, nothing is written, not even the audit event.
    async fn replace_private_keys(
        &self,
        replacements: &[PrivateKeyReplacement],
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError>;
}

/// The audit trail and the change feed derived from it. Every method is a single short transaction.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// One page of audit events matching `query`, newest first (descending id), at most
    /// `limit` (capped at [`MAX_AUDIT_PAGE`] + 1). The next page starts before the last id seen.
    async fn audit_events_page(
        &self,
        query: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Writes one audit event on its own, for events that change nothing else in the store
    /// (a sign-in that succeeded or failed).
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// Hands every change committed from now on, by any process on this database, to
    /// `on_change`, in commit order per process, starting with [`Change::listening`] once
    /// nothing can be missed any more. Runs until the feed breaks and then returns (with the
    /// error, if there was one); the caller must then assume it missed changes and call again. PostgreSQL uses `LISTEN`; SQLite polls the audit log, whose ids grow in
    /// commit order because SQLite has one writer at a time.
    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError>;
}

/// Failure counters of rate limits and lock-outs. Every method is a single short transaction.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// The failures counted for `key`, if any.
    async fn attempt_counter(&self, key: &str) -> Result<Option<AttemptCounter>, StoreError>;

    /// Counts one failure for `key` at `at` under `policy` (a failure after the window
    /// restarts the count) and returns the counter after it. When this failure locks the key,
    /// `trip` is audited in the same transaction.
    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError>;

    /// Forgets the failures of `key` (after a success).
    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError>;
}

/// Health, cleanup, shutdown and the counters metrics read. Every method is a single short transaction.
#[async_trait]
pub trait Maintenance: Send + Sync + 'static {
    /// Checks that the database answers, for reads and for writes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Deletes at most `limit` rows of one kind of garbage older than `before` (milliseconds;
    /// what "older" means is the kind's), in one short statement. Returns how many it deleted:
    /// fewer than `limit` means there are no more.
    async fn delete_garbage(
        &self,
        kind: Garbage,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError>;

    /// The right to run a cleanup round now, or `None` when another replica is running one.
    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError>;

    /// Closes connections cleanly (SQLite checkpoints its WAL).
    async fn close(&self);

    /// Connection pools and circuit breaker as of now, for metrics: reads counters in memory,
    /// never the database, so a scrape works (and is cheap) during an outage.
    fn connection_stats(&self) -> ConnectionStats;

    /// The standing cache in front of the hot-path reads, if one is on: for its counters, and
    /// for tests that drive it by hand.
    fn cache(&self) -> Option<&StandingCache>;
}

/// The whole storage interface.
pub trait Store:
    OrganizationStore
    + UserStore
    + AccessStore
    + TrustStore
    + ResourceServerStore
    + SignInStore
    + TokenStore
    + KeyStore
    + AuditStore
    + LimitStore
    + Maintenance
{
}

impl<T> Store for T where
    T: OrganizationStore
        + UserStore
        + AccessStore
        + TrustStore
        + ResourceServerStore
        + SignInStore
        + TokenStore
        + KeyStore
        + AuditStore
        + LimitStore
        + Maintenance
{
}
