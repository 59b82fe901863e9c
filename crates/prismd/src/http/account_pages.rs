//! The pages where a person looks after their own sign-in: `GET/POST /account/password`
//! (change the password, proving the current one) and `GET/POST /forgot` (ask for a reset link
//! by email; the link's page is `password_links`). Same rules as the login pages:
//! server-rendered, no JavaScript, CSRF-protected, limited.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::body::{BodyShape, JsonOrForm};
use super::web::{
    error_page, escape, login_locked, page, refuse_forged_form, set_cookie, sign_in_with_password,
    signed_in,
};
use super::{AppState, ClientMeta};
use crate::domain::DomainError;
use crate::domain::audit::SignInPage;
use crate::domain::limits::{LimitKey, LimitKind};
use crate::domain::secrets::random_secret;

const CHANGE_CSRF_COOKIE: &str = "prism_change_csrf";
const FORGOT_CSRF_COOKIE: &str = "prism_forgot_csrf";

const UNAVAILABLE: &str = "the service is temporarily unavailable; try again";

/// A form page with a fresh CSRF cookie named `cookie`.
fn with_csrf(
    state: &AppState,
    cookie: &'static str,
    render: impl FnOnce(&str) -> Response,
) -> Response {
    let Ok(csrf) = random_secret() else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let mut response = render(&csrf);
    set_cookie(
        &mut response,
        cookie,
        &csrf,
        1800,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

fn error_line(error: Option<&str>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default()
}

fn new_password_fields() -> &'static str {
    "<label for=\"password\">New password</label>\
     <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\">\
     <label for=\"confirm\">New password again</label>\
     <input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\">"
}

fn change_page(csrf: &str, email: &str, error: Option<&str>) -> Response {
    let body = format!(
        "<h1>Change your password</h1><p>It changes in every organization you sign in to; \
         browsers signed in as you are signed out.</p>{error}\
         <form method=\"post\" action=\"/account/password\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required value=\"{email}\">\
         <label for=\"current\">Current password</label>\
         <input id=\"current\" name=\"current\" type=\"password\" autocomplete=\"current-password\" required>\
         {fields}<label><input name=\"everywhere\" type=\"checkbox\" value=\"yes\"> Also \
         sign out everywhere: end every token of mine (the command line, CI), in every \
         organization</label>\
         <button type=\"submit\">Change password</button></form>",
        error = error_line(error),
        csrf = escape(csrf),
        email = escape(email),
        fields = new_password_fields(),
    );
    page(StatusCode::OK, "Change your password", &body)
}

/// `GET /account/password`.
pub async fn change_password_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let email = signed_in(&state, &headers)
        .await
        .map(|session| session.identity.email)
        .unwrap_or_default();
    with_csrf(&state, CHANGE_CSRF_COOKIE, |csrf| {
        change_page(csrf, &email, None)
    })
}

#[derive(serde::Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    /// The "sign out everywhere" box: also revoke every refresh token of the identity (in
    /// every organization), and with them the access tokens issued before now.
    #[serde(default)]
    everywhere: Option<String>,
}

impl BodyShape for ChangeForm {
    const MAX_BYTES: usize = 16 * 1024;
    const EXPECTED: &'static str = "the password form";
}

/// `POST /account/password`: the current password is checked like a sign-in (same limits,
/// same audit), then the new one replaces it for the identity.
pub async fn change_password(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<ChangeForm>,
) -> Response {
    if let Some(refusal) = refuse_forged_form(
        &state,
        &headers,
        CHANGE_CSRF_COOKIE,
        &form.csrf,
        "This form expired or was not sent from this site. Open the page again.",
    ) {
        return refusal;
    }
    if form.password != form.confirm {
        return change_page(
            &form.csrf,
            &form.email,
            Some("The two new passwords differ."),
        );
    }
    let identity = match sign_in_with_password(
        &state,
        &headers,
        &form.email,
        &form.current,
        &meta,
        SignInPage::ChangePassword,
        |error| change_page(&form.csrf, &form.email, Some(error)),
    )
    .await
    {
        Ok(signed_in) => signed_in.identity,
        Err(page) => return page,
    };
    match state
        .auth
        .accounts()
        .change_password(&identity, form.password, &meta)
        .await
    {
        Ok(()) if form.everywhere.is_some() => {
            match state
                .auth
                .sessions()
                .sign_out_everywhere(&identity, &meta)
                .await
            {
                Ok(()) => done_page(
                    &state,
                    CHANGE_CSRF_COOKIE,
                    "Password changed",
                    "Your password is changed, and you are signed out everywhere: every token \
                     of yours stopped working. Sign in again where you need to.",
                ),
                Err(err) => {
                    tracing::error!(error = %err, "could not sign out everywhere");
                    error_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Your password is changed, but your tokens could not all be ended; \
                         try again to sign out everywhere.",
                    )
                }
            }
        }
        Ok(()) => done_page(
            &state,
            CHANGE_CSRF_COOKIE,
            "Password changed",
            "Your password is changed. Sign in again where you were signed in with a browser.",
        ),
        Err(DomainError::InvalidInput(message)) => {
            change_page(&form.csrf, &form.email, Some(&message))
        }
        Err(err) => {
            tracing::error!(error = %err, "could not change a password");
            error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

/// The end of a form: a message, and its CSRF cookie cleared.
fn done_page(state: &AppState, cookie: &'static str, title: &str, message: &str) -> Response {
    let mut response = page(
        StatusCode::OK,
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    );
    set_cookie(
        &mut response,
        cookie,
        "",
        0,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

fn forgot_page(csrf: &str, error: Option<&str>) -> Response {
    let body = format!(
        "<h1>Forgot your password?</h1><p>Enter your email; if it signs in here, a link to set \
         a new password is on its way (valid one hour).</p>{error}\
         <form method=\"post\" action=\"/forgot\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\
         <button type=\"submit\">Send the link</button></form>",
        error = error_line(error),
        csrf = escape(csrf),
    );
    page(StatusCode::OK, "Forgot your password?", &body)
}

const NO_MAIL: &str = "This server sends no email, so it cannot send a reset link. Ask an \
     operator to set a password for you ('prismd users set-password').";

/// `GET /forgot`.
pub async fn forgot_form(State(state): State<AppState>) -> Response {
    if state.mail.is_none() {
        return error_page(StatusCode::NOT_FOUND, NO_MAIL);
    }
    with_csrf(&state, FORGOT_CSRF_COOKIE, |csrf| forgot_page(csrf, None))
}

#[derive(serde::Deserialize)]
pub struct ForgotForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
}

impl BodyShape for ForgotForm {
    const MAX_BYTES: usize = 4 * 1024;
    const EXPECTED: &'static str = "the forgot-password form";
}

/// `POST /forgot`: every well-formed request gets the same answer at the same speed, whether
/// the email signs in here or not (the mail goes out in the background); requests are limited
/// per email and per address.
pub async fn forgot(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<ForgotForm>,
) -> Response {
    let Some(mailer) = state.mail.clone() else {
        return error_page(StatusCode::NOT_FOUND, NO_MAIL);
    };
    if let Some(refusal) = refuse_forged_form(
        &state,
        &headers,
        FORGOT_CSRF_COOKIE,
        &form.csrf,
        "This form expired or was not sent from this site. Open the page again.",
    ) {
        return refusal;
    }
    let mut keys = vec![LimitKey::reset_account(&form.email)];
    keys.extend(LimitKey::address(LimitKind::ResetAddress, &meta));
    if let Some(refused) = login_locked(&state, &keys).await {
        return refused;
    }
    // Each request counts, whatever it finds. The one that reaches the limit is still served:
    // the lock it sets refuses the next one (checked above), so the limit is the number served.
    if let Err(err) = state.limits().fail(&keys, &meta, None).await {
        tracing::error!(error = %err, "could not count a reset request");
        return error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
    }
    match state
        .auth
        .accounts()
        .start_password_reset(&form.email, &meta)
        .await
    {
        Ok(Some((token, identity))) => {
            let link = format!("{}/reset?token={token}", state.auth.settings().issuer);
            let mail = crate::mail::password_reset(&identity.email, &link);
            tokio::spawn(async move {
                if let Err(err) = mailer.send(mail).await {
                    tracing::warn!(error = %err, "could not send a password-reset mail");
                }
            });
        }
        Ok(None) => {}
        Err(err) => {
            tracing::error!(error = %err, "could not start a password reset");
            return error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
        }
    }
    done_page(
        &state,
        FORGOT_CSRF_COOKIE,
        "Check your mail",
        "If this email signs in here, a link to set a new password is on its way. It works \
         once, for one hour.",
    )
}
