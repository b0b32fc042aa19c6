//! Who is calling, as the edge authenticated it, and why a token was refused.

use crate::labels::label_enum;

/// Who is calling: the agent the token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Work number, canonical decimal string (101..999999).
    pub agent_id: String,
    /// The tenant the token names (`auth.tenant_claim`), for per-tenant rate limits.
    pub tenant: Option<String>,
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
    }
}
