//! Store conformance: the change feed: every process hears every committed change.

use super::*;

/// Changes committed through one store reach a follower on another store of the same
/// database; writes that roll back are not announced.
pub(super) async fn changes_reach_other_processes(db: Db) -> TestResult {
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let user = add_user(db.store.as_ref(), &org, "u@example.com", "member", T0).await?;
    let (sender, mut heard) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let follower_store = db.store.clone();
    let follower = tokio::spawn(async move {
        let forward = move |change: Change| {
            let _ = sender.send(change);
        };
        follower_store.follow_changes(&forward).await
    });
    // The feed is live once it has heard something; poke it until then.
    let other = db.another().await?;
    let wait = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(wait, async {
        loop {
            other
                .update_profile(
                    &owner.id,
                    ProfileChanges {
                        name: Some("poke".into()),
                        ..ProfileChanges::default()
                    },
                    None,
                    audit_about("user.updated", T0 + 1, &owner),
                )
                .await?
                .map_err(|refused| format!("{refused:?}"))?;
            tokio::select! {
                change = heard.recv() => match change {
                    Some(change) if change.action == "user.updated" => {
                        return Ok::<_, Box<dyn std::error::Error>>(change)
                    }
                    Some(_) => {}
                    None => return Err("the change feed ended".into()),
                },
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    })
    .await??;
    assert_eq!(first.user_id.as_deref(), Some(owner.id.as_str()));
    while heard.try_recv().is_ok() {}

    // Nothing changed (the epoch is not 7): nothing announced. Its own action name would show
    // if it were.
    assert!(
        !other
            .revoke_all_tokens(&user.id, 7, audit_about("must.not.be.heard", T0 + 2, &user))
            .await?
    );
    assert!(
        other
            .revoke_all_tokens(
                &user.id,
                0,
                audit_about("tokens.revoked_all", T0 + 3, &user)
            )
            .await?
    );
    let change = tokio::time::timeout(wait, async {
        loop {
            match heard.recv().await {
                Some(change) if change.action == "user.updated" => continue,
                other => return other,
            }
        }
    })
    .await?
    .ok_or("the change feed ended")?;
    assert_eq!(
        change,
        Change {
            action: "tokens.revoked_all".into(),
            user_id: Some(user.id.clone()),
        }
    );
    // A quiet feed stays up: PostgreSQL's listener hears its own heartbeats (it gives up
    // after 3 s of silence), SQLite's poll just keeps polling.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !follower.is_finished(),
        "the feed ended while nothing changed"
    );
    assert!(
        heard.try_recv().is_err(),
        "heartbeats are not handed on as changes"
    );
    follower.abort();
    other.close().await;
    Ok(())
}
