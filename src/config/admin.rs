//! `[admin]`: the admin listener (metrics, probes, agents views) and who may read what on it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::net::parse_addr;

/// Admin listener (metrics, health). 9464 is the port OpenTelemetry/Prometheus exporters use.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Plain HTTP; keep it on loopback or a pod-internal address.
    pub listen: SocketAddr,
    /// `/readyz` also requires the gateway to be reachable. Off by default: in a sidecar pod a
    /// CC-Gateway outage would otherwise take every app replica out of its Service, though
    /// the app may have other work; the gateway's state is on `/gatewayz` and
    /// `ccgate_gateway_up` either way.
    pub ready_requires_gateway: bool,
    /// `/readyz` also requires the shared store (Redis) to answer. Off by default: every
    /// replica keeps serving its agents from its own copies while Redis is away, so taking
    /// every pod out of its Service for a Redis blip would turn a degraded store into an
    /// outage. `ccgate_store_up` and the `CcgateStoreDown` alert report it either way.
    pub ready_requires_store: bool,
    /// Who may read `/agents` and the status page (every agent's state, no secret).
    pub agents_from: AgentsAccess,
    /// Names (the `Host` header, without port) the agents views, the status page and reload
    /// answer to, besides IP addresses and `localhost`: a page on another site whose name
    /// resolves to this listener (DNS rebinding) is refused. Probes and `/metrics` answer any
    /// `Host`.
    pub hosts: Vec<String>,
}

/// Who may read the admin listener's agent views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentsAccess {
    /// Loopback peers only (the default): an operator on the host, or `kubectl port-forward`,
    /// which arrives on loopback; probes and scrapers on the pod address see nothing of the
    /// agents.
    #[default]
    Loopback,
    /// Any peer that reaches the admin listener (keep it on a private address then).
    Anywhere,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_ADMIN_LISTEN),
            ready_requires_gateway: false,
            ready_requires_store: false,
            agents_from: AgentsAccess::Loopback,
            hosts: Vec::new(),
        }
    }
}
