//! The response body type used by every handler, and small constructors.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Boxed so one handler can return a fixed body, a stream, or a body that fails on purpose
/// (the simulator's connection-reset fault).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_text(status, value.to_string())
}

/// A JSON response with `status` whose text is fixed: no value built and serialized per
/// request (the stop answer, on the hot path, cost ~2,500 instructions that way).
pub fn json_static(status: StatusCode, text: &'static str) -> Response<Body> {
    json_text(status, text)
}

fn json_text(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
