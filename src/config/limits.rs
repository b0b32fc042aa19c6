//! `[rate_limits]`: the configured limits (method, scope, rate, burst) and the defaults for
//! `stopVoiceToConf`; building and applying them is `ops::limits`.

use serde::{Deserialize, Serialize};

/// Most keys tracked per keyed limit. At ~100 bytes a key this bounds each limit to ~10 MiB;
/// 100k is more agents than a CEC tenant has.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One bucket per agent (the token's agent claim).
    Agent,
    /// One bucket per (gateway, tenant) (`auth.tenant_claim`); a gateway's tokens without
    /// a tenant share one bucket of that gateway.
    Tenant,
    /// One bucket per gateway (contact centre).
    Gateway,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Tenant => "tenant",
            Scope::Gateway => "gateway",
            Scope::Global => "global",
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Gateway log name (`stopVoiceToConf`), `getSession`, `events`, or `*` for every method.
    pub method: String,
    pub scope: Scope,
    /// Sustained requests per second.
    pub rate: f64,
    /// Requests allowed at once on top of the sustained rate.
    pub burst: u32,
    /// Count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub max_keys: usize,
    pub limit: Vec<LimitConfig>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self { max_keys: DEFAULT_MAX_KEYS, limit: default_limits() }
    }
}

/// Defaults for `stopVoiceToConf`, the interface ccgate exists for:
/// - per agent 1/s, burst 5: a chairperson stops an announcement a few times per conference;
///   a burst of 5 absorbs double clicks and client retries, 1/s sustained is far above human
///   use and stops a runaway loop;
/// - per tenant 20/s, burst 40: one tenant's apps cannot take the whole gateway;
/// - global 100/s, burst 200: ccgate never forwards conference commands faster than a single
///   CC-Gateway node is sized for; raise it for a cluster behind the NSLB.
pub fn default_limits() -> Vec<LimitConfig> {
    let l = |scope, rate, burst| LimitConfig { method: "stopVoiceToConf".into(), scope, rate, burst, shadow: false };
    vec![l(Scope::Agent, 1.0, 5), l(Scope::Tenant, 20.0, 40), l(Scope::Global, 100.0, 200)]
}

impl RateLimitsConfig {
    /// Checks each limit; returns the key to blame and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_keys == 0 {
            return Err(("rate_limits.max_keys", "must be greater than 0".into()));
        }
        for (i, l) in self.limit.iter().enumerate() {
            // Whether the name is a method is checked where the limits are built
            // (`ops::limits::Limits::new`), which knows the registry.
            if l.method.is_empty() {
                return Err(("rate_limits.limit.method", format!("limit {i}: must name a method or \"*\"")));
            }
            if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9) {
                return Err((
                    "rate_limits.limit.rate",
                    format!("limit {i}: must be a positive number of requests per second"),
                ));
            }
            if l.burst == 0 {
                return Err(("rate_limits.limit.burst", format!("limit {i}: must be at least 1")));
            }
        }
        Ok(())
    }
}
