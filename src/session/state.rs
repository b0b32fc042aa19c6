//! Where a session stands, and why the gateway ended one: vocabularies of the session layer
//! that the shared store (a record's `lost:REASON`) and the metrics label with.

use std::sync::Arc;

use crate::labels::label_enum;

/// The tightest rate limit's state at an agent's last limited request (for the agent view):
/// which limit, its quota per window, what was left, whether it refused, and when. Written
/// on every limited request, so nothing here is formatted until a view asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSnapshot {
    pub limit: Arc<str>,
    pub quota: u32,
    pub window_secs: u64,
    pub remaining: u32,
    pub refused: bool,
    /// Unix ms.
    pub at_ms: u64,
}

label_enum! {
    /// Why the gateway ended a session; the `reason` label of `ccgate_session_losses_total`,
    /// and of the `lost:REASON` state in the shared store.
    LossReason {
        GuidRefused => "guid_refused",
        ShutdownEvent => "shutdown_event",
    }
}

label_enum! {
    /// Session states; the `state` label of `ccgate_sessions`.
    SessionState {
        Active => "active",
        Lost => "lost",
    }
}
