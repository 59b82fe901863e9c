//! `me:tokens:list` and `me:tokens:revoke ID` (prism-auth additions) against a real server:
//! the list, revoking one session while the others keep working, and bad or foreign ids.

use serde_json::Value;

use crate::harness::{Home, Server, TestResult, fails, ok};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn sessions_json(output: &str) -> Res<Vec<Value>> {
    let parsed: Value = serde_json::from_str(output)?;
    Ok(parsed.as_array().ok_or("not an array")?.clone())
}

fn id_named(sessions: &[Value], name: &str) -> Res<String> {
    Ok(sessions
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["id"].as_str())
        .ok_or_else(|| format!("no session named {name}"))?
        .to_owned())
}

#[test]
fn list_and_revoke_one_session() -> TestResult {
    let server = Server::start()?;
    let ci = server.admin(&[
        "tokens",
        "create",
        "--email",
        "owner@localhost",
        "--name",
        "ci",
    ])?;
    let laptop = server.admin(&[
        "tokens",
        "create",
        "--email",
        "owner@localhost",
        "--name",
        "laptop",
    ])?;
    let home = Home::new()?;
    let with = |token: &str| {
        let mut command = home.prism(&server);
        command.env("PRISM_REFRESH_TOKEN", token);
        command
    };

    // The table: names and times by default, client with -x; the current session is marked.
    let table = ok(with(&ci).arg("me:tokens:list"))?;
    let header = table.lines().next().ok_or("empty table")?;
    for column in ["Id", "Name", "Created", "Last Used", "Current"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(!header.contains("Client"), "{table}");
    assert!(table.contains("laptop") && table.contains("ci"), "{table}");
    let extended = ok(with(&ci).args(["me:tokens:list", "-x"]))?;
    assert!(extended.contains("prism-cli"), "{extended}");
    assert!(!extended.contains(&ci) && !extended.contains(&laptop));

    let sessions = sessions_json(&ok(with(&ci).args(["me:tokens:list", "--output", "json"]))?)?;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["name"], "laptop", "newest first");
    let current: Vec<&Value> = sessions.iter().map(|s| &s["current"]).collect();
    assert_eq!(current, ["", "*"]);
    let laptop_id = id_named(&sessions, "laptop")?;

    // Revoke one: that refresh token is dead, the one in use is not.
    let said = ok(with(&ci).args(["me:tokens:revoke", &laptop_id]))?;
    assert_eq!(
        said.trim(),
        format!("Revoked session 'laptop' ({laptop_id}).")
    );
    let err = fails(with(&laptop).arg("me:token"))?;
    assert!(!err.trim().is_empty(), "{err}");
    let sessions = sessions_json(&ok(with(&ci).args(["me:tokens:list", "--output", "json"]))?)?;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["name"], "ci");

    // Already revoked, or never existed: exit 1, what happened and what to do next.
    for bad in [laptop_id.as_str(), "not-a-session-id"] {
        let err = fails(with(&ci).args(["me:tokens:revoke", bad]))?;
        assert!(err.contains("no such session"), "{err}");
        assert!(err.contains("prism me:tokens:list"), "{err}");
    }
    // A missing id is a usage error.
    let output = crate::harness::run(with(&ci).arg("me:tokens:revoke"));
    assert_eq!(output.status.code(), Some(2));
    ok(with(&ci).arg("me:token"))?;
    Ok(())
}

#[test]
fn another_users_session_looks_unknown() -> TestResult {
    let server = Server::start()?;
    let owner = server.admin(&[
        "tokens",
        "create",
        "--email",
        "owner@localhost",
        "--name",
        "ci",
    ])?;
    let guest = server.user_token("guest@example.com", "Guest")?;
    let home = Home::new()?;
    let owners = sessions_json(&ok(home
        .prism(&server)
        .env("PRISM_REFRESH_TOKEN", &owner)
        .args(["me:tokens:list", "--output", "json"]))?)?;
    let owner_session = id_named(&owners, "ci")?;

    // The Guest lists only their own session, and cannot revoke the Owner's.
    let theirs = sessions_json(&ok(home
        .prism(&server)
        .env("PRISM_REFRESH_TOKEN", &guest)
        .args(["me:tokens:list", "--output", "json"]))?)?;
    assert_eq!(theirs.len(), 1);
    assert_ne!(theirs[0]["id"], owner_session.as_str());
    let err = fails(
        home.prism(&server)
            .env("PRISM_REFRESH_TOKEN", &guest)
            .args(["me:tokens:revoke", &owner_session]),
    )?;
    assert!(err.contains("no such session"), "{err}");
    ok(home
        .prism(&server)
        .env("PRISM_REFRESH_TOKEN", &owner)
        .arg("me:token"))?;
    Ok(())
}
