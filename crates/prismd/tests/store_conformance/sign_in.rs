//! Store conformance: authorization codes, browser sessions, invitations and device codes.

use super::*;

pub(super) async fn authorization_code_single_use(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_authorization_code(auth_code(&owner, 7))
        .await?;
    let CodeRedemption::Redeemed(code) = store
        .redeem_authorization_code(&hash(7), T0 + 1, audit("code.replayed", T0 + 1))
        .await?
    else {
        return Err("first use must redeem".into());
    };
    assert_eq!(code.user_id, owner.id);
    assert_eq!(code.redirect_uri, "http://127.0.0.1/cb");
    assert_eq!(code.code_challenge, "challenge");
    assert_eq!(code.nonce.as_deref(), Some("n"));
    assert_eq!(code.expires_at, T0 + 60_000);
    assert!(
        store
            .insert_refresh_token(refresh_token(&owner, 8, Some(hash(7))), audit("t", T0 + 2))
            .await?
    );
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 3, audit("code.replayed", T0 + 3))
            .await?,
        CodeRedemption::Replayed
    ));
    let grant = store
        .find_refresh_grant(&hash(8))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        grant.token_revoked_at,
        Some(T0 + 3),
        "the replay revoked the issued token"
    );
    // The first replay is audited about the code's user, in its organization.
    let replays = |events: Vec<prismd::store::AuditRecord>| -> Vec<prismd::store::AuditRecord> {
        events
            .into_iter()
            .filter(|e| e.action == "code.replayed")
            .collect()
    };
    let audited = replays(recent_events(store, 100).await?);
    assert_eq!(audited.len(), 1);
    assert_eq!(
        audited[0].subject_user_id.as_deref(),
        Some(owner.id.as_str())
    );
    assert_eq!(audited[0].org_id.as_deref(), Some(owner.org_id.as_str()));
    assert_eq!(audited[0].address.as_deref(), Some("127.0.0.1"));
    let detail: serde_json::Value =
        serde_json::from_str(audited[0].detail.as_deref().ok_or("no detail")?)?;
    assert_eq!(detail["revoked"], true);
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 4, audit("code.replayed", T0 + 4))
            .await?,
        CodeRedemption::Replayed
    ));
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(99), T0, audit("code.replayed", T0))
            .await?,
        CodeRedemption::Unknown
    ));
    // Later replays and unknown codes add no rows.
    assert_eq!(replays(recent_events(store, 100).await?).len(), 1);
    Ok(())
}

pub(super) async fn authorization_code_replay_before_token(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_authorization_code(auth_code(&owner, 7))
        .await?;
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 1, audit("code.replayed", T0 + 1))
            .await?,
        CodeRedemption::Redeemed(_)
    ));
    // The replay comes before the first exchange has stored its token.
    assert!(matches!(
        store
            .redeem_authorization_code(&hash(7), T0 + 2, audit("code.replayed", T0 + 2))
            .await?,
        CodeRedemption::Replayed
    ));
    assert!(
        store
            .insert_refresh_token(refresh_token(&owner, 8, Some(hash(7))), audit("t", T0 + 3))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(8))
        .await?
        .ok_or("no grant")?;
    assert!(grant.token_revoked_at.is_some(), "born revoked");
    Ok(())
}

pub(super) async fn authorization_code_redeem_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    for seed in 1..=5 {
        db.store
            .insert_authorization_code(auth_code(&owner, seed))
            .await?;
        let code = hash(seed);
        let (a, b) = tokio::join!(
            db.store
                .redeem_authorization_code(&code, T0 + 1, audit("code.replayed", T0 + 1)),
            other.redeem_authorization_code(&code, T0 + 1, audit("code.replayed", T0 + 1)),
        );
        let redeemed = [a?, b?]
            .iter()
            .filter(|r| matches!(r, CodeRedemption::Redeemed(_)))
            .count();
        assert_eq!(redeemed, 1, "code {seed} redeemed exactly once");
    }
    other.close().await;
    Ok(())
}

// ---- browser sessions and invitations --------------------------------------------------

/// A browser session belongs to an identity: read back (with the identity as it is now)
/// until it expires or ends; a new password or a revoke-all ends every session of that
/// identity and no other.
pub(super) async fn browser_sessions(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let me = identity_of(&owner)?;
    store
        .insert_browser_session(&hash(1), &me, T0, T0 + 1000)
        .await?;
    let session = store
        .browser_session(&hash(1), T0 + 1)
        .await?
        .ok_or("no session")?;
    assert_eq!(
        session.identity,
        store.identity(&me).await?.ok_or("no identity")?
    );
    assert_eq!(session.identity.email, "owner@example.com");
    assert_eq!(
        session.only_user_id, None,
        "a new session may act as any member"
    );
    assert_eq!(
        store.browser_session(&hash(1), T0 + 1000).await?,
        None,
        "expired"
    );
    assert_eq!(
        store.browser_session(&hash(7), T0 + 1).await?,
        None,
        "unknown"
    );
    let logouts = || {
        db.count_bind(
            "SELECT COUNT(*) FROM audit_events WHERE action = $1",
            "logout",
        )
    };
    assert!(
        store
            .delete_browser_session(&hash(1), audit("logout", T0 + 1))
            .await?
    );
    assert_eq!(store.browser_session(&hash(1), T0 + 1).await?, None);
    assert_eq!(logouts().await?, 1, "audited with the deletion");
    assert!(
        !store
            .delete_browser_session(&hash(1), audit("logout", T0 + 2))
            .await?,
        "ended once"
    );
    assert_eq!(logouts().await?, 1, "nothing ended, nothing audited");
    // A new password ends every browser session of that identity, and only its.
    let guest = add_user(store, &org, "g@example.com", "guest", T0).await?;
    let guests = identity_of(&guest)?;
    for seed in [2, 3] {
        store
            .insert_browser_session(&hash(seed), &me, T0, T0 + 1000)
            .await?;
    }
    store
        .insert_browser_session(&hash(4), &guests, T0, T0 + 1000)
        .await?;
    assert!(
        store
            .set_identity_password(&me, "h", audit("pw", T0 + 1))
            .await?
    );
    assert_eq!(store.browser_session(&hash(2), T0 + 1).await?, None);
    assert_eq!(store.browser_session(&hash(3), T0 + 1).await?, None);
    let theirs = store
        .browser_session(&hash(4), T0 + 1)
        .await?
        .ok_or("a bystander's session ended")?;
    assert_eq!(theirs.identity.id, guests);
    // A session started afterwards reads the identity as it is now.
    store
        .insert_browser_session(&hash(6), &me, T0 + 2, T0 + 1000)
        .await?;
    let mine = store
        .browser_session(&hash(6), T0 + 2)
        .await?
        .ok_or("no session")?;
    assert!(mine.identity.has_password);
    // So does a revoke-all.
    assert!(
        store
            .revoke_all_tokens(&guest.id, 0, audit("ra", T0 + 2))
            .await?
    );
    assert_eq!(store.browser_session(&hash(4), T0 + 3).await?, None);
    assert!(store.browser_session(&hash(6), T0 + 3).await?.is_some());
    // A removal ends the membership (the identity has none left to act as).
    store
        .insert_browser_session(&hash(5), &guests, T0, T0 + 1000)
        .await?;
    assert_eq!(
        store
            .remove_user(&guest.id, T0 + 4, None, audit("rm", T0 + 4))
            .await?,
        Ok(())
    );
    assert!(store.memberships(&guests).await?.is_empty());
    Ok(())
}

pub(super) async fn invitations_single_use(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let invited = add_user(store, &org, "new@example.com", "guest", T0).await?;
    let identity = identity_of(&invited)?;
    let has_password = |id: String| async move {
        Ok::<_, TestError>(
            store
                .identity(&id)
                .await?
                .ok_or("no identity")?
                .has_password,
        )
    };
    store
        .insert_invitation(
            &hash(1),
            &invited.id,
            T0 + 1000,
            Delivery::Handed,
            audit("invite", T0),
        )
        .await?;
    // A second link replaces the first.
    store
        .insert_invitation(
            &hash(2),
            &invited.id,
            T0 + 1000,
            Delivery::Handed,
            audit("invite", T0 + 1),
        )
        .await?;
    assert_eq!(store.invitation_user(&hash(1), T0 + 2).await?, None);
    assert_eq!(
        store.invitation_user(&hash(2), T0 + 2).await?,
        Some(invited.clone())
    );
    assert_eq!(
        store.invitation_user(&hash(2), T0 + 1000).await?,
        None,
        "expired"
    );
    assert!(
        !store
            .accept_invitation(&hash(1), "h1", audit("accept", T0 + 3))
            .await?
    );
    store
        .insert_browser_session(&hash(9), &identity, T0, T0 + 10_000)
        .await?;
    assert!(
        store
            .accept_invitation(&hash(2), "h2", audit("accept", T0 + 3))
            .await?
    );
    assert!(has_password(identity.clone()).await?);
    let credentials = store
        .identity_by_email("new@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(credentials.password_hash.as_deref(), Some("h2"));
    assert_eq!(store.browser_session(&hash(9), T0 + 4).await?, None);
    assert!(
        !store
            .accept_invitation(&hash(2), "h3", audit("accept", T0 + 4))
            .await?,
        "single use"
    );
    assert_eq!(store.invitation_user(&hash(2), T0 + 4).await?, None);

    // An invitation never resets an existing password.
    let owners = identity_of(&owner)?;
    assert!(
        store
            .set_identity_password(&owners, "owner-hash", audit("pw", T0))
            .await?
    );
    store
        .insert_invitation(
            &hash(3),
            &owner.id,
            T0 + 1000,
            Delivery::Email,
            audit("invite", T0),
        )
        .await?;
    assert_eq!(store.invitation_user(&hash(3), T0 + 1).await?, None);
    assert!(
        !store
            .accept_invitation(&hash(3), "attacker", audit("accept", T0 + 2))
            .await?
    );
    let credentials = store
        .identity_by_email("owner@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(credentials.password_hash.as_deref(), Some("owner-hash"));
    assert!(!credentials.identity.email_verified);

    // Expired links cannot be accepted.
    let late = add_user(store, &org, "late@example.com", "guest", T0).await?;
    store
        .insert_invitation(
            &hash(4),
            &late.id,
            T0 + 10,
            Delivery::Email,
            audit("invite", T0),
        )
        .await?;
    assert!(
        !store
            .accept_invitation(&hash(4), "h", audit("accept", T0 + 10))
            .await?
    );
    assert!(!has_password(identity_of(&late)?).await?);
    Ok(())
}

// ---- device codes -------------------------------------------------------------------------

pub(super) async fn device_codes(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store.insert_device_code(device_code(1)).await?;
    let mut clash = device_code(2);
    clash.user_code_hash = device_code(1).user_code_hash;
    assert!(matches!(
        store.insert_device_code(clash).await,
        Err(StoreError::Conflict(_))
    ));
    let first = store
        .poll_device_code(&hash(1), T0 + 5)
        .await?
        .ok_or("no code")?;
    assert_eq!(first.status, "pending");
    assert_eq!(first.last_polled_at, None);
    assert_eq!(first.interval_secs, 5);
    let second = store
        .poll_device_code(&hash(1), T0 + 6)
        .await?
        .ok_or("no code")?;
    assert_eq!(
        second.last_polled_at,
        Some(T0 + 5),
        "the state before this poll"
    );
    store.slow_down_device_code(&hash(1), 10).await?;
    assert_eq!(
        store
            .poll_device_code(&hash(1), T0 + 7)
            .await?
            .ok_or("no code")?
            .interval_secs,
        10
    );
    assert!(store.poll_device_code(&hash(77), T0).await?.is_none());

    let user_code = device_code(1).user_code_hash;
    assert!(
        !store.redeem_device_code(&hash(1)).await?,
        "not approved yet"
    );
    assert!(
        store
            .decide_device_code(
                &user_code,
                Some(&owner.id),
                T0 + 8,
                audit("device.approved", T0 + 8)
            )
            .await?
    );
    assert!(
        !store
            .decide_device_code(&user_code, None, T0 + 9, audit("device.denied", T0 + 9))
            .await?,
        "decided once"
    );
    let decisions = |action: &'static str| {
        db.count_bind(
            "SELECT COUNT(*) FROM audit_events WHERE action = $1",
            action,
        )
    };
    assert_eq!(
        decisions("device.approved").await?,
        1,
        "audited with the decision"
    );
    assert_eq!(
        decisions("device.denied").await?,
        0,
        "a refused decision is not audited"
    );
    let approved = store
        .poll_device_code(&hash(1), T0 + 10)
        .await?
        .ok_or("no code")?;
    assert_eq!(approved.status, "approved");
    assert_eq!(approved.user_id.as_deref(), Some(owner.id.as_str()));
    assert!(store.redeem_device_code(&hash(1)).await?);
    assert!(!store.redeem_device_code(&hash(1)).await?, "redeemed once");

    // Denied codes stay denied; expired codes cannot be decided.
    store.insert_device_code(device_code(3)).await?;
    assert!(
        store
            .decide_device_code(
                &device_code(3).user_code_hash,
                None,
                T0 + 1,
                audit("device.denied", T0 + 1)
            )
            .await?
    );
    assert_eq!(
        store
            .poll_device_code(&hash(3), T0 + 2)
            .await?
            .ok_or("no code")?
            .status,
        "denied"
    );
    assert!(!store.redeem_device_code(&hash(3)).await?);
    store.insert_device_code(device_code(4)).await?;
    assert!(
        !store
            .decide_device_code(
                &device_code(4).user_code_hash,
                Some(&owner.id),
                T0 + 600_000,
                audit("device.approved", T0 + 600_000)
            )
            .await?
    );
    Ok(())
}

pub(super) async fn device_code_redeem_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    for seed in 1..=5 {
        db.store.insert_device_code(device_code(seed)).await?;
        let user_code = device_code(seed).user_code_hash;
        let (a, b) = tokio::join!(
            db.store.decide_device_code(
                &user_code,
                Some(&owner.id),
                T0 + 1,
                audit("device.approved", T0 + 1)
            ),
            other.decide_device_code(&user_code, None, T0 + 1, audit("device.denied", T0 + 1)),
        );
        assert_eq!(u8::from(a?) + u8::from(b?), 1, "decided exactly once");
        let device = hash(seed);
        let (a, b) = tokio::join!(
            db.store.redeem_device_code(&device),
            other.redeem_device_code(&device),
        );
        let redeemed = u8::from(a?) + u8::from(b?);
        let status = db
            .store
            .poll_device_code(&hash(seed), T0 + 2)
            .await?
            .ok_or("no code")?
            .status;
        match status.as_str() {
            "redeemed" => assert_eq!(redeemed, 1, "redeemed exactly once"),
            "denied" => assert_eq!(redeemed, 0),
            other => return Err(format!("unexpected status {other}").into()),
        }
    }
    other.close().await;
    Ok(())
}

pub(super) async fn live_device_codes_and_unknown_polls_only_read(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    assert_eq!(store.live_device_codes(T0).await?, 0);
    for seed in 1..=3 {
        store.insert_device_code(device_code(seed)).await?;
    }
    assert_eq!(store.live_device_codes(T0).await?, 3);
    // Decided ones and expired ones are not pending.
    store
        .decide_device_code(
            &device_code(1).user_code_hash,
            Some(&owner.id),
            T0 + 1,
            audit("device.approved", T0 + 1),
        )
        .await?;
    assert_eq!(store.live_device_codes(T0 + 2).await?, 2);
    assert_eq!(store.live_device_codes(T0 + 600_000).await?, 0, "expired");

    // A poll with an unknown code reads, and takes no write lock: it answers while another
    // connection holds SQLite's write lock (on PostgreSQL it answers alike).
    let held = match &db.backend {
        Backend::Sqlite(path) => {
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
            Some(conn)
        }
        Backend::Postgres(_) => None,
    };
    let polled = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        store.poll_device_code(&hash(77), T0 + 3),
    )
    .await;
    assert!(
        matches!(polled, Ok(Ok(None))),
        "an unknown code's poll waited for the write lock or failed: {polled:?}"
    );
    if let Some(mut conn) = held {
        sqlx::query("ROLLBACK").execute(&mut conn).await?;
    }
    // A known code's poll still records the poll.
    let code = store
        .poll_device_code(&hash(2), T0 + 4)
        .await?
        .ok_or("a known code")?;
    assert_eq!(code.status, "pending");
    let again = store
        .poll_device_code(&hash(2), T0 + 5)
        .await?
        .ok_or("a known code")?;
    assert_eq!(again.last_polled_at, Some(T0 + 4));
    Ok(())
}
