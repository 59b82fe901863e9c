//! The audit trail as its readers see it: who may read which events (Owners and Admins, their
//! own organization's), the filters and cursor pages of the `auditEvents` query, and the
//! sign-in events, the one kind of event that no other write carries.

use super::roles::Role;
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{AuditEvent, AuditQuery, AuditRecord, Identity, MAX_AUDIT_PAGE, Store, User};

/// A password sign-in that succeeded.
pub const LOGIN_SUCCEEDED: &str = "login.succeeded";
/// A password sign-in that failed (and was counted by the limits).
pub const LOGIN_FAILED: &str = "login.failed";

/// Events per page when the reader does not ask for a number.
pub const DEFAULT_PAGE: i64 = 50;

/// Longest action name a filter may name: real ones are short, and a filter is echoed nowhere.
const MAX_ACTION_LENGTH: usize = 64;

/// Where a password was typed, for the event's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInPage {
    /// The browser login form (`/authorize`).
    Authorize,
    /// The device approval page (`/device`).
    Device,
    /// The password change page (`/account/password`), which checks the current one.
    ChangePassword,
}

impl SignInPage {
    fn label(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Device => "device",
            Self::ChangePassword => "change_password",
        }
    }
}

/// The outcome of one password sign-in, with the joined members of the identity the typed
/// email names (one event is written per member, so each organization's trail shows it).
#[derive(Debug, Clone, Copy)]
pub enum SignIn<'a> {
    Succeeded(&'a Identity, &'a [User]),
    /// The identity the typed email names, when there is one. An unknown email is recorded
    /// without a subject, and the typed email itself never: people type passwords into the
    /// email field, and a hash of a short string is no protection.
    Failed(Option<&'a Identity>, &'a [User]),
}

/// What an organization's reader may filter on; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    /// Events by (actor) or about (subject) this user; an id from another organization
    /// simply matches nothing.
    pub user_id: Option<String>,
    /// At or after (ms).
    pub since: Option<i64>,
    /// Before (ms).
    pub until: Option<i64>,
}

/// One page of events, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    pub has_next_page: bool,
}

/// Only Owners and Admins read their organization's audit trail.
pub fn ensure_reader(actor: &User) -> Result<(), DomainError> {
    if Role::of(actor).manages_users() {
        Ok(())
    } else {
        Err(DomainError::AccessDenied(
            "only Owners and Admins can read the audit trail".into(),
        ))
    }
}

fn checked_query(filter: AuditFilter, after: Option<i64>) -> Result<AuditQuery, DomainError> {
    let action = filter
        .action
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    if action.as_ref().is_some_and(|a| a.len() > MAX_ACTION_LENGTH) {
        return Err(DomainError::InvalidInput(format!(
            "action must have at most {MAX_ACTION_LENGTH} characters"
        )));
    }
    if after.is_some_and(|id| id < 1) {
        return Err(DomainError::InvalidInput("invalid cursor".into()));
    }
    Ok(AuditQuery {
        org_id: None,
        action,
        user_id: filter.user_id,
        since: filter.since,
        until: filter.until,
        before_id: after,
    })
}

/// The audit trail over the store: sign-in events and the readers' pages.
pub struct AuditTrail<'s> {
    store: &'s dyn Store,
}

impl<'s> AuditTrail<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// Writes a `login.succeeded` or `login.failed` event with the request's address and user
    /// agent. Never the password, and for failures never the typed email. A failure is written
    /// only after the limits counted it, so failures during a lock (refused before Argon2) write
    /// nothing and the rows are bounded by the limits.
    pub async fn record_sign_in(
        &self,
        outcome: SignIn<'_>,
        page: SignInPage,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let (action, actor, identity, members) = match outcome {
            SignIn::Succeeded(identity, members) => (
                LOGIN_SUCCEEDED,
                format!("identity:{}", identity.id),
                Some(identity),
                members,
            ),
            SignIn::Failed(identity, members) => (
                LOGIN_FAILED,
                format!("address:{}", meta.address.as_deref().unwrap_or("-")),
                identity,
                members,
            ),
        };
        let event = AuditEvent {
            at: now_ms(),
            action,
            actor,
            org_id: None,
            subject_user_id: None,
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(
                serde_json::json!({
                    "method": "password",
                    "page": page.label(),
                    "identity": identity.map(|i| i.id.as_str()),
                })
                .to_string(),
            ),
        };
        if members.is_empty() {
            return Ok(self.store.record_audit(event).await?);
        }
        for member in members {
            self.store
                .record_audit(AuditEvent {
                    org_id: Some(member.org_id.clone()),
                    subject_user_id: Some(member.id.clone()),
                    ..event.clone()
                })
                .await?;
        }
        Ok(())
    }

    /// One page of the actor's organization's events: Owners and Admins only. `after` is the id
    /// of the last event of the previous page; `first` is capped at [`MAX_AUDIT_PAGE`].
    pub async fn organization_events(
        &self,
        actor: &User,
        filter: AuditFilter,
        first: Option<i64>,
        after: Option<i64>,
    ) -> Result<AuditPage, DomainError> {
        ensure_reader(actor)?;
        let query = AuditQuery {
            org_id: Some(actor.org_id.clone()),
            ..checked_query(filter, after)?
        };
        let limit = first.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(DomainError::InvalidInput(format!(
                "first must be between 1 and {MAX_AUDIT_PAGE}"
            )));
        }
        self.page(&query, limit).await
    }

    /// The operator's view (`prismd audit`): every organization's events unless `org_id` is
    /// given, in pages like [`Self::organization_events`].
    pub async fn operator_events(
        &self,
        org_id: Option<String>,
        filter: AuditFilter,
        limit: i64,
        after: Option<i64>,
    ) -> Result<AuditPage, DomainError> {
        let query = AuditQuery {
            org_id,
            ..checked_query(filter, after)?
        };
        self.page(&query, limit.clamp(1, MAX_AUDIT_PAGE)).await
    }

    async fn page(&self, query: &AuditQuery, limit: i64) -> Result<AuditPage, DomainError> {
        // One more than asked for tells whether another page follows.
        let mut events = self.store.audit_events_page(query, limit + 1).await?;
        let has_next_page = events.len() as i64 > limit;
        events.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(AuditPage {
            events,
            has_next_page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        let blank = AuditFilter {
            action: Some("  ".into()),
            ..AuditFilter::default()
        };
        assert!(matches!(checked_query(blank, None), Ok(q) if q.action.is_none()));
        let long = AuditFilter {
            action: Some("x".repeat(MAX_ACTION_LENGTH + 1)),
            ..AuditFilter::default()
        };
        assert!(matches!(
            checked_query(long, None),
            Err(DomainError::InvalidInput(_))
        ));
        assert!(matches!(
            checked_query(AuditFilter::default(), Some(0)),
            Err(DomainError::InvalidInput(_))
        ));
        let query = checked_query(AuditFilter::default(), Some(7));
        assert!(matches!(query, Ok(q) if q.before_id == Some(7) && q.org_id.is_none()));
    }
}
