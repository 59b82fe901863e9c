//! Token lifetimes: `--expires-in` durations turned into an RFC 3339 `expiresAt`, and the
//! warning when the refresh token in use is about to expire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Warn when the refresh token in use expires within this many seconds: a week leaves time
/// to mint and roll out a new one (the server mails the owner at the same distance).
pub const WARN_WITHIN_SECS: u64 = 7 * 86_400;

const SECS_PER_DAY: u64 = 86_400;

/// The `--expires-in` value parser: a humantime duration such as `30d`, `12h` or `1w`.
/// Parsed by clap so that a typo is a usage error (exit 2) before anything is sent.
pub fn parse_lifetime(text: &str) -> std::result::Result<Duration, String> {
    let lifetime = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 30d, 12h or 1w)"))?;
    if lifetime.is_zero() {
        return Err("a token must live for more than no time at all".to_owned());
    }
    Ok(lifetime)
}

/// `time` as RFC 3339 in UTC, to the second. Fails instead of panicking for times past the
/// year 9999, which humantime cannot write.
pub fn rfc3339(time: SystemTime) -> Result<String> {
    use std::fmt::Write as _;
    let mut text = String::new();
    write!(text, "{}", humantime::format_rfc3339_seconds(time))
        .map_err(|_| Error::new("that date is past the year 9999"))?;
    Ok(text)
}

/// The `expiresAt` of a token that lives `lifetime` from now.
pub fn expires_at_after(lifetime: Duration) -> Result<String> {
    SystemTime::now()
        .checked_add(lifetime)
        .ok_or_else(|| Error::new("--expires-in is too long"))
        .and_then(rfc3339)
        .map_err(|e| Error::new(format!("--expires-in is too long: {e}.")))
}

/// Whole days left, rounded up: a token minted for 3 days reads "in 3 days" on first use,
/// not "in 2 days" because a few seconds have passed.
fn days_left(secs: u64) -> u64 {
    secs.div_ceil(SECS_PER_DAY)
}

/// The warning for a refresh token that expires in `secs` seconds (from now), or `None` when
/// it has longer than [`WARN_WITHIN_SECS`].
pub fn expiry_warning(secs: u64, now: SystemTime) -> Option<String> {
    if secs >= WARN_WITHIN_SECS {
        return None;
    }
    let date = now
        .checked_add(Duration::from_secs(secs))
        .and_then(|at| rfc3339(at).ok())?;
    let days = days_left(secs);
    let unit = if days == 1 { "day" } else { "days" };
    Some(format!(
        "warning: the refresh token in use expires on {date} (in {days} {unit}); mint a new one with 'prism me:tokens:create'"
    ))
}

/// Prints the expiry warning on stderr, at most once per run: one command may exchange the
/// refresh token more than once (a login that switches tenant), and once is enough to act on.
/// stderr, so that stdout stays the command's output (`TOKEN=$(prism me:token)`).
pub fn warn_if_expiring(refresh_token_expires_in: Option<u64>) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(warning) =
        refresh_token_expires_in.and_then(|secs| expiry_warning(secs, SystemTime::now()))
    else {
        return;
    };
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2030: u64 = 1_893_456_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn lifetimes_are_humantime_durations() {
        assert_eq!(
            parse_lifetime("30d"),
            Ok(Duration::from_secs(30 * SECS_PER_DAY))
        );
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(
            parse_lifetime("1w 2d"),
            Ok(Duration::from_secs(9 * SECS_PER_DAY))
        );
        assert!(parse_lifetime("soon").is_err());
        assert!(parse_lifetime("30").is_err(), "a unit is required");
        assert!(parse_lifetime("0d").is_err());
    }

    #[test]
    fn dates_are_rfc3339_utc_seconds() -> Result<()> {
        assert_eq!(rfc3339(at(JAN_1_2030))?, "2030-01-01T00:00:00Z");
        assert!(rfc3339(at(253_402_300_800)).is_err());
        assert!(expires_at_after(Duration::from_secs(u64::MAX)).is_err());
        Ok(())
    }

    #[test]
    fn warns_only_within_a_week_and_names_the_date() {
        let now = at(JAN_1_2030);
        assert_eq!(expiry_warning(WARN_WITHIN_SECS, now), None);
        assert_eq!(
            expiry_warning(3 * SECS_PER_DAY - 5, now).as_deref(),
            Some(
                "warning: the refresh token in use expires on 2030-01-03T23:59:55Z (in 3 days); \
                 mint a new one with 'prism me:tokens:create'"
            )
        );
        let last_day = expiry_warning(3600, now).unwrap_or_default();
        assert!(last_day.contains("(in 1 day)"), "{last_day}");
    }
}
