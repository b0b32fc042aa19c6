//! `ProxyError`: the one place a failed request becomes an HTTP response, a metric outcome and
//! a log line. Every phase of the pipeline returns it; nothing else builds error responses.
//!
//! No variant carries a token, Guid, password or cookie, so no rendering of it can leak one.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::json;

use crate::gateway::{retcode, Envelope, UpstreamError};
use crate::metrics::{AuthFailureReason, Outcome};
use crate::server::body::{full, Body};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// What the gateway said when it refused an operation (retcode != "0").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefusal {
    pub retcode: String,
    pub message: String,
    pub error_reason: Option<i64>,
}

impl From<&Envelope> for GatewayRefusal {
    fn from(e: &Envelope) -> Self {
        Self { retcode: e.retcode.clone(), message: e.message.clone(), error_reason: e.error_reason() }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The bearer token is missing or invalid: get a fresh token from the identity provider.
    #[error("unauthenticated: {}", .0.as_str())]
    Unauthenticated(AuthFailureReason),
    /// The token is valid but does not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The agent is not its conference's chairperson (retcode 101-002). `gateway` is set when
    /// the gateway said so, unset when ccgate refused locally.
    #[error("not the conference chairperson")]
    NotChairperson { gateway: Option<GatewayRefusal> },
    /// The agent has no conference (retcode 101-001): create one first.
    #[error("no conference")]
    NoConference { gateway: Option<GatewayRefusal> },
    /// The agent has no gateway session through ccgate: `POST /v1/session` first.
    #[error("no session")]
    NoSession,
    /// The gateway ended the agent's session (timeout, forced sign-out, taken over): sign in
    /// again with `POST /v1/session`.
    #[error("session lost")]
    SessionLost,
    /// The agent is signed in elsewhere (100-002): retry with `{"force": true}` to take over.
    #[error("agent already signed in elsewhere")]
    AlreadySignedIn,
    /// The credentials store has no entry for the agent: an operator must add one.
    #[error("no credentials for agent")]
    NoCredentials,
    /// The gateway refused the operation with a business retcode.
    #[error("gateway refused: retcode {}", .0.retcode)]
    GatewayRefused(GatewayRefusal),
    /// The request is malformed: fix the body or parameters.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A rate limit refused the request: wait `Retry-After` seconds.
    #[error("rate limited by {}", .0.name)]
    RateLimited(Box<crate::pipeline::ratelimit::Refusal>),
    /// The body exceeds `server.max_body_bytes`.
    #[error("body too large")]
    PayloadTooLarge,
    /// No such route.
    #[error("not found")]
    NotFound,
    /// The route exists but not for this HTTP method; `Allow` lists the ones it takes.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The gateway could not be reached, timed out or answered garbage.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A bug or an impossible state; details are in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// A gateway refusal, classified: the chair and conference codes get their own variants so
    /// the app sees the same answer whether ccgate or the gateway refused.
    pub fn from_gateway(env: &Envelope) -> Self {
        let r = GatewayRefusal::from(env);
        match env.retcode.as_str() {
            retcode::NOT_CHAIRPERSON => Self::NotChairperson { gateway: Some(r) },
            retcode::NO_CONFERENCE => Self::NoConference { gateway: Some(r) },
            _ => Self::GatewayRefused(r),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::NotChairperson { .. } | Self::NoCredentials => StatusCode::FORBIDDEN,
            Self::NoConference { .. } | Self::NoSession | Self::AlreadySignedIn => StatusCode::CONFLICT,
            Self::SessionLost => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayRefused(r) if r.retcode == retcode::BAD_PARAMETER => StatusCode::BAD_REQUEST,
            Self::GatewayRefused(_) => StatusCode::BAD_GATEWAY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Upstream(UpstreamError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Unauthenticated(_) => Outcome::Unauthenticated,
            Self::Forbidden(_) | Self::NoCredentials => Outcome::Forbidden,
            Self::NotChairperson { .. } => Outcome::NotChairperson,
            Self::NoConference { .. } => Outcome::NoConference,
            Self::NoSession => Outcome::NoSession,
            Self::SessionLost => Outcome::SessionLost,
            Self::AlreadySignedIn | Self::GatewayRefused(_) => Outcome::GatewayError,
            Self::BadRequest(_) | Self::PayloadTooLarge | Self::MethodNotAllowed(_) => Outcome::BadRequest,
            Self::RateLimited(_) => Outcome::RateLimited,
            Self::NotFound => Outcome::NotFound,
            Self::Upstream(UpstreamError::Unavailable(_)) => Outcome::UpstreamUnavailable,
            Self::Upstream(UpstreamError::Timeout) => Outcome::Timeout,
            Self::Upstream(_) => Outcome::GatewayError,
            Self::Internal(_) => Outcome::Internal,
        }
    }

    /// Short stable slug: the last part of the problem `type`.
    fn slug(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "invalid-token",
            Self::Forbidden(_) => "forbidden",
            Self::NotChairperson { .. } => "not-chairperson",
            Self::NoConference { .. } => "no-conference",
            Self::NoSession => "no-session",
            Self::SessionLost => "session-lost",
            Self::AlreadySignedIn => "already-signed-in",
            Self::NoCredentials => "no-credentials",
            Self::GatewayRefused(_) => "gateway-refused",
            Self::BadRequest(_) => "bad-request",
            Self::RateLimited(_) => "rate-limited",
            Self::PayloadTooLarge => "payload-too-large",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed(_) => "method-not-allowed",
            Self::Upstream(UpstreamError::Unavailable(_)) => "gateway-unavailable",
            Self::Upstream(UpstreamError::Timeout) => "gateway-timeout",
            Self::Upstream(_) => "bad-gateway",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "Invalid or missing bearer token",
            Self::Forbidden(_) => "Forbidden",
            Self::NotChairperson { .. } => "Not the conference chairperson",
            Self::NoConference { .. } => "No conference",
            Self::NoSession => "No gateway session",
            Self::SessionLost => "Gateway session lost",
            Self::AlreadySignedIn => "Agent already signed in",
            Self::NoCredentials => "Agent not provisioned",
            Self::GatewayRefused(_) => "Gateway refused the operation",
            Self::BadRequest(_) => "Bad request",
            Self::RateLimited(_) => "Rate limit exceeded",
            Self::PayloadTooLarge => "Request body too large",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed(_) => "Method not allowed",
            Self::Upstream(UpstreamError::Unavailable(_)) => "Gateway unavailable",
            Self::Upstream(UpstreamError::Timeout) => "Gateway timeout",
            Self::Upstream(_) => "Bad gateway",
            Self::Internal(_) => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Unauthenticated(r) => auth_detail(*r).to_owned(),
            Self::Forbidden(why) => (*why).to_owned(),
            Self::NotChairperson { gateway: None } => {
                "only the conference chairperson may do this; ccgate refused it without calling the gateway".into()
            }
            Self::NotChairperson { gateway: Some(_) } => {
                "the gateway says this agent is not the conference chairperson".into()
            }
            Self::NoConference { gateway: None } => {
                "the agent has no conference; create one with POST /v1/conference".into()
            }
            Self::NoConference { gateway: Some(_) } => "the gateway says this agent has no conference".into(),
            Self::NoSession => "the agent is not signed in through ccgate; POST /v1/session first".into(),
            Self::SessionLost => "the gateway ended the agent's session; sign in again with POST /v1/session".into(),
            Self::AlreadySignedIn => {
                "the agent is signed in elsewhere; POST /v1/session with {\"force\": true} takes the session over"
                    .into()
            }
            Self::NoCredentials => {
                "ccgate has no gateway credentials for this agent; ask the operator to add them".into()
            }
            Self::GatewayRefused(r) if r.message.is_empty() => format!("the gateway answered retcode {}", r.retcode),
            Self::GatewayRefused(r) => format!("the gateway answered retcode {}: {}", r.retcode, r.message),
            Self::BadRequest(why) => why.clone(),
            Self::RateLimited(r) => {
                format!("limit {} ({} requests) tripped; retry in {} s", r.name, r.scope.as_str(), r.retry_after_secs)
            }
            Self::PayloadTooLarge => "the request body exceeds the configured limit".into(),
            Self::NotFound => "no such route".into(),
            Self::MethodNotAllowed(allow) => format!("this route accepts {allow}"),
            Self::Upstream(UpstreamError::Unavailable(_)) => "the CC-Gateway could not be reached".into(),
            Self::Upstream(UpstreamError::Timeout) => "the CC-Gateway did not answer in time".into(),
            Self::Upstream(UpstreamError::BadStatus(s)) => format!("the CC-Gateway answered HTTP {}", s.as_u16()),
            Self::Upstream(UpstreamError::Malformed(_)) => "the CC-Gateway's answer was not a valid envelope".into(),
            Self::Internal(_) => "internal error; see the proxy log".into(),
        }
    }

    fn refusal(&self) -> Option<(&str, Option<i64>)> {
        match self {
            Self::NotChairperson { gateway } => Some(
                gateway.as_ref().map_or((retcode::NOT_CHAIRPERSON, None), |g| (g.retcode.as_str(), g.error_reason)),
            ),
            Self::NoConference { gateway } => {
                Some(gateway.as_ref().map_or((retcode::NO_CONFERENCE, None), |g| (g.retcode.as_str(), g.error_reason)))
            }
            Self::AlreadySignedIn => Some((retcode::ALREADY_SIGNED_IN, None)),
            Self::GatewayRefused(g) => Some((g.retcode.as_str(), g.error_reason)),
            _ => None,
        }
    }

    /// The RFC 9457 problem response for the app-facing API.
    pub fn to_problem(&self) -> Response<Body> {
        let status = self.status();
        let mut body = json!({
            "type": format!("urn:ccgate:problem:{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        if let Some((code, reason)) = self.refusal() {
            body["retcode"] = json!(code);
            if let Some(r) = reason {
                body["errorReason"] = json!(r);
            }
        }
        if let Self::Unauthenticated(r) = self {
            body["reason"] = json!(r.as_str());
        }
        if let Self::RateLimited(r) = self {
            body["limit"] = json!(r.name);
        }
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        self.apply_headers(resp.headers_mut());
        resp
    }

    /// ccgate's own retcode on the reverse-proxy face. Huawei's codes are `NNN-NNN`, so the
    /// `CCG-` namespace cannot collide with them. `None` where ccgate answers in the gateway's
    /// own words (chair and conference checks, gateway refusals).
    pub fn ccg_retcode(&self) -> Option<&'static str> {
        Some(match self {
            Self::Unauthenticated(_) => "CCG-401",
            Self::Forbidden(_) | Self::NoCredentials => "CCG-403",
            Self::NoSession => "CCG-409",
            Self::SessionLost => "CCG-410",
            Self::BadRequest(_) => "CCG-400",
            Self::RateLimited(_) => "CCG-429",
            Self::PayloadTooLarge => "CCG-413",
            Self::NotFound => "CCG-404",
            Self::MethodNotAllowed(_) => "CCG-405",
            Self::Upstream(UpstreamError::Unavailable(_)) => "CCG-503",
            Self::Upstream(UpstreamError::Timeout) => "CCG-504",
            Self::Upstream(_) => "CCG-502",
            Self::Internal(_) => "CCG-500",
            Self::NotChairperson { .. }
            | Self::NoConference { .. }
            | Self::AlreadySignedIn
            | Self::GatewayRefused(_) => return None,
        })
    }

    /// The CC-Gateway envelope for the reverse-proxy face (`/agentgateway/resource/...`).
    /// ccgate's refusals carry a `CCG-nnn` retcode and the fitting HTTP status; a chair,
    /// conference or sign-in refusal answers exactly as the gateway would: HTTP 200 and its
    /// retcode.
    pub fn to_envelope(&self) -> Response<Body> {
        let (status, code, message) = match (self.ccg_retcode(), self.refusal()) {
            (Some(code), _) => (self.status(), code.to_owned(), self.detail()),
            (None, Some((code, _))) => {
                let message = match self {
                    Self::GatewayRefused(g) => g.message.clone(),
                    Self::NotChairperson { .. } => "the agent is not the chairperson".into(),
                    Self::NoConference { .. } => "the agent has no conference".into(),
                    _ => "the agent has signed in".into(),
                };
                (StatusCode::OK, code.to_owned(), message)
            }
            (None, None) => (self.status(), "CCG-500".to_owned(), self.detail()),
        };
        let mut result = json!({});
        if let Some((_, Some(reason))) = self.refusal() {
            result["errorReason"] = json!(reason);
        }
        if let Self::Unauthenticated(r) = self {
            result["reason"] = json!(r.as_str());
        }
        if let Self::RateLimited(r) = self {
            result["limit"] = json!(r.name);
            result["retryAfter"] = json!(r.retry_after_secs);
        }
        let body = json!({"message": message, "retcode": code, "result": result});
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(crate::gateway::client::JSON_UTF8));
        self.apply_headers(resp.headers_mut());
        resp
    }

    /// Headers every rendering of this error carries.
    fn apply_headers(&self, h: &mut http::HeaderMap) {
        match self {
            Self::Unauthenticated(AuthFailureReason::MissingToken) => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ccgate\""));
            }
            Self::Unauthenticated(r) => {
                let v = format!(
                    "Bearer realm=\"ccgate\", error=\"invalid_token\", error_description=\"{}\"",
                    auth_detail(*r)
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::MethodNotAllowed(allow) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::RateLimited(r) => r.apply(h),
            _ => {}
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status of every variant is part of the public contract (DESIGN section 4).
    #[test]
    fn statuses_are_pinned() {
        let refusal = |c: &str| GatewayRefusal { retcode: c.into(), message: String::new(), error_reason: None };
        let cases: Vec<(ProxyError, u16, Outcome)> = vec![
            (ProxyError::Unauthenticated(AuthFailureReason::Expired), 401, Outcome::Unauthenticated),
            (ProxyError::Forbidden("x"), 403, Outcome::Forbidden),
            (ProxyError::NotChairperson { gateway: None }, 403, Outcome::NotChairperson),
            (ProxyError::NoConference { gateway: None }, 409, Outcome::NoConference),
            (ProxyError::NoSession, 409, Outcome::NoSession),
            (ProxyError::SessionLost, 503, Outcome::SessionLost),
            (ProxyError::GatewayRefused(refusal("100-007")), 502, Outcome::GatewayError),
            (ProxyError::GatewayRefused(refusal("000-002")), 400, Outcome::GatewayError),
            (ProxyError::PayloadTooLarge, 413, Outcome::BadRequest),
            (ProxyError::Upstream(UpstreamError::Unavailable("x".into())), 503, Outcome::UpstreamUnavailable),
            (ProxyError::Upstream(UpstreamError::Timeout), 504, Outcome::Timeout),
            (
                ProxyError::Upstream(UpstreamError::BadStatus(StatusCode::INTERNAL_SERVER_ERROR)),
                502,
                Outcome::GatewayError,
            ),
            (ProxyError::Upstream(UpstreamError::Malformed("x".into())), 502, Outcome::GatewayError),
        ];
        for (e, status, outcome) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.outcome(), outcome, "{e}");
            assert_eq!(e.to_problem().status().as_u16(), status);
        }
    }

    #[test]
    fn gateway_chair_refusal_keeps_retcode_and_reason() {
        let env: Envelope =
            serde_json::from_str(r#"{"retcode":"101-002","message":"","result":{"errorReason":7}}"#).unwrap();
        let e = ProxyError::from_gateway(&env);
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.refusal(), Some(("101-002", Some(7))));
    }
}
