//! What an agent's view shows of its rate limits: the tightest one at its last limited
//! request. (The session layer's vocabularies, such as why a session ended, are in
//! `labels/`.)

use std::sync::Arc;

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
