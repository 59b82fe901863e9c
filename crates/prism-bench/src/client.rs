//! A minimal keep-alive HTTP/1.1 client: pre-built request bytes out, status and body in. It
//! does the least work per request so that the load generator, which shares the machine's
//! cores with the server, takes as little CPU as it can.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn json_post(path: &str, host: &str, bearer: Option<&str>, body: &str) -> Vec<u8> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A bodiless `GET` (the verify scenarios: the proxy's question carries only headers).
pub fn get(path: &str, host: &str, bearer: Option<&str>) -> Vec<u8> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").into_bytes()
}

/// A form `POST` with an `Authorization` header (introspection's HTTP Basic client
/// credentials).
pub fn form_post_authorized(path: &str, host: &str, authorization: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn form_post(path: &str, host: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn open(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(8192),
        })
    }

    /// Sends one request and returns the response status (the body is read and dropped).
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.stream.write_all(request).await?;
        let (status, _, total) = self.read_response().await?;
        self.buffer.drain(..total);
        Ok(status)
    }

    pub async fn send_and_read(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let (status, head_end, total) = self.read_response().await?;
        let body = self.buffer[head_end + 4..total].to_vec();
        self.buffer.drain(..total);
        Ok((status, body))
    }

    /// Sends one request and returns the response's status and head (status line and
    /// headers); the body is dropped.
    pub async fn send_and_read_head(&mut self, request: &[u8]) -> anyhow::Result<(u16, String)> {
        self.stream.write_all(request).await?;
        let (status, head_end, total) = self.read_response().await?;
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..total);
        Ok((status, head))
    }

    /// Reads one whole response into the buffer and returns its status, where its head ends
    /// and where it ends; the caller takes what it needs and drains it.
    async fn read_response(&mut self) -> anyhow::Result<(u16, usize, usize)> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.buffer[..end]).context("non-UTF-8 response head")?;
                let status: u16 = head.get(9..12).context("short status line")?.parse()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .context("response without Content-Length")?;
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    self.fill().await?;
                }
                return Ok((status, end, total));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
