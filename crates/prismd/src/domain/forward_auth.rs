//! Forward auth (issue 19): what a reverse proxy in front of someone's own API asks about a
//! request's bearer token. Whether it still stands is the standing rule `/api` applies
//! ([`AuthService::authenticate_access_token`], answered from the standing cache when it holds
//! the principal); here is who it is, and whether it holds the scopes a route requires.

use std::collections::BTreeSet;

use super::DomainError;
use super::auth::{AuthService, Principal};
use super::roles::Role;
use super::scopes::{ApiScope, TokenScopes, is_api_scope_name};

/// Most scopes one route may require.
const MAX_REQUIRED_SCOPES: usize = 16;

/// Who a proxied request's token speaks for, for the identity headers.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// The member's id: the access token's `sub`.
    pub user_id: String,
    /// A person's email; `None` for a service account.
    pub email: Option<String>,
    pub name: String,
    pub tenant_id: String,
    pub role: Role,
    /// `person` or `service`.
    pub kind: &'static str,
    /// The scopes the token may use now: the built-in ones of its role that it names (all
    /// of the role's when unrestricted), and the organization's own that the route required
    /// (checked against the grants of now).
    pub scopes: Vec<String>,
    pub session_id: String,
    pub client_id: String,
}

/// Parses what a route requires: space- or comma-separated API scope names (at most
/// [`MAX_REQUIRED_SCOPES`] in all).
pub fn required_scopes(text: &str) -> Result<BTreeSet<String>, DomainError> {
    let names: BTreeSet<String> = text
        .split([' ', ','])
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    if names.len() > MAX_REQUIRED_SCOPES {
        return Err(DomainError::InvalidInput(format!(
            "a route requires at most {MAX_REQUIRED_SCOPES} scopes"
        )));
    }
    if let Some(bad) = names.iter().find(|name| !is_api_scope_name(name)) {
        return Err(DomainError::InvalidInput(format!(
            "the required scope {:?} is not an API scope (they have a ':', like users:read or \
             deploy:prod)",
            bad.chars().take(64).collect::<String>()
        )));
    }
    Ok(names)
}

impl AuthService {
    /// The identity behind `principal`, when its token holds every scope in `required`:
    /// built-in ones by its role narrowed by the token (as `/api` decides), the
    /// organization's own when the token names them (or is unrestricted) and the principal
    /// holds them now by its role's grants or its own (read with its standing). Otherwise
    /// [`DomainError::InsufficientScope`] names the first missing.
    pub fn proxy_identity(
        &self,
        principal: &Principal,
        required: &BTreeSet<String>,
    ) -> Result<ProxyIdentity, DomainError> {
        let effective = principal.effective();
        let token = principal.token_scopes();
        let role = Role::of(&principal.user);
        let named_org_scopes: Vec<String> = match &token {
            TokenScopes::Restricted(names) => names
                .iter()
                .filter(|name| ApiScope::parse(name).is_none())
                .cloned()
                .collect(),
            TokenScopes::Unrestricted => Vec::new(),
        };
        let wanted_org: BTreeSet<String> = required
            .iter()
            .filter(|name| ApiScope::parse(name).is_none())
            .cloned()
            .collect();
        // Read with the principal's standing (and cached with it): no read of its own.
        let held_org: BTreeSet<String> = wanted_org
            .into_iter()
            .filter(|name| principal.held_org_scopes.contains(name))
            .collect();
        let missing = required.iter().find(|name| match ApiScope::parse(name) {
            Some(scope) => !effective.contains(scope),
            None => {
                let token_has = token == TokenScopes::Unrestricted
                    || named_org_scopes.iter().any(|named| named == *name);
                !(token_has && held_org.contains(*name))
            }
        });
        if let Some(missing) = missing {
            return Err(DomainError::InsufficientScope(missing.clone()));
        }
        // Only what holds now: the built-in scopes of the role of now, and the organization
        // scopes this request checked against the grants of now. One the token names but the
        // route did not require is left out: its grant may have been withdrawn since.
        let mut scopes: Vec<String> = effective.iter().map(|s| s.name().to_owned()).collect();
        scopes.extend(held_org);
        let user = &principal.user;
        Ok(ProxyIdentity {
            user_id: user.id.clone(),
            email: Some(user.email.clone()).filter(|email| !email.is_empty()),
            name: user.name.clone(),
            tenant_id: principal.org.tenant_id.clone(),
            role,
            kind: if user.is_service_account() {
                "service"
            } else {
                "person"
            },
            scopes,
            session_id: principal.claims.sid.clone(),
            client_id: principal.claims.client_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_scopes_are_api_scopes_split_by_spaces_or_commas() {
        let parsed = required_scopes("users:read, deploy:prod  users:read").ok();
        assert_eq!(
            parsed,
            Some(BTreeSet::from(["deploy:prod".into(), "users:read".into()]))
        );
        assert!(required_scopes("openid").is_err());
        let many: String = (0..17).map(|i| format!("s{i}:x ")).collect();
        assert!(required_scopes(&many).is_err());
        assert_eq!(required_scopes("").ok(), Some(BTreeSet::new()));
    }
}
