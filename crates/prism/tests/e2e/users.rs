//! `organization:users:*` against a real server, the table flags, and the failure messages
//! (what to do next, no panics, exit code 1).

use crate::harness::{Home, Server, TestResult, fails, ok, run, stderr, stdout};

#[test]
fn users_commands_and_table_flags() -> TestResult {
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    let prism = || {
        let mut command = home.prism(&server);
        command.env("PRISM_REFRESH_TOKEN", &token);
        command
    };

    let roles = ok(prism().args(["organization:users:roles", "--output", "json"]))?;
    let roles: serde_json::Value = serde_json::from_str(&roles)?;
    let integrator = roles
        .as_array()
        .ok_or("not an array")?
        .iter()
        .find(|r| r["name"] == "Integrator")
        .and_then(|r| r["id"].as_str())
        .ok_or("no Integrator role")?
        .to_owned();

    let created = run(prism().args([
        "organization:users:create",
        "-e",
        "ada@example.com",
        "-r",
        &integrator,
        "-n",
        "Ada Lovelace",
    ]));
    assert!(created.status.success(), "{}", stderr(&created));
    let id = stdout(&created).trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "{id}");
    let link = stderr(&created);
    assert!(link.contains("/invite"), "no invitation link: {link}");
    assert_eq!(link.lines().count(), 1, "{link}");

    // Table: id only with -x; header and rule line.
    let table = ok(prism().arg("organization:users:list"))?;
    let header = table.lines().next().ok_or("empty table")?;
    assert!(
        header.contains("Name") && header.contains("Email"),
        "{table}"
    );
    assert!(!table.contains(&id), "{table}");
    assert!(table.contains("Ada Lovelace"), "{table}");
    let extended = ok(prism().args(["organization:users:list", "-x"]))?;
    assert!(extended.contains(&id), "{extended}");

    let filtered = ok(prism().args([
        "organization:users:list",
        "--filter",
        "email=^ada@",
        "--columns",
        "email,role",
        "--no-header",
    ]))?;
    assert_eq!(
        filtered.split_whitespace().collect::<Vec<_>>().join(" "),
        "ada@example.com Integrator"
    );
    let csv = ok(prism().args([
        "organization:users:list",
        "--csv",
        "--columns",
        "name,email",
        "--sort",
        "-email",
    ]))?;
    assert_eq!(
        csv,
        "Name,Email\nOwner,owner@localhost\nAda Lovelace,ada@example.com\n"
    );
    let yaml = ok(prism().args([
        "organization:users:list",
        "--output",
        "yaml",
        "--columns",
        "email",
        "--sort",
        "email",
    ]))?;
    assert_eq!(yaml, "- email: ada@example.com\n- email: owner@localhost\n");
    let err = fails(prism().args(["organization:users:list", "--sort", "nope"]))?;
    assert!(err.contains("Unknown column 'nope'"), "{err}");

    // Update prints the id; delete prints nothing.
    let updated = ok(prism().args([
        "organization:users:update",
        &id,
        "-n",
        "Ada King",
        "-p",
        "+44 20",
    ]))?;
    assert_eq!(updated.trim(), id);
    let table = ok(prism().args(["organization:users:list", "--columns", "name,phone"]))?;
    assert!(
        table.contains("Ada King") && table.contains("+44 20"),
        "{table}"
    );

    // A mutation's own errors come back as messages, with exit 1.
    let err = fails(prism().args([
        "organization:users:create",
        "-e",
        "ada@example.com",
        "-r",
        &integrator,
    ]))?;
    assert!(!err.trim().is_empty(), "{err}");

    let deleted = ok(prism().args(["organization:users:delete", &id]))?;
    assert_eq!(deleted, "");
    let table = ok(prism().arg("organization:users:list"))?;
    assert!(!table.contains("ada@example.com"), "{table}");

    // A user without the permission is told so.
    let guest = server.user_token("guest@example.com", "Guest")?;
    let err = fails(
        home.prism(&server)
            .args(["organization:users:delete", &id])
            .env("PRISM_REFRESH_TOKEN", &guest),
    )?;
    assert!(!err.trim().is_empty(), "{err}");
    Ok(())
}

#[test]
fn failures_say_what_to_do_next() -> TestResult {
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;

    let err = fails(home.prism(&server).arg("me"))?;
    assert_eq!(
        err.trim(),
        "Error: Not logged in: run 'prism login' (or set PRISM_REFRESH_TOKEN)."
    );

    // The dev CA is not trusted: the message names the URL and the CA option.
    let err = fails(
        home.bare()
            .arg("me")
            .env("PRISMATIC_URL", &server.base)
            .env("PRISM_REFRESH_TOKEN", &token),
    )?;
    assert!(err.contains(&format!("{}/auth/meta", server.base)), "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    // --ca-cert fixes it.
    let me = ok(home
        .bare()
        .arg("me")
        .arg("--ca-cert")
        .arg(server.ca())
        .env("PRISMATIC_URL", &server.base)
        .env("PRISM_REFRESH_TOKEN", &token))?;
    assert!(me.contains("owner@localhost"), "{me}");

    // Nothing listening: the URL and the cause.
    let err = fails(
        home.bare()
            .arg("me")
            .env("PRISMATIC_URL", "https://127.0.0.1:9")
            .env("PRISM_REFRESH_TOKEN", &token),
    )?;
    assert!(
        err.contains("cannot reach https://127.0.0.1:9/auth/meta"),
        "{err}"
    );

    // A mistyped token: refused, and the token is not echoed.
    // Change the last character (to one it is not, or the "typo" would be the token itself).
    let last = if token.ends_with('x') { 'y' } else { 'x' };
    let mistyped = format!("{}{last}", &token[..token.len() - 1]);
    let err = fails(
        home.prism(&server)
            .arg("me")
            .env("PRISM_REFRESH_TOKEN", &mistyped),
    )?;
    assert!(err.contains("Could not refresh the access token"), "{err}");
    assert!(!err.contains(&mistyped[9..]), "{err}");

    // Usage errors exit 2 with clap's message; help and completions work.
    let output = run(home.bare().args(["me:token", "--type", "id"]));
    assert_eq!(output.status.code(), Some(2));
    let help = ok(home.bare().arg("--help"))?;
    for command in [
        "login",
        "me:token:revoke",
        "organization:users:list",
        "profiles:use",
        "PRISM_REFRESH_TOKEN",
    ] {
        assert!(
            help.contains(command),
            "{command} missing from --help: {help}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(home.bare().args(["completion", shell]))?;
        assert!(script.contains("me:token"), "{shell}");
    }
    assert!(server.logs().contains("listening on"));
    Ok(())
}
