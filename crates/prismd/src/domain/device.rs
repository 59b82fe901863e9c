//! The device authorization grant (RFC 8628), for machines without a browser: the machine gets
//! a device code to poll with and a short user code; a person approves the user code on any
//! device; the next poll returns tokens.

use prism_proto::wire::TokenResponse;
use ring::rand::{SecureRandom, SystemRandom};

use super::auth::AuthService;
use super::clients::{self, CLI_CLIENT_ID, DEFAULT_SCOPE};
use super::sessions::SessionOrigin;
use super::{DomainError, GrantError, RequestMeta, now_ms, secrets};
use crate::store::{AuditEvent, NewDeviceCode, StoreError, User};
use crate::tokens::hash_secret;

/// How long a device code can be approved and polled.
pub const DEVICE_CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// The polling interval a client starts with, in seconds.
pub const POLL_INTERVAL_SECS: i64 = 5;
/// Consonants only (RFC 8628 §6.1): no vowels to spell words, no look-alike characters.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// Why a device-code poll returns no tokens (RFC 8628 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the user has not approved the sign-in yet; keep polling")]
    AuthorizationPending,
    #[error("polling too fast; wait longer between polls")]
    SlowDown,
    #[error("the device code has expired; start the login again")]
    ExpiredToken,
    #[error("the user denied the sign-in")]
    AccessDenied,
    /// Starting one: too many are pending on the server.
    #[error("too many device logins are in progress on this server; try again in a minute")]
    TooManyPending,
}

/// What `POST /oauth/device/code` answers.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: String,
    /// Formatted for people: `BCDF-GHJK`.
    pub user_code: String,
    pub expires_in: i64,
    pub interval: i64,
}

/// `BCDF-GHJK`, `bcdfghjk` or `BCDF GHJK` → `BCDFGHJK`, if it can be a user code at all.
pub fn normalize_user_code(input: &str) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

fn new_user_code(rng: &SystemRandom) -> Result<String, DomainError> {
    let mut code = String::with_capacity(USER_CODE_LEN);
    let mut buf = [0u8; 32];
    while code.len() < USER_CODE_LEN {
        rng.fill(&mut buf)
            .map_err(|_| DomainError::Internal("randomness failed"))?;
        for byte in buf {
            // 240 = 12 * 20: rejection sampling keeps every character equally likely.
            if byte < 240 && code.len() < USER_CODE_LEN {
                code.push(char::from(USER_CODE_ALPHABET[usize::from(byte % 20)]));
            }
        }
    }
    Ok(code)
}

/// `BCDFGHJK` → `BCDF-GHJK`.
pub fn format_user_code(code: &str) -> String {
    let (left, right) = code.split_at(code.len() / 2);
    format!("{left}-{right}")
}

impl AuthService {
    /// Starts a device authorization for `client_id`.
    /// Starts a device login, unless `max_live` are pending already
    /// ([`DeviceError::TooManyPending`]): each is a row anyone can make.
    pub async fn start_device_authorization(
        &self,
        client_id: &str,
        scope: Option<&str>,
        max_live: i64,
    ) -> Result<DeviceAuthorization, DomainError> {
        if client_id != CLI_CLIENT_ID {
            return Err(DomainError::InvalidInput("unknown client_id".into()));
        }
        let scope = scope
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SCOPE);
        if !clients::known_scope(scope) {
            return Err(DomainError::InvalidInput("unknown scope".into()));
        }
        let rng = SystemRandom::new();
        let now = now_ms();
        if self.store().live_device_codes(now).await? >= max_live {
            return Err(DomainError::Device(DeviceError::TooManyPending));
        }
        // A user-code collision among live codes is possible (20^8 codes); try again then.
        for _ in 0..5 {
            let device_code = secrets::random_secret()?;
            let user_code = new_user_code(&rng)?;
            let stored = self
                .store()
                .insert_device_code(NewDeviceCode {
                    device_code_hash: hash_secret(&device_code),
                    user_code_hash: hash_secret(&user_code),
                    client_id: client_id.to_owned(),
                    scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
                    created_at: now,
                    expires_at: now + DEVICE_CODE_TTL_MS,
                    interval_secs: POLL_INTERVAL_SECS,
                })
                .await;
            match stored {
                Ok(()) => {
                    return Ok(DeviceAuthorization {
                        device_code,
                        user_code: format_user_code(&user_code),
                        expires_in: DEVICE_CODE_TTL_MS / 1000,
                        interval: POLL_INTERVAL_SECS,
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(DomainError::Internal("could not allocate a user code"))
    }

    /// One poll of the device-code grant: an error that tells the client what to do, or the
    /// tokens once (a new session named "Device login").
    pub async fn poll_device_code(
        &self,
        device_code: &str,
        client_id: &str,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, DomainError> {
        let hash = hash_secret(device_code);
        let now = now_ms();
        let unknown = || DomainError::InvalidGrant(GrantError::Code("the device code is unknown"));
        let code = self
            .store()
            .poll_device_code(&hash, now)
            .await?
            .ok_or_else(unknown)?;
        if code.client_id != client_id {
            return Err(unknown());
        }
        if code.expires_at <= now {
            return Err(DomainError::Device(DeviceError::ExpiredToken));
        }
        match code.status.as_str() {
            "pending" => {
                let too_soon = code
                    .last_polled_at
                    .is_some_and(|last| now - last < code.interval_secs * 1000);
                if too_soon {
                    self.store()
                        .slow_down_device_code(&hash, code.interval_secs + 5)
                        .await?;
                    return Err(DomainError::Device(DeviceError::SlowDown));
                }
                Err(DomainError::Device(DeviceError::AuthorizationPending))
            }
            "denied" => Err(DomainError::Device(DeviceError::AccessDenied)),
            "approved" => {
                if !self.store().redeem_device_code(&hash).await? {
                    return Err(DomainError::InvalidGrant(GrantError::Code(
                        "the device code was already used",
                    )));
                }
                let user_id = code.user_id.unwrap_or_default();
                let user =
                    self.store()
                        .active_user(&user_id)
                        .await?
                        .ok_or(DomainError::InvalidGrant(GrantError::Denied(
                            super::Denial::UserRemoved,
                        )))?;
                let origin = SessionOrigin {
                    name: Some("Device login".into()),
                    scope: Some(code.scope),
                    from_code: None,
                    ..Default::default()
                };
                let refresh_token = self
                    .sessions()
                    .mint_refresh_token(&user, origin, format!("user:{}", user.id), meta)
                    .await?;
                let mut response = self
                    .exchange_refresh_token(&refresh_token, None, None, meta)
                    .await?;
                response.refresh_token = Some(refresh_token);
                Ok(response)
            }
            _ => Err(DomainError::InvalidGrant(GrantError::Code(
                "the device code was already used",
            ))),
        }
    }

    /// Approves (for `user`) or denies the pending device code with this user code. Returns
    /// false when no pending code matches.
    /// `member` (signed in as `identity_id`, by password or an existing browser session)
    /// approves or denies the device code, audited as `device.approved` / `device.denied`
    /// about the member, in the same commit. False for a code that is not pending.
    pub async fn decide_device_code(
        &self,
        user_code: &str,
        member: &User,
        identity_id: &str,
        approve: bool,
        by_session: bool,
        meta: &RequestMeta,
    ) -> Result<bool, DomainError> {
        let Some(code) = normalize_user_code(user_code) else {
            return Ok(false);
        };
        let at = now_ms();
        let audit = AuditEvent {
            at,
            action: if approve {
                "device.approved"
            } else {
                "device.denied"
            },
            actor: format!("identity:{identity_id}"),
            org_id: Some(member.org_id.clone()),
            subject_user_id: Some(member.id.clone()),
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(
                serde_json::json!({
                    "identity": identity_id,
                    "signed_in_by": if by_session { "browser_session" } else { "password" },
                })
                .to_string(),
            ),
        };
        let user_id = approve.then_some(member.id.as_str());
        Ok(self
            .store()
            .decide_device_code(&hash_secret(&code), user_id, at, audit)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_normalize_and_reject_lookalikes() {
        assert_eq!(
            normalize_user_code("bcdf-ghjk").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(
            normalize_user_code("BCDF GHJK").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(normalize_user_code("ABCD-EFGH"), None, "vowels never occur");
        assert_eq!(normalize_user_code("BCDF-GHJ0"), None);
        assert_eq!(format_user_code("BCDFGHJK"), "BCDF-GHJK");
    }

    #[test]
    fn generated_codes_use_the_alphabet() -> Result<(), DomainError> {
        let code = new_user_code(&SystemRandom::new())?;
        assert_eq!(normalize_user_code(&code).as_deref(), Some(code.as_str()));
        Ok(())
    }
}
