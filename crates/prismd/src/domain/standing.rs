//! The one rule every endpoint applies before honouring a token: a removed user gets nothing,
//! a token issued before its user's last revoke-all (or from a revoked session) is dead, and
//! so is a refresh token its organization's session policy has expired (`domain::policies`
//! decides when that is) or whose own expiry has passed.

use std::fmt;

/// Why a token's holder no longer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    UserRemoved,
    Revoked,
    /// The session outlived its organization's idle expiry or maximum age. Told apart from
    /// [`Denial::Revoked`] for metrics only: the client gets the same answer.
    Expired,
    /// The token's own expiry (ms since the epoch), set when it was minted, has passed. Said
    /// so, with the time: the holder chose that expiry and must know to mint a new token.
    TokenExpired(i64),
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denial::UserRemoved => "the token's user has been removed from the organization",
            // An expired session reads exactly like a revoked one, as the issue asks: the
            // remedy is the same (a new refresh token).
            Denial::Revoked | Denial::Expired => {
                "the token has been revoked; mint a new refresh token with 'prism me:token --type refresh'"
            }
            Denial::TokenExpired(at) => {
                let since = std::time::Duration::from_millis(u64::try_from(*at).unwrap_or(0));
                return write!(
                    f,
                    "the refresh token expired at {}; mint a new one with 'prism me:tokens:create'",
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since)
                );
            }
        })
    }
}

/// The facts the rule looks at, wherever they were read from.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub user_removed: bool,
    /// The user's current token epoch.
    pub user_epoch: i64,
    /// The epoch the presented token was issued under.
    pub token_epoch: i64,
    /// The session (refresh token) was revoked on its own, or no longer exists.
    pub session_revoked: bool,
    /// The session has expired under its organization's session policy.
    pub session_expired: bool,
    /// The token's own expiry, when it has passed (ms since the epoch).
    pub token_expired_at: Option<i64>,
}

/// Applies the rule.
pub fn check(standing: Standing) -> Result<(), Denial> {
    if standing.user_removed {
        return Err(Denial::UserRemoved);
    }
    if standing.session_revoked || standing.token_epoch != standing.user_epoch {
        return Err(Denial::Revoked);
    }
    if let Some(at) = standing.token_expired_at {
        return Err(Denial::TokenExpired(at));
    }
    if standing.session_expired {
        return Err(Denial::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Standing = Standing {
        user_removed: false,
        user_epoch: 3,
        token_epoch: 3,
        session_revoked: false,
        session_expired: false,
        token_expired_at: None,
    };

    #[test]
    fn each_fact_denies_on_its_own() {
        assert_eq!(check(OK), Ok(()));
        assert_eq!(
            check(Standing {
                user_removed: true,
                ..OK
            }),
            Err(Denial::UserRemoved)
        );
        assert_eq!(
            check(Standing {
                token_epoch: 2,
                ..OK
            }),
            Err(Denial::Revoked)
        );
        assert_eq!(
            check(Standing {
                token_epoch: 4,
                ..OK
            }),
            Err(Denial::Revoked)
        );
        assert_eq!(
            check(Standing {
                session_revoked: true,
                ..OK
            }),
            Err(Denial::Revoked)
        );
        assert_eq!(
            check(Standing {
                session_expired: true,
                ..OK
            }),
            Err(Denial::Expired)
        );
        // A revoked session is reported as revoked, expired or not.
        assert_eq!(
            check(Standing {
                session_revoked: true,
                session_expired: true,
                ..OK
            }),
            Err(Denial::Revoked)
        );
        assert_eq!(
            Denial::Expired.to_string(),
            Denial::Revoked.to_string(),
            "an expired session must read exactly like a revoked one"
        );
        // A token past its own expiry says so, with the time.
        let expired = check(Standing {
            token_expired_at: Some(1_767_225_600_000),
            ..OK
        });
        assert_eq!(expired, Err(Denial::TokenExpired(1_767_225_600_000)));
        assert!(
            Denial::TokenExpired(1_767_225_600_000)
                .to_string()
                .contains("expired at 2026-01-01T00:00:00Z")
        );
    }
}
