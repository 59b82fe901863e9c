//! Environment mode, profile mode, when a stored access token is refreshed (only when it is
//! missing, expired or expires within the CLI's 300 s margin) and when it is used as is,
//! revoke, config interop in both directions and the config file's permissions.
//!
//! Whether a command refreshed is read from the server, not guessed from the outcome:
//! `prismd_tokens_refreshed_total` on its `/metrics` counts the refresh-token exchanges it
//! answered. Stale access tokens are unsigned fakes, so a command that succeeds with one
//! cannot have sent it to the server.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::harness::{
    Home, Res, Server, TestResult, fails, fake_jwt, now, official_config, ok, run, stderr, stdout,
};

/// The refresh-token exchanges `server` has answered with an access token so far.
fn refreshes(server: &Server) -> Res<u64> {
    let mut response = server
        .browser()?
        .get(format!("{}/metrics", server.base))
        .call()?;
    let text = response.body_mut().read_to_string()?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("prismd_tokens_refreshed_total "))
        .ok_or("no prismd_tokens_refreshed_total in /metrics")?;
    Ok(value.trim().parse()?)
}

/// An access token for `token`, from `me:token` in environment mode (one refresh).
fn access_for(home: &Home, server: &Server, token: &str) -> Res<String> {
    let printed = ok(home
        .prism(server)
        .arg("me:token")
        .env("PRISM_REFRESH_TOKEN", token))?;
    Ok(printed.trim().to_owned())
}

/// Access tokens the CLI must refresh before use although they carry a refresh token beside
/// them: one that has expired, and one still valid but within the 300 s margin. The minute
/// and two on either side of the margin leave room for the time a command takes to start.
fn stale_tokens() -> [(&'static str, String); 2] {
    [
        ("expired", fake_jwt(now() - 60)),
        ("expiring within the margin", fake_jwt(now() + 300 - 120)),
    ]
}

#[test]
fn environment_mode_prints_me_and_tokens_and_writes_nothing() -> TestResult {
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    let me = ok(home
        .prism(&server)
        .arg("me")
        .env("PRISM_REFRESH_TOKEN", &token))?;
    for line in [
        "Name: Owner",
        "Email: owner@localhost",
        "Organization: My Organization",
        "Authentication: Environment",
        &format!("Endpoint URL: {}", server.base),
    ] {
        assert!(me.contains(line), "missing {line:?} in {me}");
    }
    assert!(me.contains("Tenant ID: "), "{me}");
    assert!(!me.contains("Profile:"), "{me}");

    let access = ok(home
        .prism(&server)
        .arg("me:token")
        .env("PRISM_REFRESH_TOKEN", &token))?;
    assert_eq!(access.trim().split('.').count(), 3, "{access}");
    let refresh = ok(home
        .prism(&server)
        .args(["me:token", "-t", "refresh"])
        .env("PRISM_REFRESH_TOKEN", &token))?;
    assert_eq!(refresh.trim(), token);

    // An access token alone is used as is.
    let me = ok(home
        .prism(&server)
        .arg("me")
        .env("PRISM_ACCESS_TOKEN", access.trim())
        .env("PRISM_REFRESH_TOKEN", ""))?;
    assert!(me.contains("Email: owner@localhost"), "{me}");
    // ... and has no refresh token to show.
    let err = fails(
        home.prism(&server)
            .args(["me:token", "--type", "refresh"])
            .env("PRISM_ACCESS_TOKEN", access.trim()),
    )?;
    assert!(err.contains("no refresh token"), "{err}");

    // Environment credentials are never written to disk.
    assert!(!home.config().exists());
    assert!(!home.dir.path().join(".config").exists());
    Ok(())
}

#[test]
fn profile_in_the_official_format_is_read_and_refreshed_in_place() -> TestResult {
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    // What the official client writes: mode 0644 and an access token about to expire.
    let expiring = fake_jwt(now() + 60);
    home.write_config(
        &official_config("work", &expiring, &token, &server.base),
        0o644,
    )?;

    let before = refreshes(&server)?;
    let output = run(home.prism(&server).arg("me"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        refreshes(&server)?,
        before + 1,
        "the expiring token was refreshed"
    );
    let me = stdout(&output);
    assert!(me.contains("Authentication: Profile"), "{me}");
    assert!(me.contains("Profile: work"), "{me}");
    // The file was readable by others: warned, and rewritten private.
    assert!(
        stderr(&output).contains("readable by other users"),
        "{}",
        stderr(&output)
    );
    let mode = std::fs::metadata(home.config())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The refreshed access token was saved, in the same layout.
    let config = home.read_config()?;
    let profile = &config["profiles"]["work"];
    let saved = profile["accessToken"].as_str().ok_or("no accessToken")?;
    assert_ne!(saved, expiring);
    assert_eq!(saved.split('.').count(), 3);
    assert_eq!(profile["refreshToken"], token.as_str());
    assert_eq!(profile["expiresIn"], 604800);
    assert_eq!(profile["tokenType"], "Bearer");
    assert_eq!(profile["prismaticUrl"], server.base.as_str());
    assert_eq!(config["version"], 1);
    assert_eq!(config["defaultProfile"], "work");

    // A valid stored token is printed without a refresh.
    let printed = ok(home.prism(&server).arg("me:token"))?;
    assert_eq!(printed.trim(), saved);
    assert_eq!(
        refreshes(&server)?,
        before + 1,
        "the saved token was refreshed again"
    );
    Ok(())
}

#[test]
fn stored_valid_token_needs_no_network_and_flat_layout_is_read() -> TestResult {
    let home = Home::new()?;
    let access = fake_jwt(now() + 3600);
    // The older flat layout, no URL: the default URL, which is never contacted.
    home.write_config(
        &format!(
            "accessToken: {access}\nexpiresIn: 604800\nrefreshToken: prism_rt_x\nscope: s\ntokenType: Bearer\n"
        ),
        0o600,
    )?;
    let printed = ok(home.bare().arg("me:token"))?;
    assert_eq!(printed.trim(), access);
    let refresh = ok(home.bare().args(["me:token", "-t", "refresh"]))?;
    assert_eq!(refresh.trim(), "prism_rt_x");
    // A profile without a URL takes PRISMATIC_URL (never contacted here).
    let printed = ok(home
        .bare()
        .arg("me:token")
        .env("PRISMATIC_URL", "https://127.0.0.1:9"))?;
    assert_eq!(printed.trim(), access);
    Ok(())
}

#[test]
fn prismatic_url_must_match_the_profile() -> TestResult {
    let home = Home::new()?;
    home.write_config(
        &official_config("default", &fake_jwt(now() + 3600), "r", "https://a.example"),
        0o600,
    )?;
    let err = fails(
        home.bare()
            .arg("me:token")
            .env("PRISMATIC_URL", "https://b.example"),
    )?;
    assert!(
        err.contains("PRISMATIC_URL does not match profile 'default'."),
        "{err}"
    );
    // Same URL with a trailing slash is the same URL; an empty value is unset.
    ok(home
        .bare()
        .arg("me:token")
        .env("PRISMATIC_URL", "https://a.example/"))?;
    ok(home.bare().arg("me:token").env("PRISMATIC_URL", ""))?;
    Ok(())
}

#[test]
fn refreshes_only_when_expired_or_expiring_in_environment_mode() -> TestResult {
    // Access tokens live the default 7 days: far outside the refresh margin.
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    let env_prism = |access: Option<&str>| {
        let mut command = home.prism(&server);
        command.env("PRISM_REFRESH_TOKEN", &token);
        if let Some(access) = access {
            command.env("PRISM_ACCESS_TOKEN", access);
        }
        command
    };

    // A refresh token alone is exchanged.
    let before = refreshes(&server)?;
    let access = ok(env_prism(None).arg("me:token"))?.trim().to_owned();
    assert_eq!(refreshes(&server)?, before + 1);
    // A valid access token beside it is used as is, by `me:token` and by `me`.
    assert_eq!(ok(env_prism(Some(&access)).arg("me:token"))?.trim(), access);
    let me = ok(env_prism(Some(&access)).arg("me"))?;
    assert!(me.contains("owner@localhost"), "{me}");
    // So is one outside the margin by two minutes (never sent: `me:token` only prints).
    let outside = fake_jwt(now() + 300 + 120);
    assert_eq!(
        ok(env_prism(Some(&outside)).arg("me:token"))?.trim(),
        outside
    );
    assert_eq!(
        refreshes(&server)?,
        before + 1,
        "a valid token was refreshed"
    );

    // An expired or expiring one is replaced, one refresh per command.
    let mut expected = before + 1;
    for (what, stale) in stale_tokens() {
        let printed = ok(env_prism(Some(&stale)).arg("me:token"))?;
        assert_ne!(printed.trim(), stale, "{what}");
        assert_eq!(printed.trim().split('.').count(), 3, "{what}: {printed}");
        let me = ok(env_prism(Some(&stale)).arg("me"))?;
        assert!(me.contains("owner@localhost"), "{what}: {me}");
        expected += 2;
        assert_eq!(refreshes(&server)?, expected, "{what}");
    }
    assert!(!home.config().exists());
    Ok(())
}

#[test]
fn refreshes_only_when_expired_or_expiring_in_profile_mode() -> TestResult {
    let server = Server::start()?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    let valid = access_for(&home, &server, &token)?;
    let stored = |home: &Home| -> Res<String> {
        Ok(home.read_config()?["profiles"]["default"]["accessToken"]
            .as_str()
            .ok_or("no accessToken")?
            .to_owned())
    };

    // A valid stored token is used as is: no refresh, the file untouched.
    home.write_config(
        &official_config("default", &valid, &token, &server.base),
        0o600,
    )?;
    let before = refreshes(&server)?;
    let me = ok(home.prism(&server).arg("me"))?;
    assert!(me.contains("owner@localhost"), "{me}");
    assert_eq!(ok(home.prism(&server).arg("me:token"))?.trim(), valid);
    assert_eq!(
        refreshes(&server)?,
        before,
        "a valid stored token was refreshed"
    );
    assert_eq!(stored(&home)?, valid);

    // An expired or expiring stored token is refreshed once and the new one saved; the next
    // commands use the saved one as is.
    let mut expected = before;
    for (what, stale) in stale_tokens() {
        home.write_config(
            &official_config("default", &stale, &token, &server.base),
            0o600,
        )?;
        let me = ok(home.prism(&server).arg("me"))?;
        assert!(me.contains("owner@localhost"), "{what}: {me}");
        let saved = stored(&home)?;
        assert_ne!(saved, stale, "{what}");
        expected += 1;
        assert_eq!(refreshes(&server)?, expected, "{what}");
        ok(home.prism(&server).arg("me"))?;
        assert_eq!(ok(home.prism(&server).arg("me:token"))?.trim(), saved);
        assert_eq!(
            refreshes(&server)?,
            expected,
            "{what}: the saved token was refreshed"
        );
        assert_eq!(stored(&home)?, saved, "{what}");
    }
    Ok(())
}

#[test]
fn a_token_the_server_let_expire_is_refused_alone_and_refreshed_with_its_refresh_token()
-> TestResult {
    // A real token that really expires: a one-second lifetime, and a wait for the server to
    // refuse it rather than a fixed sleep.
    let server = Server::start_with(&["--access-token-ttl", "1s"])?;
    let token = server.owner_token()?;
    let home = Home::new()?;
    let access = access_for(&home, &server, &token)?;
    // Alone (nothing to refresh it with), the expired token is refused with a hint.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let output = run(home
            .prism(&server)
            .arg("me")
            .env("PRISM_ACCESS_TOKEN", &access));
        if !output.status.success() {
            break stderr(&output);
        }
        if Instant::now() > deadline {
            return Err("the server still accepts a 1 s token after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        refused.contains("Not authenticated. Run 'prism login' or select another profile."),
        "{refused}"
    );
    // With its refresh token it is replaced.
    let before = refreshes(&server)?;
    let me = ok(home
        .prism(&server)
        .arg("me")
        .env("PRISM_ACCESS_TOKEN", &access)
        .env("PRISM_REFRESH_TOKEN", &token))?;
    assert!(me.contains("owner@localhost"), "{me}");
    assert_eq!(refreshes(&server)?, before + 1);
    assert!(!home.config().exists());
    Ok(())
}

#[test]
fn revoke_deletes_the_profile_and_kills_the_tokens() -> TestResult {
    let server = Server::start()?;
    let token = server.user_token("ci@example.com", "Integrator")?;
    let home = Home::new()?;
    home.write_config(&official_config("default", "", &token, &server.base), 0o600)?;

    // Saying no revokes nothing.
    let err = fails(
        home.prism(&server)
            .arg("me:token:revoke")
            .write_stdin("no\n"),
    )?;
    assert!(err.contains("Continue? (yes/no)"), "{err}");
    assert!(err.contains("Nothing was revoked."), "{err}");
    let access = ok(home.prism(&server).arg("me:token"))?;

    let out = ok(home
        .prism(&server)
        .arg("me:token:revoke")
        .write_stdin("yes\n"))?;
    assert!(
        out.contains("All refresh tokens for your user have been revoked."),
        "{out}"
    );
    // The last profile is gone, so is the file.
    assert!(!home.config().exists());
    let err = fails(home.prism(&server).arg("me"))?;
    assert!(err.contains("Not logged in: run 'prism login'"), "{err}");
    // The refresh token and the access token issued before stop working at once.
    let err = fails(
        home.prism(&server)
            .arg("me")
            .env("PRISM_REFRESH_TOKEN", &token),
    )?;
    assert!(err.contains("Could not refresh the access token"), "{err}");
    assert!(err.contains("PRISM_REFRESH_TOKEN"), "{err}");
    assert!(!err.contains(&token), "the token leaked into: {err}");
    let err = fails(
        home.prism(&server)
            .arg("me")
            .env("PRISM_ACCESS_TOKEN", access.trim()),
    )?;
    assert!(err.contains("Not authenticated"), "{err}");
    // Revoking needs a working session.
    let err = fails(
        home.prism(&server)
            .args(["me:token:revoke", "--no-confirm"])
            .env("PRISM_REFRESH_TOKEN", &token),
    )?;
    assert!(err.contains("You are not currently logged in."), "{err}");
    Ok(())
}

#[test]
fn profiles_list_use_delete() -> TestResult {
    let home = Home::new()?;
    let yaml = format!(
        "version: 1\ndefaultProfile: a\nprofiles:\n  a:\n    accessToken: {}\n    expiresIn: 1\n    refreshToken: ra\n    scope: s\n    tokenType: Bearer\n    prismaticUrl: https://a.example\n  b:\n    accessToken: {}\n    expiresIn: 1\n    refreshToken: rb\n    scope: s\n    tokenType: Bearer\n    tenantId: t-b\n    prismaticUrl: https://b.example\n",
        fake_jwt(now() + 3600),
        fake_jwt(now() + 3600)
    );
    home.write_config(&yaml, 0o600)?;
    let list = ok(home.bare().args(["profiles:list", "--csv", "-x"]))?;
    assert_eq!(
        list,
        "Name,URL,Tenant ID,Default\na,https://a.example,,*\nb,https://b.example,t-b,\n"
    );
    ok(home.bare().args(["profiles:use", "b"]))?;
    assert_eq!(home.read_config()?["defaultProfile"], "b");
    assert_eq!(
        ok(home.bare().args(["me:token", "-t", "refresh"]))?.trim(),
        "rb"
    );
    // --profile and PRISM_PROFILE select another.
    assert_eq!(
        ok(home
            .bare()
            .args(["me:token", "-t", "refresh", "--profile", "a"]))?
        .trim(),
        "ra"
    );
    assert_eq!(
        ok(home
            .bare()
            .args(["me:token", "-t", "refresh"])
            .env("PRISM_PROFILE", "a"))?
        .trim(),
        "ra"
    );
    let err = fails(home.bare().args(["me", "--profile", "zzz"]))?;
    assert!(err.contains("Profile 'zzz' does not exist"), "{err}");
    let err = fails(home.bare().args(["profiles:use", "zzz"]))?;
    assert!(err.contains("the profiles are: a, b"), "{err}");

    ok(home.bare().args(["profiles:delete", "a"]))?;
    ok(home.bare().args(["logout"]))?;
    assert!(
        !home.config().exists(),
        "deleting the last profile deletes the file"
    );
    let err = fails(home.bare().arg("logout"))?;
    assert!(err.contains("Not logged in to 'default'"), "{err}");
    Ok(())
}
