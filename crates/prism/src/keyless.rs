//! Keyless CI: `prism me:token` exchanging a pipeline's OIDC token (given, read from a file, or
//! fetched from GitHub Actions) at `POST {PRISMATIC_URL}/auth/exchange` for an access token,
//! with no stored login and no secret kept in the pipeline.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::env;
use crate::error::{Error, Result};
use crate::login;
use crate::session::{self, Ctx};

/// Set by GitHub Actions in jobs with `permissions: id-token: write`.
pub const ACTIONS_ID_TOKEN_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const ACTIONS_ID_TOKEN_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// The `me:token` flags of an exchange.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OidcFlags {
    /// Exchange this OIDC token (a JWT from your CI) for an access token through a trust
    /// policy; no login needed [env: PRISM_OIDC_TOKEN]
    #[arg(long, value_name = "JWT", conflicts_with = "oidc_token_file")]
    pub oidc_token: Option<String>,
    /// Like --oidc-token, with the token read from this file (e.g. a Kubernetes projected
    /// service account token)
    #[arg(long, value_name = "PATH")]
    pub oidc_token_file: Option<PathBuf>,
    /// In GitHub Actions: fetch the job's OIDC token for this audience (the one your trust
    /// policy expects) and exchange it
    #[arg(
        long,
        value_name = "AUD",
        conflicts_with_all = ["oidc_token", "oidc_token_file"]
    )]
    pub oidc_audience: Option<String>,
    /// With an OIDC token: ask for these scopes only (repeat for more; within the trust
    /// policy's)
    #[arg(short, long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// With an OIDC token: the organization whose trust policy to use [env:
    /// PRISMATIC_TENANT_ID]
    #[arg(long, value_name = "ID")]
    pub tenant_id: Option<String>,
}

/// Where the OIDC token comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Subject {
    /// Given on the command line, in a file or in `PRISM_OIDC_TOKEN`.
    Given(String),
    /// Fetched from GitHub Actions for this audience.
    GitHubActions { audience: String },
}

/// The OIDC token to exchange, or `None` when `me:token` uses the stored or environment
/// credentials. A token given in any way wins; `--oidc-audience` alone means GitHub Actions.
pub fn subject(flags: &OidcFlags) -> Result<Option<Subject>> {
    if let Some(token) = &flags.oidc_token {
        return given(token.clone(), "--oidc-token").map(Some);
    }
    if let Some(path) = &flags.oidc_token_file {
        return given(read_token_file(path)?, "--oidc-token-file").map(Some);
    }
    if let Some(token) = env::var(env::PRISM_OIDC_TOKEN) {
        return given(token, env::PRISM_OIDC_TOKEN).map(Some);
    }
    if let Some(audience) = &flags.oidc_audience {
        if !in_github_actions() {
            return Err(Error::new(format!(
                "--oidc-audience fetches the job's OIDC token from GitHub Actions, but \
                 {ACTIONS_ID_TOKEN_REQUEST_URL} and {ACTIONS_ID_TOKEN_REQUEST_TOKEN} are not set \
                 (give the job 'permissions: id-token: write'); elsewhere pass the token with \
                 --oidc-token, --oidc-token-file or PRISM_OIDC_TOKEN."
            )));
        }
        if audience.is_empty() {
            return Err(Error::new("--oidc-audience must not be empty."));
        }
        return Ok(Some(Subject::GitHubActions {
            audience: audience.clone(),
        }));
    }
    if !flags.scopes.is_empty() || flags.tenant_id.is_some() {
        return Err(Error::new(
            "--scope and --tenant-id of me:token apply to an OIDC token exchange: add \
             --oidc-token, --oidc-token-file or --oidc-audience (or set PRISM_OIDC_TOKEN).",
        ));
    }
    Ok(None)
}

/// A token as given, trimmed (files and variables often end with a newline).
fn given(token: String, from: &str) -> Result<Subject> {
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::new(format!("{from}: the OIDC token is empty.")));
    }
    Ok(Subject::Given(token.to_owned()))
}

fn read_token_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::new(format!(
            "cannot read the OIDC token file {}: {e}",
            path.display()
        ))
    })
}

/// Whether GitHub Actions offers this job an OIDC token.
pub fn in_github_actions() -> bool {
    env::var(ACTIONS_ID_TOKEN_REQUEST_URL).is_some()
        && env::var(ACTIONS_ID_TOKEN_REQUEST_TOKEN).is_some()
}

/// What `me:token` says when it has no credentials in a GitHub Actions job: the way out is
/// the audience, which only the user knows.
pub fn github_actions_hint(error: Error) -> Error {
    Error::new(format!(
        "{error}\nIn GitHub Actions, 'prism me:token --oidc-audience AUD' exchanges the job's \
         OIDC token for an access token (AUD: the audience your trust policy expects)."
    ))
}

/// `$ACTIONS_ID_TOKEN_REQUEST_URL&audience=<AUD>`, as GitHub's toolkit builds it (the URL
/// already carries `?api-version=...`; a `?` is used when it carries no query).
pub fn github_request_url(request_url: &str, audience: &str) -> String {
    let separator = if request_url.contains('?') { '&' } else { '?' };
    format!(
        "{request_url}{separator}audience={}",
        login::encode(audience)
    )
}

/// Asks GitHub Actions for the job's OIDC token with `audience`.
fn fetch_github_token(ctx: &Ctx, audience: &str) -> Result<String> {
    let (Some(request_url), Some(request_token)) = (
        env::var(ACTIONS_ID_TOKEN_REQUEST_URL),
        env::var(ACTIONS_ID_TOKEN_REQUEST_TOKEN),
    ) else {
        return Err(Error::new(format!(
            "{ACTIONS_ID_TOKEN_REQUEST_URL} and {ACTIONS_ID_TOKEN_REQUEST_TOKEN} are not set."
        )));
    };
    let url = github_request_url(&request_url, audience);
    let reply = ctx
        .http
        .get_authorized(&url, "bearer", &request_token)
        .map_err(|e| {
            Error::new(format!(
                "could not fetch the job's OIDC token from GitHub Actions: {e}"
            ))
        })?;
    let parsed: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    if reply.status != 200 {
        // GitHub explains a refusal in `message`; the body holds no token then.
        let reason = parsed["message"]
            .as_str()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Err(Error::new(format!(
            "GitHub Actions refused the OIDC token request (HTTP {}){reason}; does the job have \
             'permissions: id-token: write'?",
            reply.status
        )));
    }
    parsed["value"]
        .as_str()
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::new("GitHub Actions answered the OIDC token request without a token ('value').")
        })
}

/// The JSON body of `POST /auth/exchange`.
pub fn exchange_body(token: &str, tenant: Option<&str>, scopes: &[String]) -> Value {
    let mut body = json!({ "token": token });
    if let Some(tenant) = tenant.filter(|t| !t.is_empty()) {
        body["tenant_id"] = json!(tenant);
    }
    if !scopes.is_empty() {
        body["scope"] = json!(scopes.join(" "));
    }
    body
}

/// Exchanges the OIDC token at `POST {PRISMATIC_URL}/auth/exchange`; returns the access
/// token. The server is the environment's (`PRISMATIC_URL` or the default), as in
/// environment mode: a pipeline has no profile.
pub fn exchange(ctx: &Ctx, subject: Subject, flags: &OidcFlags) -> Result<String> {
    let token = match subject {
        Subject::Given(token) => token,
        Subject::GitHubActions { audience } => fetch_github_token(ctx, &audience)?,
    };
    let tenant = flags
        .tenant_id
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| env::var(env::PRISMATIC_TENANT_ID));
    let body = exchange_body(&token, tenant.as_deref(), &flags.scopes);
    let fields: Vec<&str> = body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let shown = format!("JSON fields: {}", fields.join(", "));
    let url = format!("{}/auth/exchange", session::env_url());
    let reply = ctx.http.post_json(&url, &body, None, Some(&shown))?;
    let parsed: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    if reply.status == 200 {
        return parsed["access_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::new(format!(
                    "{url} answered without an access token: is PRISMATIC_URL a prism-auth server?"
                ))
            });
    }
    Err(refusal(&url, reply.status, &parsed))
}

/// The server's reason for refusing an exchange: its `error_description` (which never holds
/// the token), else its `error`, else the HTTP status.
pub fn refusal(url: &str, status: u16, body: &Value) -> Error {
    let code = body["error"].as_str().unwrap_or_default();
    let description = body["error_description"].as_str().unwrap_or_default();
    match (code, description) {
        ("", "") if status == 404 => Error::new(format!(
            "{url} answered HTTP 404: this server has no token exchange (it is not prism-auth, \
             or too old)."
        )),
        ("", "") => Error::new(format!("{url} answered HTTP {status}.")),
        (code, "") => Error::new(format!("The token exchange was refused ({code}).")),
        ("", description) => Error::new(format!("The token exchange was refused: {description}")),
        (code, description) => Error::new(format!(
            "The token exchange was refused: {description} ({code})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_github_request_url_appends_the_encoded_audience() {
        assert_eq!(
            github_request_url(
                "https://gh.example/t?api-version=2.0",
                "https://auth.example.com/ci"
            ),
            "https://gh.example/t?api-version=2.0&audience=https%3A%2F%2Fauth.example.com%2Fci"
        );
        assert_eq!(
            github_request_url("https://gh.example/t", "prism"),
            "https://gh.example/t?audience=prism"
        );
    }

    #[test]
    fn the_body_carries_tenant_and_scope_only_when_given() {
        assert_eq!(exchange_body("j", None, &[]), json!({ "token": "j" }));
        assert_eq!(
            exchange_body(
                "j",
                Some("t-1"),
                &["users:read".into(), "audit:read".into()]
            ),
            json!({ "token": "j", "tenant_id": "t-1", "scope": "users:read audit:read" })
        );
    }

    #[test]
    fn a_refusal_shows_the_description() {
        let body = json!({ "error": "invalid_grant", "error_description": "the claim `ref` does not match" });
        assert_eq!(
            refusal("u", 400, &body).to_string(),
            "The token exchange was refused: the claim `ref` does not match (invalid_grant)"
        );
        assert!(
            refusal("u", 404, &Value::Null)
                .to_string()
                .contains("no token exchange")
        );
    }

    #[test]
    fn a_given_token_is_trimmed_and_must_not_be_empty() {
        assert_eq!(
            given("a.b.c\n".into(), "x").ok(),
            Some(Subject::Given("a.b.c".into()))
        );
        assert!(given(" \n".into(), "x").is_err());
    }
}
