//! Who is calling, as the edge authenticated it, and why a token was refused.

use crate::labels::label_enum;

/// Who is calling: the agent the token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Work number, canonical decimal string (101..999999).
    pub agent_id: String,
    /// The tenant the token names (`auth.tenant_claim`), for per-tenant rate limits.
    pub tenant: Option<String>,
    /// The gateway (contact centre) the token is for: its index in the configured gateways,
    /// chosen from the verified token only (`auth.gateway_claim` or the provider's `gateway`).
    /// An agent is this and the work number.
    pub gateway: usize,
}

impl Principal {
    /// An agent of the first (or only) gateway with no tenant (tests and tools).
    pub fn agent(agent_id: &str) -> Self {
        Self { agent_id: agent_id.into(), tenant: None, gateway: 0 }
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
