//! Store conformance: failure counters of rate limits and lock-outs.

use super::*;

pub(super) async fn attempt_counters(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let key = "login:addr:192.0.2.1";
    assert_eq!(store.attempt_counter(key).await?, None);
    let trip = || audit("limit.tripped", T0);
    let first = store
        .record_attempt_failure(key, T0, POLICY, trip())
        .await?;
    assert_eq!(
        (first.failures, first.window_start, first.locked_until),
        (1, T0, 0)
    );
    store
        .record_attempt_failure(key, T0 + 1, POLICY, trip())
        .await?;
    assert!(recent_events(store, 10).await?.is_empty(), "no lock yet");
    // The third failure locks for the first lock time and is audited once.
    let third = store
        .record_attempt_failure(key, T0 + 2, POLICY, trip())
        .await?;
    assert_eq!((third.failures, third.locked_until), (3, T0 + 2 + 1_000));
    assert_eq!(store.attempt_counter(key).await?, Some(third));
    // Failures counted while locked lengthen the lock (doubling, capped) without new events.
    let fourth = store
        .record_attempt_failure(key, T0 + 3, POLICY, trip())
        .await?;
    assert_eq!(fourth.locked_until, T0 + 3 + 2_000);
    let fifth = store
        .record_attempt_failure(key, T0 + 4, POLICY, trip())
        .await?;
    assert_eq!(fifth.locked_until, T0 + 4 + 3_000, "capped");
    let events = recent_events(store, 10).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "limit.tripped");
    // After the lock, a further failure inside the window locks again (longer) and is audited.
    let later = T0 + 10_000;
    let sixth = store
        .record_attempt_failure(key, later, POLICY, trip())
        .await?;
    assert_eq!((sixth.failures, sixth.locked_until), (6, later + 3_000));
    assert_eq!(recent_events(store, 10).await?.len(), 2);
    // Once the window and the lock have passed, counting starts again.
    let fresh = T0 + 120_000;
    let restart = store
        .record_attempt_failure(key, fresh, POLICY, trip())
        .await?;
    assert_eq!((restart.failures, restart.window_start), (1, fresh));
    assert!(restart.locked_until <= fresh);
    // Cleanup deletes counters whose window and lock ended before the cutoff, and no other.
    let old_key = "login:addr:192.0.2.3";
    store
        .record_attempt_failure(old_key, T0, POLICY, trip())
        .await?;
    let locked_key = "login:addr:192.0.2.4";
    for at in [T0, T0 + 1, T0 + 2] {
        store
            .record_attempt_failure(locked_key, at, POLICY, trip())
            .await?;
    }
    assert_eq!(
        store
            .delete_garbage(Garbage::AttemptCounters, T0 + 5, 500)
            .await?,
        1,
        "only {old_key}: {locked_key} is still locked at the cutoff"
    );
    assert_eq!(store.attempt_counter(old_key).await?, None);
    assert!(store.attempt_counter(locked_key).await?.is_some());
    assert_eq!(
        store
            .delete_garbage(Garbage::AttemptCounters, T0 + 60_000, 500)
            .await?,
        1
    );
    assert_eq!(store.attempt_counter(locked_key).await?, None);
    assert_eq!(store.attempt_counter(old_key).await?, None);
    assert_eq!(store.attempt_counter(key).await?, Some(restart));
    // Other keys are separate; a success forgets the key.
    assert_eq!(store.attempt_counter("login:addr:192.0.2.2").await?, None);
    store.clear_attempts(key).await?;
    assert_eq!(store.attempt_counter(key).await?, None);
    store.clear_attempts(key).await?;
    assert_eq!(db.count("SELECT COUNT(*) FROM attempt_counters").await?, 0);
    Ok(())
}

/// Replicas (or an admin process) see one counter, and concurrent failures all count.
pub(super) async fn attempt_counters_shared_and_racing(db: Db) -> TestResult {
    let other = db.another().await?;
    let key = "refresh:addr:192.0.2.9";
    let policy = AttemptPolicy {
        max_failures: 100,
        ..POLICY
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .record_attempt_failure(key, T0 + i, policy, audit("limit.tripped", T0))
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seen = other.attempt_counter(key).await?;
    assert_eq!(seen.map(|c| c.failures), Some(8));
    assert_eq!(db.store.attempt_counter(key).await?, seen);
    other.close().await;
    Ok(())
}
