//! Sessions: each live refresh token is a session (with its name, client, creation and last
//! use). Minting a refresh token starts one (browser and device login, `prismd tokens
//! create`). Everyone lists and revokes their own; Owners and Admins those of their
//! organization's members (Admins not Owners'). Someone else's session, or a user of another
//! organization, looks exactly like an unknown id.

use prism_proto::token_format::{self, SecretKind};

use std::collections::{BTreeSet, HashMap};

use super::accounts::Accounts;
use super::clients::{CLI_CLIENT_ID, DEFAULT_SCOPE};
use super::policies::{self, Policies};
use super::roles::Role;
use super::scopes::{ApiScope, ApiScopes, TokenScopes};
use super::service_accounts::checked_holder_scopes;
use super::usage::UsageRecorder;
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{
    AuditEvent, Identity, MAX_LISTED_SESSIONS, NewRefreshToken, SessionPolicy, SessionRecord,
    Store, StoreError, User,
};
use crate::tokens::hash_secret;

const NO_SUCH_SESSION: &str = "no such session";
const NO_SUCH_USER: &str = "no such user in your organization";

/// A live session and when its organization's session policy will end it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub record: SessionRecord,
    /// ms since the epoch; `None` when no policy applies.
    pub expires_at: Option<i64>,
}

/// Only Owners manage Owners' sessions (the caller already manages users).
fn may_manage_sessions_of(actor: &User, target: &User) -> Result<(), DomainError> {
    if Role::of(target) == Role::Owner && Role::of(actor) != Role::Owner {
        return Err(DomainError::AccessDenied(
            "Admins cannot manage Owners' sessions".into(),
        ));
    }
    Ok(())
}

fn revoke_all_event(actor: &User, holder: &User, meta: &RequestMeta) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action: "tokens.revoked_all",
        actor: format!("user:{}", actor.id),
        org_id: Some(holder.org_id.clone()),
        subject_user_id: Some(holder.id.clone()),
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        detail: None,
    }
}

/// How a new session (refresh token) came to be.
#[derive(Debug, Clone, Default)]
pub struct SessionOrigin {
    /// A name the user sees, for example "CLI login" or the CI pipeline's name.
    pub name: Option<String>,
    /// `None` means [`DEFAULT_SCOPE`].
    pub scope: Option<String>,
    /// The authorization code it was issued for.
    pub from_code: Option<[u8; 32]>,
    /// Minted by name (`createToken`): the name is unique among the principal's live named
    /// tokens.
    pub named: bool,
    /// When it stops working (ms).
    pub expires_at: Option<i64>,
    /// The member who minted it.
    pub created_by: Option<String>,
}

/// A token to mint by name (`createToken`, `prismd tokens create`), as given.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub name: String,
    /// `None`: unrestricted (the principal's role).
    pub scopes: Option<Vec<String>>,
    /// When it expires (ms since the epoch); `None`: never, unless the organization has a
    /// maximum lifetime, which then requires one.
    pub expires_at: Option<i64>,
}

/// Who mints: a member with the scopes of the token they call with, or an operator.
#[derive(Debug, Clone, Copy)]
pub enum Minter<'a> {
    Member {
        user: &'a User,
        /// The API scopes of the caller's own token.
        token: &'a TokenScopes,
        /// What the caller may do now (role narrowed by token).
        effective: ApiScopes,
    },
    Operator,
}

/// A refused mint: the input field at fault and why.
pub type MintError = (&'static str, DomainError);

/// The longest token name.
const MAX_TOKEN_NAME: usize = 100;

/// Sessions over the store, with this process's uses not written yet.
pub struct Sessions<'s> {
    store: &'s dyn Store,
    usage: &'s UsageRecorder,
}

impl<'s> Sessions<'s> {
    /// `usage`: the uses this process noted and may not have written yet (a process that
    /// exchanges no tokens, such as an operator command, passes an empty recorder).
    pub fn new(store: &'s dyn Store, usage: &'s UsageRecorder) -> Self {
        Self { store, usage }
    }

    /// Whose sessions the actor may manage: their own, or (Owners and Admins) a member's; only
    /// Owners manage Owners'. A caller who manages nobody gets "unknown user" for anyone else,
    /// so the answer does not tell which ids exist.
    async fn session_holder(&self, actor: &User, user_id: &str) -> Result<User, DomainError> {
        if user_id == actor.id {
            return Ok(actor.clone());
        }
        if !Role::of(actor).manages_users() {
            return Err(DomainError::NotFound(NO_SUCH_USER.into()));
        }
        let target = Accounts::new(self.store).member(actor, user_id).await?;
        may_manage_sessions_of(actor, &target)?;
        Ok(target)
    }

    /// The live sessions of `user_id` (the actor or a member they manage), newest first. Sessions
    /// the organization's policy has ended are left out, as the token endpoint refuses them;
    /// this process's uses not written yet count as uses.
    pub async fn list(&self, actor: &User, user_id: &str) -> Result<Vec<LiveSession>, DomainError> {
        let holder = self.session_holder(actor, user_id).await?;
        let records = self
            .store
            .list_sessions(&holder.id, MAX_LISTED_SESSIONS)
            .await?;
        let policy = self
            .store
            .session_policy(&holder.org_id)
            .await?
            .unwrap_or_default();
        Ok(self.still_live(records, policy))
    }

    /// [`Self::list`] for each of `members`, already read (a page of the organization's
    /// users): one read of all their sessions and one of the policy, not three reads per
    /// member. Each member's answer, in their order, is what [`Self::list`] would give.
    pub async fn list_for_members(
        &self,
        actor: &User,
        members: &[User],
    ) -> Result<Vec<Result<Vec<LiveSession>, DomainError>>, DomainError> {
        let allowed: Vec<Result<&User, DomainError>> = members
            .iter()
            .map(|member| {
                if member.id == actor.id {
                    return Ok(member);
                }
                // A member of another organization is unknown here, as `member` would say.
                if !Role::of(actor).manages_users() || member.org_id != actor.org_id {
                    return Err(DomainError::NotFound(NO_SUCH_USER.into()));
                }
                may_manage_sessions_of(actor, member).map(|()| member)
            })
            .collect();
        let holder_ids: Vec<&str> = allowed
            .iter()
            .filter_map(|holder| holder.as_ref().ok().map(|holder| holder.id.as_str()))
            .collect();
        if holder_ids.is_empty() {
            return Ok(allowed
                .into_iter()
                .map(|holder| holder.map(|_| Vec::new()))
                .collect());
        }
        let mut by_holder: HashMap<String, Vec<SessionRecord>> = HashMap::new();
        for record in self
            .store
            .list_sessions_of_users(&holder_ids, MAX_LISTED_SESSIONS)
            .await?
        {
            by_holder
                .entry(record.user_id.clone())
                .or_default()
                .push(record);
        }
        let policy = self
            .store
            .session_policy(&actor.org_id)
            .await?
            .unwrap_or_default();
        Ok(allowed
            .into_iter()
            .map(|holder| {
                let own = by_holder.remove(&holder?.id).unwrap_or_default();
                Ok(self.still_live(own, policy))
            })
            .collect())
    }

    /// The sessions among `records` that `policy` has not ended, with when it will.
    fn still_live(&self, records: Vec<SessionRecord>, policy: SessionPolicy) -> Vec<LiveSession> {
        let now = now_ms();
        records
            .into_iter()
            .map(|record| {
                let last_use = record.last_used_at.max(self.usage.last_use(&record.id));
                let by_policy = policies::expires_at(policy, record.created_at, last_use);
                // The earlier of the policy's end and the token's own expiry.
                let expires_at = match (by_policy, record.expires_at) {
                    (Some(policy_end), Some(own)) => Some(policy_end.min(own)),
                    (policy_end, own) => policy_end.or(own),
                };
                LiveSession { record, expires_at }
            })
            .filter(|session| session.expires_at.is_none_or(|end| now < end))
            .collect()
    }

    /// Ends one session: its refresh token stops working, and so do the access tokens issued
    /// from it (they carry its id), at once. Returns the session as it was.
    pub async fn revoke(
        &self,
        actor: &User,
        session_id: &str,
        meta: &RequestMeta,
    ) -> Result<SessionRecord, DomainError> {
        let not_found = || DomainError::NotFound(NO_SUCH_SESSION.into());
        let session = self
            .store
            .live_session(session_id.trim())
            .await?
            .ok_or_else(not_found)?;
        // Another user's session id must not be told apart from an unknown one.
        let holder = match self.session_holder(actor, &session.user_id).await {
            Err(DomainError::NotFound(_)) => return Err(not_found()),
            other => other?,
        };
        let audit = AuditEvent {
            at: now_ms(),
            action: "token.revoked",
            actor: format!("user:{}", actor.id),
            org_id: Some(holder.org_id.clone()),
            subject_user_id: Some(holder.id.clone()),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(serde_json::json!({ "token_id": session.id }).to_string()),
        };
        if !self
            .store
            .revoke_session(&session.id, &holder.id, audit)
            .await?
        {
            // Revoked by someone else in the meantime.
            return Err(not_found());
        }
        Ok(session)
    }

    /// Ends every session of `user_id` (the actor or a member they manage), and every access
    /// token, in one durable write: what `/auth/revoke` does with a refresh token. Returns whose.
    /// Revokes every refresh token of `identity` in every organization it is a member of
    /// (each member revoking its own, audited as `tokens.revoked_all`): "sign out everywhere"
    /// after a password change.
    pub async fn sign_out_everywhere(
        &self,
        identity: &Identity,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let memberships = Accounts::new(self.store).memberships(&identity.id).await?;
        for membership in memberships.iter().filter(|m| m.user.is_joined()) {
            self.revoke_all(&membership.user, &membership.user.id, meta)
                .await?;
        }
        Ok(())
    }

    pub async fn revoke_all(
        &self,
        actor: &User,
        user_id: &str,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        let mut holder = self.session_holder(actor, user_id).await?;
        // The epoch we read may be stale (another replica revoked since; a cached read). A
        // revoke that finds the epoch moved changed nothing, and tokens minted under the new epoch
        // would survive: read again and retry, a few times.
        for _ in 0..3 {
            if self
                .store
                .revoke_all_tokens(
                    &holder.id,
                    holder.token_epoch,
                    revoke_all_event(actor, &holder, meta),
                )
                .await?
            {
                return Ok(holder);
            }
            holder = self
                .store
                .member(&holder.org_id, &holder.id)
                .await?
                .ok_or_else(|| DomainError::NotFound(NO_SUCH_USER.into()))?;
        }
        Err(DomainError::Conflict(
            "the sessions changed while revoking them; try again".into(),
        ))
    }

    /// Mints a refresh token for `user`; only its hash is stored. Returns the secret. Needs no
    /// signing key, so the admin commands mint through a `Sessions` of their own.
    pub async fn mint_refresh_token(
        &self,
        user: &User,
        origin: SessionOrigin,
        actor: String,
        meta: &RequestMeta,
    ) -> Result<String, DomainError> {
        let (secret, _) = self.mint(user, origin, actor, meta).await?;
        Ok(secret)
    }

    /// [`Self::mint_refresh_token`], also returning the new session.
    async fn mint(
        &self,
        user: &User,
        origin: SessionOrigin,
        actor: String,
        meta: &RequestMeta,
    ) -> Result<(String, SessionRecord), DomainError> {
        let secret = token_format::generate(SecretKind::RefreshToken)
            .map_err(|_| DomainError::Internal("randomness failed"))?;
        let now = now_ms();
        let token_id = uuid::Uuid::new_v4().to_string();
        let scope = origin.scope.unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
        let mut detail = serde_json::json!({ "token_id": token_id, "name": origin.name });
        if origin.named {
            detail["scopes"] = serde_json::json!(TokenScopes::parse(&scope).names());
            detail["expires_at"] = serde_json::json!(origin.expires_at);
        }
        let session = SessionRecord {
            id: token_id.clone(),
            user_id: user.id.clone(),
            client_id: CLI_CLIENT_ID.to_owned(),
            name: origin.name.clone(),
            created_at: now,
            last_used_at: None,
            last_used_addr: None,
            scope: scope.clone(),
            named: origin.named,
            expires_at: origin.expires_at,
        };
        let detail = detail.to_string();
        let inserted = self
            .store
            .insert_refresh_token(
                NewRefreshToken {
                    id: token_id,
                    token_hash: hash_secret(&secret),
                    user_id: user.id.clone(),
                    client_id: CLI_CLIENT_ID.to_owned(),
                    name: origin.name,
                    scope,
                    created_at: now,
                    from_code: origin.from_code,
                    named: origin.named,
                    expires_at: origin.expires_at,
                    created_by: origin.created_by,
                },
                AuditEvent {
                    at: now,
                    action: "token.minted",
                    actor,
                    org_id: Some(user.org_id.clone()),
                    subject_user_id: Some(user.id.clone()),
                    address: meta.address.clone(),
                    user_agent: meta.user_agent.clone(),
                    detail: Some(detail),
                },
            )
            .await
            .map_err(|err| match err {
                StoreError::Conflict(_) => DomainError::Conflict(
                    "a live token with this name exists; revoke it or choose another name"
                        .to_owned(),
                ),
                other => other.into(),
            })?;
        if !inserted {
            return Err(DomainError::NotFound(
                "the user does not exist or has been removed".to_owned(),
            ));
        }
        Ok((secret, session))
    }

    /// Mints a named token for `holder` (the minter themselves, or a service account of
    /// theirs), shown once: the secret and its session. Its scopes narrow, never widen: each
    /// must be one the holder may hold now and, when the minter's own token is restricted,
    /// one that token carries. Its expiry must be in the future and within the organization's
    /// maximum token lifetime, when one is set.
    pub async fn create_token(
        &self,
        minter: Minter<'_>,
        holder: &User,
        request: TokenRequest,
        meta: &RequestMeta,
    ) -> Result<(String, SessionRecord), MintError> {
        let name = request.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME {
            return Err((
                "name",
                DomainError::InvalidInput(format!(
                    "a token's name has 1 to {MAX_TOKEN_NAME} characters"
                )),
            ));
        }
        let scope = self
            .checked_scopes(minter, holder, request.scopes)
            .await
            .map_err(|err| ("scopes", err))?;
        let expires_at = self
            .checked_expiry(&holder.org_id, request.expires_at)
            .await
            .map_err(|err| ("expiresAt", err))?;
        let (actor, created_by) = match minter {
            Minter::Member { user, .. } => (format!("user:{}", user.id), Some(user.id.clone())),
            Minter::Operator => ("operator".to_owned(), None),
        };
        let origin = SessionOrigin {
            name: Some(name),
            scope,
            from_code: None,
            named: true,
            expires_at,
            created_by,
        };
        self.mint(holder, origin, actor, meta)
            .await
            .map_err(|err| match err {
                DomainError::Conflict(_) => ("name", err),
                other => ("__all__", other),
            })
    }

    /// The stored `scope` of a new token: `None` for unrestricted, else its API scope names.
    async fn checked_scopes(
        &self,
        minter: Minter<'_>,
        holder: &User,
        scopes: Option<Vec<String>>,
    ) -> Result<Option<String>, DomainError> {
        let restricted_minter = match minter {
            Minter::Member {
                token, effective, ..
            } => match token {
                TokenScopes::Restricted(names) => Some((names.clone(), effective)),
                TokenScopes::Unrestricted => None,
            },
            Minter::Operator => None,
        };
        let Some(scopes) = scopes else {
            if restricted_minter.is_some() {
                return Err(DomainError::InvalidInput(
                    "the token you call with is restricted, so a token it mints must be too: \
                     give scopes within yours"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let names: BTreeSet<String> = scopes.iter().map(|s| s.trim().to_owned()).collect();
        if names.is_empty() || names.iter().any(String::is_empty) {
            return Err(DomainError::InvalidInput(
                "give at least one scope, or none at all for the full access of the role".into(),
            ));
        }
        checked_holder_scopes(self.store, holder, &names).await?;
        if let Some((caller_names, effective)) = restricted_minter {
            let beyond = names.iter().find(|name| match ApiScope::parse(name) {
                Some(scope) => !effective.contains(scope),
                None => !caller_names.contains(*name),
            });
            if let Some(beyond) = beyond {
                return Err(DomainError::InvalidInput(format!(
                    "the token you call with does not hold the scope {beyond}, so it cannot \
                     give it"
                )));
            }
        }
        Ok(Some(names.into_iter().collect::<Vec<_>>().join(" ")))
    }

    /// A new token's expiry, checked against now and the organization's maximum lifetime.
    async fn checked_expiry(
        &self,
        org_id: &str,
        expires_at: Option<i64>,
    ) -> Result<Option<i64>, DomainError> {
        let now = now_ms();
        if expires_at.is_some_and(|at| at <= now) {
            return Err(DomainError::InvalidInput(
                "the expiry must be in the future".into(),
            ));
        }
        let longest = policies::MAX_POLICY_DAYS * policies::SECONDS_PER_DAY * 1000;
        if expires_at.is_some_and(|at| at > now.saturating_add(longest)) {
            return Err(DomainError::InvalidInput(format!(
                "a token lives at most {} days; give an earlier expiry, or none",
                policies::MAX_POLICY_DAYS
            )));
        }
        let Some(max_secs) = Policies::new(self.store).token_lifetime_max(org_id).await? else {
            return Ok(expires_at);
        };
        let max_days = policies::days_of(max_secs);
        let latest = now.saturating_add(max_secs.saturating_mul(1000));
        match expires_at {
            None => Err(DomainError::InvalidInput(format!(
                "this organization's tokens live at most {max_days} days: give an expiry \
                 within {max_days} days"
            ))),
            Some(at) if at > latest => Err(DomainError::InvalidInput(format!(
                "this organization's tokens live at most {max_days} days; the expiry asked \
                 for is later"
            ))),
            Some(at) => Ok(Some(at)),
        }
    }
}
