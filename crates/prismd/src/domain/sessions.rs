//! Sessions: each live refresh token is a session (with its name, client, creation and last
//! use). Minting a refresh token starts one (browser and device login, `prismd tokens
//! create`). Everyone lists and revokes their own; Owners and Admins those of their
//! organization's members (Admins not Owners'). Someone else's session, or a user of another
//! organization, looks exactly like an unknown id.

use prism_proto::token_format::{self, SecretKind};

use super::accounts::Accounts;
use super::clients::{CLI_CLIENT_ID, DEFAULT_SCOPE};
use super::policies;
use super::roles::Role;
use super::usage::UsageRecorder;
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{AuditEvent, MAX_LISTED_SESSIONS, NewRefreshToken, SessionRecord, Store, User};
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
}

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
        let actor_role = Role::of(actor);
        if !actor_role.manages_users() {
            return Err(DomainError::NotFound(NO_SUCH_USER.into()));
        }
        let target = Accounts::new(self.store).member(actor, user_id).await?;
        if Role::of(&target) == Role::Owner && actor_role != Role::Owner {
            return Err(DomainError::AccessDenied(
                "Admins cannot manage Owners' sessions".into(),
            ));
        }
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
        let now = now_ms();
        Ok(records
            .into_iter()
            .map(|record| {
                let last_use = record.last_used_at.max(self.usage.last_use(&record.id));
                let expires_at = policies::expires_at(policy, record.created_at, last_use);
                LiveSession { record, expires_at }
            })
            .filter(|session| session.expires_at.is_none_or(|end| now < end))
            .collect())
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
        let secret = token_format::generate(SecretKind::RefreshToken)
            .map_err(|_| DomainError::Internal("randomness failed"))?;
        let now = now_ms();
        let token_id = uuid::Uuid::new_v4().to_string();
        let detail = serde_json::json!({ "token_id": token_id, "name": origin.name }).to_string();
        let inserted = self
            .store
            .insert_refresh_token(
                NewRefreshToken {
                    id: token_id,
                    token_hash: hash_secret(&secret),
                    user_id: user.id.clone(),
                    client_id: CLI_CLIENT_ID.to_owned(),
                    name: origin.name,
                    scope: origin.scope.unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
                    created_at: now,
                    from_code: origin.from_code,
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
            .await?;
        if !inserted {
            return Err(DomainError::NotFound(
                "the user does not exist or has been removed".to_owned(),
            ));
        }
        Ok(secret)
    }
}
