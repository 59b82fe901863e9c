//! Store conformance: the audit trail: rows written with their changes, and the paged, filtered query.

use super::*;

pub(super) async fn audit_rows(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert!(recent_events(store, 10).await?.is_empty());
    let (org, owner) = org_with_owner(store).await?;
    let event = AuditEvent {
        org_id: Some(org.id.clone()),
        subject_user_id: Some(owner.id.clone()),
        ..audit("user.revoke_all", T0 + 5)
    };
    assert!(store.revoke_all_tokens(&owner.id, 0, event).await?);
    // A refused change writes no row.
    assert!(
        !store
            .revoke_all_tokens(&owner.id, 0, audit("refused", T0 + 6))
            .await?
    );
    add_user(store, &org, "x@example.com", "guest", T0 + 7).await?;
    let events = recent_events(store, 10).await?;
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["user.add", "user.revoke_all", "bootstrap"],
        "newest first"
    );
    assert!(events.windows(2).all(|w| w[0].id > w[1].id));
    let revoke = &events[1];
    assert_eq!(revoke.at, T0 + 5);
    assert_eq!(revoke.actor, "test");
    assert_eq!(revoke.org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(revoke.subject_user_id.as_deref(), Some(owner.id.as_str()));
    assert_eq!(revoke.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(revoke.detail.as_deref(), Some(r#"{"k":1}"#));
    assert_eq!(recent_events(store, 1).await?.len(), 1);
    Ok(())
}

/// An event of `org` at `at`, by `actor`, about `subject`, with a user agent.
pub(super) fn org_event(
    action: &'static str,
    at: i64,
    org: Option<&Organization>,
    actor: String,
    subject: Option<&User>,
) -> AuditEvent {
    AuditEvent {
        at,
        action,
        actor,
        org_id: org.map(|o| o.id.clone()),
        subject_user_id: subject.map(|u| u.id.clone()),
        address: Some("192.0.2.7".into()),
        user_agent: Some("conformance/1.0".into()),
        detail: None,
    }
}

/// Reads every page of `query`, `size` at a time, as the API does: the next page starts
/// before the last id of the previous one.
pub(super) async fn all_pages(
    store: &dyn Store,
    query: &AuditQuery,
    size: i64,
) -> Result<(Vec<i64>, usize), Box<dyn std::error::Error>> {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut before_id = None;
    loop {
        let page_query = AuditQuery {
            before_id,
            ..query.clone()
        };
        let page = store.audit_events_page(&page_query, size).await?;
        assert!(page.len() as i64 <= size);
        ids.extend(page.iter().map(|e| e.id));
        if page.len() as i64 == size {
            pages += 1;
            before_id = page.last().map(|e| e.id);
        } else {
            return Ok((ids, pages + usize::from(!page.is_empty())));
        }
    }
}

pub(super) async fn audit_query_filters_pages_and_orgs(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org_a, owner_a) = org_with_owner(store).await?;
    let member_a = add_user(store, &org_a, "m@example.com", "guest", T0).await?;
    let org_b = new_org("B", T0);
    store
        .create_organization(org_b.clone(), audit("org.created", T0))
        .await?;
    let org_b = store
        .organization_by_tenant(&org_b.tenant_id)
        .await?
        .ok_or("no org B")?;
    let owner_b = add_user(store, &org_b, "b@example.com", "owner", T0).await?;
    let actor = |u: &User| format!("user:{}", u.id);
    // Org A: 7 events; org B: 2; one of no organization.
    let a_events = [
        org_event(
            "login.failed",
            T0 + 100,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&member_a),
        ),
        org_event(
            "login.succeeded",
            T0 + 200,
            Some(&org_a),
            actor(&member_a),
            Some(&member_a),
        ),
        org_event(
            "user.role_changed",
            T0 + 300,
            Some(&org_a),
            actor(&owner_a),
            Some(&member_a),
        ),
        org_event(
            "token.minted",
            T0 + 400,
            Some(&org_a),
            actor(&owner_a),
            Some(&owner_a),
        ),
        org_event(
            "login.failed",
            T0 + 500,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&owner_a),
        ),
        org_event(
            "tokens.revoked_all",
            T0 + 600,
            Some(&org_a),
            actor(&owner_a),
            Some(&owner_a),
        ),
        org_event(
            "login.failed",
            T0 + 700,
            Some(&org_a),
            "address:192.0.2.7".into(),
            Some(&member_a),
        ),
    ];
    for event in a_events {
        store.record_audit(event).await?;
    }
    store
        .record_audit(org_event(
            "login.failed",
            T0 + 150,
            Some(&org_b),
            actor(&owner_b),
            Some(&owner_b),
        ))
        .await?;
    store
        .record_audit(org_event(
            "login.failed",
            T0 + 250,
            None,
            "address:192.0.2.7".into(),
            None,
        ))
        .await?;
    store
        .record_audit(org_event(
            "token.minted",
            T0 + 350,
            Some(&org_b),
            actor(&owner_b),
            Some(&owner_b),
        ))
        .await?;

    let only_a = AuditQuery {
        org_id: Some(org_a.id.clone()),
        ..AuditQuery::default()
    };
    let everything_of_a = store.audit_events_page(&only_a, 100).await?;
    // The seven above, and the org's creation events written by the helpers (none carry
    // an org id), so exactly the seven.
    assert_eq!(everything_of_a.len(), 7);
    assert!(
        everything_of_a
            .iter()
            .all(|e| e.org_id.as_deref() == Some(org_a.id.as_str()))
    );
    assert!(
        everything_of_a.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let newest = &everything_of_a[0];
    assert_eq!(newest.action, "login.failed");
    assert_eq!(newest.at, T0 + 700);
    assert_eq!(newest.address.as_deref(), Some("192.0.2.7"));
    assert_eq!(
        newest.user_agent.as_deref(),
        Some("conformance/1.0"),
        "user agent read back"
    );
    assert_eq!(
        newest.subject_user_id.as_deref(),
        Some(member_a.id.as_str())
    );

    // Pages of 3: 3 + 3 + 1, every event once, in order.
    let (paged, pages) = all_pages(store, &only_a, 3).await?;
    let expected: Vec<i64> = everything_of_a.iter().map(|e| e.id).collect();
    assert_eq!(paged, expected, "no gaps, no duplicates");
    assert_eq!(pages, 3);

    // Filters.
    let failed = AuditQuery {
        action: Some("login.failed".into()),
        ..only_a.clone()
    };
    let failed = store.audit_events_page(&failed, 100).await?;
    assert_eq!(
        failed.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![T0 + 700, T0 + 500, T0 + 100]
    );
    let by_or_about_member = AuditQuery {
        user_id: Some(member_a.id.clone()),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&by_or_about_member, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(times, vec![T0 + 700, T0 + 300, T0 + 200, T0 + 100]);
    let by_or_about_owner = AuditQuery {
        user_id: Some(owner_a.id.clone()),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&by_or_about_owner, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(
        times,
        vec![T0 + 600, T0 + 500, T0 + 400, T0 + 300],
        "as actor or subject"
    );
    let window = AuditQuery {
        since: Some(T0 + 200),
        until: Some(T0 + 500),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&window, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(
        times,
        vec![T0 + 400, T0 + 300, T0 + 200],
        "since inclusive, until exclusive"
    );
    let combined = AuditQuery {
        action: Some("login.failed".into()),
        user_id: Some(member_a.id.clone()),
        since: Some(T0 + 101),
        ..only_a.clone()
    };
    let times: Vec<i64> = store
        .audit_events_page(&combined, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(times, vec![T0 + 700]);

    // Organizations do not see each other, whatever the filter.
    let b_with_a_user = AuditQuery {
        org_id: Some(org_b.id.clone()),
        user_id: Some(member_a.id.clone()),
        ..AuditQuery::default()
    };
    assert!(
        store
            .audit_events_page(&b_with_a_user, 100)
            .await?
            .is_empty()
    );
    let only_b = AuditQuery {
        org_id: Some(org_b.id.clone()),
        ..AuditQuery::default()
    };
    let b: Vec<i64> = store
        .audit_events_page(&only_b, 100)
        .await?
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(b, vec![T0 + 350, T0 + 150]);
    // The operator's view: every organization's, and events of none.
    let all_failed = AuditQuery {
        action: Some("login.failed".into()),
        ..AuditQuery::default()
    };
    let all_failed = store.audit_events_page(&all_failed, 100).await?;
    assert_eq!(all_failed.len(), 5);
    assert!(all_failed.iter().any(|e| e.org_id.is_none()));
    Ok(())
}

pub(super) async fn audit_query_pages_are_bounded(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let total = MAX_AUDIT_PAGE + 5;
    for n in 0..total {
        store
            .record_audit(org_event(
                "token.minted",
                T0 + n,
                Some(&org),
                "operator".into(),
                Some(&owner),
            ))
            .await?;
    }
    let query = AuditQuery {
        org_id: Some(org.id.clone()),
        ..AuditQuery::default()
    };
    let page = store.audit_events_page(&query, 1_000_000).await?;
    assert_eq!(
        page.len() as i64,
        MAX_AUDIT_PAGE + 1,
        "capped: a page and one to tell"
    );
    assert_eq!(
        store.audit_events_page(&query, 0).await?.len(),
        1,
        "at least one"
    );
    let (ids, _) = all_pages(store, &query, MAX_AUDIT_PAGE).await?;
    assert_eq!(ids.len() as i64, total);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    Ok(())
}

pub(super) async fn audit_query_uses_its_index(db: Db) -> TestResult {
    // An organization's page, filtered or not, must walk the (org_id, id) index in order
    // from the cursor: no table scan, and no sort of the organization's whole history.
    let queries = [
        AuditQuery {
            org_id: Some("org".into()),
            before_id: Some(1000),
            ..AuditQuery::default()
        },
        AuditQuery {
            org_id: Some("org".into()),
            action: Some("login.failed".into()),
            user_id: Some("user".into()),
            since: Some(T0),
            until: Some(T0 + 1),
            before_id: Some(1000),
        },
    ];
    for query in queries {
        let (sql, binds) = query.statement(50);
        let plan: Vec<String> = match &db.backend {
            Backend::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let mut explain = sqlx::query_as::<_, (i64, i64, i64, String)>(
                    sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")),
                );
                for bind in binds {
                    explain = match bind {
                        AuditBind::Text(text) => explain.bind(text),
                        AuditBind::Int(number) => explain.bind(number),
                    };
                }
                let rows = explain.fetch_all(&mut conn).await?;
                conn.close().await?;
                rows.into_iter().map(|row| row.3).collect()
            }
            Backend::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query("SET enable_seqscan = off")
                    .execute(&mut conn)
                    .await?;
                let mut explain =
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")));
                for bind in binds {
                    explain = match bind {
                        AuditBind::Text(text) => explain.bind(text),
                        AuditBind::Int(number) => explain.bind(number),
                    };
                }
                let rows = explain.fetch_all(&mut conn).await?;
                conn.close().await?;
                rows
            }
        };
        let text = plan.join("\n");
        assert!(
            text.contains("audit_events_org_id"),
            "{query:?} does not use the index:\n{text}"
        );
        assert!(
            !text.contains("Seq Scan") && !text.contains("TEMP B-TREE") && !text.contains("Sort"),
            "{query:?} scans or sorts:\n{text}"
        );
    }
    Ok(())
}
