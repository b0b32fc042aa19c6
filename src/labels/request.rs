//! What a request was and how it ended: the `method`, `outcome`, auth-failure `reason` and
//! upstream-error `kind` labels, named by the edge, the core, the session layer and the
//! metrics alike.

use super::label_enum;
use crate::gateway::{GatewayMethod, UpstreamError};

/// The `method` label: a gateway log name, or a REST API route that has no gateway method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    Gateway(GatewayMethod),
    /// `GET /v1/session`, answered from the session store.
    GetSession,
    /// `GET /v1/events`, served from the session's event buffer.
    Events,
    /// A path ccgate does not serve.
    Unmatched,
}

impl MethodLabel {
    const EXTRA: usize = 3;
    pub const COUNT: usize = GatewayMethod::COUNT + Self::EXTRA;

    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Gateway(m) => m.log_name(),
            MethodLabel::GetSession => "getSession",
            MethodLabel::Events => "events",
            MethodLabel::Unmatched => "unmatched",
        }
    }

    /// A gateway method only the conference's chairperson may call (the audited ones).
    pub fn chair_only(self) -> bool {
        matches!(self, MethodLabel::Gateway(m) if m.chair_only())
    }

    /// Every label, in `index` order.
    pub fn all() -> impl Iterator<Item = MethodLabel> {
        GatewayMethod::ALL.iter().map(|m| MethodLabel::Gateway(*m)).chain([
            MethodLabel::GetSession,
            MethodLabel::Events,
            MethodLabel::Unmatched,
        ])
    }

    /// The label with this name (config time: a limit's `method`).
    pub fn from_name(name: &str) -> Option<MethodLabel> {
        Self::all().find(|l| l.as_str() == name)
    }

    /// Dense index for per-label tables (`0..COUNT`).
    pub fn index(self) -> usize {
        match self {
            MethodLabel::Gateway(m) => m.index(),
            MethodLabel::GetSession => GatewayMethod::COUNT,
            MethodLabel::Events => GatewayMethod::COUNT + 1,
            MethodLabel::Unmatched => GatewayMethod::COUNT + 2,
        }
    }
}

label_enum! {
    /// How a request ended; the `outcome` label of `ccgate_requests_total`. `rejected`: the
    /// gateway refused the app's own request (its parameters, or the agent's state), not a
    /// fault of the gateway or ccgate, so not in the error ratio.
    Outcome {
        Ok => "ok",
        Rejected => "rejected",
        GatewayError => "gateway_error",
        Unauthenticated => "unauthenticated",
        Forbidden => "forbidden",
        NotChairperson => "not_chairperson",
        NoConference => "no_conference",
        NoSession => "no_session",
        SessionLost => "session_lost",
        RateLimited => "rate_limited",
        BadRequest => "bad_request",
        NotFound => "not_found",
        UpstreamUnavailable => "upstream_unavailable",
        StoreUnavailable => "store_unavailable",
        KeysUnavailable => "keys_unavailable",
        Overloaded => "overloaded",
        Timeout => "timeout",
        Internal => "internal",
    }
}

label_enum! {
    /// What the chairperson check decided for a chair-only call; the `reason` of its audit
    /// line. `unknown_forwarded`: ccgate missed the conference events and
    /// `policy.on_unknown_chair = "forward"` lets the gateway judge; `unknown_denied`: the
    /// same with `"deny"`.
    ChairVerdict {
        Chair => "chair",
        NotChairperson => "not_chairperson",
        NoConference => "no_conference",
        UnknownForwarded => "unknown_forwarded",
        UnknownDenied => "unknown_denied",
    }
}

label_enum! {
    /// Transport failure kinds; the `kind` label of `ccgate_upstream_errors_total`.
    UpstreamErrorKind {
        Unavailable => "unavailable",
        Timeout => "timeout",
        BadStatus => "bad_status",
        Malformed => "malformed",
    }
}

impl From<&UpstreamError> for UpstreamErrorKind {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Unavailable(_) => Self::Unavailable,
            UpstreamError::Timeout => Self::Timeout,
            UpstreamError::BadStatus(_) => Self::BadStatus,
            UpstreamError::Malformed(_) => Self::Malformed,
        }
    }
}

label_enum! {
    /// Why a token was refused; the `reason` label of `ccgate_auth_failures_total`.
    AuthFailureReason {
        MissingToken => "missing_token",
        Malformed => "malformed",
        AlgorithmNotAllowed => "algorithm_not_allowed",
        UnknownKey => "unknown_key",
        BadSignature => "bad_signature",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        WrongIssuer => "wrong_issuer",
        WrongAudience => "wrong_audience",
        MissingClaim => "missing_claim",
        MissingAgent => "missing_agent",
        InvalidAgent => "invalid_agent",
        Crit => "crit",
        NoGateway => "no_gateway",
    }
}
