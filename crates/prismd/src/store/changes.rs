//! The change feed's unit: a committed change that may make state cached by some process
//! stale.

use super::AuditEvent;

/// Audit actions that change nothing another process may have cached (they record what
/// happened, not a change of anyone's standing). The change feed still carries them, but
/// the cache ignores them, so a flood of failed sign-ins (for unknown emails they concern no
/// user, which would otherwise mean "drop everything") cannot empty the caches of every
/// replica.
/// An identity's password changes no token's standing either (it ends browser sessions, which
/// no cache holds), and a reset request can be made by anyone.
pub const INFORMATIONAL_ACTIONS: [&str; 11] = [
    "login.succeeded",
    "login.failed",
    // A browser session ended, a device code decided: no token's standing changes (the
    // tokens a device gets are audited when they are minted).
    "logout",
    "device.approved",
    "device.denied",
    "limit.tripped",
    "identity.password_set",
    "identity.password_changed",
    "identity.password_reset",
    "identity.reset_requested",
    // An OIDC token exchanged under a trust policy: a session it starts is new (nothing cached
    // names it), and one it replaces had already ended.
    "oidc.exchanged",
];

/// A committed change that may make state cached by some process stale: the audited action
/// and the user it concerns. Every process follows the changes of every other process (and
/// its own) through [`Store::follow_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The audit action, for example `tokens.revoked_all` or `user.removed`.
    pub action: String,
    /// `None` means "anyone": drop everything cached.
    pub user_id: Option<String>,
}

impl Change {
    /// The action of [`Change::listening`].
    pub const LISTENING: &'static str = "listening";

    /// The change an audit row announces: its action, about its subject (or anyone).
    pub fn of(event: &AuditEvent) -> Self {
        Self {
            action: event.action.to_owned(),
            user_id: event.subject_user_id.clone(),
        }
    }

    /// What a follower assumes when it may have missed changes (for example after a
    /// reconnect): everything changed.
    pub fn everything() -> Self {
        Self {
            action: "*".to_owned(),
            user_id: None,
        }
    }

    /// The first thing a feed delivers, once every change committed from then on will reach
    /// it. Whatever was committed before may have been missed, so it also means "everything
    /// changed".
    pub fn listening() -> Self {
        Self {
            action: Self::LISTENING.to_owned(),
            user_id: None,
        }
    }
}
