//! The browser pages: `GET/POST /authorize` (a server-rendered login page with no external
//! assets and no JavaScript, CSRF-protected, framing forbidden), `GET /logout`, and
//! `GET/POST /invite` where an invited user sets a password.

use std::sync::LazyLock;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::body::{BodyShape, JsonOrForm};
use super::{AppState, ClientMeta};
use crate::domain::audit::{SignIn, SignInPage};
use crate::domain::limits::{self, LimitKey, LimitKind, Verdict};
use crate::domain::login::{self, AuthorizationRequest, AuthorizeError, AuthorizeParams};
use crate::domain::secrets::random_secret;
use crate::domain::trusted_devices;
use crate::domain::{DomainError, RequestMeta, now_ms};
use crate::store::{BrowserSession, Identity, Membership, User};

/// Cookie names. Over HTTPS they carry the `__Host-` prefix, so no other host (a sibling
/// subdomain, say) can plant them; browsers then require `Secure`, `Path=/` and no `Domain`.
fn cookie_name(name: &'static str, secure: bool) -> std::borrow::Cow<'static, str> {
    if secure {
        format!("__Host-{name}").into()
    } else {
        name.into()
    }
}

pub(super) const SESSION_COOKIE: &str = "prism_session";
const CSRF_COOKIE: &str = "prism_csrf";
/// Marks a browser where its person signed in with their password (`domain::trusted_devices`).
const DEVICE_COOKIE: &str = "prism_device";

const STYLE: &str = "body{font-family:system-ui,-apple-system,sans-serif;background:#f4f5f7;color:#1d2433;margin:0}\
main{max-width:22rem;margin:8vh auto;padding:2rem;background:#fff;border-radius:.75rem;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:0 0 .25rem}p{margin:.25rem 0 1rem;color:#4a5568}\
label{display:block;font-weight:600;margin:.75rem 0 .25rem}\
input{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem;border:1px solid #c3c9d4;border-radius:.4rem}\
button{width:100%;margin-top:1.25rem;padding:.7rem;font-size:1rem;font-weight:600;color:#fff;background:#2f5bea;border:0;border-radius:.4rem}\
.error{color:#b42318;background:#fef3f2;padding:.6rem;border-radius:.4rem}";

/// `Content-Security-Policy` of every page: nothing but our own inline style (by hash), forms
/// that post here and redirect to a loopback client, and no framing. CSP cannot name IPv6
/// literals, so a `http://[::1]` redirect URI is accepted by the server but a strict browser
/// may block the redirect after the form; `localhost` and `127.0.0.1` always work.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self' http://localhost:* \
         http://127.0.0.1:*; frame-ancestors 'none'; base-uri 'none'"
    )
});

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · prism-auth</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&CSP) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error page; a 503 (the database is unavailable) also says when to try again.
pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let mut response = page(
        status,
        "Sign-in problem",
        &format!(
            "<h1>Sign-in problem</h1><p class=\"error\">{}</p>",
            escape(message)
        ),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(super::error::RETRY_AFTER_SECS),
        );
    }
    response
}

/// 429: too many failures; the page and `Retry-After` say when to try again.
fn too_many_page(state: &AppState, kinds: &[LimitKind], retry_after_secs: u64) -> Response {
    if let Some(kind) = kinds.first() {
        state.metrics.limit_trip(*kind);
    }
    let what = if kinds.contains(&LimitKind::DeviceAddress) {
        "Too many wrong codes"
    } else if kinds.contains(&LimitKind::ResetAccount) {
        "Too many password-reset requests"
    } else {
        "Too many failed sign-ins"
    };
    let mut response = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("{what}. Try again {}.", limits::wait_text(retry_after_secs)),
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The keys a password sign-in counts against: the account (its identity, when the email
/// names one), or instead the browser's own count when it is trusted for that identity; and
/// the client's address.
fn login_keys(
    state: &AppState,
    headers: &HeaderMap,
    identity: Option<&Identity>,
    email: &str,
    meta: &RequestMeta,
) -> Vec<LimitKey> {
    let trusted = identity.and_then(|identity| {
        let cookie = our_cookie(headers, DEVICE_COOKIE, state.web.secure_cookies)?;
        let issuer = &state.auth.settings().issuer;
        trusted_devices::recognize(&state.auth.keys(), issuer, cookie, identity)
    });
    let mut keys = vec![match trusted {
        Some(device) => LimitKey::login_device(&device),
        None => LimitKey::login_account(identity, email),
    }];
    keys.extend(LimitKey::address(LimitKind::LoginAddress, meta));
    keys
}

/// A good password sign-in: who signed in, and the cookie that makes this browser trusted.
pub(super) struct PasswordSignIn {
    pub identity: Identity,
    device_cookie: Option<String>,
}

impl PasswordSignIn {
    /// Sets the device cookie on the answer (a fresh one at every good sign-in).
    pub(super) fn remember_device(&self, state: &AppState, response: &mut Response) {
        if let Some(cookie) = &self.device_cookie {
            set_cookie(
                response,
                DEVICE_COOKIE,
                cookie,
                trusted_devices::TRUSTED_FOR_SECS,
                state.web.secure_cookies,
                "Lax",
            );
        }
    }
}

/// Before a password is checked: refused (a page) when the account or the address is locked.
/// A locked sign-in never reaches Argon2, so the right password during a lock is refused the
/// same way as a wrong one (no oracle) and costs the server nothing.
pub(super) async fn login_locked(state: &AppState, keys: &[LimitKey]) -> Option<Response> {
    match state.limits().check(keys).await {
        Ok(Verdict::Allowed) => None,
        Ok(Verdict::Locked { retry_after_secs }) => {
            let kinds: Vec<_> = keys.iter().map(LimitKey::kind).collect();
            Some(too_many_page(state, &kinds, retry_after_secs))
        }
        Err(err) => {
            tracing::error!(error = %err, "could not read the login limits");
            Some(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            ))
        }
    }
}

/// The identity a typed email names and its joined members, if any: what a sign-in is
/// counted against and audited about. `Err(page)` when the database cannot say.
async fn sign_in_subject(state: &AppState, email: &str) -> Result<Option<Subject>, Response> {
    state
        .auth
        .accounts()
        .sign_in_subject(email)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not look up a sign-in");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            )
        })
}

/// An identity and its joined members.
type Subject = (Identity, Vec<User>);

/// After a wrong password: counts it, then audits it as `login.failed` in every organization
/// of the identity the email names; `Some(page)` when the account or address is now locked.
async fn login_failed(
    state: &AppState,
    keys: &[LimitKey],
    subject: Option<&Subject>,
    meta: &RequestMeta,
    page: SignInPage,
) -> Option<Response> {
    let first_member = subject.and_then(|(_, members)| members.first());
    let counted = state
        .limits()
        .fail(
            keys,
            meta,
            first_member.map(|u| (u.id.as_str(), u.org_id.as_str())),
        )
        .await;
    if counted.is_ok() {
        // Only a counted failure is written: attempts refused during a lock never get here,
        // so the limits bound these rows as they bound the Argon2 checks.
        let outcome = match subject {
            Some((identity, members)) => SignIn::Failed(Some(identity), members),
            None => SignIn::Failed(None, &[]),
        };
        if let Err(err) = state.auth.audit().record_sign_in(outcome, page, meta).await {
            tracing::warn!(error = %err, "could not audit a failed login");
        }
    }
    match counted {
        Ok(Verdict::Allowed) => None,
        Ok(Verdict::Locked { retry_after_secs }) => {
            let kinds: Vec<_> = keys.iter().map(LimitKey::kind).collect();
            Some(too_many_page(state, &kinds, retry_after_secs))
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not count a failed login");
            None
        }
    }
}

/// After a good password: audited as `login.succeeded`, and the identity's failures are
/// forgotten. The address's are not: one account an attacker owns must not reset the count
/// of guesses against other accounts from the same address; they expire with their window.
/// `Err(page)` when the sign-in could not be audited: it does not go on unrecorded.
async fn login_succeeded(
    state: &AppState,
    keys: &[LimitKey],
    subject: &Subject,
    meta: &RequestMeta,
    page: SignInPage,
) -> Result<(), Response> {
    let (identity, members) = subject;
    let recorded = state
        .auth
        .audit()
        .record_sign_in(SignIn::Succeeded(identity, members), page, meta)
        .await;
    if let Err(err) = recorded {
        tracing::error!(error = %err, "could not audit a login");
        return Err(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is temporarily unavailable; try again",
        ));
    }
    let own = |kind| matches!(kind, LimitKind::LoginAccount | LimitKind::LoginDevice);
    for key in keys.iter().filter(|k| own(k.kind())) {
        if let Err(err) = state.limits().clear(key).await {
            tracing::warn!(error = %err, "could not reset the login limit");
        }
    }
    Ok(())
}

/// Checks a typed email and password with the limits around it: `Ok(identity)` signed in,
/// `Err(page)` otherwise (locked, wrong, or the database is away). `retry` shows the form
/// again with an error.
pub(super) async fn sign_in_with_password(
    state: &AppState,
    headers: &HeaderMap,
    email: &str,
    password: &str,
    meta: &RequestMeta,
    page: SignInPage,
    retry: impl FnOnce(&str) -> Response,
) -> Result<PasswordSignIn, Response> {
    let subject = sign_in_subject(state, email).await?;
    let keys = login_keys(
        state,
        headers,
        subject.as_ref().map(|(identity, _)| identity),
        email,
        meta,
    );
    if let Some(refused) = login_locked(state, &keys).await {
        return Err(refused);
    }
    match state.auth.authenticate_password(email, password).await {
        Ok(Some(identity)) => {
            // The identity checked is the one the subject named (emails are unique).
            let subject = subject
                .filter(|(named, _)| named.id == identity.id)
                .unwrap_or_else(|| (identity.clone(), Vec::new()));
            login_succeeded(state, &keys, &subject, meta, page).await?;
            let device_cookie = trusted_devices::remember(
                &state.auth.keys(),
                &state.auth.settings().issuer,
                &identity,
            );
            Ok(PasswordSignIn {
                identity,
                device_cookie,
            })
        }
        Ok(None) => {
            tracing::info!(
                address = meta.address.as_deref().unwrap_or("-"),
                "login failed"
            );
            if let Some(refused) = login_failed(state, &keys, subject.as_ref(), meta, page).await {
                return Err(refused);
            }
            Err(retry("Wrong email or password."))
        }
        Err(err) => {
            tracing::error!(error = %err, "login check failed");
            Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            ))
        }
    }
}

fn login_page(request: &AuthorizeParams, csrf: &str, email: &str, error: Option<&str>) -> Response {
    let hidden = hidden_params(request);
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1><p>to continue to the prism command-line client</p>{error}\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{hidden}\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required autofocus value=\"{email}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>\
         <p><a href=\"/forgot\">Forgot password?</a> · <a href=\"/account/password\">Change password</a></p>",
        csrf = escape(csrf),
        email = escape(email),
    );
    page(StatusCode::OK, "Sign in", &body)
}

fn hidden_params(request: &AuthorizeParams) -> String {
    [
        ("response_type", &request.response_type),
        ("client_id", &request.client_id),
        ("redirect_uri", &request.redirect_uri),
        ("scope", &request.scope),
        ("state", &request.state),
        ("code_challenge", &request.code_challenge),
        ("code_challenge_method", &request.code_challenge_method),
        ("audience", &request.audience),
        ("nonce", &request.nonce),
    ]
    .iter()
    .filter_map(|(name, value)| {
        value.as_deref().map(|v| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(v)
            )
        })
    })
    .collect()
}

/// The page a signed-in browser sees: continue as this user, or sign in as someone else.
fn continue_page(request: &AuthorizeParams, csrf: &str, email: &str) -> Response {
    let body = format!(
        "<h1>Continue as {email}?</h1><p>The prism command-line client asks to sign in.</p>\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{hidden}\
         <button type=\"submit\" name=\"action\" value=\"continue\">Continue</button>\
         <button type=\"submit\" name=\"action\" value=\"switch\">Use another account</button></form>",
        email = escape(email),
        csrf = escape(csrf),
        hidden = hidden_params(request),
    );
    page(StatusCode::OK, "Continue", &body)
}

/// Sets one of our cookies (always `Path=/`, `HttpOnly`; `Secure` and `__Host-` over HTTPS).
pub(super) fn set_cookie(
    response: &mut Response,
    name: &'static str,
    value: &str,
    max_age: i64,
    secure: bool,
    same_site: &str,
) {
    set_cookie_raw(
        response,
        &cookie_name(name, secure),
        value,
        "/",
        max_age,
        secure,
        same_site,
    );
}

/// Reads one of our cookies under the name it has in this mode.
pub(super) fn our_cookie<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    secure: bool,
) -> Option<&'a str> {
    cookie(headers, &cookie_name(name, secure))
}

/// Double-submit CSRF check: the form field must equal our cookie (compared in constant
/// time). Returns the 403 page, saying `start_over`, when it does not.
pub(super) fn refuse_forged_form(
    state: &AppState,
    headers: &HeaderMap,
    cookie_name: &'static str,
    field: &str,
    start_over: &str,
) -> Option<Response> {
    let matches =
        our_cookie(headers, cookie_name, state.web.secure_cookies).is_some_and(|expected| {
            !field.is_empty() && bool::from(expected.as_bytes().ct_eq(field.as_bytes()))
        });
    (!matches).then(|| error_page(StatusCode::FORBIDDEN, start_over))
}

/// The request's live browser session, if any.
pub(super) async fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<BrowserSession> {
    let session = our_cookie(headers, SESSION_COOKIE, state.web.secure_cookies)?;
    state.auth.browser_session(session).await.ok().flatten()
}

/// The memberships a browser session may act as, or the error page.
async fn memberships_of(
    state: &AppState,
    session: &BrowserSession,
) -> Result<Vec<Membership>, Response> {
    state
        .auth
        .session_memberships(session)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not read memberships");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            )
        })
}

/// The organizations a signed-in person picks from: each joined membership continues there;
/// a pending one (offered by an Owner or Admin) can be joined, once the email is verified.
fn chooser_page(
    request: &AuthorizeParams,
    csrf: &str,
    session: &BrowserSession,
    memberships: &[Membership],
    error: Option<&str>,
) -> Response {
    let hidden = hidden_params(request);
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let mut choices = String::new();
    for membership in memberships {
        let org = escape(&membership.org.name);
        let member = escape(&membership.user.id);
        if membership.user.is_joined() {
            choices.push_str(&format!(
                "<button type=\"submit\" name=\"member\" value=\"{member}\">{org}</button>"
            ));
        } else if session.identity.email_verified {
            choices.push_str(&format!(
                "<p>{org} invited you to join.</p>\
                 <button type=\"submit\" name=\"join\" value=\"{member}\">Join {org}</button>"
            ));
        } else {
            choices.push_str(&format!(
                "<p>{org} invited you to join. Confirm your email address first: sign out, \
                 then use \u{201c}Forgot password\u{201d} to get a link by email.</p>"
            ));
        }
    }
    if memberships.is_empty() {
        choices.push_str("<p class=\"error\">You are not a member of any organization here.</p>");
    }
    let body = format!(
        "<h1>Choose an organization</h1><p>Signed in as {email}.</p>{error}\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{hidden}\
         <input type=\"hidden\" name=\"action\" value=\"choose\">{choices}</form>",
        email = escape(&session.identity.email),
        csrf = escape(csrf),
    );
    page(StatusCode::OK, "Choose an organization", &body)
}

/// After sign-in (or "continue"): a code for the one organization there is, or the chooser.
async fn continue_signed_in(
    state: &AppState,
    session: &BrowserSession,
    request: &AuthorizationRequest,
    params: &AuthorizeParams,
    csrf: &str,
) -> Response {
    let memberships = match memberships_of(state, session).await {
        Ok(memberships) => memberships,
        Err(page) => return page,
    };
    let mut joined = memberships.iter().filter(|m| m.user.is_joined());
    if let (Some(only), None) = (joined.next(), joined.next())
        && memberships.len() == 1
    {
        return finish_with_code(state, &only.user, request).await;
    }
    chooser_page(params, csrf, session, &memberships, None)
}

/// A code for `user`, and the CSRF cookie cleared.
async fn finish_with_code(
    state: &AppState,
    user: &User,
    request: &AuthorizationRequest,
) -> Response {
    let mut response = redirect_with_code(state, user, request).await;
    set_cookie(
        &mut response,
        CSRF_COOKIE,
        "",
        0,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn set_cookie_raw(
    response: &mut Response,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    secure: bool,
    same_site: &str,
) {
    let secure = if secure { "; Secure" } else { "" };
    let header = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    );
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => error_page(StatusCode::BAD_REQUEST, "the redirect address is not valid"),
    }
}

/// Maps a request problem to an error page or an error redirect (RFC 6749 §4.1.2.1).
fn reject(params: &AuthorizeParams, error: AuthorizeError) -> Response {
    match error {
        AuthorizeError::NoRedirect(message) => error_page(StatusCode::BAD_REQUEST, &message),
        AuthorizeError::Redirect { error, description } => {
            let request = params
                .redirect_uri
                .as_deref()
                .and_then(login::loopback_redirect)
                .map(|redirect_uri| AuthorizationRequest {
                    client_id: String::new(),
                    redirect_uri,
                    scope: String::new(),
                    state: params.state.clone(),
                    code_challenge: String::new(),
                    nonce: None,
                });
            match request {
                Some(request) => see_other(&login::redirect_with(
                    &request,
                    &[("error", error), ("error_description", &description)],
                )),
                None => error_page(StatusCode::BAD_REQUEST, &description),
            }
        }
    }
}

async fn redirect_with_code(
    state: &AppState,
    user: &crate::store::User,
    request: &AuthorizationRequest,
) -> Response {
    match state.auth.issue_code(user, request).await {
        Ok(code) => see_other(&login::redirect_with(request, &[("code", &code)])),
        Err(err) => {
            tracing::error!(error = %err, "could not issue an authorization code");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            )
        }
    }
}

/// `GET /authorize`: check the request, then continue a live browser session or show the form.
pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let request = match login::check_request(&params, &state.auth.settings().audience) {
        Ok(request) => request,
        Err(error) => return reject(&params, error),
    };
    drop(request);
    let Ok(csrf) = random_secret() else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    // A live browser session skips the password, not the person: any web page can send a
    // browser here, so a code is only issued after a click on our own page (RFC 8252 §8.6).
    let mut response = match signed_in(&state, &headers).await {
        Some(session) => continue_page(&params, &csrf, &session.identity.email),
        None => login_page(&params, &csrf, "", None),
    };
    set_cookie(
        &mut response,
        CSRF_COOKIE,
        &csrf,
        1800,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

/// The login form.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    /// `continue` (use the browser session), `switch` (end it and show the form) or `choose`
    /// (an organization, with `member` or `join`).
    #[serde(default)]
    action: Option<String>,
    /// The member (user id) to continue as.
    #[serde(default)]
    member: Option<String>,
    /// A pending membership (user id) to accept and continue as.
    #[serde(default)]
    join: Option<String>,
    #[serde(flatten)]
    params: AuthorizeParams,
}

impl BodyShape for LoginForm {
    const MAX_BYTES: usize = 16 * 1024;
    const EXPECTED: &'static str = "the login form";
}

/// `POST /authorize`: check CSRF and the request, then the password; redirect with a code.
pub async fn login(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<LoginForm>,
) -> Response {
    if let Some(refusal) = refuse_forged_form(
        &state,
        &headers,
        CSRF_COOKIE,
        &form.csrf,
        "This sign-in form expired or was not sent from this site. Start the login again.",
    ) {
        return refusal;
    }
    let request = match login::check_request(&form.params, &state.auth.settings().audience) {
        Ok(request) => request,
        Err(error) => return reject(&form.params, error),
    };
    let session = our_cookie(&headers, SESSION_COOKIE, state.web.secure_cookies);
    match form.action.as_deref() {
        Some("continue") | Some("choose") => {
            let Some(signed_in) = signed_in(&state, &headers).await else {
                // The session ended meanwhile: sign in with a password instead.
                return login_page(
                    &form.params,
                    &form.csrf,
                    "",
                    Some("Your session has ended; sign in again."),
                );
            };
            if form.action.as_deref() == Some("continue") {
                return continue_signed_in(&state, &signed_in, &request, &form.params, &form.csrf)
                    .await;
            }
            return choose(&state, &meta, &signed_in, &request, &form).await;
        }
        Some("switch") => {
            if let Some(session) = session {
                let _ = state
                    .auth
                    .end_browser_session(session, "switch", &meta)
                    .await;
            }
            let mut response = login_page(&form.params, &form.csrf, "", None);
            set_cookie(
                &mut response,
                SESSION_COOKIE,
                "",
                0,
                state.web.secure_cookies,
                "Lax",
            );
            return response;
        }
        _ => {}
    }
    let password_sign_in = match sign_in_with_password(
        &state,
        &headers,
        &form.email,
        &form.password,
        &meta,
        SignInPage::Authorize,
        |error| login_page(&form.params, &form.csrf, &form.email, Some(error)),
    )
    .await
    {
        Ok(signed_in) => signed_in,
        Err(page) => return page,
    };
    let identity = password_sign_in.identity.clone();
    let cookie = match state.auth.start_browser_session(&identity).await {
        Ok(cookie) => cookie,
        Err(err) => {
            tracing::error!(error = %err, "could not start a browser session");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            );
        }
    };
    let signed_in = BrowserSession {
        identity,
        only_user_id: None,
    };
    let mut response =
        continue_signed_in(&state, &signed_in, &request, &form.params, &form.csrf).await;
    set_cookie(
        &mut response,
        SESSION_COOKIE,
        &cookie,
        login::BROWSER_SESSION_TTL_MS / 1000,
        state.web.secure_cookies,
        "Lax",
    );
    password_sign_in.remember_device(&state, &mut response);
    response
}

/// The chooser's answer: continue as one of the session's joined members, or accept a
/// pending membership first.
async fn choose(
    state: &AppState,
    meta: &RequestMeta,
    session: &BrowserSession,
    request: &AuthorizationRequest,
    form: &LoginForm,
) -> Response {
    let memberships = match memberships_of(state, session).await {
        Ok(memberships) => memberships,
        Err(page) => return page,
    };
    let wanted = form.member.as_deref().or(form.join.as_deref());
    let Some(chosen) = memberships
        .iter()
        .find(|m| Some(m.user.id.as_str()) == wanted)
    else {
        return chooser_page(
            &form.params,
            &form.csrf,
            session,
            &memberships,
            Some("Choose one of these organizations."),
        );
    };
    if chosen.user.is_joined() {
        return finish_with_code(state, &chosen.user, request).await;
    }
    if form.join.is_none() {
        return chooser_page(&form.params, &form.csrf, session, &memberships, None);
    }
    match state
        .auth
        .accounts()
        .accept_membership(&session.identity, &chosen.user.id, meta)
        .await
    {
        Ok(()) => {
            let joined = User {
                joined_at: Some(now_ms()),
                ..chosen.user.clone()
            };
            finish_with_code(state, &joined, request).await
        }
        Err(DomainError::AccessDenied(message)) | Err(DomainError::NotFound(message)) => {
            chooser_page(
                &form.params,
                &form.csrf,
                session,
                &memberships,
                Some(&message),
            )
        }
        Err(err) => {
            tracing::error!(error = %err, "could not accept a membership");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            )
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LogoutParams {
    #[serde(rename = "returnTo", alias = "post_logout_redirect_uri")]
    return_to: Option<String>,
}

/// The form of the sign-out button.
#[derive(serde::Deserialize, Default)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, rename = "returnTo")]
    return_to: Option<String>,
}

impl BodyShape for LogoutForm {
    const MAX_BYTES: usize = 16 * 1024;
    const EXPECTED: &'static str = "the sign-out form";
}

const LOGOUT_CSRF_COOKIE: &str = "prism_logout_csrf";

/// `returnTo` when it is one `/logout` may redirect to: configured, or a loopback address.
fn allowed_return<'a>(state: &AppState, return_to: Option<&'a str>) -> Option<&'a str> {
    return_to.filter(|target| {
        state
            .web
            .logout_return_to
            .iter()
            .any(|allowed| allowed == target)
            || login::loopback_redirect(target).is_some()
    })
}

/// Where a sign-out ends: the allowed `returnTo`, or a page; the session cookie cleared.
fn signed_out(state: &AppState, return_to: Option<&str>) -> Response {
    let mut response = match allowed_return(state, return_to) {
        Some(target) => see_other(target),
        None => page(
            StatusCode::OK,
            "Signed out",
            "<h1>Signed out</h1><p>You can close this window.</p>",
        ),
    };
    set_cookie(
        &mut response,
        SESSION_COOKIE,
        "",
        0,
        state.web.secure_cookies,
        "Lax",
    );
    response
}

/// `GET /logout`: with a live browser session, a page with a sign-out button (a POST with a
/// CSRF token): a GET changes nothing, so another site cannot sign a person out with a link
/// or an image. Without one there is nothing to end: straight to `returnTo` (if allowed).
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<LogoutParams>,
) -> Response {
    let Some(session) = signed_in(&state, &headers).await else {
        return signed_out(&state, params.return_to.as_deref());
    };
    let Ok(csrf) = random_secret() else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let return_field = allowed_return(&state, params.return_to.as_deref())
        .map(|target| {
            format!(
                "<input type=\"hidden\" name=\"returnTo\" value=\"{}\">",
                escape(target)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign out</h1><p>Signed in as {email}.</p>\
         <form method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{return_field}\
         <button type=\"submit\">Sign out</button></form>",
        email = escape(&session.identity.email),
    );
    let mut response = page(StatusCode::OK, "Sign out", &body);
    set_cookie(
        &mut response,
        LOGOUT_CSRF_COOKIE,
        &csrf,
        1800,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

/// `POST /logout`: the sign-out button. Ends the browser session (audited as `logout`) and
/// redirects only to an allowed `returnTo`.
pub async fn end_session(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<LogoutForm>,
) -> Response {
    if let Some(refusal) = refuse_forged_form(
        &state,
        &headers,
        LOGOUT_CSRF_COOKIE,
        &form.csrf,
        "This form expired or was not sent from this site. Open the sign-out page again.",
    ) {
        return refusal;
    }
    if let Some(session) = our_cookie(&headers, SESSION_COOKIE, state.web.secure_cookies)
        && let Err(err) = state
            .auth
            .end_browser_session(session, "logout", &meta)
            .await
    {
        tracing::warn!(error = %err, "could not end a browser session");
    }
    let mut response = signed_out(&state, form.return_to.as_deref());
    set_cookie(
        &mut response,
        LOGOUT_CSRF_COOKIE,
        "",
        0,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

const DEVICE_CSRF_COOKIE: &str = "prism_device_csrf";

#[derive(serde::Deserialize, Default)]
pub struct DeviceQuery {
    #[serde(default)]
    user_code: String,
}

/// The page where a person approves a device login: the user code, and either "Continue as"
/// (a live browser session) or email and password; Approve or Deny.
fn device_page(
    user_code: &str,
    csrf: &str,
    session_email: Option<&str>,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let who = match session_email {
        Some(email) => format!("<p>Signed in as {}.</p>", escape(email)),
        None => "<label for=\"email\">Email</label>\
                 <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\
                 <label for=\"password\">Password</label>\
                 <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>"
            .to_owned(),
    };
    let body = format!(
        "<h1>Sign in a device</h1><p>Enter the code the prism command-line client shows.</p>{error}\
         <form method=\"post\" action=\"/device\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"user_code\">Code</label>\
         <input id=\"user_code\" name=\"user_code\" autocomplete=\"off\" required value=\"{code}\">{who}\
         <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>",
        csrf = escape(csrf),
        code = escape(user_code),
    );
    page(StatusCode::OK, "Sign in a device", &body)
}

/// `GET /device[?user_code=...]`.
pub async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<DeviceQuery>,
) -> Response {
    let Ok(csrf) = random_secret() else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let session = signed_in(&state, &headers).await;
    let mut response = device_page(
        &query.user_code,
        &csrf,
        session.as_ref().map(|s| s.identity.email.as_str()),
        None,
    );
    set_cookie(
        &mut response,
        DEVICE_CSRF_COOKIE,
        &csrf,
        1800,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

#[derive(serde::Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    action: String,
}

impl BodyShape for DeviceForm {
    const MAX_BYTES: usize = 16 * 1024;
    const EXPECTED: &'static str = "the device form";
}

/// `POST /device`: checks CSRF, the attempt limit, the person (session or password) and the
/// code; approves or denies it.
pub async fn decide_device(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<DeviceForm>,
) -> Response {
    if let Some(refusal) = refuse_forged_form(
        &state,
        &headers,
        DEVICE_CSRF_COOKIE,
        &form.csrf,
        "This form expired or was not sent from this site. Open the device page again.",
    ) {
        return refusal;
    }
    // Wrong codes count per address; a password typed here counts like a browser sign-in.
    let device_keys: Vec<LimitKey> = LimitKey::address(LimitKind::DeviceAddress, &meta)
        .into_iter()
        .collect();
    if let Some(refused) = login_locked(&state, &device_keys).await {
        return refused;
    }
    let by_session = signed_in(&state, &headers).await;
    let signed_in_by_session = by_session.is_some();
    let mut password_sign_in = None;
    let session = match by_session {
        Some(session) => session,
        None => {
            let signed_in = match sign_in_with_password(
                &state,
                &headers,
                &form.email,
                &form.password,
                &meta,
                SignInPage::Device,
                |error| device_page(&form.user_code, &form.csrf, None, Some(error)),
            )
            .await
            {
                Ok(signed_in) => signed_in,
                Err(page) => return page,
            };
            let identity = signed_in.identity.clone();
            password_sign_in = Some(signed_in);
            BrowserSession {
                identity,
                only_user_id: None,
            }
        }
    };
    // A device signs in to the identity's first organization; the command-line client then
    // picks another with `tenant_id` on its refresh, as after a browser login.
    let memberships = match memberships_of(&state, &session).await {
        Ok(memberships) => memberships,
        Err(page) => return page,
    };
    let Some(user) = memberships
        .into_iter()
        .find(|m| m.user.is_joined())
        .map(|m| m.user)
    else {
        return error_page(
            StatusCode::FORBIDDEN,
            "You are not a member of any organization here.",
        );
    };
    let approve = form.action == "approve";
    let mut response = match state
        .auth
        .decide_device_code(
            &form.user_code,
            &user,
            &session.identity.id,
            approve,
            signed_in_by_session,
            &meta,
        )
        .await
    {
        Ok(true) if approve => page(
            StatusCode::OK,
            "Device signed in",
            "<h1>Device signed in</h1><p>You can close this window; the command-line client continues.</p>",
        ),
        Ok(true) => page(
            StatusCode::OK,
            "Sign-in denied",
            "<h1>Sign-in denied</h1><p>The device was not signed in.</p>",
        ),
        Ok(false) => {
            if let Ok(Verdict::Locked { retry_after_secs }) =
                state.limits().fail(&device_keys, &meta, None).await
            {
                return too_many_page(&state, &[LimitKind::DeviceAddress], retry_after_secs);
            }
            let email = Some(session.identity.email.as_str()).filter(|_| form.password.is_empty());
            device_page(
                &form.user_code,
                &form.csrf,
                email,
                Some("That code is not valid or has expired. Check it and try again."),
            )
        }
        Err(err) => {
            tracing::error!(error = %err, "device decision failed");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is temporarily unavailable; try again",
            )
        }
    };
    if let Some(signed_in) = &password_sign_in {
        signed_in.remember_device(&state, &mut response);
    }
    response
}
