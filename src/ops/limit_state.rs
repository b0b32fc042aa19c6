//! What a rate limit decided, as data: the state the IETF RateLimit headers show on an allowed
//! request, and a refusal. Shared by the limits (which decide) and [`Failure`](super::Failure)
//! (which carries a refusal to the edge).

use std::sync::Arc;

use crate::config::Scope;

/// One limit's state after a decision, as the IETF RateLimit headers describe it: quota `q`
/// over window `w` seconds, `r` left, full again in `t` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    pub name: Arc<str>,
    pub quota: u32,
    pub window_secs: u64,
    pub remaining: u32,
    pub reset_secs: u64,
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub retry_after_secs: u64,
    pub state: LimitState,
}

impl Refusal {
    pub fn name(&self) -> &str {
        &self.state.name
    }
}
