//! Crash safety: SIGKILL in the middle of a bounded load of refreshes and revokes, restart on
//! the same SQLite data directory, and check that every answered revoke held, nothing came
//! back to life, nothing of the users never revoked was lost, the database is intact and the
//! server serves again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::harness::{
    Options, Server, TestResult, admin_ok, sqlite_integrity, temp_dir, until_answered,
};

const USERS: usize = 24;
/// The first `LOADED` users take the load; the rest are never touched before the kill.
const LOADED: usize = 16;
const CLIENTS: usize = 4;
/// Requests per client if the kill never came: the load is bounded either way.
const REQUESTS_PER_CLIENT: usize = 150;
/// The kill lands after this many answered requests, far from the end of the load (600) so it
/// lands in the middle even when the test task is woken late.
const KILL_AFTER: usize = 150;

/// Whether the load ever sends a revoke for `user`: only for every other loaded user, so that
/// loaded users who are never revoked show that the crash lost nothing of theirs.
fn revoke_target(user: usize) -> bool {
    user < LOADED && user % 2 == 1
}

/// What one client saw before the kill, per user index.
#[derive(Default)]
struct Seen {
    /// Users whose `/auth/revoke` was answered 200.
    revoked: BTreeSet<usize>,
    /// Refresh tokens that were refused (400) before the kill.
    refused: BTreeSet<String>,
    /// Access tokens issued to each user before the kill.
    access: BTreeMap<usize, Vec<String>>,
    /// Whether the load was cut off by the kill (a request failed at the transport level).
    cut_off: bool,
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    refresh_token: &str,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = http
        .post(format!("{base}{path}"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    ))
}

/// One client: walks its users in turn, refreshing both of their tokens and, for every other
/// user, revoking now and then. Stops at the first transport error (the kill).
async fn client(
    http: reqwest::Client,
    base: String,
    users: Vec<(usize, [String; 2])>,
    answered: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    for step in 0..REQUESTS_PER_CLIENT {
        let (user, tokens) = &users[step % users.len()];
        let token = &tokens[(step / users.len()) % 2];
        let revoke = revoke_target(*user) && step % 9 == 8;
        let path = if revoke {
            "/auth/revoke"
        } else {
            "/auth/refresh"
        };
        let Ok((status, body)) = post(&http, &base, path, token).await else {
            seen.cut_off = true;
            break;
        };
        answered.fetch_add(1, Ordering::SeqCst);
        match (revoke, status) {
            (true, 200) => {
                seen.revoked.insert(*user);
            }
            (false, 200) => {
                if let Some(access) = body["access_token"].as_str() {
                    seen.access
                        .entry(*user)
                        .or_default()
                        .push(access.to_owned());
                }
            }
            (false, 400) => {
                seen.refused.insert(token.clone());
            }
            // Anything else (a 5xx, a 503 while shutting down) is recorded as nothing: only
            // answered outcomes carry a promise.
            _ => {}
        }
    }
    seen
}

#[tokio::test]
async fn sigkill_under_load_keeps_every_answered_revoke() -> TestResult {
    let dir = temp_dir()?;
    // A fixed issuer: the port changes across the restart, the public URL must not, or the
    // access tokens from before the kill would be refused as another issuer's.
    let options = Options {
        args: vec!["--issuer".into(), "https://auth.example.test".into()],
        ..Options::default()
    };
    let server = Server::start_with(dir.path(), options.clone())?;
    let mut tokens: Vec<[String; 2]> = Vec::with_capacity(USERS);
    for user in 0..USERS {
        let email = format!("crash{user}@example.com");
        admin_ok(
            dir.path(),
            &["users", "add", "--email", &email, "--role", "Integrator"],
        )?;
        let first = admin_ok(dir.path(), &["tokens", "create", "--email", &email])?;
        let second = admin_ok(dir.path(), &["tokens", "create", "--email", &email])?;
        tokens.push([first, second]);
    }

    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let users: Vec<(usize, [String; 2])> = (0..LOADED)
            .filter(|user| user % CLIENTS == c)
            .map(|user| (user, tokens[user].clone()))
            .collect();
        clients.push(tokio::spawn(client(
            server.http.clone(),
            server.base.clone(),
            users,
            answered.clone(),
        )));
    }
    until_answered(&answered, KILL_AFTER).await?;
    server.kill_hard()?;

    let mut seen = Seen::default();
    for handle in clients {
        let part = handle.await?;
        seen.revoked.extend(part.revoked);
        seen.refused.extend(part.refused);
        seen.cut_off |= part.cut_off;
        for (user, access) in part.access {
            seen.access.entry(user).or_default().extend(access);
        }
    }
    assert!(
        seen.cut_off,
        "the kill did not land in the middle of the load"
    );
    assert!(
        !seen.revoked.is_empty(),
        "no revoke was answered before the kill; the test proves nothing"
    );

    println!(
        "crash: {} revokes answered, {} refused tokens, {} access tokens before the kill",
        seen.revoked.len(),
        seen.refused.len(),
        seen.access.values().map(Vec::len).sum::<usize>()
    );

    let server = Server::start_with(dir.path(), options)?;
    assert_eq!(sqlite_integrity(dir.path()).await?, "ok");

    for user in &seen.revoked {
        for token in &tokens[*user] {
            let (status, body) = server.refresh(token).await?;
            assert_eq!(
                status, 400,
                "user {user}: a revoked token works again: {body}"
            );
        }
        for access in seen.access.get(user).into_iter().flatten() {
            assert_eq!(
                server.whoami(access).await?,
                Err(401),
                "user {user}: an access token issued before the revoke works again"
            );
        }
    }
    for token in &seen.refused {
        let (status, body) = server.refresh(token).await?;
        assert_eq!(status, 400, "a refused token came back to life: {body}");
        assert!(
            tokens
                .iter()
                .enumerate()
                .any(|(user, pair)| revoke_target(user) && pair.contains(token)),
            "a token of a user never revoked was refused before the kill: {token}"
        );
    }
    // The users no revoke was ever sent for, those under the load at the kill and those
    // never touched: every token still refreshes, and every access token they were given
    // before the kill still opens the API.
    let spared = (0..USERS).filter(|user| !revoke_target(*user));
    assert!(
        spared.clone().any(|user| seen.access.contains_key(&user)),
        "no user who is never revoked got an access token before the kill"
    );
    for user in spared {
        let email = format!("crash{user}@example.com");
        for token in &tokens[user] {
            let (status, body) = server.refresh(token).await?;
            assert_eq!(status, 200, "user {user}: a token was lost: {body}");
            let access = body["access_token"].as_str().ok_or("no access_token")?;
            assert_eq!(server.whoami(access).await?, Ok(email.clone()));
        }
        for access in seen.access.get(&user).into_iter().flatten() {
            assert_eq!(
                server.whoami(access).await?,
                Ok(email.clone()),
                "user {user}: an access token from before the kill was lost"
            );
        }
    }
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await?
            .status(),
        200
    );

    server.stop()?;
    assert_eq!(sqlite_integrity(dir.path()).await?, "ok");
    Ok(())
}
