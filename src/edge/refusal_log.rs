//! One log line per refused token (reason, issuer when it is a configured one, client
//! address), within a budget: a flood of bad tokens cannot fill the disk. Lines past the
//! budget are counted and the next line written says how many were left out; the metric
//! `ccgate_auth_failures_total` counts every refusal regardless.

use std::net::IpAddr;

use crate::labels::AuthFailureReason;
use crate::log_budget::LogBudget;

#[derive(Default)]
pub struct RefusalLog {
    budget: LogBudget,
}

impl RefusalLog {
    /// A token was refused for `reason`; `issuer`: a configured issuer the token names.
    pub fn refused(&self, reason: AuthFailureReason, issuer: Option<&str>, client: Option<IpAddr>) {
        let Some(left_out) = self.budget.admit() else { return };
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
