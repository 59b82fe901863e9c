//! Token introspection (RFC 7662, issue 19): the resource servers that may ask whether an
//! access token stands and whom it speaks for (registered by an operator or an Owner, their
//! client secrets kept only as hashes), their client authentication, and the answer. A token
//! stands exactly when `/api` would take it, so a revoke, a removal, a session's end or a
//! trust policy's change is `active: false` on the very next question.

use prism_proto::token_format::{self, SecretKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::accounts::refused;
use super::auth::{AuthService, Principal};
use super::roles::Role;
use super::scopes::TokenScopes;
use super::secrets;
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{AuditEvent, Refusal, ResourceServerRecord, Store, User};
use crate::tokens::jwt::Audience;

/// Client ids start with it, so one in a log or a config file says what it is.
const CLIENT_ID_PREFIX: &str = "prism_rs_";
const MAX_NAME_CHARS: usize = 100;
const MAX_DESCRIPTION_CHARS: usize = 500;
/// One message for an unknown client id and a wrong secret (RFC 6749 §5.2 `invalid_client`).
const CLIENT_AUTH_FAILED: &str =
    "client authentication failed: unknown client_id or wrong client_secret";

/// A resource server as its managers see it: never its secret's hash.
#[derive(Debug, Clone)]
pub struct ResourceServer {
    pub client_id: String,
    /// `None`: instance-wide, for an operator's own services.
    pub org_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub created_at: i64,
    pub secret_set_at: i64,
}

impl ResourceServer {
    fn of(record: ResourceServerRecord) -> Self {
        Self {
            client_id: record.id,
            org_id: record.org_id,
            name: record.name,
            description: record.description,
            created_at: record.created_at,
            secret_set_at: record.secret_set_at,
        }
    }
}

/// A resource server just registered, or its secret just replaced: the secret is shown this
/// once and never kept.
#[derive(Debug)]
pub struct WithSecret {
    pub server: ResourceServer,
    pub client_secret: String,
}

/// Resource servers over the store (an organization's Owners; `None` as actor: an operator,
/// who alone manages the instance-wide ones).
pub struct ResourceServers<'s> {
    store: &'s dyn Store,
}

fn owners_only(actor: Option<&User>) -> Result<(), DomainError> {
    match actor {
        Some(actor) if Role::of(actor) != Role::Owner => Err(DomainError::AccessDenied(
            "only Owners can manage resource servers".into(),
        )),
        _ => Ok(()),
    }
}

fn checked_text(
    what: &str,
    text: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<String, DomainError> {
    let text = text.trim();
    if (text.is_empty() && !may_be_empty)
        || text.chars().count() > max
        || text.chars().any(char::is_control)
    {
        return Err(DomainError::InvalidInput(format!(
            "a resource server's {what} has {} to {max} characters, none of them control \
             characters",
            if may_be_empty { 0 } else { 1 }
        )));
    }
    Ok(text.to_owned())
}

/// A fresh client secret and its hash.
fn new_secret() -> Result<(String, Vec<u8>), DomainError> {
    let secret = token_format::generate(SecretKind::ClientSecret)
        .map_err(|_| DomainError::Internal("randomness failed"))?;
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    Ok((secret, hash))
}

fn audit_event(
    action: &'static str,
    actor: Option<&User>,
    server: &ResourceServer,
    meta: &RequestMeta,
) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action,
        actor: actor.map_or_else(|| "operator".to_owned(), |a| format!("user:{}", a.id)),
        org_id: server.org_id.clone(),
        subject_user_id: None,
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        // Never the secret nor its hash.
        detail: Some(
            serde_json::json!({
                "client_id": server.client_id,
                "name": server.name,
                "instance_wide": server.org_id.is_none(),
            })
            .to_string(),
        ),
    }
}

fn server_refused(refusal: Refusal) -> DomainError {
    match refusal {
        Refusal::NameTaken => {
            DomainError::Conflict("a resource server of that name exists there already".into())
        }
        Refusal::NotFound => DomainError::NotFound("no such resource server".into()),
        other => refused(other),
    }
}

impl<'s> ResourceServers<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// The resource servers of `org_id` (`None`: the instance-wide ones), by name.
    pub async fn list(
        &self,
        actor: Option<&User>,
        org_id: Option<&str>,
    ) -> Result<Vec<ResourceServer>, DomainError> {
        owners_only(actor)?;
        Ok(self
            .store
            .resource_servers(org_id)
            .await?
            .into_iter()
            .map(ResourceServer::of)
            .collect())
    }

    /// One resource server of `org_id`, by client id or by name.
    pub async fn find(
        &self,
        actor: Option<&User>,
        org_id: Option<&str>,
        client_id_or_name: &str,
    ) -> Result<ResourceServer, DomainError> {
        let wanted = client_id_or_name.trim();
        self.list(actor, org_id)
            .await?
            .into_iter()
            .find(|server| server.client_id == wanted || server.name == wanted)
            .ok_or_else(|| DomainError::NotFound("no such resource server".into()))
    }

    /// Registers a resource server of `org_id` (`None`: instance-wide, operators only),
    /// audited as `resource_server.created`; its secret is in the answer, once.
    pub async fn create(
        &self,
        actor: Option<&User>,
        org_id: Option<&str>,
        name: &str,
        description: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<WithSecret, DomainError> {
        owners_only(actor)?;
        if let (Some(actor), Some(org_id)) = (actor, org_id)
            && actor.org_id != org_id
        {
            return Err(DomainError::AccessDenied(
                "only the organization's Owners can manage its resource servers".into(),
            ));
        }
        let name = checked_text("name", name, MAX_NAME_CHARS, false)?;
        let description = description
            .map(|text| checked_text("description", text, MAX_DESCRIPTION_CHARS, true))
            .transpose()?
            .filter(|text| !text.is_empty());
        let (client_secret, secret_hash) = new_secret()?;
        let now = now_ms();
        let record = ResourceServerRecord {
            id: format!("{CLIENT_ID_PREFIX}{}", secrets::random_id()?),
            org_id: org_id.map(str::to_owned),
            name,
            description,
            secret_hash,
            created_at: now,
            secret_set_at: now,
        };
        let audit = audit_event(
            "resource_server.created",
            actor,
            &ResourceServer::of(record.clone()),
            meta,
        );
        let created = self
            .store
            .create_resource_server(record, actor.map(|a| a.id.as_str()), audit)
            .await?
            .map_err(server_refused)?;
        Ok(WithSecret {
            server: ResourceServer::of(created),
            client_secret,
        })
    }

    /// Gives a resource server a new secret, audited as `resource_server.secret_rotated`:
    /// the old one stops working at once.
    pub async fn rotate_secret(
        &self,
        actor: Option<&User>,
        org_id: Option<&str>,
        client_id_or_name: &str,
        meta: &RequestMeta,
    ) -> Result<WithSecret, DomainError> {
        let server = self.find(actor, org_id, client_id_or_name).await?;
        let (client_secret, secret_hash) = new_secret()?;
        let audit = audit_event("resource_server.secret_rotated", actor, &server, meta);
        let updated = self
            .store
            .set_resource_server_secret(
                org_id,
                &server.client_id,
                secret_hash,
                now_ms(),
                actor.map(|a| a.id.as_str()),
                audit,
            )
            .await?
            .map_err(server_refused)?;
        Ok(WithSecret {
            server: ResourceServer::of(updated),
            client_secret,
        })
    }

    /// Deletes a resource server, audited as `resource_server.deleted`: its secret stops
    /// working at once.
    pub async fn delete(
        &self,
        actor: Option<&User>,
        org_id: Option<&str>,
        client_id_or_name: &str,
        meta: &RequestMeta,
    ) -> Result<ResourceServer, DomainError> {
        let server = self.find(actor, org_id, client_id_or_name).await?;
        let audit = audit_event("resource_server.deleted", actor, &server, meta);
        self.store
            .delete_resource_server(
                org_id,
                &server.client_id,
                actor.map(|a| a.id.as_str()),
                audit,
            )
            .await?
            .map_err(server_refused)?;
        Ok(server)
    }
}

/// What an introspection answers about a token (RFC 7662 §2.2).
#[derive(Debug)]
pub enum Introspection {
    /// `{"active": false}`: the token does not stand, is not an access token, or is of an
    /// organization the resource server may not ask about. Which of these is never said.
    Inactive,
    Active(Box<ActiveToken>),
}

/// A standing access token, as a resource server learns it.
#[derive(Debug)]
pub struct ActiveToken {
    pub user_id: String,
    /// A person's email; `None` for a service account.
    pub email: Option<String>,
    pub name: String,
    pub tenant_id: String,
    pub role: Role,
    /// `person` or `service`.
    pub kind: &'static str,
    /// The scopes the token may use now: the built-in ones of the role of now that it names
    /// (all of them when unrestricted), and the organization's own that it names and holds by
    /// the grants of now.
    pub scopes: Vec<String>,
    pub client_id: String,
    pub session_id: String,
    pub issuer: String,
    pub audience: Audience,
    pub issued_at: i64,
    pub expires_at: i64,
    pub not_before: Option<i64>,
    pub token_id: String,
}

impl AuthService {
    /// Authenticates a resource server by its client id and secret (`client_secret_basic` or
    /// `client_secret_post`): the secret's SHA-256 against the stored one, in constant time.
    /// A malformed secret is refused before any read.
    pub async fn authenticate_resource_server(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<ResourceServerRecord, DomainError> {
        if token_format::validate(SecretKind::ClientSecret, client_secret).is_err() {
            return Err(DomainError::InvalidClient(format!(
                "{CLIENT_AUTH_FAILED} (a client secret is prism_cs_ and 49 letters and digits)"
            )));
        }
        let Some(server) = self.store().resource_server(client_id).await? else {
            return Err(DomainError::InvalidClient(CLIENT_AUTH_FAILED.into()));
        };
        let presented = Sha256::digest(client_secret.as_bytes());
        if !bool::from(presented.as_slice().ct_eq(&server.secret_hash)) {
            return Err(DomainError::InvalidClient(CLIENT_AUTH_FAILED.into()));
        }
        Ok(server)
    }

    /// Whether `token` is a standing access token that `server` may learn about, and what it
    /// may learn: `/api`'s own standing rule, then the organization the server belongs to.
    /// Refresh tokens are never active here: a resource server must not be handed one.
    pub async fn introspect(
        &self,
        server: &ResourceServerRecord,
        token: &str,
    ) -> Result<Introspection, DomainError> {
        if token.starts_with(SecretKind::RefreshToken.prefix())
            || token.starts_with(SecretKind::ClientSecret.prefix())
        {
            return Ok(Introspection::Inactive);
        }
        let principal = match self.authenticate_access_token(token).await {
            Ok(principal) => principal,
            Err(DomainError::InvalidToken(_)) => return Ok(Introspection::Inactive),
            Err(other) => return Err(other),
        };
        if server
            .org_id
            .as_deref()
            .is_some_and(|org_id| org_id != principal.user.org_id)
        {
            return Ok(Introspection::Inactive);
        }
        let scopes = Self::scopes_held_now(&principal);
        let user = &principal.user;
        let claims = &principal.claims;
        Ok(Introspection::Active(Box::new(ActiveToken {
            user_id: user.id.clone(),
            email: Some(user.email.clone()).filter(|email| !email.is_empty()),
            name: user.name.clone(),
            tenant_id: principal.org.tenant_id.clone(),
            role: Role::of(user),
            kind: if user.is_service_account() {
                "service"
            } else {
                "person"
            },
            scopes,
            client_id: claims.client_id.clone(),
            session_id: claims.sid.clone(),
            issuer: claims.iss.clone(),
            audience: claims.aud.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            not_before: claims.nbf,
            token_id: claims.jti.clone(),
        })))
    }

    /// The principal's token's scopes that hold now: built-in ones by its role of now (as
    /// `/api` decides), the organization's own that it names (any, when it names none) by the
    /// grants of now, read with the principal's standing.
    fn scopes_held_now(principal: &Principal) -> Vec<String> {
        let mut scopes: Vec<String> = principal
            .effective()
            .iter()
            .map(|scope| scope.name().to_owned())
            .collect();
        let token = principal.token_scopes();
        scopes.extend(
            principal
                .held_org_scopes
                .iter()
                .filter(|name| match &token {
                    TokenScopes::Unrestricted => true,
                    TokenScopes::Restricted(named) => named.contains(*name),
                })
                .cloned(),
        );
        scopes
    }

    pub fn resource_servers(&self) -> ResourceServers<'_> {
        ResourceServers::new(self.store())
    }
}
