//! Named, scoped, expiring tokens and service accounts (prism-auth additions) against a real
//! server: `me:tokens:create` and using what it printed (through `/auth/refresh` and through
//! the CLI itself, which warns when the token in use expires within 7 days), its refusals,
//! `me:tokens:list`'s expiry and scopes, and `service-accounts:*` with a token minted for one.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::harness::{
    Home, Res, Server, TestResult, fails, fake_jwt, now, official_config, ok, run, stderr, stdout,
};

const DAY: Duration = Duration::from_secs(86_400);
/// How far apart the CLI's, the server's and this test's clocks' readings of one moment may
/// be: they are one clock, read a few seconds apart at most.
const SLACK: Duration = Duration::from_secs(120);

/// `prism` in environment mode with `token` as `PRISM_REFRESH_TOKEN`.
fn prism_with(home: &Home, server: &Server, token: &str) -> assert_cmd::Command {
    let mut command = home.prism(server);
    command.env("PRISM_REFRESH_TOKEN", token);
    command
}

fn json_rows(output: &str) -> Res<Vec<Value>> {
    let parsed: Value = serde_json::from_str(output)?;
    Ok(parsed.as_array().ok_or("not an array")?.clone())
}

fn row_named<'a>(rows: &'a [Value], name: &str) -> Res<&'a Value> {
    Ok(rows
        .iter()
        .find(|row| row["name"] == name)
        .ok_or_else(|| format!("no row named {name} in {rows:?}"))?)
}

/// Space-separated scopes as a set: the order is the server's.
fn scope_set(words: &str) -> BTreeSet<&str> {
    words.split_whitespace().collect()
}

fn apart(one: SystemTime, other: SystemTime) -> Duration {
    one.duration_since(other)
        .or_else(|_| other.duration_since(one))
        .unwrap_or(Duration::MAX)
}

/// Whether two readings of one moment agree within [`SLACK`].
fn near(actual: SystemTime, expected: SystemTime) -> bool {
    apart(actual, expected) <= SLACK
}

fn parse_time(text: &str) -> Res<SystemTime> {
    humantime::parse_rfc3339(text).map_err(|e| format!("'{text}' is not RFC 3339: {e}").into())
}

/// The id of the role named `name`, from `organization:users:roles`.
fn role_id(home: &Home, server: &Server, token: &str, name: &str) -> Res<String> {
    let roles = json_rows(&ok(prism_with(home, server, token).args([
        "organization:users:roles",
        "--output",
        "json",
    ]))?)?;
    Ok(row_named(&roles, name)?["id"]
        .as_str()
        .ok_or("a role without an id")?
        .to_owned())
}

/// `POST /auth/refresh` as CI scripts call it: the HTTP status and the JSON answer.
fn exchange(server: &Server, refresh_token: &str) -> Res<(u16, Value)> {
    let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
    let mut response = server
        .browser()?
        .post(format!("{}/auth/refresh", server.base))
        .content_type("application/json")
        .send(body.as_str())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    Ok((status, serde_json::from_str(&text)?))
}

/// Runs a `prism` that must be refused: exit code 1, nothing on stdout (so a script's
/// `TOKEN=$(...)` captures nothing), the reason on stderr, which is returned.
fn refused(command: &mut assert_cmd::Command) -> Res<String> {
    let output = run(command);
    let err = stderr(&output);
    if output.status.code() != Some(1) || !output.stdout.is_empty() {
        return Err(format!(
            "prism should have been refused with 1 and no stdout but {:?}:\nstdout: {}\nstderr: {err}",
            output.status,
            stdout(&output),
        )
        .into());
    }
    assert!(err.starts_with("Error: "), "{err}");
    Ok(err)
}

/// The one line of a command that prints only a token or an id.
fn only_line(printed: &str) -> Res<String> {
    let line = printed.strip_suffix('\n').ok_or("no newline")?;
    if line.is_empty() || line.contains(char::is_whitespace) {
        return Err(format!("expected one word on one line, got {printed:?}").into());
    }
    Ok(line.to_owned())
}

#[test]
fn a_scoped_expiring_token_works_and_warns_before_it_expires() -> TestResult {
    let server = Server::start()?;
    let owner = server.owner_token()?;
    let home = Home::new()?;

    // Minted with an unrestricted token without expiry: stdout is the token and nothing
    // else, and there is nothing to warn about.
    let minted = run(prism_with(&home, &server, &owner).args([
        "me:tokens:create",
        "--name",
        "ci",
        "--scope",
        "users:read",
        "--scope",
        "sessions:read",
        "--expires-in",
        "3d",
    ]));
    assert!(minted.status.success(), "{}", stderr(&minted));
    assert_eq!(stderr(&minted), "");
    let ci = only_line(&stdout(&minted))?;
    assert!(ci.starts_with("prism_rt_"), "{ci}");

    // What CI does with it: the server's /auth/refresh, narrowed to its scopes, with the
    // refresh token's own expiry.
    let (status, tokens) = exchange(&server, &ci)?;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["access_token"].is_string(), "{tokens}");
    assert_eq!(
        scope_set(tokens["scope"].as_str().ok_or("no scope")?),
        scope_set("users:read sessions:read"),
        "{tokens}"
    );
    let left = tokens["refresh_token_expires_in"]
        .as_u64()
        .ok_or_else(|| format!("no refresh_token_expires_in: {tokens}"))?;
    assert!(
        left <= 3 * 86_400 && left + SLACK.as_secs() >= 3 * 86_400,
        "{left}"
    );

    // The CLI with it: the command's output on stdout, one warning on stderr naming the date.
    let used = run(prism_with(&home, &server, &ci).args([
        "organization:users:list",
        "--columns",
        "email",
        "--no-header",
    ]));
    assert!(used.status.success(), "{}", stderr(&used));
    assert_eq!(stdout(&used).trim(), "owner@localhost");
    let warning = stderr(&used);
    assert_eq!(warning.lines().count(), 1, "{warning}");
    let date = warning
        .trim()
        .strip_prefix("warning: the refresh token in use expires on ")
        .and_then(|rest| {
            rest.strip_suffix(" (in 3 days); mint a new one with 'prism me:tokens:create'")
        })
        .ok_or_else(|| format!("not the expiry warning: {warning}"))?;
    assert!(
        near(parse_time(date)?, SystemTime::now() + 3 * DAY),
        "{warning}"
    );
    // `me:token` prints the access token alone: the warning stays on stderr.
    let printed = run(prism_with(&home, &server, &ci).arg("me:token"));
    assert!(printed.status.success(), "{}", stderr(&printed));
    assert_eq!(only_line(&stdout(&printed))?.split('.').count(), 3);
    assert!(stderr(&printed).starts_with("warning: "));

    // In a profile, the same: a warning with the refresh, none while the saved access token
    // is used as is.
    let profile = Home::new()?;
    profile.write_config(
        &official_config("default", &fake_jwt(now() - 60), &ci, &server.base),
        0o600,
    )?;
    let refreshed = run(profile.prism(&server).arg("me"));
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert!(
        stderr(&refreshed).starts_with("warning: the refresh token in use expires on "),
        "{}",
        stderr(&refreshed)
    );
    let reused = run(profile.prism(&server).arg("me"));
    assert!(reused.status.success(), "{}", stderr(&reused));
    assert_eq!(stderr(&reused), "");

    // me:tokens:list shows its expiry and scopes; the Owner's unrestricted token has none.
    let table = ok(prism_with(&home, &server, &ci).arg("me:tokens:list"))?;
    let header = table.lines().next().ok_or("empty table")?;
    assert!(
        header.contains("Expires") && header.contains("Scopes"),
        "{table}"
    );
    let sessions = json_rows(&ok(prism_with(&home, &server, &ci).args([
        "me:tokens:list",
        "--output",
        "json",
    ]))?)?;
    let listed = row_named(&sessions, "ci")?;
    assert_eq!(
        scope_set(listed["scopes"].as_str().ok_or("no scopes")?),
        scope_set("sessions:read users:read"),
        "{listed}"
    );
    let expires = parse_time(listed["expiresAt"].as_str().ok_or("no expiresAt")?)?;
    assert!(near(expires, SystemTime::now() + 3 * DAY), "{listed}");
    assert_eq!(listed["current"], "*");
    let unrestricted: Vec<&Value> = sessions.iter().filter(|s| s["name"] != "ci").collect();
    assert_eq!(unrestricted.len(), 1, "{sessions:?}");
    assert_eq!(unrestricted[0]["scopes"], "", "{sessions:?}");

    // Beyond its scopes: the mutation's own refusal, and a query field's.
    let err = fails(prism_with(&home, &server, &ci).args([
        "service-accounts:create",
        "--name",
        "nope",
        "--role",
        "any",
    ]))?;
    assert!(
        err.contains("this token lacks the scope users:write"),
        "{err}"
    );
    let users_only = only_line(&ok(prism_with(&home, &server, &owner).args([
        "me:tokens:create",
        "--name",
        "users-only",
        "--scope",
        "users:read",
    ]))?)?;
    let err = fails(prism_with(&home, &server, &users_only).arg("me:tokens:list"))?;
    assert!(
        err.contains("this token lacks the scope sessions:read"),
        "{err}"
    );

    // --expires-at, a month away: the expiry is the one given, and there is no warning.
    let month_later = humantime::format_rfc3339_seconds(SystemTime::now() + 30 * DAY).to_string();
    let monthly = only_line(&ok(prism_with(&home, &server, &owner).args([
        "me:tokens:create",
        "--name",
        "monthly",
        "--expires-at",
        &month_later,
    ]))?)?;
    let used = run(prism_with(&home, &server, &monthly).arg("me"));
    assert!(used.status.success(), "{}", stderr(&used));
    assert_eq!(stderr(&used), "");
    let sessions = json_rows(&ok(prism_with(&home, &server, &owner).args([
        "me:tokens:list",
        "--output",
        "json",
    ]))?)?;
    let listed = row_named(&sessions, "monthly")?;
    let expires = parse_time(listed["expiresAt"].as_str().ok_or("no expiresAt")?)?;
    // Exactly the time given (the server may add milliseconds, the CLI sent none).
    assert!(
        apart(expires, parse_time(&month_later)?) < Duration::from_secs(1),
        "{listed} vs {month_later}"
    );
    assert_eq!(listed["scopes"], "");
    Ok(())
}

#[test]
fn refused_tokens_exit_non_zero_with_the_reason() -> TestResult {
    let server = Server::start()?;
    let owner = server.owner_token()?;
    let home = Home::new()?;
    let create = |token: &str, args: &[&str]| {
        let mut command = prism_with(&home, &server, token);
        command.arg("me:tokens:create").args(args);
        command
    };
    only_line(&ok(&mut create(&owner, &["--name", "ci"]))?)?;

    // The server's refusals, each as `field: message`.
    let err = refused(&mut create(&owner, &["--name", "ci"]))?;
    assert!(err.starts_with("Error: name: "), "{err}");
    let err = refused(&mut create(
        &owner,
        &["--name", "billing", "--scope", "billing:read"],
    ))?;
    assert!(err.starts_with("Error: scopes: "), "{err}");
    let err = refused(&mut create(
        &owner,
        &["--name", "past", "--expires-at", "2001-01-01T00:00:00Z"],
    ))?;
    assert!(err.starts_with("Error: expiresAt: "), "{err}");
    // The field is not asserted: docs/api.md names `serviceAccountId`, the server says `id`.
    let err = refused(&mut create(
        &owner,
        &["--name", "robot", "--service-account", "not-an-account"],
    ))?;
    assert!(err.contains("no such service account"), "{err}");
    // A Guest may not hold users:write, so cannot mint a token with it.
    let guest = server.user_token("guest@example.com", "Guest")?;
    let err = refused(&mut create(
        &guest,
        &["--name", "escalate", "--scope", "users:write"],
    ))?;
    assert!(err.starts_with("Error: scopes: "), "{err}");

    // Usage errors are caught before anything is sent: exit code 2.
    for args in [
        &["--scope", "users:read"][..],
        &["--name", "x", "--expires-in", "3"],
        &["--name", "x", "--expires-in", "soon"],
        &[
            "--name",
            "x",
            "--expires-in",
            "3d",
            "--expires-at",
            "2100-01-01T00:00:00Z",
        ],
    ] {
        let output = run(&mut create(&owner, args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }

    // None of the refusals minted anything.
    let sessions = json_rows(&ok(prism_with(&home, &server, &owner).args([
        "me:tokens:list",
        "--output",
        "json",
    ]))?)?;
    let names: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|name| *name != "ci")
        .collect();
    assert_eq!(names.len(), 1, "only the Owner's first token: {sessions:?}");
    assert_eq!(
        sessions.iter().filter(|s| s["name"] == "ci").count(),
        1,
        "{sessions:?}"
    );
    Ok(())
}

#[test]
fn service_accounts_and_their_tokens() -> TestResult {
    let server = Server::start()?;
    let owner = server.owner_token()?;
    let home = Home::new()?;
    let as_owner = || prism_with(&home, &server, &owner);
    let integrator = role_id(&home, &server, &owner, "Integrator")?;

    let id = only_line(&ok(as_owner().args([
        "service-accounts:create",
        "--name",
        "deployer",
        "--role",
        &integrator,
        "--description",
        "Deploys from CI",
    ]))?)?;

    let accounts = json_rows(&ok(as_owner().args([
        "service-accounts:list",
        "--output",
        "json",
    ]))?)?;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let listed = &accounts[0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["name"], "deployer");
    assert_eq!(listed["role"], "Integrator");
    assert_eq!(listed["description"], "Deploys from CI");
    parse_time(listed["createdAt"].as_str().ok_or("no createdAt")?)?;
    let table = ok(as_owner().arg("service-accounts:list"))?;
    let header = table.lines().next().ok_or("empty table")?;
    for column in ["Id", "Name", "Role", "Description", "Created"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains(&id) && table.contains("deployer"), "{table}");
    // Not a member among the users, and its name is taken.
    let users = ok(as_owner().args(["organization:users:list", "--columns", "name"]))?;
    assert!(!users.contains("deployer"), "{users}");
    let err = refused(as_owner().args([
        "service-accounts:create",
        "--name",
        "deployer",
        "--role",
        &integrator,
    ]))?;
    assert!(err.starts_with("Error: name: "), "{err}");

    // A token for it, minted by the Owner, works as the service account within its scope.
    let deploy = only_line(&ok(as_owner().args([
        "me:tokens:create",
        "--service-account",
        &id,
        "--name",
        "deploy-ci",
        "--scope",
        "users:read",
    ]))?)?;
    let me = ok(prism_with(&home, &server, &deploy).arg("me"))?;
    assert!(me.contains("Name: deployer"), "{me}");
    let seen = ok(prism_with(&home, &server, &deploy).args([
        "service-accounts:list",
        "--columns",
        "name",
        "--no-header",
    ]))?;
    assert_eq!(seen.trim(), "deployer");
    let err = fails(prism_with(&home, &server, &deploy).args(["service-accounts:delete", &id]))?;
    assert!(
        err.contains("this token lacks the scope users:write"),
        "{err}"
    );
    assert!(
        !err.contains("service-accounts:list"),
        "no hint about ids: {err}"
    );
    // It is the service account's token, not the Owner's.
    let owners = ok(as_owner().args(["me:tokens:list", "--columns", "name"]))?;
    assert!(!owners.contains("deploy-ci"), "{owners}");
    // Only Owners and Admins mint for a service account.
    let guest = server.user_token("guest@example.com", "Guest")?;
    let err = refused(prism_with(&home, &server, &guest).args([
        "me:tokens:create",
        "--service-account",
        &id,
        "--name",
        "guest-made",
    ]))?;
    assert!(err.len() > "Error: \n".len(), "{err}");

    // Deleted: gone from the list, its token dead, and a second delete says what to do.
    let said = ok(as_owner().args(["service-accounts:delete", &id]))?;
    assert_eq!(said.trim(), "Deleted service account 'deployer'.");
    let accounts = json_rows(&ok(as_owner().args([
        "service-accounts:list",
        "--output",
        "json",
    ]))?)?;
    assert!(accounts.is_empty(), "{accounts:?}");
    let err = fails(prism_with(&home, &server, &deploy).arg("me:token"))?;
    assert!(err.contains("Could not refresh the access token"), "{err}");
    let err = fails(as_owner().args(["service-accounts:delete", &id]))?;
    assert!(err.contains("prism service-accounts:list"), "{err}");
    Ok(())
}
