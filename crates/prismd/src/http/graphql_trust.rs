//! The GraphQL half of keyless CI (issue 18): trust policies, which map a pipeline's OIDC
//! token to one of the organization's service accounts. Merged into the schema beside the
//! other root objects (see `api::schema`); Owners and Admins, with `org:admin`.

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};

use super::graphql::{FieldError, caller, payload_errors, query_error, refusal_field, timestamp};
use super::graphql_access::ServiceAccountNode;
use crate::domain::accounts::{parse_public_id, public_id};
use crate::domain::scopes::ApiScope;
use crate::domain::trust::{NewTrustPolicy, PolicyError, TrustPolicy, TrustPolicyChanges};
use crate::oidc::claims::{ClaimCondition, MatchKind};

/// The kind in a trust policy's public id.
const TRUST_POLICY: &str = "TrustPolicy";

/// How a condition compares a claim.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ClaimMatch {
    /// The claim equals the value.
    Exact,
    /// The value is a pattern: `*` any run of characters, `?` one character.
    Glob,
}

/// One condition a token's claim must meet.
#[derive(SimpleObject)]
#[graphql(name = "ClaimCondition")]
pub struct ClaimConditionNode {
    claim: String,
    #[graphql(name = "match")]
    kind: ClaimMatch,
    value: String,
}

#[derive(InputObject)]
pub struct ClaimConditionInput {
    /// A top-level claim of the token, e.g. `repository_id`, `sub`, `ref`.
    claim: String,
    #[graphql(name = "match", default_with = "ClaimMatch::Exact")]
    kind: ClaimMatch,
    value: String,
}

fn conditions_of(input: Vec<ClaimConditionInput>) -> Vec<ClaimCondition> {
    input
        .into_iter()
        .map(|condition| ClaimCondition {
            claim: condition.claim,
            kind: match condition.kind {
                ClaimMatch::Exact => MatchKind::Exact,
                ClaimMatch::Glob => MatchKind::Glob,
            },
            value: condition.value,
        })
        .collect()
}

/// A service account given by its `ServiceAccount` id (or, for scripts, its uuid or name).
fn account_of(id: &ID) -> String {
    parse_public_id("ServiceAccount", id).unwrap_or_else(|| id.to_string())
}

fn policy_id_of(id: &ID) -> String {
    parse_public_id(TRUST_POLICY, id).unwrap_or_else(|| id.to_string())
}

/// A trust policy as the API shows it.
pub struct TrustPolicyNode(TrustPolicy);

#[Object(name = "TrustPolicy")]
impl TrustPolicyNode {
    /// `base64("TrustPolicy:<uuid>")`.
    async fn id(&self) -> ID {
        ID(public_id(TRUST_POLICY, &self.0.record.id))
    }
    async fn name(&self) -> &str {
        &self.0.record.name
    }
    async fn description(&self) -> Option<&str> {
        self.0.record.description.as_deref()
    }
    /// The exact `iss` of the tokens it accepts.
    async fn issuer(&self) -> &str {
        &self.0.record.issuer
    }
    /// The `aud` value the tokens must carry.
    async fn audience(&self) -> &str {
        &self.0.record.audience
    }
    /// Every one must hold.
    async fn conditions(&self) -> Vec<ClaimConditionNode> {
        self.0
            .conditions
            .iter()
            .map(|condition| ClaimConditionNode {
                claim: condition.claim.clone(),
                kind: match condition.kind {
                    MatchKind::Exact => ClaimMatch::Exact,
                    MatchKind::Glob => ClaimMatch::Glob,
                },
                value: condition.value.clone(),
            })
            .collect()
    }
    /// Who the pipeline acts as.
    async fn service_account(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ServiceAccountNode> {
        let caller = caller(ctx)?;
        let account = caller
            .auth
            .service_accounts()
            .find(&caller.actor().org_id, &self.0.record.service_account_id)
            .await
            .map_err(query_error)?;
        Ok(ServiceAccountNode::new(account))
    }
    /// The scopes its access tokens carry; empty: the service account's role.
    async fn scopes(&self) -> &[String] {
        &self.0.scopes
    }
    async fn access_token_lifetime_seconds(&self) -> i64 {
        self.0.record.access_token_ttl_secs
    }
    /// How old (since its `iat`) a token may be when it is exchanged.
    async fn max_token_age_seconds(&self) -> i64 {
        self.0.record.max_token_age_secs
    }
    async fn enabled(&self) -> bool {
        self.0.record.enabled
    }
    async fn created_at(&self) -> String {
        timestamp(self.0.record.created_at)
    }
    async fn updated_at(&self) -> String {
        timestamp(self.0.record.updated_at)
    }
    /// The last exchange.
    async fn last_used_at(&self) -> Option<String> {
        self.0.record.last_used_at.map(timestamp)
    }
}

#[derive(InputObject)]
pub struct CreateTrustPolicyInput {
    name: String,
    description: Option<String>,
    issuer: String,
    audience: String,
    conditions: Vec<ClaimConditionInput>,
    service_account_id: ID,
    scopes: Option<Vec<String>>,
    access_token_lifetime_seconds: Option<i64>,
    max_token_age_seconds: Option<i64>,
    enabled: Option<bool>,
}

#[derive(InputObject)]
pub struct UpdateTrustPolicyInput {
    id: ID,
    name: Option<String>,
    /// An empty string clears it.
    description: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    conditions: Option<Vec<ClaimConditionInput>>,
    service_account_id: Option<ID>,
    scopes: Option<Vec<String>>,
    access_token_lifetime_seconds: Option<i64>,
    max_token_age_seconds: Option<i64>,
    enabled: Option<bool>,
}

#[derive(SimpleObject, Default)]
pub struct TrustPolicyPayload {
    trust_policy: Option<TrustPolicyNode>,
    errors: Vec<FieldError>,
}

#[derive(SimpleObject, Default)]
pub struct DeleteTrustPolicyPayload {
    deleted: bool,
    errors: Vec<FieldError>,
}

fn policy_payload(
    result: Result<TrustPolicy, PolicyError>,
) -> async_graphql::Result<TrustPolicyPayload> {
    match result {
        Ok(policy) => Ok(TrustPolicyPayload {
            trust_policy: Some(TrustPolicyNode(policy)),
            errors: Vec::new(),
        }),
        Err((field, err)) => Ok(TrustPolicyPayload {
            errors: payload_errors(err, field)?,
            ..Default::default()
        }),
    }
}

#[derive(Default)]
pub struct TrustQuery;

#[Object]
impl TrustQuery {
    /// The organization's trust policies, by name (Owners and Admins, `org:admin`).
    async fn trust_policies(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<TrustPolicyNode>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::OrgAdmin).map_err(query_error)?;
        let policies = caller
            .auth
            .trust_policies()
            .list(Some(caller.actor()), &caller.actor().org_id)
            .await
            .map_err(query_error)?;
        Ok(policies.into_iter().map(TrustPolicyNode).collect())
    }
}

#[derive(Default)]
pub struct TrustMutation;

#[Object]
impl TrustMutation {
    /// Trusts the OIDC tokens of one issuer that meet every condition, as the service
    /// account (Owners and Admins, `org:admin`).
    async fn create_trust_policy(
        &self,
        ctx: &Context<'_>,
        input: CreateTrustPolicyInput,
    ) -> async_graphql::Result<TrustPolicyPayload> {
        let caller = caller(ctx)?;
        if let Err(err) = caller.require(ApiScope::OrgAdmin) {
            return Ok(TrustPolicyPayload {
                errors: payload_errors(err, "__all__")?,
                ..Default::default()
            });
        }
        let policy = NewTrustPolicy {
            name: input.name,
            description: input.description,
            issuer: input.issuer,
            audience: input.audience,
            conditions: conditions_of(input.conditions),
            service_account: account_of(&input.service_account_id),
            scopes: input.scopes.unwrap_or_default(),
            access_token_ttl_secs: input.access_token_lifetime_seconds,
            max_token_age_secs: input.max_token_age_seconds,
            enabled: input.enabled,
        };
        let created = caller
            .auth
            .trust_policies()
            .create(
                Some(caller.actor()),
                &caller.principal.org,
                policy,
                &caller.meta,
            )
            .await;
        policy_payload(created)
    }

    /// Changes a policy (Owners and Admins, `org:admin`). Changing what it trusts or grants
    /// (issuer, audience, conditions, service account, scopes), or disabling it, ends every
    /// access token it issued, at once.
    async fn update_trust_policy(
        &self,
        ctx: &Context<'_>,
        input: UpdateTrustPolicyInput,
    ) -> async_graphql::Result<TrustPolicyPayload> {
        let caller = caller(ctx)?;
        if let Err(err) = caller.require(ApiScope::OrgAdmin) {
            return Ok(TrustPolicyPayload {
                errors: payload_errors(err, "__all__")?,
                ..Default::default()
            });
        }
        let changes = TrustPolicyChanges {
            name: input.name,
            description: input.description,
            issuer: input.issuer,
            audience: input.audience,
            conditions: input.conditions.map(conditions_of),
            service_account: input.service_account_id.as_ref().map(account_of),
            scopes: input.scopes,
            access_token_ttl_secs: input.access_token_lifetime_seconds,
            max_token_age_secs: input.max_token_age_seconds,
            enabled: input.enabled,
        };
        let updated = caller
            .auth
            .trust_policies()
            .update(
                Some(caller.actor()),
                &caller.principal.org,
                &policy_id_of(&input.id),
                changes,
                &caller.meta,
            )
            .await;
        policy_payload(updated)
    }

    /// Deletes a policy (Owners and Admins, `org:admin`): every access token it issued stops
    /// working at once, on every replica.
    async fn delete_trust_policy(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<DeleteTrustPolicyPayload> {
        let caller = caller(ctx)?;
        let deleted = match caller.require(ApiScope::OrgAdmin) {
            Ok(()) => {
                caller
                    .auth
                    .trust_policies()
                    .delete(
                        Some(caller.actor()),
                        &caller.principal.org,
                        &policy_id_of(&id),
                        &caller.meta,
                    )
                    .await
            }
            Err(err) => Err(err),
        };
        match deleted {
            Ok(_) => Ok(DeleteTrustPolicyPayload {
                deleted: true,
                errors: Vec::new(),
            }),
            Err(err) => {
                let field = refusal_field(&err, "id");
                Ok(DeleteTrustPolicyPayload {
                    deleted: false,
                    errors: payload_errors(err, field)?,
                })
            }
        }
    }
}
