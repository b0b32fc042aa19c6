//! One endpoint at run time: its queue, its delivery task, its health. The task takes due
//! lane heads while fewer than `max_in_flight` attempts run, each attempt on its own task,
//! and sleeps until the next lane is due, an event arrives, or an attempt ends. A slow or
//! dead endpoint therefore holds its own `max_in_flight` tasks and connections and nothing
//! of any other endpoint's or of the request path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::client::{Answer, EndpointClient, Signed};
use super::message::Message;
use super::queue::{Failed, Pushed, Queue, Settle, Taken};
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
    disabled: Option<(u64, String)>,
}

pub struct Endpoint {
    pub name: Arc<str>,
    parts: ArcSwap<Parts>,
    queue: Mutex<Queue>,
    health: Mutex<Health>,
    wake: Notify,
    in_flight: AtomicUsize,
    /// Removed by a reload: its task ends.
    retired: AtomicBool,
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

fn rfc3339(ms: u64) -> String {
    crate::session::view::rfc3339(ms)
}

impl Endpoint {
    pub fn new(metrics: WebhookMetrics, parts: Parts) -> Arc<Self> {
        let queue = Queue::new(parts.cfg.max_pending, parts.cfg.max_failed);
        metrics.zero();
        Arc::new(Self {
            name: Arc::from(parts.cfg.name.as_str()),
            parts: ArcSwap::from_pointee(parts),
            queue: Mutex::new(queue),
            health: Mutex::new(Health::default()),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            metrics,
            warnings: LogBudget::default(),
        })
    }

    pub fn config(&self) -> WebhookConfig {
        self.parts.load().cfg.clone()
    }

    /// Takes a reload's parts; queued events stay and are sent the new way.
    pub fn reconfigure(&self, parts: Parts) {
        lock(&self.queue).set_bounds(parts.cfg.max_pending, parts.cfg.max_failed);
        self.parts.store(Arc::new(parts));
        self.wake.notify_one();
    }

    /// Ends the delivery task (a reload removed the endpoint).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether this endpoint takes `kind` events of gateway `gateway`.
    pub fn wants(&self, gateway: &str, kind: &str) -> bool {
        let p = self.parts.load();
        p.cfg.wants(kind) && p.cfg.serves(gateway)
    }

    /// Queues `m`; a full queue refuses it, counted and logged.
    pub fn offer(&self, m: Message) {
        let pushed = lock(&self.queue).push(m, Instant::now());
        match pushed {
            Pushed::Queued => self.wake.notify_one(),
            Pushed::Full => {
                self.metrics.count_dropped(WebhookDrop::QueueFull);
                if let Some(left_out) = self.warnings.admit() {
                    tracing::warn!(endpoint = &*self.name, left_out, "webhook queue full (max_pending); event dropped");
                }
            }
        }
    }

    /// Counts an event that could not be made into a message.
    pub fn count_too_large(&self) {
        self.metrics.count_dropped(WebhookDrop::TooLarge);
    }

    /// Sends the given-up events taken since `since_ms` again, and enables the endpoint if
    /// a `410` had disabled it; returns how many.
    pub fn replay(&self, since_ms: u64) -> usize {
        let now = Instant::now();
        let n = {
            let mut q = lock(&self.queue);
            let n = q.replay(since_ms, now);
            q.due_now(now);
            n
        };
        if let Some((_, why)) = lock(&self.health).disabled.take() {
            tracing::info!(endpoint = &*self.name, was = %why, "webhook endpoint enabled again by replay");
        }
        self.report();
        self.wake.notify_one();
        n
    }

    /// The delivery task: runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut reported = Instant::now();
        loop {
            if *stop.borrow() || self.retired.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if now >= reported + REPORT_PERIOD {
                self.report();
                reported = now;
            }
            let max = self.parts.load().cfg.max_in_flight;
            let disabled = lock(&self.health).disabled.is_some();
            let mut due = None;
            if !disabled && self.in_flight.load(Ordering::Acquire) < max {
                let taken = {
                    let mut q = lock(&self.queue);
                    let t = q.take(now);
                    due = q.next_due();
                    t
                };
                if let Some(t) = taken {
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(self.clone().attempt(t));
                    continue;
                }
            }
            let until = due.map_or(reported + REPORT_PERIOD, |d| d.min(reported + REPORT_PERIOD));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.changed() => {}
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
        let how = self.judge(&p, &t, &answer);
        let evicted = lock(&self.queue).settle(&t, how, Instant::now());
        if evicted.is_some() {
            self.metrics.count_dropped(WebhookDrop::FailedEvicted);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.metrics.set_pending(lock(&self.queue).pending());
        self.wake.notify_one();
    }

    /// What `answer` means for `t`: counted, noted in the health, and how to settle it.
    fn judge(&self, p: &Parts, t: &Taken, answer: &Answer) -> Settle {
        self.metrics.count_attempt(answer.outcome);
        let now_ms = crate::clock::unix_ms();
        let now = Instant::now();
        let m = &t.message;
        if answer.outcome == WebhookOutcome::Delivered {
            self.metrics.count_delivered(Duration::from_millis(now_ms.saturating_sub(m.at_ms)));
            let mut h = lock(&self.health);
            h.last_success_ms = Some(now_ms);
            if h.failing_since_ms.take().is_some() {
                tracing::info!(endpoint = &*self.name, "webhook endpoint delivering again");
            }
            return Settle::Delivered;
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
            let why = "HTTP 410 Gone: the receiver asked for no more deliveries".to_owned();
            lock(&self.health).disabled = Some((now_ms, why));
            tracing::warn!(
                endpoint = &*self.name,
                "webhook endpoint disabled (410 Gone); POST /webhooks/{}/replay enables it",
                self.name
            );
            self.report();
            return Settle::Retry { at: now, counted: false };
        }
        tracing::debug!(endpoint = &*self.name, agent = &*m.agent, seq = m.seq, attempt = t.attempt, why = %answer.why, "webhook attempt failed");
        match p.schedule.wait(t.attempt, unit()) {
            Some(wait) => Settle::Retry { at: now + answer.retry_after.unwrap_or(wait), counted: true },
            None => {
                self.metrics.count_failed();
                if let Some(left_out) = self.warnings.admit() {
                    tracing::warn!(
                        endpoint = &*self.name, agent = &*m.agent, seq = m.seq, id = &*m.id, attempts = t.attempt,
                        why = %answer.why, left_out, "webhook event given up after its last attempt; kept for replay"
                    );
                }
                Settle::GiveUp { why: answer.why.clone(), at_ms: now_ms }
            }
        }
    }

    /// Brings the gauges up to date.
    pub fn report(&self) {
        let (pending, oldest) = {
            let q = lock(&self.queue);
            (q.pending(), q.oldest_ms())
        };
        let h = lock(&self.health).clone();
        let now_ms = crate::clock::unix_ms();
        self.metrics.set_pending(pending);
        self.metrics.set_oldest_age(oldest.map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1000.0));
        self.metrics.set_disabled(h.disabled.is_some());
        self.metrics.set_failing_since(h.failing_since_ms.map_or(0, |ms| ms / 1000));
    }

    pub fn status(&self) -> Status {
        let p = self.parts.load();
        let now = Instant::now();
        let now_ms = crate::clock::unix_ms();
        let (pending, oldest, failed, recent, next) = {
            let q = lock(&self.queue);
            (q.pending(), q.oldest_ms(), q.failed_len(), q.failed(SHOWN_FAILED), q.next_due())
        };
        let h = lock(&self.health).clone();
        let state = match (&h.disabled, h.failing_since_ms) {
            (Some(_), _) => "disabled",
            (None, Some(_)) => "failing",
            (None, None) => "ok",
        };
        let view = |(at, why): &(u64, String)| FailureView { at: rfc3339(*at), why: why.clone() };
        Status {
            name: self.name.to_string(),
            url: crate::config::mask_url_secrets(&p.cfg.url),
            state,
            events: p.cfg.events.clone(),
            gateways: p.cfg.gateways.clone(),
            pending,
            in_flight: self.in_flight.load(Ordering::Acquire),
            oldest_pending_age_seconds: oldest.map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
            failed,
            last_success: h.last_success_ms.map(rfc3339),
            last_failure: h.last_failure.as_ref().map(view),
            failing_since: h.failing_since_ms.map(rfc3339),
            next_retry: next
                .filter(|_| h.disabled.is_none())
                .map(|at| rfc3339(now_ms + at.saturating_duration_since(now).as_millis() as u64)),
            disabled: h.disabled.as_ref().map(view),
            recent_failed: recent.iter().map(failed_view).collect(),
        }
    }
}
