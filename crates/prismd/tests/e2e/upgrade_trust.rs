//! Upgrading to trust policies and the OIDC token exchange (issue 18, migration 0011): the
//! databases the release before them left on disk (tests/fixtures/before-trust-policies, SQLite
//! and PostgreSQL) are opened by this `prismd`, and nothing of issue 17's data is lost or
//! changed: every person, service account, organization scope and grant, token policy and
//! refresh token (its name, scopes and expiry) is still there; every live token refreshes with
//! the scope it had and every dead one is refused with the reason it was refused for before.
//! And the new feature works on the old data: an old service account gets a trust policy, with
//! a scope it holds through an old grant.

use serde_json::json;

use crate::fixture_db::{Deployment, manifest, public_id};
use crate::harness::{Server, TestResult};
use crate::upgrade_common::{self, Base, User};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder under tests/fixtures.
const FOLDER: &str = "before-trust-policies";
/// The trust policy the Owner of Org A gives the old service account `ci-bot`.
const POLICY_NAME: &str = "app main branch";
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const AUDIENCE: &str = "https://prism.corp.example";
const SUBJECT: &str = "repo:corp/app:ref:refs/heads/main";

/// The live service account `name` of the manifest (whose backends hold only issue 17's data:
/// [`Base`]).
fn service_account<'a>(fixture: &'a Base, name: &str) -> Res<&'a User> {
    fixture
        .users
        .iter()
        .find(|u| u.kind == "service" && u.name == name && !u.removed)
        .ok_or_else(|| format!("no live service account {name} in the manifest").into())
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn upgrade_keeps_service_accounts_scopes_and_tokens_sqlite() -> TestResult {
    let fixture: Base = manifest(FOLDER)?.backends.sqlite;
    let shift = fixture.shift_ms()?;
    let deployment = Deployment::sqlite_copy(FOLDER, &[SHIFT_EXPIRIES], || Ok(shift)).await?;
    upgrade(&deployment, &fixture, shift).await
}

#[tokio::test]
async fn upgrade_keeps_service_accounts_scopes_and_tokens_postgres() -> TestResult {
    let fixture: Base = manifest(FOLDER)?.backends.postgres;
    let shift = fixture.shift_ms()?;
    Deployment::on_postgres(
        FOLDER,
        &[SHIFT_EXPIRIES],
        || Ok(shift),
        async |deployment| upgrade(deployment, &fixture, shift).await,
    )
    .await
}

/// Starts this `prismd` on the old data, whose used tokens' expiries moved `shift` ms forward,
/// and checks everything the upgrade promises.
async fn upgrade(deployment: &Deployment, fixture: &Base, shift: i64) -> TestResult {
    upgrade_common::promises(fixture);

    let server = deployment.start()?;
    // Read before any request, so that only the start itself could have written.
    rows_kept(deployment, fixture, shift).await?;

    upgrade_common::tokens_answer_as_before(&server, fixture, None).await?;
    upgrade_common::organizations_kept(&server, fixture).await?;
    trust_policy_for_an_old_account(&server, fixture).await?;

    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The rows.

/// Row counts of every old table, the migrations, the new tables empty, and every person,
/// service account, organization, scope, grant and token as make.sh left it
/// ([`upgrade_common::rows_kept`]).
async fn rows_kept(deployment: &Deployment, fixture: &Base, shift: i64) -> TestResult {
    for table in ["trust_policies", "oidc_token_uses"] {
        assert_eq!(deployment.count(table).await?, 0, "{table}");
    }
    // Every old migration stays, 0011 is applied (and any later one).
    let mut expected = fixture.migrations.clone();
    expected.push(11);
    let applied = deployment.migrations().await?;
    assert_eq!(
        applied.get(..expected.len()),
        Some(&expected[..]),
        "_sqlx_migrations keeps the old ones and gains 0011"
    );
    upgrade_common::rows_kept(deployment, fixture, shift, 0).await
}

// ---------------------------------------------------------------------------------------------
// 2. The new feature on old data.

/// The Owner of Org A, with the token make.sh minted for them, gives the old service account
/// `ci-bot` a trust policy restricted to `deploy:prod`, a scope it holds through a grant made
/// before the upgrade; the policy is listed, and the account's old tokens keep working.
async fn trust_policy_for_an_old_account(server: &Server, fixture: &Base) -> TestResult {
    let account = service_account(fixture, "ci-bot")?;
    let org = &account.org_tenant_id;
    let granted: Vec<&str> = fixture
        .org_scopes
        .iter()
        .filter(|s| s.grantees.contains(&format!("user:{}", account.id)))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(granted, ["deploy:prod"], "ci-bot's direct grant");
    let owner = fixture.owner_token(org)?;
    let access = server.access_token(&owner.token).await?;

    let mutation = format!(
        "mutation {{ createTrustPolicy(input: {{ name: \"{POLICY_NAME}\", issuer: \"{ISSUER}\", \
         audience: \"{AUDIENCE}\", conditions: [{{claim: \"sub\", match: EXACT, \
         value: \"{SUBJECT}\"}}], serviceAccountId: \"{}\", scopes: [\"deploy:prod\"] }}) {{ \
         trustPolicy {{ id name issuer audience conditions {{ claim match value }} \
         serviceAccount {{ id name }} scopes maxTokenAgeSeconds enabled lastUsedAt }} \
         errors {{ field messages }} }} }}",
        public_id("ServiceAccount", &account.id)
    );
    let (status, _, body) = server.graphql(Some(&access), &mutation).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let created = &body["data"]["createTrustPolicy"];
    assert_eq!(created["errors"], json!([]), "{body}");
    let policy = &created["trustPolicy"];
    assert_eq!(policy["name"], POLICY_NAME, "{body}");
    assert_eq!(policy["issuer"], ISSUER, "{body}");
    assert_eq!(policy["audience"], AUDIENCE, "{body}");
    assert_eq!(
        policy["conditions"],
        json!([{ "claim": "sub", "match": "EXACT", "value": SUBJECT }]),
        "{body}"
    );
    assert_eq!(
        policy["serviceAccount"],
        json!({ "id": public_id("ServiceAccount", &account.id), "name": account.name }),
        "{body}"
    );
    assert_eq!(policy["scopes"], json!(["deploy:prod"]), "{body}");
    assert_eq!(policy["maxTokenAgeSeconds"], 3600, "{body}");
    assert_eq!(policy["enabled"], true, "{body}");
    assert!(policy["lastUsedAt"].is_null(), "{body}");

    let (status, _, listed) = server
        .graphql(
            Some(&access),
            "{ trustPolicies { id name serviceAccount { name } } }",
        )
        .await?;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["data"]["trustPolicies"],
        json!([{ "id": policy["id"], "name": POLICY_NAME,
                 "serviceAccount": { "name": account.name } }]),
        "{listed}"
    );

    for token in fixture
        .refresh_tokens
        .iter()
        .filter(|t| t.live && t.user_id == account.id)
    {
        let (status, body) = server.refresh(&token.token).await?;
        assert_eq!(
            status, 200,
            "{:?} after the trust policy: {body}",
            token.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The copied fixture.

/// The live named tokens expire 14 to 90 days after make.sh ran: every token make.sh used
/// (refreshed) has its expiry moved forward by the fixture's age ([`Base::shift_ms`]), so
/// that it is as far from its end as it was then. "owner short" expired before its only use
/// and keeps its expiry: its refusal names that time.
const SHIFT_EXPIRIES: &str = "UPDATE refresh_tokens SET expires_at = expires_at + $1 \
                              WHERE expires_at IS NOT NULL AND last_used_at IS NOT NULL";
