//! Where an endpoint's pending events live, chosen once at start from `store.backend`: in
//! this process (`queue.rs`: bounded, lost on restart), or in the shared store, where each
//! lane is claimed by one replica at a time and a dead replica's claims run out for another
//! to resume (`shared::deliveries`). The endpoint's task calls the same operations on either
//! and never asks which it has.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::message::Message;
use super::queue::{Failed, LaneKey, Pushed, Queue, Settle, Taken};
use crate::labels::Discarded;
use crate::metrics::Metrics;
use crate::shared::deliveries::{self, Bound, Settled, Settlement};
use crate::shared::{SharedStore, StoreError};
use crate::sync::lock;

/// What the operators' view and the gauges show of a backlog.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub pending: u64,
    /// When the oldest waiting event was taken (Unix ms).
    pub oldest_ms: Option<u64>,
    /// When the next lane is due (Unix ms).
    pub next_due_ms: Option<u64>,
    pub failed: u64,
    /// The newest given-up events, newest first.
    pub recent_failed: Vec<Failed>,
    /// Disabled, by this replica or (shared) another: why.
    pub disabled: Option<String>,
}

pub enum Backlog {
    Local { queue: Mutex<Queue>, disabled: Mutex<Option<String>> },
    Shared { store: Arc<dyn SharedStore>, metrics: Metrics },
}

/// How an attempt ended, for [`Backlog::settle`].
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    Retry { after: Duration, counted: bool },
    GiveUp { why: String, at_ms: u64, max_failed: usize },
}

impl Backlog {
    pub fn local(bound: Bound, max_failed: usize) -> Self {
        Self::Local { queue: Mutex::new(Queue::new(bound.events, bound.bytes, max_failed)), disabled: Mutex::new(None) }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared { .. })
    }

    /// New bounds (a reload); the shared store's are passed with each call instead.
    pub fn set_bounds(&self, bound: Bound, max_failed: usize) {
        if let Self::Local { queue, .. } = self {
            lock(queue).set_bounds(bound.events, bound.bytes, max_failed);
        }
    }

    /// The agent's next sequence number, every endpoint together (`seqs`: this process's,
    /// for the local backlog).
    pub async fn next_seq(
        store: Option<&Arc<dyn SharedStore>>,
        seqs: &Mutex<std::collections::HashMap<LaneKey, u64>>,
        lane: &LaneKey,
        max_local: usize,
    ) -> Result<u64, StoreError> {
        if let Some(store) = store {
            return store.next_seq(&deliveries::lane_name(&lane.0, &lane.1)).await;
        }
        let mut seqs = lock(seqs);
        if seqs.len() >= max_local && !seqs.contains_key(lane) {
            tracing::warn!(
                agents = seqs.len(),
                "webhook sequence numbers forgotten (too many agents); each starts again at 1"
            );
            seqs.clear();
        }
        let n = seqs.entry(lane.clone()).or_insert(0);
        *n += 1;
        Ok(*n)
    }

    /// Queues `m` at the end of its lane; `false` when that would pass `bound`.
    pub async fn push(&self, endpoint: &str, m: &Message, bound: Bound) -> Result<bool, StoreError> {
        match self {
            Self::Local { queue, .. } => Ok(lock(queue).push(m.clone(), Instant::now()) == Pushed::Queued),
            Self::Shared { store, .. } => {
                let lane = deliveries::lane_name(&m.gateway, &m.agent);
                store.push(endpoint, &lane, m.at_ms, &m.encode(), bound).await
            }
        }
    }

    /// Up to `max` lane heads due now, each this replica's to attempt (for `hold`, shared).
    pub async fn claim(&self, endpoint: &str, max: usize, hold: Duration) -> Result<Vec<Taken>, StoreError> {
        match self {
            Self::Local { queue, .. } => {
                let now = Instant::now();
                let mut q = lock(queue);
                Ok(std::iter::from_fn(|| q.take(now)).take(max).collect())
            }
            Self::Shared { store, metrics } => {
                let mut out = Vec::new();
                for c in store.claim(endpoint, max, hold).await? {
                    // A message of the lane it sits in, as ccgate writes them; anything else
                    // (a planted or a mangled entry) is dropped from that lane, so the agent's
                    // later events are not stuck behind it.
                    let message = Message::decode(&c.message).filter(|m| {
                        deliveries::valid_lane(&c.lane) && deliveries::lane_name(&m.gateway, &m.agent) == c.lane
                    });
                    match message {
                        Some(message) => {
                            let lane = (message.gateway.clone(), message.agent.clone());
                            out.push(Taken { lane, message, attempt: c.attempts.saturating_add(1) });
                        }
                        None => {
                            metrics.count_discarded(Discarded::StoreEvent, 1);
                            tracing::warn!(
                                endpoint,
                                "a webhook message in the shared store is not one ccgate writes; dropped"
                            );
                            // Named by its first word, as `WH_SETTLE` matches a head (the whole
                            // entry when it has no space). A drop that fails is tried again when
                            // its claim runs out; the good heads stand meanwhile.
                            let id = c.message.split(|b| *b == b' ').next().unwrap_or_default();
                            let id = String::from_utf8_lossy(id);
                            if let Err(e) = store.settle(endpoint, &c.lane, &id, Settlement::Delivered).await {
                                tracing::debug!(endpoint, error = %e, "dropping an entry that is not ccgate's failed");
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Keeps this replica's claims on `lanes` for another `hold` (shared; nothing in process).
    pub async fn hold(&self, endpoint: &str, lanes: &[&str], hold: Duration) -> Result<(), StoreError> {
        match self {
            Self::Local { .. } => Ok(()),
            Self::Shared { store, .. } => store.hold(endpoint, lanes, hold).await,
        }
    }

    /// Settles the attempt at `t`; whether an old given-up event was pushed out of the list.
    pub async fn settle(&self, endpoint: &str, t: &Taken, how: Outcome) -> Result<bool, StoreError> {
        match self {
            Self::Local { queue, .. } => {
                let now = Instant::now();
                let how = match how {
                    Outcome::Delivered => Settle::Delivered,
                    Outcome::Retry { after, counted } => Settle::Retry { at: now + after, counted },
                    Outcome::GiveUp { why, at_ms, .. } => Settle::GiveUp { why, at_ms },
                };
                Ok(lock(queue).settle(t, how, now).is_some())
            }
            Self::Shared { store, .. } => {
                let lane = deliveries::lane_name(&t.lane.0, &t.lane.1);
                let encoded;
                let entry;
                let how = match how {
                    Outcome::Delivered => Settlement::Delivered,
                    Outcome::Retry { after, counted } => Settlement::Retry { after, counted },
                    Outcome::GiveUp { why, at_ms, max_failed } => {
                        encoded = t.message.encode();
                        entry = deliveries::failed_entry(&lane, &encoded, at_ms, t.attempt, &why).unwrap_or_default();
                        Settlement::GiveUp { entry: &entry, max_failed }
                    }
                };
                Ok(store.settle(endpoint, &lane, &t.message.id, how).await? == Settled::Evicted)
            }
        }
    }

    /// Puts the given-up events taken since `since_ms` back in their lanes; how many.
    pub async fn replay(&self, endpoint: &str, since_ms: u64) -> Result<usize, StoreError> {
        match self {
            Self::Local { queue, .. } => {
                let now = Instant::now();
                Ok(lock(queue).replay(since_ms, now))
            }
            Self::Shared { store, .. } => store.replay(endpoint, since_ms).await,
        }
    }

    /// Disables the endpoint (`Some(why)`: for every replica, shared) or enables it.
    pub async fn set_disabled(&self, endpoint: &str, why: Option<&str>) -> Result<(), StoreError> {
        match self {
            Self::Local { disabled, .. } => {
                *lock(disabled) = why.map(str::to_owned);
                Ok(())
            }
            Self::Shared { store, .. } => store.set_disabled(endpoint, why.map(str::as_bytes)).await,
        }
    }

    pub async fn snapshot(&self, endpoint: &str, recent: usize) -> Result<Snapshot, StoreError> {
        match self {
            Self::Local { queue, disabled } => {
                let q = lock(queue);
                let now = Instant::now();
                let now_ms = crate::clock::unix_ms();
                Ok(Snapshot {
                    pending: q.pending() as u64,
                    oldest_ms: q.oldest_ms(),
                    next_due_ms: q.next_due().map(|at| now_ms + at.saturating_duration_since(now).as_millis() as u64),
                    failed: q.failed_len() as u64,
                    recent_failed: q.failed(recent),
                    disabled: lock(disabled).clone(),
                })
            }
            Self::Shared { store, .. } => {
                let s = store.summary(endpoint, recent).await?;
                let recent_failed = s
                    .recent_failed
                    .iter()
                    .filter_map(|e| {
                        let (_, given_up, attempts, why, raw) = deliveries::parse_failed_entry(e)?;
                        let message = Message::decode(raw)?;
                        Some(Failed { message, attempts, why: why.to_owned(), at_ms: given_up })
                    })
                    .collect();
                Ok(Snapshot {
                    pending: s.pending,
                    oldest_ms: s.oldest_ms,
                    next_due_ms: s.next_due_ms,
                    failed: s.failed,
                    recent_failed,
                    disabled: s.disabled.map(|d| String::from_utf8_lossy(&d).into_owned()),
                })
            }
        }
    }

    /// When this process knows the next lane to be due (local); the shared store is asked
    /// on the endpoint's poll instead.
    pub fn next_due(&self) -> Option<Instant> {
        match self {
            Self::Local { queue, .. } => lock(queue).next_due(),
            Self::Shared { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::memory::MemoryHub;

    const BOUND: Bound = Bound { events: 100, bytes: 1 << 20 };
    const HOLD: Duration = Duration::from_secs(10);

    /// A planted message (naming another agent than its lane's) and a mangled one are dropped
    /// from the lane they sit in, counted, and the agent's real event behind them goes.
    #[tokio::test(start_paused = true)]
    async fn entries_ccgate_did_not_write_are_dropped_and_the_lane_goes_on() {
        let hub = MemoryHub::new(HOLD, Duration::from_secs(60));
        let store: Arc<dyn SharedStore> = hub.join();
        let metrics = Metrics::default();
        let b = Backlog::Shared { store: store.clone(), metrics: metrics.clone() };
        let planted = Message::build("default".into(), "154".into(), 1, "Planted", b"{}", 1).unwrap();
        store.push("crm", "default/153", 1, &planted.encode(), BOUND).await.unwrap();
        store.push("crm", "default/153", 1, b"msg_00 1 not what ccgate writes", BOUND).await.unwrap();
        store.push("crm", "default/153", 1, b"garbage", BOUND).await.unwrap();
        store.push("crm", "default/153", 1, b"x y z", BOUND).await.unwrap();
        let real = Message::build("default".into(), "153".into(), 2, "Real", b"{}", 2).unwrap();
        assert!(b.push("crm", &real, BOUND).await.unwrap());
        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(b.claim("crm", 4, HOLD).await.unwrap());
        }
        assert_eq!(got.iter().map(|t| &*t.message.kind).collect::<Vec<_>>(), ["Real"]);
        assert_eq!(got[0].lane, ("default".into(), "153".into()));
        assert!(metrics.render().contains(r#"ccgate_input_discarded_total{what="store_event"} 4"#));
        // A push retried after its answer was lost is not queued twice.
        assert!(b.push("crm", &real, BOUND).await.unwrap());
        assert_eq!(b.snapshot("crm", 1).await.unwrap().pending, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_backlog_counts_bytes_as_well_as_events() {
        let bound = Bound { events: 100, bytes: 600 };
        let b = Backlog::local(bound, 10);
        let event = format!("\"{}\"", "x".repeat(200));
        let big = |seq| Message::build("default".into(), "153".into(), seq, "E", event.as_bytes(), 0).unwrap();
        assert!(b.push("crm", &big(1), bound).await.unwrap());
        assert!(!b.push("crm", &big(2), bound).await.unwrap(), "past the bytes, not the count");
        assert_eq!(b.snapshot("crm", 1).await.unwrap().pending, 1);
    }
}
