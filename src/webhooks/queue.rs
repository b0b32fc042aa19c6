//! One endpoint's pending deliveries, in this process: a lane per (gateway, agent) holding
//! its events in order, and the lanes ordered by when each may be tried next. Only a lane's
//! head is ever in flight, so event n+1 is not sent before event n got a 2xx or was given
//! up; lanes are independent, so one agent's failing event holds up no other agent.
//!
//! Bounded: `max_pending` events and `max_pending_bytes` over all lanes (a new event past them is refused and counted
//! by the caller), `max_failed` given-up events kept for replay (the oldest leave first).
//! Nothing here survives a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::message::Message;

/// A lane's key: the gateway's and the agent's names.
pub type LaneKey = (Arc<str>, Arc<str>);

struct Lane {
    messages: VecDeque<Message>,
    /// Attempts the head has had.
    attempts: u32,
    /// Its place in `due`; `None` while its head is in flight.
    due: Option<(Instant, u64)>,
}

/// An event that used every attempt.
#[derive(Debug, Clone)]
pub struct Failed {
    pub message: Message,
    pub attempts: u32,
    pub why: String,
    pub at_ms: u64,
}

/// The head of a lane, taken for an attempt.
#[derive(Debug, Clone)]
pub struct Taken {
    pub lane: LaneKey,
    pub message: Message,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

/// What became of an attempt.
#[derive(Debug, Clone)]
pub enum Settle {
    /// A 2xx: the next event of the lane is due at once.
    Delivered,
    /// Try the same event again at this time; `counted`: the attempt counts against the
    /// schedule (a disabled endpoint's held event does not).
    Retry { at: Instant, counted: bool },
    /// Every attempt used: keep it as failed, go on with the lane.
    GiveUp { why: String, at_ms: u64 },
}

pub struct Queue {
    lanes: HashMap<LaneKey, Lane>,
    due: BTreeMap<(Instant, u64), LaneKey>,
    ticket: u64,
    pending: usize,
    max_pending: usize,
    /// The pending messages' size ([`size`]) and its bound.
    bytes: usize,
    max_bytes: usize,
    failed: VecDeque<Failed>,
    max_failed: usize,
}

/// What a push or a give-up pushed out.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// `max_pending` reached: the event was not queued.
    Full,
}

impl Queue {
    pub fn new(max_pending: usize, max_bytes: usize, max_failed: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            due: BTreeMap::new(),
            ticket: 0,
            pending: 0,
            max_pending: max_pending.max(1),
            bytes: 0,
            max_bytes,
            failed: VecDeque::new(),
            max_failed,
        }
    }

    /// New bounds (a reload); what is queued stays, even past them.
    pub fn set_bounds(&mut self, max_pending: usize, max_bytes: usize, max_failed: usize) {
        self.max_pending = max_pending.max(1);
        self.max_bytes = max_bytes;
        self.max_failed = max_failed;
        while self.failed.len() > self.max_failed {
            self.failed.pop_front();
        }
    }

    fn schedule(&mut self, key: &LaneKey, at: Instant) {
        self.ticket += 1;
        let slot = (at, self.ticket);
        if let Some(lane) = self.lanes.get_mut(key) {
            if let Some(old) = lane.due.replace(slot) {
                self.due.remove(&old);
            }
            self.due.insert(slot, key.clone());
        }
    }

    /// Queues `m` at the end of its agent's lane.
    pub fn push(&mut self, m: Message, now: Instant) -> Pushed {
        if self.pending >= self.max_pending || self.bytes + size(&m) > self.max_bytes {
            return Pushed::Full;
        }
        self.pending += 1;
        self.bytes += size(&m);
        let key: LaneKey = (m.gateway.clone(), m.agent.clone());
        match self.lanes.get_mut(&key) {
            Some(lane) => lane.messages.push_back(m),
            None => {
                let lane = Lane { messages: VecDeque::from([m]), attempts: 0, due: None };
                self.lanes.insert(key.clone(), lane);
                self.schedule(&key, now);
            }
        }
        Pushed::Queued
    }

    /// When the next lane is due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// The head of the lane due first, if it is due by `now`; it is in flight until settled.
    pub fn take(&mut self, now: Instant) -> Option<Taken> {
        let (&slot, _) = self.due.iter().next().filter(|((at, _), _)| *at <= now)?;
        let key = self.due.remove(&slot)?;
        let lane = self.lanes.get_mut(&key)?;
        lane.due = None;
        let message = lane.messages.front()?.clone();
        Some(Taken { lane: key, message, attempt: lane.attempts + 1 })
    }

    /// Settles the attempt at `taken`'s lane head; returns the given-up event pushed out of
    /// the failed list, if one was.
    pub fn settle(&mut self, taken: &Taken, how: Settle, now: Instant) -> Option<Failed> {
        let lane = self.lanes.get_mut(&taken.lane)?;
        if lane.messages.front().map(|m| &m.id) != Some(&taken.message.id) {
            return None;
        }
        let mut evicted = None;
        match how {
            Settle::Retry { at, counted } => {
                lane.attempts += u32::from(counted);
                self.schedule(&taken.lane, at);
                return None;
            }
            Settle::Delivered => {}
            Settle::GiveUp { why, at_ms } => {
                if self.max_failed > 0 {
                    if self.failed.len() >= self.max_failed {
                        evicted = self.failed.pop_front();
                    }
                    let f = Failed { message: taken.message.clone(), attempts: lane.attempts + 1, why, at_ms };
                    self.failed.push_back(f);
                }
            }
        }
        if let Some(m) = lane.messages.pop_front() {
            self.bytes = self.bytes.saturating_sub(size(&m));
        }
        lane.attempts = 0;
        self.pending = self.pending.saturating_sub(1);
        if lane.messages.is_empty() {
            self.lanes.remove(&taken.lane);
        } else {
            self.schedule(&taken.lane, now);
        }
        evicted
    }

    /// Puts the given-up events taken at or after `since_ms` back at the ends of their lanes,
    /// oldest first (as the shared store's `WH_REPLAY` does); returns how many.
    pub fn replay(&mut self, since_ms: u64, now: Instant) -> usize {
        let (again, keep): (Vec<Failed>, Vec<Failed>) =
            self.failed.drain(..).partition(|f| f.message.at_ms >= since_ms);
        self.failed = keep.into();
        let n = again.len();
        for f in again {
            let m = f.message;
            let key: LaneKey = (m.gateway.clone(), m.agent.clone());
            self.pending += 1;
            self.bytes += size(&m);
            match self.lanes.get_mut(&key) {
                Some(lane) => lane.messages.push_back(m),
                None => {
                    self.lanes.insert(key.clone(), Lane { messages: VecDeque::from([m]), attempts: 0, due: None });
                    self.schedule(&key, now);
                }
            }
        }
        n
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// When the oldest pending event was taken (Unix ms).
    pub fn oldest_ms(&self) -> Option<u64> {
        self.lanes.values().filter_map(|l| l.messages.front()).map(|m| m.at_ms).min()
    }

    /// The given-up events, newest first, at most `n`.
    pub fn failed(&self, n: usize) -> Vec<Failed> {
        self.failed.iter().rev().take(n).cloned().collect()
    }

    pub fn failed_len(&self) -> usize {
        self.failed.len()
    }
}

/// What a message counts against `max_pending_bytes`: about its stored form's length.
fn size(m: &Message) -> usize {
    m.body.len() + m.id.len() + m.gateway.len() + m.agent.len() + m.kind.len() + 48
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(agent: &str, seq: u64) -> Message {
        Message::build("gw".into(), agent.into(), seq, "E", b"{}", seq).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_event_per_agent_in_flight_and_agents_do_not_wait_for_each_other() {
        let now = Instant::now();
        let mut q = Queue::new(100, 1 << 20, 10);
        for (a, s) in [("1", 1), ("1", 2), ("2", 1)] {
            assert_eq!(q.push(msg(a, s), now), Pushed::Queued);
        }
        let first = q.take(now).unwrap();
        assert_eq!((&*first.message.agent, first.message.seq, first.attempt), ("1", 1, 1));
        // Agent 1's second event waits for its first; agent 2's does not.
        let second = q.take(now).unwrap();
        assert_eq!((&*second.message.agent, second.message.seq), ("2", 1));
        assert!(q.take(now).is_none(), "agent 1's seq 2 is behind its head in flight");
        // The head fails: retried later, still first; then delivered, and seq 2 follows.
        q.settle(&first, Settle::Retry { at: now + Duration::from_secs(5), counted: true }, now);
        assert!(q.take(now).is_none());
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(5);
        let again = q.take(later).unwrap();
        assert_eq!((again.message.seq, again.attempt), (1, 2));
        assert_eq!(again.message.id, first.message.id, "the same webhook-id on every attempt");
        q.settle(&again, Settle::Delivered, later);
        assert_eq!(q.take(later).unwrap().message.seq, 2);
        assert_eq!(q.pending(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_hold_and_given_up_events_replay_in_order() {
        let now = Instant::now();
        let mut q = Queue::new(3, 1 << 20, 2);
        for s in 1..=3 {
            q.push(msg("1", s), now);
        }
        assert_eq!(q.push(msg("1", 4), now), Pushed::Full, "past max_pending");
        assert_eq!(q.pending(), 3);
        let mut evicted = Vec::new();
        for _ in 0..3 {
            let t = q.take(now).unwrap();
            evicted.extend(q.settle(&t, Settle::GiveUp { why: "HTTP 500".into(), at_ms: 9 }, now));
        }
        assert_eq!(q.pending(), 0);
        assert_eq!(q.failed_len(), 2, "max_failed");
        assert_eq!(evicted.iter().map(|f| f.message.seq).collect::<Vec<_>>(), [1]);
        // A newer event is in flight; replayed older ones go behind it, oldest first.
        q.push(msg("1", 5), now);
        let head = q.take(now).unwrap();
        assert_eq!(q.replay(0, now), 2);
        q.settle(&head, Settle::Delivered, now);
        let order: Vec<u64> = std::iter::from_fn(|| {
            let t = q.take(now)?;
            q.settle(&t, Settle::Delivered, now);
            Some(t.message.seq)
        })
        .collect();
        assert_eq!(order, [2, 3]);
        assert_eq!(q.failed_len(), 0);
        // A settle for an event that is no longer the head does nothing.
        q.push(msg("1", 6), now);
        let stale = Taken { lane: ("gw".into(), "1".into()), message: msg("1", 6), attempt: 1 };
        q.settle(&stale, Settle::Delivered, now);
        assert_eq!(q.pending(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replay_since_takes_only_the_newer_failures() {
        let now = Instant::now();
        let mut q = Queue::new(10, 1 << 20, 10);
        for s in [10, 20, 30] {
            q.push(msg(&format!("a{s}"), s), now);
        }
        while let Some(t) = q.take(now) {
            q.settle(&t, Settle::GiveUp { why: "x".into(), at_ms: 1 }, now);
        }
        assert_eq!(q.replay(20, now), 2);
        assert_eq!(q.failed(10).iter().map(|f| f.message.seq).collect::<Vec<_>>(), [10]);
        assert_eq!(q.pending(), 2);
        assert_eq!(q.oldest_ms(), Some(20));
    }
}
