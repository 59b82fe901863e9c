//! The roles of an organization member (Owner, Admin, Integrator, Restricted Integrator,
//! Guest): their stored keys, display names and descriptions, how they parse, and what each
//! may manage. Accounts, sessions, policies and the audit trail all ask this one module.

use std::fmt;
use std::str::FromStr;

use super::DomainError;
use crate::store::User;

/// Roles of an organization member, most privileged first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Integrator,
    RestrictedIntegrator,
    Guest,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Integrator,
        Role::RestrictedIntegrator,
        Role::Guest,
    ];

    /// The stored form.
    pub fn key(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Integrator => "integrator",
            Role::RestrictedIntegrator => "restricted_integrator",
            Role::Guest => "guest",
        }
    }

    /// The display name, as Prismatic shows it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "Owner",
            Role::Admin => "Admin",
            Role::Integrator => "Integrator",
            Role::RestrictedIntegrator => "Restricted Integrator",
            Role::Guest => "Guest",
        }
    }
}

impl Role {
    /// Owners and Admins manage the organization's users.
    pub fn manages_users(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    pub fn description(self) -> &'static str {
        match self {
            Role::Owner => "Full control of the organization, including its Owners",
            Role::Admin => "Manages users and everything in the organization except Owners",
            Role::Integrator => "Builds and deploys integrations",
            Role::RestrictedIntegrator => "Builds integrations; cannot deploy to customers",
            Role::Guest => "Read-only access",
        }
    }

    /// The role of a stored user (an unknown stored value gets the least privilege).
    pub fn of(user: &User) -> Role {
        Role::from_key(&user.role)
    }

    /// The role of a stored key (an unknown stored value gets the least privilege).
    pub fn from_key(key: &str) -> Role {
        key.parse().unwrap_or(Role::Guest)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = DomainError;

    /// Accepts the key or the display name in any case, with spaces, hyphens or underscores.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let wanted: String = input
            .trim()
            .chars()
            .map(|c| {
                if c == ' ' || c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Role::ALL
            .into_iter()
            .find(|role| role.key() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                DomainError::InvalidInput(format!("unknown role; use one of: {}", names.join(", ")))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_leniently_and_reject_unknown() -> Result<(), DomainError> {
        assert_eq!(
            "Restricted Integrator".parse::<Role>()?,
            Role::RestrictedIntegrator
        );
        assert_eq!(
            "restricted-integrator".parse::<Role>()?,
            Role::RestrictedIntegrator
        );
        assert_eq!("ADMIN".parse::<Role>()?, Role::Admin);
        assert!("root".parse::<Role>().is_err());
        Ok(())
    }
}
