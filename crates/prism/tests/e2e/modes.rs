//! Environment mode, profile mode, refresh across an expiry, revoke, config interop in both
//! directions and the config file's permissions.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{
    Home, Server, TestResult, fails, fake_jwt, now, official_config, ok, run, stderr, stdout,
};

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

    let output = run(home.prism(&server).arg("me"));
    assert!(output.status.success(), "{}", stderr(&output));
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

    // A valid stored token is printed without any network access.
    let printed = ok(home.prism(&server).arg("me:token"))?;
    assert_eq!(printed.trim(), saved);
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
fn refreshes_across_an_expiry_in_both_modes() -> TestResult {
    let server = Server::start_with(&["--access-token-ttl", "2s"])?;
    let token = server.owner_token()?;
    let home = Home::new()?;

    // Environment mode: an expired access token with a refresh token is refreshed.
    let access = ok(home
        .prism(&server)
        .arg("me:token")
        .env("PRISM_REFRESH_TOKEN", &token))?;
    std::thread::sleep(std::time::Duration::from_millis(3100));
    // Alone, the expired token is refused with a hint...
    let err = fails(
        home.prism(&server)
            .arg("me")
            .env("PRISM_ACCESS_TOKEN", access.trim()),
    )?;
    assert!(
        err.contains("Not authenticated. Run 'prism login' or select another profile."),
        "{err}"
    );
    // ... with the refresh token it is replaced.
    let me = ok(home
        .prism(&server)
        .arg("me")
        .env("PRISM_ACCESS_TOKEN", access.trim())
        .env("PRISM_REFRESH_TOKEN", &token))?;
    assert!(me.contains("owner@localhost"), "{me}");
    assert!(!home.config().exists());

    // Profile mode: the stored token expires, the next command refreshes and saves.
    home.write_config(
        &official_config("default", access.trim(), &token, &server.base),
        0o600,
    )?;
    ok(home.prism(&server).arg("me"))?;
    let first = home.read_config()?["profiles"]["default"]["accessToken"].clone();
    assert_ne!(first, access.trim());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    ok(home.prism(&server).arg("me"))?;
    let second = home.read_config()?["profiles"]["default"]["accessToken"].clone();
    assert_ne!(first, second);
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
