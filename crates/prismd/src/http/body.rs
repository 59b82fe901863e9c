//! Request-body extractors that answer bad input the OAuth way: a JSON or form body with the
//! right content type, within a size limit, into a typed struct, or a clear 400/413/415 that
//! never echoes what was sent (parser messages can quote input, so they are not passed on);
//! and the middleware that reads what a handler left of a body before the answer goes out.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::HttpError;

/// A body type's limits and the sentence that tells a client what was expected.
pub trait BodyShape: DeserializeOwned {
    /// Bodies larger than this are refused with 413.
    const MAX_BYTES: usize;
    /// For example `a JSON object with a string field "refresh_token"`.
    const EXPECTED: &'static str;
}

/// A JSON body (`Content-Type: application/json`).
pub struct JsonBody<T>(pub T);

/// A JSON or form-encoded body; OAuth endpoints take both.
pub struct JsonOrForm<T>(pub T);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Form,
}

fn content_format(req: &Request) -> Option<Format> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    format_of(value)
}

fn format_of(content_type: &str) -> Option<Format> {
    let essence = content_type.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Some(Format::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(Format::Form)
    } else {
        None
    }
}

async fn read_limited(req: Request, limit: usize) -> Result<Bytes, HttpError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))
}

fn parse<T: BodyShape>(format: Format, bytes: &[u8]) -> Result<T, HttpError> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|err| {
            if err.is_data() {
                HttpError::invalid_request(format!("expected {}", T::EXPECTED))
            } else {
                HttpError::invalid_request(format!(
                    "the body is not valid JSON; expected {}",
                    T::EXPECTED
                ))
            }
        }),
        Format::Form => serde_urlencoded::from_bytes(bytes).map_err(|_| {
            HttpError::invalid_request(format!(
                "the form body is malformed or repeats a parameter; expected {}",
                T::EXPECTED
            ))
        }),
    }
}

fn unsupported(allowed: &str) -> HttpError {
    HttpError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
        format!("the Content-Type header must be {allowed}"),
    )
}

/// The format a JSON-only endpoint reads, or its 415.
fn json_only(format: Option<Format>) -> Result<Format, HttpError> {
    match format {
        Some(Format::Json) => Ok(Format::Json),
        _ => Err(unsupported("application/json")),
    }
}

/// The format a JSON-or-form endpoint reads, or its 415.
fn json_or_form(format: Option<Format>) -> Result<Format, HttpError> {
    format.ok_or_else(|| unsupported("application/x-www-form-urlencoded or application/json"))
}

impl<S: Send + Sync, T: BodyShape> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let format = json_only(content_format(&req))?;
        let bytes = read_limited(req, T::MAX_BYTES).await?;
        parse(format, &bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: BodyShape> FromRequest<S> for JsonOrForm<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let format = json_or_form(content_format(&req))?;
        let bytes = read_limited(req, T::MAX_BYTES).await?;
        parse(format, &bytes).map(JsonOrForm)
    }
}

/// What [`JsonBody`] does with a body already read, for the fuzz target.
pub(super) fn parse_json_body<T: BodyShape>(
    content_type: &str,
    bytes: &[u8],
) -> Result<T, HttpError> {
    let format = json_only(format_of(content_type))?;
    within_limit::<T>(bytes)?;
    parse(format, bytes)
}

/// What [`JsonOrForm`] does with a body already read, for the fuzz target.
pub(super) fn parse_json_or_form<T: BodyShape>(
    content_type: &str,
    bytes: &[u8],
) -> Result<T, HttpError> {
    let format = json_or_form(format_of(content_type))?;
    within_limit::<T>(bytes)?;
    parse(format, bytes)
}

fn within_limit<T: BodyShape>(bytes: &[u8]) -> Result<(), HttpError> {
    if bytes.len() > T::MAX_BYTES {
        return Err(too_large(T::MAX_BYTES));
    }
    Ok(())
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// How much of a body a handler left unread is still read, and thrown away, before its
/// answer is sent. Beyond this the answer goes out anyway; the request timeout bounds the
/// time either way.
const DRAIN_UNREAD_BYTES: u64 = 16 * 1024 * 1024;

/// Middleware: whatever part of the request body the handler did not read (a 413 for a body
/// over its limit, a 415, a 401 before the body mattered) is read and thrown away before the
/// answer goes out. Answering first makes an HTTP/2 server reset the stream (`CANCEL`),
/// which clients report as a framing error without the status, and an HTTP/1 client still
/// sending may see the connection close before it reads the answer; either way the client
/// never learns why it was refused.
pub(super) async fn drain_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let kept = Arc::new(Mutex::new(Some(body)));
    let lent = Body::new(LentBody(kept.clone()));
    let response = next.run(Request::from_parts(parts, lent)).await;
    let unread = kept.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(mut unread) = unread
        && !unread.is_end_stream()
    {
        let mut seen = 0u64;
        while seen <= DRAIN_UNREAD_BYTES {
            match unread.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |data| data.len() as u64);
                }
                Some(Err(_)) | None => break,
            }
        }
    }
    response
}

/// The request body as the handler sees it, while the middleware keeps hold of it.
struct LentBody(Arc<Mutex<Option<Body>>>);

impl HttpBody for LentBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
