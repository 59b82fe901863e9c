//! The GraphQL half of token introspection (issue 19): the organization's resource servers,
//! the services of its own that ask `/oauth/introspect` about access tokens. Merged into the
//! schema beside the other root objects (see `api::schema`); Owners, with `org:admin`.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::graphql::{FieldError, caller, payload_errors, query_error, refusal_field, timestamp};
use crate::domain::DomainError;
use crate::domain::introspection::{ResourceServer, WithSecret};
use crate::domain::scopes::ApiScope;

/// A resource server as the API shows it: never its secret.
pub struct ResourceServerNode(ResourceServer);

#[Object(name = "ResourceServer")]
impl ResourceServerNode {
    /// Its `client_id` (`prism_rs_...`), which is also its id here.
    async fn client_id(&self) -> &str {
        &self.0.client_id
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn created_at(&self) -> String {
        timestamp(self.0.created_at)
    }
    /// When its current secret was made (registered or rotated).
    async fn secret_set_at(&self) -> String {
        timestamp(self.0.secret_set_at)
    }
}

#[derive(SimpleObject, Default)]
pub struct ResourceServerSecretPayload {
    resource_server: Option<ResourceServerNode>,
    /// The client secret (`prism_cs_...`). Shown once: only its hash is kept.
    client_secret: Option<String>,
    errors: Vec<FieldError>,
}

#[derive(SimpleObject, Default)]
pub struct DeleteResourceServerPayload {
    deleted: bool,
    errors: Vec<FieldError>,
}

fn secret_payload(
    result: Result<WithSecret, DomainError>,
    field: &'static str,
) -> async_graphql::Result<ResourceServerSecretPayload> {
    match result {
        Ok(made) => Ok(ResourceServerSecretPayload {
            resource_server: Some(ResourceServerNode(made.server)),
            client_secret: Some(made.client_secret),
            errors: Vec::new(),
        }),
        Err(err) => {
            let field = refusal_field(&err, field);
            Ok(ResourceServerSecretPayload {
                errors: payload_errors(err, field)?,
                ..Default::default()
            })
        }
    }
}

#[derive(Default)]
pub struct ResourceServerQuery;

#[Object]
impl ResourceServerQuery {
    /// The organization's resource servers, by name (Owners, `org:admin`).
    async fn resource_servers(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<ResourceServerNode>> {
        let caller = caller(ctx)?;
        caller.require(ApiScope::OrgAdmin).map_err(query_error)?;
        let servers = caller
            .auth
            .resource_servers()
            .list(Some(caller.actor()), Some(&caller.actor().org_id))
            .await
            .map_err(query_error)?;
        Ok(servers.into_iter().map(ResourceServerNode).collect())
    }
}

#[derive(Default)]
pub struct ResourceServerMutation;

#[Object]
impl ResourceServerMutation {
    /// Registers a resource server of the organization (Owners, `org:admin`): it may ask
    /// `/oauth/introspect` about its members' access tokens. The client secret is in the
    /// answer, once.
    async fn create_resource_server(
        &self,
        ctx: &Context<'_>,
        name: String,
        description: Option<String>,
    ) -> async_graphql::Result<ResourceServerSecretPayload> {
        let caller = caller(ctx)?;
        let created = match caller.require(ApiScope::OrgAdmin) {
            Ok(()) => {
                caller
                    .auth
                    .resource_servers()
                    .create(
                        Some(caller.actor()),
                        Some(&caller.actor().org_id),
                        &name,
                        description.as_deref(),
                        &caller.meta,
                    )
                    .await
            }
            Err(err) => Err(err),
        };
        secret_payload(created, "name")
    }

    /// Gives a resource server a new client secret (Owners, `org:admin`); the old one stops
    /// working at once. `id` is its client id (or its name).
    async fn rotate_resource_server_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ResourceServerSecretPayload> {
        let caller = caller(ctx)?;
        let rotated = match caller.require(ApiScope::OrgAdmin) {
            Ok(()) => {
                caller
                    .auth
                    .resource_servers()
                    .rotate_secret(
                        Some(caller.actor()),
                        Some(&caller.actor().org_id),
                        &id,
                        &caller.meta,
                    )
                    .await
            }
            Err(err) => Err(err),
        };
        secret_payload(rotated, "id")
    }

    /// Deletes a resource server (Owners, `org:admin`): its secret stops working at once.
    /// `id` is its client id (or its name).
    async fn delete_resource_server(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<DeleteResourceServerPayload> {
        let caller = caller(ctx)?;
        let deleted = match caller.require(ApiScope::OrgAdmin) {
            Ok(()) => caller
                .auth
                .resource_servers()
                .delete(
                    Some(caller.actor()),
                    Some(&caller.actor().org_id),
                    &id,
                    &caller.meta,
                )
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        match deleted {
            Ok(()) => Ok(DeleteResourceServerPayload {
                deleted: true,
                errors: Vec::new(),
            }),
            Err(err) => {
                let field = refusal_field(&err, "id");
                Ok(DeleteResourceServerPayload {
                    deleted: false,
                    errors: payload_errors(err, field)?,
                })
            }
        }
    }
}
