//! The browser login end to end, with the test playing the browser over HTTP: `prism login
//! --url` prints the authorize URL, the test opens the login form, posts the Owner's
//! credentials with the CSRF field and cookie, and follows the redirect to the CLI's loopback
//! port. And the device login end to end, with the test approving the code on the server's
//! verification page.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::harness::{Home, PRISM, Res, Server, TestResult, ok};

/// Decoded query parameters of a URL.
pub fn query(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(value: &str) -> String {
    let bytes = value.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Plays the browser: opens `authorize_url`, signs in, returns the redirect's Location.
pub fn sign_in(server: &Server, authorize_url: &str, email: &str, password: &str) -> Res<String> {
    let browser = server.browser()?;
    let mut page = browser.get(authorize_url).call()?;
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        // Over HTTPS the server's cookies carry the __Host- prefix.
        .find(|line| line.starts_with("__Host-prism_csrf="))
        .and_then(|line| line.split(';').next())
        .ok_or("no __Host-prism_csrf cookie")?
        .to_owned();
    let body = page.body_mut().read_to_string()?;
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no csrf field")?
        .to_owned();
    let mut form: Vec<(String, String)> = vec![
        ("csrf".into(), csrf),
        ("email".into(), email.into()),
        ("password".into(), password.into()),
    ];
    form.extend(query(authorize_url));
    let posted = browser
        .post(server.base.clone() + "/authorize")
        .header("cookie", &cookie)
        .send_form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    assert_eq!(posted.status().as_u16(), 303, "the login form was refused");
    Ok(posted
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location")?
        .to_owned())
}

/// Starts `prism login --url` and returns the child and the URL it printed.
fn start_login(
    server: &Server,
    home: &Home,
    extra: &[&str],
) -> Res<(
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
)> {
    let mut child = Command::new(PRISM)
        .args(["login", "--url"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.dir.path())
        .env("PRISMATIC_URL", &server.base)
        .env("NODE_EXTRA_CA_CERTS", server.ca())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    Ok((child, out, line.trim().to_owned()))
}

#[test]
fn browser_login_end_to_end() -> TestResult {
    let server = Server::start()?;
    let home = Home::new()?;
    let (child, mut out, url) = start_login(&server, &home, &[])?;
    assert!(
        url.starts_with(&format!("{}/authorize?", server.base)),
        "{url}"
    );
    let params = query(&url);
    assert_eq!(param(&params, "code_challenge_method"), Some("S256"));
    assert_eq!(param(&params, "response_type"), Some("code"));
    assert_eq!(
        param(&params, "scope"),
        Some("openid profile email offline_access")
    );
    let redirect = param(&params, "redirect_uri").ok_or("no redirect_uri")?;
    let port: u16 = redirect
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()?;
    assert!((59400..=59450).contains(&port), "{redirect}");
    assert!(param(&params, "state").is_some_and(|s| s.len() >= 20));

    let location = sign_in(&server, &url, "owner@localhost", &server.owner_password()?)?;
    assert!(location.starts_with(redirect), "{location}");
    // The browser follows the redirect to the CLI.
    let answer = ureq::get(&location).call()?;
    assert_eq!(answer.status().as_u16(), 200);

    let output = child.wait_with_output()?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(rest.trim(), "Logged in to 'default'.");

    // The profile is in the official layout, private.
    let config = home.read_config()?;
    assert_eq!(config["version"], 1);
    assert_eq!(config["defaultProfile"], "default");
    let profile = &config["profiles"]["default"];
    for key in [
        "accessToken",
        "refreshToken",
        "scope",
        "tokenType",
        "tenantId",
    ] {
        assert!(
            profile[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}"
        );
    }
    assert_eq!(profile["prismaticUrl"], server.base.as_str());
    assert!(profile["expiresIn"].as_u64().is_some());
    let file_mode = std::fs::metadata(home.config())?.permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(home.config().parent().ok_or("no dir")?)?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((file_mode, dir_mode), (0o600, 0o700));

    // The profile works, and a second login notices it.
    let me = ok(home.prism(&server).arg("me"))?;
    assert!(me.contains("Profile: default"), "{me}");
    assert!(me.contains("Email: owner@localhost"), "{me}");
    let again = ok(home.prism(&server).arg("login"))?;
    assert_eq!(again.trim(), "Already logged in to 'default'.");
    Ok(())
}

#[test]
fn login_with_a_forged_state_saves_nothing() -> TestResult {
    let server = Server::start()?;
    let home = Home::new()?;
    let (child, _out, url) = start_login(&server, &home, &["--profile", "x"])?;
    let location = sign_in(&server, &url, "owner@localhost", &server.owner_password()?)?;
    let state = param(&query(&location), "state")
        .ok_or("no state")?
        .to_owned();
    let forged = location.replace(&format!("state={state}"), "state=forged");
    let answer = ureq::get(&forged)
        .config()
        .http_status_as_error(false)
        .build()
        .call()?;
    assert_eq!(answer.status().as_u16(), 400);
    let output = child.wait_with_output()?;
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("wrong state"), "{err}");
    assert!(!home.config().exists());
    Ok(())
}

/// Plays the person on the verification page: opens it, signs in and approves the code.
fn approve_device(
    server: &Server,
    verification_url: &str,
    email: &str,
    password: &str,
) -> TestResult {
    let browser = server.browser()?;
    let mut page = browser.get(verification_url).call()?;
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|line| line.starts_with("__Host-prism_device_csrf="))
        .and_then(|line| line.split(';').next())
        .ok_or("no device CSRF cookie")?
        .to_owned();
    let body = page.body_mut().read_to_string()?;
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no csrf field")?
        .to_owned();
    let user_code = param(&query(verification_url), "user_code")
        .ok_or("no user_code in the URL")?
        .to_owned();
    let mut done = browser
        .post(server.base.clone() + "/device")
        .header("cookie", &cookie)
        .send_form([
            ("csrf", csrf.as_str()),
            ("user_code", user_code.as_str()),
            ("email", email),
            ("password", password),
            ("action", "approve"),
        ])?;
    let page = done.body_mut().read_to_string()?;
    assert!(page.contains("Device signed in"), "{page}");
    Ok(())
}

#[test]
fn device_login_end_to_end() -> TestResult {
    let server = Server::start()?;
    let home = Home::new()?;
    let mut child = Command::new(PRISM)
        .args(["login", "--device"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.dir.path())
        .env("PRISMATIC_URL", &server.base)
        .env("NODE_EXTRA_CA_CERTS", server.ca())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut printed = String::new();
    let verification = loop {
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            return Err(format!("prism printed no verification URL: {printed}").into());
        }
        printed.push_str(&line);
        if let Some(start) = line.find("https://") {
            break line[start..].trim().to_owned();
        }
    };
    assert!(
        verification.contains("/device?user_code="),
        "{verification}"
    );
    approve_device(
        &server,
        &verification,
        "owner@localhost",
        &server.owner_password()?,
    )?;
    let output = child.wait_with_output()?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    assert!(
        output.status.success(),
        "{printed}{rest}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(rest.contains("Logged in to 'default'."), "{rest}");
    // The profile works: `me` answers with the Owner.
    let me = ok(home.prism(&server).arg("me"))?;
    assert!(me.contains("Email: owner@localhost"), "{me}");
    let mode = std::fs::metadata(home.config())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    Ok(())
}
