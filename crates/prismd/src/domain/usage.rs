//! Last-use bookkeeping for refresh tokens. The exchange path only notes the use in memory;
//! a background task writes what is due in one batch every few seconds, and each token's
//! record at most once per [`MIN_WRITE_INTERVAL_MS`], so a refresh costs no database write and
//! a busy token costs one row write a minute, however often CI jobs use it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::store::TokenUse;

/// Shortest time between two writes of one token's last use.
pub const MIN_WRITE_INTERVAL_MS: i64 = 60_000;

#[derive(Default)]
struct Books {
    /// Newest use per token not written yet.
    pending: HashMap<String, TokenUse>,
    /// When each recently written token's use was written (its `at`); older entries are
    /// forgotten, since they no longer hold anything back.
    written: HashMap<String, i64>,
    /// Uses taken by [`UsageRecorder::drain_due`] and not yet reported written (or put back):
    /// neither pending nor, perhaps, in the database yet, but a use all the same.
    in_flight: HashMap<String, i64>,
}

/// Pending last-use records, newest per token.
#[derive(Default)]
pub struct UsageRecorder {
    books: Mutex<Books>,
}

impl UsageRecorder {
    fn lock(&self) -> MutexGuard<'_, Books> {
        // Every operation leaves the maps consistent; a poisoned lock is still usable.
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `token_id` was used at `at` from `address`.
    pub fn record(&self, token_id: &str, at: i64, address: Option<&str>) {
        let mut books = self.lock();
        match books.pending.get_mut(token_id) {
            Some(existing) if existing.at >= at => {}
            Some(existing) => {
                existing.at = at;
                existing.address = address.map(str::to_owned);
            }
            None => {
                books.pending.insert(
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

    /// The newest use of `token_id` this process knows of and may not have written yet
    /// (pending, being written, or written within the last minute): what an idle expiry
    /// must count on top of the stored last use.
    pub fn last_use(&self, token_id: &str) -> Option<i64> {
        let books = self.lock();
        [
            books.pending.get(token_id).map(|use_| use_.at),
            books.in_flight.get(token_id).copied(),
            books.written.get(token_id).copied(),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Takes the uses due for writing: those of tokens not written in the last
    /// [`MIN_WRITE_INTERVAL_MS`]. The rest wait. Call [`UsageRecorder::written`] once they are
    /// stored, or [`UsageRecorder::record`] them again if they could not be.
    pub fn drain_due(&self, now: i64) -> Vec<TokenUse> {
        let mut books = self.lock();
        let Books {
            pending,
            written,
            in_flight,
        } = &mut *books;
        written.retain(|_, at| now - *at < MIN_WRITE_INTERVAL_MS);
        // A use still in flight from an earlier drain was written or put back by now (the
        // writer reports one way or the other before draining again).
        in_flight.clear();
        let mut due = Vec::new();
        pending.retain(|token_id, token_use| {
            let held_back = written
                .get(token_id)
                .is_some_and(|at| token_use.at - at < MIN_WRITE_INTERVAL_MS);
            if !held_back {
                in_flight.insert(token_id.clone(), token_use.at);
                due.push(token_use.clone());
            }
            held_back
        });
        due
    }

    /// Notes that these uses are stored.
    pub fn written(&self, uses: &[TokenUse]) {
        let mut books = self.lock();
        for token_use in uses {
            books.in_flight.remove(&token_use.token_id);
            books
                .written
                .insert(token_use.token_id.clone(), token_use.at);
        }
    }

    /// Takes everything noted and not written yet (at shutdown).
    pub fn drain(&self) -> Vec<TokenUse> {
        self.lock().pending.drain().map(|(_, use_)| use_).collect()
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

    #[test]
    fn writes_each_token_at_most_once_a_minute() {
        let recorder = UsageRecorder::default();
        recorder.record("a", 1_000, None);
        let due = recorder.drain_due(1_000);
        assert_eq!(due.len(), 1);
        recorder.written(&due);
        // Used again within the minute: held back, not lost.
        recorder.record("a", 30_000, Some("10.0.0.1"));
        assert!(recorder.drain_due(30_000).is_empty());
        recorder.record("a", 50_000, Some("10.0.0.2"));
        assert!(recorder.drain_due(55_000).is_empty());
        // A minute after the last write, the newest use goes out.
        let due = recorder.drain_due(61_000);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].at, due[0].address.as_deref()),
            (50_000, Some("10.0.0.2"))
        );
        // Other tokens are not held back by it.
        recorder.record("b", 61_500, None);
        assert_eq!(recorder.drain_due(61_500).len(), 1);
        // A failed write is recorded again and retried at the next drain.
        recorder.record("c", 62_000, None);
        let failed = recorder.drain_due(62_000);
        for token_use in &failed {
            recorder.record(&token_use.token_id, token_use.at, None);
        }
        assert_eq!(recorder.drain_due(67_000).len(), 1);
        // At shutdown everything pending goes, due or not.
        recorder.written(&[TokenUse {
            token_id: "d".into(),
            at: 70_000,
            address: None,
        }]);
        recorder.record("d", 71_000, None);
        assert!(recorder.drain_due(71_000).is_empty());
        assert_eq!(recorder.drain().len(), 1);
    }

    #[test]
    fn last_use_covers_pending_in_flight_and_written_uses() {
        let recorder = UsageRecorder::default();
        assert_eq!(recorder.last_use("a"), None);
        recorder.record("a", 1_000, None);
        assert_eq!(recorder.last_use("a"), Some(1_000));
        // Taken for writing, not yet reported written: still known.
        let due = recorder.drain_due(1_000);
        assert_eq!(recorder.last_use("a"), Some(1_000));
        recorder.written(&due);
        assert_eq!(recorder.last_use("a"), Some(1_000));
        // A newer pending use wins over the written one.
        recorder.record("a", 5_000, None);
        assert_eq!(recorder.last_use("a"), Some(5_000));
        assert_eq!(recorder.last_use("b"), None);
    }
}
