//! `POST /api`: the GraphQL API that access tokens unlock. The bearer token is verified and
//! the caller's standing checked before the query is even parsed; resolvers get the
//! [`Principal`] and never see the token.

use async_graphql::{EmptySubscription, MergedObject, Schema};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use super::body::{BodyShape, JsonBody};
use super::error::{HttpError, RETRY_AFTER_SECS};
use super::graphql::{MutationRoot, Outbox, QueryRoot, UNAVAILABLE_CODE};
use super::graphql_access::{AccessMutation, AccessQuery};
use super::graphql_resource_servers::{ResourceServerMutation, ResourceServerQuery};
use super::graphql_trust::{TrustMutation, TrustQuery};
use super::{AppState, ClientMeta};
use crate::domain::auth::{AuthService, Principal};

/// Every query: the users and sessions of `graphql`, the service accounts and scopes of
/// `graphql_access`, the trust policies of `graphql_trust`, the resource servers of
/// `graphql_resource_servers`.
#[derive(MergedObject, Default)]
pub struct Query(QueryRoot, AccessQuery, TrustQuery, ResourceServerQuery);

/// Every mutation, merged the same way.
#[derive(MergedObject, Default)]
pub struct Mutation(
    MutationRoot,
    AccessMutation,
    TrustMutation,
    ResourceServerMutation,
);

pub type ApiSchema = Schema<Query, Mutation, EmptySubscription>;

/// The most a query may cost: a few pages of users with all their sessions.
const MAX_COMPLEXITY: usize = 250_000;
/// The most aliased fields a request may have (through fragments too): each alias runs its
/// field again, which is how one request multiplied itself 200 times.
const MAX_ALIASES: usize = 50;

/// Builds the schema with limits that keep hostile queries cheap.
pub fn schema(auth: Arc<AuthService>) -> ApiSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .data(auth)
        .limit_depth(16)
        // List fields cost their page size times their items (`graphql::page_cost`): a full
        // page of users with every session each (100 × 500) passes; two of them do not.
        .limit_complexity(MAX_COMPLEXITY)
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
    ClientMeta(meta): ClientMeta,
    JsonBody(request): JsonBody<GraphqlRequest>,
) -> Response {
    if let Err(wait) = state.api_rate.check(&principal.user.id) {
        state.metrics.api_rate_limited();
        // Whole seconds for Retry-After, never 0: a client that retries at once would only
        // be refused again.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return HttpError::too_many(
            seconds.max(1),
            "this caller is making more /api requests a second than --api-rate-limit allows; \
             retry after the time in Retry-After",
        )
        .into_response();
    }
    if aliases_beyond_cap(&request.query) {
        return http_response(async_graphql::Response::from_errors(vec![
            async_graphql::ServerError::new(
                format!("a request may alias at most {MAX_ALIASES} fields"),
                None,
            ),
        ]));
    }
    let response = state
        .schema
        .execute(
            request
                .into_request()
                .data(principal)
                .data(meta)
                .data(Outbox(state.mail.clone())),
        )
        .await;
    http_response(response)
}

/// The HTTP answer for a GraphQL response: 200, or 503 when a resolver found the database
/// unavailable.
fn http_response(response: async_graphql::Response) -> Response {
    // The database went away after the caller was authenticated: the same 503 with
    // `Retry-After` as everywhere else, so clients retry; the body is still the GraphQL
    // response (with whatever did succeed, and the errors).
    let unavailable = response.errors.iter().any(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|extensions| extensions.get("code"))
            .is_some_and(|code| *code == async_graphql::Value::from(UNAVAILABLE_CODE))
    });
    let mut http = Json(response).into_response();
    if unavailable {
        *http.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        http.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        http.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    http
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_resolver_makes_the_response_a_503() {
        let pos = async_graphql::Pos { line: 1, column: 3 };
        let outage =
            super::super::graphql::store_unavailable(crate::store::StoreError::CircuitOpen)
                .into_server_error(pos);
        let response = http_response(async_graphql::Response::from_errors(vec![outage]));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static(RETRY_AFTER_SECS))
        );

        let other = async_graphql::Error::new("invalid cursor").into_server_error(pos);
        let response = http_response(async_graphql::Response::from_errors(vec![other]));
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}

/// Whether `query` has more than [`MAX_ALIASES`] aliased fields, counting a fragment's each
/// time it is spread. A query that does not parse is left to the schema, which answers its
/// syntax error; a fragment spread deeper than the depth limit counts as too many (cycles are
/// the schema's to refuse, but must not loop here).
fn aliases_beyond_cap(query: &str) -> bool {
    use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

    fn count(set: &SelectionSet, document: &ExecutableDocument, depth: usize) -> usize {
        if depth > 32 {
            return MAX_ALIASES + 1;
        }
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(field) => {
                    usize::from(field.node.alias.is_some())
                        + count(&field.node.selection_set.node, document, depth + 1)
                }
                Selection::InlineFragment(fragment) => {
                    count(&fragment.node.selection_set.node, document, depth + 1)
                }
                Selection::FragmentSpread(spread) => document
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .map_or(0, |fragment| {
                        count(&fragment.node.selection_set.node, document, depth + 1)
                    }),
            })
            .fold(0, usize::saturating_add)
    }

    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    document
        .operations
        .iter()
        .map(|(_, operation)| count(&operation.node.selection_set.node, &document, 0))
        .fold(0, usize::saturating_add)
        > MAX_ALIASES
}

#[cfg(test)]
mod alias_cap_tests {
    use super::*;

    #[test]
    fn aliases_are_counted_through_fragments() {
        let many: String = (0..51)
            .map(|i| format!("a{i}: authenticatedUser {{ id }} "))
            .collect();
        assert!(aliases_beyond_cap(&format!("{{ {many} }}")));
        let fifty: String = (0..50)
            .map(|i| format!("a{i}: authenticatedUser {{ id }} "))
            .collect();
        assert!(!aliases_beyond_cap(&format!("{{ {fifty} }}")));
        // 30 aliases in a fragment spread twice: 60.
        let inner: String = (0..30).map(|i| format!("f{i}: id ")).collect();
        let spread = format!(
            "{{ a: authenticatedUser {{ ...F }} b: authenticatedUser {{ ...F }} }} \
             fragment F on User {{ {inner} }}"
        );
        assert!(aliases_beyond_cap(&spread));
        // A cycle is not counted forever.
        assert!(aliases_beyond_cap(
            "{ authenticatedUser { ...A } } fragment A on User { ...A }"
        ));
        assert!(!aliases_beyond_cap("not graphql at all"));
        assert!(!aliases_beyond_cap("{ authenticatedUser { id email } }"));
    }
}
