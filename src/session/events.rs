//! A session's bounded buffer of gateway events, for apps reading `GET /v1/events`.
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
        Self { ids, cap: cap.max(1), inner: Mutex::new(VecDeque::new()), latest: watch::channel(start).0 }
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
}
