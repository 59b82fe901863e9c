//! The seed document's shell lines, run verbatim by bash with real curl and jq; only the host
//! is changed. The lines come from a copy in the repository (`tests/seed-lines.txt`), so they
//! run wherever the tests do; where the seed document itself is at hand (`../shared`), the
//! copy is checked against it.

use std::path::Path;
use std::process::Command;

use crate::harness::{Server, TestResult, temp_dir, user_with_token};

/// The copy of the seed's shell lines, in blocks (see the file's own header).
const SEED_LINES: &str = include_str!("../seed-lines.txt");

/// The blocks of [`SEED_LINES`]: the exchange of a refresh token and its revocation.
const BLOCKS: [&str; 2] = ["exchange", "revoke"];

/// The lines of block `name` of [`SEED_LINES`], as one script.
fn seed_block(name: &str) -> Result<String, String> {
    let mut current = None;
    let mut lines = Vec::new();
    for line in SEED_LINES.lines() {
        if let Some(block) = line.strip_prefix("### ") {
            current = Some(block.trim());
        } else if !line.starts_with('#') && !line.trim().is_empty() && current == Some(name) {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Err(format!("no block '{name}' in tests/seed-lines.txt"));
    }
    Ok(lines.join("\n"))
}

/// A line of the seed document that is part of a command a CI job runs (the commands'
/// lines and their continuations; not the example token values, nor `$ prism ...`).
fn is_shell_line(line: &str) -> bool {
    ["curl ", "RESPONSE=", "PRISMATIC_ACCESS_TOKEN=", "--", "-H "]
        .iter()
        .any(|start| line.starts_with(start))
}

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
fn the_copied_lines_match_the_seed_document() -> TestResult {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seed/prismatic-ci-cd-auth.txt");
    let blocks = BLOCKS
        .iter()
        .map(|name| seed_block(name))
        .collect::<Result<Vec<_>, _>>()?;
    let text = match std::fs::read_to_string(&seed) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "{} is absent: the seed's lines run from the copy in tests/seed-lines.txt, \
                 which is not checked against the original here",
                seed.display()
            );
            return Ok(());
        }
        Err(err) => return Err(format!("cannot read {}: {err}", seed.display()).into()),
    };
    for (name, block) in BLOCKS.iter().zip(&blocks) {
        assert!(
            text.contains(block.as_str()),
            "the {name} lines of tests/seed-lines.txt drifted from {}",
            seed.display()
        );
    }
    let copied: Vec<&str> = blocks.iter().flat_map(|block| block.lines()).collect();
    for line in text.lines().filter(|line| is_shell_line(line)) {
        assert!(
            copied.contains(&line),
            "{} has a shell line that tests/seed-lines.txt lacks: {line}",
            seed.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn seed_shell_lines_work_verbatim() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let refresh_token = user_with_token(dir.path(), "ci@example.com")?;
    let (exchange, revoke) = (seed_block("exchange")?, seed_block("revoke")?);

    // Exchange, then call the API with the access token the pipeline extracted with jq.
    let who = run_bash(
        &server,
        &refresh_token,
        &format!(
            "{exchange}\n{API_CALL} | jq -r '.data.authenticatedUser | .email + \" \" + .org.name + \" \" + .tenantId'"
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
        &format!("{exchange}\necho \"$PRISMATIC_ACCESS_TOKEN\""),
    )?;
    assert_eq!(access.trim().split('.').count(), 3);

    // Revoke with the seed's own line, then the same exchange yields no token at all.
    run_bash(&server, &refresh_token, &revoke)?;
    let after = run_bash(
        &server,
        &refresh_token,
        &format!("{exchange}\necho \"$PRISMATIC_ACCESS_TOKEN\"; echo \"$RESPONSE\" | jq -r .error"),
    )?;
    assert_eq!(after.trim(), "null\ninvalid_grant", "after revoke: {after}");
    // And the access token from before the revocation no longer opens the API.
    assert_eq!(server.whoami(access.trim()).await?, Err(401));
    Ok(())
}
