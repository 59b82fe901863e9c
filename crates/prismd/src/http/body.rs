//! Request-body extractors that answer bad input the OAuth way: a JSON or form body with the
//! right content type, within a size limit, into a typed struct, or a clear 400/413/415 that
//! never echoes what was sent (parser messages can quote input, so they are not passed on).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
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
