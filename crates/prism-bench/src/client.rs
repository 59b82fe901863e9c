//! A minimal keep-alive HTTP/1.1 client, over plain TCP or TLS: pre-built request bytes out,
//! status and body in. It does the least work per request so that the load generator, which
//! shares the machine's cores with the server, takes as little CPU as it can.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where connections go: an address, spoken to in plain HTTP or over TLS.
#[derive(Clone)]
pub struct Endpoint {
    pub address: String,
    tls: Option<TlsConnector>,
}

impl Endpoint {
    pub fn plain(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            tls: None,
        }
    }

    /// TLS (rustls on aws-lc-rs, prismd's own provider), trusting only the CA in `ca_pem`:
    /// the certificate is verified as a real client would, once per connection.
    pub fn tls(address: &str, ca_pem: &Path) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem)
            .with_context(|| format!("cannot read {}", ca_pem.display()))?
        {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            address: address.to_owned(),
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

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
    stream: Stream,
    buffer: Vec<u8>,
}

impl Connection {
    /// A plain HTTP connection to `address`.
    pub async fn open(address: &str) -> anyhow::Result<Self> {
        Self::connect(&Endpoint::plain(address)).await
    }

    /// A connection to `endpoint`, its TLS handshake done when it has TLS.
    pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(&endpoint.address).await?;
        tcp.set_nodelay(true)?;
        let stream = match &endpoint.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let host = endpoint
                    .address
                    .rsplit_once(':')
                    .map_or(endpoint.address.as_str(), |(host, _)| host);
                let name = ServerName::try_from(host.to_owned())?;
                Stream::Tls(Box::new(connector.connect(name, tcp).await?))
            }
        };
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(8192),
        })
    }

    async fn write_all(&mut self, request: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.write_all(request).await,
            // rustls buffers the record; the flush puts it on the wire.
            Stream::Tls(tls) => {
                tls.write_all(request).await?;
                tls.flush().await
            }
        }
    }

    /// Sends one request and returns the response status (the body is read and dropped).
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.write_all(request).await?;
        let (status, _, total) = self.read_response().await?;
        self.buffer.drain(..total);
        Ok(status)
    }

    pub async fn send_and_read(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        self.write_all(request).await?;
        let (status, head_end, total) = self.read_response().await?;
        let body = self.buffer[head_end + 4..total].to_vec();
        self.buffer.drain(..total);
        Ok((status, body))
    }

    /// Sends one request and returns the response's status and head (status line and
    /// headers); the body is dropped.
    pub async fn send_and_read_head(&mut self, request: &[u8]) -> anyhow::Result<(u16, String)> {
        self.write_all(request).await?;
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
        let n = match &mut self.stream {
            Stream::Plain(tcp) => tcp.read(&mut chunk).await?,
            Stream::Tls(tls) => tls.read(&mut chunk).await?,
        };
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
