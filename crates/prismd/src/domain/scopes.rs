//! Scopes (issue 17): the built-in API scopes and what each role may hold, organization-defined
//! scope names, how a token's stored `scope` string reads (unrestricted or restricted), and the
//! one rule of effective permission: the role's scopes intersected with the token's, evaluated
//! with the principal's current role on every request, so a demotion narrows live tokens.
//!
//! A token's `scope` keeps its OAuth meaning: an unrestricted token carries the OpenID names it
//! always did (`openid profile email offline_access`), and a restricted one carries only API
//! scope names, which all contain a `:`. So "restricted" is "names at least one API scope", and
//! every token minted before scopes existed reads as unrestricted.

use std::collections::BTreeSet;
use std::fmt;

use super::DomainError;
use super::roles::Role;

/// The API scopes this server's own GraphQL API enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiScope {
    UsersRead,
    UsersWrite,
    ProfileWrite,
    SessionsRead,
    SessionsWrite,
    AuditRead,
    OrgAdmin,
}

impl ApiScope {
    pub const ALL: [ApiScope; 7] = [
        ApiScope::UsersRead,
        ApiScope::UsersWrite,
        ApiScope::ProfileWrite,
        ApiScope::SessionsRead,
        ApiScope::SessionsWrite,
        ApiScope::AuditRead,
        ApiScope::OrgAdmin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ApiScope::UsersRead => "users:read",
            ApiScope::UsersWrite => "users:write",
            ApiScope::ProfileWrite => "profile:write",
            ApiScope::SessionsRead => "sessions:read",
            ApiScope::SessionsWrite => "sessions:write",
            ApiScope::AuditRead => "audit:read",
            ApiScope::OrgAdmin => "org:admin",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            ApiScope::UsersRead => "Read the organization's members and service accounts",
            ApiScope::UsersWrite => {
                "Add, change and remove members and service accounts; invitations"
            }
            ApiScope::ProfileWrite => "Change your own profile",
            ApiScope::SessionsRead => "List sessions and tokens",
            ApiScope::SessionsWrite => "Create and revoke tokens and sessions",
            ApiScope::AuditRead => "Read the organization's audit trail",
            ApiScope::OrgAdmin => "Session and token policies, and the organization's own scopes",
        }
    }

    pub fn parse(name: &str) -> Option<ApiScope> {
        ApiScope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for ApiScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of built-in scopes (a bit set: the check runs on every resolver of every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApiScopes(u8);

impl ApiScopes {
    pub const NONE: ApiScopes = ApiScopes(0);

    pub fn of(scopes: impl IntoIterator<Item = ApiScope>) -> Self {
        ApiScopes(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    pub fn contains(self, scope: ApiScope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn intersect(self, other: ApiScopes) -> ApiScopes {
        ApiScopes(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = ApiScope> {
        ApiScope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

/// The built-in scopes a role may hold: what its members can do at all through the API.
pub fn role_scopes(role: Role) -> ApiScopes {
    match role {
        Role::Owner | Role::Admin => ApiScopes::of(ApiScope::ALL),
        Role::Integrator | Role::RestrictedIntegrator | Role::Guest => ApiScopes::of([
            ApiScope::UsersRead,
            ApiScope::ProfileWrite,
            ApiScope::SessionsRead,
            ApiScope::SessionsWrite,
        ]),
    }
}

/// What a token's `scope` (its claim, or the stored refresh token's) says about the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScopes {
    /// No API scope named: the principal's role decides, as before scopes existed.
    Unrestricted,
    /// Only these API scopes (built-in and organization-defined), never more than the role's.
    Restricted(BTreeSet<String>),
}

impl TokenScopes {
    /// Reads a space-separated `scope`: the names with a `:` are API scopes.
    pub fn parse(scope: &str) -> Self {
        let api: BTreeSet<String> = scope
            .split_whitespace()
            .filter(|name| is_api_scope_name(name))
            .map(str::to_owned)
            .collect();
        if api.is_empty() {
            TokenScopes::Unrestricted
        } else {
            TokenScopes::Restricted(api)
        }
    }

    /// The built-in scopes this token names (every one when unrestricted).
    pub fn built_in(&self) -> ApiScopes {
        match self {
            TokenScopes::Unrestricted => ApiScopes::of(ApiScope::ALL),
            TokenScopes::Restricted(names) => {
                ApiScopes::of(names.iter().filter_map(|name| ApiScope::parse(name)))
            }
        }
    }

    /// The names, or `None` when unrestricted (GraphQL's `scopes: null`).
    pub fn names(&self) -> Option<Vec<String>> {
        match self {
            TokenScopes::Unrestricted => None,
            TokenScopes::Restricted(names) => Some(names.iter().cloned().collect()),
        }
    }
}

/// The one rule: what a caller may do is what their role may, narrowed by the built-in scopes
/// their token names ([`TokenScopes::built_in`]).
pub fn effective(role: Role, token: ApiScopes) -> ApiScopes {
    role_scopes(role).intersect(token)
}

/// Whether a principal with `role`, holding the organization scopes `org_held` (by its
/// role's grants or its own), may hold the scope `name`: a built-in one by role, an
/// organization's own by grant.
pub fn holds(role: Role, org_held: &BTreeSet<&str>, name: &str) -> bool {
    match ApiScope::parse(name) {
        Some(scope) => role_scopes(role).contains(scope),
        None => org_held.contains(name),
    }
}

/// Whether `name` is an API scope name (built-in or organization-defined) rather than an
/// OpenID Connect one: API scopes always have a `:`.
pub fn is_api_scope_name(name: &str) -> bool {
    name.contains(':')
}

/// The longest organization-defined scope name.
pub const MAX_SCOPE_NAME: usize = 64;

/// Checks an organization-defined scope name: `<prefix>:<rest>`, lower-case ASCII letters,
/// digits, `_`, `-` and `.`, both parts non-empty, not a built-in name. These names travel in
/// access tokens and proxy headers, so nothing needing quoting is allowed.
pub fn check_org_scope_name(input: &str) -> Result<String, DomainError> {
    let name = input.trim();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c);
    let well_formed = name.len() <= MAX_SCOPE_NAME
        && name.split_once(':').is_some_and(|(prefix, rest)| {
            !prefix.is_empty()
                && !rest.is_empty()
                && prefix.chars().all(allowed)
                && rest.chars().all(allowed)
        });
    if !well_formed {
        return Err(DomainError::InvalidInput(format!(
            "a scope name is <prefix>:<name> (for example deploy:prod), in lower-case letters, \
             digits, '_', '-' and '.', at most {MAX_SCOPE_NAME} characters"
        )));
    }
    if ApiScope::parse(name).is_some() {
        return Err(DomainError::InvalidInput(format!(
            "{name} is a built-in scope"
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }

    fn any_scope_names() -> impl Strategy<Value = Vec<String>> {
        let names: Vec<String> = ApiScope::ALL
            .iter()
            .map(|s| s.name().to_owned())
            .chain(["deploy:prod", "openid", "profile", "offline_access"].map(str::to_owned))
            .collect();
        prop::collection::vec(prop::sample::select(names), 0..6)
    }

    proptest! {
        /// Effective permission is exactly the role's scopes intersected with the token's:
        /// checked scope by scope against the definition, for every role and scope string.
        #[test]
        fn effective_is_role_intersected_with_token(role in any_role(), names in any_scope_names()) {
            let token = TokenScopes::parse(&names.join(" "));
            let restricted = names.iter().any(|n| n.contains(':'));
            let effective = effective(role, token.built_in());
            for scope in ApiScope::ALL {
                let by_role = role_scopes(role).contains(scope);
                let by_token = !restricted || names.iter().any(|n| n == scope.name());
                prop_assert_eq!(effective.contains(scope), by_role && by_token, "{} {}", role, scope);
            }
            // Narrow, never widen: nothing beyond the role, whatever the token names.
            prop_assert_eq!(effective.intersect(role_scopes(role)), effective);
        }
    }

    #[test]
    fn tokens_from_before_scopes_are_unrestricted() {
        assert_eq!(
            TokenScopes::parse("openid profile email offline_access"),
            TokenScopes::Unrestricted
        );
        assert_eq!(TokenScopes::parse(""), TokenScopes::Unrestricted);
        assert_eq!(
            effective(Role::Guest, TokenScopes::Unrestricted.built_in()),
            role_scopes(Role::Guest)
        );
    }

    #[test]
    fn a_token_naming_only_an_organization_scope_has_no_built_in_one() {
        let token = TokenScopes::parse("deploy:prod");
        assert_eq!(effective(Role::Owner, token.built_in()), ApiScopes::NONE);
        assert_eq!(token.names(), Some(vec!["deploy:prod".to_owned()]));
    }

    #[test]
    fn organization_scope_names_are_checked() {
        assert_eq!(
            check_org_scope_name(" deploy:prod ").ok().as_deref(),
            Some("deploy:prod")
        );
        assert!(check_org_scope_name("deploy:prod.eu-1_a").is_ok());
        for bad in [
            "deploy",
            ":prod",
            "deploy:",
            "Deploy:prod",
            "deploy:pr od",
            "deploy:prod\"",
            "users:read",
            &format!("a:{}", "b".repeat(MAX_SCOPE_NAME)),
        ] {
            assert!(check_org_scope_name(bad).is_err(), "{bad}");
        }
    }
}
