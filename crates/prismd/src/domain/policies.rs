//! Session policies (issue 7): per organization, an optional idle expiry and maximum age for
//! refresh tokens, both off by default for parity with Prismatic. Owns when a session has
//! expired under its policy, and reading (Owners and Admins) and changing (Owners) a policy.
//!
//! People give policies in whole days; they are stored in seconds, so the exchange compares
//! milliseconds without converting units more than once.

use super::roles::Role;
use super::{DomainError, RequestMeta, now_ms};
use crate::store::{AuditEvent, SessionPolicy, Store, User};

/// One day in seconds, the unit policies are given in.
pub const SECONDS_PER_DAY: i64 = 86_400;
/// The longest policy one can set, in days (about ten years): anything longer is a typo.
pub const MAX_POLICY_DAYS: i64 = 3650;
/// The audit action of a policy change; the change feed turns it into "drop every cached
/// grant", since grants carry the policy.
pub const POLICY_CHANGED_ACTION: &str = "org.policy_changed";

/// When a session ends under `policy`, in ms since the epoch, or `None` if it never does.
/// `last_used_at` is the newest use known (stored or still in memory); a session never used
/// counts as used when it was created.
pub fn expires_at(
    policy: SessionPolicy,
    created_at: i64,
    last_used_at: Option<i64>,
) -> Option<i64> {
    let by_age = policy
        .max_age_secs
        .map(|secs| created_at.saturating_add(secs.saturating_mul(1000)));
    let last_use = last_used_at.map_or(created_at, |at| at.max(created_at));
    let by_idle = policy
        .idle_expiry_secs
        .map(|secs| last_use.saturating_add(secs.saturating_mul(1000)));
    match (by_age, by_idle) {
        (Some(age), Some(idle)) => Some(age.min(idle)),
        (age, idle) => age.or(idle),
    }
}

/// Whether a session has ended under `policy` at `now` (ms).
pub fn has_expired(
    policy: SessionPolicy,
    created_at: i64,
    last_used_at: Option<i64>,
    now: i64,
) -> bool {
    expires_at(policy, created_at, last_used_at).is_some_and(|end| now >= end)
}

/// Seconds as whole days, rounded up (a limit is never shown as shorter than it is).
pub fn days_of(secs: i64) -> i64 {
    secs.saturating_add(SECONDS_PER_DAY - 1) / SECONDS_PER_DAY
}

/// The audit action of a change of an organization's maximum token lifetime.
pub const TOKEN_POLICY_CHANGED_ACTION: &str = "org.token_policy_changed";

/// A policy as people see it: whole days, `None` for off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyDays {
    pub idle_expiry_days: Option<i64>,
    pub max_age_days: Option<i64>,
}

impl PolicyDays {
    /// A stored policy in days (stored values are whole days; anything else rounds up, so a
    /// policy is never shown as shorter than it is).
    pub fn of(policy: SessionPolicy) -> Self {
        let days = |secs: Option<i64>| secs.map(days_of);
        Self {
            idle_expiry_days: days(policy.idle_expiry_secs),
            max_age_days: days(policy.max_age_secs),
        }
    }
}

/// A change to a policy as people give it, per limit: `None` leaves it as it is,
/// `Some(None)` turns it off, `Some(Some(days))` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub idle_expiry_days: Option<Option<i64>>,
    pub max_age_days: Option<Option<i64>>,
}

/// A checked [`PolicyUpdate`], in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckedUpdate {
    idle_expiry_secs: Option<Option<i64>>,
    max_age_secs: Option<Option<i64>>,
}

impl CheckedUpdate {
    fn apply(self, old: SessionPolicy) -> SessionPolicy {
        SessionPolicy {
            idle_expiry_secs: self.idle_expiry_secs.unwrap_or(old.idle_expiry_secs),
            max_age_secs: self.max_age_secs.unwrap_or(old.max_age_secs),
        }
    }
}

impl PolicyUpdate {
    /// Checks each day count is within 1..=[`MAX_POLICY_DAYS`]. The error names the GraphQL
    /// field at fault.
    pub fn check(self) -> Result<CheckedUpdate, (&'static str, DomainError)> {
        let seconds = |days: Option<Option<i64>>, field: &'static str| match days {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(days)) if (1..=MAX_POLICY_DAYS).contains(&days) => {
                Ok(Some(Some(days * SECONDS_PER_DAY)))
            }
            Some(Some(_)) => Err((
                field,
                DomainError::InvalidInput(format!(
                    "{field} must be a whole number of days from 1 to {MAX_POLICY_DAYS}, \
                     or null to turn this limit off"
                )),
            )),
        };
        Ok(CheckedUpdate {
            idle_expiry_secs: seconds(self.idle_expiry_days, "idleExpiryDays")?,
            max_age_secs: seconds(self.max_age_days, "maxAgeDays")?,
        })
    }
}

fn policy_detail(policy: SessionPolicy) -> serde_json::Value {
    serde_json::json!({
        "idle_expiry_secs": policy.idle_expiry_secs,
        "max_age_secs": policy.max_age_secs,
    })
}

/// Session policies over the store: reading and changing an organization's.
pub struct Policies<'s> {
    store: &'s dyn Store,
}

impl<'s> Policies<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// The policy of the actor's organization: Owners and Admins only.
    pub async fn read(&self, actor: &User) -> Result<SessionPolicy, DomainError> {
        if !Role::of(actor).manages_users() {
            return Err(DomainError::AccessDenied(
                "only Owners and Admins can see the session policy".into(),
            ));
        }
        self.current(&actor.org_id).await
    }

    /// The maximum lifetime of the organization's minted tokens, in seconds (`None`: none).
    pub async fn token_lifetime_max(&self, org_id: &str) -> Result<Option<i64>, DomainError> {
        self.store
            .token_lifetime_max(org_id)
            .await?
            .ok_or_else(|| DomainError::NotFound("no such organization".into()))
    }

    /// The token policy of the actor's organization (Owners and Admins): the maximum lifetime
    /// of minted tokens in days, `None` for no maximum.
    pub async fn read_token_policy(&self, actor: &User) -> Result<Option<i64>, DomainError> {
        if !Role::of(actor).manages_users() {
            return Err(DomainError::AccessDenied(
                "only Owners and Admins can see the token policy".into(),
            ));
        }
        Ok(self.token_lifetime_max(&actor.org_id).await?.map(days_of))
    }

    /// Sets the maximum lifetime of the organization's minted tokens (Owners only; `None`
    /// lifts it), audited as [`TOKEN_POLICY_CHANGED_ACTION`]. Tokens minted before keep their
    /// expiry: the maximum is checked when a token is minted.
    pub async fn update_token_policy(
        &self,
        actor: &User,
        max_days: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<Option<i64>, DomainError> {
        if Role::of(actor) != Role::Owner {
            return Err(DomainError::AccessDenied(
                "only Owners can change the token policy".into(),
            ));
        }
        if max_days.is_some_and(|days| !(1..=MAX_POLICY_DAYS).contains(&days)) {
            return Err(DomainError::InvalidInput(format!(
                "maxLifetimeDays must be a whole number of days from 1 to {MAX_POLICY_DAYS}, \
                 or null for no maximum"
            )));
        }
        let old = self.token_lifetime_max(&actor.org_id).await?;
        let max_secs = max_days.map(|days| days * SECONDS_PER_DAY);
        let audit = AuditEvent {
            at: now_ms(),
            action: TOKEN_POLICY_CHANGED_ACTION,
            actor: format!("user:{}", actor.id),
            org_id: Some(actor.org_id.clone()),
            subject_user_id: None,
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(
                serde_json::json!({ "old_max_secs": old, "new_max_secs": max_secs }).to_string(),
            ),
        };
        if !self
            .store
            .set_token_lifetime_max(&actor.org_id, max_secs, audit)
            .await?
        {
            return Err(DomainError::NotFound("no such organization".into()));
        }
        Ok(max_days)
    }

    async fn current(&self, org_id: &str) -> Result<SessionPolicy, DomainError> {
        self.store
            .session_policy(org_id)
            .await?
            .ok_or_else(|| DomainError::NotFound("no such organization".into()))
    }

    /// Changes the policy of the actor's organization (Owners only), audited as
    /// [`POLICY_CHANGED_ACTION`] with the old and new values. It applies at once, on every
    /// replica, to every refresh token of the organization, old ones included. Returns the new
    /// policy.
    pub async fn update(
        &self,
        actor: &User,
        update: CheckedUpdate,
        meta: &RequestMeta,
    ) -> Result<SessionPolicy, DomainError> {
        if Role::of(actor) != Role::Owner {
            return Err(DomainError::AccessDenied(
                "only Owners can change the session policy".into(),
            ));
        }
        // Compare-and-set against the policy we read, so the audit's "old" is really what was
        // replaced; a concurrent change makes us read again.
        for _ in 0..3 {
            let old = self.current(&actor.org_id).await?;
            let policy = update.apply(old);
            let audit = AuditEvent {
                at: now_ms(),
                action: POLICY_CHANGED_ACTION,
                actor: format!("user:{}", actor.id),
                org_id: Some(actor.org_id.clone()),
                // No one user: the change feed hears "anyone", and every replica drops its
                // cached grants.
                subject_user_id: None,
                address: meta.address.clone(),
                user_agent: meta.user_agent.clone(),
                detail: Some(
                    serde_json::json!({
                        "old": policy_detail(old),
                        "new": policy_detail(policy),
                    })
                    .to_string(),
                ),
            };
            if self
                .store
                .set_session_policy(&actor.org_id, old, policy, audit)
                .await?
            {
                return Ok(policy);
            }
        }
        Err(DomainError::Conflict(
            "the session policy changed while updating it; try again".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = SECONDS_PER_DAY * 1000;

    #[test]
    fn no_policy_never_expires() {
        let off = SessionPolicy::default();
        assert_eq!(expires_at(off, 0, None), None);
        assert!(!has_expired(off, 0, Some(1), i64::MAX));
    }

    #[test]
    fn max_age_counts_from_creation_whatever_the_use() {
        let policy = SessionPolicy {
            idle_expiry_secs: None,
            max_age_secs: Some(30 * SECONDS_PER_DAY),
        };
        let created = 1_000 * DAY_MS;
        let used = Some(created + 29 * DAY_MS);
        assert!(!has_expired(
            policy,
            created,
            used,
            created + 30 * DAY_MS - 1
        ));
        assert!(has_expired(policy, created, used, created + 30 * DAY_MS));
    }

    #[test]
    fn idle_expiry_counts_from_the_newest_use_or_creation() {
        let policy = SessionPolicy {
            idle_expiry_secs: Some(7 * SECONDS_PER_DAY),
            max_age_secs: None,
        };
        let created = 1_000 * DAY_MS;
        // Never used: idle since creation.
        assert!(!has_expired(
            policy,
            created,
            None,
            created + 7 * DAY_MS - 1
        ));
        assert!(has_expired(policy, created, None, created + 7 * DAY_MS));
        // Used on day 5: good until day 12.
        let used = Some(created + 5 * DAY_MS);
        assert!(!has_expired(
            policy,
            created,
            used,
            created + 12 * DAY_MS - 1
        ));
        assert!(has_expired(policy, created, used, created + 12 * DAY_MS));
        // A last use before creation (clock skew) counts as creation.
        assert_eq!(
            expires_at(policy, created, Some(0)),
            Some(created + 7 * DAY_MS)
        );
    }

    #[test]
    fn the_earlier_limit_wins() {
        let policy = SessionPolicy {
            idle_expiry_secs: Some(7 * SECONDS_PER_DAY),
            max_age_secs: Some(10 * SECONDS_PER_DAY),
        };
        assert_eq!(expires_at(policy, 0, Some(5 * DAY_MS)), Some(10 * DAY_MS));
        assert_eq!(expires_at(policy, 0, Some(DAY_MS)), Some(8 * DAY_MS));
    }

    #[test]
    fn updates_are_validated_and_applied() -> Result<(), String> {
        let old = SessionPolicy {
            idle_expiry_secs: Some(SECONDS_PER_DAY),
            max_age_secs: Some(2 * SECONDS_PER_DAY),
        };
        let set_both = PolicyUpdate {
            idle_expiry_days: Some(Some(1)),
            max_age_days: Some(Some(MAX_POLICY_DAYS)),
        };
        let checked = set_both.check().map_err(|(field, _)| field.to_owned())?;
        assert_eq!(
            checked.apply(SessionPolicy::default()),
            SessionPolicy {
                idle_expiry_secs: Some(SECONDS_PER_DAY),
                max_age_secs: Some(MAX_POLICY_DAYS * SECONDS_PER_DAY),
            }
        );
        // Absent keeps a limit, null clears it.
        let clear_age = PolicyUpdate {
            idle_expiry_days: None,
            max_age_days: Some(None),
        };
        let checked = clear_age.check().map_err(|(field, _)| field.to_owned())?;
        assert_eq!(
            checked.apply(old),
            SessionPolicy {
                idle_expiry_secs: Some(SECONDS_PER_DAY),
                max_age_secs: None,
            }
        );
        for (update, field) in [
            (
                PolicyUpdate {
                    idle_expiry_days: Some(Some(0)),
                    max_age_days: None,
                },
                "idleExpiryDays",
            ),
            (
                PolicyUpdate {
                    idle_expiry_days: None,
                    max_age_days: Some(Some(-3)),
                },
                "maxAgeDays",
            ),
            (
                PolicyUpdate {
                    idle_expiry_days: Some(Some(1)),
                    max_age_days: Some(Some(MAX_POLICY_DAYS + 1)),
                },
                "maxAgeDays",
            ),
        ] {
            assert_eq!(update.check().err().map(|(f, _)| f), Some(field));
        }
        Ok(())
    }

    #[test]
    fn stored_seconds_show_as_days_rounded_up() {
        assert_eq!(
            PolicyDays::of(SessionPolicy::default()),
            PolicyDays::default()
        );
        assert_eq!(
            PolicyDays::of(SessionPolicy {
                idle_expiry_secs: Some(SECONDS_PER_DAY + 1),
                max_age_secs: Some(2 * SECONDS_PER_DAY),
            }),
            PolicyDays {
                idle_expiry_days: Some(2),
                max_age_days: Some(2),
            }
        );
    }
}
