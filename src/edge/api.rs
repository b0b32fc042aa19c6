//! The REST API face (`/v1/...`): parses a request into an [`Operation`] and renders its
//! [`Done`] as JSON (failures become problem+json in `render.rs`). No session logic here.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::route::Route;
use crate::labels::Outcome;
use crate::ops::{Done, Failure, Operation};
use crate::server::body::{self, Body};
use crate::session::{ConfState, SignInOptions, Snapshot};

/// A phone number the gateway accepts: at most 24 characters (docs/gateway.md, "Sign-in").
const MAX_PHONENUM_LEN: usize = 24;
/// `memberNum` bounds of `requestagentconf`.
const MEMBER_NUM: std::ops::RangeInclusive<u64> = 1..=120;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    phonenum: Option<String>,
    status: Option<u8>,
    #[serde(default)]
    force: bool,
}

fn is_blank(b: &Bytes) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// The operation a route asks for.
pub fn parse(route: Route, body: Bytes) -> Result<Operation, Failure> {
    Ok(match route {
        Route::SignIn => Operation::SignIn { opts: sign_in_options(&body)?, refuse_if_signed_in: false },
        Route::GetSession => Operation::GetSession,
        Route::SignOut => Operation::SignOut(crate::gateway::GatewayMethod::Logout),
        Route::CreateConference => {
            check_conference_body(&body)?;
            Operation::CreateConference { body }
        }
        Route::StopAnnouncement => {
            Operation::Call { method: crate::gateway::GatewayMethod::StopVoiceToConf, body: None }
        }
        Route::Events => Operation::Subscribe,
    })
}

fn sign_in_options(body: &Bytes) -> Result<SignInOptions, Failure> {
    let req: SignInBody = if is_blank(body) {
        SignInBody::default()
    } else if body.trim_ascii_start().first() != Some(&b'{') {
        // serde would take `[null, null]` as the struct's fields in order.
        return Err(Failure::BadRequest("body must be a JSON object".into()));
    } else {
        serde_json::from_slice(body).map_err(|e| Failure::BadRequest(format!("invalid JSON body: {e}")))?
    };
    if let Some(n) = &req.phonenum {
        if n.is_empty()
            || n.len() > MAX_PHONENUM_LEN
            || !n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'*' || c == b'#')
        {
            return Err(Failure::BadRequest("phonenum must be 1-24 digits".into()));
        }
    }
    if let Some(s) = req.status {
        if !(3..=5).contains(&s) {
            return Err(Failure::BadRequest("status must be 3 (busy), 4 (idle) or 5 (wrap-up)".into()));
        }
    }
    Ok(SignInOptions { force: req.force, phonenum: req.phonenum, status: req.status, ..SignInOptions::default() })
}

/// The gateway's own body for `requestagentconf`; `memberNum` is checked here so a bad one
/// never costs a gateway call, the rest (`time`, `playMode`, ...) passes through.
fn check_conference_body(body: &Bytes) -> Result<(), Failure> {
    if is_blank(body) {
        return Err(Failure::BadRequest("body required: {\"memberNum\": 1..120}".into()));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| Failure::BadRequest(format!("invalid JSON body: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(Failure::BadRequest("body must be a JSON object".into()));
    };
    // A JSON number with no fraction is an integer whatever its spelling (`39.0`, `3.9e1`),
    // as JSON Schema and the gateway's JSON binding both read it.
    let whole =
        |v: &Value| v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
    match obj.get("memberNum").and_then(whole) {
        Some(n) if MEMBER_NUM.contains(&n) => Ok(()),
        _ => Err(Failure::BadRequest("memberNum must be an integer in 1..120".into())),
    }
}

/// What an event stream needs from the request and the process.
pub struct StreamContext<'a> {
    /// `Last-Event-ID`: resume after this event (`None`: from now).
    pub after: Option<u64>,
    /// Ends the stream when the process shuts down.
    pub shutdown: &'a tokio::sync::watch::Receiver<bool>,
}

/// `Retry-After` on 202 "conference pending": the smallest whole number of seconds.
const PENDING_RETRY_AFTER_SECS: u64 = 1;

/// The response for a finished operation.
pub fn render(done: Done, stream: StreamContext<'_>) -> (Response<Body>, Outcome) {
    let resp = match done {
        Done::SignedIn { session, created } => {
            body::json(if created { StatusCode::CREATED } else { StatusCode::OK }, &view(&session))
        }
        Done::Session(session) => body::json(StatusCode::OK, &view(&session)),
        Done::Subscribed(session) => super::sse::subscribe(session, stream.after, stream.shutdown.clone()),
        Done::SignedOut(_) => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Done::Replied { .. } => body::json_static(StatusCode::OK, r#"{"stopped":true}"#),
        Done::Conference(state) => body::json(
            StatusCode::CREATED,
            &json!({"confId": state.conf_id(), "chairperson": matches!(state, ConfState::Chair { .. }), "conference": state}),
        ),
        Done::ConferencePending => {
            let mut r = body::json(
                StatusCode::ACCEPTED,
                &json!({"confId": null, "chairperson": false, "conference": ConfState::Requested, "pending": true}),
            );
            // When to look again (GET /v1/session): the gateway's confirmation event is
            // usually there well within a second.
            r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(PENDING_RETRY_AFTER_SECS));
            r
        }
        // Not an operation this face asks for.
        Done::Event(_) => body::json_static(StatusCode::OK, "{}"),
    };
    (resp, Outcome::Ok)
}

/// The session state shown to the app.
fn view(s: &Snapshot) -> Value {
    let conf = s.conf;
    json!({
        "agentId": s.agent_id,
        "signedIn": s.signed_in,
        "conference": conf,
        "confId": conf.conf_id(),
        "chairperson": match conf {
            ConfState::Chair { .. } => json!(true),
            ConfState::Unknown => Value::Null,
            _ => json!(false),
        },
    })
}

/// `Last-Event-ID`: absent (or empty) means "from now"; anything but an event id (1 to 19
/// digits, as the OpenAPI says) is refused rather than read as "from now", which would
/// silently skip what the app asked to resume.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Failure> {
    let Some(v) = headers.get("last-event-id") else { return Ok(None) };
    let v = v.to_str().map(str::trim).unwrap_or("-");
    if v.is_empty() {
        return Ok(None);
    }
    let id = (v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse().ok()).flatten();
    id.map(Some).ok_or_else(|| Failure::BadRequest("Last-Event-ID must be an event id: 1 to 19 digits".into()))
}
