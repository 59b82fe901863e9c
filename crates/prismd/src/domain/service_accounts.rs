//! Service accounts and the organization's own scopes (issue 17): creating, changing and
//! removing service accounts (Owners and Admins, or an operator; never an Owner's role), and
//! declaring, granting and withdrawing organization-defined scopes. Who may hold which scope
//! is decided in `domain::scopes` and `auth::held_scopes`; this module only keeps the records.

use super::accounts::refused;
use super::roles::Role;
use std::collections::BTreeSet;

use super::scopes::{self, ApiScope};
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{
    AuditEvent, Grantee, NewServiceAccount, OrgScope, Organization, ServiceAccountChanges, Store,
    User,
};

/// The longest service account name or description.
const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 500;

const NO_SUCH_ACCOUNT: &str = "no such service account in your organization";

/// A service account change as given: `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub description: Option<String>,
}

fn checked_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(DomainError::InvalidInput(format!(
            "a service account's name has 1 to {MAX_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(DomainError::InvalidInput(
            "a service account's name has no control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

/// A description as given, trimmed; at most [`MAX_DESCRIPTION`] characters.
pub(super) fn checked_description(
    description: Option<String>,
) -> Result<Option<String>, DomainError> {
    let description = description.map(|d| d.trim().to_owned());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(DomainError::InvalidInput(format!(
            "a description has at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(description)
}

fn checked_role(role: Role) -> Result<Role, DomainError> {
    if role == Role::Owner {
        return Err(DomainError::InvalidInput(
            "a service account cannot be an Owner; give it the least role it needs".into(),
        ));
    }
    Ok(role)
}

fn managers_only(actor: Option<&User>, verb: &str) -> Result<(), DomainError> {
    match actor {
        Some(actor) if !Role::of(actor).manages_users() => Err(DomainError::AccessDenied(format!(
            "only Owners and Admins can {verb}"
        ))),
        _ => Ok(()),
    }
}

/// The audit actor of `actor` (`None`: an operator).
fn actor_name(actor: Option<&User>) -> String {
    actor.map_or_else(|| "operator".to_owned(), |a| format!("user:{}", a.id))
}

fn event(
    action: &'static str,
    actor: Option<&User>,
    org_id: &str,
    subject: Option<&str>,
    meta: &RequestMeta,
    detail: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action,
        actor: actor_name(actor),
        org_id: Some(org_id.to_owned()),
        subject_user_id: subject.map(str::to_owned),
        address: meta.address.clone(),
        user_agent: meta.user_agent.clone(),
        detail: Some(detail.to_string()),
    }
}

/// Which of `names` the principal `user_id` (with `role`) may hold now: built-in scopes by
/// role, the organization's own by their grants (read only when one is asked for).
pub async fn held_scopes(
    store: &dyn Store,
    org_id: &str,
    role: Role,
    user_id: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeSet<String>, DomainError> {
    let granted = if names.iter().any(|name| ApiScope::parse(name).is_none()) {
        store.held_org_scopes(org_id, role.key(), user_id).await?
    } else {
        Vec::new()
    };
    let org_held: BTreeSet<&str> = granted.iter().map(String::as_str).collect();
    Ok(names
        .iter()
        .filter(|name| scopes::holds(role, &org_held, name))
        .cloned()
        .collect())
}

/// Checks that every one of `names` is a built-in scope or one the organization declared,
/// and that `holder` may hold it now: what a minted token and a trust policy may carry.
pub async fn checked_holder_scopes(
    store: &dyn Store,
    holder: &User,
    names: &BTreeSet<String>,
) -> Result<(), DomainError> {
    if names.iter().any(|name| ApiScope::parse(name).is_none()) {
        let declared: BTreeSet<String> = store
            .org_scopes(&holder.org_id)
            .await?
            .into_iter()
            .map(|scope| scope.name)
            .collect();
        if let Some(unknown) = names
            .iter()
            .find(|name| ApiScope::parse(name).is_none() && !declared.contains(*name))
        {
            return Err(DomainError::InvalidInput(format!(
                "unknown scope {unknown}: use a built-in scope ({}) or one the organization \
                 declared",
                ApiScope::ALL.map(|s| s.name()).join(", ")
            )));
        }
    }
    let role = Role::of(holder);
    let held = held_scopes(store, &holder.org_id, role, &holder.id, names).await?;
    if let Some(missing) = names.iter().find(|name| !held.contains(*name)) {
        let whose = if holder.is_service_account() {
            "the service account"
        } else {
            "the user"
        };
        return Err(DomainError::InvalidInput(format!(
            "{whose} (role {role}) may not hold the scope {missing}"
        )));
    }
    Ok(())
}

/// Service accounts and organization scopes over the store.
pub struct ServiceAccounts<'s> {
    store: &'s dyn Store,
}

impl<'s> ServiceAccounts<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// Creates a service account in `org` (`actor`: an Owner or Admin there; `None`: an
    /// operator), audited as `service_account.created`.
    pub async fn create(
        &self,
        actor: Option<&User>,
        org: &Organization,
        name: &str,
        role: Role,
        description: Option<String>,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        managers_only(actor, "create service accounts")?;
        let name = checked_name(name)?;
        let role = checked_role(role)?;
        let description = checked_description(description)?.filter(|d| !d.is_empty());
        let id = uuid::Uuid::new_v4().to_string();
        let audit = event(
            "service_account.created",
            actor,
            &org.id,
            Some(&id),
            meta,
            serde_json::json!({ "name": name, "role": role.key() }),
        );
        let account = NewServiceAccount {
            id,
            org_id: org.id.clone(),
            name,
            role: role.key().to_owned(),
            description,
            created_at: audit.at,
        };
        self.store
            .add_service_account(account, actor.map(|a| a.id.as_str()), audit)
            .await?
            .map_err(refused)
    }

    /// The live service accounts of `org_id`.
    pub async fn list(&self, org_id: &str) -> Result<Vec<User>, DomainError> {
        Ok(self.store.service_accounts(org_id).await?)
    }

    /// One live service account of `org_id`, by id or by name.
    pub async fn find(&self, org_id: &str, id_or_name: &str) -> Result<User, DomainError> {
        let wanted = id_or_name.trim();
        self.list(org_id)
            .await?
            .into_iter()
            .find(|account| account.id == wanted || account.name == wanted)
            .ok_or_else(|| DomainError::NotFound(NO_SUCH_ACCOUNT.into()))
    }

    /// Changes a service account (Owners and Admins), audited as `service_account.updated`
    /// with the changed fields, and the old and new role when it changes: a demotion narrows
    /// its live tokens at once, as the audit row drops its cached state everywhere.
    pub async fn update(
        &self,
        actor: Option<&User>,
        org_id: &str,
        id: &str,
        update: AccountUpdate,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        managers_only(actor, "change service accounts")?;
        let current = self.find(org_id, id).await?;
        let name = update.name.as_deref().map(checked_name).transpose()?;
        let role = update.role.map(checked_role).transpose()?;
        let description = checked_description(update.description)?;
        let fields: Vec<&str> = [
            ("name", name.is_some()),
            ("role", role.is_some()),
            ("description", description.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect();
        let audit = event(
            "service_account.updated",
            actor,
            org_id,
            Some(&current.id),
            meta,
            serde_json::json!({
                "fields": fields,
                "from": role.map(|_| current.role.clone()),
                "to": role.map(Role::key),
            }),
        );
        let changes = ServiceAccountChanges {
            name,
            role: role.map(|r| r.key().to_owned()),
            description,
        };
        self.store
            .update_service_account(&current.id, changes, actor.map(|a| a.id.as_str()), audit)
            .await?
            .map_err(refused)
    }

    /// Removes a service account (Owners and Admins): its tokens stop working at once.
    /// Audited as `service_account.removed`.
    pub async fn delete(
        &self,
        actor: Option<&User>,
        org_id: &str,
        id: &str,
        meta: &RequestMeta,
    ) -> Result<User, DomainError> {
        managers_only(actor, "remove service accounts")?;
        let account = self.find(org_id, id).await?;
        let audit = event(
            "service_account.removed",
            actor,
            org_id,
            Some(&account.id),
            meta,
            serde_json::json!({ "name": account.name }),
        );
        self.store
            .remove_user(&account.id, audit.at, actor.map(|a| a.id.as_str()), audit)
            .await?
            .map_err(refused)?;
        Ok(account)
    }

    /// The organization's own scopes and their grants.
    pub async fn org_scopes(&self, org_id: &str) -> Result<Vec<OrgScope>, DomainError> {
        Ok(self.store.org_scopes(org_id).await?)
    }

    /// Declares a scope of the organization (Owners and Admins), audited `scope.created`.
    pub async fn create_scope(
        &self,
        actor: Option<&User>,
        org_id: &str,
        name: &str,
        description: Option<String>,
        meta: &RequestMeta,
    ) -> Result<OrgScope, DomainError> {
        managers_only(actor, "declare scopes")?;
        let name = scopes::check_org_scope_name(name)?;
        let description = checked_description(description)?.filter(|d| !d.is_empty());
        let audit = event(
            "scope.created",
            actor,
            org_id,
            None,
            meta,
            serde_json::json!({ "scope": name }),
        );
        if !self
            .store
            .create_org_scope(org_id, &name, description.as_deref(), audit)
            .await?
        {
            return Err(DomainError::Conflict(format!(
                "the organization has a scope named {name}"
            )));
        }
        self.scope(org_id, &name).await
    }

    async fn scope(&self, org_id: &str, name: &str) -> Result<OrgScope, DomainError> {
        self.org_scopes(org_id)
            .await?
            .into_iter()
            .find(|scope| scope.name == name)
            .ok_or_else(|| DomainError::NotFound(format!("the organization has no scope {name}")))
    }

    /// Deletes a scope of the organization and its grants (Owners and Admins), audited
    /// `scope.deleted`. Tokens that name it keep their other scopes.
    pub async fn delete_scope(
        &self,
        actor: Option<&User>,
        org_id: &str,
        name: &str,
        meta: &RequestMeta,
    ) -> Result<OrgScope, DomainError> {
        managers_only(actor, "delete scopes")?;
        let scope = self.scope(org_id, name.trim()).await?;
        let audit = event(
            "scope.deleted",
            actor,
            org_id,
            None,
            meta,
            serde_json::json!({ "scope": scope.name }),
        );
        if !self
            .store
            .delete_org_scope(org_id, &scope.name, audit)
            .await?
        {
            return Err(DomainError::NotFound(format!(
                "the organization has no scope {}",
                scope.name
            )));
        }
        Ok(scope)
    }

    /// Grants (`grant`) or withdraws a scope of the organization to a role or a service
    /// account (Owners and Admins), audited `scope.granted` / `scope.grant_revoked`.
    pub async fn set_grant(
        &self,
        actor: Option<&User>,
        org_id: &str,
        scope: &str,
        grantee: Grantee,
        grant: bool,
        meta: &RequestMeta,
    ) -> Result<OrgScope, DomainError> {
        managers_only(actor, "grant scopes")?;
        let scope = self.scope(org_id, scope.trim()).await?;
        let subject = match &grantee {
            Grantee::ServiceAccount(id) => Some(self.find(org_id, id).await?.id),
            Grantee::Role(_) => None,
        };
        let grantee = match subject {
            Some(id) => Grantee::ServiceAccount(id),
            None => grantee,
        };
        let audit = event(
            if grant {
                "scope.granted"
            } else {
                "scope.grant_revoked"
            },
            actor,
            org_id,
            None,
            meta,
            serde_json::json!({ "scope": scope.name, "grantee": grantee.key() }),
        );
        if !self
            .store
            .set_scope_grant(org_id, &scope.name, &grantee, grant, audit)
            .await?
        {
            return Err(DomainError::NotFound(format!(
                "{} was not granted {}",
                grantee.key(),
                scope.name
            )));
        }
        self.scope(org_id, &scope.name).await
    }
}
