//! The GraphQL half of issue 17: service accounts, the scope catalogue (built-in and the
//! organization's own), named tokens (`createToken`) and the token policy. Merged into the
//! schema beside `graphql`'s root objects (see `api::schema`); resolvers call the domain's
//! services and report problems in the payload's `errors { field messages }`.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::graphql::{
    Caller, FieldError, PrefetchedSessions, RoleNode, SessionNode, TokenPolicy, caller, parse_role,
    payload_errors, prefetch_sessions, query_error, session_nodes, timestamp,
};
use crate::domain::accounts::{parse_public_id, public_id};
use crate::domain::policies::{MAX_POLICY_DAYS, SECONDS_PER_DAY};
use crate::domain::roles::Role;
use crate::domain::scopes::{ApiScope, role_scopes};
use crate::domain::service_accounts::AccountUpdate;
use crate::domain::sessions::{Minter, TokenRequest};
use crate::domain::{DomainError, now_ms};
use crate::store::{Grantee, OrgScope, User};

/// The kind in a service account's public id.
const SERVICE_ACCOUNT: &str = "ServiceAccount";

fn account_id_from(id: &ID) -> Result<String, DomainError> {
    parse_public_id(SERVICE_ACCOUNT, id)
        .ok_or_else(|| DomainError::NotFound("no such service account in your organization".into()))
}

/// A service account as the API shows it.
pub struct ServiceAccountNode {
    account: User,
    /// The organization's scopes, when the list it is in read them once for all its accounts.
    org_scopes: Option<Arc<Vec<OrgScope>>>,
    /// Its tokens, when the list it is in read them for all its accounts at once.
    tokens: PrefetchedSessions,
}

impl ServiceAccountNode {
    pub(super) fn new(account: User) -> Self {
        Self {
            account,
            org_scopes: None,
            tokens: None,
        }
    }
}

#[Object(name = "ServiceAccount")]
impl ServiceAccountNode {
    /// `base64("ServiceAccount:<uuid>")`; its tokens' `sub` is the uuid.
    async fn id(&self) -> ID {
        ID(public_id(SERVICE_ACCOUNT, &self.account.id))
    }
    async fn name(&self) -> &str {
        &self.account.name
    }
    async fn description(&self) -> Option<&str> {
        self.account.description.as_deref()
    }
    async fn role(&self) -> RoleNode {
        RoleNode(Role::of(&self.account))
    }
    /// RFC 3339, UTC.
    async fn created_at(&self) -> String {
        timestamp(self.account.created_at)
    }
    /// The organization's own scopes granted to this account itself (its role's grants are
    /// on each scope).
    async fn scopes(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        let scopes = match &self.org_scopes {
            Some(scopes) => scopes.clone(),
            None => Arc::new(
                caller(ctx)?
                    .auth
                    .service_accounts()
                    .org_scopes(&self.account.org_id)
                    .await
                    .map_err(query_error)?,
            ),
        };
        Ok(scopes
            .iter()
            .filter(|scope| scope.service_accounts.contains(&self.account.id))
            .map(|scope| scope.name.clone())
            .collect())
    }
    /// Its live tokens, newest first (Owners and Admins, `sessions:read`).
    async fn tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Vec<SessionNode>>> {
        session_nodes(ctx, &self.account.id, &self.tokens).await
    }
}

/// A scope: built-in (enforced by this API) or declared by the organization (for its own
/// APIs, which read it from the access token's `scope`).
pub struct ScopeNode {
    name: String,
    description: Option<String>,
    built_in: bool,
    roles: Vec<Role>,
    service_accounts: Vec<String>,
    /// The organization's service accounts, when the list this scope is in read them once for
    /// all its scopes.
    accounts: Option<Arc<Vec<User>>>,
}

impl ScopeNode {
    fn of_built_in(scope: ApiScope) -> Self {
        Self {
            name: scope.name().to_owned(),
            description: Some(scope.description().to_owned()),
            built_in: true,
            roles: Role::ALL
                .into_iter()
                .filter(|role| role_scopes(*role).contains(scope))
                .collect(),
            service_accounts: Vec::new(),
            accounts: None,
        }
    }

    fn declared(scope: OrgScope) -> Self {
        Self {
            name: scope.name,
            description: scope.description,
            built_in: false,
            roles: scope.roles.iter().map(|key| Role::from_key(key)).collect(),
            service_accounts: scope.service_accounts,
            accounts: None,
        }
    }
}

#[Object(name = "Scope")]
impl ScopeNode {
    async fn name(&self) -> &str {
        &self.name
    }
    async fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// Whether this API enforces it (else the organization declared it).
    async fn built_in(&self) -> bool {
        self.built_in
    }
    /// The roles whose members may hold it.
    async fn roles(&self) -> Vec<RoleNode> {
        self.roles.iter().copied().map(RoleNode).collect()
    }
    /// The service accounts it is granted to directly.
    async fn service_accounts(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<ServiceAccountNode>> {
        if self.service_accounts.is_empty() {
            return Ok(Vec::new());
        }
        let accounts = match &self.accounts {
            Some(accounts) => accounts.clone(),
            None => Arc::new(organization_accounts(ctx).await?),
        };
        Ok(accounts
            .iter()
            .filter(|account| self.service_accounts.contains(&account.id))
            .cloned()
            .map(ServiceAccountNode::new)
            .collect())
    }
}

#[derive(Default)]
pub struct AccessQuery;

#[Object]
impl AccessQuery {
    /// The organization's service accounts, oldest first (`users:read`).
    async fn service_accounts(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Vec<ServiceAccountNode>>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::UsersRead).map_err(query_error)?;
        let accounts = organization_accounts(ctx).await?;
        // What the query asks of every account is read once for them all, not once each.
        let wants = ctx.look_ahead();
        let org_scopes = if wants.field("scopes").exists() {
            Some(Arc::new(
                caller
                    .auth
                    .service_accounts()
                    .org_scopes(&caller.actor().org_id)
                    .await
                    .map_err(query_error)?,
            ))
        } else {
            None
        };
        let tokens = prefetch_sessions(ctx, &accounts, wants.field("tokens").exists()).await?;
        Ok(Some(
            accounts
                .into_iter()
                .zip(tokens)
                .map(|(account, tokens)| ServiceAccountNode {
                    account,
                    org_scopes: org_scopes.clone(),
                    tokens,
                })
                .collect(),
        ))
    }

    /// Every scope a token here may be restricted to: the built-in ones, then the
    /// organization's own.
    async fn scopes(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ScopeNode>> {
        let caller = caller(ctx)?;
        let declared = caller
            .auth
            .service_accounts()
            .org_scopes(&caller.actor().org_id)
            .await
            .map_err(query_error)?;
        // Every scope that names service accounts would read them all: read once, shared.
        let accounts = if ctx.look_ahead().field("serviceAccounts").exists()
            && declared
                .iter()
                .any(|scope| !scope.service_accounts.is_empty())
        {
            Some(Arc::new(organization_accounts(ctx).await?))
        } else {
            None
        };
        Ok(ApiScope::ALL
            .into_iter()
            .map(ScopeNode::of_built_in)
            .chain(declared.into_iter().map(|scope| ScopeNode {
                accounts: accounts.clone(),
                ..ScopeNode::declared(scope)
            }))
            .collect())
    }
}

/// The caller's organization's service accounts.
async fn organization_accounts(ctx: &Context<'_>) -> async_graphql::Result<Vec<User>> {
    let caller = caller(ctx)?;
    caller
        .auth
        .service_accounts()
        .list(&caller.actor().org_id)
        .await
        .map_err(query_error)
}

#[derive(InputObject)]
pub struct CreateTokenInput {
    /// Unique among the principal's live named tokens.
    name: String,
    /// API scopes to restrict it to; absent or null: the principal's role decides.
    scopes: Option<Vec<String>>,
    /// When it stops working (RFC 3339).
    expires_at: Option<String>,
    /// Or: in how many days it stops working (1 to 3650).
    expires_in_days: Option<i32>,
    /// A service account of yours to mint it for (Owners and Admins).
    service_account_id: Option<ID>,
}

#[derive(SimpleObject, Default)]
pub struct CreateTokenPayload {
    /// The refresh token (`prism_rt_...`). Shown once: only its hash is kept.
    token: Option<String>,
    session: Option<SessionNode>,
    errors: Vec<FieldError>,
}

#[derive(InputObject)]
pub struct CreateServiceAccountInput {
    name: String,
    /// A role id from `organizationRoles` (or its name); never Owner.
    role: ID,
    description: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateServiceAccountInput {
    id: ID,
    name: Option<String>,
    role: Option<ID>,
    description: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteServiceAccountInput {
    id: ID,
}

#[derive(SimpleObject, Default)]
pub struct ServiceAccountPayload {
    service_account: Option<ServiceAccountNode>,
    errors: Vec<FieldError>,
}

#[derive(InputObject)]
pub struct CreateScopeInput {
    /// `<prefix>:<name>`, e.g. `deploy:prod`.
    name: String,
    description: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteScopeInput {
    name: String,
}

#[derive(InputObject)]
pub struct ScopeGrantInput {
    scope: String,
    /// A role id (or name): its members may hold the scope.
    role: Option<ID>,
    /// Or a service account that may hold it.
    service_account_id: Option<ID>,
}

#[derive(SimpleObject, Default)]
pub struct ScopePayload {
    scope: Option<ScopeNode>,
    errors: Vec<FieldError>,
}

#[derive(InputObject)]
pub struct UpdateTokenPolicyInput {
    /// The longest a named token may live, in days (1 to 3650); null: no maximum.
    max_lifetime_days: Option<i64>,
}

#[derive(SimpleObject, Default)]
pub struct UpdateTokenPolicyPayload {
    token_policy: Option<TokenPolicy>,
    errors: Vec<FieldError>,
}

/// Runs `operation` (a future: nothing happens unless it is awaited) when the caller's token
/// holds `scope`.
async fn with_scope<T>(
    caller: &Caller<'_>,
    scope: ApiScope,
    operation: impl Future<Output = Result<T, DomainError>>,
) -> Result<T, DomainError> {
    caller.require(scope)?;
    operation.await
}

/// The payload of a service account mutation: the account, or the problem against `field`.
fn account_payload(
    result: Result<User, DomainError>,
    field: &str,
) -> async_graphql::Result<ServiceAccountPayload> {
    match result {
        Ok(account) => Ok(ServiceAccountPayload {
            service_account: Some(ServiceAccountNode::new(account)),
            errors: Vec::new(),
        }),
        Err(err) => failed(err, field, |errors| ServiceAccountPayload {
            errors,
            ..Default::default()
        }),
    }
}

/// A payload's errors from a domain failure against `field`.
fn failed<T: Default>(
    err: DomainError,
    field: &str,
    with: impl FnOnce(Vec<FieldError>) -> T,
) -> async_graphql::Result<T> {
    Ok(with(payload_errors(err, field)?))
}

/// A new token's expiry from its input (ms since the epoch).
fn expiry_of(input: &CreateTokenInput) -> Result<Option<i64>, DomainError> {
    match (&input.expires_at, input.expires_in_days) {
        (Some(_), Some(_)) => Err(DomainError::InvalidInput(
            "give expiresAt or expiresInDays, not both".into(),
        )),
        (Some(at), None) => super::graphql::rfc3339_ms("expiresAt", at).map(Some),
        (None, Some(days)) if (1..=MAX_POLICY_DAYS).contains(&i64::from(days)) => {
            Ok(Some(now_ms() + i64::from(days) * SECONDS_PER_DAY * 1000))
        }
        (None, Some(_)) => Err(DomainError::InvalidInput(format!(
            "expiresInDays must be a whole number of days from 1 to {MAX_POLICY_DAYS}"
        ))),
        (None, None) => Ok(None),
    }
}

#[derive(Default)]
pub struct AccessMutation;

#[Object]
impl AccessMutation {
    /// Mints a named refresh token for yourself or (Owners and Admins) a service account of
    /// the organization, with optional scopes and expiry (`sessions:write`). Shown once.
    async fn create_token(
        &self,
        ctx: &Context<'_>,
        input: CreateTokenInput,
    ) -> async_graphql::Result<CreateTokenPayload> {
        let caller = caller(ctx)?;
        let payload = |errors| CreateTokenPayload {
            errors,
            ..Default::default()
        };
        if let Err(err) = caller.require(ApiScope::SessionsWrite) {
            return failed(err, "__all__", payload);
        }
        let expires_at = match expiry_of(&input) {
            Ok(at) => at,
            Err(err) => return failed(err, "expiresAt", payload),
        };
        let holder = match &input.service_account_id {
            None => caller.actor().clone(),
            Some(id) => {
                let found = match account_id_from(id) {
                    Ok(id) => {
                        if !Role::of(caller.actor()).manages_users() {
                            Err(DomainError::AccessDenied(
                                "only Owners and Admins mint tokens for service accounts".into(),
                            ))
                        } else {
                            caller
                                .auth
                                .service_accounts()
                                .find(&caller.actor().org_id, &id)
                                .await
                        }
                    }
                    Err(err) => Err(err),
                };
                match found {
                    Ok(account) => account,
                    // Reported against the field the caller gave, not the generic `id`.
                    Err(DomainError::NotFound(msg)) => {
                        return failed(DomainError::InvalidInput(msg), "serviceAccountId", payload);
                    }
                    Err(err) => return failed(err, "serviceAccountId", payload),
                }
            }
        };
        let token_scopes = caller.principal.token_scopes();
        let minter = Minter::Member {
            user: caller.actor(),
            token: &token_scopes,
            effective: caller.principal.effective(),
        };
        let request = TokenRequest {
            name: input.name,
            scopes: input.scopes,
            expires_at,
        };
        match caller
            .auth
            .sessions()
            .create_token(minter, &holder, request, &caller.meta)
            .await
        {
            Ok((token, record)) => {
                // As `sessions` shows it: the earlier of its own expiry and the session
                // policy's end.
                let expires_at = caller
                    .auth
                    .sessions()
                    .list(caller.actor(), &holder.id)
                    .await
                    .map_err(query_error)?
                    .into_iter()
                    .find(|live| live.record.id == record.id)
                    .and_then(|live| live.expires_at);
                Ok(CreateTokenPayload {
                    token: Some(token),
                    session: Some(
                        SessionNode::new(record, caller.principal).expiring_at(expires_at),
                    ),
                    errors: Vec::new(),
                })
            }
            Err((field, err)) => failed(err, field, payload),
        }
    }

    /// Creates a service account (Owners and Admins, `users:write`).
    async fn create_service_account(
        &self,
        ctx: &Context<'_>,
        input: CreateServiceAccountInput,
    ) -> async_graphql::Result<ServiceAccountPayload> {
        let caller = caller(ctx)?;
        let payload = |errors| ServiceAccountPayload {
            errors,
            ..Default::default()
        };
        if let Err(err) = caller.require(ApiScope::UsersWrite) {
            return failed(err, "__all__", payload);
        }
        let role = match parse_role(&input.role) {
            Ok(role) => role,
            Err(err) => return failed(err, "role", payload),
        };
        let created = caller
            .auth
            .service_accounts()
            .create(
                Some(caller.actor()),
                &caller.principal.org,
                &input.name,
                role,
                input.description,
                &caller.meta,
            )
            .await;
        let field = match &created {
            Err(DomainError::InvalidInput(msg)) if msg.contains("Owner") => "role",
            _ => "name",
        };
        account_payload(created, field)
    }

    /// Changes a service account's name, role (never Owner) or description (Owners and
    /// Admins, `users:write`). A lower role narrows its live tokens at once.
    async fn update_service_account(
        &self,
        ctx: &Context<'_>,
        input: UpdateServiceAccountInput,
    ) -> async_graphql::Result<ServiceAccountPayload> {
        let caller = caller(ctx)?;
        let payload = |errors| ServiceAccountPayload {
            errors,
            ..Default::default()
        };
        if let Err(err) = caller.require(ApiScope::UsersWrite) {
            return failed(err, "__all__", payload);
        }
        let role = match input.role.as_ref().map(parse_role).transpose() {
            Ok(role) => role,
            Err(err) => return failed(err, "role", payload),
        };
        let id = match account_id_from(&input.id) {
            Ok(id) => id,
            Err(err) => return failed(err, "id", payload),
        };
        let update = AccountUpdate {
            name: input.name,
            role,
            description: input.description,
        };
        let updated = caller
            .auth
            .service_accounts()
            .update(
                Some(caller.actor()),
                &caller.actor().org_id,
                &id,
                update,
                &caller.meta,
            )
            .await;
        account_payload(updated, if role.is_some() { "role" } else { "name" })
    }

    /// Removes a service account (Owners and Admins, `users:write`): its tokens stop working
    /// at once, on every replica.
    async fn delete_service_account(
        &self,
        ctx: &Context<'_>,
        input: DeleteServiceAccountInput,
    ) -> async_graphql::Result<ServiceAccountPayload> {
        let caller = caller(ctx)?;
        let removed = match account_id_from(&input.id) {
            Ok(id) => {
                let accounts = caller.auth.service_accounts();
                let org_id = &caller.actor().org_id;
                let delete = accounts.delete(Some(caller.actor()), org_id, &id, &caller.meta);
                with_scope(&caller, ApiScope::UsersWrite, delete).await
            }
            Err(err) => caller.require(ApiScope::UsersWrite).and(Err(err)),
        };
        account_payload(removed, "id")
    }

    /// Declares a scope of the organization, e.g. `deploy:prod` (Owners and Admins,
    /// `org:admin`).
    async fn create_scope(
        &self,
        ctx: &Context<'_>,
        input: CreateScopeInput,
    ) -> async_graphql::Result<ScopePayload> {
        let caller = caller(ctx)?;
        let accounts = caller.auth.service_accounts();
        let create = accounts.create_scope(
            Some(caller.actor()),
            &caller.actor().org_id,
            &input.name,
            input.description,
            &caller.meta,
        );
        scope_payload(
            with_scope(&caller, ApiScope::OrgAdmin, create).await,
            "name",
        )
    }

    /// Deletes a scope of the organization and its grants (Owners and Admins, `org:admin`).
    async fn delete_scope(
        &self,
        ctx: &Context<'_>,
        input: DeleteScopeInput,
    ) -> async_graphql::Result<ScopePayload> {
        let caller = caller(ctx)?;
        let accounts = caller.auth.service_accounts();
        let delete = accounts.delete_scope(
            Some(caller.actor()),
            &caller.actor().org_id,
            &input.name,
            &caller.meta,
        );
        scope_payload(
            with_scope(&caller, ApiScope::OrgAdmin, delete).await,
            "name",
        )
    }

    /// Lets a role's members, or one service account, hold a scope of the organization
    /// (Owners and Admins, `org:admin`).
    async fn grant_scope(
        &self,
        ctx: &Context<'_>,
        input: ScopeGrantInput,
    ) -> async_graphql::Result<ScopePayload> {
        set_grant(ctx, input, true).await
    }

    /// Withdraws a grant of a scope: the next exchange of a token that carries it leaves it
    /// out (Owners and Admins, `org:admin`).
    async fn revoke_scope(
        &self,
        ctx: &Context<'_>,
        input: ScopeGrantInput,
    ) -> async_graphql::Result<ScopePayload> {
        set_grant(ctx, input, false).await
    }

    /// Sets the longest a named token may live in the organization (Owners, `org:admin`).
    async fn update_token_policy(
        &self,
        ctx: &Context<'_>,
        input: UpdateTokenPolicyInput,
    ) -> async_graphql::Result<UpdateTokenPolicyPayload> {
        let caller = caller(ctx)?;
        let policies = caller.auth.policies();
        let update =
            policies.update_token_policy(caller.actor(), input.max_lifetime_days, &caller.meta);
        match with_scope(&caller, ApiScope::OrgAdmin, update).await {
            Ok(max_lifetime_days) => Ok(UpdateTokenPolicyPayload {
                token_policy: Some(TokenPolicy { max_lifetime_days }),
                errors: Vec::new(),
            }),
            Err(err) => failed(err, "maxLifetimeDays", |errors| UpdateTokenPolicyPayload {
                errors,
                ..Default::default()
            }),
        }
    }
}

fn scope_payload(
    result: Result<OrgScope, DomainError>,
    field: &str,
) -> async_graphql::Result<ScopePayload> {
    match result {
        Ok(scope) => Ok(ScopePayload {
            scope: Some(ScopeNode::declared(scope)),
            errors: Vec::new(),
        }),
        Err(err) => failed(err, field, |errors| ScopePayload {
            errors,
            ..Default::default()
        }),
    }
}

async fn set_grant(
    ctx: &Context<'_>,
    input: ScopeGrantInput,
    grant: bool,
) -> async_graphql::Result<ScopePayload> {
    let caller = caller(ctx)?;
    if let Err(err) = caller.require(ApiScope::OrgAdmin) {
        return scope_payload(Err(err), "__all__");
    }
    let grantee = match (&input.role, &input.service_account_id) {
        (Some(role), None) => parse_role(role).map(|role| Grantee::Role(role.key().to_owned())),
        (None, Some(id)) => account_id_from(id).map(Grantee::ServiceAccount),
        _ => Err(DomainError::InvalidInput(
            "give a role or a serviceAccountId, one of them".into(),
        )),
    };
    let grantee = match grantee {
        Ok(grantee) => grantee,
        Err(err) => return scope_payload(Err(err), "role"),
    };
    let result = caller
        .auth
        .service_accounts()
        .set_grant(
            Some(caller.actor()),
            &caller.actor().org_id,
            &input.scope,
            grantee,
            grant,
            &caller.meta,
        )
        .await;
    scope_payload(result, "scope")
}
