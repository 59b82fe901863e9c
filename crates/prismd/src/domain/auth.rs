//! The token service: exchange a refresh token for an access token, revoke all of a user's
//! tokens, authenticate a bearer token, sign ID tokens, and write the last-use records. It owns
//! the store, the key ring and what this process keeps in memory (verified tokens, uses not
//! written yet), and hands out the other areas' services over the same store, so a handler
//! holds one `AuthService` and reaches every domain operation from it. `/auth/*`,
//! `/oauth/token` and `/api` go through here; browser login and the device grant add their
//! methods in `login` and `device`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prism_proto::token_format::{self, SecretKind};
use prism_proto::wire::TokenResponse;

use super::accounts::Accounts;
use super::audit::AuditTrail;
use super::limits::{LimitSettings, Limits};
use super::policies::{self, Policies};
use super::roles::Role;
use super::scopes::{self, ApiScope, ApiScopes, TokenScopes};
use super::service_accounts::ServiceAccounts;
use super::sessions::Sessions;
use super::standing::{self, Standing};
use super::usage::UsageRecorder;
use super::{BearerError, DomainError, GrantError, RequestMeta, now_ms, secrets};
use crate::oidc::{OidcSettings, OidcSetupError, OidcVerifier};
use crate::store::{
    AuditEvent, Organization, RefreshGrant, RevokeDecision, SessionPolicy, Store, StoreError, User,
};
use crate::tokens::jwt::Audience;
use crate::tokens::{
    AccessClaims, JwtError, KeyRing, LiveKeys, VerifiedTokens, VerifyExpectations, hash_secret, jwt,
};

/// Issuer, audience and lifetime of access tokens.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    /// Most access tokens remembered as verified (0: verify every time).
    pub verified_token_capacity: usize,
    /// How the OIDC tokens of trust policies (keyless CI) are verified.
    pub oidc: OidcSettings,
}

/// The caller behind a verified, still-standing access token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub org: Organization,
    pub claims: Arc<AccessClaims>,
    /// The built-in scopes the token itself names (all of them when it is unrestricted).
    pub token_allows: ApiScopes,
    /// The organization's own scopes the principal may hold now (its role's grants and its
    /// own), read with its standing.
    pub held_org_scopes: BTreeSet<String>,
}

impl Principal {
    /// Refuses an operation that needs `scope` when the caller's token lacks it. What the
    /// role lacks is refused by the operation's own role rule right after, with the message
    /// people (and the official client) know, e.g. "only Owners and Admins can add users":
    /// the two together are [`Principal::effective`], the role's scopes intersected with the
    /// token's (the e2e test `scopes` checks every role, scope and operation).
    pub fn require(&self, scope: ApiScope) -> Result<(), DomainError> {
        if self.token_allows.contains(scope) {
            Ok(())
        } else {
            Err(DomainError::AccessDenied(format!(
                "this token lacks the scope {scope}"
            )))
        }
    }

    /// What the caller may do through the API now: their current role's scopes (read with
    /// the standing, so a demotion counts at once) narrowed by the token's.
    pub fn effective(&self) -> ApiScopes {
        scopes::effective(Role::of(&self.user), self.token_allows)
    }

    /// The API scopes the caller's own token names (`Unrestricted`: the role's).
    pub fn token_scopes(&self) -> TokenScopes {
        TokenScopes::parse(&self.claims.scope)
    }
}

/// What decides the scope of an access token: the scope its refresh token (or trust policy)
/// holds, and what its principal may hold now.
pub(super) struct ScopeSource<'a> {
    /// What holds the scope, for messages ("refresh token", "trust policy").
    pub what: &'static str,
    pub scope: &'a str,
    pub role: &'a str,
    /// The organization's own scopes the principal holds, when read with the grant.
    pub held_org_scopes: Option<&'a str>,
    pub org_id: &'a str,
    pub user_id: &'a str,
}

impl<'a> ScopeSource<'a> {
    fn of(grant: &'a RefreshGrant) -> Self {
        Self {
            what: "refresh token",
            scope: &grant.scope,
            role: &grant.role,
            held_org_scopes: grant.held_org_scopes.as_deref(),
            org_id: &grant.org_id,
            user_id: &grant.user_id,
        }
    }
}

/// What a revoke request did. The HTTP answer is the same either way (RFC 7009: no oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    NothingToRevoke,
}

/// The token service.
pub struct AuthService {
    store: Arc<dyn Store>,
    keys: Arc<LiveKeys>,
    verified: VerifiedTokens,
    settings: TokenSettings,
    usage: UsageRecorder,
    /// The issuers' keys of keyless CI, cached.
    oidc: OidcVerifier,
}

/// Last-use records that could not be written; they were put back and go out with the next
/// write.
#[derive(Debug)]
pub struct TokenUseWriteError {
    /// How many records the failed write held.
    pub count: usize,
    pub error: StoreError,
}

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<LiveKeys>,
        settings: TokenSettings,
    ) -> Result<Self, OidcSetupError> {
        Ok(Self {
            store,
            keys,
            verified: VerifiedTokens::new(settings.verified_token_capacity),
            oidc: OidcVerifier::new(settings.oidc.clone())?,
            settings,
            usage: UsageRecorder::default(),
        })
    }

    pub(super) fn oidc(&self) -> &OidcVerifier {
        &self.oidc
    }

    pub(super) fn oidc_settings(&self) -> &OidcSettings {
        &self.settings.oidc
    }

    /// Notes a use of a session (its last use is written in batches).
    pub(super) fn note_use(&self, session_id: &str, at: i64, meta: &RequestMeta) {
        self.usage.record(session_id, at, meta.address.as_deref());
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The key ring as of now (a rotation swaps in a new one).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// Verifies an access token; a `kid` we do not know yet (a key another replica rotated
    /// to) triggers one reload of the key ring before the token is refused.
    /// A token verified before is looked up by its hash instead (see [`VerifiedTokens`]).
    async fn verify_access_token(&self, token: &str) -> Result<Arc<AccessClaims>, JwtError> {
        let now_secs = now_ms() / 1000;
        let ring = self.keys.current();
        let token_hash = hash_secret(token);
        if let Some(known) = self.verified.get(&token_hash, &ring, now_secs) {
            return known;
        }
        let expect = VerifyExpectations {
            issuer: &self.settings.issuer,
            audience: &self.settings.audience,
            now_secs,
        };
        let claims = match ring.verify(token, &expect) {
            Err(JwtError::UnknownKey) => match jwt::claimed_kid(token) {
                Some(kid) => self.keys.for_unknown_kid(&kid).await.verify(token, &expect),
                None => Err(JwtError::UnknownKey),
            },
            verified => verified,
        }?;
        let claims = Arc::new(claims);
        if let Some(kid) = jwt::claimed_kid(token) {
            self.verified.insert(token_hash, kid, claims.clone());
        }
        Ok(claims)
    }

    /// The store, for the service's own methods in `login` and `device`; everything outside
    /// the domain goes through a service method instead.
    pub(super) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Writes every token use still pending, due or not: the last write, at shutdown. What
    /// it cannot write is lost (last-use times are informational; no token's validity
    /// depends on them).
    pub async fn write_all_token_uses(&self) -> Result<(), DomainError> {
        let uses = self.usage.drain();
        if uses.is_empty() {
            return Ok(());
        }
        Ok(self.store.record_token_uses(&uses).await?)
    }

    /// Organizations and users.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts::new(self.store())
    }

    /// Sessions people see and end, counting this process's unwritten uses.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self.store(), &self.usage)
    }

    /// Organizations' session and token policies.
    pub fn policies(&self) -> Policies<'_> {
        Policies::new(self.store())
    }

    /// Service accounts and the organization's own scopes.
    pub fn service_accounts(&self) -> ServiceAccounts<'_> {
        ServiceAccounts::new(self.store())
    }

    /// The audit trail.
    pub fn audit(&self) -> AuditTrail<'_> {
        AuditTrail::new(self.store())
    }

    /// The abuse limits under `settings`.
    pub fn limits(&self, settings: LimitSettings) -> Limits<'_> {
        Limits::new(self.store(), settings)
    }

    /// Whether the database answers (and takes writes): the readiness check.
    pub async fn storage_ready(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Writes the last-use records that are due (see [`UsageRecorder::drain_due`]) in one
    /// batch; returns how many, 0 when none were due. When the write fails the records are
    /// put back, so the next call writes them once the database answers again; newer uses of
    /// the same token noted meanwhile win.
    pub async fn write_due_token_uses(&self) -> Result<usize, TokenUseWriteError> {
        let uses = self.usage.drain_due(now_ms());
        if uses.is_empty() {
            return Ok(0);
        }
        match self.store.record_token_uses(&uses).await {
            Ok(()) => {
                self.usage.written(&uses);
                Ok(uses.len())
            }
            Err(error) => {
                let count = uses.len();
                for token_use in uses {
                    self.usage.record(
                        &token_use.token_id,
                        token_use.at,
                        token_use.address.as_deref(),
                    );
                }
                Err(TokenUseWriteError { count, error })
            }
        }
    }

    /// The standing of a refresh grant at `now`, its organization's session policy included.
    /// The last use counts this process's uses not written yet: a grant read from the cache
    /// or the database may be up to a minute behind them.
    fn grant_standing(&self, grant: &RefreshGrant, now: i64) -> Standing {
        Standing {
            session_expired: self.session_expired(
                grant.policy,
                &grant.token_id,
                grant.token_created_at,
                grant.token_last_used_at,
                now,
            ),
            token_expired_at: grant.token_expires_at.filter(|at| now >= *at),
            ..stored_standing(grant)
        }
    }

    /// Whether `policy` has ended a session at `now`. Its last use is the newer of
    /// `stored_last_use` (which the caller may have raised, for example to an access token's
    /// issue time) and this process's uses not written yet.
    fn session_expired(
        &self,
        policy: SessionPolicy,
        session_id: &str,
        created_at: i64,
        stored_last_use: Option<i64>,
        now: i64,
    ) -> bool {
        if policy == SessionPolicy::default() {
            // No policy, the default: no lock taken on the hot path.
            return false;
        }
        let last_use = if policy.idle_expiry_secs.is_some() {
            stored_last_use.max(self.usage.last_use(session_id))
        } else {
            stored_last_use
        };
        policies::has_expired(policy, created_at, last_use, now)
    }

    /// The hot path: checksum, hash, one indexed read, the standing rule, one signature.
    /// An empty `tenant_id` counts as absent. `scope` may ask for fewer API scopes than the
    /// token holds (RFC 6749 section 6); OpenID names in it narrow nothing.
    pub async fn exchange_refresh_token(
        &self,
        refresh_token: &str,
        tenant_id: Option<&str>,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, DomainError> {
        token_format::validate(SecretKind::RefreshToken, refresh_token)
            .map_err(|err| DomainError::InvalidGrant(GrantError::Malformed(err)))?;
        let token_hash = hash_secret(refresh_token);
        let mut grant = self
            .store
            .find_refresh_grant(&token_hash)
            .await?
            .ok_or(DomainError::InvalidGrant(GrantError::Unknown))?;
        let mut now = now_ms();
        standing::check(self.grant_standing(&grant, now))
            .map_err(|denial| DomainError::InvalidGrant(GrantError::Denied(denial)))?;
        if let Some(tenant) = tenant_id.filter(|t| !t.is_empty())
            && tenant != grant.tenant_id
        {
            grant = self.move_session(&token_hash, grant, tenant, meta).await?;
            now = now_ms();
            standing::check(self.grant_standing(&grant, now))
                .map_err(|denial| DomainError::InvalidGrant(GrantError::Denied(denial)))?;
        }
        let granted_scope = self.granted_scope(ScopeSource::of(&grant), scope).await?;
        let now_secs = now / 1000;
        let ttl = i64::try_from(self.settings.access_token_ttl.as_secs()).unwrap_or(i64::MAX);
        // An access token never outlives the refresh token it came from.
        let exp = match grant.token_expires_at {
            Some(expires_at) => now_secs.saturating_add(ttl).min(expires_at / 1000),
            None => now_secs.saturating_add(ttl),
        };
        let refresh_token_expires_in = grant
            .token_expires_at
            .map(|expires_at| u64::try_from((expires_at - now) / 1000).unwrap_or(0));
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: grant.user_id,
            aud: Audience::One(self.settings.audience.clone()),
            exp,
            iat: now_secs,
            nbf: None,
            jti: secrets::random_id()?,
            client_id: grant.client_id,
            scope: granted_scope.unwrap_or(grant.scope),
            tid: grant.tenant_id,
            sid: grant.token_id,
            ep: grant.user_epoch,
        };
        let access_token = self
            .keys
            .current()
            .sign(&claims)
            .map_err(|_| DomainError::Internal("signing failed"))?;
        self.usage.record(&claims.sid, now, meta.address.as_deref());
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in: u64::try_from(exp - now_secs).unwrap_or(0),
            scope: claims.scope,
            refresh_token: None,
            id_token: None,
            refresh_token_expires_in,
            issued_token_type: None,
        })
    }

    /// The `scope` of the access token a grant gets: `None` for an unrestricted token's own
    /// (the OpenID names it always carried) unless API scopes are asked for; a restricted
    /// token's API scopes (or the requested part of them) that its principal still holds.
    /// Asking for a scope the token lacks, or keeping none, is `invalid_scope`.
    pub(super) async fn granted_scope(
        &self,
        grant: ScopeSource<'_>,
        requested: Option<&str>,
    ) -> Result<Option<String>, DomainError> {
        let requested = match requested.map(TokenScopes::parse) {
            Some(TokenScopes::Restricted(names)) => Some(names),
            _ => None,
        };
        let token = TokenScopes::parse(grant.scope);
        let unrestricted = token == TokenScopes::Unrestricted;
        let wanted = match (token, requested) {
            // The path of every token minted before scopes existed: nothing to look up.
            (TokenScopes::Unrestricted, None) => return Ok(None),
            (TokenScopes::Unrestricted, Some(requested)) => requested,
            (TokenScopes::Restricted(names), None) => names,
            (TokenScopes::Restricted(names), Some(requested)) => {
                if let Some(missing) = requested.iter().find(|name| !names.contains(*name)) {
                    return Err(DomainError::InvalidScope(format!(
                        "the {} does not hold the scope {missing}",
                        grant.what
                    )));
                }
                requested
            }
        };
        let role = Role::from_key(grant.role);
        // A restricted token's grant carries them; an unrestricted one asking for one of the
        // organization's own scopes (rare) reads them.
        let read_now;
        let org_held: BTreeSet<&str> = match grant.held_org_scopes {
            Some(held) => held.split_whitespace().collect(),
            None if wanted.iter().any(|name| ApiScope::parse(name).is_none()) => {
                read_now = self
                    .store()
                    .held_org_scopes(grant.org_id, role.key(), grant.user_id)
                    .await?;
                read_now.iter().map(String::as_str).collect()
            }
            None => BTreeSet::new(),
        };
        let held = |name: &String| scopes::holds(role, &org_held, name);
        if unrestricted {
            // Narrowing an unrestricted token: every scope asked for must be held now.
            if let Some(missing) = wanted.iter().find(|name| !held(name)) {
                return Err(DomainError::InvalidScope(format!(
                    "the token's principal (role {role}) does not hold the scope {missing}"
                )));
            }
        }
        let granted: Vec<&str> = wanted
            .iter()
            .filter(|name| held(name))
            .map(String::as_str)
            .collect();
        if granted.is_empty() {
            return Err(DomainError::InvalidScope(format!(
                "the token's principal (role {role}) no longer holds any of its scopes ({})",
                wanted
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        Ok(Some(granted.join(" ")))
    }

    /// A refresh with `tenant_id` naming another organization of the token's identity: the
    /// session moves to the identity's member there (audited in both), and its grant is read
    /// again. Any other tenant is refused.
    async fn move_session(
        &self,
        token_hash: &[u8; 32],
        grant: RefreshGrant,
        tenant: &str,
        meta: &RequestMeta,
    ) -> Result<RefreshGrant, DomainError> {
        let denied = || {
            DomainError::AccessDenied(
                "the user of this refresh token is not a member of that tenant (a named token, \
                 and a refresh token from before sign-in identities, stays with its \
                 organization: mint or sign in again there)"
                    .to_owned(),
            )
        };
        let audit = AuditEvent {
            at: now_ms(),
            action: "session.moved",
            actor: format!("session:{}", grant.token_id),
            org_id: Some(grant.org_id.clone()),
            subject_user_id: Some(grant.user_id.clone()),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(
                serde_json::json!({ "token_id": grant.token_id, "from_tenant": grant.tenant_id, "to_tenant": tenant })
                    .to_string(),
            ),
        };
        self.store
            .move_refresh_token(&grant.token_id, &grant.user_id, tenant, audit)
            .await?
            .ok_or_else(denied)?;
        self.store
            .find_refresh_grant(token_hash)
            .await?
            .filter(|moved| moved.tenant_id == tenant)
            .ok_or_else(denied)
    }

    /// Revokes every refresh token of the presented token's identity (its members in every
    /// organization), and with them every access token issued before now, in one durable
    /// write. A token that is unknown or already dead revokes nothing (otherwise a leaked,
    /// already-revoked token could be used to kill its owner's new tokens again and again);
    /// one that is malformed is refused with [`DomainError::InvalidInput`].
    pub async fn revoke_all(
        &self,
        refresh_token: &str,
        meta: &RequestMeta,
    ) -> Result<RevokeOutcome, DomainError> {
        // A token that fails its own format (a shell quoting accident, a truncated copy) is
        // refused rather than answered 200: whoever revokes a leaked token must learn that
        // nothing was revoked. Only the format is judged, offline, so this tells nothing about
        // which tokens exist; a well-formed unknown or revoked one still gets 200.
        if let Err(reason) = token_format::validate(SecretKind::RefreshToken, refresh_token) {
            return Err(DomainError::InvalidInput(format!(
                "this is not a refresh token ({reason}), so nothing was revoked; copy it again \
                 from 'prism me:token --type refresh' (prism_rt_ and 49 letters and digits)"
            )));
        }
        let (address, user_agent) = (meta.address.clone(), meta.user_agent.clone());
        // Decided next to the write, from the grant as the writer reads it (see
        // `Store::revoke_all_by_token`): the same rule as everywhere else.
        let decide: RevokeDecision = Arc::new(move |grant: &RefreshGrant| {
            revoke_all_admitted(grant).then(|| AuditEvent {
                at: now_ms(),
                action: "tokens.revoked_all",
                actor: format!("session:{}", grant.token_id),
                org_id: Some(grant.org_id.clone()),
                subject_user_id: Some(grant.user_id.clone()),
                address: address.clone(),
                user_agent: user_agent.clone(),
                detail: None,
            })
        });
        // A `moved: false` answer means a concurrent revoke moved the epoch first: the tokens
        // are dead either way.
        let revoked = self
            .store
            .revoke_all_by_token(&hash_secret(refresh_token), decide)
            .await?;
        Ok(match revoked {
            Some(_) => RevokeOutcome::Revoked,
            None => RevokeOutcome::NothingToRevoke,
        })
    }

    /// Verifies a bearer token and applies the standing rule with the user's current state.
    pub async fn authenticate_access_token(&self, token: &str) -> Result<Principal, DomainError> {
        let claims = self
            .verify_access_token(token)
            .await
            .map_err(|err| DomainError::InvalidToken(BearerError::Jwt(err)))?;
        let record = self
            .store
            .principal(&claims.sub, &claims.sid)
            .await?
            .ok_or(DomainError::InvalidToken(BearerError::UnknownUser))?;
        // A session its organization's policy has ended takes its access tokens with it, as
        // a revoked one does. Issuing this token was a use of the session.
        let session_expired = record.session_created_at.is_some_and(|created_at| {
            let issued_at = claims.iat.saturating_mul(1000);
            self.session_expired(
                record.policy,
                &claims.sid,
                created_at,
                record.session_last_used_at.max(Some(issued_at)),
                now_ms(),
            )
        });
        standing::check(Standing {
            user_removed: record.user.removed_at.is_some(),
            user_epoch: record.user.token_epoch,
            token_epoch: claims.ep,
            session_revoked: !matches!(record.session_revoked_at, Some(None)),
            session_expired,
            // An access token's `exp` never passes its refresh token's expiry.
            token_expired_at: None,
        })
        .map_err(|denial| DomainError::InvalidToken(BearerError::Denied(denial)))?;
        let token_allows = TokenScopes::parse(&claims.scope).built_in();
        let held_org_scopes = record
            .held_org_scopes
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Principal {
            user: record.user,
            org: record.org,
            claims,
            token_allows,
            held_org_scopes,
        })
    }

    /// Revokes the one session a token belongs to (RFC 7009): a refresh token's own session,
    /// or the session an access token was issued from. Unknown or invalid tokens revoke nothing.
    pub async fn revoke_one(
        &self,
        token: &str,
        meta: &RequestMeta,
    ) -> Result<RevokeOutcome, DomainError> {
        let session = if token_format::validate(SecretKind::RefreshToken, token).is_ok() {
            self.store
                .find_refresh_grant(&hash_secret(token))
                .await?
                .map(|grant| (grant.token_id, grant.user_id, grant.org_id))
        } else {
            match self.verify_access_token(token).await {
                Ok(claims) => Some((claims.sid.clone(), claims.sub.clone(), String::new())),
                Err(_) => None,
            }
        };
        let Some((token_id, user_id, org_id)) = session else {
            return Ok(RevokeOutcome::NothingToRevoke);
        };
        let audit = AuditEvent {
            at: now_ms(),
            action: "token.revoked",
            actor: format!("session:{token_id}"),
            org_id: Some(org_id).filter(|id| !id.is_empty()),
            subject_user_id: Some(user_id.clone()),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(serde_json::json!({ "token_id": token_id }).to_string()),
        };
        Ok(
            if self
                .store
                .revoke_session(&token_id, &user_id, audit)
                .await?
            {
                RevokeOutcome::Revoked
            } else {
                RevokeOutcome::NothingToRevoke
            },
        )
    }

    /// Signs an OpenID Connect ID token for `user`, for the client that logged in.
    pub fn id_token(
        &self,
        user: &User,
        client_id: &str,
        nonce: Option<&str>,
    ) -> Result<String, DomainError> {
        let now = now_ms() / 1000;
        let mut claims = serde_json::json!({
            "iss": self.settings.issuer,
            "sub": user.id,
            "aud": client_id,
            "iat": now,
            "exp": now + 3600,
            "email": user.email,
            "name": user.name,
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = serde_json::Value::String(nonce.to_owned());
        }
        self.keys
            .current()
            .sign_id_token(&claims)
            .map_err(|_| DomainError::Internal("signing failed"))
    }
}

/// What the stored grant says of its token's standing; a session policy's expiry is not
/// stored, so it is left out here.
fn stored_standing(grant: &RefreshGrant) -> Standing {
    Standing {
        user_removed: grant.user_removed_at.is_some(),
        user_epoch: grant.user_epoch,
        token_epoch: grant.token_epoch,
        session_revoked: grant.token_revoked_at.is_some(),
        session_expired: false,
        // Like a session policy's expiry: a holder whose token expired may still sign out
        // everywhere with it.
        token_expired_at: None,
    }
}

/// Whether presenting a refresh token with this grant signs its user out everywhere: the
/// standing rule, except that a session its organization's policy has ended still may. That
/// expiry is not stored (a longer policy would bring the session back), and a user whose old
/// token expired must still be able to end a stolen one in use. The revoke moves the epoch,
/// so the token revokes nothing a second time.
fn revoke_all_admitted(grant: &RefreshGrant) -> bool {
    standing::check(stored_standing(grant)).is_ok()
}
