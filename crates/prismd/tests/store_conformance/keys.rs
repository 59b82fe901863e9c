//! Store conformance: signing keys: the first, rotations, races and sealing.

use super::*;

pub(super) async fn signing_key_created_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert!(store.signing_keys().await?.is_empty());
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .insert_signing_key_if_none_active(signing_key("k2", T0 + 1))
        .await?;
    let keys = store.signing_keys().await?;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, "k1");
    assert_eq!(
        keys[0].private_key,
        vec![1, 2, 3, 0, 255],
        "bytes round-trip"
    );
    assert_eq!(keys[0].public_key, vec![4, 5, 6]);
    assert_eq!(keys[0].algorithm, "EdDSA");
    assert_eq!(keys[0].retired_at, None);
    Ok(())
}

pub(super) async fn signing_key_races(db: Db) -> TestResult {
    // Two replicas (two pools) and several tasks in each race to create the first key. The
    // pools are warmed up and the tasks released together by a barrier, so the inserts
    // really overlap instead of queueing behind connection set-up; several rounds, because
    // one round of a race without the lock still comes out right now and then.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    for round in 0..5 {
        db.execute_raw("DELETE FROM signing_keys").await?;
        let tasks_count = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..tasks_count {
            let store = if n % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            let barrier = barrier.clone();
            let at = T0 + i64::try_from(n)?;
            tasks.spawn(async move {
                barrier.wait().await;
                store
                    .insert_signing_key_if_none_active(signing_key(&format!("k{n}"), at))
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let keys = db.store.signing_keys().await?;
        assert_eq!(
            keys.len(),
            1,
            "round {round}: exactly one key: {:?}",
            keys.iter().map(|k| &k.kid).collect::<Vec<_>>()
        );
    }
    other.close().await;
    Ok(())
}

pub(super) async fn signing_key_rotation(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    let retired = store
        .rotate_signing_key(signing_key("k2", T0 + 10), audit("keys.rotated", T0 + 10))
        .await?;
    assert_eq!(retired, vec!["k1".to_owned()]);
    let keys = store.signing_keys().await?;
    let summary: Vec<_> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.retired_at))
        .collect();
    assert_eq!(
        summary,
        vec![("k2", None), ("k1", Some(T0 + 10))],
        "newest first"
    );
    // The first-key insert never adds a second active key after a rotation.
    store
        .insert_signing_key_if_none_active(signing_key("k3", T0 + 20))
        .await?;
    assert_eq!(store.signing_keys().await?.len(), 2);
    let events = recent_events(store, 1).await?;
    assert_eq!(events[0].action, "keys.rotated");
    // Another rotation retires the key the first one made.
    let again = store
        .rotate_signing_key(signing_key("k4", T0 + 30), audit("keys.rotated", T0 + 30))
        .await?;
    assert_eq!(again, vec!["k2".to_owned()]);
    let active: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid)
        .collect();
    assert_eq!(active, vec!["k4".to_owned()]);
    Ok(())
}

pub(super) async fn signing_key_rotation_races(db: Db) -> TestResult {
    // Rotations on two replicas and a first-key insert, released together: whatever the
    // order, exactly one key is active afterwards.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    let tasks_count = 6;
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..tasks_count {
        let store = if n % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let barrier = barrier.clone();
        let at = T0 + i64::try_from(n)?;
        tasks.spawn(async move {
            barrier.wait().await;
            let key = signing_key(&format!("k{n}"), at);
            if n == 0 {
                store.insert_signing_key_if_none_active(key).await
            } else {
                store
                    .rotate_signing_key(key, audit("keys.rotated", at))
                    .await
                    .map(drop)
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    other.close().await;
    let keys = db.store.signing_keys().await?;
    let active = keys.iter().filter(|k| k.retired_at.is_none()).count();
    let kids: Vec<_> = keys.iter().map(|k| (&k.kid, k.retired_at)).collect();
    assert_eq!(active, 1, "{kids:?}");
    Ok(())
}

pub(super) async fn signing_key_rotation_if_stale(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    // The active key was created at the bound: not stale, nothing written.
    let young = store
        .rotate_signing_key_if_stale(
            signing_key("k2", T0 + 100),
            audit("keys.rotated", T0 + 100),
            T0,
        )
        .await?;
    assert_eq!(young, None);
    assert_eq!(store.signing_keys().await?.len(), 1);
    assert!(recent_events(store, 10).await?.is_empty(), "no audit row");
    let rotated = store
        .rotate_signing_key_if_stale(
            signing_key("k2", T0 + 100),
            audit("keys.rotated", T0 + 100),
            T0 + 1,
        )
        .await?;
    assert_eq!(rotated, Some(vec!["k1".to_owned()]));
    let summary: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| (k.kid, k.retired_at))
        .collect();
    assert_eq!(
        summary,
        vec![("k2".to_owned(), None), ("k1".to_owned(), Some(T0 + 100))]
    );
    assert_eq!(recent_events(store, 10).await?.len(), 1);
    // The same decision made again (by a replica that read the old key) changes nothing.
    let again = store
        .rotate_signing_key_if_stale(
            signing_key("k3", T0 + 101),
            audit("keys.rotated", T0 + 101),
            T0 + 1,
        )
        .await?;
    assert_eq!(again, None);
    assert_eq!(store.signing_keys().await?.len(), 2);
    assert_eq!(recent_events(store, 10).await?.len(), 1);
    Ok(())
}

pub(super) async fn signing_key_stale_rotation_races(db: Db) -> TestResult {
    // Replicas (two pools, several tasks each) that all found the active key old rotate at
    // the same moment: one new key per round, however they interleave.
    let other = db.another().await?;
    db.store.ping().await?;
    other.ping().await?;
    db.store
        .insert_signing_key_if_none_active(signing_key("k0", T0))
        .await?;
    for round in 1..=5_i64 {
        let tasks_count = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks_count));
        let mut tasks = tokio::task::JoinSet::new();
        // Everything created before this round's start is stale.
        let stale_before = T0 + round * 1_000;
        for n in 0..tasks_count {
            let store = if n % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            let barrier = barrier.clone();
            let at = stale_before + i64::try_from(n)?;
            tasks.spawn(async move {
                barrier.wait().await;
                store
                    .rotate_signing_key_if_stale(
                        signing_key(&format!("r{round}-{n}"), at),
                        audit("keys.rotated", at),
                        stale_before,
                    )
                    .await
            });
        }
        let mut rotations = 0;
        while let Some(done) = tasks.join_next().await {
            rotations += usize::from(done??.is_some());
        }
        let keys = db.store.signing_keys().await?;
        let active = keys.iter().filter(|k| k.retired_at.is_none()).count();
        assert_eq!(rotations, 1, "round {round}");
        assert_eq!(active, 1, "round {round}");
        assert_eq!(keys.len(), usize::try_from(round + 1)?, "round {round}");
    }
    other.close().await;
    Ok(())
}

pub(super) async fn private_key_replacement(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .rotate_signing_key(signing_key("k2", T0 + 10), audit("keys.rotated", T0 + 10))
        .await?;
    let events_before = recent_events(store, 10).await?.len();
    let replaced = store
        .replace_private_keys(
            &[
                PrivateKeyReplacement {
                    kid: "k1".into(),
                    previous: vec![9, 9, 9],
                    sealed: vec![7; 40],
                },
                PrivateKeyReplacement {
                    kid: "k2".into(),
                    previous: vec![1, 2, 3, 0, 255],
                    sealed: vec![8; 40],
                },
                PrivateKeyReplacement {
                    kid: "gone".into(),
                    previous: vec![1, 2, 3, 0, 255],
                    sealed: vec![6; 40],
                },
            ],
            audit("keys.sealed", T0 + 20),
        )
        .await?;
    assert_eq!(
        replaced,
        vec!["k2".to_owned()],
        "only rows that still hold `previous`"
    );
    let stored: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| (k.kid, k.private_key))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("k2".to_owned(), vec![8; 40]),
            ("k1".to_owned(), vec![1, 2, 3, 0, 255])
        ]
    );
    let events = recent_events(store, 10).await?;
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events[0].action, "keys.sealed");
    // Nothing to replace: nothing written, not even the audit row.
    let none = store
        .replace_private_keys(
            &[PrivateKeyReplacement {
                kid: "k2".into(),
                previous: vec![1, 2, 3, 0, 255],
                sealed: vec![5; 40],
            }],
            audit("keys.sealed", T0 + 30),
        )
        .await?;
    assert!(none.is_empty());
    assert_eq!(recent_events(store, 10).await?.len(), events_before + 1);
    Ok(())
}

pub(super) async fn signing_key_revocation(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .rotate_signing_key(signing_key("k2", T0 + 10), audit("keys.rotated", T0 + 10))
        .await?;
    // The active key and an unknown one are refused, and nothing is written.
    assert_eq!(
        store
            .delete_retired_signing_key("k2", audit("keys.revoked", T0 + 20))
            .await?,
        KeyDeletion::Active
    );
    assert_eq!(
        store
            .delete_retired_signing_key("k9", audit("keys.revoked", T0 + 20))
            .await?,
        KeyDeletion::NotFound
    );
    assert_eq!(recent_events(store, 1).await?[0].action, "keys.rotated");
    // A retired key goes, audited in the same commit.
    assert_eq!(
        store
            .delete_retired_signing_key("k1", audit("keys.revoked", T0 + 20))
            .await?,
        KeyDeletion::Deleted
    );
    let kids: Vec<String> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["k2"]);
    assert_eq!(recent_events(store, 1).await?[0].action, "keys.revoked");
    assert_eq!(
        store
            .delete_retired_signing_key("k1", audit("keys.revoked", T0 + 30))
            .await?,
        KeyDeletion::NotFound,
        "revoked once"
    );
    Ok(())
}
