//! Browser login (RFC 6749 authorization code grant with PKCE S256, RFC 7636): checking an
//! authorization request, checking a password without revealing which accounts exist, issuing
//! single-use codes, redeeming them, and browser sessions.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prism_proto::wire::TokenResponse;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::accounts::normalize_email;
use super::auth::AuthService;
use super::clients::{self, CLI_CLIENT_ID, DEFAULT_SCOPE};
use super::sessions::SessionOrigin;
use super::{DomainError, GrantError, RequestMeta, now_ms, passwords, secrets};
use crate::store::{
    AuditEvent, BrowserSession, CodeRedemption, Identity, Membership, NewAuthorizationCode, User,
};
use crate::tokens::hash_secret;

/// How long an authorization code may be redeemed.
pub const CODE_TTL_MS: i64 = 60_000;
/// How long a browser session lasts.
pub const BROWSER_SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// Problems with an authorization request, split by whether it is safe to redirect back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or redirect URI is not acceptable: show an error page, never redirect.
    NoRedirect(String),
    /// Redirect back with `error` (RFC 6749 §4.1.2.1).
    Redirect {
        error: &'static str,
        description: String,
    },
}

/// The query of `GET /authorize` (also carried through the login form).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub audience: Option<String>,
    pub nonce: Option<String>,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: url::Url,
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub nonce: Option<String>,
}

/// Is `uri` a loopback redirect of a native app (RFC 8252 §7.3): `http`, host `localhost`,
/// `127.0.0.1` or `[::1]`, any port, no user info, no fragment?
pub fn loopback_redirect(uri: &str) -> Option<url::Url> {
    let url = url::Url::parse(uri).ok()?;
    let loopback = matches!(
        url.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    let clean = url.scheme() == "http"
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && uri.len() <= 2048;
    (loopback && clean).then_some(url)
}

fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks an authorization request in the order RFC 6749 requires: client and redirect URI
/// first (errors shown, not redirected), then the rest (errors redirected).
pub fn check_request(
    params: &AuthorizeParams,
    audience: &str,
) -> Result<AuthorizationRequest, AuthorizeError> {
    if params.client_id.as_deref() != Some(CLI_CLIENT_ID) {
        return Err(AuthorizeError::NoRedirect("unknown client_id".into()));
    }
    let redirect_uri = params
        .redirect_uri
        .as_deref()
        .and_then(loopback_redirect)
        .ok_or_else(|| {
            AuthorizeError::NoRedirect(
                "redirect_uri must be a loopback address (http://localhost:<port>/ or http://127.0.0.1:<port>/)".into(),
            )
        })?;
    let redirect = |error, description: &str| AuthorizeError::Redirect {
        error,
        description: description.into(),
    };
    if params.response_type.as_deref() != Some("code") {
        return Err(redirect(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    if params.code_challenge_method.as_deref() != Some("S256") {
        return Err(redirect(
            "invalid_request",
            "PKCE is required with code_challenge_method=S256",
        ));
    }
    let code_challenge = params
        .code_challenge
        .clone()
        .filter(|c| c.len() == 43 && is_pkce_value(c))
        .ok_or_else(|| {
            redirect(
                "invalid_request",
                "code_challenge must be a base64url SHA-256 (43 characters)",
            )
        })?;
    if params
        .audience
        .as_deref()
        .is_some_and(|a| !a.is_empty() && a != audience)
    {
        return Err(redirect("invalid_request", "unknown audience"));
    }
    if params.state.as_deref().is_some_and(|s| s.len() > 1024)
        || params.nonce.as_deref().is_some_and(|n| n.len() > 1024)
    {
        return Err(redirect("invalid_request", "state or nonce is too long"));
    }
    let scope = params
        .scope
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
    if !clients::known_scope(&scope) {
        return Err(redirect("invalid_scope", "unknown scope"));
    }
    Ok(AuthorizationRequest {
        client_id: CLI_CLIENT_ID.to_owned(),
        redirect_uri,
        scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
        state: params.state.clone(),
        code_challenge,
        nonce: params.nonce.clone(),
    })
}

/// `redirect_uri` with `code`/`error` and `state` appended.
pub fn redirect_with(request: &AuthorizationRequest, pairs: &[(&str, &str)]) -> String {
    let mut url = request.redirect_uri.clone();
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in pairs {
            query.append_pair(key, value);
        }
        if let Some(state) = &request.state {
            query.append_pair("state", state);
        }
    }
    url.to_string()
}

/// A fixed Argon2id hash to verify against when no account matches, so a wrong email costs
/// the same time as a wrong password.
static DECOY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The parameters of the `authorization_code` grant.
pub struct CodeGrant<'a> {
    pub code: &'a str,
    pub code_verifier: &'a str,
    pub redirect_uri: &'a str,
    pub client_id: &'a str,
    /// Optional; a tenant the user is not a member of gets `access_denied`.
    pub tenant_id: Option<&'a str>,
}

fn invalid_grant(description: &'static str) -> DomainError {
    DomainError::InvalidGrant(GrantError::Code(description))
}

impl AuthService {
    /// Checks an email and password: one identity, one password. Every failure is the same
    /// `None`: no account enumeration, and an email without an identity costs the same time.
    pub async fn authenticate_password(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<Identity>, DomainError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        if password.is_empty() || password.chars().count() > passwords::MAX_LENGTH {
            return Ok(None);
        }
        let found = self.store().identity_by_email(&email).await?;
        let stored = found
            .as_ref()
            .and_then(|credentials| credentials.password_hash.clone());
        let Some(hash) = stored else {
            let decoy = match DECOY_HASH.get() {
                Some(hash) => hash.clone(),
                None => {
                    let hash = passwords::hash("decoy password for timing".to_owned()).await?;
                    DECOY_HASH.get_or_init(|| hash).clone()
                }
            };
            let _ = passwords::verify(password.to_owned(), decoy).await?;
            return Ok(None);
        };
        if passwords::verify(password.to_owned(), hash).await? {
            Ok(found.map(|credentials| credentials.identity))
        } else {
            Ok(None)
        }
    }

    /// The memberships a browser session may act as: its identity's, or for a session started
    /// before identities existed only the one member it signed in to. Pending ones included.
    pub async fn session_memberships(
        &self,
        session: &BrowserSession,
    ) -> Result<Vec<Membership>, DomainError> {
        let memberships = self.accounts().memberships(&session.identity.id).await?;
        Ok(memberships
            .into_iter()
            .filter(|m| {
                session
                    .only_user_id
                    .as_deref()
                    .is_none_or(|only| only == m.user.id)
            })
            .collect())
    }

    /// Issues a single-use code for `user`, bound to the request's client, redirect URI and
    /// challenge; valid for [`CODE_TTL_MS`].
    pub async fn issue_code(
        &self,
        user: &User,
        request: &AuthorizationRequest,
    ) -> Result<String, DomainError> {
        let code = secrets::random_secret()?;
        let now = now_ms();
        self.store()
            .insert_authorization_code(NewAuthorizationCode {
                code_hash: hash_secret(&code),
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.to_string(),
                code_challenge: request.code_challenge.clone(),
                scope: request.scope.clone(),
                nonce: request.nonce.clone(),
                user_id: user.id.clone(),
                created_at: now,
                expires_at: now + CODE_TTL_MS,
            })
            .await?;
        Ok(code)
    }

    /// Redeems an authorization code: checks binding and PKCE, mints a refresh token (a new
    /// session) and an access token, and an ID token when `openid` was asked for. A second
    /// use of a code fails and revokes what the first use issued.
    pub async fn exchange_code(
        &self,
        grant: CodeGrant<'_>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, DomainError> {
        let code_hash = hash_secret(grant.code);
        let now = now_ms();
        // Written only on a code's first replay: someone else may hold the code (it leaked
        // from the redirect), so who presented it and from where is worth keeping.
        let replay = AuditEvent {
            at: now,
            action: "code.replayed",
            actor: format!("address:{}", meta.address.as_deref().unwrap_or("-")),
            org_id: None,
            subject_user_id: None,
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: None,
        };
        let code = match self
            .store()
            .redeem_authorization_code(&code_hash, now, replay)
            .await?
        {
            CodeRedemption::Redeemed(code) => code,
            CodeRedemption::Replayed => {
                tracing::warn!(
                    "authorization code replayed; the tokens issued from it are revoked"
                );
                return Err(invalid_grant(
                    "the authorization code was already used; tokens issued from it are revoked",
                ));
            }
            CodeRedemption::Unknown => {
                return Err(invalid_grant("the authorization code is unknown"));
            }
        };
        if code.expires_at <= now {
            return Err(invalid_grant(
                "the authorization code has expired; log in again",
            ));
        }
        if code.client_id != grant.client_id || code.redirect_uri != normalized(grant.redirect_uri)
        {
            return Err(invalid_grant(
                "the authorization code was issued to another client or redirect_uri",
            ));
        }
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(grant.code_verifier.as_bytes()));
        if !is_pkce_value(grant.code_verifier)
            || !bool::from(computed.as_bytes().ct_eq(code.code_challenge.as_bytes()))
        {
            return Err(invalid_grant(
                "the code_verifier does not match the code_challenge",
            ));
        }
        let mut user =
            self.store()
                .active_user(&code.user_id)
                .await?
                .ok_or(DomainError::InvalidGrant(GrantError::Denied(
                    super::Denial::UserRemoved,
                )))?;
        // A tenant names the membership of the same identity the session is for; a foreign
        // one is refused before a session is minted for nothing.
        if let Some(tenant) = grant.tenant_id.filter(|t| !t.is_empty()) {
            let memberships = match &user.identity_id {
                Some(identity_id) => self.accounts().memberships(identity_id).await?,
                None => Vec::new(),
            };
            user = memberships
                .into_iter()
                .find(|m| m.org.tenant_id == tenant && m.user.is_joined())
                .map(|m| m.user)
                .ok_or_else(|| {
                    DomainError::AccessDenied("the user is not a member of that tenant".to_owned())
                })?;
        }
        let origin = SessionOrigin {
            name: Some("CLI login".into()),
            scope: Some(code.scope.clone()),
            from_code: Some(code_hash),
            ..Default::default()
        };
        let refresh_token = self
            .sessions()
            .mint_refresh_token(&user, origin, format!("user:{}", user.id), meta)
            .await?;
        let mut response = self
            .exchange_refresh_token(&refresh_token, grant.tenant_id, None, meta)
            .await?;
        if code.scope.split_whitespace().any(|s| s == "openid") {
            response.id_token =
                Some(self.id_token(&user, &code.client_id, code.nonce.as_deref())?);
        }
        response.refresh_token = Some(refresh_token);
        Ok(response)
    }

    /// Starts a browser session for `identity`; returns the cookie value.
    pub async fn start_browser_session(&self, identity: &Identity) -> Result<String, DomainError> {
        let secret = secrets::random_secret()?;
        let now = now_ms();
        self.store()
            .insert_browser_session(
                &hash_secret(&secret),
                &identity.id,
                now,
                now + BROWSER_SESSION_TTL_MS,
            )
            .await?;
        Ok(secret)
    }

    /// The browser session of a cookie, if it is live.
    pub async fn browser_session(
        &self,
        cookie: &str,
    ) -> Result<Option<BrowserSession>, DomainError> {
        if cookie.len() != 43 {
            return Ok(None);
        }
        Ok(self
            .store()
            .browser_session(&hash_secret(cookie), now_ms())
            .await?)
    }

    /// Ends a browser session, audited as `logout` (actor and detail: its identity; `reason`:
    /// `logout` or `switch`) when there was one.
    pub async fn end_browser_session(
        &self,
        cookie: &str,
        reason: &'static str,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let Some(session) = self.browser_session(cookie).await? else {
            return Ok(());
        };
        let identity = &session.identity.id;
        let audit = AuditEvent {
            at: now_ms(),
            action: "logout",
            actor: format!("identity:{identity}"),
            org_id: None,
            subject_user_id: None,
            address: meta.address.clone(),
            user_agent: meta.user_agent.clone(),
            detail: Some(serde_json::json!({ "identity": identity, "reason": reason }).to_string()),
        };
        self.store()
            .delete_browser_session(&hash_secret(cookie), audit)
            .await?;
        Ok(())
    }
}

/// The redirect URI as stored (parsed and re-serialised), so equivalent spellings compare equal.
fn normalized(uri: &str) -> String {
    url::Url::parse(uri)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| uri.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_loopback_redirects_are_accepted() {
        for good in [
            "http://localhost:59400/",
            "http://127.0.0.1:1/cb",
            "http://[::1]:8000/",
            "http://localhost/",
        ] {
            assert!(loopback_redirect(good).is_some(), "{good}");
        }
        for bad in [
            "https://evil.example/",
            "http://evil.example/",
            "http://localhost.evil.example/",
            "http://localhost@evil.example/",
            "http://user:pw@localhost:1/",
            "http://127.0.0.1.nip.io/",
            "http://localhost:1/#frag",
            "https://localhost:1/",
            "javascript:alert(1)",
            "//localhost:1/",
            "",
        ] {
            assert!(loopback_redirect(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn pkce_is_required_and_plain_is_refused() {
        let base = AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some(CLI_CLIENT_ID.into()),
            redirect_uri: Some("http://localhost:59400/".into()),
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        };
        assert!(check_request(&base, "aud").is_ok());
        let plain = AuthorizeParams {
            code_challenge_method: Some("plain".into()),
            ..base.clone()
        };
        assert!(matches!(
            check_request(&plain, "aud"),
            Err(AuthorizeError::Redirect {
                error: "invalid_request",
                ..
            })
        ));
        let missing = AuthorizeParams {
            code_challenge: None,
            ..base.clone()
        };
        assert!(matches!(
            check_request(&missing, "aud"),
            Err(AuthorizeError::Redirect { .. })
        ));
        let evil = AuthorizeParams {
            redirect_uri: Some("https://evil.example/".into()),
            ..base.clone()
        };
        assert!(matches!(
            check_request(&evil, "aud"),
            Err(AuthorizeError::NoRedirect(_))
        ));
        let client = AuthorizeParams {
            client_id: Some("other".into()),
            ..base
        };
        assert!(matches!(
            check_request(&client, "aud"),
            Err(AuthorizeError::NoRedirect(_))
        ));
    }
}
