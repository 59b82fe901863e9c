//! The `propagation` measurement: how long after a revoke answered on replica B does replica
//! A, which had the user cached as active, refuse the user's access token. Two `prismd`
//! processes on a fresh PostgreSQL database (created in the server named by
//! `--database-url` and dropped afterwards), both with a cache lifetime far longer than the
//! measurement, so what is measured is the `LISTEN/NOTIFY` path, not the fallback.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prismd::domain::RequestMeta;
use prismd::domain::accounts::{Accounts, UserDraft};
use prismd::domain::roles::Role;
use prismd::domain::sessions::{SessionOrigin, Sessions};
use prismd::domain::usage::UsageRecorder;
use prismd::store::{Backend, OpenOptions};
use serde::Serialize;

use crate::client::{self, Connection};
use crate::percentile;
use crate::seed::FreshPostgres;
use crate::server::{ServerProcess, free_port};

/// Longest wait for one revoke to reach the other replica before it counts as missed.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

#[derive(Serialize)]
pub struct PropagationReport {
    pub revokes: usize,
    pub missed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs `revokes` rounds on a fresh database in the server `admin_url` names, and reports the
/// delays.
pub async fn run(
    admin_url: &str,
    prismd_bin: &Path,
    work_dir: &Path,
    revokes: usize,
) -> anyhow::Result<PropagationReport> {
    let db = FreshPostgres::create(admin_url).await?;
    let outcome = measure(&db.url, prismd_bin, work_dir, revokes).await;
    db.drop_now().await?;
    outcome
}

async fn measure(
    url: &str,
    prismd_bin: &Path,
    work_dir: &Path,
    revokes: usize,
) -> anyhow::Result<PropagationReport> {
    let replica_args = [
        "--database-url",
        url,
        "--issuer",
        "http://auth.bench.test",
        "--cache-ttl",
        "1h",
    ];
    let address_a = format!("127.0.0.1:{}", free_port()?);
    let mut a = ServerProcess::prismd(prismd_bin, &work_dir.join("a"), &address_a, &replica_args)?;
    a.wait_ready(&address_a).await?;
    let address_b = format!("127.0.0.1:{}", free_port()?);
    let mut b = ServerProcess::prismd(prismd_bin, &work_dir.join("b"), &address_b, &replica_args)?;
    b.wait_ready(&address_b).await?;

    let store =
        prismd::store::open(&Backend::Postgres(url.to_owned()), OpenOptions::default()).await?;
    let accounts = Accounts::new(store.as_ref());
    let org = accounts.default_org().await?;
    let meta = RequestMeta::default();
    let draft = UserDraft {
        email: "propagation@example.com".into(),
        name: None,
        role: Role::Integrator,
        password: None,
        external_id: None,
    };
    let user = accounts.operator_add_user(&org, draft).await?.user;
    // This process exchanges no tokens, so it has no uses to write.
    let usage = UsageRecorder::default();
    let sessions = Sessions::new(store.as_ref(), &usage);

    let mut on_a = Connection::open(&address_a).await?;
    let mut on_b = Connection::open(&address_b).await?;
    let mut delays_us = Vec::with_capacity(revokes);
    let mut missed = 0;
    eprintln!("propagation: {revokes} revokes on B, each watched on A ...");
    for _ in 0..revokes {
        let refresh = sessions
            .mint_refresh_token(&user, SessionOrigin::default(), "bench".into(), &meta)
            .await?;
        let refresh_body = format!(r#"{{"refresh_token":"{refresh}"}}"#);
        let (status, body) = on_a
            .send_and_read(&client::json_post(
                "/auth/refresh",
                &address_a,
                None,
                &refresh_body,
            ))
            .await?;
        if status != 200 {
            bail!("refresh on A answered {status}");
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        let access = json["access_token"].as_str().context("no access_token")?;
        let whoami = client::json_post(
            "/api",
            &address_a,
            Some(access),
            r#"{"query":"{ authenticatedUser { id } }"}"#,
        );
        // A now has the user cached as active.
        if on_a.send(&whoami).await? != 200 {
            bail!("the access token did not work on A");
        }
        let revoke = client::json_post("/auth/revoke", &address_b, None, &refresh_body);
        if on_b.send(&revoke).await? != 200 {
            bail!("revoke on B failed");
        }
        let answered = Instant::now();
        loop {
            if on_a.send(&whoami).await? == 401 {
                delays_us.push(u32::try_from(answered.elapsed().as_micros()).unwrap_or(u32::MAX));
                break;
            }
            if answered.elapsed() > GIVE_UP_AFTER {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    store.close().await;
    a.stop();
    b.stop();
    delays_us.sort_unstable();
    Ok(PropagationReport {
        revokes,
        missed,
        p50_ms: percentile(&delays_us, 0.50),
        p99_ms: percentile(&delays_us, 0.99),
        max_ms: delays_us.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
    })
}
