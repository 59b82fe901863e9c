//! `resource-servers:*` against a real server: an Owner registers, lists, re-keys and deletes
//! a resource server, whose credentials `/oauth/introspect` takes (and stops taking); an Admin
//! is refused, and nothing prints a secret where it should not.

use base64::Engine as _;
use serde_json::Value;

use crate::harness::{Home, Res, Server, TestResult, ok, run, stderr, stdout};

/// `POST /oauth/introspect` as `client_id`/`client_secret` about `token`: status and body.
fn introspect(server: &Server, credentials: &Value, token: &str) -> Res<(u16, Value)> {
    let id = credentials["client_id"].as_str().ok_or("no client_id")?;
    let secret = credentials["client_secret"]
        .as_str()
        .ok_or("no client_secret")?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let mut response = server
        .browser()?
        .post(format!("{}/oauth/introspect", server.base))
        .header("authorization", format!("Basic {basic}"))
        .send_form([("token", token)])?;
    let status = response.status().as_u16();
    Ok((
        status,
        serde_json::from_str(&response.body_mut().read_to_string()?)?,
    ))
}

/// An access token for `refresh`, from `/auth/refresh`.
fn access_of(server: &Server, refresh: &str) -> Res<String> {
    let mut response = server
        .browser()?
        .post(format!("{}/auth/refresh", server.base))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "refresh_token": refresh }).to_string())?;
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    Ok(body["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access token: {body}"))?
        .to_owned())
}

#[test]
fn an_owner_manages_resource_servers_from_the_cli() -> TestResult {
    let server = Server::start()?;
    let owner = server.owner_token()?;
    let home = Home::new()?;
    let as_owner = || {
        let mut command = home.prism(&server);
        command.env("PRISM_REFRESH_TOKEN", &owner);
        command
    };

    // Created: the credentials alone on stdout, as one JSON object for jq; a word on stderr.
    let output = run(as_owner().args([
        "resource-servers:create",
        "--name",
        "orders",
        "--description",
        "the orders API",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let credentials: Value = serde_json::from_str(stdout(&output).trim())?;
    let secret = credentials["client_secret"]
        .as_str()
        .ok_or("no client_secret")?
        .to_owned();
    assert!(secret.starts_with("prism_cs_"), "{credentials}");
    assert!(stderr(&output).contains("not shown again"));
    assert!(!stderr(&output).contains(&secret));
    let access = access_of(&server, &owner)?;
    let (status, body) = introspect(&server, &credentials, &access)?;
    assert_eq!(
        (status, &body["active"]),
        (200, &Value::Bool(true)),
        "{body}"
    );

    // Listed without any secret.
    let listed: Value = serde_json::from_str(&ok(as_owner().args([
        "resource-servers:list",
        "-x",
        "--output",
        "json",
    ]))?)?;
    let rows = listed.as_array().ok_or("not an array")?;
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["clientId"], credentials["client_id"], "{listed}");
    assert_eq!(rows[0]["name"], "orders");
    assert_eq!(rows[0]["description"], "the orders API");
    assert!(!listed.to_string().contains("prism_cs_"));

    // Re-keyed by name: the old secret stops, the new one works.
    let rotated: Value = serde_json::from_str(
        ok(as_owner().args(["resource-servers:rotate-secret", "orders"]))?.trim(),
    )?;
    assert_eq!(rotated["client_id"], credentials["client_id"]);
    assert_eq!(introspect(&server, &credentials, &access)?.0, 401);
    assert_eq!(introspect(&server, &rotated, &access)?.0, 200);

    // An Admin may not; an unknown one is named as such.
    let admin = server.user_token("adm@example.com", "Admin")?;
    let output = run(home
        .prism(&server)
        .env("PRISM_REFRESH_TOKEN", &admin)
        .args(["resource-servers:create", "--name", "mine"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).is_empty());
    assert!(
        stderr(&output).contains("only Owners"),
        "{}",
        stderr(&output)
    );
    let output = run(as_owner().args(["resource-servers:delete", "nothing"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no such resource server"),
        "{}",
        stderr(&output)
    );

    // Deleted: its secret stops working.
    let client_id = rotated["client_id"].as_str().ok_or("no client_id")?;
    ok(as_owner().args(["resource-servers:delete", client_id]))?;
    assert_eq!(introspect(&server, &rotated, &access)?.0, 401);
    let listed = ok(as_owner().args(["resource-servers:list", "--output", "json"]))?;
    assert_eq!(listed.trim(), "[]");
    Ok(())
}
