//! [`Failure`]: every way an operation (or the request that carries it) can fail, as data.
//! No HTTP here: the edge turns each kind into a status, outcome label, problem type and
//! retcode from one table (`edge/render.rs`). No variant carries a token, Guid, password or
//! cookie, so no rendering of one can leak a secret.

use crate::gateway::{GatewayRefusal, Retcode, UpstreamError};
use crate::labels::AuthFailureReason;
use crate::session::SessionError;

use super::limit_state::Refusal as LimitRefusal;

/// Each variant's doc says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The bearer token is missing or invalid: get a fresh token from the identity provider.
    #[error("unauthenticated: {}", .0.as_str())]
    Unauthenticated(AuthFailureReason),
    /// The token is valid but does not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The token is valid but names no contact centre ccgate serves, or two: ask the operator
    /// (`auth.gateway_claim` and each gateway's `tenants`, or the provider's `gateway`).
    #[error("the token is for no gateway ccgate serves")]
    NoGateway(Option<std::sync::Arc<str>>),
    /// The agent is not its conference's chairperson (`101-002`): refused by ccgate without
    /// calling the gateway (`None`), or by the gateway (its words).
    #[error("not the conference chairperson")]
    NotChairperson(Option<GatewayRefusal>),
    /// The agent has no (ready) conference (`101-001`): create one first.
    #[error("no conference")]
    NoConference(Option<GatewayRefusal>),
    /// The agent has no gateway session through ccgate: sign in first.
    #[error("no session")]
    NoSession,
    /// The gateway ended the agent's session: sign in again. `Some` when this request's own
    /// call learned it (the gateway's answer, relayed by the pass-through face).
    #[error("session lost")]
    SessionLost(Option<GatewayRefusal>),
    /// The agent is signed in elsewhere (`100-002`): sign in with force to take over.
    #[error("agent already signed in elsewhere")]
    AlreadySignedIn(Option<GatewayRefusal>),
    /// The credentials file has no entry for the agent: an operator must add one.
    #[error("no credentials for agent")]
    NoCredentials,
    /// The gateway refused the operation because of the agent's current state or a repeated
    /// call (`101-003` already in a conference, `000-007`, ...; [`Retcode::is_conflict`]):
    /// the app's request, not a fault; the retcode says which.
    #[error("conflicts with the agent's state: retcode {}", .0.retcode)]
    Conflict(GatewayRefusal),
    /// The gateway refused the request's parameters (`000-002`, `100-001`, `100-005`): fix
    /// the body or path.
    #[error("gateway refused the parameters: retcode {}", .0.retcode)]
    InvalidParameters(GatewayRefusal),
    /// The gateway refused the operation with another business retcode.
    #[error("gateway refused: retcode {}", .0.retcode)]
    Refused(GatewayRefusal),
    /// The request is malformed: fix the body or parameters.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's address had too many tokens refused; no token is checked from it for this
    /// many seconds (unless already known good): fix the app's tokens.
    #[error("too many refused tokens from this address")]
    Throttled(u64),
    /// A rate limit refused the request: wait `Retry-After` seconds.
    #[error("rate limited by {}", .0.name())]
    RateLimited(Box<LimitRefusal>),
    /// The body exceeds `server.max_body_bytes`.
    #[error("body too large")]
    PayloadTooLarge,
    /// The body did not arrive whole within `server.body_read_timeout_ms`: send it at once.
    #[error("body too slow")]
    BodyTimeout,
    /// The shared store (Redis) cannot be reached and this replica holds no copy of what the
    /// request needs: retry shortly; another replica may serve it.
    #[error("shared store unavailable")]
    StoreUnavailable,
    /// The token's identity provider has published no keys ccgate could fetch since it
    /// started: retry shortly; an operator should check the provider and `auth.*`.
    #[error("identity provider keys unavailable")]
    KeysUnavailable,
    /// This replica holds `sessions.max_agents` agents (`AtCapacity`), or its sign-in queue is
    /// full: retry later, or on another replica. Or the agent has
    /// `sessions.max_streams_per_agent` event streams open here: close one it no longer reads.
    #[error("overloaded: {0:?}")]
    Overloaded(Overload),
    /// No such route or gateway method.
    #[error("not found")]
    NotFound,
    /// The route exists but not for this HTTP method; the value lists the ones it takes.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The gateway could not be reached, timed out or answered garbage.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A bug or an impossible state; details are in the log.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Failure {
    /// A gateway refusal, classified: the chair, conference, sign-in and session codes get
    /// their own kinds, so the app sees the same answer whether ccgate or the gateway refused.
    pub fn refused(r: GatewayRefusal) -> Self {
        let code = Retcode::parse(&r.retcode);
        match code {
            Retcode::NotChairperson => Self::NotChairperson(Some(r)),
            Retcode::NoConference => Self::NoConference(Some(r)),
            Retcode::AlreadySignedIn => Self::AlreadySignedIn(Some(r)),
            c if c.session_gone() => Self::SessionLost(Some(r)),
            c if c.is_conflict() => Self::Conflict(r),
            c if c.is_invalid_request() => Self::InvalidParameters(r),
            _ => Self::Refused(r),
        }
    }

    /// What the gateway said, when this failure is its refusal.
    pub fn gateway_refusal(&self) -> Option<&GatewayRefusal> {
        match self {
            Self::NotChairperson(r) | Self::NoConference(r) | Self::SessionLost(r) | Self::AlreadySignedIn(r) => {
                r.as_ref()
            }
            Self::Refused(r) | Self::Conflict(r) | Self::InvalidParameters(r) => Some(r),
            _ => None,
        }
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoSession => Self::NoSession,
            SessionError::Lost => Self::SessionLost(None),
            SessionError::AlreadySignedIn(r) => Self::AlreadySignedIn(r),
            SessionError::NoCredentials => Self::NoCredentials,
            SessionError::Refused(r) => Self::refused(r),
            SessionError::Upstream(u) => Self::Upstream(u),
            SessionError::Internal(why) => Self::Internal(why),
            SessionError::Store(_) | SessionError::Unconfirmed => Self::StoreUnavailable,
            SessionError::AtCapacity => Self::Overloaded(Overload::Agents),
            SessionError::FileLimit => Self::Overloaded(Overload::Files),
            SessionError::SignInQueueFull => Self::Overloaded(Overload::SignInQueue),
        }
    }
}

/// What [`Failure::Overloaded`] ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `sessions.max_agents`.
    Agents,
    /// `sessions.signin_queue`.
    SignInQueue,
    /// `sessions.max_streams_per_agent`: the agent's own streams, so a 429 rather than a 503.
    Streams,
    /// The open-file limit leaves room for no more agents.
    Files,
}
