//! Which gateway (contact centre) a verified token is for: [`Routing`], built from `[auth]` and
//! the gateways' tenants, and consulted once a token's signature and claims are checked.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::config::{AuthConfig, GatewayConfig};
use crate::labels::AuthFailureReason as Reason;

/// Which gateway (contact centre) a verified token is for, from the token only: its
/// provider's `gateway`, or `auth.gateway_claim` matched against each gateway's `tenants`.
/// Nothing the client controls outside the signed token takes part.
#[derive(Debug)]
pub(super) struct Routing {
    /// `auth.gateway_claim` (`None`: not configured).
    claim: Option<std::sync::Arc<str>>,
    /// Tenant value → gateway index.
    tenants: HashMap<String, usize>,
    /// Gateways configured; with one and nothing else configured, every token is for it.
    count: usize,
}

impl Default for Routing {
    /// One gateway, no claim: every token is for it.
    fn default() -> Self {
        Self { claim: None, tenants: HashMap::new(), count: 1 }
    }
}

impl Routing {
    /// `gateways`: the running gateways in index order (a reload cannot add or remove one:
    /// tenants of a gateway not running yet are left out until the restart).
    pub(super) fn new(cfg: &AuthConfig, gateways: &[GatewayConfig]) -> Self {
        let tenants =
            gateways.iter().enumerate().flat_map(|(i, g)| g.tenants.iter().map(move |t| (t.clone(), i))).collect();
        let claim = (!cfg.gateway_claim.is_empty()).then(|| cfg.gateway_claim.as_str().into());
        Self { claim, tenants, count: gateways.len().max(1) }
    }

    /// `auth.gateway_claim`, when set: the claim a `no-gateway` refusal names.
    pub(super) fn claim(&self) -> Option<std::sync::Arc<str>> {
        self.claim.clone()
    }

    /// The provider's gateway as an index (`None`: it names none, or one not running).
    pub(super) fn index_of(gateways: &[GatewayConfig], name: Option<&str>) -> Option<usize> {
        gateways.iter().position(|g| Some(g.name.as_str()) == name)
    }

    /// The gateway of a token verified by a provider whose own gateway is `by_provider`.
    /// Refused (`no_gateway`) when the token maps to none, or to two different ones.
    pub(super) fn route(&self, by_provider: Option<usize>, claims: &Map<String, Value>) -> Result<usize, Reason> {
        let by_claim = match &self.claim {
            None => None,
            Some(c) => {
                let value = match claims.get(&**c) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                match value.and_then(|v| self.tenants.get(&v).copied()) {
                    Some(i) => Some(i),
                    // A claim that names no gateway is refused, unless the provider decides.
                    None if by_provider.is_none() => return Err(Reason::NoGateway),
                    None => None,
                }
            }
        };
        match (by_provider, by_claim) {
            (Some(p), Some(c)) if p != c => Err(Reason::NoGateway),
            (Some(g), _) | (None, Some(g)) => Ok(g),
            (None, None) if self.count == 1 => Ok(0),
            (None, None) => Err(Reason::NoGateway),
        }
    }
}
