//! Webhooks: the agents' events pushed to the apps' HTTPS endpoints (`[[webhooks]]`), signed
//! as Standard Webhooks 1.0, retried on a schedule, in order per agent and endpoint.
//!
//! The files, bottom up: `sign` (the signature), `message` (an event as a webhook carries
//! it), `schedule` (when to try again), `queue` (an endpoint's pending events, lane per
//! agent), `client` (HTTPS to one endpoint, private addresses refused), `endpoint` (the
//! delivery task and health of one endpoint); here, [`Webhooks`]: every endpoint, the sink
//! each gateway's sessions hand their events to, and reload.
//!
//! Where events come from: the replica that polls an agent offers each event once, in the
//! agent's order (`session/outlet.rs`); ccgate's own `ccgate.session_ended` comes the same way.
//! Delivery state lives in this process: it is bounded, and lost on restart (README,
//! docs/redis.md).

mod client;
mod endpoint;
mod message;
mod queue;
mod schedule;
mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

pub use endpoint::{Endpoint, FailedView, FailureView, Parts, Status};
pub use message::Message;
pub use sign::Signer;

use crate::metrics::Metrics;
use crate::session::EventSink;
use crate::sync::lock;

/// Agents whose sequence numbers are remembered. Past it the numbers start again at 1 (and
/// a line says so): with 10,000 agents per gateway this is never reached in practice, and a
/// receiver orders one agent's events by `seq` within its session anyway.
const MAX_SEQ_AGENTS: usize = 200_000;

/// Every configured endpoint, and the agents' sequence numbers.
pub struct Webhooks {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    seqs: Mutex<HashMap<queue::LaneKey, u64>>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
}

/// Why a replay was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    UnknownEndpoint,
}

impl Webhooks {
    /// The endpoints [`Parts::build_all`] built; nothing runs until [`Webhooks::start`].
    pub fn new(parts: Vec<Parts>, metrics: &Metrics) -> Arc<Self> {
        let endpoints = parts.into_iter().map(|p| Endpoint::new(metrics.webhook(&p.cfg.name), p)).collect();
        Arc::new(Self {
            endpoints: ArcSwap::from_pointee(endpoints),
            seqs: Mutex::new(HashMap::new()),
            metrics: metrics.clone(),
            stop: watch::channel(false).0,
        })
    }

    /// Starts each endpoint's delivery task.
    pub fn start(&self) {
        for e in self.endpoints.load().iter() {
            tokio::spawn(e.clone().run(self.stop.subscribe()));
        }
    }

    /// Stops every delivery task; what is queued is lost with the process (README).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.load().is_empty()
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
                    let e = Endpoint::new(self.metrics.webhook(&p.cfg.name), p);
                    tokio::spawn(e.clone().run(self.stop.subscribe()));
                    next.push(e);
                }
            }
        }
        for gone in old.iter().filter(|e| !next.iter().any(|n| n.name == e.name)) {
            let pending = gone.status().pending;
            tracing::warn!(
                endpoint = &*gone.name,
                pending,
                "webhook endpoint removed by reload; its pending events are dropped"
            );
            gone.retire();
        }
        self.endpoints.store(Arc::new(next));
    }

    pub fn status(&self) -> Vec<Status> {
        self.endpoints.load().iter().map(|e| e.status()).collect()
    }

    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.load().iter().find(|e| &*e.name == name).cloned()
    }

    /// `POST /webhooks/{name}/replay?since=`: see [`Endpoint::replay`].
    pub fn replay(&self, name: &str, since_ms: u64) -> Result<usize, ReplayError> {
        self.endpoint(name).map(|e| e.replay(since_ms)).ok_or(ReplayError::UnknownEndpoint)
    }

    /// One event of `gateway`'s agent: numbered, made into a message once, queued for each
    /// endpoint that wants it.
    fn offer(&self, gateway: &Arc<str>, agent: &str, kind: &str, data: &Bytes) {
        let endpoints = self.endpoints.load();
        if endpoints.is_empty() {
            return;
        }
        let seq = self.next_seq(gateway, agent);
        let wanting: Vec<&Arc<Endpoint>> = endpoints.iter().filter(|e| e.wants(gateway, kind)).collect();
        if wanting.is_empty() {
            return;
        }
        match Message::build(gateway.clone(), Arc::from(agent), seq, kind, data, crate::clock::unix_ms()) {
            Some(m) => {
                for e in wanting {
                    e.offer(m.clone());
                }
            }
            None => wanting.iter().for_each(|e| e.count_too_large()),
        }
    }

    /// The agent's next sequence number: one more than its last event's.
    fn next_seq(&self, gateway: &Arc<str>, agent: &str) -> u64 {
        let mut seqs = lock(&self.seqs);
        if seqs.len() >= MAX_SEQ_AGENTS && !seqs.contains_key(&(gateway.clone(), Arc::from(agent))) {
            tracing::warn!(
                agents = seqs.len(),
                "webhook sequence numbers forgotten (too many agents); each starts again at 1"
            );
            seqs.clear();
        }
        let n = seqs.entry((gateway.clone(), Arc::from(agent))).or_insert(0);
        *n += 1;
        *n
    }
}

/// What a gateway's sessions hold: the webhooks, weakly (they outlive no one).
struct GatewaySink {
    gateway: Arc<str>,
    hooks: Weak<Webhooks>,
}

impl EventSink for GatewaySink {
    fn offer(&self, agent: &str, kind: &str, data: &Bytes) {
        if let Some(h) = self.hooks.upgrade() {
            h.offer(&self.gateway, agent, kind, data);
        }
    }
}

/// `since` of a replay: an RFC 3339 date-time (`2026-12-07T08:00:00Z`, fractions and
/// offsets allowed) as Unix ms; `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
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
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
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
        for bad in [
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
