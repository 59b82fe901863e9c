//! The operator's commands: output, errors and exit codes, run beside a live server.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use serde_json::Value;

use crate::harness::{Server, TestResult, admin_ok, prismd, prismd_with_stdin, temp_dir};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn users_and_tokens_commands_work_while_the_server_runs() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = dir.path();

    let id = admin_ok(
        data,
        &[
            "users",
            "add",
            "--email",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--role",
            "restricted integrator",
        ],
    )?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&id)?)?;
    assert!(decoded.starts_with("User:"), "{decoded}");

    let listed: Value = serde_json::from_str(&admin_ok(data, &["users", "list", "--json"])?)?;
    let users = listed.as_array().ok_or("not an array")?;
    assert_eq!(users.len(), 2, "owner and ada: {listed}");
    assert_eq!(users[0]["role"], "Owner");
    let ada = users
        .iter()
        .find(|u| u["id"] == id.as_str())
        .ok_or("ada missing")?;
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["name"], "Ada");
    assert_eq!(ada["role"], "Restricted Integrator");
    assert!(ada["removedAt"].is_null());

    let table = admin_ok(data, &["users", "list"])?;
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("ada@example.com"));

    // The token goes to stdout alone, one line, in the documented format.
    let output = prismd(
        data,
        &[
            "tokens",
            "create",
            "--email",
            "ada@example.com",
            "--name",
            "github",
        ],
    )?;
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stdout = String::from_utf8(output.stdout)?;
    assert_eq!(stdout.lines().count(), 1);
    let token = stdout.trim();
    assert!(
        token.starts_with("prism_rt_") && token.len() == 58,
        "{token}"
    );
    server.access_token(token).await?;

    // Duplicate, bad role, bad email, unknown users: non-zero exit and a clear message.
    let failures: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["users", "add", "--email", "ada@example.com"],
            "already exists",
        ),
        (
            vec!["users", "add", "--email", "x@example.com", "--role", "root"],
            "Restricted Integrator",
        ),
        (
            vec!["users", "add", "--email", "not-an-email"],
            "valid email",
        ),
        (
            vec!["users", "remove", "--email", "nobody@example.com"],
            "no active user",
        ),
        (
            vec!["tokens", "create", "--email", "nobody@example.com"],
            "no active user",
        ),
    ];
    for (args, message) in failures {
        let output = prismd(data, &args)?;
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(
            stderr_of(&output).contains(message),
            "{args:?}: {}",
            stderr_of(&output)
        );
    }

    // Removal shows in `--all` and drops out of the default list.
    admin_ok(data, &["users", "remove", "--email", "ada@example.com"])?;
    let active: Value = serde_json::from_str(&admin_ok(data, &["users", "list", "--json"])?)?;
    assert_eq!(active.as_array().map(Vec::len), Some(1));
    let all: Value = serde_json::from_str(&admin_ok(data, &["users", "list", "--json", "--all"])?)?;
    let removed = all
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == id.as_str()))
        .ok_or("gone")?;
    assert!(removed["removedAt"].is_string());
    assert_eq!(server.refresh_after_change(token).await?.0, 400);
    Ok(())
}

#[tokio::test]
async fn password_from_stdin_is_hashed_and_checked() -> TestResult {
    let dir = temp_dir()?;
    let _server = Server::start(dir.path())?;
    let password = "a long enough passphrase";
    let output = prismd_with_stdin(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "pw@example.com",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    )?;
    assert!(output.status.success(), "{}", stderr_of(&output));
    let url = format!(
        "sqlite://{}?mode=ro",
        dir.path().join("prismd.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await?;
    // The password belongs to the sign-in identity; the member (the organization's user row)
    // holds no copy of it.
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM identities WHERE email = 'pw@example.com'")
            .fetch_one(&pool)
            .await?;
    let member_hash: Option<String> = sqlx::query_scalar(
        "SELECT u.password_hash FROM users u JOIN identities i ON i.id = u.identity_id \
         WHERE i.email = 'pw@example.com'",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(password));
    assert_eq!(member_hash, None, "the member row keeps no password");

    let output = prismd_with_stdin(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "short@example.com",
            "--password-stdin",
        ],
        "short\n",
    )?;
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("at least 8"),
        "{}",
        stderr_of(&output)
    );
    Ok(())
}

#[test]
fn commands_before_the_first_start_explain_what_to_do() -> TestResult {
    let dir = temp_dir()?;
    let output = prismd(
        dir.path(),
        &["tokens", "create", "--email", "a@example.com"],
    )?;
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("prismd serve"),
        "{}",
        stderr_of(&output)
    );
    Ok(())
}

#[test]
fn data_dir_comes_from_the_environment_and_a_wrong_one_creates_nothing() -> TestResult {
    let dir = temp_dir()?;
    let missing = dir.path().join("typo");
    let output = std::process::Command::new(crate::harness::BIN)
        .args(["users", "list"])
        .env("PRISMD_DATA_DIR", &missing)
        .output()?;
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("no database at") && stderr.contains("typo"),
        "{stderr}"
    );
    assert!(
        !missing.exists(),
        "an admin command must not create a database"
    );
    Ok(())
}

#[tokio::test]
async fn data_files_are_private() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path().join("data");
    Server::start(&data)?.stop()?;
    let mode = |path: std::path::PathBuf| -> Result<u32, std::io::Error> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(data.clone())?, 0o700);
    assert_eq!(mode(data.join("prismd.db"))?, 0o600);
    assert_eq!(mode(data.join(prismd::INITIAL_PASSWORD_FILE))?, 0o600);
    Ok(())
}

#[tokio::test]
async fn the_last_owner_cannot_be_removed_and_passwords_can_be_reset() -> TestResult {
    let dir = temp_dir()?;
    let _server = Server::start(dir.path())?;
    let data = dir.path();
    let output = prismd(data, &["users", "remove", "--email", "owner@localhost"])?;
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("last Owner"),
        "{}",
        stderr_of(&output)
    );

    // With a second Owner, the first can go.
    let second = admin_ok(
        data,
        &[
            "users",
            "add",
            "--email",
            "second@example.com",
            "--role",
            "Owner",
        ],
    )?;
    admin_ok(data, &["users", "remove", "--email", "owner@localhost"])?;
    let output = prismd(data, &["users", "remove", "--email", "second@example.com"])?;
    assert!(!output.status.success(), "the remaining Owner must stay");

    let output = prismd_with_stdin(
        data,
        &["users", "set-password", "--email", "second@example.com"],
        "a brand new password\n",
    )?;
    assert!(output.status.success(), "{}", stderr_of(&output));
    // The password is the sign-in identity's: audited as the identity's, in the member's
    // organization and about the member the operator named.
    let audit = admin_ok(data, &["audit", "--limit", "1"])?;
    assert!(!audit.contains("a brand new password"));
    let event: Value = serde_json::from_str(audit.trim())?;
    assert_eq!(event["action"], "identity.password_set", "{audit}");
    assert_eq!(event["actor"], "operator", "{audit}");
    assert_eq!(event["subjectUserId"], second.as_str(), "{audit}");
    assert!(event["detail"]["identity"].is_string(), "{audit}");
    let output = prismd_with_stdin(
        data,
        &["users", "set-password", "--email", "nobody@example.com"],
        "a brand new password\n",
    )?;
    assert!(!output.status.success());
    Ok(())
}
