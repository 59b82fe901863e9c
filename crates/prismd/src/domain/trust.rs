//! Keyless CI (issue 18): an organization's trust policies, which say which OIDC tokens (of a
//! CI system, a Kubernetes cluster) act as which of its service accounts, and the exchange of
//! such a token for one of our access tokens (RFC 8693 at `/oauth/token`, and its JSON twin
//! `/auth/exchange`). Verifying the token itself (keys, signature, times) is `crate::oidc`;
//! matching it to a policy, spending it once and issuing the access token is here.
//!
//! Each exchange starts a session of the service account (a refresh token row whose secret is
//! never issued, tagged with the policy, expiring with the access token), and the access token
//! names it: revoking one job's token ends that job only, and disabling, deleting or rewriting
//! the policy revokes all its sessions, so every token it issued ends at once on every replica
//! through the one standing rule.

use std::collections::BTreeSet;

use prism_proto::wire::TokenResponse;
use sha2::{Digest, Sha256};

use super::accounts::refused;
use super::auth::{AuthService, ScopeSource};
use super::roles::Role;
use super::service_accounts::{self, ServiceAccounts, checked_holder_scopes};
use super::{DomainError, RequestMeta, now_ms, secrets};
use crate::oidc::claims::{self, ClaimCondition};
use crate::oidc::{self, VerifiedToken, VerifyError};
use crate::store::{
    AuditEvent, ExchangeWrite, Organization, PolicyExchange, Store, TrustCandidate,
    TrustPolicyRecord, User,
};
use crate::tokens::AccessClaims;
use crate::tokens::jwt::Audience;

/// The `client_id` of access tokens issued by a trust policy.
pub const KEYLESS_CLIENT_ID: &str = "keyless";
/// RFC 8693's type of the token we issue.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The subject token types we accept (RFC 8693 section 3).
pub const SUBJECT_TOKEN_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];

/// A policy's default access-token lifetime and the bounds of both lifetimes (seconds).
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: i64 = 3600;
pub const DEFAULT_MAX_TOKEN_AGE_SECS: i64 = 3600;
const MIN_LIFETIME_SECS: i64 = 60;
const MAX_LIFETIME_SECS: i64 = 86_400;
const MAX_NAME: usize = 100;
const MAX_AUDIENCE: usize = 500;
/// The most of an unverified issuer (a client's text) repeated in a message.
const MAX_ECHOED_ISSUER: usize = 200;

const NO_SUCH_POLICY: &str = "no such trust policy in your organization";

/// Why an OIDC token was not exchanged. The texts go to the pipeline's log: they say what to
/// fix and never repeat the token, nor a policy's expected values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectTokenError {
    /// The token itself is unusable: format, algorithm, key, signature, times.
    #[error("{0}")]
    Invalid(String),
    /// A good token that no policy accepts (issuer, audience, age, a condition).
    #[error("{0}")]
    Untrusted(String),
    /// The token was exchanged before.
    #[error("{0}")]
    Replayed(String),
    /// The issuer's keys could not be fetched and none are cached (HTTP 503).
    #[error("{0}")]
    IssuerUnavailable(String),
}

/// A trust policy as people see it.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    pub record: TrustPolicyRecord,
    pub conditions: Vec<ClaimCondition>,
    pub scopes: Vec<String>,
}

impl TrustPolicy {
    fn of(record: TrustPolicyRecord) -> Result<Self, DomainError> {
        let conditions = serde_json::from_str(&record.conditions).map_err(|_| {
            DomainError::Internal("a stored trust policy's conditions are unreadable")
        })?;
        let scopes = record
            .scopes
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Self {
            record,
            conditions,
            scopes,
        })
    }
}

/// A new policy as given; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct NewTrustPolicy {
    pub name: String,
    pub description: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub conditions: Vec<ClaimCondition>,
    /// The service account's id or name.
    pub service_account: String,
    pub scopes: Vec<String>,
    pub access_token_ttl_secs: Option<i64>,
    pub max_token_age_secs: Option<i64>,
    pub enabled: Option<bool>,
}

/// A change of a policy: `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicyChanges {
    pub name: Option<String>,
    /// `Some("")` clears it.
    pub description: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub conditions: Option<Vec<ClaimCondition>>,
    pub service_account: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub access_token_ttl_secs: Option<i64>,
    pub max_token_age_secs: Option<i64>,
    pub enabled: Option<bool>,
}

/// A problem with a policy's input: the field it is about (as the GraphQL input names it,
/// `id` for the policy, `__all__` for the whole request) and the error.
pub type PolicyError = (&'static str, DomainError);

fn on(field: &'static str) -> impl FnOnce(DomainError) -> PolicyError {
    move |err| (field, err)
}

/// What the store's refusal of a policy write means.
fn policy_refused(refusal: crate::store::Refusal) -> PolicyError {
    match refusal {
        crate::store::Refusal::NameTaken => (
            "name",
            DomainError::Conflict("the organization has a trust policy of that name".into()),
        ),
        crate::store::Refusal::NotFound => (
            "serviceAccountId",
            DomainError::InvalidInput("no such service account in your organization".into()),
        ),
        other => ("__all__", refused(other)),
    }
}

fn managers_only(actor: Option<&User>) -> Result<(), DomainError> {
    match actor {
        Some(actor) if !Role::of(actor).manages_users() => Err(DomainError::AccessDenied(
            "only Owners and Admins can manage trust policies".into(),
        )),
        _ => Ok(()),
    }
}

fn checked_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(DomainError::InvalidInput(format!(
            "a trust policy's name has 1 to {MAX_NAME} characters, none of them control characters"
        )));
    }
    Ok(name.to_owned())
}

/// A description as given, trimmed; an empty one clears it.
fn checked_description(description: Option<String>) -> Result<Option<String>, DomainError> {
    Ok(service_accounts::checked_description(description)?.filter(|d| !d.is_empty()))
}

fn checked_audience(audience: &str) -> Result<String, DomainError> {
    let audience = audience.trim();
    if audience.is_empty()
        || audience.chars().count() > MAX_AUDIENCE
        || audience
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DomainError::InvalidInput(format!(
            "the audience is the exact `aud` value the issuer puts in the token: 1 to \
             {MAX_AUDIENCE} characters without spaces"
        )));
    }
    Ok(audience.to_owned())
}

fn checked_lifetime(what: &str, secs: i64, longest: i64) -> Result<i64, DomainError> {
    if !(MIN_LIFETIME_SECS..=longest).contains(&secs) {
        return Err(DomainError::InvalidInput(format!(
            "{what} is {MIN_LIFETIME_SECS} to {longest} seconds"
        )));
    }
    Ok(secs)
}

fn audit_event(
    action: &'static str,
    actor: Option<&User>,
    policy: &TrustPolicyRecord,
    meta: &RequestMeta,
    detail: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action,
        actor: actor.map_or_else(|| "operator".to_owned(), |a| format!("user:{}", a.id)),
        org_id: Some(policy.org_id.clone()),
        subject_user_id: Some(policy.service_account_id.clone()),
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        detail: Some(detail.to_string()),
    }
}

/// The audit detail of a policy: every setting, never a secret (a policy has none).
fn described(policy: &TrustPolicyRecord) -> serde_json::Value {
    serde_json::json!({
        "policy_id": policy.id,
        "name": policy.name,
        "issuer": policy.issuer,
        "audience": policy.audience,
        "conditions": serde_json::from_str::<serde_json::Value>(&policy.conditions).unwrap_or_default(),
        "service_account_id": policy.service_account_id,
        "scopes": policy.scopes,
        "access_token_ttl_secs": policy.access_token_ttl_secs,
        "max_token_age_secs": policy.max_token_age_secs,
        "enabled": policy.enabled,
    })
}

/// Trust policies over the store.
pub struct TrustPolicies<'s> {
    store: &'s dyn Store,
    /// Whether `http://` issuers are allowed (tests only).
    allow_http_issuers: bool,
    /// The server's access-token lifetime: no policy issues longer ones.
    longest_access_token_secs: i64,
}

impl<'s> TrustPolicies<'s> {
    pub fn new(
        store: &'s dyn Store,
        allow_http_issuers: bool,
        longest_access_token_secs: i64,
    ) -> Self {
        Self {
            store,
            allow_http_issuers,
            longest_access_token_secs: longest_access_token_secs
                .clamp(MIN_LIFETIME_SECS, MAX_LIFETIME_SECS),
        }
    }

    /// The organization's policies, by name (Owners and Admins; `None`: an operator).
    pub async fn list(
        &self,
        actor: Option<&User>,
        org_id: &str,
    ) -> Result<Vec<TrustPolicy>, DomainError> {
        managers_only(actor)?;
        self.store
            .trust_policies(org_id)
            .await?
            .into_iter()
            .map(TrustPolicy::of)
            .collect()
    }

    /// One policy of the organization, by id or by name.
    pub async fn find(
        &self,
        actor: Option<&User>,
        org_id: &str,
        id_or_name: &str,
    ) -> Result<TrustPolicy, DomainError> {
        let wanted = id_or_name.trim();
        self.list(actor, org_id)
            .await?
            .into_iter()
            .find(|policy| policy.record.id == wanted || policy.record.name == wanted)
            .ok_or_else(|| DomainError::NotFound(NO_SUCH_POLICY.into()))
    }

    fn checked_issuer(&self, issuer: &str) -> Result<String, DomainError> {
        let issuer = issuer.trim();
        oidc::check_issuer_url(issuer, self.allow_http_issuers)
            .map_err(DomainError::InvalidInput)?;
        Ok(issuer.to_owned())
    }

    /// The scopes a policy may give its service account: held by it now.
    async fn checked_scopes(
        &self,
        account: &User,
        scopes: &[String],
    ) -> Result<String, DomainError> {
        let names: BTreeSet<String> = scopes
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(String::new());
        }
        checked_holder_scopes(self.store, account, &names).await?;
        Ok(names.into_iter().collect::<Vec<_>>().join(" "))
    }

    /// Applies `changes` to `policy`, checking each field given, and only those: a policy
    /// whose stored settings a later server would refuse (a shorter --access-token-ttl, a
    /// plain-HTTP issuer of a test) can still be renamed or disabled. Returns the policy and
    /// its service account.
    async fn apply(
        &self,
        org_id: &str,
        mut policy: TrustPolicyRecord,
        changes: TrustPolicyChanges,
    ) -> Result<(TrustPolicyRecord, User), PolicyError> {
        if let Some(name) = changes.name {
            policy.name = checked_name(&name).map_err(on("name"))?;
        }
        if let Some(description) = changes.description {
            policy.description =
                checked_description(Some(description)).map_err(on("description"))?;
        }
        if let Some(issuer) = changes.issuer {
            policy.issuer = self.checked_issuer(&issuer).map_err(on("issuer"))?;
        }
        if let Some(audience) = changes.audience {
            policy.audience = checked_audience(&audience).map_err(on("audience"))?;
        }
        if let Some(conditions) = changes.conditions {
            claims::validate_conditions(&conditions)
                .map_err(|message| ("conditions", DomainError::InvalidInput(message)))?;
            policy.conditions = serde_json::to_string(&conditions).map_err(|_| {
                (
                    "conditions",
                    DomainError::Internal("conditions did not serialize"),
                )
            })?;
        }
        if let Some(secs) = changes.access_token_ttl_secs {
            policy.access_token_ttl_secs = checked_lifetime(
                "the access-token lifetime",
                secs,
                self.longest_access_token_secs,
            )
            .map_err(on("accessTokenLifetimeSeconds"))?;
        }
        if let Some(secs) = changes.max_token_age_secs {
            policy.max_token_age_secs =
                checked_lifetime("the maximum token age", secs, MAX_LIFETIME_SECS)
                    .map_err(on("maxTokenAgeSeconds"))?;
        }
        if let Some(enabled) = changes.enabled {
            policy.enabled = enabled;
        }
        let moved = changes.service_account.is_some();
        let wanted = changes
            .service_account
            .unwrap_or_else(|| policy.service_account_id.clone());
        let account = ServiceAccounts::new(self.store)
            .find(org_id, &wanted)
            .await
            .map_err(|err| match err {
                DomainError::NotFound(message) => {
                    ("serviceAccountId", DomainError::InvalidInput(message))
                }
                other => ("serviceAccountId", other),
            })?;
        policy.service_account_id = account.id.clone();
        let scopes = match changes.scopes {
            Some(scopes) => Some(scopes),
            // The scopes it gives must hold for its new account too.
            None if moved && !policy.scopes.is_empty() => Some(
                policy
                    .scopes
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            ),
            None => None,
        };
        if let Some(scopes) = scopes {
            policy.scopes = self
                .checked_scopes(&account, &scopes)
                .await
                .map_err(on("scopes"))?;
        }
        Ok((policy, account))
    }

    /// Creates a policy in `org` (Owners and Admins; `None`: an operator), audited as
    /// `trust_policy.created`.
    pub async fn create(
        &self,
        actor: Option<&User>,
        org: &Organization,
        input: NewTrustPolicy,
        meta: &RequestMeta,
    ) -> Result<TrustPolicy, PolicyError> {
        managers_only(actor).map_err(on("__all__"))?;
        let now = now_ms();
        let blank = TrustPolicyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org.id.clone(),
            name: String::new(),
            description: None,
            issuer: String::new(),
            audience: String::new(),
            conditions: "[]".into(),
            service_account_id: String::new(),
            scopes: String::new(),
            access_token_ttl_secs: 0,
            max_token_age_secs: 0,
            enabled: true,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        let every_field = TrustPolicyChanges {
            name: Some(input.name),
            description: input.description,
            issuer: Some(input.issuer),
            audience: Some(input.audience),
            conditions: Some(input.conditions),
            service_account: Some(input.service_account),
            scopes: Some(input.scopes),
            access_token_ttl_secs: Some(
                input
                    .access_token_ttl_secs
                    .unwrap_or(DEFAULT_ACCESS_TOKEN_TTL_SECS.min(self.longest_access_token_secs)),
            ),
            max_token_age_secs: Some(
                input
                    .max_token_age_secs
                    .unwrap_or(DEFAULT_MAX_TOKEN_AGE_SECS),
            ),
            enabled: input.enabled,
        };
        let (policy, _account) = self.apply(&org.id, blank, every_field).await?;
        let audit = audit_event(
            "trust_policy.created",
            actor,
            &policy,
            meta,
            described(&policy),
        );
        let created = self
            .store
            .create_trust_policy(policy, actor.map(|a| a.id.as_str()), audit)
            .await
            .map_err(|err| ("__all__", err.into()))?
            .map_err(policy_refused)?;
        TrustPolicy::of(created).map_err(on("__all__"))
    }

    /// Changes a policy (Owners and Admins), audited as `trust_policy.updated` with the
    /// fields changed. A change of what it trusts or grants (issuer, audience, conditions,
    /// service account, scopes) or disabling it ends every access token it issued.
    pub async fn update(
        &self,
        actor: Option<&User>,
        org: &Organization,
        id: &str,
        changes: TrustPolicyChanges,
        meta: &RequestMeta,
    ) -> Result<TrustPolicy, PolicyError> {
        managers_only(actor).map_err(on("__all__"))?;
        let old = self
            .find(actor, &org.id, id)
            .await
            .map_err(on("id"))?
            .record;
        let (mut policy, _account) = self.apply(&org.id, old.clone(), changes).await?;
        policy.updated_at = now_ms();
        let changed: Vec<&str> = [
            ("name", old.name != policy.name),
            ("description", old.description != policy.description),
            ("issuer", old.issuer != policy.issuer),
            ("audience", old.audience != policy.audience),
            ("conditions", old.conditions != policy.conditions),
            (
                "service_account_id",
                old.service_account_id != policy.service_account_id,
            ),
            ("scopes", old.scopes != policy.scopes),
            (
                "access_token_ttl_secs",
                old.access_token_ttl_secs != policy.access_token_ttl_secs,
            ),
            (
                "max_token_age_secs",
                old.max_token_age_secs != policy.max_token_age_secs,
            ),
            ("enabled", old.enabled != policy.enabled),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect();
        let end_sessions = changed.iter().any(|field| {
            matches!(
                *field,
                "issuer" | "audience" | "conditions" | "service_account_id" | "scopes"
            )
        }) || (old.enabled && !policy.enabled);
        let mut detail = described(&policy);
        detail["changed"] = serde_json::json!(changed);
        detail["ended_sessions"] = serde_json::json!(end_sessions);
        if old.service_account_id != policy.service_account_id {
            detail["previous_service_account_id"] = serde_json::json!(old.service_account_id);
        }
        // The account it no longer acts as has cached state naming the ended sessions: a row
        // about it, in the same commit, drops that everywhere too.
        let also = (old.service_account_id != policy.service_account_id).then(|| {
            audit_event(
                "trust_policy.updated",
                actor,
                &old,
                meta,
                serde_json::json!({
                    "policy_id": old.id,
                    "moved_to_service_account_id": policy.service_account_id,
                }),
            )
        });
        let audit = audit_event("trust_policy.updated", actor, &policy, meta, detail);
        let write = self.store.update_trust_policy(
            policy,
            end_sessions,
            actor.map(|a| a.id.as_str()),
            audit,
            also,
        );
        let updated = write
            .await
            .map_err(|err| ("__all__", err.into()))?
            .map_err(policy_refused)?;
        TrustPolicy::of(updated).map_err(on("__all__"))
    }

    /// Deletes a policy (Owners and Admins), ending every access token it issued; audited as
    /// `trust_policy.deleted`.
    pub async fn delete(
        &self,
        actor: Option<&User>,
        org: &Organization,
        id: &str,
        meta: &RequestMeta,
    ) -> Result<TrustPolicy, DomainError> {
        managers_only(actor)?;
        let policy = self.find(actor, &org.id, id).await?;
        let audit = audit_event(
            "trust_policy.deleted",
            actor,
            &policy.record,
            meta,
            described(&policy.record),
        );
        self.store
            .delete_trust_policy(
                &org.id,
                &policy.record.id,
                actor.map(|a| a.id.as_str()),
                audit,
            )
            .await?
            .map_err(refused)?;
        Ok(policy)
    }
}

/// A session hash no secret has: 32 random bytes, hashed so it has the shape of every other.
fn unissued_session_hash() -> Result<[u8; 32], DomainError> {
    let secret = secrets::random_id()?;
    Ok(Sha256::digest(secret.as_bytes()).into())
}

/// The replay key of a verified token: its issuer and jti (or its hash), hashed to a fixed
/// length.
fn replay_key(token: &VerifiedToken) -> String {
    let digest = Sha256::digest(format!("{}\n{}", token.issuer, token.replay_key).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claims an exchange's audit row keeps (when present): what says which pipeline it was.
const AUDITED_CLAIMS: [&str; 21] = [
    "repository",
    "repository_id",
    "repository_owner",
    "ref",
    "ref_type",
    "workflow",
    "workflow_ref",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "environment",
    "actor",
    "event_name",
    "project_path",
    "project_id",
    "namespace_path",
    "pipeline_id",
    "job_id",
    "pipeline_source",
    "user_login",
    "sha",
];

fn audited_claims(token: &VerifiedToken) -> serde_json::Map<String, serde_json::Value> {
    AUDITED_CLAIMS
        .iter()
        .filter_map(|name| {
            let value = match token.claims.get(*name)? {
                serde_json::Value::String(text) => text.chars().take(500).collect::<String>(),
                serde_json::Value::Number(number) => number.to_string(),
                _ => return None,
            };
            Some(((*name).to_owned(), serde_json::Value::String(value)))
        })
        .collect()
}

/// Why a candidate policy does not accept a verified token, from the least to the most
/// telling: the message of the most telling one reaches the caller.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Mismatch {
    Audience,
    TooOld { max_age_secs: i64 },
    Condition { claim: String },
}

fn mismatch(candidate: &TrustCandidate, token: &VerifiedToken, now_secs: i64) -> Option<Mismatch> {
    let policy = &candidate.policy;
    if !token.audiences.contains(&policy.audience) {
        return Some(Mismatch::Audience);
    }
    if now_secs.saturating_sub(token.iat) > policy.max_token_age_secs {
        return Some(Mismatch::TooOld {
            max_age_secs: policy.max_token_age_secs,
        });
    }
    let conditions: Vec<ClaimCondition> = match serde_json::from_str(&policy.conditions) {
        Ok(conditions) => conditions,
        // Unreadable conditions accept nothing.
        Err(_) => {
            return Some(Mismatch::Condition {
                claim: "(unreadable conditions)".into(),
            });
        }
    };
    claims::first_failing(&conditions, &token.claims).map(|failed| Mismatch::Condition {
        claim: failed.claim.clone(),
    })
}

fn untrusted(text: String) -> DomainError {
    DomainError::SubjectToken(SubjectTokenError::Untrusted(text))
}

fn echoed(issuer: &str) -> String {
    issuer
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHOED_ISSUER)
        .collect()
}

impl From<VerifyError> for SubjectTokenError {
    fn from(err: VerifyError) -> Self {
        if err.is_unavailable() {
            SubjectTokenError::IssuerUnavailable(err.to_string())
        } else {
            SubjectTokenError::Invalid(err.to_string())
        }
    }
}

/// An exchange's answer: the access token, and the policy it came from (for logs).
#[derive(Debug)]
pub struct Exchanged {
    pub response: TokenResponse,
    pub policy_id: String,
}

impl AuthService {
    /// Trust policies.
    pub fn trust_policies(&self) -> TrustPolicies<'_> {
        TrustPolicies::new(
            self.store(),
            self.oidc_settings().allow_http_issuers,
            i64::try_from(self.settings().access_token_ttl.as_secs()).unwrap_or(i64::MAX),
        )
    }

    /// Exchanges a pipeline's OIDC token for an access token of the service account a trust
    /// policy maps it to: verify it against its issuer's keys, find the one enabled policy
    /// that accepts it (of `tenant_id`'s organization when given), spend it (each token once,
    /// on every replica), and sign. `scope` may ask for fewer scopes than the policy gives.
    pub async fn exchange_oidc_token(
        &self,
        token: &str,
        tenant_id: Option<&str>,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Exchanged, DomainError> {
        let subject = |err: SubjectTokenError| DomainError::SubjectToken(err);
        let unverified = oidc::peek(token).map_err(|err| subject(err.into()))?;
        let issuer = echoed(&unverified.issuer);
        let mut candidates = self.store().trust_candidates(&unverified.issuer).await?;
        if candidates.is_empty() {
            return Err(untrusted(format!(
                "no trust policy accepts tokens from the issuer {issuer}"
            )));
        }
        if let Some(tenant) = tenant_id.filter(|t| !t.is_empty()) {
            candidates.retain(|candidate| candidate.tenant_id == tenant);
            if candidates.is_empty() {
                return Err(untrusted(format!(
                    "no trust policy of the organization {} accepts tokens from the issuer \
                     {issuer}",
                    echoed(tenant)
                )));
            }
        }
        let now_secs = now_ms() / 1000;
        let verified = self
            .oidc()
            .verify(&unverified, now_secs)
            .await
            .map_err(|err| subject(err.into()))?;
        let mut accepting: Vec<&TrustCandidate> = Vec::new();
        let mut closest: Option<Mismatch> = None;
        for candidate in &candidates {
            match mismatch(candidate, &verified, now_secs) {
                None => accepting.push(candidate),
                Some(why) => closest = closest.max(Some(why)),
            }
        }
        let chosen = match accepting.as_slice() {
            [one] => *one,
            [] => {
                return Err(untrusted(match closest {
                    Some(Mismatch::Condition { claim }) => {
                        format!("the claim {claim} does not match the trust policy's condition")
                    }
                    Some(Mismatch::TooOld { max_age_secs }) => format!(
                        "the token was issued more than {max_age_secs} seconds ago, the most \
                         the trust policy accepts; exchange it as soon as the job gets it"
                    ),
                    _ => format!(
                        "the token's audience is not one a trust policy of the issuer {issuer} \
                         expects"
                    ),
                }));
            }
            several => {
                let orgs: BTreeSet<&str> = several.iter().map(|c| c.tenant_id.as_str()).collect();
                return Err(untrusted(if orgs.len() > 1 {
                    "several organizations trust this token; name one with tenant_id".to_owned()
                } else {
                    format!(
                        "several trust policies of the organization accept this token ({}); \
                         make their conditions exclusive",
                        several
                            .iter()
                            .map(|c| c.policy.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }));
            }
        };
        self.issue_for_policy(chosen, &verified, scope, meta).await
    }

    /// Spends `token` under `candidate` and signs the access token.
    async fn issue_for_policy(
        &self,
        candidate: &TrustCandidate,
        token: &VerifiedToken,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Exchanged, DomainError> {
        let policy = &candidate.policy;
        if candidate.account_removed_at.is_some() {
            return Err(untrusted(
                "the trust policy's service account has been removed".into(),
            ));
        }
        let granted = self
            .granted_scope(
                ScopeSource {
                    what: "trust policy",
                    scope: &policy.scopes,
                    role: &candidate.account_role,
                    held_org_scopes: Some(&candidate.held_org_scopes),
                    org_id: &policy.org_id,
                    user_id: &policy.service_account_id,
                },
                scope,
            )
            .await?;
        let now = now_ms();
        let now_secs = now / 1000;
        let ttl = policy
            .access_token_ttl_secs
            .min(i64::try_from(self.settings().access_token_ttl.as_secs()).unwrap_or(i64::MAX));
        let exp = now_secs.saturating_add(ttl);
        let scope = granted.unwrap_or_else(|| policy.scopes.clone());
        let session_id = uuid::Uuid::new_v4().to_string();
        let audit = AuditEvent {
            at: now,
            action: "oidc.exchanged",
            actor: format!("trust_policy:{}", policy.id),
            org_id: Some(policy.org_id.clone()),
            subject_user_id: Some(policy.service_account_id.clone()),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(
                serde_json::json!({
                    "policy_id": policy.id,
                    "policy_name": policy.name,
                    // The session this job's access token names: what to revoke to end it.
                    "token_id": session_id,
                    "issuer": token.issuer,
                    "sub": token.claims.get("sub").and_then(|s| s.as_str()).map(|s| s.chars().take(500).collect::<String>()),
                    "jti": token.jti.as_deref().map(|j| j.chars().take(200).collect::<String>()),
                    "claims": audited_claims(token),
                })
                .to_string(),
            ),
        };
        let written = self
            .store()
            .record_exchange(
                PolicyExchange {
                    policy_id: policy.id.clone(),
                    service_account_id: policy.service_account_id.clone(),
                    token_key: replay_key(token),
                    issuer: token.issuer.clone(),
                    token_expires_at: token
                        .exp
                        .saturating_add(oidc::CLOCK_SKEW_SECS)
                        .saturating_mul(1000),
                    at: now,
                    session_id: session_id.clone(),
                    session_hash: unissued_session_hash()?,
                    session_name: crate::store::policy_session_name(&policy.name),
                    scope: scope.clone(),
                    session_expires_at: exp.saturating_mul(1000),
                },
                audit,
            )
            .await?;
        match written {
            ExchangeWrite::Issued => {}
            ExchangeWrite::Replayed => {
                let which = match &token.jti {
                    Some(jti) => format!(" (jti {})", oidc::for_message(jti)),
                    None => String::new(),
                };
                return Err(DomainError::SubjectToken(SubjectTokenError::Replayed(
                    format!(
                        "this token was already exchanged{which}: each OIDC token is accepted once, \
                     so exchange it once per job and reuse the access token"
                    ),
                )));
            }
            ExchangeWrite::PolicyGone => {
                return Err(untrusted(
                    "the trust policy was disabled or changed during the exchange".into(),
                ));
            }
        }
        let claims = AccessClaims {
            iss: self.settings().issuer.clone(),
            sub: policy.service_account_id.clone(),
            aud: Audience::One(self.settings().audience.clone()),
            exp,
            iat: now_secs,
            nbf: None,
            jti: secrets::random_id()?,
            client_id: KEYLESS_CLIENT_ID.to_owned(),
            scope,
            tid: candidate.tenant_id.clone(),
            sid: session_id,
            ep: candidate.account_epoch,
        };
        let access_token = self
            .keys()
            .sign(&claims)
            .map_err(|_| DomainError::Internal("signing failed"))?;
        self.note_use(&claims.sid, now, meta);
        Ok(Exchanged {
            response: TokenResponse {
                access_token,
                token_type: "Bearer".to_owned(),
                expires_in: u64::try_from(ttl).unwrap_or(0),
                scope: claims.scope,
                refresh_token: None,
                id_token: None,
                refresh_token_expires_in: None,
                issued_token_type: Some(ACCESS_TOKEN_TYPE.to_owned()),
            },
            policy_id: policy.id.clone(),
        })
    }
}
