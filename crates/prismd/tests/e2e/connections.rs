//! Connections: oversized bodies get their readable 413 over HTTP/1.1, h2c and HTTP/2 over
//! TLS; idle connections are closed (HTTP/2 with a GOAWAY); and `--max-connections` caps how
//! many are open at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Options, Server, TestResult, temp_dir};
use crate::metrics::scraped_value;

/// curl's answer to a 2 MB body: (status, HTTP version, body, stderr).
fn curl_oversized(
    url: &str,
    extra: &[&str],
    body_file: &std::path::Path,
) -> Result<(String, String, String, String), Box<dyn std::error::Error>> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", body_file.display()))
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status_line) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = status_line.split_once(' ').unwrap_or((status_line, ""));
    Ok((
        status.to_owned(),
        version.to_owned(),
        body.to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn assert_readable_413(case: &str, answer: &(String, String, String, String), version: &str) {
    assert_readable(case, answer, version, "413", "larger than");
}

/// The refusal's status and OAuth-shaped JSON body reached the client intact.
fn assert_readable(
    case: &str,
    answer: &(String, String, String, String),
    version: &str,
    want_status: &str,
    description: &str,
) {
    let (status, got_version, body, stderr) = answer;
    assert_eq!(status, want_status, "{case}: {body} {stderr}");
    assert_eq!(got_version, version, "{case}: spoken over {got_version}");
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(json["error"], "invalid_request", "{case}: {body}");
    assert!(
        json["error_description"]
            .as_str()
            .is_some_and(|d| d.contains(description)),
        "{case}: {body}"
    );
}

#[tokio::test]
async fn oversized_bodies_get_a_readable_413_over_every_protocol() -> TestResult {
    let dir = temp_dir()?;
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b'a'; 2_000_000])?;

    let plain = Server::start(&dir.path().join("plain"))?;
    let url = plain.url("/auth/refresh");
    for (case, extra, version) in [
        ("HTTP/1.1", vec!["--http1.1"], "1.1"),
        ("h2c", vec!["--http2-prior-knowledge"], "2"),
        (
            "h2c, chunked (no length declared)",
            vec![
                "--http2-prior-knowledge",
                "-H",
                "Transfer-Encoding: chunked",
            ],
            "2",
        ),
        (
            "HTTP/1.1, chunked",
            vec!["--http1.1", "-H", "Transfer-Encoding: chunked"],
            "1.1",
        ),
    ] {
        assert_readable_413(case, &curl_oversized(&url, &extra, &big)?, version);
    }
    // Refusals that come before the body is read reach the client too: /api wants a
    // token first, and /healthz takes no POST.
    assert_readable(
        "h2c /api without a token",
        &curl_oversized(&plain.url("/api"), &["--http2-prior-knowledge"], &big)?,
        "2",
        "401",
        "Authorization: Bearer",
    );
    assert_readable(
        "h2c, a method the endpoint does not take",
        &curl_oversized(&plain.url("/healthz"), &["--http2-prior-knowledge"], &big)?,
        "2",
        "405",
        "HTTP method",
    );
    // The connection is still good for the next request.
    let health = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(plain.url("/healthz"))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");
    plain.stop()?;

    let tls_dir = dir.path().join("tls");
    let tls = Server::start_with(
        &tls_dir,
        Options {
            args: vec!["--dev-tls".into()],
            ..Options::default()
        },
    )?;
    let ca = tls_dir.join("ca.pem");
    let ca = ca.display().to_string();
    let url = tls.url("/auth/refresh");
    for (case, extra, version) in [
        ("HTTPS, HTTP/1.1", vec!["--http1.1"], "1.1"),
        ("HTTPS, HTTP/2 (ALPN)", vec!["--http2"], "2"),
    ] {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend(extra);
        assert_readable_413(case, &curl_oversized(&url, &args, &big)?, version);
    }
    // Python's ssl client (it once saw a bare EOF here).
    let python = Command::new("python3")
        .arg("-c")
        .arg(
            "import http.client, ssl, sys\n\
             context = ssl.create_default_context(cafile=sys.argv[1])\n\
             connection = http.client.HTTPSConnection(sys.argv[2], int(sys.argv[3]), context=context)\n\
             connection.request('POST', '/auth/refresh', body=b'a' * 2000000, \
             headers={'Content-Type': 'application/json'})\n\
             answer = connection.getresponse()\n\
             print(answer.status, answer.read().decode())\n",
        )
        .arg(&ca)
        .args(
            tls.base
                .trim_start_matches("https://")
                .split(':')
                .collect::<Vec<_>>(),
        )
        .output()?;
    let printed = String::from_utf8_lossy(&python.stdout);
    assert!(
        printed.starts_with("413 ") && printed.contains("larger than"),
        "python: {printed} {}",
        String::from_utf8_lossy(&python.stderr)
    );
    tls.stop()?;
    Ok(())
}

/// An HTTP/2 frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn write_frame(stream: &mut TcpStream, kind: u8, flags: u8, id: u32, payload: &[u8]) -> TestResult {
    let length = u32::try_from(payload.len())?.to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)?;
    Ok(())
}

/// The next frame, or `None` when the server closed the connection.
fn read_frame(stream: &mut TcpStream) -> Result<Option<Frame>, Box<dyn std::error::Error>> {
    let mut head = [0u8; 9];
    match stream.read_exact(&mut head) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    Ok(Some((head[3], head[4], id, payload)))
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;

/// Opens an h2c connection (prior knowledge), sends `GET /healthz` on stream 1 and reads
/// until its answer has ended.
fn h2c_one_request(address: &str) -> Result<TcpStream, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
    write_frame(&mut stream, SETTINGS, 0, 0, &[])?;
    // HPACK without Huffman: :method GET (static 2), :scheme http (6), :path (name 4) and
    // :authority (name 1) as literals without indexing.
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.push(0x01);
    block.push(u8::try_from(address.len())?);
    block.extend_from_slice(address.as_bytes());
    write_frame(&mut stream, HEADERS, END_STREAM | 0x4, 1, &block)?;
    loop {
        let (kind, flags, id, _) = read_frame(&mut stream)?.ok_or("closed before the answer")?;
        if kind == SETTINGS && flags & ACK == 0 {
            write_frame(&mut stream, SETTINGS, ACK, 0, &[])?;
        }
        if id == 1 && (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 {
            return Ok(stream);
        }
    }
}

#[tokio::test]
async fn idle_http2_and_http1_connections_are_closed() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            // The header timer (which also ends idle HTTP/1 connections) is kept long, so
            // that only the idle timeout can close them here.
            args: ["--idle-timeout", "1s", "--header-read-timeout", "5m"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    )?;
    let address = server.base.trim_start_matches("http://").to_owned();

    // HTTP/2: after one answered request and silence, a GOAWAY, then the end of the
    // connection (the read timeout of 30 s would fail the test first).
    let mut h2 = h2c_one_request(&address)?;
    let mut saw_goaway = false;
    while let Some((kind, flags, _, payload)) = read_frame(&mut h2)? {
        if kind == GOAWAY {
            saw_goaway = true;
            // Error code NO_ERROR: a graceful close, not a protocol failure.
            assert_eq!(payload.get(4..8), Some(&[0u8, 0, 0, 0][..]), "{payload:?}");
        }
        if kind == PING && flags & ACK == 0 {
            write_frame(&mut h2, PING, ACK, 0, &payload)?;
        }
    }
    assert!(saw_goaway, "an idle HTTP/2 connection ends with a GOAWAY");

    // HTTP/1.1 keep-alive: answered, then closed while idle.
    let mut h1 = TcpStream::connect(&address)?;
    h1.set_read_timeout(Some(Duration::from_secs(30)))?;
    h1.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = h1.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.contains("Connection: close"),
        "kept alive, then closed: {answer}"
    );
    server.stop()?;
    Ok(())
}

/// Sends `GET /healthz` on a new HTTP/1.1 keep-alive connection and returns it, open, with
/// the answer's status line; `None` when the server closed it without answering.
fn h1_open(address: &str) -> Result<Option<(TcpStream, String)>, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    if stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .is_err()
    {
        return Ok(None);
    }
    let mut buffer = [0u8; 4096];
    match stream.read(&mut buffer) {
        Ok(0) => Ok(None),
        Ok(read) => {
            let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
            let status = text.lines().next().unwrap_or_default().to_owned();
            Ok(Some((stream, status)))
        }
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// One series on the separate metrics listener (the main one may be full).
async fn metric(server: &Server, name: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let url = server.metrics_url.as_deref().ok_or("no metrics listener")?;
    let base = url.strip_suffix("/metrics").unwrap_or(url);
    scraped_value(&server.http, base, name).await
}

#[tokio::test]
async fn the_connection_cap_closes_connections_beyond_it() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            // /metrics on a listener of its own: the main one is full during the test.
            args: ["--max-connections", "2", "--metrics-listen", "127.0.0.1:0"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        },
    )?;
    let address = server.base.trim_start_matches("http://").to_owned();
    assert_eq!(
        metric(&server, "prismd_http_connections_refused_total").await?,
        0.0
    );

    let (first, status) = h1_open(&address)?.ok_or("the first connection was refused")?;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_second, status) = h1_open(&address)?.ok_or("the second connection was refused")?;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(metric(&server, "prismd_http_connections_open").await?, 2.0);

    assert!(
        h1_open(&address)?.is_none(),
        "a third connection must be closed at once"
    );
    assert_eq!(
        metric(&server, "prismd_http_connections_refused_total").await?,
        1.0
    );
    assert!(
        server
            .logs()
            .contains("the connection cap (--max-connections) is reached"),
        "the operator is told"
    );

    // Once one ends, a new connection is served again (its end reaches the server a moment
    // after the close here).
    drop(first);
    let mut served = None;
    for _ in 0..100 {
        if let Some((_, status)) = h1_open(&address)? {
            served = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.as_deref(), Some("HTTP/1.1 200 OK"));
    server.stop()?;
    Ok(())
}
