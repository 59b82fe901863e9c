//! Abuse limits on logins, device code entry and refresh tokens: failures are counted per key
//! in the store (so every replica on one PostgreSQL database sees the same counts), and a key
//! with too many failures is locked for a growing time. Successes never touch the store except
//! a login, which forgets its account's failures.

use sha2::{Digest, Sha256};

use super::{DomainError, RequestMeta, accounts, now_ms};
use crate::store::{AttemptPolicy, AuditEvent, Identity, Store};

/// What a limit counts; also the `kind` label of the trip metric and the audit detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Failed sign-ins of one account (browser form and device page).
    LoginAccount,
    /// Failed sign-ins from one address, whatever the account.
    LoginAddress,
    /// Unknown or malformed refresh tokens from one address.
    RefreshAddress,
    /// Wrong device user codes from one address.
    DeviceAddress,
    /// Password-reset mails asked for one account (counted per request, not per failure).
    ResetAccount,
    /// Password-reset mails asked for from one address.
    ResetAddress,
    /// Device logins started from one address (`/oauth/device/code`; counted per request:
    /// each one stores a row).
    DeviceStartAddress,
    /// Failed sign-ins from one trusted browser (its device cookie), counted instead of the
    /// account's: see `domain::trusted_devices`.
    LoginDevice,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::LoginAccount => "login_account",
            Self::LoginAddress => "login_address",
            Self::RefreshAddress => "refresh_address",
            Self::DeviceAddress => "device_address",
            Self::ResetAccount => "reset_account",
            Self::ResetAddress => "reset_address",
            Self::DeviceStartAddress => "device_start_address",
            Self::LoginDevice => "login_device",
        }
    }
}

/// The policy of each limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub login_account: AttemptPolicy,
    pub login_address: AttemptPolicy,
    pub refresh_address: AttemptPolicy,
    pub device_address: AttemptPolicy,
    pub reset_account: AttemptPolicy,
    pub reset_address: AttemptPolicy,
    pub device_start_address: AttemptPolicy,
    /// Most device logins pending at once on the whole server (every address together).
    pub live_device_codes: i64,
}

const MINUTE_MS: i64 = 60_000;

/// Device logins one address may start per window: a person starts one at a time; a NAT of a
/// whole office still has room.
pub const DEVICE_STARTS_PER_ADDRESS: i64 = 30;
/// Device logins pending at once, by default: each is a row, and each lives 10 minutes.
pub const DEFAULT_LIVE_DEVICE_CODES: i64 = 10_000;

impl Default for LimitSettings {
    /// The documented defaults (docs/security.md, "Limits").
    fn default() -> Self {
        let policy = |max_failures| AttemptPolicy {
            max_failures,
            window_ms: 15 * MINUTE_MS,
            lock_ms: MINUTE_MS,
            max_lock_ms: 15 * MINUTE_MS,
        };
        Self {
            login_account: policy(5),
            login_address: policy(20),
            refresh_address: policy(30),
            device_address: policy(10),
            reset_account: policy(3),
            reset_address: policy(10),
            device_start_address: policy(DEVICE_STARTS_PER_ADDRESS),
            live_device_codes: DEFAULT_LIVE_DEVICE_CODES,
        }
    }
}

impl LimitSettings {
    /// The longest window of any limit: counters older than that are garbage.
    pub fn longest_window(&self) -> std::time::Duration {
        let longest = [
            self.login_account,
            self.login_address,
            self.refresh_address,
            self.device_address,
            self.reset_account,
            self.reset_address,
            self.device_start_address,
        ]
        .iter()
        .map(|p| p.window_ms)
        .max()
        .unwrap_or(0);
        std::time::Duration::from_millis(u64::try_from(longest).unwrap_or(0))
    }

    fn policy(&self, kind: LimitKind) -> AttemptPolicy {
        match kind {
            LimitKind::LoginAccount => self.login_account,
            LimitKind::LoginAddress => self.login_address,
            LimitKind::RefreshAddress => self.refresh_address,
            LimitKind::DeviceAddress => self.device_address,
            LimitKind::ResetAccount => self.reset_account,
            LimitKind::ResetAddress => self.reset_address,
            LimitKind::DeviceStartAddress => self.device_start_address,
            // A trusted browser gets what the account would: the same guesses, the same locks.
            LimitKind::LoginDevice => self.login_account,
        }
    }
}

/// One counted key: its kind and the key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    kind: LimitKind,
    key: String,
}

impl LimitKey {
    /// The account a login names: its identity when one has that email, else the typed
    /// email, stored only as its SHA-256 (so the counters table never lists who was
    /// attacked; the same normalization as sign-in makes `Ann@X` and `ann@x` one account).
    /// Both kinds of key behave the same, so the counters tell no one which emails exist.
    pub fn login_account(identity: Option<&Identity>, email: &str) -> Self {
        if let Some(identity) = identity {
            return Self {
                kind: LimitKind::LoginAccount,
                key: format!("login:ident:{}", identity.id),
            };
        }
        let email =
            accounts::normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        let digest = Sha256::digest(email.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            kind: LimitKind::LoginAccount,
            key: format!("login:acct:{hex}"),
        }
    }

    /// A trusted browser's own count (its device cookie's id), which its sign-ins use in place
    /// of the account's.
    pub fn login_device(device_id: &str) -> Self {
        Self {
            kind: LimitKind::LoginDevice,
            key: format!("login:device:{device_id}"),
        }
    }

    /// The account a password-reset request names, keyed like [`LimitKey::login_account`]'s
    /// email form whether or not it exists (the limit must not tell which emails do).
    pub fn reset_account(email: &str) -> Self {
        let LimitKey { key, .. } = Self::login_account(None, email);
        Self {
            kind: LimitKind::ResetAccount,
            key: key.replacen("login:acct:", "reset:acct:", 1),
        }
    }

    /// The client address of a request, for a per-address kind; none without an address.
    pub fn address(kind: LimitKind, meta: &RequestMeta) -> Option<Self> {
        let prefix = match kind {
            LimitKind::LoginAccount | LimitKind::ResetAccount | LimitKind::LoginDevice => {
                return None;
            }
            LimitKind::ResetAddress => "reset:addr",
            LimitKind::DeviceStartAddress => "device-start:addr",
            LimitKind::LoginAddress => "login:addr",
            LimitKind::RefreshAddress => "refresh:addr",
            LimitKind::DeviceAddress => "device:addr",
        };
        let address = meta.address.as_deref().filter(|a| !a.is_empty())?;
        Some(Self {
            kind,
            key: format!("{prefix}:{}", address_group(address)),
        })
    }

    pub fn kind(&self) -> LimitKind {
        self.kind
    }
}

/// A failure's outcome: go on, or refuse for this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Locked; `Retry-After` in whole seconds (at least 1).
    Locked {
        retry_after_secs: u64,
    },
}

/// The limits, over the shared store.
pub struct Limits<'s> {
    store: &'s dyn Store,
    settings: LimitSettings,
}

fn seconds_until(until: i64, now: i64) -> u64 {
    // Rounded up: a client that waits this long is never refused again for the same lock.
    u64::try_from((until - now + 999) / 1000)
        .unwrap_or(1)
        .max(1)
}

impl<'s> Limits<'s> {
    pub fn new(store: &'s dyn Store, settings: LimitSettings) -> Self {
        Self { store, settings }
    }

    /// Whether any of `keys` is locked now: one read per key, no write.
    pub async fn check(&self, keys: &[LimitKey]) -> Result<Verdict, DomainError> {
        let now = now_ms();
        let mut longest = None;
        for key in keys {
            if let Some(counter) = self.store.attempt_counter(&key.key).await?
                && counter.locked_until > now
            {
                longest = longest.max(Some(counter.locked_until));
            }
        }
        Ok(match longest {
            Some(until) => Verdict::Locked {
                retry_after_secs: seconds_until(until, now),
            },
            None => Verdict::Allowed,
        })
    }

    /// Counts one failure for each of `keys`; `Locked` when any of them is locked now. A new
    /// lock is audited as `limit.tripped` with the request's address and user agent, and about
    /// `subject` (user id, organization id) when the account is known.
    pub async fn fail(
        &self,
        keys: &[LimitKey],
        meta: &RequestMeta,
        subject: Option<(&str, &str)>,
    ) -> Result<Verdict, DomainError> {
        let now = now_ms();
        let mut longest = None;
        for key in keys {
            let trip = AuditEvent {
                at: now,
                action: "limit.tripped",
                actor: format!("address:{}", meta.address.as_deref().unwrap_or("-")),
                org_id: subject
                    .filter(|_| key.kind == LimitKind::LoginAccount)
                    .map(|(_, org)| org.to_owned()),
                subject_user_id: subject
                    .filter(|_| key.kind == LimitKind::LoginAccount)
                    .map(|(user, _)| user.to_owned()),
                address: meta.address.clone(),
                user_agent: meta.user_agent.clone(),
                detail: Some(serde_json::json!({ "limit": key.kind.label() }).to_string()),
            };
            let counter = self
                .store
                .record_attempt_failure(&key.key, now, self.settings.policy(key.kind), trip)
                .await?;
            if counter.locked_until > now {
                // Never the email or a token: the kind and the address say enough.
                tracing::info!(
                    limit = key.kind.label(),
                    failures = counter.failures,
                    address = meta.address.as_deref().unwrap_or("-"),
                    "too many failures; locked"
                );
                longest = longest.max(Some(counter.locked_until));
            }
        }
        Ok(match longest {
            Some(until) => Verdict::Locked {
                retry_after_secs: seconds_until(until, now),
            },
            None => Verdict::Allowed,
        })
    }

    /// Forgets the failures of `key` after a success.
    pub async fn clear(&self, key: &LimitKey) -> Result<(), DomainError> {
        Ok(self.store.clear_attempts(&key.key).await?)
    }
}

/// "in 45 seconds", "in 3 minutes": when a locked client may try again, for a page.
pub fn wait_text(seconds: u64) -> String {
    match seconds {
        0..=1 => "in 1 second".to_owned(),
        2..=119 => format!("in {seconds} seconds"),
        _ => format!("in {} minutes", seconds.div_ceil(60)),
    }
}

/// What one client's addresses have in common: an IPv4 address itself, an IPv6 address's /64
/// (one subscriber's network gets a whole /64 and picks addresses in it at will, so counting
/// per address would give one client 2^64 fresh counters). Anything else as it is.
pub fn address_group(address: &str) -> String {
    match address
        .parse::<std::net::IpAddr>()
        .map(|a| a.to_canonical())
    {
        Ok(std::net::IpAddr::V6(v6)) => {
            let [a, b, c, d, ..] = v6.segments();
            format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
        }
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        assert_eq!(address_group("2001:db8:1:2::a"), "2001:db8:1:2::/64");
        assert_eq!(address_group("2001:db8:1:2:ffff::b"), "2001:db8:1:2::/64");
        assert_ne!(
            address_group("2001:db8:1:3::a"),
            address_group("2001:db8:1:2::a")
        );
        assert_eq!(address_group("203.0.113.7"), "203.0.113.7");
        assert_eq!(address_group("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(address_group("not an address"), "not an address");
        let meta = |address: &str| RequestMeta {
            address: Some(address.to_owned()),
            user_agent: None,
        };
        let key = |address: &str| {
            LimitKey::address(LimitKind::RefreshAddress, &meta(address)).map(|k| k.key)
        };
        assert_eq!(key("2001:db8:1:2::a"), key("2001:db8:1:2::b"));
        assert_ne!(key("2001:db8:1:2::a"), key("2001:db8:1:3::a"));
    }

    #[test]
    fn locks_grow_and_are_capped() {
        let policy = LimitSettings::default().login_account;
        assert_eq!(policy.lock_for(4), 0);
        assert_eq!(policy.lock_for(5), MINUTE_MS);
        assert_eq!(policy.lock_for(6), 2 * MINUTE_MS);
        assert_eq!(policy.lock_for(9), 15 * MINUTE_MS);
        assert_eq!(policy.lock_for(500), 15 * MINUTE_MS);
    }

    #[test]
    fn account_keys_hide_and_normalize_the_email() {
        let key = LimitKey::login_account(None, " Ann@Example.com ");
        assert_eq!(key, LimitKey::login_account(None, "ann@example.com"));
        assert!(!key.key.contains("ann"));
        let meta = RequestMeta {
            address: Some("192.0.2.1".into()),
            user_agent: None,
        };
        assert_eq!(
            LimitKey::address(LimitKind::RefreshAddress, &meta).map(|k| k.key),
            Some("refresh:addr:192.0.2.1".to_owned())
        );
        assert_eq!(
            LimitKey::address(LimitKind::LoginAddress, &RequestMeta::default()),
            None
        );
    }

    #[test]
    fn waits_read_well() {
        assert_eq!(wait_text(1), "in 1 second");
        assert_eq!(wait_text(45), "in 45 seconds");
        assert_eq!(wait_text(600), "in 10 minutes");
    }
}
