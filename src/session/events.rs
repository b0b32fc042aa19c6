//! A session's bounded buffer of gateway events: apps read it as a stream (`GET /v1/events`,
//! each reader with its own cursor) or as the gateway's own queue (`agentevent` through the
//! pass-through face: one shared cursor, each event handed to one poll, as the gateway's
//! per-agent queue does).
//!
//! With the memory store, ids come from one process-wide counter, so an id never repeats
//! across sessions and a `Last-Event-ID` from a previous session cannot select events of a
//! new one. With the shared store the buffer mirrors the agent's Redis stream and ids are the
//! stream's (packed into a u64), so they mean the same on every replica and after restarts.
//! When the buffer is full the oldest event is dropped and counted; a reader that fell behind
//! learns it missed some.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

/// ccgate's own event that ends an agent's stream: its session is gone (`/v1/events`' last
/// event, and a webhook).
pub const SESSION_ENDED: &str = "ccgate.session_ended";

/// One buffered event: its id, its type (the SSE `event:` field), its JSON, and when this
/// buffer took it (Unix ms; the admin's agent view shows it).
#[derive(Debug, Clone)]
pub struct BufferedEvent {
    pub id: u64,
    pub kind: Arc<str>,
    pub data: Bytes,
    pub at_ms: u64,
}

struct Inner {
    events: VecDeque<BufferedEvent>,
    /// The newest id dropped (or known missing) before any reader could be sure to see it.
    evicted: u64,
}

pub struct EventBuffer {
    ids: Arc<AtomicU64>,
    cap: usize,
    inner: Mutex<Inner>,
    /// The newest id, for readers to wait on.
    latest: watch::Sender<u64>,
    /// The queue reader's position: the id of the last event it was handed.
    queue: AtomicU64,
}

/// What a reader gets: the events after its cursor, and whether some were dropped before it
/// could read them.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<BufferedEvent>,
    pub missed: bool,
}

impl EventBuffer {
    pub fn new(ids: Arc<AtomicU64>, cap: usize) -> Self {
        let start = ids.load(Ordering::Relaxed);
        Self {
            ids,
            cap: cap.max(1),
            inner: Mutex::new(Inner { events: VecDeque::new(), evicted: 0 }),
            latest: watch::channel(start).0,
            queue: AtomicU64::new(start),
        }
    }

    /// Appends an event with the next id of the process-wide counter; returns whether an old
    /// one was dropped to make room.
    pub fn push(&self, kind: &str, data: Bytes) -> bool {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        self.insert(id, kind, data).unwrap_or(false)
    }

    /// Appends an event whose id the shared store gave it. `None` (nothing done) when the
    /// buffer already has it, or a newer one; otherwise whether an old event was dropped.
    pub fn insert(&self, id: u64, kind: &str, data: Bytes) -> Option<bool> {
        let dropped = {
            let mut q = crate::sync::lock(&self.inner);
            if q.events.back().is_some_and(|last| last.id >= id) || id <= q.evicted {
                return None;
            }
            let dropped = if q.events.len() >= self.cap { q.events.pop_front() } else { None };
            if let Some(d) = &dropped {
                q.evicted = q.evicted.max(d.id);
            }
            q.events.push_back(BufferedEvent { id, kind: Arc::from(kind), data, at_ms: crate::clock::unix_ms() });
            dropped.is_some()
        };
        self.latest.send_modify(|l| *l = (*l).max(id));
        Some(dropped)
    }

    /// Records that events up to `id` may exist that this buffer never held (a mirror that
    /// could not read them all): readers from before `id` are told they missed some.
    pub fn missing_up_to(&self, id: u64) {
        let mut q = crate::sync::lock(&self.inner);
        q.evicted = q.evicted.max(id);
    }

    /// The capacity (the mirror reads this many from the store).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The newest id so far (a reader starting "from now" uses it as its cursor).
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The newest `n` events' ids, types and times, oldest first (no data).
    pub fn recent(&self, n: usize) -> Vec<(u64, Arc<str>, u64)> {
        let q = crate::sync::lock(&self.inner);
        q.events.iter().skip(q.events.len().saturating_sub(n)).map(|e| (e.id, e.kind.clone(), e.at_ms)).collect()
    }

    /// When the newest event arrived here (Unix ms).
    pub fn last_at_ms(&self) -> Option<u64> {
        crate::sync::lock(&self.inner).events.back().map(|e| e.at_ms)
    }

    /// Events with id > `cursor`.
    pub fn since(&self, cursor: u64) -> Batch {
        let q = crate::sync::lock(&self.inner);
        let missed = q.evicted > cursor;
        // Ids are increasing, so skip by binary search rather than scanning.
        let start = q.events.partition_point(|e| e.id <= cursor);
        Batch { events: q.events.range(start..).cloned().collect(), missed }
    }
}

impl EventBuffer {
    /// The next event for the queue reader, taken off the queue; `None` when it has seen all.
    /// Concurrent readers never get the same event.
    pub fn take_next(&self) -> Option<BufferedEvent> {
        loop {
            let cursor = self.queue.load(Ordering::Acquire);
            let next = {
                let q = crate::sync::lock(&self.inner);
                q.events.get(q.events.partition_point(|e| e.id <= cursor)).cloned()
            }?;
            if self.queue.compare_exchange(cursor, next.id, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_gap_detection() {
        let ids = Arc::new(AtomicU64::new(100));
        let b = EventBuffer::new(ids.clone(), 3);
        assert!(!b.push("a", Bytes::from_static(b"1")));
        b.push("b", Bytes::from_static(b"2"));
        b.push("c", Bytes::from_static(b"3"));
        assert!(b.push("d", Bytes::from_static(b"4")), "oldest dropped");
        let all = b.since(100);
        assert!(all.missed, "event 101 was dropped before the reader saw it");
        assert_eq!(all.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![102, 103, 104]);
        let tail = b.since(103);
        assert!(!tail.missed);
        assert_eq!(tail.events.len(), 1);
        assert!(b.since(104).events.is_empty());
        let fresh = b.since(104);
        assert!(!fresh.missed);
        // A second buffer continues the same id sequence.
        let b2 = EventBuffer::new(ids, 3);
        b2.push("x", Bytes::new());
        assert_eq!(b2.latest(), 105);
    }

    #[test]
    fn a_mirror_takes_the_stores_ids_once_and_in_order() {
        let b = EventBuffer::new(Arc::new(AtomicU64::new(0)), 2);
        assert_eq!(b.insert(10 << 20, "a", Bytes::new()), Some(false));
        assert_eq!(b.insert(10 << 20, "a", Bytes::new()), None, "already there");
        assert_eq!(b.insert(11 << 20, "b", Bytes::new()), Some(false));
        assert_eq!(b.insert(12 << 20, "c", Bytes::new()), Some(true));
        assert_eq!(b.insert(10 << 20, "a", Bytes::new()), None, "evicted ids stay out");
        assert!(b.since(0).missed);
        assert!(!b.since(10 << 20).missed);
        b.missing_up_to(11 << 20);
        assert!(b.since(10 << 20).missed);
        assert_eq!(b.latest(), 12 << 20);
    }

    #[test]
    fn the_queue_hands_each_event_out_once() {
        let b = EventBuffer::new(Arc::new(AtomicU64::new(7)), 8);
        assert!(b.take_next().is_none());
        b.push("a", Bytes::from_static(b"1"));
        b.push("b", Bytes::from_static(b"2"));
        assert_eq!(b.take_next().map(|e| e.id), Some(8));
        assert_eq!(b.take_next().map(|e| e.id), Some(9));
        assert!(b.take_next().is_none());
        // Stream readers are not affected by the queue's position.
        assert_eq!(b.since(7).events.len(), 2);
    }
}
