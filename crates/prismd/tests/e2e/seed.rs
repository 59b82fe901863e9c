//! The seed document's shell lines, run verbatim by bash with real curl and jq; only the host
//! is changed.

use std::process::Command;

use crate::harness::{Server, TestResult, temp_dir, user_with_token};

/// The exchange, exactly as `../shared/seed/prismatic-ci-cd-auth.txt` writes it.
const SEED_EXCHANGE: &str = r#"RESPONSE=$(curl "https://app.prismatic.io/auth/refresh" \
--request POST \
--data '{"refresh_token":"'${PRISMATIC_REFRESH_TOKEN}'"}' \
-H "Content-Type: application/json")
PRISMATIC_ACCESS_TOKEN=$(echo ${RESPONSE} | jq -r .access_token)"#;

/// The revocation, exactly as the seed writes it.
const SEED_REVOKE: &str = r#"curl "https://app.prismatic.io/auth/revoke" \
--request POST \
--data '{"refresh_token":"'${PRISMATIC_REFRESH_TOKEN}'"}' \
-H "Content-Type: application/json""#;

/// The API call the seed describes ("as a header Authorization: Bearer ..."), as a CI job
/// would write it.
const API_CALL: &str = r#"curl -s "https://app.prismatic.io/api" --request POST \
-H "Authorization: Bearer ${PRISMATIC_ACCESS_TOKEN}" -H "Content-Type: application/json" \
--data '{"query":"{ authenticatedUser { id name email tenantId org { id name } } }"}'"#;

fn run_bash(
    server: &Server,
    refresh_token: &str,
    script: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let script = script.replace("https://app.prismatic.io", &server.base);
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("set -eu\n{script}"))
        .env("PRISMATIC_REFRESH_TOKEN", refresh_token)
        .output()?;
    if !output.status.success() {
        return Err(format!("bash failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn embedded_lines_match_the_seed_document() -> TestResult {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/seed/prismatic-ci-cd-auth.txt");
    // The seed is outside the repository; when it is present, the copies here must match it.
    if let Ok(text) = std::fs::read_to_string(&seed) {
        assert!(
            text.contains(SEED_EXCHANGE),
            "the exchange lines drifted from the seed"
        );
        assert!(
            text.contains(SEED_REVOKE),
            "the revoke lines drifted from the seed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn seed_shell_lines_work_verbatim() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let refresh_token = user_with_token(dir.path(), "ci@example.com")?;

    // Exchange, then call the API with the access token the pipeline extracted with jq.
    let who = run_bash(
        &server,
        &refresh_token,
        &format!(
            "{SEED_EXCHANGE}\n{API_CALL} | jq -r '.data.authenticatedUser | .email + \" \" + .org.name + \" \" + .tenantId'"
        ),
    )?;
    let fields: Vec<&str> = who.trim().split(' ').collect();
    assert_eq!(
        fields.first(),
        Some(&"ci@example.com"),
        "API answered: {who}"
    );
    assert!(who.contains("My Organization"));
    assert_eq!(
        fields.last().map(|t| t.len()),
        Some(36),
        "tenantId is a UUID: {who}"
    );

    // The access token the pipeline got is a JWT and the token type is Bearer.
    let access = run_bash(
        &server,
        &refresh_token,
        &format!("{SEED_EXCHANGE}\necho \"$PRISMATIC_ACCESS_TOKEN\""),
    )?;
    assert_eq!(access.trim().split('.').count(), 3);

    // Revoke with the seed's own line, then the same exchange yields no token at all.
    run_bash(&server, &refresh_token, SEED_REVOKE)?;
    let after = run_bash(
        &server,
        &refresh_token,
        &format!(
            "{SEED_EXCHANGE}\necho \"$PRISMATIC_ACCESS_TOKEN\"; echo \"$RESPONSE\" | jq -r .error"
        ),
    )?;
    assert_eq!(after.trim(), "null\ninvalid_grant", "after revoke: {after}");
    // And the access token from before the revocation no longer opens the API.
    assert_eq!(server.whoami(access.trim()).await?, Err(401));
    Ok(())
}
