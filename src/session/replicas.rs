//! Sessions shared by replicas (`store.backend = "redis"`). Redis holds each agent's session
//! record, event stream and poller lease (`crate::shared`); every replica keeps a local copy
//! of the sessions it serves, so a request needs no Redis round trip, and keeps that copy
//! current from the change channel. docs/redis.md has the whole design; in short:
//!
//! - One replica at a time polls an agent: the holder of its lease. The lease carries an
//!   epoch (the fencing token) that Redis checks on the poller's writes, so an owner that was
//!   paused or cut off cannot overwrite what its successor wrote.
//! - A maintenance round every third of a lease renews this replica's leases, writes what it
//!   could not write while Redis was away, and takes over agents whose owner stopped renewing.
//! - Guid, cookies and conference state are written with compare-and-set (on the Guid, on a
//!   version), so concurrent replicas never move them backwards.
//! - Events go to the agent's Redis stream first; each replica's buffer mirrors it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::events::BufferedEvent;
use super::{lock, ConfState, Ended, Refusal, Session, SessionError, SessionStore};
use crate::metrics::{Discarded, LossReason};
use crate::shared::{provisional_id, Change, ConfWrite, Lease, NewRecord, Record, RecordState, Shared};

/// What a replica could not write while Redis was away; written by the next maintenance round.
const DIRTY_AUTH: u8 = 1;
const DIRTY_CONF: u8 = 2;
const DIRTY_ACTIVITY: u8 = 4;
/// The poller concluded the session ended (it holds the newest Guid) while Redis was away.
const DIRTY_LOST: u8 = 8;

/// Attempts at a conference compare-and-set before settling for the local copy.
const CONF_CAS_ATTEMPTS: usize = 8;
/// Orphaned agents taken over per maintenance round (the rest wait for the next round).
const TAKEOVERS_PER_ROUND: usize = 256;
/// How often a replica waiting for another replica's sign-in looks again.
const SIGN_IN_LOOK_AGAIN: Duration = Duration::from_millis(20);

/// One session's part in the shared store.
pub(crate) struct Link {
    shared: Arc<Shared>,
    sid: String,
    /// The lease epoch while this replica polls the agent; 0 while another one does.
    epoch: AtomicU64,
    /// The version of the conference state this copy has.
    confv: AtomicU64,
    /// The number of this replica's last Guid write as the lease holder (see `WRITE_AUTH`).
    auth_writes: AtomicU64,
    dirty: AtomicU8,
    /// When this replica first found the record missing (Redis restarted empty) without
    /// holding the lease: the owner puts it back; past a lease, this replica may.
    missing_since: Mutex<Option<tokio::time::Instant>>,
    /// Events recorded while Redis was away, with the ids this replica gave them; at most the
    /// event buffer's capacity (the oldest dropped first, as the buffer itself does).
    pending: Mutex<VecDeque<(u64, Arc<str>, Bytes)>>,
}

/// What a session record said about the local copy.
pub(super) enum Applied {
    Current,
    /// The session ended, or was replaced by a newer sign-in.
    Ended,
    /// Redis has no record (it lost its data): the local copy is all there is.
    Missing,
}

impl Link {
    pub(super) fn new(shared: Arc<Shared>, sid: String, epoch: u64, confv: u64) -> Self {
        Self {
            shared,
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

    pub(super) fn owns(&self) -> bool {
        self.epoch.load(Ordering::Acquire) != 0
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::Acquire)).filter(|e| *e != 0)
    }

    fn mark(&self, what: u8) {
        // Most requests find the bit set already; reading first keeps them off the cache line.
        if self.dirty.load(Ordering::Relaxed) & what == 0 {
            self.dirty.fetch_or(what, Ordering::Relaxed);
        }
    }

    /// App activity: written to Redis by the next maintenance round, so a busy agent costs
    /// one write per round, not one per request.
    pub(super) fn touched(&self) {
        self.mark(DIRTY_ACTIVITY);
    }

    /// Writes the session's new Guid and cookies (`old`: the Guid the answer replied to).
    pub(super) async fn publish_auth(&self, s: &Session, old: &str) {
        // Read and numbered under the session's lock, as new Guids are taken in: a later
        // number never carries an earlier Guid.
        let (guid, cookies, poller) = s.with_raw_auth(|guid, cookies| {
            let poller = self.epoch().map(|e| (e, self.auth_writes.fetch_add(1, Ordering::AcqRel) + 1));
            (guid.to_owned(), cookies.to_vec(), poller)
        });
        match self.shared.write_auth(&s.agent_id, &self.sid, old, &guid, &cookies, poller).await {
            Ok(true) => {}
            // Another replica stored a newer one, or this one lost its lease: take theirs.
            Ok(false) => {
                self.refresh(s).await;
            }
            Err(_) => self.mark(DIRTY_AUTH),
        }
    }

    /// The gateway refused `refused`, this copy's Guid. Only the party that knows the newest
    /// Guid may conclude that the session ended: the lease holder, which polls the gateway and
    /// takes every new Guid first. Any other replica's Guid may just be older than the
    /// owner's (a rotation it has not heard of, because Redis was away): it takes a newer Guid
    /// from the record and retries, or, when the record has none (or cannot be read), keeps
    /// its copy and says so. The owner's own poll sees a real end within a poll.
    pub(super) async fn refused(&self, s: &Session, reason: LossReason, refused: &str) -> Refusal {
        if s.with_raw_auth(|current, _| current != refused) {
            // A newer Guid arrived while this call was out (the poller's rotation).
            return Refusal::Retry;
        }
        if self.owns() {
            return self.owner_refused(s, reason, refused).await;
        }
        let Ok(rec) = self.shared.load(&s.agent_id).await else { return Refusal::Unconfirmed };
        let newer = rec.as_ref().is_some_and(|r| r.sid == self.sid && r.guid != refused);
        match self.apply(s, rec) {
            Applied::Ended => Refusal::Ended,
            Applied::Current if newer => Refusal::Retry,
            Applied::Current | Applied::Missing => Refusal::Unconfirmed,
        }
    }

    /// The lease holder's Guid was refused: the session ended, unless the record shows a
    /// successor (a newer epoch) polls it now, in which case this replica is the stale one.
    async fn owner_refused(&self, s: &Session, reason: LossReason, refused: &str) -> Refusal {
        match self.shared.end(&s.agent_id, &self.sid, Some(reason), Some(refused)).await {
            Ok(true) => {}
            Ok(false) => match self.shared.load(&s.agent_id).await {
                // The record has another Guid: either a successor's newer one, or an older
                // one this owner could not publish (Redis was away). The epoch tells which.
                Ok(Some(r)) if r.sid == self.sid && Some(r.epoch) != self.epoch() => {
                    return match self.apply(s, Some(r)) {
                        Applied::Ended => Refusal::Ended,
                        _ => Refusal::Retry,
                    };
                }
                Ok(Some(r)) if r.sid == self.sid => {
                    if self.shared.end(&s.agent_id, &self.sid, Some(reason), None).await.is_err() {
                        self.mark(DIRTY_LOST);
                    }
                }
                Ok(rec) => {
                    // Signed out or replaced meanwhile (the record says so), or Redis lost
                    // the record: then there is nothing to write the end into.
                    if let Applied::Ended = self.apply(s, rec) {
                        return Refusal::Ended;
                    }
                }
                Err(_) => self.mark(DIRTY_LOST),
            },
            Err(_) => self.mark(DIRTY_LOST),
        }
        s.mark_lost(reason);
        Refusal::Ended
    }

    /// The gateway ended the session by other means (`AgentOther_ShutdownService`, seen by
    /// the poller): ends it everywhere, now or once Redis answers.
    pub(super) async fn lost(&self, s: &Session, reason: LossReason) {
        if self.shared.end(&s.agent_id, &self.sid, Some(reason), None).await.is_err() {
            self.mark(DIRTY_LOST);
        }
        s.mark_lost(reason);
    }

    /// Writes a loss concluded while Redis was away.
    async fn flush_lost(&self, s: &Session) {
        if self.dirty.load(Ordering::Acquire) & DIRTY_LOST == 0 {
            return;
        }
        let Some(Ended::Lost(reason)) = s.ended() else { return };
        self.dirty.fetch_and(!DIRTY_LOST, Ordering::AcqRel);
        if self.shared.end(&s.agent_id, &self.sid, Some(reason), None).await.is_err() {
            self.mark(DIRTY_LOST);
        }
    }

    /// Whether this replica concluded a loss it has not yet written into the record: its
    /// ended copy is then final, not one to revive from an active record.
    fn loss_unwritten(&self) -> bool {
        self.dirty.load(Ordering::Acquire) & DIRTY_LOST != 0
    }

    /// Reloads the record and applies it; keeps the local copy when Redis cannot be reached.
    pub(super) async fn refresh(&self, s: &Session) -> Applied {
        match self.shared.load(&s.agent_id).await {
            Ok(rec) => self.apply(s, rec),
            Err(_) => Applied::Current,
        }
    }

    /// Takes in the record as Redis has it.
    fn apply(&self, s: &Session, rec: Option<Record>) -> Applied {
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
        // The lease holder with a Guid it could not publish (Redis was away) knows a newer
        // one than the record: it writes its own at the next round instead of going back. (A
        // successor that took the lease meanwhile shows at that round's renewal, which stops
        // this replica's claim; then it takes the record's Guid.)
        let unpublished = self.owns() && self.dirty.load(Ordering::Acquire) & DIRTY_AUTH != 0;
        if !unpublished {
            s.adopt_auth(&r.guid, &r.cookies);
        }
        if r.confv > self.confv.load(Ordering::Acquire) {
            self.confv.store(r.confv, Ordering::Release);
            s.conf.send_replace(serde_json::from_str(&r.conf).unwrap_or(ConfState::Unknown));
        }
        if let Some(mine) = self.epoch() {
            if r.epoch != mine {
                self.lose_lease(s);
            }
        }
        Applied::Current
    }

    fn lose_lease(&self, s: &Session) {
        if self.epoch.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(agent = %s.agent_id, "another replica polls this agent now");
            s.metrics.count_lease_loss();
            s.stop_poller();
        }
    }

    pub(super) async fn update_conf(&self, s: &Session, f: impl Fn(ConfState) -> ConfState) -> ConfState {
        let mut current = s.conf();
        let mut version = self.confv.load(Ordering::Acquire);
        for _ in 0..CONF_CAS_ATTEMPTS {
            let next = f(current);
            let json = serde_json::to_string(&next).unwrap_or_default();
            match self.shared.write_conf(&s.agent_id, &self.sid, version, &json).await {
                Ok(ConfWrite::Written(v)) => {
                    self.confv.store(v, Ordering::Release);
                    s.conf.send_replace(next);
                    return next;
                }
                Ok(ConfWrite::Conflict { version: v, conf }) => {
                    current = serde_json::from_str(&conf).unwrap_or(ConfState::Unknown);
                    version = v;
                    self.confv.store(v, Ordering::Release);
                    s.conf.send_replace(current);
                }
                Ok(ConfWrite::Gone) => break,
                Err(_) => {
                    self.mark(DIRTY_CONF);
                    break;
                }
            }
        }
        // Redis is away or the record is gone: this copy is what there is.
        let next = f(s.conf());
        s.conf.send_replace(next);
        next
    }

    pub(super) async fn idle_for(&self, s: &Session) -> Option<Duration> {
        if self.dirty.load(Ordering::Relaxed) & DIRTY_ACTIVITY != 0 {
            // This replica saw activity the store has not: it is not idle.
            return Some(Duration::ZERO);
        }
        self.shared.idle_for(&s.agent_id, &self.sid).await.ok().flatten()
    }

    pub(super) async fn append(&self, s: &Session, kind: &str, data: Bytes) -> bool {
        self.flush_pending(s).await;
        let waiting = !lock(&self.pending).is_empty();
        // Given before the first attempt: an attempt that timed out but that Redis ran after
        // all is then recognised when the same event is sent again.
        let id = provisional_id(s.events.latest());
        if !waiting {
            match self.shared.append(&s.agent_id, &self.sid, s.events.capacity(), id, kind, &data).await {
                Ok(Some(id)) => return s.events.insert(id, kind, data).unwrap_or(false),
                // The session ended elsewhere meanwhile; its apps still get the event here.
                Ok(None) => {}
                Err(_) => {}
            }
        }
        let dropped = {
            let mut pending = lock(&self.pending);
            pending.push_back((id, Arc::from(kind), data.clone()));
            let excess = pending.len().saturating_sub(s.events.capacity().max(1));
            pending.drain(..excess);
            excess
        };
        if dropped > 0 {
            s.metrics.count_discarded(Discarded::PendingEvent, dropped as u64);
        }
        s.events.insert(id, kind, data).unwrap_or(false)
    }

    /// Appends what was recorded while Redis was away, in order, with the ids apps saw. Each
    /// event leaves the front of the queue once written (O(1) each).
    async fn flush_pending(&self, s: &Session) {
        loop {
            let Some((id, kind, data)) = lock(&self.pending).front().cloned() else { return };
            match self.shared.append(&s.agent_id, &self.sid, s.events.capacity(), id, &kind, &data).await {
                Ok(_) => {
                    let mut pending = lock(&self.pending);
                    // Unless the queue dropped it meanwhile (it overflowed while this was written).
                    if pending.front().is_some_and(|(first, _, _)| *first == id) {
                        pending.pop_front();
                    }
                }
                Err(_) => return,
            }
        }
    }

    pub(super) async fn take_next(&self, s: &Session) -> Option<BufferedEvent> {
        match self.shared.take_next(&s.agent_id, &self.sid).await {
            Ok(next) => next.map(|(id, kind, data)| BufferedEvent { id, kind: Arc::from(kind), data }),
            // Redis is away: this replica's copy of the queue.
            Err(_) => s.events.take_next(),
        }
    }

    /// Copies new events from the stream into the local buffer.
    async fn mirror(&self, s: &Session) {
        let cap = s.events.capacity();
        let after = s.events.latest();
        let Ok(events) = self.shared.events_after(&s.agent_id, after, cap + 1).await else { return };
        if events.len() > cap {
            // More than a buffer's worth arrived: some were never mirrored.
            if let Some((id, _, _)) = events.first() {
                s.events.missing_up_to(*id);
            }
        }
        for (id, kind, data) in events {
            s.events.insert(id, &kind, data);
        }
    }

    /// Writes what could not be written while Redis was away.
    async fn flush(&self, s: &Session) {
        if s.has_listeners() {
            // An open event stream is activity every round, so the poller's replica (which
            // judges idleness from the record) sees it too.
            self.touched();
        }
        let dirty = self.dirty.swap(0, Ordering::AcqRel);
        if dirty & DIRTY_ACTIVITY != 0 && self.shared.touch(&s.agent_id, &self.sid).await.is_err() {
            self.mark(DIRTY_ACTIVITY);
        }
        if dirty & DIRTY_AUTH != 0 {
            match self.shared.load(&s.agent_id).await {
                // Only the lease holder's Guid is known to be the newest; any other replica
                // takes the record's (`apply`).
                Ok(Some(r)) if r.sid == self.sid && self.owns() => {
                    if r.guid != s.raw_auth().0 {
                        self.publish_auth(s, &r.guid).await;
                    }
                }
                Ok(rec) => {
                    self.apply(s, rec);
                }
                Err(_) => self.mark(DIRTY_AUTH),
            }
        }
        if dirty & DIRTY_CONF != 0 {
            let local = s.conf();
            match self.shared.load(&s.agent_id).await {
                Ok(Some(r)) if r.sid == self.sid => {
                    self.confv.store(r.confv, Ordering::Release);
                    self.update_conf(s, |_| local).await;
                }
                Ok(_) => {}
                Err(_) => self.mark(DIRTY_CONF),
            }
        }
        self.flush_pending(s).await;
    }
}

impl SessionStore {
    /// The agent's live session from any replica: the local copy, else the record in Redis
    /// (adopted as a local copy). With the memory store, `active`.
    pub async fn lookup(&self, agent: &str) -> Result<Arc<Session>, SessionError> {
        let Some(shared) = &self.shared else { return self.active(agent) };
        let local = self.current(agent);
        if let Some(s) = &local {
            if s.ended().is_none() {
                return Ok(s.clone());
            }
        }
        // Ended here: a newer session may have been signed in through another replica.
        let record = match shared.load(agent).await {
            Ok(r) => r,
            Err(e) => return if local.is_some() { self.active(agent) } else { Err(e.into()) },
        };
        match record {
            Some(r) if r.state != RecordState::Out => {
                let same = local.as_ref().and_then(|s| s.link.as_ref().filter(|l| l.sid == r.sid));
                // The same session, ended here: final if the record says so or this replica
                // has a loss to write; otherwise it ended here only, and the record revives it.
                if same.is_some_and(|l| r.state != RecordState::Active || l.loss_unwritten()) {
                    return self.active(agent);
                }
                self.adopt(agent, r, 0).await?;
                self.active(agent)
            }
            _ => Err(SessionError::NoSession),
        }
    }

    /// Makes `r` this replica's local copy of the agent's session (`epoch`: the lease, when
    /// this replica holds it).
    pub(super) async fn adopt(&self, agent: &str, r: Record, epoch: u64) -> Result<Arc<Session>, SessionError> {
        let shared = self.shared.clone().ok_or(SessionError::Internal("adopt without a shared store"))?;
        let slot = self.slot(agent);
        let existing = slot.session.load_full();
        if let Some(s) = &existing {
            // A copy of this session that ended here only, while the record is active, is
            // replaced by a fresh one (a copy's end cannot be undone); any other is updated.
            let revive = s.ended().is_some() && r.state == RecordState::Active;
            if let Some(link) = s.link.as_ref().filter(|l| l.sid == r.sid && !revive) {
                if epoch != 0 {
                    link.epoch.store(epoch, Ordering::Release);
                }
                link.apply(s, Some(r));
                return Ok(s.clone());
            }
        }
        let conf = serde_json::from_str(&r.conf).unwrap_or(ConfState::Unknown);
        let link = Link::new(shared.clone(), r.sid.clone(), epoch, r.confv);
        let session = self
            .build_session(agent, &r.guid, &r.cookies, r.answer.clone(), conf, r.resumable, Some(link))
            .ok_or(SessionError::Internal("stored Guid is not a valid header value"))?;
        // The newest events, so `Last-Event-ID` from another replica resumes here.
        let cap = session.events.capacity();
        if let Ok(events) = shared.latest_events(agent, cap + 1).await {
            let skip = events.len().saturating_sub(cap);
            if let Some((id, _, _)) = events.first().filter(|_| skip > 0) {
                session.events.missing_up_to(*id);
            }
            for (id, kind, data) in events.into_iter().skip(skip) {
                session.events.insert(id, &kind, data);
            }
        }
        self.metrics.sessions_gauge(crate::metrics::SessionState::Active).inc();
        if let RecordState::Lost(reason) = r.state {
            session.end(Ended::Lost(reason));
        }
        // Two requests adopting at once: the first one's copy wins.
        let prev = slot.session.compare_and_swap(&existing, Some(session.clone()));
        let stored = match (&*prev, &existing) {
            (Some(p), Some(e)) => Arc::ptr_eq(p, e),
            (None, None) => true,
            _ => false,
        };
        if !stored {
            session.end(Ended::SignedOut);
            return slot.session.load_full().ok_or(SessionError::NoSession);
        }
        if let Some(old) = existing {
            old.end(Ended::SignedOut);
            self.forget_lost_gauge(&old);
        }
        Ok(session)
    }

    /// Sign-in with the shared store: at most one replica signs an agent in at a time
    /// (a lock in Redis), and a replica finding a live session in Redis adopts it instead.
    pub(super) async fn lead_sign_in_shared(
        &self,
        agent: &str,
        slot: &super::store::Slot,
        opts: super::SignInOptions,
        shared: &Arc<Shared>,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        let wait = self.sign_in_wait();
        let deadline = tokio::time::Instant::now() + wait;
        let token = loop {
            if !opts.force {
                if let Some(r) = shared.load(agent).await?.filter(|r| r.state == RecordState::Active) {
                    return Ok((self.adopt(agent, r, 0).await?, false));
                }
            }
            if let Some(token) = shared.lock_op(agent, wait).await? {
                break token;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::gateway::UpstreamError::Timeout.into());
            }
            // Another replica is signing this agent in (or out): look again shortly.
            tokio::time::sleep(SIGN_IN_LOOK_AGAIN).await;
        };
        let result = async {
            if !opts.force {
                if let Some(r) = shared.load(agent).await?.filter(|r| r.state == RecordState::Active) {
                    return Ok((self.adopt(agent, r, 0).await?, false));
                }
            }
            let (reply, conf, resumable) = self.sign_in_at_gateway(agent, slot, opts).await?;
            let guid = reply.set_guid.clone().unwrap_or_default();
            let sid = uuid::Uuid::new_v4().simple().to_string();
            let conf_json = serde_json::to_string(&conf).unwrap_or_default();
            let record = NewRecord {
                sid: &sid,
                guid: &guid,
                cookies: &reply.cookies,
                answer: &reply.body,
                resumable,
                conf: &conf_json,
            };
            let epoch = match shared.create(agent, &record, false).await {
                Ok(e) => e,
                Err(e) => {
                    // Signed in at the gateway but nobody else could find the session: sign
                    // it out again rather than leave an agent nobody polls.
                    self.abandon(agent, &reply).await;
                    return Err(e.into());
                }
            };
            let link = Link::new(shared.clone(), sid, epoch, 1);
            self.finish_sign_in(agent, slot, &reply, conf, resumable, Some(link)).map(|s| (s, true))
        }
        .await;
        shared.unlock_op(agent, &token).await;
        result
    }

    /// Follows the change channel and runs the maintenance rounds, for the process's life.
    pub fn start_replication(self: &Arc<Self>) {
        let Some(shared) = self.shared.clone() else { return };
        let me = Arc::downgrade(self);
        tokio::spawn(shared.clone().follow(move |change| {
            if let Some(store) = me.upgrade() {
                tokio::spawn(async move { store.on_change(change).await });
            }
        }));
        let me = Arc::downgrade(self);
        let every = shared.lease_ttl / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = me.upgrade() else { return };
                store.maintain().await;
            }
        });
    }

    async fn on_change(&self, change: Change) {
        match change {
            Change::Resync => {
                for agent in self.local_agents() {
                    self.resync(&agent).await;
                    self.mirror(&agent).await;
                }
            }
            Change::Session(agent) => self.resync(&agent).await,
            Change::Events(agent) => self.mirror(&agent).await,
        }
    }

    /// Copies the agent's new events into the local copy's buffer, if this replica has one.
    async fn mirror(&self, agent: &str) {
        if let Some(s) = self.current(agent) {
            if let Some(link) = &s.link {
                link.mirror(&s).await;
            }
        }
    }

    fn local_agents(&self) -> Vec<String> {
        lock(&self.slots).iter().filter(|(_, s)| s.session.load().is_some()).map(|(a, _)| a.clone()).collect()
    }

    /// Brings the local copy of `agent` in line with Redis, in both directions: a copy that
    /// ended here only is revived from an active record; a live session Redis lost is put
    /// back, by the replica that polls it (it has the newest Guid), or by any replica once
    /// the record has been missing for a lease (the owner is gone too).
    async fn resync(&self, agent: &str) {
        let Some(s) = self.current(agent) else { return };
        let Some(link) = &s.link else { return };
        if s.ended().is_some() {
            if link.loss_unwritten() {
                link.flush_lost(&s).await;
            } else if let Ok(Some(r)) = link.shared.load(agent).await {
                if r.sid == link.sid && r.state == RecordState::Active {
                    tracing::info!(agent, "a copy that ended on this replica only follows the active record again");
                    let _ = self.adopt(agent, r, 0).await;
                }
            }
            return;
        }
        match link.refresh(&s).await {
            Applied::Missing => {
                let due = {
                    let mut since = lock(&link.missing_since);
                    let first = *since.get_or_insert_with(tokio::time::Instant::now);
                    link.owns() || first.elapsed() >= link.shared.lease_ttl
                };
                if due {
                    self.restore(&s, link).await;
                }
            }
            _ => *lock(&link.missing_since) = None,
        }
    }

    /// Redis lost the record of a session this replica holds: put it back (first replica
    /// wins) with this replica polling.
    async fn restore(&self, s: &Arc<Session>, link: &Link) {
        let (guid, cookies) = s.raw_auth();
        let conf = serde_json::to_string(&s.conf()).unwrap_or_default();
        let record = NewRecord {
            sid: &link.sid,
            guid: &guid,
            cookies: &cookies,
            answer: &s.login_answer,
            resumable: s.resumable,
            conf: &conf,
        };
        match link.shared.create(&s.agent_id, &record, true).await {
            Ok(0) | Err(_) => {}
            Ok(epoch) => {
                tracing::warn!(agent = %s.agent_id, "shared store had lost this session; restored it from this replica's copy");
                link.confv.store(1, Ordering::Release);
                let had = link.epoch.swap(epoch, Ordering::AcqRel);
                if had == 0 {
                    self.start_poller(s);
                }
            }
        }
    }

    /// One maintenance round: heartbeat, lease renewals, deferred writes, takeovers; after
    /// an outage, every copy reconciled with its record.
    async fn maintain(&self) {
        let Some(shared) = self.shared.clone() else { return };
        if shared.heartbeat().await.is_err() {
            // Redis is away: owners keep polling from their copies; nothing else to do.
            self.store_was_away.store(true, Ordering::Release);
            return;
        }
        if self.store_was_away.swap(false, Ordering::AcqRel) {
            // Every lease expired while Redis was away, the live owners' too, and each live
            // owner holds Guids it could not share. Leave it a lease to take its own back
            // before anyone takes over: a taker would poll with the record's older Guid, be
            // refused, and end a session the gateway still honours.
            *lock(&self.takeovers_after) = Some(tokio::time::Instant::now() + shared.lease_ttl);
            tracing::info!("shared store back: every copy follows its record again; takeovers wait a lease");
            // Redis is back (its change channel may not be yet): every copy follows its
            // record again this round, whatever happened meanwhile.
            for agent in self.local_agents() {
                self.resync(&agent).await;
                self.mirror(&agent).await;
            }
        }
        for agent in self.local_agents() {
            let Some(s) = self.current(&agent) else { continue };
            let Some(link) = &s.link else { continue };
            if s.ended().is_some() {
                link.flush_lost(&s).await;
                continue;
            }
            if let Some(epoch) = link.epoch() {
                match shared.renew(&agent, epoch).await {
                    Ok(Lease::Held(_)) => shared.index_agent(&agent).await,
                    Ok(Lease::Taken) => link.lose_lease(&s),
                    Ok(Lease::Absent) => self.reclaim(&s, link).await,
                    Err(_) => {}
                }
            }
            link.flush(&s).await;
        }
        if lock(&self.takeovers_after).is_some_and(|at| tokio::time::Instant::now() < at) {
            return;
        }
        let Ok(orphans) = shared.stale_agents(TAKEOVERS_PER_ROUND).await else { return };
        for agent in orphans {
            self.take_over(&shared, &agent).await;
        }
    }

    /// This replica's lease expired without anyone taking it (a pause, or Redis lost it):
    /// take it again, or put the session back.
    async fn reclaim(&self, s: &Arc<Session>, link: &Link) {
        match link.shared.acquire(&s.agent_id).await {
            Ok(Lease::Held(epoch)) => link.epoch.store(epoch, Ordering::Release),
            Ok(Lease::Taken) => link.lose_lease(s),
            Ok(Lease::Absent) => match link.shared.load(&s.agent_id).await {
                Ok(None) => self.restore(s, link).await,
                Ok(rec) => {
                    link.apply(s, rec);
                }
                Err(_) => {}
            },
            Err(_) => {}
        }
    }

    /// Takes over polling an agent whose owner stopped renewing its lease, unless this replica
    /// is full (`sessions.max_agents`): a replica with room takes it instead.
    async fn take_over(&self, shared: &Arc<Shared>, agent: &str) {
        let has_copy = self.current(agent).is_some_and(|s| s.ended().is_none());
        if !has_copy && self.at_capacity() {
            return;
        }
        match shared.acquire(agent).await {
            Ok(Lease::Held(epoch)) => {
                let record = match shared.load(agent).await {
                    Ok(Some(r)) => r,
                    _ => {
                        let _ = shared.release(agent, epoch).await;
                        return;
                    }
                };
                match self.adopt(agent, record, epoch).await {
                    Ok(s) if s.ended().is_none() => {
                        tracing::info!(agent, epoch, "took over polling an agent whose replica stopped");
                        self.metrics.count_lease_takeover();
                        shared.index_agent(agent).await;
                        self.start_poller(&s);
                    }
                    _ => {
                        let _ = shared.release(agent, epoch).await;
                    }
                }
            }
            // No active session: nothing to poll; drop it from the index.
            Ok(Lease::Absent) => shared.unindex_agent(agent).await,
            Ok(Lease::Taken) | Err(_) => {}
        }
    }

    /// Shutdown with the shared store: hands the leases over (another replica takes each
    /// agent at its next round) and says whether this replica was the last one alive.
    pub(super) async fn hand_over(&self) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        for agent in self.local_agents() {
            let Some(s) = self.current(&agent) else { continue };
            let Some(link) = &s.link else { continue };
            s.stop_poller();
            link.flush(&s).await;
            if let Some(epoch) = link.epoch() {
                let _ = shared.release(&agent, epoch).await;
            }
        }
        match shared.leave().await {
            Ok(others) => others == 0,
            // Redis is away: nobody can take over, and nobody can tell whether others live.
            // Keep the agents signed in; a replica that comes back takes them over.
            Err(_) => false,
        }
    }
}
