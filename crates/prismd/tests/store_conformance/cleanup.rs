//! Store conformance: the background cleanup: what it deletes, in batches, one replica at a time, by index.

use super::*;

/// Far in the future: rows that expire then are live throughout the test.
pub(super) const LATER: i64 = T0 + 10_000_000_000;

pub(super) async fn cleanup_deletes_garbage_only(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _owner) = org_with_owner(store).await?;
    let alice = add_user(store, &org, "alice@example.com", "guest", T0).await?;
    let bob = add_user(store, &org, "bob@example.com", "guest", T0).await?;
    let carol = add_user(store, &org, "carol@example.com", "guest", T0).await?;
    let dave = add_user(store, &org, "dave@example.com", "guest", T0).await?;
    let mint = |user: &User, seed: u8| {
        let token = refresh_token(user, seed, None);
        async move {
            store
                .insert_refresh_token(token.clone(), audit("t", T0 + 10))
                .await
                .map(|_| token)
        }
    };
    mint(&alice, 1).await?;
    // Bob revokes all at T0+100 and then gets a new, live token.
    mint(&bob, 2).await?;
    assert!(
        store
            .revoke_all_tokens(&bob.id, 0, audit("revoke_all", T0 + 100))
            .await?
    );
    mint(&bob, 3).await?;
    // Carol is removed at T0+200.
    mint(&carol, 4).await?;
    assert_eq!(
        store
            .remove_user(&carol.id, T0 + 200, None, audit("remove", T0 + 200))
            .await?,
        Ok(())
    );
    // Dave's one session is revoked at T0+300.
    let daves = mint(&dave, 5).await?;
    assert!(
        store
            .revoke_session(&daves.id, &dave.id, audit("revoke", T0 + 300))
            .await?
    );

    // Codes: unused and expired, unused and live, redeemed and expired.
    store
        .insert_authorization_code(auth_code(&alice, 10))
        .await?;
    store
        .insert_authorization_code(NewAuthorizationCode {
            expires_at: LATER,
            ..auth_code(&alice, 11)
        })
        .await?;
    store
        .insert_authorization_code(auth_code(&alice, 12))
        .await?;
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(12), T0 + 10, audit("code.replayed", T0 + 10))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    store.insert_device_code(device_code(20)).await?;
    store
        .insert_device_code(NewDeviceCode {
            expires_at: LATER,
            ..device_code(21)
        })
        .await?;
    let alices = identity_of(&alice)?;
    store
        .insert_browser_session(&hash(30), &alices, T0, T0 + 1000)
        .await?;
    store
        .insert_browser_session(&hash(31), &alices, T0, LATER)
        .await?;
    // Invitations: expired, spent, live.
    let erin = add_user(store, &org, "erin@example.com", "guest", T0).await?;
    let frank = add_user(store, &org, "frank@example.com", "guest", T0).await?;
    let gina = add_user(store, &org, "gina@example.com", "guest", T0).await?;
    store
        .insert_invitation(
            &hash(40),
            &erin.id,
            T0 + 1000,
            Delivery::Handed,
            audit("invite", T0),
        )
        .await?;
    store
        .insert_invitation(
            &hash(41),
            &frank.id,
            LATER,
            Delivery::Handed,
            audit("invite", T0),
        )
        .await?;
    assert!(
        store
            .accept_invitation(&hash(41), "h", audit("accept", T0 + 400))
            .await?
    );
    store
        .insert_invitation(
            &hash(42),
            &gina.id,
            LATER,
            Delivery::Handed,
            audit("invite", T0),
        )
        .await?;
    store
        .insert_signing_key_if_none_active(signing_key("k1", T0))
        .await?;
    store
        .rotate_signing_key(signing_key("k2", T0 + 500), audit("keys.rotated", T0 + 500))
        .await?;

    let now = T0 + 1_000_000;
    let delete = |kind: Garbage, before: i64| store.delete_garbage(kind, before, 500);
    // Dead tokens within their grace period stay, and still say why they are dead.
    assert_eq!(delete(Garbage::RevokedRefreshTokens, T0 + 300).await?, 0);
    assert_eq!(delete(Garbage::StaleEpochRefreshTokens, T0 + 100).await?, 0);
    let daves_grant = store.find_refresh_grant(&hash(5)).await?.ok_or("gone")?;
    assert_eq!(daves_grant.token_revoked_at, Some(T0 + 300));
    assert!(store.find_refresh_grant(&hash(2)).await?.is_some());
    // Past it they go; live tokens stay.
    assert_eq!(delete(Garbage::RevokedRefreshTokens, T0 + 301).await?, 1);
    assert_eq!(delete(Garbage::StaleEpochRefreshTokens, T0 + 201).await?, 2);
    for (seed, live) in [(1, true), (2, false), (3, true), (4, false), (5, false)] {
        assert_eq!(
            store.find_refresh_grant(&hash(seed)).await?.is_some(),
            live,
            "token {seed}"
        );
    }

    // Tokens past their own expiry stay through the grace period (they still say why they
    // are dead), then go, each when its expiry is before the cutoff; no other token goes with
    // them, however old.
    for (seed, name, expires_at) in [(6, "a", T0 + 600), (7, "b", T0 + 700), (8, "c", LATER)] {
        let token = NewRefreshToken {
            name: Some(name.into()),
            named: true,
            expires_at: Some(expires_at),
            ..refresh_token(&alice, seed, None)
        };
        assert!(
            store
                .insert_refresh_token(token, audit("t", T0 + 10))
                .await?
        );
    }
    assert_eq!(delete(Garbage::ExpiredRefreshTokens, T0 + 600).await?, 0);
    let expired = store.find_refresh_grant(&hash(6)).await?.ok_or("gone")?;
    assert_eq!(expired.token_expires_at, Some(T0 + 600));
    assert_eq!(delete(Garbage::ExpiredRefreshTokens, T0 + 601).await?, 1);
    assert_eq!(delete(Garbage::ExpiredRefreshTokens, T0 + 701).await?, 1);
    assert_eq!(delete(Garbage::ExpiredRefreshTokens, T0 + 701).await?, 0);
    for (seed, live) in [(1, true), (3, true), (6, false), (7, false), (8, true)] {
        assert_eq!(
            store.find_refresh_grant(&hash(seed)).await?.is_some(),
            live,
            "token {seed}"
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_tokens").await?, 3);

    assert_eq!(delete(Garbage::UnusedAuthorizationCodes, now).await?, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM authorization_codes").await?,
        2,
        "the redeemed code is kept for replay detection"
    );
    assert_eq!(delete(Garbage::AuthorizationCodes, now).await?, 1);
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(11), T0 + 20, audit("code.replayed", T0 + 20))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    assert_eq!(delete(Garbage::DeviceCodes, now).await?, 1);
    assert!(store.poll_device_code(&hash(21), T0).await?.is_some());
    assert_eq!(delete(Garbage::BrowserSessions, now).await?, 1);
    assert!(store.browser_session(&hash(31), T0).await?.is_some());
    assert_eq!(delete(Garbage::ExpiredInvitations, now).await?, 1);
    assert_eq!(delete(Garbage::SpentInvitations, now).await?, 1);
    assert!(store.invitation_user(&hash(42), T0).await?.is_some());
    assert_eq!(db.count("SELECT COUNT(*) FROM invitations").await?, 1);

    assert_eq!(delete(Garbage::RetiredSigningKeys, T0 + 500).await?, 0);
    assert_eq!(delete(Garbage::RetiredSigningKeys, T0 + 501).await?, 1);
    let kids: Vec<_> = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec!["k2".to_owned()]);

    let old_events = db
        .count("SELECT COUNT(*) FROM audit_events WHERE at < 1700000000250")
        .await?;
    let newer_events = db
        .count("SELECT COUNT(*) FROM audit_events WHERE at >= 1700000000250")
        .await?;
    assert!(old_events > 0 && newer_events > 0);
    assert_eq!(
        i64::try_from(delete(Garbage::AuditEvents, T0 + 250).await?)?,
        old_events
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        newer_events
    );
    // Nothing left: every kind but the audit trail (which ends `now`) deletes nothing more.
    for kind in Garbage::ALL
        .into_iter()
        .filter(|kind| *kind != Garbage::AuditEvents)
    {
        assert_eq!(delete(kind, now).await?, 0, "{kind:?}");
    }
    Ok(())
}

/// Password-reset links past their use (replaced, spent or expired) are garbage, like
/// invitations: a cleanup round leaves only the live one. Anyone may ask for a reset link, so
/// without this the table grows without bound.
pub(super) async fn cleanup_deletes_dead_password_resets(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    let id = identity_of(&owner)?;
    // Replaced by the next, then spent; expired; live.
    store
        .insert_password_reset(&hash(1), &id, LATER, audit("reset", T0))
        .await?;
    store
        .insert_password_reset(&hash(2), &id, LATER, audit("reset", T0 + 1))
        .await?;
    assert!(
        store
            .accept_password_reset(&hash(2), "h", audit("reset.used", T0 + 2))
            .await?
    );
    store
        .insert_password_reset(&hash(3), &id, T0 + 1000, audit("reset", T0 + 3))
        .await?;
    store
        .insert_password_reset(&hash(4), &id, LATER, audit("reset", T0 + 4))
        .await?;
    assert_eq!(db.count("SELECT COUNT(*) FROM password_resets").await?, 4);
    let now = T0 + 1_000_000;
    for kind in Garbage::ALL {
        while store.delete_garbage(kind, now, 500).await? > 0 {}
    }
    assert!(
        store
            .password_reset_identity(&hash(4), now)
            .await?
            .is_some(),
        "the live link went"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM password_resets").await?,
        1,
        "dead password-reset links outlive every cleanup"
    );
    Ok(())
}

pub(super) async fn cleanup_deletes_in_batches(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    for n in 0..4 {
        store
            .create_organization(new_org(&format!("o{n}"), T0), audit("org", T0 + n))
            .await?;
    }
    let _ = (org, owner);
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    assert_eq!(before, 5);
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        2
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        2
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        1
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::AuditEvents, T0 + 10, 2)
            .await?,
        0
    );
    Ok(())
}

pub(super) async fn cleanup_lock_takes_turns(db: Db) -> TestResult {
    let other = db.another().await?;
    let postgres = matches!(db.backend, Backend::Postgres(_));
    let lock = db.store.try_cleanup_lock().await?.ok_or("no lock")?;
    let second = other.try_cleanup_lock().await?;
    // PostgreSQL replicas take turns; SQLite has one server per file and nothing to share.
    assert_eq!(second.is_none(), postgres);
    if let Some(second) = second {
        second.release().await;
    }
    lock.release().await;
    let again = other.try_cleanup_lock().await?.ok_or("not released")?;
    // A round that ends without releasing (cancelled) must not leave the lock behind: its
    // connection is closed, and the server lets go of the lock when it notices.
    drop(again);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(lock) = db.store.try_cleanup_lock().await? {
            lock.release().await;
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err("the dropped lock was never released".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    other.close().await;
    Ok(())
}

pub(super) async fn cleanup_statements_use_indexes(db: Db) -> TestResult {
    // Every batch must find its rows through an index, not by reading the whole table.
    for kind in Garbage::ALL {
        let statement = kind.delete_statement();
        let plan: Vec<String> = match &db.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
                    format!("EXPLAIN QUERY PLAN {statement}"),
                ))
                .bind(T0)
                .bind(500_i64)
                .fetch_all(&mut conn)
                .await?;
                conn.close().await?;
                rows.into_iter().map(|row| row.3).collect()
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                // Empty tables make a sequential scan the cheapest plan; forbid it to see
                // whether an index can serve the statement at all.
                sqlx::query("SET enable_seqscan = off")
                    .execute(&mut conn)
                    .await?;
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}")))
                        .bind(T0)
                        .bind(500_i64)
                        .fetch_all(&mut conn)
                        .await?;
                conn.close().await?;
                rows
            }
        };
        let scans: Vec<&String> = plan
            .iter()
            .filter(|line| line.trim_start().starts_with("SCAN ") || line.contains("Seq Scan"))
            .collect();
        assert!(
            scans.is_empty(),
            "{kind:?} scans a table:\n{}",
            plan.join("\n")
        );
    }
    Ok(())
}

pub(super) const POLICY: AttemptPolicy = AttemptPolicy {
    max_failures: 3,
    window_ms: 60_000,
    lock_ms: 1_000,
    max_lock_ms: 3_000,
};
