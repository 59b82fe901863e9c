//! The pages where a single-use link sets a password: `/invite` (an invitation: a new person's
//! first password) and `/reset` (a link from "Forgot password"). Both show the form for the
//! link's email, then check CSRF, the link and the two passwords, and spend the link.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::body::{BodyShape, JsonOrForm};
use super::web::{error_page, escape, page, refuse_forged_form, set_cookie};
use super::{AppState, ClientMeta};
use crate::domain::secrets::random_secret;
use crate::domain::{DomainError, RequestMeta};

const UNAVAILABLE: &str = "the service is temporarily unavailable; try again";

/// Which kind of link a page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    Invitation,
    Reset,
}

impl LinkKind {
    fn path(self) -> &'static str {
        match self {
            Self::Invitation => "/invite",
            Self::Reset => "/reset",
        }
    }

    fn csrf_cookie(self) -> &'static str {
        match self {
            Self::Invitation => "prism_invite_csrf",
            Self::Reset => "prism_reset_csrf",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Invitation => "Set your password",
            Self::Reset => "Set a new password",
        }
    }

    /// What a used, expired or unknown link shows.
    fn gone(self) -> &'static str {
        match self {
            Self::Invitation => {
                "This invitation link was already used or has expired. Ask an Owner or Admin \
                 for a new one."
            }
            Self::Reset => {
                "This link was already used or has expired. Ask for a new one on the 'Forgot \
                 password' page."
            }
        }
    }

    /// The page after the password was set (HTML).
    fn done(self) -> &'static str {
        match self {
            Self::Invitation => {
                "<h1>Password set</h1><p>You can now sign in, for example with \
                 <code>prism login</code>.</p>"
            }
            Self::Reset => {
                "<h1>Password set</h1><p>Your new password works now, and your email address \
                 is confirmed.</p>"
            }
        }
    }

    /// The email of the person a usable link is for.
    async fn email(self, state: &AppState, token: &str) -> Result<Option<String>, DomainError> {
        let accounts = state.auth.accounts();
        Ok(match self {
            Self::Invitation => accounts.invitation_user(token).await?.map(|u| u.email),
            Self::Reset => accounts
                .password_reset_identity(token)
                .await?
                .map(|i| i.email),
        })
    }

    /// Sets the password and spends the link.
    async fn spend(
        self,
        state: &AppState,
        token: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), DomainError> {
        let accounts = state.auth.accounts();
        match self {
            Self::Invitation => accounts.accept_invitation(token, password, meta).await,
            Self::Reset => accounts.accept_password_reset(token, password, meta).await,
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    token: String,
}

/// The form of both pages.
#[derive(serde::Deserialize)]
pub struct PasswordLinkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

impl BodyShape for PasswordLinkForm {
    const MAX_BYTES: usize = 16 * 1024;
    const EXPECTED: &'static str = "the password form";
}

fn link_page(
    kind: LinkKind,
    token: &str,
    csrf: &str,
    email: &str,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>{title}</h1><p>for {email}</p>{error}\
         <form method=\"post\" action=\"{path}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <label for=\"password\">New password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"8\" required autofocus>\
         <label for=\"confirm\">Repeat it</label>\
         <input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" minlength=\"8\" required>\
         <button type=\"submit\">Set password</button></form>",
        title = kind.title(),
        path = kind.path(),
        email = escape(email),
        csrf = escape(csrf),
        token = escape(token),
    );
    page(StatusCode::OK, kind.title(), &body)
}

async fn show(state: &AppState, kind: LinkKind, token: &str) -> Response {
    let email = match kind.email(state, token).await {
        Ok(Some(email)) => email,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, kind.gone()),
        Err(err) => {
            tracing::error!(error = %err, "password link look-up failed");
            return error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
        }
    };
    let Ok(csrf) = random_secret() else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let mut response = link_page(kind, token, &csrf, &email, None);
    set_cookie(
        &mut response,
        kind.csrf_cookie(),
        &csrf,
        1800,
        state.web.secure_cookies,
        "Strict",
    );
    response
}

async fn submit(
    state: &AppState,
    kind: LinkKind,
    meta: &RequestMeta,
    headers: &HeaderMap,
    form: PasswordLinkForm,
) -> Response {
    if let Some(refusal) = refuse_forged_form(
        state,
        headers,
        kind.csrf_cookie(),
        &form.csrf,
        "This form expired or was not sent from this site. Open the link again.",
    ) {
        return refusal;
    }
    let email = match kind.email(state, &form.token).await {
        Ok(Some(email)) => email,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, kind.gone()),
        Err(_) => return error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let retry = |error: &str| link_page(kind, &form.token, &form.csrf, &email, Some(error));
    if form.password != form.confirm {
        return retry("The two passwords differ.");
    }
    match kind
        .spend(state, &form.token, form.password.clone(), meta)
        .await
    {
        Ok(()) => {
            let mut response = page(StatusCode::OK, "Password set", kind.done());
            set_cookie(
                &mut response,
                kind.csrf_cookie(),
                "",
                0,
                state.web.secure_cookies,
                "Strict",
            );
            response
        }
        Err(DomainError::InvalidInput(message)) => retry(&message),
        Err(DomainError::NotFound(_)) => error_page(StatusCode::NOT_FOUND, kind.gone()),
        Err(err) => {
            tracing::error!(error = %err, "could not set a password with a link");
            error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

/// `GET /invite?token=...`: the page where an invited person sets their first password.
pub async fn invite(State(state): State<AppState>, Query(query): Query<LinkQuery>) -> Response {
    show(&state, LinkKind::Invitation, &query.token).await
}

/// `POST /invite`: sets the password and spends the invitation.
pub async fn accept_invite(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<PasswordLinkForm>,
) -> Response {
    submit(&state, LinkKind::Invitation, &meta, &headers, form).await
}

/// `GET /reset?token=...`: the page where a reset link sets a new password.
pub async fn reset_form(State(state): State<AppState>, Query(query): Query<LinkQuery>) -> Response {
    show(&state, LinkKind::Reset, &query.token).await
}

/// `POST /reset`: sets the password and spends the link; the email is now verified.
pub async fn reset(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<PasswordLinkForm>,
) -> Response {
    submit(&state, LinkKind::Reset, &meta, &headers, form).await
}
