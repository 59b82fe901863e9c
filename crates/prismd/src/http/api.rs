//! `POST /api`: the GraphQL API that access tokens unlock. The bearer token is verified and
//! the caller's standing checked before the query is even parsed; resolvers get the
//! [`Principal`] and never see the token.

use async_graphql::{Context, EmptyMutation, EmptySubscription, ID, Object, Schema, SimpleObject};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::{BodyShape, JsonBody};
use super::error::HttpError;
use crate::domain::accounts::public_id;
use std::sync::Arc;

use crate::domain::auth::{AuthService, Principal};

pub type ApiSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Builds the schema with limits that keep hostile queries cheap.
pub fn schema(auth: Arc<AuthService>) -> ApiSchema {
    Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .data(auth)
        .limit_depth(16)
        .limit_complexity(1000)
        .limit_recursive_depth(32)
        .finish()
}

/// GraphQL-over-HTTP request body. `query` is required: a body without one is a 400, not a
/// GraphQL error.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphqlRequest {
    query: String,
    #[serde(default)]
    variables: Option<async_graphql::Variables>,
    #[serde(default)]
    operation_name: Option<String>,
}

impl GraphqlRequest {
    fn into_request(self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(self.query);
        if let Some(variables) = self.variables {
            request = request.variables(variables);
        }
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        request
    }
}

impl BodyShape for GraphqlRequest {
    const MAX_BYTES: usize = 256 * 1024;
    const EXPECTED: &'static str =
        r#"a JSON object with a string field "query" and optional "variables" and "operationName""#;
}

/// The authenticated caller, from `Authorization: Bearer <access token>`.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(HttpError::missing_bearer)?;
        Ok(Authenticated(
            state.auth.authenticate_access_token(token).await?,
        ))
    }
}

pub async fn graphql(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    JsonBody(request): JsonBody<GraphqlRequest>,
) -> Response {
    let response = state
        .schema
        .execute(request.into_request().data(principal))
        .await;
    Json(response).into_response()
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The user the access token belongs to.
    async fn authenticated_user(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        let principal = ctx.data::<Principal>()?;
        Ok(UserNode::from(principal))
    }

    /// The tenants (organizations) the caller's email belongs to.
    async fn list_user_tenants(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<TenantConnection> {
        let principal = ctx.data::<Principal>()?;
        let auth = ctx.data::<Arc<AuthService>>()?;
        let orgs = auth
            .store()
            .organizations_of_email(&principal.user.email)
            .await
            .map_err(|_| async_graphql::Error::new("the service is temporarily unavailable"))?;
        let url = auth.settings().issuer.clone();
        Ok(TenantConnection {
            nodes: orgs
                .into_iter()
                .map(|org| TenantNode {
                    tenant_id: org.tenant_id,
                    url: url.clone(),
                    org_name: org.name,
                    aws_region: "self-hosted".to_owned(),
                    system_suspended: false,
                })
                .collect(),
        })
    }
}

#[derive(SimpleObject)]
#[graphql(name = "UserTenantConnection")]
pub struct TenantConnection {
    nodes: Vec<TenantNode>,
}

/// A tenant the caller can use (`tenant_id` of `/auth/refresh` and `/oauth/token`).
#[derive(SimpleObject)]
#[graphql(name = "UserTenant")]
pub struct TenantNode {
    tenant_id: String,
    url: String,
    org_name: String,
    aws_region: String,
    system_suspended: bool,
}

/// A user as the API shows it.
#[derive(SimpleObject)]
#[graphql(name = "User")]
pub struct UserNode {
    id: ID,
    name: String,
    email: String,
    tenant_id: String,
    org: Option<OrganizationNode>,
    /// Set for customer users; this server has organization users only, so always null.
    customer: Option<CustomerNode>,
}

#[derive(SimpleObject)]
#[graphql(name = "Organization")]
pub struct OrganizationNode {
    id: ID,
    name: String,
}

#[derive(SimpleObject)]
#[graphql(name = "Customer")]
pub struct CustomerNode {
    id: ID,
    name: String,
}

impl From<&Principal> for UserNode {
    fn from(principal: &Principal) -> Self {
        let user = &principal.user;
        let org = &principal.org;
        UserNode {
            id: ID(public_id("User", &user.id)),
            name: user.name.clone(),
            email: user.email.clone(),
            tenant_id: org.tenant_id.clone(),
            org: Some(OrganizationNode {
                id: ID(public_id("Organization", &org.id)),
                name: org.name.clone(),
            }),
            customer: None,
        }
    }
}
