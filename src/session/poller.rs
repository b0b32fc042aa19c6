//! One task per signed-in agent: long-polls the gateway's event queue. Polling is the
//! gateway's heartbeat, the carrier of rotated Guids (`Set-GUID`), and the only source of
//! conference state, so ccgate must be the agent's only poller. The same task notices when
//! the agent's app has gone quiet and has the agent signed out.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::agent::Session;
use super::conference::{apply_event, EventEffect};
use super::error::GuidVerdict;
use super::pacing::Pacer;
use crate::gateway::{GatewayMethod, GatewayReply, PollConnection, UpstreamError};
use crate::labels::LossReason;
use crate::log_budget::LogBudget;
use crate::metrics::GaugeGuard;

/// What a poller needs of the store that started it.
pub(super) trait Poller: Send + Sync {
    /// The app has been silent for `idle`: sign the agent out (in a task of its own, since
    /// that stops this poller), retrying until the gateway is told or the app returns.
    fn sign_out_idle(&self, session: Arc<Session>, idle: Duration);
    /// The pacer every retry after a failed poll waits its turn at.
    fn repoll(&self) -> &Pacer;
    /// The budget of the store's poll-failure lines: when the gateway (or the process's file
    /// limit) fails every poller at once, a burst of lines, then a few a second with a count.
    fn warnings(&self) -> &LogBudget;
}

/// A poll failure's warning, within the store's budget.
fn warn_within_budget(store: &Weak<dyn Poller>, line: impl FnOnce(u64)) {
    if let Some(left_out) = store.upgrade().and_then(|s| s.warnings().admit()) {
        line(left_out);
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// Read timeout of one poll; above the gateway's own long-poll wait.
    pub timeout: Duration,
    /// Pause between polls, as Huawei's clients do.
    pub pause: Duration,
    /// First back-off ceiling after a failure, doubled up to `backoff_max`; the wait itself
    /// is a random point below the ceiling (full jitter).
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Sign out after this much app silence.
    pub idle: Option<Duration>,
}

enum Step {
    Polled(Result<(GatewayReply, GuidVerdict), UpstreamError>),
    Idle,
}

pub(super) async fn run(session: Arc<Session>, store: Weak<dyn Poller>, s: Settings) {
    // This replica's running pollers (`ccgate_leases`).
    let _polling = GaugeGuard::new(session.metrics.leases());
    let agent = session.agent_id.clone();
    let mut backoff = s.backoff;
    // The poller's own connection to the gateway, closed with the task.
    let mut conn = PollConnection::default();
    loop {
        // With the shared store, only the lease holder polls; the maintenance round stops
        // this task when another replica takes the lease, and this check covers the rest.
        if !session.polls_here() {
            return;
        }
        // While an idle sign-out is retrying, this task keeps the session alive and does not
        // start another.
        // Raced against the poll only when it may fall before the poll ends by itself (within
        // its timeout at the latest): otherwise the next round looks again, and most polls
        // register one timer, not two.
        let idle_at = s
            .idle
            .filter(|_| !session.idle_signout.load(Ordering::Acquire))
            .map(|d| session.last_activity() + d)
            .filter(|at| *at <= Instant::now() + s.timeout);
        let poll = session.exchange(GatewayMethod::GetAgentEvent, None, Some(s.timeout), Some(&mut conn), true);
        let step = match idle_at {
            Some(at) => tokio::select! {
                r = poll => Step::Polled(r),
                _ = tokio::time::sleep_until(at) => Step::Idle,
            },
            None => Step::Polled(poll.await),
        };
        // Activity may have come in while we waited: re-check before acting on idleness.
        let reply = match step {
            Step::Idle => {
                // Activity on other replicas counts too.
                session.refresh_activity().await;
                if let Some(idle) = s.idle.filter(|d| Instant::now() >= session.last_activity() + *d) {
                    if !session.idle_signout.swap(true, Ordering::AcqRel) {
                        if let Some(store) = store.upgrade() {
                            store.sign_out_idle(session.clone(), idle);
                        }
                    }
                }
                continue;
            }
            // A refusal that did not end the session (this replica lost its lease meanwhile)
            // is the next round's business: the loop's first check stops a poller that no
            // longer holds the lease.
            Step::Polled(Ok((r, _))) => r,
            Step::Polled(Err(e)) => {
                warn_within_budget(&store, |left_out| {
                    tracing::warn!(agent = %agent, error = %e, backoff_ms = backoff.as_millis() as u64, left_out, "event poll failed");
                });
                back_off(&store, &mut backoff, s.backoff_max).await;
                continue;
            }
        };
        // The exchange took in the Guid, the cookies and a loss.
        let env = &reply.envelope;
        if session.ended().is_some() {
            return;
        }
        if !env.is_success() {
            warn_within_budget(&store, |left_out| {
                tracing::warn!(agent = %agent, retcode = env.code().as_str(), left_out, "event poll refused");
            });
            back_off(&store, &mut backoff, s.backoff_max).await;
            continue;
        }
        backoff = s.backoff;
        if let Some(event) = env.poll_event() {
            let kind = event.get("eventType").and_then(|v| v.as_str()).unwrap_or("unknown");
            tracing::debug!(agent = %agent, event = kind, "gateway event");
            let data = Bytes::from(event.to_string());
            if session.record_event(kind, data.clone()).await {
                session.metrics.count_event_dropped();
            }
            session.outlet.offer(&agent, session.tenant.as_deref(), kind, &data);
            let (_, effect) = apply_event(session.conf(), &agent, event);
            if effect == EventEffect::SessionEnded {
                session.lost(LossReason::ShutdownEvent).await;
                return;
            }
            // Computed on the state as it is when written (another replica may have changed it).
            session.update_conf(|c| apply_event(c, &agent, event).0).await;
            // More events may be queued: fetch the next at once.
            continue;
        }
        tokio::time::sleep(s.pause).await;
    }
}

/// After a failed poll: a random wait below the current ceiling (which then doubles, up to
/// `max`), then a turn at the store's re-poll pacer, so pollers that failed together neither
/// retry together nor all at once when the gateway returns.
async fn back_off(store: &Weak<dyn Poller>, ceiling: &mut Duration, max: Duration) {
    tokio::time::sleep(super::pacing::full_jitter(*ceiling)).await;
    *ceiling = (*ceiling * 2).min(max);
    if let Some(store) = store.upgrade() {
        store.repoll().wait().await;
    }
}
