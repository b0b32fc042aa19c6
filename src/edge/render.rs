//! Where a [`Failure`] becomes a response, a metric outcome and a log line, from one table:
//! [`spec`] gives each kind its status, outcome label, problem type, title, default detail and
//! the retcode the pass-through face answers with. Adding a kind is one row there.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use crate::gateway::wire::JSON_UTF8;
use crate::gateway::{Envelope, Retcode, UpstreamError};
use crate::labels::{AuthFailureReason, Outcome};
use crate::ops::failure::Overload;
use crate::ops::limits::LimitState;
use crate::ops::Failure;
use crate::server::body::{full, Body};

pub const PROBLEM_JSON: &str = "application/problem+json";
/// `Retry-After` of `keys-unavailable`: a failed key fetch is retried within a few seconds.
const KEYS_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of `too-many-agents` / `sign-in-busy`: a queue of sign-ins drains in seconds.
const OVERLOAD_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of `gateway-unavailable`: the readiness probe looks at the gateway every 5 s,
/// and a gateway that restarts takes at least that.
const GATEWAY_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of `store-unavailable`: Redis reconnects within a second or two, and a newer
/// Guid reaches a replica within a maintenance round once it does.
const STORE_RETRY_AFTER_SECS: u64 = 1;
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How the pass-through face words a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// ccgate's own refusal: this `CCG-nnn` retcode with the kind's HTTP status. Huawei's
    /// codes are `NNN-NNN`, so the namespace cannot collide with them.
    Ccg(&'static str),
    /// Answered exactly as the gateway would: HTTP 200 with the gateway's own envelope when it
    /// refused, else this retcode (a chair or conference check ccgate made itself).
    Gateway(Retcode),
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    pub status: StatusCode,
    pub outcome: Outcome,
    /// The last part of the problem `type` (`urn:ccgate:problem:{slug}`).
    pub slug: &'static str,
    pub title: &'static str,
    /// The problem `detail` unless the failure carries a more specific one.
    pub detail: &'static str,
    pub wire: Wire,
}

macro_rules! row {
    ($status:ident, $outcome:ident, $slug:literal, $title:literal, $detail:literal, $wire:expr) => {
        &Spec {
            status: StatusCode::$status,
            outcome: Outcome::$outcome,
            slug: $slug,
            title: $title,
            detail: $detail,
            wire: $wire,
        }
    };
}

/// The table. The status of every kind is part of the public contract (README, "Errors").
pub fn spec(f: &Failure) -> &'static Spec {
    use Wire::{Ccg, Gateway};
    match f {
        Failure::Unauthenticated(_) => row!(
            UNAUTHORIZED,
            Unauthenticated,
            "invalid-token",
            "Invalid or missing bearer token",
            "the token is not valid",
            Ccg("CCG-401")
        ),
        Failure::Forbidden(_) => row!(FORBIDDEN, Forbidden, "forbidden", "Forbidden", "forbidden", Ccg("CCG-403")),
        Failure::NoGateway(_) => row!(
            FORBIDDEN,
            Forbidden,
            "no-gateway",
            "No gateway for this token",
            "the token names no contact centre this ccgate serves, or more than one; nothing was sent to any gateway",
            Ccg("CCG-403")
        ),
        Failure::NotChairperson(None) => row!(
            FORBIDDEN,
            NotChairperson,
            "not-chairperson",
            "Not the conference chairperson",
            "only the conference chairperson may do this; ccgate refused it without calling the gateway",
            Gateway(Retcode::NotChairperson)
        ),
        Failure::NotChairperson(Some(_)) => row!(
            FORBIDDEN,
            NotChairperson,
            "not-chairperson",
            "Not the conference chairperson",
            "the gateway says this agent is not the conference chairperson",
            Gateway(Retcode::NotChairperson)
        ),
        Failure::NoConference(None) => row!(
            CONFLICT,
            NoConference,
            "no-conference",
            "No conference",
            "the agent has no conference; create one with POST /v1/conference",
            Gateway(Retcode::NoConference)
        ),
        Failure::NoConference(Some(_)) => row!(
            CONFLICT,
            NoConference,
            "no-conference",
            "No conference",
            "the gateway says this agent has no conference",
            Gateway(Retcode::NoConference)
        ),
        Failure::NoSession => row!(
            CONFLICT,
            NoSession,
            "no-session",
            "No gateway session",
            "the agent is not signed in through ccgate; POST /v1/session first",
            Ccg("CCG-409")
        ),
        // The pass-through face relays the gateway's own answer when this request's call
        // learned of the loss; otherwise it says so in its own code.
        Failure::SessionLost(Some(_)) => row!(
            SERVICE_UNAVAILABLE,
            SessionLost,
            "session-lost",
            "Gateway session lost",
            "the gateway ended the agent's session; sign in again with POST /v1/session",
            Gateway(Retcode::NotSignedIn)
        ),
        Failure::SessionLost(None) => row!(
            SERVICE_UNAVAILABLE,
            SessionLost,
            "session-lost",
            "Gateway session lost",
            "the gateway ended the agent's session; sign in again with POST /v1/session",
            Ccg("CCG-410")
        ),
        Failure::AlreadySignedIn(_) => row!(
            CONFLICT,
            Rejected,
            "already-signed-in",
            "Agent already signed in",
            "the agent is signed in elsewhere; POST /v1/session with {\"force\": true} takes the session over",
            Gateway(Retcode::AlreadySignedIn)
        ),
        Failure::NoCredentials => row!(
            FORBIDDEN,
            Forbidden,
            "no-credentials",
            "Agent not provisioned",
            "ccgate has no gateway credentials for this agent; ask the operator to add them",
            Ccg("CCG-403")
        ),
        Failure::Conflict(_) => row!(
            CONFLICT,
            Rejected,
            "conflict",
            "Conflicts with the agent's state",
            "the gateway refused the operation in the agent's current state (see retcode)",
            Gateway(Retcode::Other)
        ),
        Failure::InvalidParameters(_) => row!(
            BAD_REQUEST,
            Rejected,
            "bad-request",
            "Bad request",
            "the gateway refused the request's parameters (see retcode)",
            Gateway(Retcode::Other)
        ),
        Failure::Refused(_) => row!(
            BAD_GATEWAY,
            GatewayError,
            "gateway-refused",
            "Gateway refused the operation",
            "the gateway refused the operation",
            Gateway(Retcode::Other)
        ),
        Failure::BadRequest(_) => {
            row!(BAD_REQUEST, BadRequest, "bad-request", "Bad request", "bad request", Ccg("CCG-400"))
        }
        Failure::RateLimited(_) => {
            row!(TOO_MANY_REQUESTS, RateLimited, "rate-limited", "Rate limit exceeded", "rate limited", Ccg("CCG-429"))
        }
        Failure::Throttled(_) => row!(
            TOO_MANY_REQUESTS,
            RateLimited,
            "too-many-bad-tokens",
            "Too many refused tokens",
            "too many tokens from this address were refused; no token is checked from it for a while",
            Ccg("CCG-429")
        ),
        Failure::PayloadTooLarge => row!(
            PAYLOAD_TOO_LARGE,
            BadRequest,
            "payload-too-large",
            "Request body too large",
            "the request body exceeds the configured limit",
            Ccg("CCG-413")
        ),
        Failure::BodyTimeout => row!(
            REQUEST_TIMEOUT,
            BadRequest,
            "request-timeout",
            "Request body too slow",
            "the request body did not arrive within the configured time",
            Ccg("CCG-408")
        ),
        Failure::StoreUnavailable => row!(
            SERVICE_UNAVAILABLE,
            StoreUnavailable,
            "store-unavailable",
            "Shared store unavailable",
            "ccgate cannot confirm this agent's session with its shared store (Redis unreachable, or the replica polling the agent has not yet shared a new Guid); nothing was sent in its name: retry shortly",
            Ccg("CCG-503")
        ),
        Failure::KeysUnavailable => row!(
            SERVICE_UNAVAILABLE,
            KeysUnavailable,
            "keys-unavailable",
            "Identity provider keys unavailable",
            "ccgate could not fetch the keys of this token's identity provider yet; retry shortly",
            Ccg("CCG-503")
        ),
        Failure::Overloaded(Overload::Agents) => row!(
            SERVICE_UNAVAILABLE,
            Overloaded,
            "too-many-agents",
            "Too many agents on this ccgate",
            "this ccgate holds sessions.max_agents agents; sign another agent out, or use another replica",
            Ccg("CCG-503")
        ),
        Failure::Overloaded(Overload::SignInQueue) => row!(
            SERVICE_UNAVAILABLE,
            Overloaded,
            "sign-in-busy",
            "Too many sign-ins waiting",
            "sessions.signin_queue sign-ins are already waiting for the gateway; retry shortly",
            Ccg("CCG-503")
        ),
        Failure::Overloaded(Overload::Files) => row!(
            SERVICE_UNAVAILABLE,
            Overloaded,
            "file-limit",
            "Too many agents for the open-file limit",
            "this ccgate's open-file limit leaves room for no more agents' gateway connections; use another replica (the operator should raise the limit)",
            Ccg("CCG-503")
        ),
        Failure::Overloaded(Overload::Streams) => row!(
            TOO_MANY_REQUESTS,
            RateLimited,
            "too-many-streams",
            "Too many event streams for this agent",
            "the agent has sessions.max_streams_per_agent event streams open on this ccgate; close one it no longer reads",
            Ccg("CCG-429")
        ),
        Failure::NotFound => row!(NOT_FOUND, NotFound, "not-found", "Not found", "no such route", Ccg("CCG-404")),
        Failure::MethodNotAllowed(_) => row!(
            METHOD_NOT_ALLOWED,
            BadRequest,
            "method-not-allowed",
            "Method not allowed",
            "wrong HTTP method",
            Ccg("CCG-405")
        ),
        Failure::Upstream(UpstreamError::Unavailable(_)) => row!(
            SERVICE_UNAVAILABLE,
            UpstreamUnavailable,
            "gateway-unavailable",
            "Gateway unavailable",
            "the CC-Gateway could not be reached",
            Ccg("CCG-503")
        ),
        Failure::Upstream(UpstreamError::Timeout) => row!(
            GATEWAY_TIMEOUT,
            Timeout,
            "gateway-timeout",
            "Gateway timeout",
            "the CC-Gateway did not answer in time",
            Ccg("CCG-504")
        ),
        Failure::Upstream(UpstreamError::BadStatus(_)) => row!(
            BAD_GATEWAY,
            GatewayError,
            "bad-gateway",
            "Bad gateway",
            "the CC-Gateway answered an unexpected HTTP status",
            Ccg("CCG-502")
        ),
        Failure::Upstream(UpstreamError::Malformed(_)) => row!(
            BAD_GATEWAY,
            GatewayError,
            "bad-gateway",
            "Bad gateway",
            "the CC-Gateway's answer was not a valid envelope",
            Ccg("CCG-502")
        ),
        Failure::Internal(_) => row!(
            INTERNAL_SERVER_ERROR,
            Internal,
            "internal",
            "Internal error",
            "internal error; see the proxy log",
            Ccg("CCG-500")
        ),
    }
}

/// The problem `detail`: the table's, or one that names what this failure carries.
fn detail(f: &Failure) -> Cow<'static, str> {
    match f {
        Failure::Unauthenticated(r) => auth_detail(*r).into(),
        Failure::Forbidden(why) => (*why).into(),
        Failure::Refused(r) if r.message.is_empty() => format!("the gateway answered retcode {}", r.retcode).into(),
        Failure::Refused(r) => format!("the gateway answered retcode {}: {}", r.retcode, r.message).into(),
        Failure::BadRequest(why) => why.clone().into(),
        Failure::RateLimited(r) => {
            format!("limit {} ({} requests) tripped; retry in {} s", r.name(), r.scope.as_str(), r.retry_after_secs)
                .into()
        }
        Failure::MethodNotAllowed(allow) => format!("this route accepts {allow}").into(),
        Failure::NoGateway(Some(claim)) => format!(
            "the token's `{claim}` claim names no contact centre this ccgate serves (or one its provider's gateway \
             contradicts); nothing was sent to any gateway"
        )
        .into(),
        Failure::Upstream(UpstreamError::BadStatus(s)) => format!("the CC-Gateway answered HTTP {}", s.as_u16()).into(),
        _ => spec(f).detail.into(),
    }
}

/// The retcode and `errorReason` a problem body carries: the gateway's when it refused, the
/// table's when ccgate answered in the gateway's name.
fn retcode_of(f: &Failure) -> Option<(&str, Option<i64>)> {
    if let Some(r) = f.gateway_refusal() {
        return Some((r.retcode.as_str(), r.error_reason));
    }
    match spec(f).wire {
        Wire::Gateway(code) if code != Retcode::Other && !matches!(f, Failure::SessionLost(_)) => {
            Some((code.as_str(), None))
        }
        _ => None,
    }
}

/// The RFC 9457 problem response for the REST API. `instance` is the request id (also in
/// `x-request-id` and the access line), so a problem an app reports leads to its log line.
/// `gateway`: the contact centre the token is for, when authenticated; a server-side problem
/// (5xx) names it, so an app and an operator see which one failed.
pub fn problem(f: &Failure, request_id: &HeaderValue, gateway: Option<&str>) -> Response<Body> {
    let s = spec(f);
    let mut body = json!({
        "type": format!("urn:ccgate:problem:{}", s.slug),
        "title": s.title,
        "status": s.status.as_u16(),
        "detail": detail(f),
    });
    if let Ok(id) = request_id.to_str() {
        body["instance"] = json!(format!("urn:ccgate:request:{id}"));
    }
    if let Some((code, reason)) = retcode_of(f) {
        body["retcode"] = json!(code);
        if let Some(r) = reason {
            body["errorReason"] = json!(r);
        }
    }
    if let Failure::Unauthenticated(r) = f {
        body["reason"] = json!(r.as_str());
    }
    if let Failure::RateLimited(r) = f {
        body["limit"] = json!(r.name());
    }
    if let Failure::NoGateway(Some(claim)) = f {
        body["claim"] = json!(&**claim);
    }
    if let Some(g) = gateway.filter(|_| s.status.is_server_error()) {
        body["gateway"] = json!(g);
    }
    respond(s.status, PROBLEM_JSON, Bytes::from(body.to_string()), f)
}

/// The gateway envelope for the pass-through face (`/agentgateway/resource/...`).
pub fn envelope(f: &Failure) -> Response<Body> {
    let s = spec(f);
    match s.wire {
        Wire::Gateway(_) if f.gateway_refusal().is_some_and(|r| !r.body.is_empty()) => {
            let body = f.gateway_refusal().map(|r| r.body.clone()).unwrap_or_default();
            respond(StatusCode::OK, JSON_UTF8, body, f)
        }
        Wire::Gateway(code) => {
            let (code, reason) = retcode_of(f).unwrap_or((code.as_str(), None));
            let result = reason.map(|r| json!({"errorReason": r})).unwrap_or_else(|| json!({}));
            let message = f.gateway_refusal().map_or_else(|| gateway_words(code).to_owned(), |r| r.message.clone());
            respond(StatusCode::OK, JSON_UTF8, Envelope::error(code, message, Some(result)).to_bytes(), f)
        }
        Wire::Ccg(code) => {
            let mut result = json!({});
            if let Failure::Unauthenticated(r) = f {
                result["reason"] = json!(r.as_str());
            }
            if let Failure::RateLimited(r) = f {
                result["limit"] = json!(r.name());
                result["retryAfter"] = json!(r.retry_after_secs);
            }
            respond(s.status, JSON_UTF8, Envelope::error(code, detail(f), Some(result)).to_bytes(), f)
        }
    }
}

/// What the gateway itself says with `code`, for checks ccgate makes in its name.
fn gateway_words(code: &str) -> &'static str {
    match Retcode::parse(code) {
        Retcode::NotChairperson => "the agent is not the chairperson",
        Retcode::NoConference => "the agent has no conference",
        Retcode::AlreadySignedIn => "the agent has signed in",
        _ => "",
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes, f: &Failure) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    match f {
        Failure::Unauthenticated(AuthFailureReason::MissingToken) => {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ccgate\""));
        }
        Failure::Unauthenticated(r) => {
            let v =
                format!("Bearer realm=\"ccgate\", error=\"invalid_token\", error_description=\"{}\"", auth_detail(*r));
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        Failure::MethodNotAllowed(allow) => {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        Failure::RateLimited(r) => {
            limit_headers(&r.state, h);
            h.insert(RETRY_AFTER, HeaderValue::from(r.retry_after_secs));
        }
        Failure::Throttled(secs) => {
            h.insert(RETRY_AFTER, HeaderValue::from(*secs));
        }
        Failure::KeysUnavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from(KEYS_RETRY_AFTER_SECS));
        }
        Failure::Overloaded(_) => {
            h.insert(RETRY_AFTER, HeaderValue::from(OVERLOAD_RETRY_AFTER_SECS));
        }
        Failure::StoreUnavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from(STORE_RETRY_AFTER_SECS));
        }
        Failure::Upstream(UpstreamError::Unavailable(_)) => {
            h.insert(RETRY_AFTER, HeaderValue::from(GATEWAY_RETRY_AFTER_SECS));
        }
        _ => {}
    }
    resp
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for a limit's
/// state: quota `q` over window `w` seconds; `r` left, full again in `t` seconds.
pub fn limit_headers(s: &LimitState, h: &mut HeaderMap) {
    // Written by hand into one buffer each, handed to the header without a copy: these two
    // headers go out on every limited request, and `format!` plus `HeaderValue::from_str` cost
    // two allocations and the formatting machinery each (~4,700 instructions a request). The
    // buffer is sized exactly: `Bytes` takes a full `Vec` as it is, and a part-full one only
    // with a second allocation.
    use crate::gateway::wire::decimal_len;
    let field = |a: (&[u8], u64), b: (&[u8], u64)| {
        let len = s.name.len() + 2 + a.0.len() + decimal_len(a.1) + b.0.len() + decimal_len(b.1);
        let mut v = Vec::with_capacity(len);
        v.push(b'"');
        v.extend_from_slice(s.name.as_bytes());
        v.push(b'"');
        for (key, n) in [a, b] {
            v.extend_from_slice(key);
            crate::gateway::wire::push_decimal(&mut v, n);
        }
        debug_assert_eq!(v.len(), v.capacity());
        HeaderValue::from_maybe_shared(Bytes::from(v))
    };
    let policy = field((b";q=", u64::from(s.quota)), (b";w=", s.window_secs));
    let state = field((b";r=", u64::from(s.remaining)), (b";t=", s.reset_secs));
    if let (Ok(p), Ok(v)) = (policy, state) {
        h.insert(RATELIMIT_POLICY.clone(), p);
        h.insert(RATELIMIT.clone(), v);
    }
}

/// Human text for each token failure. Never includes any part of the token.
pub fn auth_detail(r: AuthFailureReason) -> &'static str {
    match r {
        AuthFailureReason::MissingToken => "no bearer token in the Authorization header",
        AuthFailureReason::Malformed => "the token is not a well-formed JWT",
        AuthFailureReason::AlgorithmNotAllowed => "the token's signature algorithm is not allowed",
        AuthFailureReason::UnknownKey => "the token's key id (kid) is not in the key set",
        AuthFailureReason::BadSignature => "the token's signature does not verify",
        AuthFailureReason::Expired => "the token has expired",
        AuthFailureReason::NotYetValid => "the token is not valid yet (nbf)",
        AuthFailureReason::WrongIssuer => "the token's issuer (iss) is not the configured one",
        AuthFailureReason::WrongAudience => "the token's audience (aud) does not include ccgate",
        AuthFailureReason::MissingClaim => "the token lacks a required claim (exp, iss and aud are required)",
        AuthFailureReason::MissingAgent => "the token does not name an agent",
        AuthFailureReason::InvalidAgent => "the token's agent is not a work number in 101..999999",
        AuthFailureReason::Crit => "the token's crit header names an extension ccgate does not understand",
        AuthFailureReason::NoGateway => "the token names no contact centre this ccgate serves, or more than one",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayRefusal;

    fn refusal(code: &str) -> GatewayRefusal {
        GatewayRefusal { retcode: code.into(), message: String::new(), error_reason: Some(7), body: Bytes::new() }
    }

    /// The status and outcome of every kind are part of the public contract.
    #[test]
    fn statuses_are_pinned() {
        let cases: Vec<(Failure, u16, Outcome)> = vec![
            (Failure::Unauthenticated(AuthFailureReason::Expired), 401, Outcome::Unauthenticated),
            (Failure::Forbidden("x"), 403, Outcome::Forbidden),
            (Failure::NotChairperson(None), 403, Outcome::NotChairperson),
            (Failure::NoConference(None), 409, Outcome::NoConference),
            (Failure::NoSession, 409, Outcome::NoSession),
            (Failure::SessionLost(None), 503, Outcome::SessionLost),
            (Failure::AlreadySignedIn(None), 409, Outcome::Rejected),
            (Failure::NoCredentials, 403, Outcome::Forbidden),
            (Failure::Refused(refusal("100-007")), 502, Outcome::GatewayError),
            (Failure::refused(refusal("000-002")), 400, Outcome::Rejected),
            (Failure::refused(refusal("101-003")), 409, Outcome::Rejected),
            (Failure::refused(refusal("000-007")), 409, Outcome::Rejected),
            (Failure::refused(refusal("100-008")), 409, Outcome::Rejected),
            (Failure::BadRequest("x".into()), 400, Outcome::BadRequest),
            (Failure::Throttled(3), 429, Outcome::RateLimited),
            (Failure::Overloaded(Overload::Streams), 429, Outcome::RateLimited),
            (Failure::PayloadTooLarge, 413, Outcome::BadRequest),
            (Failure::BodyTimeout, 408, Outcome::BadRequest),
            (Failure::NotFound, 404, Outcome::NotFound),
            (Failure::MethodNotAllowed("GET"), 405, Outcome::BadRequest),
            (Failure::Upstream(UpstreamError::Unavailable("x".into())), 503, Outcome::UpstreamUnavailable),
            (Failure::Upstream(UpstreamError::Timeout), 504, Outcome::Timeout),
            (
                Failure::Upstream(UpstreamError::BadStatus(StatusCode::INTERNAL_SERVER_ERROR)),
                502,
                Outcome::GatewayError,
            ),
            (Failure::Upstream(UpstreamError::Malformed("x".into())), 502, Outcome::GatewayError),
            (Failure::Internal("x"), 500, Outcome::Internal),
        ];
        for (f, status, outcome) in cases {
            assert_eq!(spec(&f).status.as_u16(), status, "{f}");
            assert_eq!(spec(&f).outcome, outcome, "{f}");
            assert_eq!(problem(&f, &HeaderValue::from_static("r1"), None).status().as_u16(), status, "{f}");
        }
    }

    /// Every retryable 503 says when to retry.
    #[test]
    fn retryable_503s_carry_retry_after() {
        for f in [
            Failure::Upstream(UpstreamError::Unavailable("x".into())),
            Failure::StoreUnavailable,
            Failure::KeysUnavailable,
            Failure::Overloaded(Overload::Agents),
            Failure::Overloaded(Overload::Files),
            Failure::Overloaded(Overload::SignInQueue),
        ] {
            let r = problem(&f, &HeaderValue::from_static("r1"), None);
            assert_eq!(r.status().as_u16(), 503, "{f}");
            assert!(r.headers().contains_key(RETRY_AFTER), "{f}");
        }
    }

    /// A server-side problem names the contact centre the token is for; the app's own
    /// mistakes (4xx) do not need it.
    #[tokio::test]
    async fn server_side_problems_name_the_gateway() {
        use http_body_util::BodyExt;
        let body = |f: &Failure| {
            let r = problem(f, &HeaderValue::from_static("r1"), Some("acme"));
            async move {
                let bytes = r.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
            }
        };
        let down = body(&Failure::Upstream(UpstreamError::Unavailable("x".into()))).await;
        assert_eq!(down["gateway"], "acme", "{down}");
        assert_eq!(body(&Failure::SessionLost(None)).await["gateway"], "acme");
        assert!(body(&Failure::NoSession).await.get("gateway").is_none());
    }

    #[test]
    fn gateway_refusals_keep_retcode_and_reason() {
        let f = Failure::refused(refusal("101-002"));
        assert!(matches!(f, Failure::NotChairperson(Some(_))));
        assert_eq!(retcode_of(&f), Some(("101-002", Some(7))));
        // A local chair refusal answers in the gateway's words on the pass-through face.
        let local = envelope(&Failure::NotChairperson(None));
        assert_eq!(local.status(), StatusCode::OK);
        assert_eq!(retcode_of(&Failure::NotChairperson(None)), Some(("101-002", None)));
        assert_eq!(envelope(&Failure::NoSession).status(), StatusCode::CONFLICT);
    }

    /// The RateLimit headers read as IETF's draft writes them, at every number's extremes.
    #[test]
    fn limit_headers_are_the_ietf_fields() {
        let mut h = HeaderMap::new();
        let s = LimitState { name: "stop".into(), quota: 5, window_secs: 10, remaining: 0, reset_secs: 7 };
        limit_headers(&s, &mut h);
        assert_eq!(h[&RATELIMIT_POLICY], "\"stop\";q=5;w=10");
        assert_eq!(h[&RATELIMIT], "\"stop\";r=0;t=7");
        let s = LimitState {
            name: "agent-stop".into(),
            quota: u32::MAX,
            window_secs: u64::MAX,
            remaining: 1_000_000,
            reset_secs: 90,
        };
        limit_headers(&s, &mut h);
        assert_eq!(h[&RATELIMIT_POLICY], format!("\"agent-stop\";q={};w={}", u32::MAX, u64::MAX));
        assert_eq!(h[&RATELIMIT], "\"agent-stop\";r=1000000;t=90");
    }

    /// One failure of every kind (and every row of the table).
    fn every_kind() -> Vec<Failure> {
        crate::edge::problems::samples()
    }

    /// README's error table and the OpenAPI description name every problem type ccgate can
    /// answer with, with its status (the OpenAPI only those of the REST API: `forbidden` is
    /// the pass-through face's; tests/it/openapi.rs checks each operation's list).
    #[test]
    fn the_docs_list_every_problem_type() {
        let readme = include_str!("../../README.md");
        let openapi = include_str!("../../api/openapi.yaml");
        for f in every_kind() {
            let s = spec(&f);
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| {} ", s.status.as_u16())) && l.contains(&format!("`{}`", s.slug)));
            assert!(row.is_some(), "README's error table has no row for {} {} ({f})", s.status.as_u16(), s.slug);
            let rest = !matches!(f, Failure::Forbidden(_));
            let listed = openapi.contains(&format!("- urn:ccgate:problem:{}\n", s.slug));
            assert_eq!(listed, rest, "openapi.yaml's problem types and {}", s.slug);
        }
    }
}
