//! Who is calling, as the edge authenticated it (why a token was refused is
//! `labels::AuthFailureReason`).

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
    /// The token's `sub` (who the identity provider says is calling: a user, a service), for
    /// the audit line; `None` when absent or not a string of at most 256 characters, and with
    /// control characters replaced so a log line stays one line. Shared: the verified-token
    /// cache hands a clone of the principal to every request.
    pub subject: Option<std::sync::Arc<str>>,
}

impl Principal {
    /// An agent of the first (or only) gateway with no tenant (tests and tools).
    pub fn agent(agent_id: &str) -> Self {
        Self { agent_id: agent_id.into(), tenant: None, gateway: 0, subject: None }
    }
}
