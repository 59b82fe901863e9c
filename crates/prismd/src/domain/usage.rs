//! Last-use bookkeeping for refresh tokens. The exchange path only notes the use in memory;
//! a background task writes the latest use per token in one batch every few seconds, so a
//! refresh costs no database write.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::TokenUse;

/// Pending last-use records, newest per token.
#[derive(Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<String, TokenUse>>,
}

impl UsageRecorder {
    /// Notes that `token_id` was used at `at` from `address`.
    pub fn record(&self, token_id: &str, at: i64, address: Option<&str>) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        match pending.get_mut(token_id) {
            Some(existing) if existing.at >= at => {}
            Some(existing) => {
                existing.at = at;
                existing.address = address.map(str::to_owned);
            }
            None => {
                pending.insert(
                    token_id.to_owned(),
                    TokenUse {
                        token_id: token_id.to_owned(),
                        at,
                        address: address.map(str::to_owned),
                    },
                );
            }
        }
    }

    /// Takes everything noted since the last call.
    pub fn drain(&self) -> Vec<TokenUse> {
        match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(_, use_)| use_).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_latest_use_per_token() {
        let recorder = UsageRecorder::default();
        recorder.record("a", 10, Some("1.1.1.1"));
        recorder.record("a", 5, Some("2.2.2.2"));
        recorder.record("a", 20, Some("3.3.3.3"));
        recorder.record("b", 7, None);
        let mut uses = recorder.drain();
        uses.sort_by(|x, y| x.token_id.cmp(&y.token_id));
        assert_eq!(uses.len(), 2);
        assert_eq!(
            (uses[0].at, uses[0].address.as_deref()),
            (20, Some("3.3.3.3"))
        );
        assert_eq!((uses[1].at, uses[1].address.as_deref()), (7, None));
        assert!(recorder.drain().is_empty());
    }
}
