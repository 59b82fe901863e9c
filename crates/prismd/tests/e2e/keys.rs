//! Signing-key rotation end to end: `prismd keys rotate` and `keys list`, running servers
//! picking up a rotation (periodically, and at once for a token signed with a key they do not
//! know yet), retired keys verifying until their last token has expired, a failed reload
//! that keeps the current keys, and `prismd keys revoke` refusing a leaked key's tokens at once.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::harness::{
    CHANGE_REACH_BOUND, Options, Server, TestResult, admin_ok, prismd, temp_dir, user_with_token,
};
use crate::postgres::FreshDatabase;

/// The `kid` in an access token's header.
pub fn kid_of(token: &str) -> Result<String, Box<dyn std::error::Error>> {
    let header = token.split('.').next().ok_or("not a JWT")?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    Ok(header["kid"].as_str().ok_or("no kid")?.to_owned())
}

fn exp_of(token: &str) -> Result<i64, Box<dyn std::error::Error>> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    claims["exp"].as_i64().ok_or_else(|| "no exp".into())
}

fn now_secs() -> Result<i64, Box<dyn std::error::Error>> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?)
}

/// The kids the server's JWKS publishes.
pub async fn jwks_kids(server: &Server) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let jwks: Value = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    Ok(jwks["keys"]
        .as_array()
        .ok_or("no keys")?
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect())
}

/// The `keys list` row of `kid`.
fn listed(list: &str, kid: &str) -> Option<String> {
    list.lines()
        .find(|line| line.starts_with(kid))
        .map(str::to_owned)
}

/// Access-token lifetime of [`retired_key_verifies_until_its_last_token_expired`].
const TTL_SECS: u64 = 20;
/// Its `--key-reload-interval`.
const RELOAD_SECS: u64 = 1;
/// How long after the rotation the server may take to sign with the new key: a deadline far
/// above the usual delay (the change feed polls every 100 ms, the reload runs every second),
/// and well within a token's lifetime, so the old-key token checked afterwards cannot have
/// expired by then.
const PICKUP_BOUND_SECS: u64 = 10;
/// Its `--key-retire-margin`: at least [`PICKUP_BOUND_SECS`], so that every old-key token the
/// test collects (issued before that deadline) expires before the retired key may go, and
/// the final check cannot be failed by a server that was merely slow to pick the key up.
const MARGIN_SECS: u64 = PICKUP_BOUND_SECS;
/// How long the retired key verifies after the rotation (`RetiredKeyWindow`).
const RETIRE_WINDOW_SECS: u64 = TTL_SECS + RELOAD_SECS + MARGIN_SECS;
const _: () = assert!(PICKUP_BOUND_SECS < TTL_SECS && PICKUP_BOUND_SECS <= MARGIN_SECS);

#[tokio::test]
async fn retired_key_verifies_until_its_last_token_expired() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let (ttl, reload, margin) = (
        format!("{TTL_SECS}s"),
        format!("{RELOAD_SECS}s"),
        format!("{MARGIN_SECS}s"),
    );
    let window = [
        "--access-token-ttl",
        ttl.as_str(),
        "--key-reload-interval",
        reload.as_str(),
        "--key-retire-margin",
        margin.as_str(),
    ];
    let server = Server::start_with(
        data,
        Options {
            args: window.iter().map(|s| (*s).to_owned()).collect(),
            ..Options::default()
        },
    )?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let first = server.access_token(&refresh).await?;
    let old_kid = kid_of(&first)?;
    assert_eq!(jwks_kids(&server).await?, vec![old_kid.clone()]);
    let list_args: Vec<&str> = ["keys", "list"].iter().chain(&window).copied().collect();
    let list = admin_ok(data, &list_args)?;
    assert!(list.starts_with("KID"), "{list}");
    let row = listed(&list, &old_kid).ok_or("old key not listed")?;
    assert!(row.contains("yes (signs new tokens)"), "{row}");

    // Every time bound below counts from here, before the rotation's `retired_at`. This
    // token, signed by the old key, is issued after it: it outlives the pickup deadline.
    let rotating = Instant::now();
    let mut newest_old = server.access_token(&refresh).await?;
    assert_eq!(kid_of(&newest_old)?, old_kid);
    let mut last_old_exp = exp_of(&newest_old)?;
    let new_kid = admin_ok(data, &["keys", "rotate"])?;
    assert_ne!(new_kid, old_kid);
    assert_eq!(new_kid.len(), 43, "a thumbprint: {new_kid}");

    // The server picks the new key up (change feed or periodic reload); until then it still
    // signs with the old one, and every such token must verify for as long as it lives. Only
    // tokens received before the deadline are kept, which bounds the last one's `exp`.
    let pickup_deadline = rotating + Duration::from_secs(PICKUP_BOUND_SECS);
    loop {
        let token = server.access_token(&refresh).await?;
        if kid_of(&token)? == new_kid {
            break;
        }
        if Instant::now() > pickup_deadline {
            return Err(format!(
                "the server still signed with the retired key {PICKUP_BOUND_SECS} s after the \
                 rotation"
            )
            .into());
        }
        last_old_exp = last_old_exp.max(exp_of(&token)?);
        newest_old = token;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Issued after `rotating` and at most PICKUP_BOUND_SECS before now, it has at least
    // TTL_SECS - PICKUP_BOUND_SECS to live; the retired key verifies for RETIRE_WINDOW_SECS
    // after `rotating`. The elapsed time in the messages tells a slow machine from a bug.
    assert_eq!(
        server.whoami(&newest_old).await?,
        Ok("ada@example.com".into()),
        "a token signed by the retired key still verifies ({:?} after the rotation)",
        rotating.elapsed()
    );
    let mut kids = jwks_kids(&server).await?;
    kids.sort();
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(
        kids,
        both,
        "the JWKS keeps the retired key ({:?} after the rotation, window {RETIRE_WINDOW_SECS} s)",
        rotating.elapsed()
    );
    let list = admin_ok(data, &list_args)?;
    let old_row = listed(&list, &old_kid).ok_or("old key not listed")?;
    assert!(
        old_row.contains("yes, until"),
        "{old_row} ({:?} after the rotation)",
        rotating.elapsed()
    );
    let new_row = listed(&list, &new_kid).ok_or("new key not listed")?;
    assert!(new_row.contains("yes (signs new tokens)"), "{new_row}");
    let audit = admin_ok(data, &["audit", "--limit", "5"])?;
    assert!(audit.contains("\"keys.rotated\""), "{audit}");
    assert!(audit.contains(&new_kid), "{audit}");

    // The retired key leaves the JWKS (and verification) only once every token it signed
    // has expired. The deadline only stops a key that never leaves.
    let leave_deadline = rotating + Duration::from_secs(RETIRE_WINDOW_SECS + 60);
    while jwks_kids(&server).await?.contains(&old_kid) {
        if Instant::now() > leave_deadline {
            return Err("the retired key never left the JWKS".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        now_secs()? >= last_old_exp,
        "the retired key was dropped before its last token ({last_old_exp}) expired"
    );
    assert_eq!(jwks_kids(&server).await?, vec![new_kid.clone()]);
    assert_eq!(server.whoami(&newest_old).await?, Err(401));
    assert_eq!(server.whoami(&first).await?, Err(401));
    let fresh = server.access_token(&refresh).await?;
    assert_eq!(server.whoami(&fresh).await?, Ok("ada@example.com".into()));
    let list = admin_ok(data, &list_args)?;
    let old_row = listed(&list, &old_kid).ok_or("old key not listed")?;
    assert!(old_row.trim_end().ends_with("no"), "{old_row}");
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn rotation_and_revocation_reach_every_replica_on_postgres() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = replicas_pick_up_a_rotation(&db.url).await;
    db.drop_now().await?;
    outcome
}

fn replica(
    dir: &std::path::Path,
    url: &str,
    reload: &str,
) -> Result<Server, Box<dyn std::error::Error>> {
    Server::start_with(
        dir,
        Options {
            args: [
                "--database-url",
                url,
                "--issuer",
                "https://auth.prism.test",
                "--key-reload-interval",
                reload,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            ..Options::default()
        },
    )
}

async fn replicas_pick_up_a_rotation(url: &str) -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    // Periodic reloads far away: what follows is the change feed's doing (the `keys.rotated`
    // event) or, where a token's kid comes before that event, the unknown-kid reload. This
    // cannot tell the two apart; `tokens::live`'s unit tests check the unknown-kid path alone.
    let a = replica(data, url, "1h")?;
    let b = replica(data, url, "1h")?;
    let admin = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let all: Vec<&str> = ["--database-url", url]
            .iter()
            .chain(args)
            .copied()
            .collect();
        admin_ok(data, &all)
    };
    admin(&[
        "users",
        "add",
        "--email",
        "ada@example.com",
        "--role",
        "Integrator",
    ])?;
    let refresh = admin(&["tokens", "create", "--email", "ada@example.com"])?;
    let before = a.access_token(&refresh).await?;
    let old_kid = kid_of(&before)?;
    assert_eq!(b.whoami(&before).await?, Ok("ada@example.com".into()));

    let new_kid = admin(&["keys", "rotate"])?;
    assert_ne!(new_kid, old_kid);
    // A replica started after the rotation signs with the new key at once...
    let c = replica(data, url, "1s")?;
    let rotated = c.access_token(&refresh).await?;
    assert_eq!(kid_of(&rotated)?, new_kid);
    // ...and the replicas that have not reloaded yet verify its tokens on first sight.
    assert_eq!(a.whoami(&rotated).await?, Ok("ada@example.com".into()));
    assert_eq!(b.whoami(&rotated).await?, Ok("ada@example.com".into()));
    // That reload also moved them to the new key, and the old key's tokens live on.
    assert_eq!(kid_of(&a.access_token(&refresh).await?)?, new_kid);
    assert!(jwks_kids(&b).await?.contains(&new_kid));
    for server in [&a, &b, &c] {
        assert_eq!(server.whoami(&before).await?, Ok("ada@example.com".into()));
        assert!(jwks_kids(server).await?.contains(&old_kid));
    }

    // Tokens naming kids nobody has are refused, whatever their number.
    let forged_header = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "A".repeat(43)}).to_string(),
    );
    let body = before.split_once('.').ok_or("not a JWT")?.1;
    let forged = format!("{forged_header}.{body}");
    for _ in 0..5 {
        assert_eq!(a.whoami(&forged).await?, Err(401));
    }

    // A failed reload (here: the table is gone for a while) keeps the current keys.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    sqlx::query("ALTER TABLE signing_keys RENAME TO signing_keys_away")
        .execute(&mut conn)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.logs().contains("could not reload the signing keys") {
        if Instant::now() > deadline {
            return Err(format!("no reload warning; log:\n{}", c.logs()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = c.access_token(&refresh).await?;
    assert_eq!(kid_of(&during)?, new_kid);
    assert_eq!(c.whoami(&before).await?, Ok("ada@example.com".into()));
    sqlx::query("ALTER TABLE signing_keys_away RENAME TO signing_keys")
        .execute(&mut conn)
        .await?;
    <sqlx::PgConnection as sqlx::Connection>::close(conn).await?;
    assert_eq!(c.whoami(&during).await?, Ok("ada@example.com".into()));

    // Without any token to show them the new kid, and with periodic reloads an hour away,
    // the replicas hear of the next rotation through the change feed and sign with it.
    let newest_kid = admin(&["keys", "rotate"])?;
    for server in [&a, &b] {
        let deadline = Instant::now() + CHANGE_REACH_BOUND;
        loop {
            let kid = kid_of(&server.access_token(&refresh).await?)?;
            if kid == newest_kid {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("still signing with {kid} after the rotation").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A revoked key (the first, long retired, still verifying `before` everywhere): every
    // replica refuses its tokens once the change feed reaches it, and drops it from the JWKS.
    for server in [&a, &b, &c] {
        assert_eq!(server.whoami(&before).await?, Ok("ada@example.com".into()));
    }
    admin(&["keys", "revoke", &old_kid])?;
    for server in [&a, &b, &c] {
        let deadline = Instant::now() + CHANGE_REACH_BOUND;
        while server.whoami(&before).await? != Err(401) {
            if Instant::now() > deadline {
                return Err("a replica still verifies a revoked key's token".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!jwks_kids(server).await?.contains(&old_kid));
    }

    for server in [a, b, c] {
        let logs = server.stop()?;
        assert!(!logs.contains("ERROR"), "{logs}");
    }
    Ok(())
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_its_holders_refresh_onto_the_new_one() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let refresh = user_with_token(data, "ada@example.com")?;
    let leaked = server.access_token(&refresh).await?;
    let leaked_kid = kid_of(&leaked)?;
    assert_eq!(server.whoami(&leaked).await?, Ok("ada@example.com".into()));

    // Revoking the active key rotates it out first, in the same command.
    let output = prismd(data, &["keys", "revoke", &leaked_kid])?;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("was the active key") && said.contains("Revoked"),
        "{said}"
    );
    // Another process revoked it: the server hears of it through the change feed.
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    while server.whoami(&leaked).await? != Err(401) {
        assert!(Instant::now() < deadline, "the revoked key still verifies");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let verify = server
        .http
        .get(server.url("/auth/verify"))
        .bearer_auth(&leaked)
        .send()
        .await?;
    assert_eq!(verify.status().as_u16(), 401, "forward auth too");
    assert!(!jwks_kids(&server).await?.contains(&leaked_kid));
    // The refresh token still works, and its new access token is signed with the new key.
    let fresh = server.access_token(&refresh).await?;
    let new_kid = kid_of(&fresh)?;
    assert_ne!(new_kid, leaked_kid);
    assert_eq!(server.whoami(&fresh).await?, Ok("ada@example.com".into()));
    assert_eq!(jwks_kids(&server).await?, vec![new_kid.clone()]);

    // A retired key is revoked without a rotation; an unknown one is an error.
    let rotated = admin_ok(data, &["keys", "rotate"])?;
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    while kid_of(&server.access_token(&refresh).await?)? != rotated {
        assert!(Instant::now() < deadline, "the rotation did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.whoami(&fresh).await?, Ok("ada@example.com".into()));
    let output = prismd(data, &["keys", "revoke", &new_kid])?;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !said.contains("was the active key"),
        "{said}"
    );
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    while server.whoami(&fresh).await? != Err(401) {
        assert!(
            Instant::now() < deadline,
            "the revoked retired key still verifies"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = prismd(data, &["keys", "revoke", &new_kid])?;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("there is no signing key"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let audit = admin_ok(data, &["audit", "--action", "keys.revoked"])?;
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert!(
        audit.contains(&leaked_kid) && audit.contains(&new_kid),
        "{audit}"
    );
    server.stop()?;
    Ok(())
}
