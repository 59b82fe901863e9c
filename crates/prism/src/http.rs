//! HTTP for every command: one lazily built ureq agent (rustls with ring; the web roots plus an
//! optional extra CA), `--print-requests`, and errors that name the URL and the cause.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::Duration;

use ureq::Agent;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::env;
use crate::error::{Error, Result};

/// Where the extra CA came from, for error messages.
#[derive(Debug, Clone)]
pub struct ExtraCa {
    pub path: PathBuf,
    pub source: &'static str,
}

impl ExtraCa {
    /// Every extra CA file named by `--ca-cert`, `SSL_CERT_FILE` and `NODE_EXTRA_CA_CERTS`
    /// (all of them are trusted, so one setting serves this and the official client).
    pub fn find(flag: Option<PathBuf>) -> Vec<Self> {
        let mut found = Vec::new();
        if let Some(path) = flag {
            found.push(Self {
                path,
                source: "--ca-cert",
            });
        }
        for name in [env::SSL_CERT_FILE, env::NODE_EXTRA_CA_CERTS] {
            if let Some(path) = env::var(name) {
                found.push(Self {
                    path: PathBuf::from(path),
                    source: name,
                });
            }
        }
        found
    }
}

/// A response: status and body text.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub struct Http {
    agent: OnceCell<Agent>,
    extra_cas: Vec<ExtraCa>,
    print_requests: bool,
}

impl Http {
    pub fn new(extra_cas: Vec<ExtraCa>, print_requests: bool) -> Self {
        Self {
            agent: OnceCell::new(),
            extra_cas,
            print_requests,
        }
    }

    fn agent(&self) -> Result<&Agent> {
        if let Some(agent) = self.agent.get() {
            return Ok(agent);
        }
        let roots = if self.extra_cas.is_empty() {
            RootCerts::WebPki
        } else {
            let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()))
                .collect();
            for ca in &self.extra_cas {
                let pem = std::fs::read(&ca.path).map_err(|e| {
                    Error::new(format!(
                        "cannot read the CA certificate {} (from {}): {e}",
                        ca.path.display(),
                        ca.source
                    ))
                })?;
                let before = certs.len();
                for item in ureq::tls::parse_pem(&pem) {
                    if let Ok(PemItem::Certificate(cert)) = item {
                        certs.push(cert);
                    }
                }
                if certs.len() == before {
                    return Err(Error::new(format!(
                        "{} (from {}) contains no PEM certificate.",
                        ca.path.display(),
                        ca.source
                    )));
                }
            }
            RootCerts::from(certs)
        };
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent(concat!("prism-rs/", env!("CARGO_PKG_VERSION")))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(roots)
                    .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                        rustls::crypto::aws_lc_rs::default_provider(),
                    ))
                    .build(),
            )
            .build()
            .into();
        Ok(self.agent.get_or_init(|| agent))
    }

    fn show(&self, method: &str, url: &str, detail: Option<&str>) {
        if self.print_requests {
            match detail {
                Some(detail) => eprintln!("{method} {url}\n{detail}"),
                None => eprintln!("{method} {url}"),
            }
        }
    }

    pub fn get(&self, url: &str) -> Result<Reply> {
        self.show("GET", url, None);
        let response = self.agent()?.get(url).call();
        self.finish(url, response)
    }

    /// GETs with `Authorization: <scheme> <credential>`; only the URL is printed with
    /// `--print-requests` (the credential is a secret).
    pub fn get_authorized(&self, url: &str, scheme: &str, credential: &str) -> Result<Reply> {
        self.show("GET", url, None);
        let response = self
            .agent()?
            .get(url)
            .header("Authorization", format!("{scheme} {credential}"))
            .call();
        self.finish(url, response)
    }

    /// POSTs a form. Only the field names are printed with `--print-requests`.
    pub fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Reply> {
        let names: Vec<&str> = form.iter().map(|(k, _)| *k).collect();
        self.show(
            "POST",
            url,
            Some(&format!("form fields: {}", names.join(", "))),
        );
        let response = self
            .agent()?
            .post(url)
            .send_form(form.iter().map(|(k, v)| (*k, *v)));
        self.finish(url, response)
    }

    /// POSTs JSON. `shown` is what `--print-requests` prints (never a secret).
    pub fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
        shown: Option<&str>,
    ) -> Result<Reply> {
        self.show("POST", url, shown);
        let mut request = self
            .agent()?
            .post(url)
            .header("Content-Type", "application/json")
            .header("Prismatic-Client", "prism");
        if let Some(token) = bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send(body.to_string());
        self.finish(url, response)
    }

    fn finish(
        &self,
        url: &str,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply> {
        let mut response = response.map_err(|e| self.describe(url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| self.describe(url, e))?;
        if self.print_requests {
            eprintln!("-> {status}");
        }
        Ok(Reply { status, body })
    }

    /// An error that names the URL and the cause; TLS failures point at the CA options.
    fn describe(&self, url: &str, error: ureq::Error) -> Error {
        let cause = error.to_string();
        let tls = matches!(
            error,
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)
        ) || cause.contains("certificate")
            || cause.contains("UnknownIssuer");
        if tls {
            let hint = if self.extra_cas.is_empty() {
                "if the server uses a private CA, pass --ca-cert <ca.pem> (or set SSL_CERT_FILE \
                 or NODE_EXTRA_CA_CERTS)"
                    .to_owned()
            } else {
                let trusted: Vec<String> = self
                    .extra_cas
                    .iter()
                    .map(|ca| format!("{} (from {})", ca.path.display(), ca.source))
                    .collect();
                format!(
                    "the server's certificate is not signed by the web roots nor by {}; pass \
                     the server's CA with --ca-cert <ca.pem>",
                    trusted.join(", ")
                )
            };
            return Error::new(format!("TLS error talking to {url}: {cause}; {hint}."));
        }
        Error::new(format!(
            "cannot reach {url}: {cause}. Check PRISMATIC_URL and that the server is running."
        ))
    }
}
