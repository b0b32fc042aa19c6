//! Webhooks: the agents' events pushed to the apps' HTTPS endpoints (`[[webhooks]]`), signed
//! as Standard Webhooks 1.0, retried on a schedule, in order per agent and endpoint.
//!
//! The files, bottom up: `sign` (the signature), `message` (an event as a webhook carries
//! it), `schedule` (when to try again), `queue` (an endpoint's pending events in this
//! process, a lane per agent), `backlog` (that queue, or the shared store's lanes: the seam),
//! `client` (HTTPS to one endpoint, private addresses refused), `endpoint` (the delivery task
//! and health of one endpoint); here, [`Webhooks`]: every endpoint, the sink each gateway's
//! sessions hand their events to, the hand-over to the backlogs, and reload.
//!
//! Where events come from: the replica that polls an agent offers each event once, in the
//! agent's order (`session/outlet.rs`); ccgate's own `ccgate.session_ended` comes the same way.
//! The offer is a bounded, non-blocking hand-over to one task, which numbers the event, makes
//! it a message once, and queues it for each endpoint that wants it. With the memory store
//! the backlogs are this process's (bounded, lost on restart); with Redis they are shared,
//! and a replica that dies leaves its deliveries to the others (README, docs/redis.md).

mod backlog;
mod client;
mod endpoint;
mod message;
mod queue;
mod schedule;
mod sign;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use endpoint::{Endpoint, FailedView, FailureView, Parts, Status};
use message::Message;

use crate::metrics::Metrics;
use crate::session::EventSink;
use crate::shared::SharedStore;

/// Agents whose sequence numbers are remembered. Past it the numbers start again at 1 (and
/// a line says so): with 10,000 agents per gateway this is never reached in practice, and a
/// receiver orders one agent's events by `seq` within its session anyway.
const MAX_SEQ_AGENTS: usize = 200_000;

/// Events handed over by the pollers and not yet queued: a burst of a whole contact centre's
/// events, or a few seconds of a Redis outage at 1,000 events/s. Past it an event is dropped
/// and counted for each endpoint that wanted it; the poller never waits.
const HANDOVER: usize = 8192;
/// The hand-over's first wait after the shared store failed to take an event (doubled up to
/// [`HANDOVER_BACKOFF_MAX`]): the same event is tried again, so none is lost to a blip.
const HANDOVER_BACKOFF: Duration = Duration::from_millis(100);
const HANDOVER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One event on its way from a poller to the backlogs.
struct Offered {
    gateway: Arc<str>,
    agent: Arc<str>,
    tenant: Option<Arc<str>>,
    kind: Arc<str>,
    data: Bytes,
    at_ms: u64,
}

/// Every configured endpoint, and the agents' sequence numbers.
pub struct Webhooks {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The agents' sequence numbers with the memory store (Redis keeps them otherwise).
    seqs: Mutex<HashMap<queue::LaneKey, u64>>,
    shared: Option<Arc<dyn SharedStore>>,
    handover: mpsc::Sender<Offered>,
    taken: Mutex<Option<mpsc::Receiver<Offered>>>,
    /// Events handed over and not yet queued, and a signal when that falls to none.
    waiting: AtomicUsize,
    idle: tokio::sync::Notify,
    metrics: Metrics,
    stop: watch::Sender<bool>,
}

/// Why a replay was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// No endpoint of that name is configured.
    UnknownEndpoint,
    /// The shared store did not answer: try again.
    Store(String),
}

impl Webhooks {
    /// The endpoints [`Parts::build_all`] built, their backlogs in `shared` when given (the
    /// Redis store); nothing runs until [`Webhooks::start`].
    pub fn new(parts: Vec<Parts>, metrics: &Metrics, shared: Option<Arc<dyn SharedStore>>) -> Arc<Self> {
        let (handover, taken) = mpsc::channel(HANDOVER);
        let hooks = Arc::new(Self {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            seqs: Mutex::new(HashMap::new()),
            shared,
            handover,
            taken: Mutex::new(Some(taken)),
            waiting: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
            stop: watch::channel(false).0,
        });
        let endpoints = parts.into_iter().map(|p| hooks.endpoint_of(p)).collect();
        hooks.endpoints.store(Arc::new(endpoints));
        hooks
    }

    fn endpoint_of(&self, p: Parts) -> Arc<Endpoint> {
        let (backlog, hold) = match &self.shared {
            Some(store) => {
                (backlog::Backlog::Shared { store: store.clone(), metrics: self.metrics.clone() }, store.lease_ttl())
            }
            // Nothing to claim from others in process: the hold is never asked for.
            None => (backlog::Backlog::local(endpoint::bound(&p.cfg), p.cfg.max_failed), Duration::ZERO),
        };
        Endpoint::new(self.metrics.webhook(&p.cfg.name), p, backlog, hold)
    }

    /// Starts each endpoint's delivery task, and the hand-over from the pollers.
    pub fn start(self: &Arc<Self>) {
        for e in self.endpoints.load().iter() {
            tokio::spawn(e.clone().run(self.stop.subscribe()));
        }
        if let Some(rx) = crate::sync::lock(&self.taken).take() {
            tokio::spawn(handover(Arc::downgrade(self), rx, self.stop.subscribe()));
        }
    }

    /// Stops every delivery task and the hand-over at once ([`Webhooks::finish`] is the
    /// graceful stop).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// The sink gateway `gateway`'s sessions hand their events to.
    pub fn sink(self: &Arc<Self>, gateway: &str) -> Arc<dyn EventSink> {
        Arc::new(GatewaySink { gateway: Arc::from(gateway), hooks: Arc::downgrade(self) })
    }

    /// A reload's endpoints, built by [`Parts::build_all`] with the rest of the live parts
    /// (so one that fails leaves everything as it was). Matched by name: a kept endpoint keeps
    /// its queue and takes the new settings, a new one starts, a removed one stops (its queued
    /// events go with it, which a line says).
    pub fn apply(&self, parts: Vec<Parts>) {
        let old = self.endpoints.load_full();
        let mut next = Vec::with_capacity(parts.len());
        for p in parts {
            match old.iter().find(|e| *e.name == p.cfg.name) {
                Some(e) => {
                    e.reconfigure(p);
                    next.push(e.clone());
                }
                None => {
                    let e = self.endpoint_of(p);
                    tokio::spawn(e.clone().run(self.stop.subscribe()));
                    next.push(e);
                }
            }
        }
        for gone in old.iter().filter(|e| !next.iter().any(|n| n.name == e.name)) {
            let kept_in_redis = self.shared.is_some();
            tracing::warn!(
                endpoint = &*gone.name,
                kept_in_redis,
                "webhook endpoint removed by reload; its pending events are no longer sent"
            );
            gone.retire();
        }
        self.endpoints.store(Arc::new(next));
    }

    pub async fn status(&self) -> Vec<Status> {
        let endpoints = self.endpoints.load_full();
        let mut out = Vec::with_capacity(endpoints.len());
        for e in endpoints.iter() {
            out.push(e.status().await);
        }
        out
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.load().iter().find(|e| &*e.name == name).cloned()
    }

    /// `POST /webhooks/{name}/replay?since=`: see [`Endpoint::replay`].
    pub async fn replay(&self, name: &str, since_ms: u64) -> Result<usize, ReplayError> {
        let e = self.endpoint(name).ok_or(ReplayError::UnknownEndpoint)?;
        e.replay(since_ms).await.map_err(|e| ReplayError::Store(e.to_string()))
    }

    /// One event of `gateway`'s agent, from its poller: handed over when an endpoint wants it,
    /// counted as dropped for each that does when the hand-over is full. Never waits.
    fn offer(&self, gateway: &Arc<str>, agent: &str, tenant: Option<&str>, kind: &str, data: &Bytes) {
        let kind = &*event_type(kind);
        let endpoints = self.endpoints.load();
        if !endpoints.iter().any(|e| e.wants(gateway, tenant, kind)) {
            return;
        }
        let o = Offered {
            gateway: gateway.clone(),
            agent: Arc::from(agent),
            tenant: tenant.map(Arc::from),
            kind: Arc::from(kind),
            data: data.clone(),
            at_ms: crate::clock::unix_ms(),
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.handover.try_send(o).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            endpoints.iter().filter(|e| e.wants(gateway, tenant, kind)).for_each(|e| e.count_dropped_full());
        }
    }

    /// Numbers `o`, makes it a message once and queues it for each endpoint that wants it;
    /// `Err` when the shared store did not take it (the caller tries the same event again;
    /// endpoints that took it already may get it twice, under one `webhook-id`).
    async fn queue(
        &self,
        o: &Offered,
        numbered: &mut Option<Message>,
        done: &mut Vec<Arc<str>>,
    ) -> Result<(), crate::shared::StoreError> {
        let endpoints = self.endpoints.load_full();
        let wanting: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| e.wants(&o.gateway, o.tenant.as_deref(), &o.kind) && !done.contains(&e.name))
            .collect();
        if wanting.is_empty() {
            return Ok(());
        }
        let m = match numbered {
            Some(m) => m.clone(),
            None => {
                let lane = (o.gateway.clone(), o.agent.clone());
                let seq = backlog::Backlog::next_seq(self.shared.as_ref(), &self.seqs, &lane, MAX_SEQ_AGENTS).await?;
                match Message::build(o.gateway.clone(), o.agent.clone(), seq, &o.kind, &o.data, o.at_ms) {
                    Some(m) => numbered.insert(m).clone(),
                    None => {
                        wanting.iter().for_each(|e| e.count_too_large());
                        return Ok(());
                    }
                }
            }
        };
        // The endpoints' backlogs at once: one event costs one round trip to the store, however
        // many endpoints want it.
        let pushes = wanting.iter().map(|e| async { (e.name.clone(), e.push(&m).await) });
        let mut failed = None;
        for (name, r) in futures_util::future::join_all(pushes).await {
            match r {
                Ok(()) => done.push(name),
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// A stop, within `deadline`: with the shared store, the events handed over reach it
    /// first, then no lane is claimed any more and the attempts running here end, so the
    /// other replicas neither miss an event nor send one again. With the memory store what is
    /// queued goes with the process (README, "Webhooks"), so it only stops.
    pub async fn finish(&self, deadline: tokio::time::Instant) {
        if self.shared.is_none() {
            self.stop();
            return;
        }
        let handed_over = async {
            loop {
                let idle = self.idle.notified();
                if self.waiting.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, handed_over).await;
        self.stop();
        let endpoints = self.endpoints.load_full();
        let attempts = futures_util::future::join_all(endpoints.iter().map(|e| e.quiesce()));
        let _ = tokio::time::timeout_at(deadline, attempts).await;
    }
}

/// The hand-over's task: queues each event in order; an event the shared store did not take
/// is tried again (with a growing wait) before the next, so an agent's events stay in order.
async fn handover(hooks: Weak<Webhooks>, mut rx: mpsc::Receiver<Offered>, mut stop: watch::Receiver<bool>) {
    let budget = crate::log_budget::LogBudget::default();
    loop {
        let o = tokio::select! {
            o = rx.recv() => match o { Some(o) => o, None => return },
            _ = stop.changed() => return,
        };
        let (mut numbered, mut done) = (None, Vec::new());
        let mut wait = HANDOVER_BACKOFF;
        loop {
            let Some(h) = hooks.upgrade() else { return };
            match h.queue(&o, &mut numbered, &mut done).await {
                Ok(()) => {
                    if h.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
                        h.idle.notify_waiters();
                    }
                    break;
                }
                Err(e) => {
                    if let Some(left_out) = budget.admit() {
                        tracing::warn!(error = %e, left_out, "a webhook event could not be queued in the shared store; trying again");
                    }
                }
            }
            drop(h);
            tokio::select! {
                _ = tokio::time::sleep(wait.mul_f64(schedule::unit())) => {}
                _ = stop.changed() => return,
            }
            wait = (wait * 2).min(HANDOVER_BACKOFF_MAX);
        }
    }
}

/// What a gateway's sessions hold: the webhooks, weakly (they outlive no one).
struct GatewaySink {
    gateway: Arc<str>,
    hooks: Weak<Webhooks>,
}

impl EventSink for GatewaySink {
    fn offer(&self, agent: &str, tenant: Option<&str>, kind: &str, data: &Bytes) {
        if let Some(h) = self.hooks.upgrade() {
            h.offer(&self.gateway, agent, tenant, kind, data);
        }
    }
}

/// An event's name as the webhooks carry it: the gateway's `eventType` as it is when it is of
/// the characters event names have (`[A-Za-z0-9_.-]`, at most 128), else with every other
/// character made `_` and cut to 128, so that it is one word in both stores, the same on
/// each, and safe in a log line.
fn event_type(kind: &str) -> std::borrow::Cow<'_, str> {
    if crate::shared::valid_event_kind(kind) {
        return kind.into();
    }
    let mapped: String = kind
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    if mapped.is_empty() {
        "unknown".into()
    } else {
        mapped.into()
    }
}

/// `since` of a replay: an RFC 3339 date-time (`2026-12-07T08:00:00Z`, fractions and
/// offsets allowed) as Unix ms; `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok()).flatten()
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_ms = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = f[..digits].chars().chain("000".chars()).take(3).collect();
        frac_ms = ms.parse().ok()?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let (oh, om) = (o[1..3].parse::<i64>().ok()?, o[4..6].parse::<i64>().ok()?);
            let v = oh * 3600 + om * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = crate::x509_expiry::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339_reads_what_rfc3339_writes_and_refuses_the_rest() {
        for ms in [0u64, 951_782_400_000, 1_796_526_487_000, 4_102_444_799_000] {
            assert_eq!(parse_rfc3339(&crate::session::view::rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-12-06T03:08:07.6Z"), Some(1_796_526_487_600));
        assert_eq!(parse_rfc3339("2026-12-06T04:08:07+01:00"), Some(1_796_526_487_000));
        assert_eq!(parse_rfc3339("2026-12-05T22:08:07-05:00"), Some(1_796_526_487_000));
        assert_eq!(super::event_type("AgentConf_Created"), "AgentConf_Created");
        assert_eq!(super::event_type("Agent Event:Ringing"), "Agent_Event_Ringing");
        assert_eq!(super::event_type(""), "unknown");
        assert_eq!(super::event_type(&"x".repeat(300)).len(), 128);
        for bad in [
            "2026-12-06T00:00:00é0000",
            "2026-12-06T00:00:00+0é00",
            "",
            "yesterday",
            "2026-12-06",
            "2026-13-06T00:00:00Z",
            "2026-12-06T00:00:00",
            "2026-12-06T00:00:00+0100",
            "1969-12-31T23:59:59Z",
            "2026-12-06T00:00:00.Z",
            "+026-12-06T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
