//! Every bad input gets a JSON error in the OAuth shape with a fitting status, never a 500,
//! never an echo of the token, and nothing `jq -r .access_token` could mistake for a token.

use serde_json::{Value, json};

use crate::harness::{Server, TestResult, temp_dir, user_with_token};

/// Checks an error response: status, `error` code, and that it leaks nothing.
fn assert_error(
    case: &str,
    status: u16,
    body: &str,
    want_status: u16,
    want_error: &str,
    secret: &str,
) {
    assert_eq!(status, want_status, "{case}: {body}");
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(json["error"], want_error, "{case}: {body}");
    assert!(
        json["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{case}: {body}"
    );
    assert!(
        json.get("access_token").is_none(),
        "{case}: jq -r .access_token must print null"
    );
    assert!(!body.contains(secret), "{case}: the error echoes the token");
}

/// (case, content type, body, expected status, expected `error`).
type BodyCase<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn refresh_rejects_bad_bodies_and_bad_tokens() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "ci@example.com")?;
    let secret_part = &token[9..40];
    let json_ct = Some("application/json");
    let body_for = |t: &str| json!({ "refresh_token": t }).to_string().into_bytes();

    let mut bad_checksum = token.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let bad_checksum = String::from_utf8(bad_checksum)?;
    let unknown = prism_proto::token_format::generate(prism_proto::SecretKind::RefreshToken)?;

    let cases: Vec<BodyCase> = vec![
        (
            "no content type",
            None,
            body_for(&token),
            415,
            "invalid_request",
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            body_for(&token),
            415,
            "invalid_request",
        ),
        (
            "text content type",
            Some("text/plain"),
            body_for(&token),
            415,
            "invalid_request",
        ),
        (
            "truncated JSON",
            json_ct,
            br#"{"refresh_token":"prism_rt_"#.to_vec(),
            400,
            "invalid_request",
        ),
        ("empty body", json_ct, Vec::new(), 400, "invalid_request"),
        (
            "JSON array",
            json_ct,
            b"[]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "missing field",
            json_ct,
            b"{}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "null field",
            json_ct,
            br#"{"refresh_token":null}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "number field",
            json_ct,
            br#"{"refresh_token":12345}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "object field",
            json_ct,
            br#"{"refresh_token":{"a":1}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "non-string tenant",
            json_ct,
            format!(r#"{{"refresh_token":"{token}","tenant_id":5}}"#).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "invalid UTF-8",
            json_ct,
            b"{\"refresh_token\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "oversized body",
            json_ct,
            body_for(&"a".repeat(20_000)),
            413,
            "invalid_request",
        ),
        ("empty token", json_ct, body_for(""), 400, "invalid_grant"),
        (
            "wrong prefix",
            json_ct,
            body_for(&token.replacen("prism_rt_", "ghp_", 1)),
            400,
            "invalid_grant",
        ),
        (
            "truncated token",
            json_ct,
            body_for(&token[..token.len() - 3]),
            400,
            "invalid_grant",
        ),
        (
            "bad checksum",
            json_ct,
            body_for(&bad_checksum),
            400,
            "invalid_grant",
        ),
        (
            "SQL metacharacters",
            json_ct,
            body_for("prism_rt_' OR '1'='1"),
            400,
            "invalid_grant",
        ),
        (
            "NUL byte",
            json_ct,
            body_for("prism_rt_\u{0}abc"),
            400,
            "invalid_grant",
        ),
        (
            "very long token",
            json_ct,
            body_for(&format!("prism_rt_{}", "a".repeat(10_000))),
            400,
            "invalid_grant",
        ),
        (
            "unknown token",
            json_ct,
            body_for(&unknown),
            400,
            "invalid_grant",
        ),
        (
            "access token as refresh token",
            json_ct,
            body_for("eyJhbGciOiJFZERTQSJ9.e30.AAAA"),
            400,
            "invalid_grant",
        ),
    ];
    for (case, content_type, body, want_status, want_error) in cases {
        let (status, text) = server.post_raw("/auth/refresh", content_type, body).await?;
        assert_error(case, status, &text, want_status, want_error, secret_part);
    }

    let (status, text) = server
        .post_raw("/auth/refresh", json_ct, body_for(&bad_checksum))
        .await?;
    assert!(
        text.contains("checksum"),
        "a mistyped token should say so: {status} {text}"
    );

    // The real token still works after all that, with and without the right tenant.
    server.access_token(&token).await?;
    let (_, me) = server.refresh(&token).await?;
    let access = me["access_token"].as_str().ok_or("no token")?;
    let (_, _, who) = server
        .graphql(Some(access), "{ authenticatedUser { tenantId } }")
        .await?;
    let tenant = who["data"]["authenticatedUser"]["tenantId"]
        .as_str()
        .ok_or("no tenant")?;
    let (status, _) = server
        .post_json(
            "/auth/refresh",
            &json!({ "refresh_token": token, "tenant_id": tenant }),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, body) = server
        .post_json(
            "/auth/refresh",
            &json!({ "refresh_token": token, "tenant_id": "another-tenant" }),
        )
        .await?;
    assert_error(
        "foreign tenant",
        status,
        &body.to_string(),
        403,
        "access_denied",
        secret_part,
    );
    Ok(())
}

#[tokio::test]
async fn revoke_answers_200_for_well_formed_tokens_and_400_for_malformed_ones() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "ci@example.com")?;
    // Well-formed but unknown, or already revoked: 200 {} (RFC 7009; the official client
    // ignores the body), revealing nothing about which tokens exist.
    let unknown = prism_proto::token_format::generate(prism_proto::SecretKind::RefreshToken)?;
    let revoked = user_with_token(dir.path(), "gone@example.com")?;
    assert_eq!(server.revoke(&revoked).await?.0, 200);
    for candidate in [unknown.as_str(), revoked.as_str()] {
        let (status, body) = server.revoke(candidate).await?;
        assert_eq!((status, &body), (200, &json!({})), "a well-formed token");
    }
    // Malformed (a shell quoting accident, a truncated or mistyped copy, the access token):
    // 400 saying it is not a refresh token, so nobody believes a revoke happened.
    let mut mistyped = token.clone();
    let last = mistyped.pop().ok_or("empty token")?;
    mistyped.push(if last == 'A' { 'B' } else { 'A' });
    let access = server.access_token(&token).await?;
    for (case, candidate) in [
        ("a mistyped checksum", mistyped.as_str()),
        ("a truncated copy", &token[..token.len() - 1]),
        ("a quote left in", &format!("'{token}")),
        ("garbage", "garbage"),
        ("empty", ""),
        ("an access token", access.as_str()),
    ] {
        let (status, body) = server.revoke(candidate).await?;
        assert_error(
            case,
            status,
            &body.to_string(),
            400,
            "invalid_request",
            &token[9..40],
        );
        assert!(
            body["error_description"].as_str().is_some_and(
                |d| d.contains("not a refresh token") && d.contains("nothing was revoked")
            ),
            "{case}: {body}"
        );
    }
    for (case, content_type, body, want) in [
        (
            "malformed JSON",
            Some("application/json"),
            b"{".to_vec(),
            400,
        ),
        (
            "missing field",
            Some("application/json"),
            b"{\"token\":\"x\"}".to_vec(),
            400,
        ),
        (
            "wrong content type",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
    ] {
        let (status, text) = server.post_raw("/auth/revoke", content_type, body).await?;
        assert_error(case, status, &text, want, "invalid_request", &token[9..40]);
    }
    // None of that revoked the real token.
    server.access_token(&token).await?;
    Ok(())
}

#[tokio::test]
async fn oauth_token_endpoint_refresh_grant() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "ci@example.com")?;
    let secret = &token[9..40];
    let form = Some("application/x-www-form-urlencoded");

    // The official client's exact request.
    let body = format!("grant_type=refresh_token&client_id=prism-cli&refresh_token={token}");
    let (status, text) = server
        .post_raw("/oauth/token", form, body.into_bytes())
        .await?;
    assert_eq!(status, 200, "{text}");
    let json: Value = serde_json::from_str(&text)?;
    assert_eq!(json["token_type"], "Bearer");
    let access = json["access_token"].as_str().ok_or("no token")?;
    assert_eq!(server.whoami(access).await?, Ok("ci@example.com".into()));

    // JSON bodies work too.
    let (status, _) = server
        .post_json(
            "/oauth/token",
            &json!({ "grant_type": "refresh_token", "refresh_token": token }),
        )
        .await?;
    assert_eq!(status, 200);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "unsupported grant",
            "grant_type=password&username=a&password=b".into(),
            400,
            "unsupported_grant_type",
        ),
        (
            "missing refresh_token",
            "grant_type=refresh_token".into(),
            400,
            "invalid_request",
        ),
        (
            "missing grant_type",
            format!("refresh_token={token}"),
            400,
            "invalid_request",
        ),
        (
            "repeated parameter",
            format!("grant_type=refresh_token&refresh_token={token}&refresh_token={token}"),
            400,
            "invalid_request",
        ),
        (
            "unknown client",
            format!("grant_type=refresh_token&client_id=evil&refresh_token={token}"),
            400,
            "invalid_client",
        ),
        (
            "bad token",
            "grant_type=refresh_token&refresh_token=prism_rt_x".into(),
            400,
            "invalid_grant",
        ),
    ];
    for (case, body, want_status, want_error) in cases {
        let (status, text) = server
            .post_raw("/oauth/token", form, body.into_bytes())
            .await?;
        assert_error(case, status, &text, want_status, want_error, secret);
    }
    Ok(())
}

#[tokio::test]
async fn unknown_paths_and_api_bodies_are_answered_cleanly() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let token = user_with_token(dir.path(), "ci@example.com")?;
    let access = server.access_token(&token).await?;

    let response = server
        .http
        .get(server.url("/auth/refresh/prism_rt_in_the_path"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);
    let response = server.http.get(server.url("/auth/refresh")).send().await?;
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await?;
    assert_eq!(
        body["error"], "invalid_request",
        "405 must be an OAuth-shaped JSON error"
    );

    for (case, body, want) in [
        ("malformed JSON", b"{\"query\":".to_vec(), 400),
        ("no query", b"{}".to_vec(), 400),
    ] {
        let response = server
            .http
            .post(server.url("/api"))
            .header("authorization", format!("Bearer {access}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), want, "{case}");
    }
    // A GraphQL error (unknown field) is a 200 with `errors` and no `data`, as GraphQL wants.
    let (status, _, body) = server.graphql(Some(&access), "{ nope }").await?;
    assert_eq!(status, 200);
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    // The path with a token-looking segment was logged as unmatched, not verbatim.
    assert!(!server.logs().contains("prism_rt_in_the_path"));
    Ok(())
}
