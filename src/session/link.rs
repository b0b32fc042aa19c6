//! One session's part in the shared store (`store.backend = "redis"`): its record's id, the
//! lease epoch while this replica polls it, the conference version this copy has, and what
//! could not be written while the store was away. docs/redis.md has the whole design; in
//! short:
//!
//! - One replica at a time polls an agent: the holder of its lease. The lease carries an
//!   epoch (the fencing token) that the store checks on the poller's writes, so an owner that
//!   was paused or cut off cannot overwrite what its successor wrote.
//! - Guid, cookies and conference state are written with compare-and-set (on the Guid, a
//!   numbered owner write, a version), so concurrent replicas never move them backwards.
//! - Only the lease holder may conclude that a refused Guid ended the session ([`GuidVerdict`]).
//! - Events go to the agent's stream first; each replica's buffer mirrors it.
//!
//! Everything here works on a [`LocalCopy`], never on the session type itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::conference::ConfState;
use super::copy::LocalCopy;
use super::error::{Ended, GuidVerdict};
use super::events::BufferedEvent;
use crate::labels::{Discarded, LossReason};
use crate::shared::{
    provisional_id, AuthWrite, AuthWritten, ConfWrite, EndAs, EndOutcome, NewEvent, Record, RecordState, SharedStore,
    StoreError,
};
use crate::sync::lock;

/// What a replica could not write while the store was away; written by the next round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Dirty {
    Auth = 1,
    Conf = 2,
    Activity = 4,
    /// The poller concluded the session ended (it holds the newest Guid) while the store was away.
    Lost = 8,
}

/// Attempts at a conference compare-and-set before settling for the local copy.
const CONF_CAS_ATTEMPTS: usize = 8;

/// What a session record said about the local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Current,
    /// The session ended, or was replaced by a newer sign-in.
    Ended,
    /// The store has no record (it lost its data): the local copy is all there is.
    Missing,
}

fn conf_of(json: &str) -> ConfState {
    serde_json::from_str(json).unwrap_or(ConfState::Unknown)
}

fn conf_json(conf: ConfState) -> String {
    serde_json::to_string(&conf).unwrap_or_default()
}

/// One session's part in the shared store.
pub(crate) struct Link {
    store: Arc<dyn SharedStore>,
    sid: String,
    /// The lease epoch while this replica polls the agent; 0 while another one does.
    epoch: AtomicU64,
    /// The version of the conference state this copy has.
    confv: AtomicU64,
    /// The number of this replica's last Guid write as the lease holder (see `WRITE_AUTH`).
    auth_writes: AtomicU64,
    dirty: AtomicU8,
    /// When this replica first found the record missing (the store restarted empty) without
    /// holding the lease: the owner puts it back; past a lease, this replica may.
    missing_since: Mutex<Option<Instant>>,
    /// Events recorded while the store was away, with the ids this replica gave them; at most
    /// the event buffer's capacity (the oldest dropped first, as the buffer itself does).
    pending: Mutex<VecDeque<(u64, Arc<str>, Bytes)>>,
}

impl Link {
    pub(crate) fn new(store: Arc<dyn SharedStore>, sid: String, epoch: u64, confv: u64) -> Self {
        Self {
            store,
            sid,
            epoch: AtomicU64::new(epoch),
            confv: AtomicU64::new(confv),
            auth_writes: AtomicU64::new(0),
            dirty: AtomicU8::new(0),
            missing_since: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn sid(&self) -> &str {
        &self.sid
    }

    pub(crate) fn owns(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != 0
    }

    pub(crate) fn epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Acquire)).filter(|e| *e != 0)
    }

    /// This replica holds the lease from now on, with `epoch`; returns whether it held one before.
    pub(crate) fn hold(&self, epoch: u64) -> bool {
        self.epoch.swap(epoch, Ordering::AcqRel) != 0
    }

    fn is_dirty(&self, what: Dirty) -> bool {
        self.dirty.load(Ordering::Acquire) & what as u8 != 0
    }

    fn mark(&self, what: Dirty) {
        // Most requests find the bit set already; reading first keeps them off the cache line.
        if self.dirty.load(Ordering::Relaxed) & what as u8 == 0 {
            self.dirty.fetch_or(what as u8, Ordering::Relaxed);
        }
    }

    /// A write that must wait for the store: marked for the next round, and said at debug
    /// level (the store's error counter and `ccgate_store_up` already tell the operator).
    fn defer(&self, what: Dirty, agent: &str, e: &StoreError) {
        tracing::debug!(agent, error = %e, deferred = ?what, "shared store away; written at the next round");
        self.mark(what);
    }

    /// App activity: written by the next maintenance round, so a busy agent costs one write
    /// per round, not one per request.
    pub(crate) fn touched(&self) {
        self.mark(Dirty::Activity);
    }

    /// Writes the session's new Guid and cookies (`old`: the Guid the answer replied to).
    pub(crate) async fn publish_auth(&self, s: &impl LocalCopy, old: &str) {
        // Read and numbered under the session's lock, as new Guids are taken in: a later
        // number never carries an earlier Guid.
        let (guid, cookies, poller) = s.with_raw_auth(|guid, cookies| {
            let poller = self.epoch().map(|e| (e, self.auth_writes.fetch_add(1, Ordering::AcqRel) + 1));
            (guid.to_owned(), cookies.to_vec(), poller)
        });
        let write = AuthWrite { sid: &self.sid, replied_to: old, guid: &guid, cookies: &cookies, poller };
        match self.store.write_auth(s.agent_id(), &write).await {
            Ok(AuthWritten::Written) => {}
            // Another replica stored a newer one, or this one lost its lease: take theirs.
            Ok(AuthWritten::Stale | AuthWritten::Gone) => {
                self.refresh(s).await;
            }
            Err(e) => self.defer(Dirty::Auth, s.agent_id(), &e),
        }
    }

    /// The gateway refused `refused`, this copy's Guid. Only the party that knows the newest
    /// Guid may conclude that the session ended: the lease holder, which polls the gateway and
    /// takes every new Guid first. Any other replica's Guid may just be older than the
    /// owner's (a rotation it has not heard of, because the store was away): it takes a newer
    /// Guid from the record and retries, or, when the record has none (or cannot be read),
    /// keeps its copy and says so. The owner's own poll sees a real end within a poll.
    pub(crate) async fn refused(&self, s: &impl LocalCopy, reason: LossReason, refused: &str) -> GuidVerdict {
        if s.with_raw_auth(|current, _| current != refused) {
            // A newer Guid arrived while this call was out (the poller's rotation).
            return GuidVerdict::Retry;
        }
        if self.owns() {
            return self.owner_refused(s, reason, refused).await;
        }
        let rec = match self.store.load(s.agent_id()).await {
            Ok(rec) => rec,
            Err(e) => {
                tracing::debug!(agent = s.agent_id(), error = %e, "refused Guid: the record cannot be read");
                return GuidVerdict::Unconfirmed;
            }
        };
        let newer = rec.as_ref().is_some_and(|r| r.sid == self.sid && r.guid != refused);
        match self.apply(s, rec) {
            Applied::Ended => GuidVerdict::Ended,
            Applied::Current if newer => GuidVerdict::Retry,
            Applied::Current | Applied::Missing => GuidVerdict::Unconfirmed,
        }
    }

    /// The lease holder's Guid was refused: the session ended, unless the record shows a
    /// successor (a newer epoch) polls it now, in which case this replica is the stale one.
    async fn owner_refused(&self, s: &impl LocalCopy, reason: LossReason, refused: &str) -> GuidVerdict {
        let agent = s.agent_id();
        match self.store.end(agent, &self.sid, EndAs::Lost { reason, refused: Some(refused) }).await {
            Ok(EndOutcome::Ended) => {}
            Ok(EndOutcome::Gone | EndOutcome::GuidReplaced) => match self.store.load(agent).await {
                // The record has another Guid: either a successor's newer one, or an older
                // one this owner could not publish (the store was away). The epoch tells which.
                Ok(Some(r)) if r.sid == self.sid && Some(r.epoch) != self.epoch() => {
                    return match self.apply(s, Some(r)) {
                        Applied::Ended => GuidVerdict::Ended,
                        _ => GuidVerdict::Retry,
                    };
                }
                Ok(Some(r)) if r.sid == self.sid => {
                    if let Err(e) = self.store.end(agent, &self.sid, EndAs::Lost { reason, refused: None }).await {
                        self.defer(Dirty::Lost, agent, &e);
                    }
                }
                Ok(rec) => {
                    // Signed out or replaced meanwhile (the record says so), or the store lost
                    // the record: then there is nothing to write the end into.
                    if let Applied::Ended = self.apply(s, rec) {
                        return GuidVerdict::Ended;
                    }
                }
                Err(e) => self.defer(Dirty::Lost, agent, &e),
            },
            Err(e) => self.defer(Dirty::Lost, agent, &e),
        }
        s.mark_lost(reason);
        GuidVerdict::Ended
    }

    /// The gateway ended the session by other means (`AgentOther_ShutdownService`, seen by
    /// the poller): ends it everywhere, now or once the store answers.
    pub(crate) async fn lost(&self, s: &impl LocalCopy, reason: LossReason) {
        if let Err(e) = self.store.end(s.agent_id(), &self.sid, EndAs::Lost { reason, refused: None }).await {
            self.defer(Dirty::Lost, s.agent_id(), &e);
        }
        s.mark_lost(reason);
    }

    /// The app signed the agent out: the session ends on every replica.
    pub(crate) async fn signed_out(&self, s: &impl LocalCopy) {
        if let Err(e) = self.store.end(s.agent_id(), &self.sid, EndAs::SignedOut).await {
            tracing::warn!(agent = s.agent_id(), error = %e, "signed out, but could not tell the other replicas");
        }
    }

    /// Writes a loss concluded while the store was away.
    pub(crate) async fn flush_lost(&self, s: &impl LocalCopy) {
        if !self.is_dirty(Dirty::Lost) {
            return;
        }
        let Some(Ended::Lost(reason)) = s.ended() else { return };
        self.dirty.fetch_and(!(Dirty::Lost as u8), Ordering::AcqRel);
        if let Err(e) = self.store.end(s.agent_id(), &self.sid, EndAs::Lost { reason, refused: None }).await {
            self.defer(Dirty::Lost, s.agent_id(), &e);
        }
    }

    /// Whether this replica concluded a loss it has not yet written into the record: its
    /// ended copy is then final, not one to revive from an active record.
    pub(crate) fn loss_unwritten(&self) -> bool {
        self.is_dirty(Dirty::Lost)
    }

    /// Reloads the record and applies it; keeps the local copy when the store cannot be reached.
    pub(crate) async fn refresh(&self, s: &impl LocalCopy) -> Applied {
        match self.store.load(s.agent_id()).await {
            Ok(rec) => self.apply(s, rec),
            Err(e) => {
                tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; the local copy stands");
                Applied::Current
            }
        }
    }

    /// Takes in the record as the store has it.
    pub(crate) fn apply(&self, s: &impl LocalCopy, rec: Option<Record>) -> Applied {
        let Some(r) = rec else { return Applied::Missing };
        if r.sid != self.sid {
            s.end(Ended::SignedOut);
            return Applied::Ended;
        }
        match r.state {
            RecordState::Active => {}
            RecordState::Lost(reason) => {
                s.end(Ended::Lost(reason));
                return Applied::Ended;
            }
            RecordState::Out => {
                s.end(Ended::SignedOut);
                return Applied::Ended;
            }
        }
        // The lease holder with a Guid it could not publish (the store was away) knows a
        // newer one than the record: it writes its own at the next round instead of going
        // back. (A successor that took the lease meanwhile shows at that round's renewal,
        // which stops this replica's claim; then it takes the record's Guid.)
        let unpublished = self.owns() && self.is_dirty(Dirty::Auth);
        if !unpublished {
            s.adopt_auth(&r.guid, &r.cookies);
        }
        if r.confv > self.confv.load(Ordering::Acquire) {
            self.confv.store(r.confv, Ordering::Release);
            s.set_conf(conf_of(&r.conf));
        }
        if let Some(mine) = self.epoch() {
            if r.epoch != mine {
                self.lose_lease(s);
            }
        }
        Applied::Current
    }

    /// Another replica holds the lease now: stop polling.
    pub(crate) fn lose_lease(&self, s: &impl LocalCopy) {
        if self.epoch.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(agent = s.agent_id(), "another replica polls this agent now");
            s.metrics().count_lease_loss();
            s.stop_poller();
        }
    }

    pub(crate) async fn update_conf(
        &self,
        s: &impl LocalCopy,
        f: &(dyn Fn(ConfState) -> ConfState + Sync),
    ) -> (ConfState, ConfState) {
        let mut current = s.conf();
        let mut version = self.confv.load(Ordering::Acquire);
        for _ in 0..CONF_CAS_ATTEMPTS {
            let next = f(current);
            match self.store.write_conf(s.agent_id(), &self.sid, version, &conf_json(next)).await {
                Ok(ConfWrite::Written(v)) => {
                    self.confv.store(v, Ordering::Release);
                    s.set_conf(next);
                    return (current, next);
                }
                Ok(ConfWrite::Conflict { version: v, conf }) => {
                    current = conf_of(&conf);
                    version = v;
                    self.confv.store(v, Ordering::Release);
                    s.set_conf(current);
                }
                Ok(ConfWrite::Gone) => break,
                Err(e) => {
                    self.defer(Dirty::Conf, s.agent_id(), &e);
                    break;
                }
            }
        }
        // The store is away or the record is gone: this copy is what there is.
        s.modify_conf(f)
    }

    pub(crate) async fn idle_for(&self, s: &impl LocalCopy) -> Option<Duration> {
        if self.is_dirty(Dirty::Activity) {
            // This replica saw activity the store has not: it is not idle.
            return Some(Duration::ZERO);
        }
        match self.store.idle_for(s.agent_id(), &self.sid).await {
            Ok(idle) => idle,
            Err(e) => {
                tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; idle time from this replica");
                None
            }
        }
    }

    pub(crate) async fn append(&self, s: &impl LocalCopy, kind: &str, data: Bytes) -> bool {
        self.flush_pending(s).await;
        let waiting = !lock(&self.pending).is_empty();
        // Given before the first attempt: an attempt that timed out but that the store ran
        // after all is then recognised when the same event is sent again.
        let id = provisional_id(s.events().latest());
        if !waiting {
            let event = NewEvent { sid: &self.sid, cap: s.events().capacity(), id, kind, data: &data };
            match self.store.append(s.agent_id(), &event).await {
                Ok(Some(id)) => return s.events().insert(id, kind, data).unwrap_or(false),
                // No record of this session: it ended elsewhere, or the store lost it (a Redis
                // restarted empty) and this replica puts it back. Its apps get the event here
                // either way; queued, it reaches the stream once the record is back.
                Ok(None) => tracing::debug!(agent = s.agent_id(), "no record in the shared store; event queued"),
                Err(e) => tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; event queued"),
            }
        }
        let dropped = {
            let mut pending = lock(&self.pending);
            pending.push_back((id, Arc::from(kind), data.clone()));
            let excess = pending.len().saturating_sub(s.events().capacity().max(1));
            pending.drain(..excess);
            excess
        };
        if dropped > 0 {
            s.metrics().count_discarded(Discarded::PendingEvent, dropped as u64);
        }
        s.events().insert(id, kind, data).unwrap_or(false)
    }

    /// Appends what was recorded while the store was away, in order, with the ids apps saw.
    /// Each event leaves the front of the queue once written (O(1) each). A store without the
    /// session's record keeps them queued (bounded, as ever): a store that came back empty
    /// gets them once the record is put back; a session that ended elsewhere never will.
    async fn flush_pending(&self, s: &impl LocalCopy) {
        loop {
            let Some((id, kind, data)) = lock(&self.pending).front().cloned() else { return };
            let event = NewEvent { sid: &self.sid, cap: s.events().capacity(), id, kind: &kind, data: &data };
            match self.store.append(s.agent_id(), &event).await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; queued events wait");
                    return;
                }
            }
            let mut pending = lock(&self.pending);
            // Unless the queue dropped it meanwhile (it overflowed while this was written).
            if pending.front().is_some_and(|(first, _, _)| *first == id) {
                pending.pop_front();
            }
        }
    }

    pub(crate) async fn take_next(&self, s: &impl LocalCopy) -> Option<BufferedEvent> {
        match self.store.take_next(s.agent_id(), &self.sid).await {
            // The stream id's high bits are the append's time (Unix ms, Redis's clock).
            Ok(next) => next.map(|(id, kind, data)| BufferedEvent {
                id,
                kind: Arc::from(kind),
                data,
                at_ms: id >> crate::shared::SEQ_BITS,
            }),
            Err(e) => {
                tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; this replica's queue");
                s.events().take_next()
            }
        }
    }

    /// Copies new events from the stream into the local buffer.
    pub(crate) async fn mirror(&self, s: &impl LocalCopy) {
        let cap = s.events().capacity();
        let after = s.events().latest();
        let events = match self.store.events_after(s.agent_id(), after, cap + 1).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; events mirrored later");
                return;
            }
        };
        if events.len() > cap {
            // More than a buffer's worth arrived: some were never mirrored.
            if let Some((id, _, _)) = events.first() {
                s.events().missing_up_to(*id);
            }
        }
        for (id, kind, data) in events {
            s.events().insert(id, &kind, data);
        }
    }

    /// Writes what could not be written while the store was away.
    pub(crate) async fn flush(&self, s: &impl LocalCopy) {
        let agent = s.agent_id();
        if s.has_listeners() {
            // An open event stream is activity every round, so the poller's replica (which
            // judges idleness from the record) sees it too.
            self.touched();
        }
        let dirty = self.dirty.swap(0, Ordering::AcqRel);
        let was = |what: Dirty| dirty & what as u8 != 0;
        if was(Dirty::Activity) {
            if let Err(e) = self.store.touch(agent, &self.sid).await {
                self.defer(Dirty::Activity, agent, &e);
            }
        }
        if was(Dirty::Lost) {
            self.mark(Dirty::Lost);
        }
        if was(Dirty::Auth) {
            match self.store.load(agent).await {
                // Only the lease holder's Guid is known to be the newest; any other replica
                // takes the record's (`apply`).
                Ok(Some(r)) if r.sid == self.sid && self.owns() => {
                    if s.with_raw_auth(|guid, _| guid != r.guid) {
                        self.publish_auth(s, &r.guid).await;
                    }
                }
                Ok(rec) => {
                    self.apply(s, rec);
                }
                Err(e) => self.defer(Dirty::Auth, agent, &e),
            }
        }
        if was(Dirty::Conf) {
            let local = s.conf();
            match self.store.load(agent).await {
                Ok(Some(r)) if r.sid == self.sid => {
                    self.confv.store(r.confv, Ordering::Release);
                    self.update_conf(s, &|_| local).await;
                }
                // Gone or replaced: nothing to write it into.
                Ok(_) => {}
                Err(e) => self.defer(Dirty::Conf, agent, &e),
            }
        }
        self.flush_pending(s).await;
    }

    /// Whether the record has been missing for `grace` (or this replica owns the session):
    /// then this replica may put it back. Cleared when the record is there.
    pub(crate) fn missing_for(&self, grace: Duration) -> bool {
        let mut since = lock(&self.missing_since);
        let first = *since.get_or_insert_with(Instant::now);
        self.owns() || first.elapsed() >= grace
    }

    pub(crate) fn found(&self) {
        *lock(&self.missing_since) = None;
    }

    /// The record was put back with this copy's conference state as version 1.
    pub(crate) fn restored(&self, epoch: u64) -> bool {
        self.confv.store(1, Ordering::Release);
        self.hold(epoch)
    }

    /// The conference state this copy's record starts with, as written.
    pub(crate) fn conf_json(conf: ConfState) -> String {
        conf_json(conf)
    }
}
