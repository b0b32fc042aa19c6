//! One log line per refused token (reason, issuer when it is a configured one, client
//! address), within a budget: a flood of bad tokens cannot fill the disk. Lines past the
//! budget are counted and the next line written says how many were left out; the metric
//! `ccgate_auth_failures_total` counts every refusal regardless.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::ops::limits::{TokioClock, TokioInstant};
use crate::ops::principal::AuthFailureReason;

/// Lines per second, sustained: enough to see every refusal of a misconfigured app, few
/// enough that a flood costs a few KiB a second of log.
const LINES_PER_SEC: u32 = 10;
/// Lines at once: a burst of refusals (an app restarting with a stale token) is seen whole.
const LINES_BURST: u32 = 50;

pub struct RefusalLog {
    budget: governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>,
    left_out: AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        let quota = governor::Quota::per_second(NonZeroU32::new(LINES_PER_SEC).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(LINES_BURST).unwrap_or(NonZeroU32::MIN));
        Self { budget: governor::RateLimiter::direct_with_clock(quota, TokioClock), left_out: AtomicU64::new(0) }
    }
}

impl RefusalLog {
    /// A token was refused for `reason`; `issuer`: a configured issuer the token names.
    pub fn refused(&self, reason: AuthFailureReason, issuer: Option<&str>, client: Option<IpAddr>) {
        if self.budget.check().is_err() {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let left_out = self.left_out.swap(0, Ordering::Relaxed);
        let client = client.map_or_else(|| "-".to_owned(), |c| c.to_string());
        tracing::warn!(
            target: "ccgate::auth",
            reason = reason.as_str(),
            issuer = issuer.unwrap_or("-"),
            client,
            left_out,
            "token refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood is cut to the budget, and the next line written says how much was left out.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_refusals_writes_the_budget_then_counts() {
        let log = RefusalLog::default();
        for _ in 0..(LINES_BURST + 30) {
            log.refused(AuthFailureReason::BadSignature, None, None);
        }
        assert_eq!(log.left_out.load(Ordering::Relaxed), 30);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        log.refused(AuthFailureReason::Expired, Some("https://idp.example"), None);
        assert_eq!(log.left_out.load(Ordering::Relaxed), 0, "reported with the next line");
    }
}
