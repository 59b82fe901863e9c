//! Store conformance: trust policies (keyless CI), their sessions, and the OIDC tokens
//! exchanged under them, spent once across processes.

use prismd::store::{ExchangeWrite, Garbage, NewServiceAccount, PolicyExchange, TrustPolicyRecord};

use super::*;

const ISSUER: &str = "https://token.actions.githubusercontent.com";

/// A service account of `org`, created by an operator.
async fn account(store: &dyn Store, org: &Organization, name: &str) -> Result<User, TestError> {
    let account = NewServiceAccount {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org.id.clone(),
        name: name.into(),
        role: "integrator".into(),
        description: None,
        created_at: T0,
    };
    let event = AuditEvent {
        subject_user_id: Some(account.id.clone()),
        ..audit("service_account.created", T0)
    };
    Ok(store
        .add_service_account(account, None, event)
        .await?
        .map_err(|refused| format!("the service account was refused: {refused:?}"))?)
}

fn policy(org: &Organization, account: &User, name: &str) -> TrustPolicyRecord {
    TrustPolicyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org.id.clone(),
        name: name.into(),
        description: None,
        issuer: ISSUER.into(),
        audience: "https://prism.example".into(),
        conditions: r#"[{"claim":"repository_id","match":"exact","value":"1"}]"#.into(),
        service_account_id: account.id.clone(),
        scopes: String::new(),
        access_token_ttl_secs: 3600,
        max_token_age_secs: 3600,
        enabled: true,
        created_at: T0,
        updated_at: T0,
        last_used_at: None,
    }
}

/// Creates `policy` as `actor` would.
async fn try_create(
    store: &dyn Store,
    policy: TrustPolicyRecord,
    actor: Option<&str>,
) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError> {
    let event = AuditEvent {
        subject_user_id: Some(policy.service_account_id.clone()),
        ..audit("trust_policy.created", T0)
    };
    store.create_trust_policy(policy, actor, event).await
}

async fn create(
    store: &dyn Store,
    policy: TrustPolicyRecord,
) -> Result<TrustPolicyRecord, TestError> {
    Ok(try_create(store, policy, None)
        .await?
        .map_err(|refused| format!("the policy was refused: {refused:?}"))?)
}

async fn update(
    store: &dyn Store,
    policy: TrustPolicyRecord,
    end_session: bool,
    actor: Option<&str>,
) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError> {
    let event = AuditEvent {
        subject_user_id: Some(policy.service_account_id.clone()),
        ..audit("trust_policy.updated", T0 + 5)
    };
    store
        .update_trust_policy(policy, end_session, actor, event, None)
        .await
}

/// An exchange of the token `key` under `policy`, starting a session of its own.
fn exchange(policy: &TrustPolicyRecord, key: &str) -> PolicyExchange {
    PolicyExchange {
        policy_id: policy.id.clone(),
        service_account_id: policy.service_account_id.clone(),
        token_key: key.into(),
        issuer: ISSUER.into(),
        token_expires_at: T0 + 600_000,
        at: T0 + 10,
        session_id: uuid::Uuid::new_v4().to_string(),
        session_hash: rand_hash(),
        session_name: format!("trust policy {}", policy.name),
        scope: String::new(),
        session_expires_at: T0 + 3_600_000,
    }
}

fn rand_hash() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

async fn record(store: &dyn Store, exchange: PolicyExchange) -> Result<ExchangeWrite, StoreError> {
    let event = AuditEvent {
        subject_user_id: Some(exchange.service_account_id.clone()),
        ..audit("oidc.exchanged", exchange.at)
    };
    store.record_exchange(exchange, event).await
}

/// Creating, listing, changing and deleting follow the actor rules; the service account must
/// be a live one of the organization; names are unique per organization; removing the
/// account takes its policies with it.
pub(super) async fn trust_policies_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let admin = add_user(store, &org, "admin@example.com", "admin", T0).await?;
    let dev = add_user(store, &org, "dev@example.com", "integrator", T0).await?;
    let ci = account(store, &org, "ci").await?;
    let other_org = another_org(store, "Other", T0).await?;
    let stranger = account(store, &other_org, "stranger").await?;

    let refused = try_create(store, policy(&org, &ci, "by dev"), Some(&dev.id)).await?;
    assert_eq!(refused, Err(Refusal::Forbidden), "an Integrator may not");
    let foreign = try_create(store, policy(&org, &stranger, "foreign"), None).await?;
    assert_eq!(
        foreign,
        Err(Refusal::NotFound),
        "another organization's account"
    );
    let person = try_create(store, policy(&org, &dev, "person"), None).await?;
    assert_eq!(
        person,
        Err(Refusal::NotFound),
        "a person is not a service account"
    );

    let by_admin = try_create(store, policy(&org, &ci, "deploy"), Some(&admin.id))
        .await?
        .map_err(|r| format!("an Admin may: {r:?}"))?;
    assert_eq!(by_admin.name, "deploy");
    let by_owner = create(store, policy(&org, &ci, "another")).await?;
    let taken = try_create(store, policy(&org, &ci, "deploy"), Some(&owner.id)).await?;
    assert_eq!(taken, Err(Refusal::NameTaken));
    let names: Vec<String> = store
        .trust_policies(&org.id)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["another", "deploy"], "by name");
    assert!(store.trust_policies(&other_org.id).await?.is_empty());
    assert_eq!(
        store.trust_policy(&org.id, &by_admin.id).await?,
        Some(by_admin.clone())
    );
    assert_eq!(store.trust_policy(&other_org.id, &by_admin.id).await?, None);

    let renamed = TrustPolicyRecord {
        name: "deploy prod".into(),
        updated_at: T0 + 5,
        ..by_admin.clone()
    };
    assert_eq!(
        update(store, renamed.clone(), false, Some(&dev.id)).await?,
        Err(Refusal::Forbidden)
    );
    let clash = TrustPolicyRecord {
        name: "another".into(),
        ..renamed.clone()
    };
    assert_eq!(
        update(store, clash, false, None).await?,
        Err(Refusal::NameTaken)
    );
    let updated = update(store, renamed, false, Some(&admin.id))
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(updated.name, "deploy prod");

    assert_eq!(
        record(store, exchange(&by_owner, "before-delete")).await?,
        ExchangeWrite::Issued
    );
    let event = || audit_about("trust_policy.deleted", T0 + 6, &ci);
    assert_eq!(
        store
            .delete_trust_policy(&org.id, &by_owner.id, Some(&dev.id), event())
            .await?,
        Err(Refusal::Forbidden)
    );
    assert_eq!(
        store
            .delete_trust_policy(&org.id, &by_owner.id, None, event())
            .await?,
        Ok(())
    );
    assert_eq!(
        store
            .delete_trust_policy(&org.id, &by_owner.id, None, event())
            .await?,
        Err(Refusal::NotFound)
    );
    let revoked = db
        .count_bind(
            "SELECT COUNT(*) FROM refresh_tokens WHERE trust_policy_id = $1 \
             AND revoked_at IS NOT NULL",
            &by_owner.id,
        )
        .await?;
    assert_eq!(revoked, 1, "a deleted policy's sessions are revoked");

    assert_eq!(
        store
            .remove_user(
                &ci.id,
                T0 + 7,
                None,
                audit_about("user.removed", T0 + 7, &ci)
            )
            .await?,
        Ok(())
    );
    assert!(
        store.trust_policies(&org.id).await?.is_empty(),
        "a removed service account's policies go with it"
    );
    Ok(())
}

/// The exchange's one read: the enabled policies of an issuer, with the account's standing
/// and its organization.
pub(super) async fn trust_candidates_of_an_issuer(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _owner) = org_with_owner(store).await?;
    let ci = account(store, &org, "ci").await?;
    let live = create(store, policy(&org, &ci, "live")).await?;
    let disabled = create(
        store,
        TrustPolicyRecord {
            enabled: false,
            ..policy(&org, &ci, "disabled")
        },
    )
    .await?;
    create(
        store,
        TrustPolicyRecord {
            issuer: "https://gitlab.example".into(),
            ..policy(&org, &ci, "gitlab")
        },
    )
    .await?;
    let candidates = store.trust_candidates(ISSUER).await?;
    assert_eq!(candidates.len(), 1, "only the enabled policy of the issuer");
    let candidate = &candidates[0];
    assert_eq!(candidate.policy, live);
    assert_eq!(candidate.tenant_id, org.tenant_id);
    assert_eq!(candidate.account_role, "integrator");
    assert_eq!(candidate.account_epoch, ci.token_epoch);
    assert_eq!(candidate.account_removed_at, None);
    assert_eq!(candidate.held_org_scopes, "");
    assert!(
        store
            .trust_candidates("https://nobody.example")
            .await?
            .is_empty()
    );
    let enabled_again = TrustPolicyRecord {
        enabled: true,
        ..disabled.clone()
    };
    update(store, enabled_again, false, None)
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(store.trust_candidates(ISSUER).await?.len(), 2);
    Ok(())
}

/// Each token is spent once, on this store and on another process's, also when many race.
pub(super) async fn exchanged_tokens_are_spent_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let other = db.another().await?;
    let (org, _owner) = org_with_owner(store).await?;
    let ci = account(store, &org, "ci").await?;
    let live = create(store, policy(&org, &ci, "live")).await?;
    assert_eq!(
        record(store, exchange(&live, "k1")).await?,
        ExchangeWrite::Issued
    );
    assert_eq!(
        record(store, exchange(&live, "k1")).await?,
        ExchangeWrite::Replayed
    );
    assert_eq!(
        record(other.as_ref(), exchange(&live, "k1")).await?,
        ExchangeWrite::Replayed,
        "another process sees it spent"
    );
    let mut racing = Vec::new();
    for i in 0..8 {
        let on = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let exchange = exchange(&live, "k2");
        racing.push(tokio::spawn(
            async move { record(on.as_ref(), exchange).await },
        ));
    }
    let mut outcomes = Vec::new();
    for task in racing {
        outcomes.push(task.await??);
    }
    let winners = outcomes
        .iter()
        .filter(|o| **o == ExchangeWrite::Issued)
        .count();
    assert_eq!(
        winners, 1,
        "one of 8 racing exchanges of a token: {outcomes:?}"
    );
    let used_at = store
        .trust_policy(&org.id, &live.id)
        .await?
        .and_then(|p| p.last_used_at);
    assert_eq!(used_at, Some(T0 + 10), "the use is noted");
    assert_eq!(db.count("SELECT COUNT(*) FROM oidc_token_uses").await?, 2);
    assert_eq!(
        db.count_bind(
            "SELECT COUNT(*) FROM refresh_tokens WHERE trust_policy_id = $1",
            &live.id
        )
        .await?,
        2,
        "a session per exchange, none for a replay"
    );
    other.close().await;
    Ok(())
}

/// Each exchange's session is one of the account's sessions while its access token lives;
/// a change of what the policy trusts, or disabling it, ends them all; a disabled policy, or
/// one that moved to another account, issues nothing.
pub(super) async fn exchange_sessions_end_with_their_policy(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _owner) = org_with_owner(store).await?;
    let ci = account(store, &org, "ci").await?;
    let deployer = account(store, &org, "deployer").await?;
    let live = create(store, policy(&org, &ci, "live")).await?;
    let first = exchange(&live, "one");
    let second = exchange(&live, "two");
    for exchange in [first.clone(), second.clone()] {
        assert_eq!(record(store, exchange).await?, ExchangeWrite::Issued);
    }
    let sessions = store.list_sessions(&ci.id, 10).await?;
    let ids: std::collections::BTreeSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert!(
        ids.contains(first.session_id.as_str()) && ids.contains(second.session_id.as_str()),
        "each exchange is a session of the account: {sessions:?}"
    );
    let shown = sessions
        .iter()
        .find(|s| s.id == first.session_id)
        .ok_or("no session")?;
    assert_eq!(shown.client_id, "keyless");
    assert_eq!(shown.name.as_deref(), Some("trust policy live"));
    let live_sessions = || {
        db.count_bind(
            "SELECT COUNT(*) FROM refresh_tokens WHERE trust_policy_id = $1 \
             AND revoked_at IS NULL",
            &live.id,
        )
    };
    assert_eq!(live_sessions().await?, 2);

    let renamed = TrustPolicyRecord {
        name: "renamed".into(),
        ..live.clone()
    };
    update(store, renamed.clone(), false, None)
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(live_sessions().await?, 2, "a rename ends nothing");
    let narrowed = TrustPolicyRecord {
        audience: "other".into(),
        ..renamed.clone()
    };
    update(store, narrowed.clone(), true, None)
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(live_sessions().await?, 0, "a rewrite ends every session");
    assert_eq!(
        record(store, exchange(&live, "three")).await?,
        ExchangeWrite::Issued
    );
    assert_eq!(
        live_sessions().await?,
        1,
        "the next exchange starts a new one"
    );

    let disabled = TrustPolicyRecord {
        enabled: false,
        ..narrowed.clone()
    };
    update(store, disabled, true, None)
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(live_sessions().await?, 0);
    assert_eq!(
        record(store, exchange(&live, "after-disable")).await?,
        ExchangeWrite::PolicyGone
    );
    let moved = TrustPolicyRecord {
        enabled: true,
        service_account_id: deployer.id.clone(),
        ..narrowed
    };
    update(store, moved, true, None)
        .await?
        .map_err(|r| format!("{r:?}"))?;
    assert_eq!(
        record(store, exchange(&live, "after-move")).await?,
        ExchangeWrite::PolicyGone,
        "an exchange decided for the old account issues nothing"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM oidc_token_uses").await?,
        3,
        "a refused exchange spends nothing"
    );
    Ok(())
}

/// The cleanup deletes an exchange's session once its access token expired, and a spent
/// token's replay key once the token expired; nothing live, and no other refresh token.
pub(super) async fn cleanup_deletes_expired_exchanges_only(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let ci = account(store, &org, "ci").await?;
    let live = create(store, policy(&org, &ci, "live")).await?;
    let ends_soon = PolicyExchange {
        session_expires_at: T0 + 1_000,
        token_expires_at: T0 + 1_000,
        ..exchange(&live, "soon")
    };
    let ends_later = exchange(&live, "later");
    for exchange in [ends_soon, ends_later.clone()] {
        assert_eq!(record(store, exchange).await?, ExchangeWrite::Issued);
    }
    // A person's named token that expired at the same time stays until its own retention.
    let named = NewRefreshToken {
        name: Some("laptop".into()),
        named: true,
        expires_at: Some(T0 + 1_000),
        ..refresh_token(&owner, 7, None)
    };
    assert!(store.insert_refresh_token(named, audit("t", T0)).await?);
    const SESSIONS: &str = "SELECT COUNT(*) FROM refresh_tokens";
    assert_eq!(db.count(SESSIONS).await?, 3);
    let cutoff = T0 + 2_000;
    assert_eq!(
        store
            .delete_garbage(Garbage::ExpiredKeylessSessions, cutoff, 500)
            .await?,
        1
    );
    assert_eq!(
        store
            .delete_garbage(Garbage::SpentOidcTokens, cutoff, 500)
            .await?,
        1
    );
    assert_eq!(
        db.count(SESSIONS).await?,
        2,
        "the later session and the named token stay"
    );
    assert_eq!(
        db.count_bind(
            "SELECT COUNT(*) FROM refresh_tokens WHERE id = $1",
            &ends_later.session_id
        )
        .await?,
        1
    );
    assert_eq!(
        record(store, exchange(&live, "later")).await?,
        ExchangeWrite::Replayed,
        "a live token's replay key stays"
    );
    Ok(())
}

/// Many exchanges at once (on SQLite, committed in groups with revoke-alls): each comes out
/// as if it had run alone. Every distinct token is issued once, a token sent many times is
/// issued once, a refused exchange spends nothing and writes nothing, and a revoke-all in the
/// same burst lands too.
pub(super) async fn concurrent_exchanges_each_as_if_alone(db: Db) -> TestResult {
    let store = db.store.clone();
    let (org, owner) = org_with_owner(store.as_ref()).await?;
    let ci = account(store.as_ref(), &org, "ci").await?;
    let live = create(store.as_ref(), policy(&org, &ci, "live")).await?;
    let off = create(
        store.as_ref(),
        TrustPolicyRecord {
            enabled: false,
            ..policy(&org, &ci, "off")
        },
    )
    .await?;
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    for i in 0..24 {
        let (exchange, outcome) = match i % 3 {
            0 => (exchange(&live, &format!("distinct-{i}")), "issued"),
            1 => (exchange(&live, "the-same"), "same"),
            _ => (exchange(&off, &format!("refused-{i}")), "gone"),
        };
        expected.push(outcome);
        let on = store.clone();
        tasks.push(tokio::spawn(
            async move { record(on.as_ref(), exchange).await },
        ));
    }
    let revoke = {
        let on = store.clone();
        let owner_id = owner.id.clone();
        tokio::spawn(async move {
            on.revoke_all_tokens(&owner_id, 0, audit("revoke_all", T0 + 20))
                .await
        })
    };
    let mut same_issued = 0;
    for (task, outcome) in tasks.into_iter().zip(expected) {
        let got = task.await??;
        match outcome {
            "issued" => assert_eq!(got, ExchangeWrite::Issued),
            "gone" => assert_eq!(got, ExchangeWrite::PolicyGone),
            _ => match got {
                ExchangeWrite::Issued => same_issued += 1,
                ExchangeWrite::Replayed => {}
                other => return Err(format!("a repeated token got {other:?}").into()),
            },
        }
    }
    assert_eq!(
        same_issued, 1,
        "a token sent 8 times at once is issued once"
    );
    assert!(
        revoke.await??,
        "the revoke-all in the same burst moved the epoch"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM oidc_token_uses").await?,
        9,
        "8 distinct tokens and the repeated one spent; the refused ones not"
    );
    assert_eq!(
        db.count_bind(
            "SELECT COUNT(*) FROM refresh_tokens WHERE trust_policy_id = $1",
            &live.id
        )
        .await?,
        9
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'oidc.exchanged'")
            .await?,
        9,
        "an audit row for each exchange issued, none for the refused"
    );
    // A token refused for its policy can still be exchanged where a policy accepts it.
    assert_eq!(
        record(store.as_ref(), exchange(&live, "refused-2")).await?,
        ExchangeWrite::Issued
    );
    Ok(())
}
