//! The simulator's configuration and its defaults (the gateway's own, where it has one).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayMethod;

/// The gateway's documented HTTPS port.
pub const DEFAULT_SIM_LISTEN: &str = "127.0.0.1:8043";
/// GUIDINTERVAL: dynamic Guids rotate every 60 s.
pub const DEFAULT_GUID_INTERVAL_MS: u64 = 60_000;
/// GUIDTIMEOUT: an old Guid is assumed to stay valid this long after rotation (an assumption,
/// see docs/gateway.md "Static and dynamic Guids", hence a setting).
pub const DEFAULT_GUID_OVERLAP_MS: u64 = 120_000;
/// Connections the simulator accepts at once.
pub(super) const SIM_MAX_CONNECTIONS: usize = 65_536;
/// The gateway's long poll returns after about 10 s when no event is queued.
pub const DEFAULT_EVENT_WAIT_MS: u64 = 10_000;
/// MAXTIME: an agent silent for 120 s is signed out by force.
pub const DEFAULT_MAX_IDLE_MS: u64 = 120_000;
/// Events queued per agent; the oldest is dropped beyond it, so an agent nobody polls cannot
/// grow the simulator's memory without bound.
pub const EVENT_QUEUE_CAP: usize = 1_000;
/// Entries kept in the received-request log (the per-method counters are unbounded).
pub(super) const RECEIVED_LOG_CAP: usize = 10_000;
/// The simulator reads at most this much of a request body.
pub(super) const SIM_MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// AUTHMODE=1: the sign-in Guid is valid for the whole session.
    Static,
    /// AUTHMODE=2 (the gateway's default): Guids rotate every `guid_interval_ms`.
    #[default]
    Dynamic,
}

/// Faults injected into answers, switched on by configuration (or at run time by tests).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every affected answer.
    pub latency_ms: u64,
    /// Answer with this HTTP status (e.g. 500, 502) and an HTML body, as a failing servlet
    /// container would.
    pub http_status: Option<u16>,
    /// Break the connection after the status line.
    pub reset: bool,
    /// Answer HTTP 200 with a body that is not JSON.
    pub malformed: bool,
    /// Fail the operation with retcode 100-007, `message: "Unknown ERROR._<n>"` and
    /// `result: {"errorReason": n}`, as the routing layer's causes come through.
    pub error_reason: Option<i64>,
    /// Fail the operation with this retcode (e.g. "000-003", "105-005") after the Guid check
    /// (a sign-in, which has none, at once).
    pub retcode: Option<String>,
    /// Answer with a body of unknown length, sent chunked, as a servlet container does when
    /// the servlet streams its output.
    pub chunked: bool,
    /// Answer with `Connection: close` and close the connection after, as a load balancer
    /// draining its connections does.
    pub close: bool,
    /// Log names the faults apply to (`stopVoiceToConf`); empty means every method.
    pub methods: Vec<String>,
}

impl Faults {
    pub(super) fn applies(&self, m: GatewayMethod) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|n| n == m.log_name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// Server certificate and key. Without them `ccgate sim` makes a throw-away CA and
    /// prints where its certificate is.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// The node number in the Guid suffix `.AgentGateway<n>`.
    pub node: u32,
    pub auth_mode: AuthMode,
    pub guid_interval_ms: u64,
    pub guid_overlap_ms: u64,
    pub event_wait_ms: u64,
    pub max_idle_ms: u64,
    /// Refuse calls without the sticky cookie set at sign-in, as the NSLB would route them to
    /// a node that does not know the session.
    pub require_cookie: bool,
    /// Agents and their CTI passwords.
    pub agents: HashMap<String, String>,
    /// If set, any agent id in range signs in with this password.
    pub default_password: Option<String>,
    /// Keep a log of received requests (method, agent, Guid) for tests. Off for benchmarks.
    pub record_requests: bool,
    /// Queue the events that follow chair operations (`AgentConf_StopVoice` after
    /// `stopvoicetoconf`). Benchmarks turn it off, so a proxy's poller is not fed one event per
    /// request, which no real agent produces.
    pub operation_events: bool,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_SIM_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8043))),
            tls_cert: None,
            tls_key: None,
            node: 1,
            auth_mode: AuthMode::Dynamic,
            guid_interval_ms: DEFAULT_GUID_INTERVAL_MS,
            guid_overlap_ms: DEFAULT_GUID_OVERLAP_MS,
            event_wait_ms: DEFAULT_EVENT_WAIT_MS,
            max_idle_ms: DEFAULT_MAX_IDLE_MS,
            require_cookie: true,
            agents: HashMap::new(),
            default_password: None,
            record_requests: true,
            operation_events: true,
            faults: Faults::default(),
        }
    }
}
