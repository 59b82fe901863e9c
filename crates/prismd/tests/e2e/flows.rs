//! The token lifecycle: exchange, API, revoke-all, user removal, concurrency (also refreshes
//! racing a revoke), restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::harness::{
    Options, Server, TestResult, admin_ok, temp_dir, until_answered, user_with_token,
};

#[tokio::test]
async fn revoke_all_kills_every_token_of_the_user_and_only_theirs() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let first = user_with_token(dir.path(), "ada@example.com")?;
    let second = admin_ok(
        dir.path(),
        &[
            "tokens",
            "create",
            "--email",
            "ada@example.com",
            "--name",
            "gitlab",
        ],
    )?;
    let other_user = user_with_token(dir.path(), "bob@example.com")?;

    let (status, body) = server.refresh(&first).await?;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 604800);
    assert_eq!(body["scope"], "openid profile email offline_access");
    let access_first = body["access_token"].as_str().ok_or("no token")?.to_owned();
    let access_second = server.access_token(&second).await?;
    let access_other = server.access_token(&other_user).await?;
    assert_eq!(
        server.whoami(&access_first).await?,
        Ok("ada@example.com".into())
    );
    assert_eq!(
        server.whoami(&access_second).await?,
        Ok("ada@example.com".into())
    );

    let (status, _) = server.revoke(&first).await?;
    assert_eq!(status, 200);

    for token in [&first, &second] {
        let (status, body) = server.refresh(token).await?;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or("")
                .contains("revoked"),
            "{body}"
        );
    }
    for access in [&access_first, &access_second] {
        assert_eq!(server.whoami(access).await?, Err(401));
    }
    // Another user's tokens are untouched.
    assert_eq!(
        server.whoami(&access_other).await?,
        Ok("bob@example.com".into())
    );
    server.access_token(&other_user).await?;

    // A token minted afterwards works ...
    let fresh = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "ada@example.com"],
    )?;
    let access_fresh = server.access_token(&fresh).await?;
    assert_eq!(
        server.whoami(&access_fresh).await?,
        Ok("ada@example.com".into())
    );
    // ... and revoking with an already-revoked token cannot kill it (no revoke oracle, no DoS).
    let (status, _) = server.revoke(&first).await?;
    assert_eq!(status, 200);
    assert_eq!(
        server.whoami(&access_fresh).await?,
        Ok("ada@example.com".into())
    );
    server.access_token(&fresh).await?;
    Ok(())
}

#[tokio::test]
async fn removed_user_gets_nothing_and_readding_resurrects_nothing() -> TestResult {
    let dir = temp_dir()?;
    // A cache lifetime far beyond the test's deadline: the removal below, made by an admin
    // command in another process, must reach the server through the change feed.
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--cache-ttl".into(), "10m".into()],
            ..Options::default()
        },
    )?;
    let token = user_with_token(dir.path(), "eve@example.com")?;
    let access = server.access_token(&token).await?;
    assert_eq!(server.whoami(&access).await?, Ok("eve@example.com".into()));
    let old_id = admin_ok(dir.path(), &["users", "list", "--json"])?;

    admin_ok(
        dir.path(),
        &["users", "remove", "--email", "eve@example.com"],
    )?;
    let (status, body) = server.refresh_after_change(&token).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("removed"),
        "{body}"
    );
    assert_eq!(server.whoami_after_change(&access).await?, Err(401));
    // Revoke with a removed user's token answers 200 and changes nothing.
    assert_eq!(server.revoke(&token).await?.0, 200);

    // Re-added with the same email: a new account; none of the old tokens come back.
    let new_id = admin_ok(dir.path(), &["users", "add", "--email", "eve@example.com"])?;
    assert!(!old_id.contains(&new_id), "re-added user must get a new id");
    assert_eq!(server.refresh(&token).await?.0, 400);
    assert_eq!(server.whoami(&access).await?, Err(401));
    let new_token = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "eve@example.com"],
    )?;
    let new_access = server.access_token(&new_token).await?;
    assert_eq!(
        server.whoami(&new_access).await?,
        Ok("eve@example.com".into())
    );
    Ok(())
}

#[tokio::test]
async fn two_hundred_concurrent_refreshes_of_one_token_all_succeed() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "ci@example.com")?;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url, token) = (
            server.http.clone(),
            server.url("/auth/refresh"),
            token.clone(),
        );
        requests.spawn(async move {
            let response = http
                .post(url)
                .json(&serde_json::json!({ "refresh_token": token }))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
    }
    let mut ok = 0;
    while let Some(result) = requests.join_next().await {
        let (status, body) = result??;
        assert_eq!(status, 200, "{body}");
        assert!(body["access_token"].is_string());
        ok += 1;
    }
    assert_eq!(ok, 200);
    Ok(())
}

#[tokio::test]
async fn every_token_state_survives_a_restart() -> TestResult {
    let dir = temp_dir()?;
    // A fixed issuer: the port changes across restarts, the public URL must not.
    let options = Options {
        args: vec!["--issuer".into(), "https://auth.example.test".into()],
        ..Options::default()
    };
    let server = Server::start_with(dir.path(), options.clone())?;
    let live = user_with_token(dir.path(), "live@example.com")?;
    let revoked = user_with_token(dir.path(), "revoked@example.com")?;
    let removed = user_with_token(dir.path(), "removed@example.com")?;
    let live_access = server.access_token(&live).await?;
    let revoked_access = server.access_token(&revoked).await?;
    let removed_access = server.access_token(&removed).await?;
    assert_eq!(server.revoke(&revoked).await?.0, 200);
    admin_ok(
        dir.path(),
        &["users", "remove", "--email", "removed@example.com"],
    )?;
    let logs = server.stop()?;
    assert!(
        logs.contains("stopped"),
        "graceful shutdown must finish: {logs}"
    );

    let server = Server::start_with(dir.path(), options)?;
    assert!(
        !server.logs().contains("first start"),
        "bootstrap must happen once"
    );
    // Same signing key after restart: the old access token still verifies.
    assert_eq!(
        server.whoami(&live_access).await?,
        Ok("live@example.com".into())
    );
    server.access_token(&live).await?;
    for (token, access) in [(&revoked, &revoked_access), (&removed, &removed_access)] {
        assert_eq!(server.refresh(token).await?.0, 400);
        assert_eq!(server.whoami(access).await?, Err(401));
    }

    // Last use of a refresh token is written at shutdown, not lost.
    let uses = last_used(dir.path()).await?;
    assert!(
        uses >= 1,
        "expected recorded token uses after a graceful stop, got {uses}"
    );
    server.stop()?;
    Ok(())
}

async fn last_used(data_dir: &std::path::Path) -> Result<i64, Box<dyn std::error::Error>> {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("prismd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_tokens WHERE last_used_at IS NOT NULL AND last_used_addr = '127.0.0.1'",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(count)
}

#[tokio::test]
async fn audit_trail_records_every_security_event_without_secrets() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "audited@example.com")?;
    server.access_token(&token).await?;
    assert_eq!(server.revoke(&token).await?.0, 200);
    admin_ok(
        dir.path(),
        &["users", "remove", "--email", "audited@example.com"],
    )?;

    let lines = admin_ok(dir.path(), &["audit", "--limit", "50"])?;
    assert!(
        !lines.contains(&token[9..]),
        "the audit trail must not contain the token"
    );
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    // Newest first.
    assert_eq!(
        actions,
        [
            "user.removed",
            "tokens.revoked_all",
            "token.minted",
            "user.created",
            "org.bootstrapped"
        ]
    );
    let revoke = &events[1];
    assert_eq!(revoke["address"], "127.0.0.1");
    assert!(
        revoke["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("session:"))
    );
    assert!(
        revoke["orgId"].is_string() && revoke["subjectUserId"].is_string(),
        "{revoke}"
    );
    assert_eq!(events[0]["actor"], "operator");
    assert_eq!(events[0]["subjectUserId"], revoke["subjectUserId"]);
    Ok(())
}

#[tokio::test]
async fn answered_revocations_and_removals_survive_sigkill() -> TestResult {
    let dir = temp_dir()?;
    let options = Options {
        args: vec!["--issuer".into(), "https://auth.example.test".into()],
        ..Options::default()
    };
    let server = Server::start_with(dir.path(), options.clone())?;
    let revoked = user_with_token(dir.path(), "revoked@example.com")?;
    let removed = user_with_token(dir.path(), "removed@example.com")?;
    let revoked_access = server.access_token(&revoked).await?;
    let removed_access = server.access_token(&removed).await?;
    assert_eq!(server.revoke(&revoked).await?.0, 200);
    admin_ok(
        dir.path(),
        &["users", "remove", "--email", "removed@example.com"],
    )?;
    // No graceful shutdown: only what was fsynced before the answers counts.
    server.kill_hard()?;

    let server = Server::start_with(dir.path(), options)?;
    for (token, access) in [(&revoked, &revoked_access), (&removed, &removed_access)] {
        assert_eq!(server.refresh(token).await?.0, 400);
        assert_eq!(server.whoami(access).await?, Err(401));
    }
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_shutdown() -> TestResult {
    use std::io::Write;
    let dir = temp_dir()?;
    let options = Options {
        args: vec![
            "--header-read-timeout".into(),
            "1s".into(),
            "--shutdown-grace".into(),
            "2s".into(),
        ],
        ..Options::default()
    };
    let server = Server::start_with(dir.path(), options)?;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Half a request head, never finished.
    let mut stalled = std::net::TcpStream::connect(&address)?;
    stalled.write_all(b"POST /auth/refresh HTTP/1.1\r\nHost: x\r\n")?;
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status()?;
    assert!(status.success());
    // The bound is generous: this checks that shutdown finishes at all, not how fast.
    let exited = server.wait_exit(std::time::Duration::from_secs(60))?;
    assert_eq!(
        exited,
        Some(true),
        "prismd must exit cleanly despite the stalled connection"
    );
    drop(stalled);
    Ok(())
}

/// With the standing cache turned off (`--cache-ttl 0s`) every request reads the database, and
/// revocation works the same.
#[tokio::test]
async fn without_the_cache_revocation_works_the_same() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--cache-ttl".into(), "0s".into()],
            ..Options::default()
        },
    )?;
    let token = user_with_token(dir.path(), "nocache@example.com")?;
    let access = server.access_token(&token).await?;
    assert_eq!(
        server.whoami(&access).await?,
        Ok("nocache@example.com".into())
    );
    assert_eq!(server.revoke(&token).await?.0, 200);
    assert_eq!(server.refresh(&token).await?.0, 400);
    assert_eq!(server.whoami(&access).await?, Err(401));
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        !metrics.contains("prismd_cache_hits_total"),
        "no cache, no cache metrics"
    );
    server.stop()?;
    Ok(())
}

/// One refresh of the race below, as its client saw it.
struct Raced {
    /// Whether it used the victim's token (else the bystander's).
    victim: bool,
    /// Taken before the request was sent.
    started: Instant,
    status: u16,
    body: serde_json::Value,
}

/// Many refreshes of one user's tokens race `POST /auth/revoke` of that user, with another
/// user's refreshes alongside. A refresh in flight while the revoke runs may go either way:
/// the server may have read the token before the revoke's write. What must hold: a refresh
/// sent after the revoke's 200 arrived is refused; every access token the user was given,
/// even by a refresh that overlapped the revoke, is refused by `/api` from then on, with no
/// waiting (instant revocation); the other user loses nothing; no answer is a 5xx.
#[tokio::test]
async fn refreshes_racing_a_revoke_get_nothing_that_outlives_it() -> TestResult {
    const TOKENS: usize = 4;
    const WORKERS: usize = 12;
    /// Refreshes each worker sends after it has seen the revoke answered.
    const AFTER: usize = 4;
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let mut victim = vec![user_with_token(dir.path(), "victim@example.com")?];
    for _ in 1..TOKENS {
        victim.push(admin_ok(
            dir.path(),
            &["tokens", "create", "--email", "victim@example.com"],
        )?);
    }
    let bystander = user_with_token(dir.path(), "bystander@example.com")?;

    let revoked_at: Arc<OnceLock<Instant>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    // The victim's workers take the victim's tokens in turn, so that each token is raced.
    let (mut victim_workers, mut raced_tokens) = (0, std::collections::BTreeSet::new());
    for worker in 0..WORKERS {
        // Every fourth worker refreshes the bystander's token, the others the victim's.
        let is_victim = worker % 4 != 3;
        let token = if is_victim {
            let index = victim_workers % TOKENS;
            victim_workers += 1;
            raced_tokens.insert(index);
            victim[index].clone()
        } else {
            bystander.clone()
        };
        let (server_url, http) = (server.url("/auth/refresh"), server.http.clone());
        let (revoked_at, answered) = (revoked_at.clone(), answered.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            // A bound in case the revoke never comes (the test then fails below).
            let deadline = Instant::now() + Duration::from_secs(120);
            while after < AFTER && Instant::now() < deadline {
                let started = Instant::now();
                let response = http
                    .post(&server_url)
                    .json(&serde_json::json!({ "refresh_token": token }))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(serde_json::Value::Null);
                answered.fetch_add(1, Ordering::SeqCst);
                if revoked_at.get().is_some_and(|at| started > *at) {
                    after += 1;
                }
                seen.push(Raced {
                    victim: is_victim,
                    started,
                    status,
                    body,
                });
            }
            Ok::<_, reqwest::Error>(seen)
        });
    }
    assert_eq!(
        raced_tokens.len(),
        TOKENS,
        "not every token of the victim is raced: {raced_tokens:?}"
    );
    // The revoke goes out once the refreshes are in full swing.
    until_answered(&answered, WORKERS * 4).await?;
    let (status, body) = server.revoke(&victim[0]).await?;
    // Taken once the answer is in: a request started later was sent after the revoke had
    // answered, for sure.
    let revoke_answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    revoked_at
        .set(revoke_answered)
        .map_err(|_| "revoked twice")?;
    let mut raced = Vec::new();
    while let Some(seen) = workers.join_next().await {
        raced.extend(seen??);
    }

    let (mut granted_before, mut refused_in_flight) = (0, 0);
    let mut refused_after = 0;
    let mut victim_access = Vec::new();
    let mut bystander_access = Vec::new();
    for refresh in &raced {
        let (status, body) = (refresh.status, &refresh.body);
        assert!(status < 500, "a refresh answered {status}: {body}");
        let after = refresh.started > revoke_answered;
        if !refresh.victim {
            assert_eq!(status, 200, "the bystander's refresh failed: {body}");
        } else if after {
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_grant")),
                "a refresh sent after the revoke had answered was not refused: {body}"
            );
            refused_after += 1;
        } else {
            assert!(
                status == 200 || status == 400,
                "a refresh in flight answered {status}: {body}"
            );
            granted_before += usize::from(status == 200);
            refused_in_flight += usize::from(status == 400);
        }
        if let Some(access) = body["access_token"].as_str() {
            match refresh.victim {
                true => victim_access.push(access.to_owned()),
                false => bystander_access.push(access.to_owned()),
            }
        }
    }
    // Otherwise the race proved nothing.
    assert!(granted_before > 0, "no refresh of the victim succeeded");
    assert!(
        refused_after >= AFTER,
        "too few refreshes were sent after the revoke: {refused_after}"
    );
    for access in &victim_access {
        assert_eq!(
            server.whoami(access).await?,
            Err(401),
            "an access token of the revoked user still opens the API"
        );
    }
    // Each of the victim's tokens is refused now, not only the one the revoke was sent with.
    for (index, token) in victim.iter().enumerate() {
        let (status, body) = server.refresh(token).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "the victim's token {index} still refreshes after the revoke: {body}"
        );
    }
    for access in &bystander_access {
        assert_eq!(
            server.whoami(access).await?,
            Ok("bystander@example.com".into())
        );
    }
    println!(
        "race: of the victim's refreshes sent before the revoke's answer, {granted_before} \
         granted and {refused_in_flight} refused; {refused_after} sent after it, all refused; \
         {} access tokens, all dead",
        victim_access.len()
    );
    Ok(())
}
