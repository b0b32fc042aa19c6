//! A session's bounded buffer of gateway events: apps read it as a stream (`GET /v1/events`,
//! each reader with its own cursor) or as the gateway's own queue (`agentevent` through the
//! pass-through face: one shared cursor, each event handed to one poll, as the gateway's
//! per-agent queue does).
//!
//! Ids come from one process-wide counter, so an id never repeats across sessions and a
//! `Last-Event-ID` from a previous session cannot select events of a new one. When the buffer
//! is full the oldest event is dropped and counted; a reader that fell behind learns it
//! missed some.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

/// One buffered event: its id, its type (the SSE `event:` field) and its JSON.
#[derive(Debug, Clone)]
pub struct BufferedEvent {
    pub id: u64,
    pub kind: Arc<str>,
    pub data: Bytes,
}

pub struct EventBuffer {
    ids: Arc<AtomicU64>,
    cap: usize,
    inner: Mutex<VecDeque<BufferedEvent>>,
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
            inner: Mutex::new(VecDeque::new()),
            latest: watch::channel(start).0,
            queue: AtomicU64::new(start),
        }
    }

    /// Appends an event; returns whether an old one was dropped to make room.
    pub fn push(&self, kind: &str, data: Bytes) -> bool {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let dropped = {
            let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = if q.len() >= self.cap { q.pop_front().is_some() } else { false };
            q.push_back(BufferedEvent { id, kind: Arc::from(kind), data });
            dropped
        };
        self.latest.send_replace(id);
        dropped
    }

    /// The newest id so far (a reader starting "from now" uses it as its cursor).
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Events with id > `cursor`.
    pub fn since(&self, cursor: u64) -> Batch {
        let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let missed = q.front().is_some_and(|first| first.id > cursor.saturating_add(1));
        // Ids are increasing, so skip by binary search rather than scanning.
        let start = q.partition_point(|e| e.id <= cursor);
        Batch { events: q.range(start..).cloned().collect(), missed }
    }
}

impl EventBuffer {
    /// The next event for the queue reader, taken off the queue; `None` when it has seen all.
    /// Concurrent readers never get the same event.
    pub fn take_next(&self) -> Option<BufferedEvent> {
        loop {
            let cursor = self.queue.load(Ordering::Acquire);
            let next = {
                let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                q.get(q.partition_point(|e| e.id <= cursor)).cloned()
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
        // A second buffer continues the same id sequence.
        let b2 = EventBuffer::new(ids, 3);
        b2.push("x", Bytes::new());
        assert_eq!(b2.latest(), 105);
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
