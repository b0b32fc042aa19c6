//! The `method` an operation is named by in metrics, limits and logs.

use crate::gateway::GatewayMethod;

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
