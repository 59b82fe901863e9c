//! Signing in: the browser login (authorization code with PKCE S256, a random `state`, a
//! loopback listener on a port in 59400–59450) and the device authorization grant (RFC 8628)
//! when the server's metadata offers it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use prism_proto::wire::TokenResponse;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::session::{Ctx, Meta};

/// The scopes the official client asks for.
pub const SCOPE: &str = "openid profile email offline_access";
/// The loopback ports the official client uses.
pub const PORTS: std::ops::RangeInclusive<u16> = 59400..=59450;
/// How long to wait for the browser.
const BROWSER_WAIT: Duration = Duration::from_secs(180);

fn random_b64(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::new("the operating system's random number generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// PKCE S256: `(verifier, challenge)`.
pub fn pkce() -> Result<(String, String)> {
    let verifier = random_b64(32)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    Ok((verifier, challenge))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes one `application/x-www-form-urlencoded` value.
pub fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameters of a request target such as `/?code=..&state=..`.
pub fn query_params(target: &str) -> Vec<(String, String)> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn bind_loopback() -> Result<(TcpListener, u16)> {
    for port in PORTS {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok((listener, port));
        }
    }
    Err(Error::new(format!(
        "no free loopback port in {}–{} for the login redirect; close other 'prism login' runs and try again.",
        PORTS.start(),
        PORTS.end()
    )))
}

fn respond(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>prism</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><p>{message}</p></body></html>"
    );
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Reads the request line of one HTTP request; returns its target.
fn read_target(stream: &mut TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    (method == "GET").then(|| target.to_owned())
}

/// Waits for the redirect carrying `code` and `state`; answers the browser.
fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::new(format!("cannot wait for the login redirect: {e}")))?;
    let deadline = Instant::now() + BROWSER_WAIT;
    while Instant::now() < deadline {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
                continue;
            }
            Err(e) => return Err(Error::new(format!("the login listener failed: {e}"))),
        };
        let Some(target) = read_target(&mut stream) else {
            continue;
        };
        let params = query_params(&target);
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(error) = get("error") {
            respond(
                &mut stream,
                "400 Bad Request",
                "Login failed. Return to your terminal.",
            );
            let description = get("error_description").unwrap_or_default();
            return Err(Error::new(format!(
                "The server refused the login ({error}: {description}); run 'prism login' again."
            )));
        }
        let Some(code) = get("code") else {
            respond(&mut stream, "404 Not Found", "Waiting for the login.");
            continue;
        };
        if get("state").as_deref() != Some(state) {
            respond(
                &mut stream,
                "400 Bad Request",
                "Login aborted: the response did not match this login. Return to your terminal.",
            );
            return Err(Error::new(
                "The login redirect carried the wrong state, so it was not started by this \
                 'prism login' (possible cross-site request forgery); nothing was saved. Run \
                 'prism login' again.",
            ));
        }
        respond(
            &mut stream,
            "200 OK",
            "You are logged in to prism. You can close this window and return to your terminal.",
        );
        return Ok(code);
    }
    Err(Error::new(
        "Timed out after 3 minutes waiting for the browser; run 'prism login' again.",
    ))
}

fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The browser login; returns the tokens.
pub fn browser(ctx: &Ctx, meta: &Meta, print_url: bool) -> Result<TokenResponse> {
    let (verifier, challenge) = pkce()?;
    let state = random_b64(16)?;
    let (listener, port) = bind_loopback()?;
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let url = format!(
        "{}?response_type=code&code_challenge={challenge}&code_challenge_method=S256\
         &client_id={}&redirect_uri={}&scope={}&state={state}&audience={}",
        meta.auth_url("/authorize"),
        encode(&meta.client_id),
        encode(&redirect_uri),
        encode(SCOPE),
        encode(&meta.audience),
    );
    if print_url {
        println!("{url}");
    } else {
        let opened = open_browser(&url);
        if !ctx.quiet || !opened {
            eprintln!("Opening the login page in your browser. If it does not open, visit:\n{url}");
        }
    }
    let code = wait_for_code(&listener, &state)?;
    meta.token_request(
        &ctx.http,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &meta.client_id),
            ("code_verifier", &verifier),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
        ],
    )
    .map_err(|e| {
        Error::new(format!(
            "The login code was not accepted ({e}); run 'prism login' again."
        ))
    })
}

/// The device authorization grant (RFC 8628), when the server's metadata lists a
/// `device_authorization_endpoint`.
pub fn device(ctx: &Ctx, meta: &Meta) -> Result<TokenResponse> {
    let metadata_url = meta.auth_url("/.well-known/oauth-authorization-server");
    let reply = ctx.http.get(&metadata_url)?;
    let metadata: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    let Some(endpoint) = metadata["device_authorization_endpoint"]
        .as_str()
        .filter(|_| reply.status == 200)
    else {
        return Err(Error::new(
            "Device login (--device) is not supported by this server yet (its metadata lists no \
             device_authorization_endpoint). Log in with 'prism login' on a machine with a \
             browser, or use a refresh token: PRISM_REFRESH_TOKEN=... prism me",
        ));
    };
    let reply = ctx.http.post_form(
        endpoint,
        &[("client_id", &meta.client_id), ("scope", SCOPE)],
    )?;
    let start: serde_json::Value = serde_json::from_str(&reply.body).map_err(|_| {
        Error::new(format!(
            "{endpoint} answered HTTP {} without JSON.",
            reply.status
        ))
    })?;
    if reply.status != 200 {
        return Err(Error::new(format!(
            "{endpoint} refused the device login: {} {}",
            start["error"].as_str().unwrap_or(""),
            start["error_description"].as_str().unwrap_or("")
        )));
    }
    let field = |name: &str| {
        start[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::new(format!("{endpoint} returned no {name}")))
    };
    let device_code = field("device_code")?;
    let user_code = field("user_code")?;
    let verification = field("verification_uri_complete").or_else(|_| field("verification_uri"))?;
    let expires_in = start["expires_in"].as_u64().unwrap_or(600);
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    println!("Open this URL on any device and sign in:\n{verification}");
    println!("Check that the page shows this code: {user_code}");
    let deadline = Instant::now() + Duration::from_secs(expires_in);
    loop {
        std::thread::sleep(Duration::from_secs(interval));
        if Instant::now() > deadline {
            return Err(Error::new(
                "The code expired before it was approved; run 'prism login --device' again.",
            ));
        }
        let outcome = meta.token_call(
            &ctx.http,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", &meta.client_id),
            ],
        )?;
        match outcome {
            Ok(tokens) => return Ok(tokens),
            Err(body) => match body.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += 5,
                "expired_token" => {
                    return Err(Error::new(
                        "The code expired before it was approved; run 'prism login --device' again.",
                    ));
                }
                "access_denied" => {
                    return Err(Error::new("The login was denied on the verification page."));
                }
                other => {
                    return Err(Error::new(format!(
                        "Device login failed ({other}: {}).",
                        body.error_description
                    )));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_verifier() -> Result<()> {
        let (verifier, challenge) = pkce()?;
        assert_eq!(verifier.len(), 43);
        assert_eq!(challenge.len(), 43);
        assert_ne!(verifier, challenge);
        Ok(())
    }

    #[test]
    fn parses_redirect_queries() {
        let params = query_params("/?code=a%2Bb&state=x+y&bad=%zz");
        assert_eq!(
            params,
            vec![
                ("code".to_owned(), "a+b".to_owned()),
                ("state".to_owned(), "x y".to_owned()),
                ("bad".to_owned(), "%zz".to_owned()),
            ]
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
