//! One endpoint at run time: its backlog, its delivery task, its health. The task claims due
//! lane heads while fewer than `max_in_flight` attempts run, each attempt on its own task,
//! and sleeps until the next lane is due, an event arrives, an attempt ends, or (shared) the
//! next look at the shared store. A slow or dead endpoint therefore holds its own
//! `max_in_flight` tasks and connections and nothing of any other endpoint's or of the
//! request path. With the shared store the task also keeps its claims while attempts run
//! (every third of a claim), so no other replica takes a lane it is still sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::backlog::{Backlog, Outcome, Snapshot};
use super::client::{Answer, EndpointClient, Signed};
use super::message::Message;
use super::queue::{Failed, Taken};
use super::schedule::{unit, Schedule};
use super::sign::Signer;
use crate::config::WebhookConfig;
use crate::labels::{WebhookDrop, WebhookOutcome};
use crate::log_budget::LogBudget;
use crate::metrics::WebhookMetrics;
use crate::sync::lock;

/// How often the endpoint's gauges (pending, oldest age, failing, disabled) are brought up
/// to date while nothing else happens: within a scrape interval.
const REPORT_PERIOD: Duration = Duration::from_secs(2);
/// Given-up events the operators' view lists.
const SHOWN_FAILED: usize = 20;
/// With the shared store: how often an idle endpoint looks for lanes due there (another
/// replica's retries, a dead replica's claims run out). Events this replica queues wake it
/// at once; a second is well inside the receivers' own retry tolerance.
const SHARED_POLL: Duration = Duration::from_secs(1);
/// A retry is due by Redis's clock, which the wake-up here cannot see: waking this much after
/// this replica's own reckoning, the claim finds it due.
const CLOCKS_APART: Duration = Duration::from_millis(10);
/// The first wait before recording an attempt's outcome again when the shared store did not
/// take it (doubled each time, within half a claim).
const SETTLE_RETRY: Duration = Duration::from_millis(100);

/// What a reload may change: everything the config says and what is built from it.
pub struct Parts {
    pub cfg: WebhookConfig,
    pub signer: Signer,
    pub client: EndpointClient,
    pub schedule: Schedule,
}

impl Parts {
    /// Builds what `cfg` names: its secrets (read now) and its client.
    pub fn build(cfg: &WebhookConfig) -> Result<Self, String> {
        let path = cfg.secret_file.as_deref().ok_or("secret_file is required")?;
        Ok(Self {
            signer: Signer::load(path)?,
            client: EndpointClient::new(cfg)?,
            schedule: Schedule::new(&cfg.retry_schedule_ms),
            cfg: cfg.clone(),
        })
    }

    /// Every endpoint's parts, in order; the first failure names its endpoint.
    pub fn build_all(configs: &[WebhookConfig]) -> Result<Vec<Self>, String> {
        configs.iter().map(|c| Self::build(c).map_err(|e| format!("webhook {}: {e}", c.name))).collect()
    }
}

#[derive(Debug, Default, Clone)]
struct Health {
    last_success_ms: Option<u64>,
    last_failure: Option<(u64, String)>,
    /// The first failure since the last success.
    failing_since_ms: Option<u64>,
    /// Disabled (a 410), as this replica last knew: set here, or read from the shared store.
    disabled: Option<(u64, String)>,
}

pub struct Endpoint {
    pub name: Arc<str>,
    parts: ArcSwap<Parts>,
    backlog: Backlog,
    health: Mutex<Health>,
    wake: Notify,
    /// Lanes with an attempt running here, and how many.
    in_flight: Mutex<HashMap<String, usize>>,
    /// How long a claim on a lane lasts (the shared store's lease).
    hold: Duration,
    /// The earliest retry this replica scheduled (shared: the store is not asked for it).
    next_retry: Mutex<Option<Instant>>,
    /// Removed by a reload: its task ends.
    retired: AtomicBool,
    /// Set when the delivery task has ended (a stop waits for it).
    ended: watch::Sender<bool>,
    /// This replica saw a 410 but could not tell the shared store yet: its own disabled flag
    /// stands until it has (the next report tries again).
    disabled_unsynced: AtomicBool,
    metrics: WebhookMetrics,
    warnings: LogBudget,
}

/// What `/webhooks` shows of an endpoint.
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    /// The URL with any user info and query masked.
    pub url: String,
    /// `ok` (last attempt delivered, or none yet), `failing`, or `disabled`.
    pub state: &'static str,
    pub events: Vec<String>,
    pub gateways: Vec<String>,
    pub pending: usize,
    pub in_flight: usize,
    pub oldest_pending_age_seconds: Option<f64>,
    pub failed: usize,
    pub last_success: Option<String>,
    pub last_failure: Option<FailureView>,
    pub failing_since: Option<String>,
    pub disabled: Option<FailureView>,
    /// When the next waiting lane is due (none while nothing waits, or while disabled).
    pub next_retry: Option<String>,
    /// The newest given-up events (id, agent, seq, why), which `replay` sends again.
    pub recent_failed: Vec<FailedView>,
}

#[derive(Debug, Serialize)]
pub struct FailureView {
    pub at: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct FailedView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub gateway: String,
    pub agent: String,
    pub seq: u64,
    pub at: String,
    pub attempts: u32,
    pub why: String,
    pub given_up_at: String,
}

fn failed_view(f: &Failed) -> FailedView {
    let m = &f.message;
    FailedView {
        id: m.id.to_string(),
        kind: m.kind.to_string(),
        gateway: m.gateway.to_string(),
        agent: m.agent.to_string(),
        seq: m.seq,
        at: rfc3339(m.at_ms),
        attempts: f.attempts,
        why: f.why.clone(),
        given_up_at: rfc3339(f.at_ms),
    }
}

/// When to wake for the earliest retry this replica scheduled (shared): a little after it,
/// for Redis's clock to agree. Once that has passed it is forgotten, whether the claim then
/// took the lane or another replica did, so it is never waited for again (a wake-up time in
/// the past would be a busy loop).
fn retry_wake(next: &mut Option<Instant>, now: Instant) -> Option<Instant> {
    match *next {
        Some(at) if at + CLOCKS_APART <= now => {
            *next = None;
            None
        }
        Some(at) => Some(at + CLOCKS_APART),
        None => None,
    }
}

/// The endpoint's pending bounds.
pub fn bound(cfg: &WebhookConfig) -> crate::shared::deliveries::Bound {
    crate::shared::deliveries::Bound { events: cfg.max_pending, bytes: cfg.max_pending_bytes }
}

fn rfc3339(ms: u64) -> String {
    crate::session::view::rfc3339(ms)
}

impl Endpoint {
    pub fn new(metrics: WebhookMetrics, parts: Parts, backlog: Backlog, hold: Duration) -> Arc<Self> {
        metrics.zero();
        Arc::new(Self {
            name: Arc::from(parts.cfg.name.as_str()),
            parts: ArcSwap::from_pointee(parts),
            backlog,
            health: Mutex::new(Health::default()),
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            hold,
            next_retry: Mutex::new(None),
            retired: AtomicBool::new(false),
            ended: watch::channel(false).0,
            disabled_unsynced: AtomicBool::new(false),
            metrics,
            warnings: LogBudget::default(),
        })
    }

    /// Takes a reload's parts; queued events stay and are sent the new way.
    pub fn reconfigure(&self, parts: Parts) {
        self.backlog.set_bounds(bound(&parts.cfg), parts.cfg.max_failed);
        self.parts.store(Arc::new(parts));
        self.wake.notify_one();
    }

    /// Ends the delivery task (a reload removed the endpoint).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether this endpoint takes `kind` events of gateway `gateway`'s agents signed in for
    /// `tenant`.
    pub fn wants(&self, gateway: &str, tenant: Option<&str>, kind: &str) -> bool {
        let p = self.parts.load();
        p.cfg.wants(kind) && p.cfg.serves(gateway, tenant)
    }

    /// Queues `m`; a full backlog refuses it, counted and logged. An `Err` is the shared
    /// store's: the caller tries again.
    pub async fn push(&self, m: &Message) -> Result<(), crate::shared::StoreError> {
        let bound = bound(&self.parts.load().cfg);
        if self.backlog.push(&self.name, m, bound).await? {
            self.wake.notify_one();
        } else {
            self.count_dropped_full();
        }
        Ok(())
    }

    /// An event that did not reach the backlog because it was full (or the hand-over to it).
    pub fn count_dropped_full(&self) {
        self.metrics.count_dropped(WebhookDrop::QueueFull);
        if let Some(left_out) = self.warnings.admit() {
            tracing::warn!(endpoint = &*self.name, left_out, "webhook queue full (max_pending); event dropped");
        }
    }

    /// Counts an event that could not be made into a message.
    pub fn count_too_large(&self) {
        self.metrics.count_dropped(WebhookDrop::TooLarge);
    }

    /// Sends the given-up events taken since `since_ms` again, and enables the endpoint if
    /// a `410` had disabled it; returns how many.
    pub async fn replay(&self, since_ms: u64) -> Result<usize, crate::shared::StoreError> {
        let n = self.backlog.replay(&self.name, since_ms).await?;
        self.backlog.set_disabled(&self.name, None).await?;
        self.disabled_unsynced.store(false, Ordering::Release);
        if let Some((_, why)) = lock(&self.health).disabled.take() {
            tracing::info!(endpoint = &*self.name, was = %why, "webhook endpoint enabled again by replay");
        }
        self.report().await;
        self.wake.notify_one();
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        lock(&self.in_flight).values().sum()
    }

    /// Waits until the delivery task has ended after a stop: it claims nothing more, keeps
    /// the claims of the attempts still running, and ends with the last of them (with the
    /// shared store, an attempt cut off would be sent again by another replica once its claim
    /// ran out).
    pub async fn quiesce(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// The delivery task: claims and sends until `stop` turns true (or the endpoint is
    /// retired), then keeps the claims of the attempts still running until the last ends.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut reported: Option<Instant> = None;
        // When the claims of the attempts running here are next extended.
        let mut next_hold = Instant::now();
        let shared = self.backlog.is_shared();
        let mut stopping = false;
        loop {
            // A dropped sender counts as a stop (else `changed` would return at once, always).
            stopping |= *stop.borrow() || self.retired.load(Ordering::Acquire);
            if stopping && self.in_flight() == 0 {
                let _ = self.ended.send(true);
                return;
            }
            let now = Instant::now();
            if reported.is_none_or(|at| now >= at + REPORT_PERIOD) {
                self.report().await;
                reported = Some(now);
            }
            let mut until = now + REPORT_PERIOD;
            if shared {
                self.keep_claims(&mut next_hold).await;
                until = until.min(now + SHARED_POLL);
                if self.in_flight() > 0 {
                    until = until.min(next_hold);
                }
                if let Some(at) = retry_wake(&mut lock(&self.next_retry), now) {
                    until = until.min(at);
                }
            }
            let room = self.parts.load().cfg.max_in_flight.saturating_sub(self.in_flight());
            let disabled = lock(&self.health).disabled.is_some();
            if !disabled && room > 0 && !stopping {
                match self.backlog.claim(&self.name, room, self.hold).await {
                    Ok(taken) => {
                        let full = taken.len() == room;
                        if !taken.is_empty() {
                            // Their claims are extended within a third of one, however short
                            // the lease.
                            until = until.min(now + self.hold / 3);
                        }
                        for t in taken {
                            let lane = crate::shared::deliveries::lane_name(&t.lane.0, &t.lane.1);
                            *lock(&self.in_flight).entry(lane).or_insert(0) += 1;
                            tokio::spawn(self.clone().attempt(t));
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => {
                        if let Some(left_out) = self.warnings.admit() {
                            tracing::warn!(endpoint = &*self.name, error = %e, left_out, "webhook lanes could not be claimed; trying again");
                        }
                    }
                }
                if let Some(due) = self.backlog.next_due() {
                    until = until.min(due);
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
                changed = stop.changed(), if !stopping => stopping |= changed.is_err(),
            }
        }
    }

    /// Shared: extends the claims on the lanes whose attempts still run, every third of a
    /// claim, so a receiver slower than a claim is not sent the same event by another replica.
    /// A failed extension is tried again soon (a sixth of a claim), so a Redis blip costs no
    /// claim: two thirds of one are left when it first fails.
    async fn keep_claims(&self, next: &mut Instant) {
        let now = Instant::now();
        if now < *next {
            return;
        }
        let lanes: Vec<String> = lock(&self.in_flight).keys().cloned().collect();
        if lanes.is_empty() {
            *next = now + self.hold / 3;
            return;
        }
        let lanes: Vec<&str> = lanes.iter().map(String::as_str).collect();
        match self.backlog.hold(&self.name, &lanes, self.hold).await {
            Ok(()) => *next = now + self.hold / 3,
            Err(e) => {
                *next = now + self.hold / 6;
                if let Some(left_out) = self.warnings.admit() {
                    tracing::warn!(endpoint = &*self.name, error = %e, left_out, "webhook claims could not be kept; trying again");
                }
            }
        }
    }

    /// One attempt at `t`, then its settling.
    async fn attempt(self: Arc<Self>, t: Taken) {
        let p = self.parts.load_full();
        let m = &t.message;
        let timestamp = crate::clock::unix_secs();
        let signature = p.signer.signature(&m.id, timestamp, &m.body);
        let answer =
            p.client.send(m.body.clone(), Signed { id: &m.id, timestamp, signature }, p.schedule.longest()).await;
        let how = self.judge(&p, &t, &answer).await;
        if let Outcome::Retry { after, .. } = &how {
            let at = Instant::now() + *after;
            let mut next = lock(&self.next_retry);
            *next = Some(next.map_or(at, |n| n.min(at)));
        }
        // Recorded, if the store lets it, within half a claim: past that another replica may
        // have taken the lane, and the event goes again (same webhook-id).
        let mut wait = SETTLE_RETRY;
        let give_up = Instant::now() + self.hold / 2;
        loop {
            match self.backlog.settle(&self.name, &t, how.clone()).await {
                Ok(true) => self.metrics.count_dropped(WebhookDrop::FailedEvicted),
                Ok(false) => {}
                Err(e) if Instant::now() + wait < give_up => {
                    tracing::debug!(endpoint = &*self.name, error = %e, "recording a webhook attempt's outcome; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    continue;
                }
                Err(e) => {
                    if let Some(left_out) = self.warnings.admit() {
                        tracing::warn!(endpoint = &*self.name, error = %e, left_out, "a webhook attempt's outcome could not be recorded; the event is tried again when its claim runs out");
                    }
                }
            }
            break;
        }
        let lane = crate::shared::deliveries::lane_name(&t.lane.0, &t.lane.1);
        {
            let mut f = lock(&self.in_flight);
            if let Some(n) = f.get_mut(&lane) {
                *n -= 1;
                if *n == 0 {
                    f.remove(&lane);
                }
            }
        }
        self.wake.notify_one();
    }

    /// What `answer` means for `t`: counted, noted in the health, and how to settle it.
    async fn judge(&self, p: &Parts, t: &Taken, answer: &Answer) -> Outcome {
        self.metrics.count_attempt(answer.outcome);
        let now_ms = crate::clock::unix_ms();
        let m = &t.message;
        if answer.outcome == WebhookOutcome::Delivered {
            self.metrics.count_delivered(Duration::from_millis(now_ms.saturating_sub(m.at_ms)));
            let mut h = lock(&self.health);
            h.last_success_ms = Some(now_ms);
            if h.failing_since_ms.take().is_some() {
                tracing::info!(endpoint = &*self.name, "webhook endpoint delivering again");
            }
            return Outcome::Delivered;
        }
        {
            let mut h = lock(&self.health);
            h.last_failure = Some((now_ms, answer.why.clone()));
            if h.failing_since_ms.is_none() {
                h.failing_since_ms = Some(now_ms);
                tracing::warn!(endpoint = &*self.name, why = %answer.why, "webhook endpoint failing; retrying on its schedule");
            }
        }
        if answer.outcome == WebhookOutcome::Gone {
            let why = "HTTP 410 Gone: the receiver asked for no more deliveries";
            // Unsynced until the store has it, so a report in between does not clear it.
            self.disabled_unsynced.store(true, Ordering::Release);
            lock(&self.health).disabled = Some((now_ms, why.to_owned()));
            match self.backlog.set_disabled(&self.name, Some(why)).await {
                Ok(()) => self.disabled_unsynced.store(false, Ordering::Release),
                Err(e) => {
                    tracing::warn!(endpoint = &*self.name, error = %e, "the other replicas could not be told the endpoint is disabled yet; trying again")
                }
            }
            tracing::warn!(
                endpoint = &*self.name,
                "webhook endpoint disabled (410 Gone); POST /webhooks/{}/replay enables it",
                self.name
            );
            self.metrics.set_disabled(true);
            return Outcome::Retry { after: Duration::ZERO, counted: false };
        }
        tracing::debug!(endpoint = &*self.name, agent = &*m.agent, seq = m.seq, attempt = t.attempt, why = %answer.why, "webhook attempt failed");
        match p.schedule.wait(t.attempt, unit()) {
            Some(wait) => Outcome::Retry { after: answer.retry_after.unwrap_or(wait), counted: true },
            None => {
                self.metrics.count_failed();
                if let Some(left_out) = self.warnings.admit() {
                    tracing::warn!(
                        endpoint = &*self.name, agent = &*m.agent, seq = m.seq, id = &*m.id, attempts = t.attempt,
                        why = %answer.why, left_out, "webhook event given up after its last attempt; kept for replay"
                    );
                }
                Outcome::GiveUp { why: answer.why.clone(), at_ms: now_ms, max_failed: p.cfg.max_failed }
            }
        }
    }

    /// Tells the shared store (again) that a 410 disabled the endpoint.
    async fn tell_disabled(&self, why: &str) {
        let told = self.backlog.set_disabled(&self.name, Some(why)).await.is_ok();
        self.disabled_unsynced.store(!told, Ordering::Release);
    }

    /// The backlog as it stands; `None` while the shared store does not answer.
    async fn snapshot(&self, recent: usize) -> Option<Snapshot> {
        match self.backlog.snapshot(&self.name, recent).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(endpoint = &*self.name, error = %e, "webhook backlog not readable");
                None
            }
        }
    }

    /// Brings the gauges up to date, and (shared) this replica's idea of whether the
    /// endpoint is disabled.
    pub async fn report(&self) {
        let Some(s) = self.snapshot(1).await else { return };
        let local = lock(&self.health).disabled.clone();
        match (&s.disabled, local) {
            (Some(why), None) => lock(&self.health).disabled = Some((crate::clock::unix_ms(), why.clone())),
            // A 410 seen here that the store has not heard of yet: tell it again.
            (None, Some((_, why))) if self.disabled_unsynced.load(Ordering::Acquire) => self.tell_disabled(&why).await,
            // Enabled by a replay on another replica.
            (None, Some(_)) => lock(&self.health).disabled = None,
            _ => {}
        }
        let h = lock(&self.health).clone();
        let now_ms = crate::clock::unix_ms();
        self.metrics.set_pending(s.pending as usize);
        self.metrics.set_oldest_age(s.oldest_ms.map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1000.0));
        self.metrics.set_disabled(h.disabled.is_some());
        self.metrics.set_failing_since(h.failing_since_ms.map_or(0, |ms| ms / 1000));
    }

    pub async fn status(&self) -> Status {
        let p = self.parts.load_full();
        let now_ms = crate::clock::unix_ms();
        let s = self.snapshot(SHOWN_FAILED).await.unwrap_or_default();
        let h = lock(&self.health).clone();
        let disabled = h.disabled.or_else(|| s.disabled.clone().map(|why| (now_ms, why)));
        let state = match (&disabled, h.failing_since_ms) {
            (Some(_), _) => "disabled",
            (None, Some(_)) => "failing",
            (None, None) => "ok",
        };
        let view = |(at, why): &(u64, String)| FailureView { at: rfc3339(*at), why: why.clone() };
        Status {
            name: self.name.to_string(),
            url: crate::config::mask_url_path(&p.cfg.url),
            state,
            events: p.cfg.events.clone(),
            gateways: p.cfg.gateways.clone(),
            pending: s.pending as usize,
            in_flight: self.in_flight(),
            oldest_pending_age_seconds: s.oldest_ms.map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
            failed: s.failed as usize,
            last_success: h.last_success_ms.map(rfc3339),
            last_failure: h.last_failure.as_ref().map(view),
            failing_since: h.failing_since_ms.map(rfc3339),
            next_retry: s.next_due_ms.filter(|_| disabled.is_none()).map(rfc3339),
            disabled: disabled.as_ref().map(view),
            recent_failed: s.recent_failed.iter().map(failed_view).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_retry_is_waited_for_once_and_then_forgotten() {
        let now = Instant::now();
        let mut next = Some(now + Duration::from_secs(5));
        assert_eq!(retry_wake(&mut next, now), Some(now + Duration::from_secs(5) + CLOCKS_APART));
        let later = now + Duration::from_secs(6);
        assert_eq!(retry_wake(&mut next, later), None, "passed: no wake-up in the past");
        assert_eq!(next, None, "and forgotten");
        assert_eq!(retry_wake(&mut next, later), None);
    }
}
