//! Token introspection (RFC 7662, issue 19) end to end: resource servers registered by the
//! operator (`prismd resource-servers`) and by Owners (GraphQL), authenticated with HTTP Basic
//! or in the body; `active: true` with who the token speaks for now, `active: false` for every
//! token `/api` refuses (revoked, removed, session ended, session policy, tampered, foreign,
//! refresh tokens) on the very next question; client authentication failures; organization
//! boundaries; secrets never stored nor audited; exact metrics.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::harness::{
    CHANGE_REACH_BOUND, Options, Server, TestResult, admin_ok, jwt_claims, prismd, temp_dir,
};
use crate::metrics::scraped_value;
use crate::scopes::{
    CREATE_SCOPE, CREATE_TOKEN, DELETE_SA, DELETE_USER, GRANT_TO_ROLE, REVOKE_FROM_ROLE, Res,
    add_member, call, create_sa, exchange, must, named_token, owner_access, revoke_current_session,
    role_ids, role_of, stop_clean, text, tokens_that_do_not_stand,
};

const ALL_BUILT_IN: &str =
    "audit:read org:admin profile:write sessions:read sessions:write users:read users:write";
const CREATE_RS: &str = "mutation($name: String!, $description: String) { createResourceServer(name: $name, description: $description) { resourceServer { clientId name description createdAt secretSetAt } clientSecret errors { field messages } } }";
const ROTATE_RS: &str = "mutation($id: ID!) { rotateResourceServerSecret(id: $id) { resourceServer { clientId secretSetAt } clientSecret errors { field messages } } }";
const DELETE_RS: &str =
    "mutation($id: ID!) { deleteResourceServer(id: $id) { deleted errors { field messages } } }";
const LIST_RS: &str = "{ resourceServers { clientId name description } }";

/// Request headers: names and values.
type Headers<'a> = Vec<(&'a str, String)>;

/// A resource server's credentials.
#[derive(Clone, Debug)]
struct Client {
    id: String,
    secret: String,
}

impl Client {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.id, self.secret))
        )
    }
}

/// Registers a resource server with the operator command (`extra`: `--instance-wide`, ...).
fn register(data: &Path, name: &str, extra: &[&str]) -> Res<Client> {
    let mut args = vec!["resource-servers", "add", "--name", name];
    args.extend(extra);
    let printed: Value = serde_json::from_str(&admin_ok(data, &args)?)?;
    Ok(Client {
        id: text(&printed["client_id"])?,
        secret: text(&printed["client_secret"])?,
    })
}

/// `POST /oauth/introspect` with a raw form body and headers: status, headers and JSON body.
async fn introspect_raw(
    server: &Server,
    headers: &[(&str, String)],
    body: String,
) -> Res<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = server
        .http
        .post(server.url("/oauth/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).map_err(|err| format!("{err}: {status} {text}"))?;
    Ok((status, headers, body))
}

/// The `curl` command of docs/forward-auth.md's token introspection section.
fn documented_curl() -> Res<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/forward-auth.md");
    let doc = std::fs::read_to_string(path)?;
    let section = doc
        .split("## Token introspection")
        .nth(1)
        .ok_or("docs/forward-auth.md has no Token introspection section")?;
    let start = section
        .find("curl -s ")
        .ok_or("no curl command in the section")?;
    let command: Vec<&str> = section[start..]
        .lines()
        .scan(true, |more, line| {
            let this = more.then_some(line);
            *more = line.ends_with('\\');
            this
        })
        .collect();
    Ok(command.join("\n"))
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Introspects `token` as `client` (HTTP Basic); fails unless the answer is 200, no-store.
async fn introspect(server: &Server, client: &Client, token: &str) -> Res<Value> {
    let (status, headers, body) = introspect_raw(
        server,
        &[("authorization", client.basic())],
        form(&[("token", token), ("token_type_hint", "access_token")]),
    )
    .await?;
    if status != 200
        || headers.get("cache-control").and_then(|v| v.to_str().ok()) != Some("no-store")
    {
        return Err(format!("introspection answered {status} {headers:?}: {body}").into());
    }
    Ok(body)
}

/// Fails unless `token` is `{"active": false}` and nothing else.
async fn expect_inactive(server: &Server, client: &Client, token: &str, what: &str) -> TestResult {
    let body = introspect(server, client, token).await?;
    if body != json!({"active": false}) {
        return Err(format!("{what}: expected exactly {{\"active\": false}}, got {body}").into());
    }
    Ok(())
}

/// Fails unless `token` is active; its answer.
async fn expect_active(server: &Server, client: &Client, token: &str, what: &str) -> Res<Value> {
    let body = introspect(server, client, token).await?;
    if body["active"] != true {
        return Err(format!("{what}: expected active, got {body}").into());
    }
    Ok(body)
}

fn sorted(scope: &Value) -> String {
    let mut names: Vec<&str> = scope.as_str().unwrap_or_default().split(' ').collect();
    names.sort_unstable();
    names.join(" ")
}

/// The first answer to `client` that is not a 200, asking until [`CHANGE_REACH_BOUND`] (a
/// change another process made, an operator command, reaches the server through the change
/// feed), and how many 200s came before it. Fails when every answer was a 200.
async fn refused_soon(
    server: &Server,
    client: &Client,
    body: &str,
) -> Res<((u16, reqwest::header::HeaderMap, Value), usize)> {
    let deadline = std::time::Instant::now() + CHANGE_REACH_BOUND;
    let mut passed = 0;
    loop {
        let answer = introspect_raw(
            server,
            &[("authorization", client.basic())],
            body.to_owned(),
        )
        .await?;
        if answer.0 != 200 {
            return Ok((answer, passed));
        }
        passed += 1;
        if std::time::Instant::now() > deadline {
            return Err(format!("still answered 200 after {CHANGE_REACH_BOUND:?}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Fails unless the answer is 401 `invalid_client` with a Basic challenge.
fn expect_invalid_client(answer: &(u16, reqwest::header::HeaderMap, Value), what: &str) {
    let (status, headers, body) = answer;
    assert_eq!(*status, 401, "{what}: {body}");
    assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    assert_eq!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some(r#"Basic realm="prism""#),
        "{what}"
    );
    assert!(body.get("active").is_none(), "{what}: {body}");
}

#[tokio::test]
async fn active_tokens_say_who_they_speak_for_now() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let client = register(data, "orders", &["--description", "the orders API"])?;
    assert!(client.id.starts_with("prism_rs_"), "{}", client.id);
    assert!(client.secret.starts_with("prism_cs_"), "{}", client.secret);
    assert_eq!(client.secret.len(), "prism_cs_".len() + 49);

    // The metadata names the endpoint and its client authentication.
    let metadata: Value = server
        .http
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        metadata["introspection_endpoint"],
        server.url("/oauth/introspect")
    );
    assert_eq!(
        metadata["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );

    // A person: every RFC 7662 member and who it is, matching the token's claims.
    let owner = owner_access(&server, data).await?;
    let claims = jwt_claims(&owner)?;
    let body = expect_active(&server, &client, &owner, "the owner").await?;
    for field in ["sub", "exp", "iat", "iss", "aud", "jti", "client_id", "sid"] {
        let claim = if field == "sid" { "sid" } else { field };
        assert_eq!(body[field], claims[claim], "{field}: {body}");
    }
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["username"], "owner@localhost");
    assert_eq!(body["email"], "owner@localhost");
    assert_eq!(body["organization"], claims["tid"]);
    assert_eq!(body["role"], "Owner");
    assert_eq!(body["kind"], "person");
    assert_eq!(sorted(&body["scope"]), ALL_BUILT_IN);

    // The same with the credentials in the body (client_secret_post).
    let (status, _, posted) = introspect_raw(
        &server,
        &[],
        form(&[
            ("token", &owner),
            ("client_id", &client.id),
            ("client_secret", &client.secret),
        ]),
    )
    .await?;
    assert_eq!((status, &posted), (200, &body));

    // A service account with a restricted token: its scopes, no email, its name as username.
    // docs/forward-auth.md's curl line, verbatim but for the host, answers the same.
    let documented = documented_curl()?.replace("https://auth.example.com", &server.base);
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &documented])
        .env("CLIENT_ID", &client.id)
        .env("CLIENT_SECRET", &client.secret)
        .env("TOKEN", &owner)
        .output()
        .await?;
    assert!(output.status.success(), "{documented}: {output:?}");
    let answered: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(answered, body, "{documented}");

    let guest = role_of(&role_ids(&server, &owner).await?, "Guest")?;
    let sa = create_sa(&server, &owner, "deploy-bot", &guest).await?;
    let payload = must(
        &server,
        &owner,
        CREATE_TOKEN,
        json!({ "name": "bot", "scopes": ["users:read"], "sa": sa }),
        "createToken",
    )
    .await?;
    let bot = exchange(&server, &text(&payload["token"])?, None).await?;
    let body = expect_active(&server, &client, &bot, "the bot").await?;
    assert_eq!(body["kind"], "service");
    assert_eq!(body["username"], "deploy-bot");
    assert!(body.get("email").is_none(), "{body}");
    assert_eq!(body["role"], "Guest");
    assert_eq!(body["scope"], "users:read");

    // An organization scope: listed while the grant of now holds it, not after.
    let owner_role = role_of(&role_ids(&server, &owner).await?, "Owner")?;
    must(
        &server,
        &owner,
        CREATE_SCOPE,
        json!({ "name": "deploy:prod" }),
        "createScope",
    )
    .await?;
    must(
        &server,
        &owner,
        GRANT_TO_ROLE,
        json!({ "scope": "deploy:prod", "role": owner_role }),
        "grantScope",
    )
    .await?;
    let payload = must(
        &server,
        &owner,
        CREATE_TOKEN,
        json!({ "name": "deployer", "scopes": ["users:read", "deploy:prod"] }),
        "createToken",
    )
    .await?;
    let deployer = exchange(&server, &text(&payload["token"])?, None).await?;
    let body = expect_active(&server, &client, &deployer, "with deploy:prod").await?;
    assert_eq!(sorted(&body["scope"]), "deploy:prod users:read");
    // The unrestricted owner token holds it too, by the grant.
    let body = expect_active(&server, &client, &owner, "the owner, granted").await?;
    assert_eq!(
        sorted(&body["scope"]),
        format!(
            "audit:read deploy:prod {}",
            &ALL_BUILT_IN["audit:read ".len()..]
        )
    );
    must(
        &server,
        &owner,
        REVOKE_FROM_ROLE,
        json!({ "scope": "deploy:prod", "role": owner_role }),
        "revokeScope",
    )
    .await?;
    let body = expect_active(&server, &client, &deployer, "grant withdrawn").await?;
    assert_eq!(body["scope"], "users:read");
    stop_clean(server)
}

#[tokio::test]
async fn every_token_api_refuses_is_inactive_on_the_very_next_question() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let options = Options {
        args: vec!["--access-token-ttl".into(), "4s".into()],
        ..Options::default()
    };
    let server = Server::start_with(data, options)?;
    let client = register(data, "orders", &[])?;
    let owner_refresh = named_token(data, "owner@localhost", "owner")?;
    let short_lived = exchange(&server, &owner_refresh, None).await?;

    // Not a standing access token of this server.
    let owner = exchange(&server, &owner_refresh, None).await?;
    let mut refused = tokens_that_do_not_stand(&owner).await?;
    refused.push((owner_refresh.clone(), "a live refresh token"));
    refused.push((client.secret.clone(), "the client's own secret"));
    for (token, what) in &refused {
        expect_inactive(&server, &client, token, what).await?;
    }
    expect_active(&server, &client, &owner, "the owner").await?;

    // Revoke-all with the refresh token.
    add_member(data, "ada@in.test", "Integrator")?;
    let ada_refresh = named_token(data, "ada@in.test", "ada")?;
    let ada = exchange(&server, &ada_refresh, None).await?;
    expect_active(&server, &client, &ada, "ada").await?;
    let (status, body) = server.revoke(&ada_refresh).await?;
    assert_eq!(status, 200, "{body}");
    expect_inactive(&server, &client, &ada, "after revoke-all").await?;

    // One session revoked by a manager.
    add_member(data, "bob@in.test", "Integrator")?;
    let bob = exchange(&server, &named_token(data, "bob@in.test", "bob")?, None).await?;
    expect_active(&server, &client, &bob, "bob").await?;
    revoke_current_session(&server, &owner, &bob).await?;
    expect_inactive(&server, &client, &bob, "after its session was revoked").await?;

    // A member removed, a service account removed.
    let cy_id = add_member(data, "cy@in.test", "Integrator")?;
    let cy = exchange(&server, &named_token(data, "cy@in.test", "cy")?, None).await?;
    expect_active(&server, &client, &cy, "cy").await?;
    must(
        &server,
        &owner,
        DELETE_USER,
        json!({ "id": cy_id }),
        "deleteUser",
    )
    .await?;
    expect_inactive(&server, &client, &cy, "a removed member").await?;
    let guest = role_of(&role_ids(&server, &owner).await?, "Guest")?;
    let sa = create_sa(&server, &owner, "bot", &guest).await?;
    let payload = must(
        &server,
        &owner,
        CREATE_TOKEN,
        json!({ "name": "bot", "sa": sa }),
        "createToken",
    )
    .await?;
    let bot = exchange(&server, &text(&payload["token"])?, None).await?;
    expect_active(&server, &client, &bot, "the bot").await?;
    must(
        &server,
        &owner,
        DELETE_SA,
        json!({ "id": sa }),
        "deleteServiceAccount",
    )
    .await?;
    expect_inactive(&server, &client, &bot, "a removed service account").await?;

    // The organization's session policy ends an old session, and its access tokens with it.
    add_member(data, "dee@in.test", "Integrator")?;
    let dee = exchange(&server, &named_token(data, "dee@in.test", "dee")?, None).await?;
    expect_active(&server, &client, &dee, "dee").await?;
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    {
        use sqlx::Connection as _;
        let mut db = sqlx::SqliteConnection::connect(&url).await?;
        let ten_days_ago = chrono_ms() - 10 * 86_400_000;
        let moved = sqlx::query("UPDATE refresh_tokens SET created_at = $1 WHERE name = 'dee'")
            .bind(ten_days_ago)
            .execute(&mut db)
            .await?;
        assert_eq!(moved.rows_affected(), 1);
    }
    let policy = call(
        &server,
        &owner,
        "mutation { updateSessionPolicy(input: {maxAgeDays: 5}) { errors { field messages } } }",
        json!({}),
    )
    .await?;
    assert_eq!(
        policy["data"]["updateSessionPolicy"]["errors"],
        json!([]),
        "{policy}"
    );
    expect_inactive(
        &server,
        &client,
        &dee,
        "a session past the policy's max age",
    )
    .await?;

    // An expired token (this server's access tokens live 4 s).
    let exp = jwt_claims(&short_lived)?["exp"].as_u64().ok_or("no exp")?;
    let expired_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    if let Ok(wait) = expired_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + std::time::Duration::from_millis(200)).await;
    }
    expect_inactive(&server, &client, &short_lived, "an expired token").await?;
    stop_clean(server)
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tokio::test]
async fn clients_that_do_not_authenticate_learn_nothing() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let client = register(data, "orders", &[])?;
    let owner = owner_access(&server, data).await?;
    let token = form(&[("token", &owner)]);
    let basic = |id: &str, secret: &str| {
        (
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        )
    };
    let mut wrong_secret = client.secret.clone();
    wrong_secret.replace_range(
        20..21,
        if &wrong_secret[20..21] == "a" {
            "b"
        } else {
            "a"
        },
    );
    let other_secret = register(data, "billing", &[])?.secret;
    let cases: Vec<(Headers, String, &str)> = vec![
        (vec![], token.clone(), "no credentials"),
        (
            vec![("authorization", format!("Bearer {owner}"))],
            token.clone(),
            "a bearer token instead",
        ),
        (
            vec![("authorization", "Basic not-base64!".into())],
            token.clone(),
            "Basic that is not base64",
        ),
        (
            vec![(
                "authorization",
                format!("Basic {}", STANDARD.encode("no colon")),
            )],
            token.clone(),
            "Basic without a colon",
        ),
        (
            vec![basic(&client.id, &wrong_secret)],
            token.clone(),
            "a secret that fails its checksum",
        ),
        (
            vec![basic(&client.id, &other_secret)],
            token.clone(),
            "another client's secret",
        ),
        (
            vec![basic("prism_rs_unknown", &client.secret)],
            token.clone(),
            "an unknown client id",
        ),
        (
            vec![basic(&client.id, "")],
            token.clone(),
            "an empty secret",
        ),
        (
            vec![],
            form(&[("token", &owner), ("client_id", &client.id)]),
            "a client id without a secret in the body",
        ),
        (
            vec![],
            form(&[("token", &owner), ("client_secret", &client.secret)]),
            "a secret without a client id in the body",
        ),
        (vec![], String::new(), "nothing at all"),
    ];
    for (headers, body, what) in &cases {
        expect_invalid_client(&introspect_raw(&server, headers, body.clone()).await?, what);
    }

    // Malformed requests: both credential methods, no token, not a form.
    let (status, _, body) = introspect_raw(
        &server,
        &[("authorization", client.basic())],
        form(&[
            ("token", &owner),
            ("client_id", &client.id),
            ("client_secret", &client.secret),
        ]),
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, _, body) =
        introspect_raw(&server, &[("authorization", client.basic())], String::new()).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("token")),
        "{body}"
    );
    let (status, raw) = server
        .post_raw("/oauth/introspect", Some("text/plain"), b"token=x".to_vec())
        .await?;
    assert!(matches!(status, 400 | 415), "not a form: {status} {raw}");
    let get = server
        .http
        .get(server.url("/oauth/introspect"))
        .send()
        .await?;
    assert_eq!(get.status().as_u16(), 405);

    // A rotated secret: the old one stops, the new one works.
    let rotated: Value = serde_json::from_str(&admin_ok(
        data,
        &["resource-servers", "rotate-secret", "orders"],
    )?)?;
    assert_eq!(rotated["client_id"], client.id.as_str());
    let renewed = Client {
        id: client.id.clone(),
        secret: text(&rotated["client_secret"])?,
    };
    assert_ne!(renewed.secret, client.secret);
    // Made by another process: it reaches this server through the change feed (the answers
    // until then were active ones, counted below).
    let (answer, active_before_rotation) = refused_soon(&server, &client, &token).await?;
    expect_invalid_client(&answer, "the secret before the rotation");
    expect_active(&server, &renewed, &owner, "the new secret").await?;

    // A removed one: its secret stops.
    let listed = admin_ok(data, &["resource-servers", "list", "--json"])?;
    assert!(
        listed.contains(&client.id) && !listed.contains("prism_cs_"),
        "{listed}"
    );
    admin_ok(data, &["resource-servers", "remove", &client.id])?;
    let (answer, active_before_removal) = refused_soon(&server, &renewed, &token).await?;
    expect_invalid_client(&answer, "a removed resource server");
    let gone = prismd(data, &["resource-servers", "remove", "orders"])?;
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no such resource server"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // Exact counts: every 401 above, the 400s, two active answers.
    let count = async |outcome: &str| {
        scraped_value(
            &server.http,
            &server.base,
            &format!(r#"prismd_introspections_total{{outcome="{outcome}"}}"#),
        )
        .await
    };
    assert_eq!(count("invalid_client").await?, (cases.len() + 2) as f64);
    assert_eq!(
        count("active").await?,
        (1 + active_before_rotation + active_before_removal) as f64
    );
    assert_eq!(count("inactive").await?, 0.0);
    assert_eq!(count("other").await?, 2.0);

    // Secrets are never stored, logged nor audited.
    let database = std::fs::read(data.join("prismd.db"))?;
    let logs = server.stop()?;
    for secret in [&client.secret, &renewed.secret, &other_secret] {
        let needle = secret.as_bytes();
        assert!(
            !database.windows(needle.len()).any(|w| w == needle),
            "a client secret is in the database"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "a client secret was logged"
        );
    }
    let audit = admin_ok(data, &["audit"])?;
    for action in [
        "resource_server.created",
        "resource_server.secret_rotated",
        "resource_server.deleted",
    ] {
        assert!(audit.contains(action), "no {action} in {audit}");
    }
    assert!(!audit.contains("prism_cs_"), "{audit}");
    Ok(())
}

#[tokio::test]
async fn a_resource_server_learns_only_about_its_own_organization() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let own = register(data, "orders", &[])?;
    let everywhere = register(data, "gateway", &["--instance-wide"])?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "users",
            "add",
            "--email",
            "bea@beta.test",
            "--role",
            "Owner",
        ],
    )?;
    let bea_refresh = admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "tokens",
            "create",
            "--email",
            "bea@beta.test",
        ],
    )?;
    let bea = exchange(&server, &bea_refresh, None).await?;
    let owner = owner_access(&server, data).await?;

    expect_active(&server, &own, &owner, "its own organization's token").await?;
    expect_inactive(&server, &own, &bea, "another organization's token").await?;
    let body = expect_active(&server, &everywhere, &bea, "instance-wide").await?;
    assert_eq!(body["organization"], tenant_b.as_str());
    expect_active(&server, &everywhere, &owner, "instance-wide, first org").await?;

    // Beta's own server, registered by the operator for Beta.
    let beta_args = ["--tenant-id", tenant_b.as_str()];
    let mut args = beta_args.to_vec();
    args.extend(["resource-servers", "add", "--name", "orders"]);
    let printed: Value = serde_json::from_str(&admin_ok(data, &args)?)?;
    let beta_client = Client {
        id: text(&printed["client_id"])?,
        secret: text(&printed["client_secret"])?,
    };
    expect_active(&server, &beta_client, &bea, "Beta's server, Beta's token").await?;
    expect_inactive(
        &server,
        &beta_client,
        &owner,
        "Beta's server, another token",
    )
    .await?;
    stop_clean(server)
}

#[tokio::test]
async fn owners_manage_their_resource_servers_through_the_api() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    add_member(data, "adm@in.test", "Admin")?;
    let admin = exchange(&server, &named_token(data, "adm@in.test", "adm")?, None).await?;

    let created = call(
        &server,
        &owner,
        CREATE_RS,
        json!({ "name": "orders", "description": "the orders API" }),
    )
    .await?;
    let payload = &created["data"]["createResourceServer"];
    assert_eq!(payload["errors"], json!([]), "{created}");
    let client = Client {
        id: text(&payload["resourceServer"]["clientId"])?,
        secret: text(&payload["clientSecret"])?,
    };
    assert_eq!(payload["resourceServer"]["name"], "orders");
    let body = expect_active(&server, &client, &admin, "the Admin's token").await?;
    assert_eq!(body["role"], "Admin");

    // Listed without any secret; names are unique.
    let listed = call(&server, &owner, LIST_RS, json!({})).await?;
    assert_eq!(
        listed["data"]["resourceServers"],
        json!([{ "clientId": client.id, "name": "orders", "description": "the orders API" }])
    );
    let again = call(&server, &owner, CREATE_RS, json!({ "name": "orders" })).await?;
    let errors = &again["data"]["createResourceServer"]["errors"];
    assert_eq!(errors[0]["field"], "name", "{again}");
    for bad in ["", "   ", "a\u{7}b"] {
        let answer = call(&server, &owner, CREATE_RS, json!({ "name": bad })).await?;
        assert_eq!(
            answer["data"]["createResourceServer"]["errors"][0]["field"], "name",
            "{bad:?}: {answer}"
        );
    }

    // Admins may not: not create, list, rotate nor delete.
    let refused = call(&server, &admin, CREATE_RS, json!({ "name": "mine" })).await?;
    let errors = &refused["data"]["createResourceServer"]["errors"];
    assert_eq!(errors[0]["field"], "__all__", "{refused}");
    assert!(
        errors[0]["messages"][0]
            .as_str()
            .is_some_and(|m| m.contains("only Owners")),
        "{refused}"
    );
    let listed = call(&server, &admin, LIST_RS, json!({})).await?;
    assert!(listed["data"].is_null() || listed["data"]["resourceServers"].is_null());
    assert!(
        listed["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("only Owners")),
        "{listed}"
    );
    for (mutation, field) in [
        (ROTATE_RS, "rotateResourceServerSecret"),
        (DELETE_RS, "deleteResourceServer"),
    ] {
        let answer = call(&server, &admin, mutation, json!({ "id": client.id })).await?;
        assert_eq!(
            answer["data"][field]["errors"][0]["field"], "__all__",
            "{answer}"
        );
    }
    expect_active(&server, &client, &owner, "untouched by the Admin").await?;

    // An Owner's token without org:admin may not either.
    let payload = must(
        &server,
        &owner,
        CREATE_TOKEN,
        json!({ "name": "narrow", "scopes": ["users:read"] }),
        "createToken",
    )
    .await?;
    let narrow = exchange(&server, &text(&payload["token"])?, None).await?;
    let refused = call(&server, &narrow, CREATE_RS, json!({ "name": "narrow" })).await?;
    assert!(
        refused["data"]["createResourceServer"]["errors"][0]["messages"][0]
            .as_str()
            .is_some_and(|m| m.contains("org:admin")),
        "{refused}"
    );

    // Rotate, then delete: each secret stops at once.
    let rotated = call(&server, &owner, ROTATE_RS, json!({ "id": client.id })).await?;
    let renewed = Client {
        id: client.id.clone(),
        secret: text(&rotated["data"]["rotateResourceServerSecret"]["clientSecret"])?,
    };
    let token = form(&[("token", &owner)]);
    expect_invalid_client(
        &introspect_raw(&server, &[("authorization", client.basic())], token.clone()).await?,
        "the old secret",
    );
    expect_active(&server, &renewed, &owner, "the new secret").await?;
    let deleted = call(&server, &owner, DELETE_RS, json!({ "id": "orders" })).await?;
    assert_eq!(
        deleted["data"]["deleteResourceServer"]["deleted"], true,
        "{deleted}"
    );
    expect_invalid_client(
        &introspect_raw(&server, &[("authorization", renewed.basic())], token).await?,
        "deleted",
    );
    let missing = call(&server, &owner, DELETE_RS, json!({ "id": "orders" })).await?;
    assert_eq!(
        missing["data"]["deleteResourceServer"]["errors"][0]["field"], "id",
        "{missing}"
    );
    stop_clean(server)
}
