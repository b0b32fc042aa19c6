//! The store-wide half of replication on the shared store: finding a session another replica
//! signed in, the cluster-wide sign-in lock, the maintenance round (heartbeat, lease renewals,
//! deferred writes, takeovers, reconciling after an outage), the change channel, and hand-over
//! at shutdown. It works on the local sessions through [`Host`], which the session store
//! implements, so this module sits below the store in the module graph. docs/redis.md has
//! the design.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::conference::ConfState;
use super::copy::LocalCopy;
use super::error::SessionError;
use super::link::{Applied, Link};
use super::sharing::{SharedCopy, Sharing};
use super::view::Remote;
use crate::gateway::UpstreamError;
use crate::labels::LossReason;
use crate::shared::{Change, CreateMode, Lease, NewRecord, OpLock, Record, RecordState, SharedStore, StoreError};
use crate::sync::lock;

/// Orphaned agents one replica takes over per maintenance round (the rest wait for the next
/// round). A stopped replica's agents are shared out among the live ones (`falls_to`), so with
/// 4 replicas of 4,000 agents each this is 1,333 per survivor: one round.
const TAKEOVERS_PER_ROUND: usize = 2_048;
/// Takeovers one replica runs at once. Each is a few store round trips and a new poller (its
/// own TLS connection to the gateway): one at a time, a survivor's share of 4,000 agents took
/// a round of several seconds; 16 at once keep the burst at the store and the gateway
/// bounded.
const TAKEOVERS_AT_ONCE: usize = 16;
/// Stale index entries read per round: room for every survivor's share after one of several
/// full replicas stopped (each picks its own out of them).
const STALE_READ: usize = 8_192;
/// Leases checked (and index entries refreshed) per store call in a round.
const LEASE_BATCH: usize = 512;
/// Replicas counted when sharing out orphans; a larger set shares by the first this many
/// (and each replica counts itself).
const LIVE_REPLICAS_READ: usize = 64;
/// How often a replica waiting for another replica's sign-in (or sign-out) looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

/// What replication needs of the session store that holds the local copies.
pub(crate) trait Host: Send + Sync + 'static {
    type Session: LocalCopy + SharedCopy + 'static;

    /// The agent's local copy, live or ended.
    fn current(&self, agent: &str) -> Option<Arc<Self::Session>>;
    /// The agent's live local copy, or why there is none.
    fn active(&self, agent: &str) -> Result<Arc<Self::Session>, SessionError>;
    /// Agents with a local copy.
    fn local_agents(&self) -> Vec<String>;
    fn start_poller(&self, s: &Arc<Self::Session>);
    /// This replica holds `sessions.max_agents` live sessions.
    fn at_capacity(&self) -> bool;
    /// How many more live sessions this replica may take.
    fn room(&self) -> usize;
    /// Makes a local copy of what another replica stored, and puts it in place of `expected`
    /// (unless another request replaced that first: then the copy in place is returned).
    fn install(
        &self,
        agent: &str,
        expected: Option<Arc<Self::Session>>,
        adopted: Adopted,
    ) -> Result<Arc<Self::Session>, SessionError>;
    fn count_takeover(&self);
    /// A session's event buffer capacity (`sessions.event_buffer`).
    fn event_capacity(&self) -> usize;
}

/// A session another replica signed in, translated from its record in the shared store for a
/// local copy: the store's record format stays on this side of the seam.
pub(crate) struct Adopted {
    pub guid: String,
    pub cookies: Vec<String>,
    /// The gateway's sign-in answer.
    pub answer: Bytes,
    pub conf: ConfState,
    /// ccgate may sign the agent in again by itself.
    pub resumable: bool,
    /// When the agent was signed in (Unix ms; 0 when unknown).
    pub since: u64,
    /// The tenant the signing-in token named.
    pub tenant: Option<Arc<str>>,
    /// The record says the gateway ended the session.
    pub lost: Option<LossReason>,
    /// The copy's link to the record.
    pub sharing: Sharing,
    /// The newest events of its stream (id, type, content), oldest first: one more than the
    /// buffer holds when some are missing before them.
    pub events: Vec<(u64, String, Bytes)>,
}

/// What a sign-in found when it asked the cluster.
pub(crate) enum Claim<S> {
    /// Another replica's sign-in of the agent is live: use it.
    Adopted(Arc<S>),
    /// This replica signs the agent in, holding the lock (released with `unlock`).
    Granted(Option<OpLock>),
}

pub(crate) struct Cluster {
    store: Arc<dyn SharedStore>,
    /// How long sign-in and sign-out wait for another replica's, and how long the lock lives.
    op_wait: Duration,
    /// A maintenance round found the store away: the first round after it reconciles every copy.
    store_was_away: AtomicBool,
    /// Until when takeovers wait after the store came back (see `maintain`).
    takeovers_after: Mutex<Option<Instant>>,
    /// Shutdown began (`hand_over`, `stop_rounds`): rounds no longer check, reclaim or take
    /// leases, so a round running beside the hand-over cannot take back what it releases.
    handing_over: AtomicBool,
    /// Held by a maintenance round while it runs: shutdown waits for the round in flight
    /// (which stops at its next takeover once `handing_over` is set). Not on a request's path.
    round: tokio::sync::Mutex<()>,
}

impl Cluster {
    pub(crate) fn new(store: Arc<dyn SharedStore>, op_wait: Duration) -> Self {
        Self {
            store,
            op_wait,
            store_was_away: AtomicBool::new(false),
            takeovers_after: Mutex::new(None),
            handing_over: AtomicBool::new(false),
            round: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn SharedStore> {
        &self.store
    }

    /// A link for a session this replica has just signed in, recorded in the store.
    pub(crate) async fn record_sign_in(&self, agent: &str, r: &NewRecord<'_>) -> Result<Link, SessionError> {
        let epoch = self.store.create(agent, r, CreateMode::SignIn).await?;
        Ok(Link::new(self.store.clone(), r.sid.to_owned(), epoch, 1))
    }

    /// The agent's live session from any replica: the local copy, else the record in the
    /// store (adopted as a local copy).
    pub(crate) async fn lookup<H: Host>(&self, host: &H, agent: &str) -> Result<Arc<H::Session>, SessionError> {
        let local = host.current(agent);
        if let Some(s) = &local {
            if s.ended().is_none() {
                return Ok(s.clone());
            }
        }
        // Ended here: a newer session may have been signed in through another replica.
        let record = match self.store.load(agent).await {
            Ok(r) => r,
            Err(e) => return if local.is_some() { host.active(agent) } else { Err(e.into()) },
        };
        match record {
            Some(r) if r.state != RecordState::Out => {
                let same = local.as_deref().and_then(|s| s.sharing().link()).filter(|l| l.sid() == r.sid);
                // The same session, ended here: final if the record says so or this replica
                // has a loss to write; otherwise it ended here only, and the record revives it.
                if same.is_some_and(|l| r.state != RecordState::Active || l.loss_unwritten()) {
                    return host.active(agent);
                }
                self.adopt(host, agent, r, 0).await?;
                host.active(agent)
            }
            _ => Err(SessionError::NoSession),
        }
    }

    /// Makes `r` this replica's local copy of the agent's session (`epoch`: the lease, when
    /// this replica holds it).
    async fn adopt<H: Host>(
        &self,
        host: &H,
        agent: &str,
        r: Record,
        epoch: u64,
    ) -> Result<Arc<H::Session>, SessionError> {
        let existing = host.current(agent);
        if let Some(s) = &existing {
            // A copy of this session that ended here only, while the record is active, is
            // replaced by a fresh one (a copy's end cannot be undone); any other is updated.
            let revive = s.ended().is_some() && r.state == RecordState::Active;
            if let Some(link) = s.sharing().link().filter(|l| l.sid() == r.sid && !revive) {
                if epoch != 0 {
                    link.hold(epoch);
                }
                link.apply(&**s, Some(r));
                return Ok(s.clone());
            }
        }
        let link = Link::new(self.store.clone(), r.sid.clone(), epoch, r.confv);
        // The newest events (one more than the buffer holds, to tell whether some are missing),
        // so `Last-Event-ID` from another replica resumes here.
        let events = match self.store.latest_events(agent, host.event_capacity() + 1).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(agent, error = %e, "shared store: events not read; the copy starts without them");
                Vec::new()
            }
        };
        let adopted = Adopted {
            conf: serde_json::from_str(&r.conf).unwrap_or(ConfState::Unknown),
            lost: match r.state {
                RecordState::Lost(reason) => Some(reason),
                RecordState::Active | RecordState::Out => None,
            },
            guid: r.guid,
            cookies: r.cookies,
            answer: r.answer,
            resumable: r.resumable,
            since: r.since,
            tenant: r.tenant.map(Arc::from),
            sharing: Sharing::Shared(link),
            events,
        };
        host.install(agent, existing, adopted)
    }

    /// Sign-in: at most one replica signs an agent in at a time (a lock in the store), and a
    /// replica finding a live session there adopts it instead (unless `force`).
    pub(crate) async fn claim<H: Host>(
        &self,
        host: &H,
        agent: &str,
        force: bool,
    ) -> Result<Claim<H::Session>, SessionError> {
        let deadline = Instant::now() + self.op_wait;
        let lock = loop {
            if let Some(s) = self.adopt_active(host, agent, force).await? {
                return Ok(Claim::Adopted(s));
            }
            if let Some(lock) = self.store.lock_op(agent, self.op_wait).await? {
                break lock;
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Timeout.into());
            }
            // Another replica is signing this agent in (or out): look again shortly.
            tokio::time::sleep(LOOK_AGAIN).await;
        };
        // Looked again under the lock: a sign-in that finished just before it counts.
        let found = self.adopt_active(host, agent, force).await;
        if !matches!(found, Ok(None)) {
            self.store.unlock_op(agent, &lock).await;
        }
        match found? {
            Some(s) => Ok(Claim::Adopted(s)),
            None => Ok(Claim::Granted(Some(lock))),
        }
    }

    async fn adopt_active<H: Host>(
        &self,
        host: &H,
        agent: &str,
        force: bool,
    ) -> Result<Option<Arc<H::Session>>, SessionError> {
        if force {
            return Ok(None);
        }
        match self.store.load(agent).await?.filter(|r| r.state == RecordState::Active) {
            Some(r) => Ok(Some(self.adopt(host, agent, r, 0).await?)),
            None => Ok(None),
        }
    }

    /// Sign-out: adopts a session signed in through another replica (so it can be signed out
    /// here) and takes the cluster-wide lock.
    pub(crate) async fn lock_for_sign_out<H: Host>(&self, host: &H, agent: &str) -> Result<OpLock, SessionError> {
        match self.lookup(host, agent).await {
            Ok(_) | Err(SessionError::Lost) => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + self.op_wait;
        loop {
            if let Some(lock) = self.store.lock_op(agent, self.op_wait).await? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Timeout.into());
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }

    pub(crate) async fn unlock(&self, agent: &str, lock: &OpLock) {
        self.store.unlock_op(agent, lock).await;
    }

    /// Follows the change channel and runs the maintenance rounds, for the process's life.
    /// The tasks run in the caller's span (the store's: their lines name the gateway).
    pub(crate) fn start<H: Host>(self: &Arc<Self>, host: Weak<H>) {
        self.follow(host.clone());
        let me = Arc::downgrade(self);
        let every = self.store.lease_ttl() / 3;
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (Some(cluster), Some(host)) = (me.upgrade(), host.upgrade()) else { return };
                    cluster.maintain(&*host).await;
                }
            },
            span,
        ));
    }

    /// Applies every change other replicas announce, for the process's life.
    pub(crate) fn follow<H: Host>(self: &Arc<Self>, host: Weak<H>) {
        let me = Arc::downgrade(self);
        let span = tracing::Span::current();
        tokio::spawn(self.store.clone().follow(Box::new(move |change| {
            if let (Some(cluster), Some(host)) = (me.upgrade(), host.upgrade()) {
                let task = async move { cluster.on_change(&*host, change).await };
                tokio::spawn(tracing::Instrument::instrument(task, span.clone()));
            }
        })));
    }

    async fn on_change<H: Host>(&self, host: &H, change: Change) {
        match change {
            Change::Resync => {
                for agent in host.local_agents() {
                    self.resync(host, &agent).await;
                    self.mirror(host, &agent).await;
                }
            }
            Change::Session(agent) => self.resync(host, &agent).await,
            Change::Events(agent) => self.mirror(host, &agent).await,
        }
    }

    /// Copies the agent's new events into the local copy's buffer, if this replica has one.
    async fn mirror<H: Host>(&self, host: &H, agent: &str) {
        if let Some(s) = host.current(agent) {
            if let Some(link) = s.sharing().link() {
                link.mirror(&*s).await;
            }
        }
    }

    /// Brings the local copy of `agent` in line with the store, in both directions: a copy
    /// that ended here only is revived from an active record; a live session the store lost
    /// is put back, by the replica that polls it (it has the newest Guid), or by any replica
    /// once the record has been missing for a lease (the owner is gone too).
    async fn resync<H: Host>(&self, host: &H, agent: &str) {
        let Some(s) = host.current(agent) else { return };
        let Some(link) = s.sharing().link() else { return };
        if s.ended().is_some() {
            if link.loss_unwritten() {
                link.flush_lost(&*s).await;
                return;
            }
            match self.store.load(agent).await {
                Ok(Some(r)) if r.sid == link.sid() && r.state == RecordState::Active => {
                    tracing::info!(agent, "a copy that ended on this replica only follows the active record again");
                    if let Err(e) = self.adopt(host, agent, r, 0).await {
                        tracing::warn!(agent, error = %e, "could not revive the local copy from its record");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(agent, error = %e, "shared store away; resynced later"),
            }
            return;
        }
        match link.refresh(&*s).await {
            Applied::Missing => {
                if link.missing_for(self.store.lease_ttl()) {
                    self.restore(host, &s, link).await;
                }
            }
            _ => link.found(),
        }
    }

    /// The store lost the record of a session this replica holds: put it back (first replica
    /// wins) with this replica polling.
    async fn restore<H: Host>(&self, host: &H, s: &Arc<H::Session>, link: &Link) {
        let (guid, cookies) = s.with_raw_auth(|g, c| (g.to_owned(), c.to_vec()));
        let conf = Link::conf_json(s.conf());
        let (answer, resumable) = s.login();
        let since = s.signed_in_at_ms();
        let record = NewRecord {
            sid: link.sid(),
            guid: &guid,
            cookies: &cookies,
            answer,
            resumable,
            conf: &conf,
            since,
            tenant: s.tenant(),
        };
        match self.store.create(s.agent_id(), &record, CreateMode::Restore).await {
            Ok(0) => {}
            Ok(epoch) => {
                tracing::warn!(
                    agent = s.agent_id(),
                    "shared store had lost this session; restored it from this replica's copy"
                );
                if !link.restored(epoch) {
                    host.start_poller(s);
                }
            }
            Err(e) => tracing::debug!(agent = s.agent_id(), error = %e, "shared store away; restored later"),
        }
    }

    /// One maintenance round: heartbeat, lease checks and index refresh, deferred writes,
    /// takeovers; after an outage, every copy reconciled with its record.
    pub(crate) async fn maintain<H: Host>(&self, host: &H) {
        let _round = self.round.lock().await;
        if self.handing_over.load(Ordering::Acquire) {
            // Its heartbeat would put it back in the replica set it has just left.
            return;
        }
        if let Err(e) = self.store.heartbeat().await {
            // The store is away: owners keep polling from their copies; nothing else to do.
            tracing::debug!(error = %e, "shared store away; maintenance round skipped");
            self.store_was_away.store(true, Ordering::Release);
            return;
        }
        if self.store_was_away.swap(false, Ordering::AcqRel) {
            // Every index entry went stale while the store was away, the live owners' too,
            // and each live owner holds Guids it could not share. Leave it a lease to refresh
            // its entries before anyone takes over: a taker would poll with the record's older
            // Guid, be refused, and end a session the gateway still honours.
            *lock(&self.takeovers_after) = Some(Instant::now() + self.store.lease_ttl());
            tracing::info!("shared store back: every copy follows its record again; takeovers wait a lease");
            // Its change channel may not be back yet: every copy follows its record again
            // this round, whatever happened meanwhile.
            for agent in host.local_agents() {
                self.resync(host, &agent).await;
                self.mirror(host, &agent).await;
            }
        }
        // The leases this replica holds, read back in one command per batch, and the index
        // entries of those still held refreshed in one: an idle fleet costs Redis a few
        // commands per round per replica, not several per agent (issue 39).
        let mut copies = Vec::new();
        let mut held: Vec<(String, u64, Arc<H::Session>)> = Vec::new();
        for agent in host.local_agents() {
            let Some(s) = host.current(&agent) else { continue };
            let Some(link) = s.sharing().link() else { continue };
            if s.ended().is_some() {
                link.flush_lost(&*s).await;
                continue;
            }
            match link.epoch() {
                Some(epoch) => held.push((agent, epoch, s)),
                None => copies.push(s),
            }
        }
        // Batch by batch: a batch that fails costs its own agents one refresh, not the others.
        for batch in held.chunks(LEASE_BATCH) {
            if self.handing_over.load(Ordering::Acquire) {
                return;
            }
            let pairs: Vec<(&str, u64)> = batch.iter().map(|(a, e, _)| (a.as_str(), *e)).collect();
            match self.store.check(&pairs).await {
                Ok(leases) => {
                    let mut alive = Vec::with_capacity(batch.len());
                    for ((agent, _, s), lease) in batch.iter().zip(leases) {
                        let Some(link) = s.sharing().link() else { continue };
                        match lease {
                            Lease::Held(_) => alive.push(agent.as_str()),
                            Lease::Taken => link.lose_lease(&**s),
                            Lease::Absent => self.reclaim(host, s, link).await,
                        }
                    }
                    self.store.index_agents(&alive).await;
                }
                Err(e) => tracing::debug!(leases = batch.len(), error = %e, "leases not checked this round"),
            }
        }
        for s in held.iter().map(|(_, _, s)| s).chain(copies.iter()) {
            if let Some(link) = s.sharing().link() {
                link.flush(&**s).await;
            }
        }
        if self.handing_over.load(Ordering::Acquire)
            || lock(&self.takeovers_after).is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        let orphans = match self.store.stale_agents(STALE_READ).await {
            Ok(orphans) => orphans,
            Err(e) => {
                tracing::debug!(error = %e, "orphaned agents not read this round");
                return;
            }
        };
        if orphans.is_empty() {
            return;
        }
        // Each orphan falls to one live replica (rendezvous hashing), so the survivors of a
        // stopped replica take its agents in parallel instead of all racing for the same
        // oldest ones. One left stale a round past its lease (its replica full, or gone too)
        // is anyone's.
        let me = self.store.replica();
        let mut live = match self.store.live_replicas(LIVE_REPLICAS_READ).await {
            Ok(live) => live,
            Err(e) => {
                tracing::debug!(error = %e, "live replicas not read; takeovers wait for the next round");
                return;
            }
        };
        // Its own heartbeat is the newest, so a set larger than the read leaves it out.
        if !live.iter().any(|r| r == me) {
            live.push(me.to_owned());
        }
        // Unread, the fallback waits a round: each orphan still has the replica it falls to.
        let late: std::collections::HashSet<String> = match self.store.stale_for_longer(self.round(), STALE_READ).await
        {
            Ok(late) => late.into_iter().collect(),
            Err(_) => Default::default(),
        };
        // Takeovers run side by side, so `sessions.max_agents` is counted here, once: an agent
        // this replica already holds a live copy of takes no room.
        let mut room = host.room();
        let mine = orphans.iter().filter(|a| late.contains(*a) || falls_to(a, &live, me)).filter(|a| {
            if host.current(a).is_some_and(|s| s.ended().is_none()) {
                return true;
            }
            let fits = room > 0;
            room = room.saturating_sub(1);
            fits
        });
        futures_util::stream::iter(mine.take(TAKEOVERS_PER_ROUND))
            .for_each_concurrent(TAKEOVERS_AT_ONCE, |agent| self.take_over(host, agent))
            .await;
    }

    /// The maintenance round's period: a third of a lease.
    fn round(&self) -> Duration {
        self.store.lease_ttl() / 3
    }

    /// This replica's lease expired without anyone taking it (a pause, or the store lost
    /// it): take it again, or put the session back.
    async fn reclaim<H: Host>(&self, host: &H, s: &Arc<H::Session>, link: &Link) {
        if self.handing_over.load(Ordering::Acquire) {
            return;
        }
        let agent = s.agent_id();
        match self.store.acquire(agent).await {
            Ok(Lease::Held(epoch)) => {
                link.hold(epoch);
            }
            Ok(Lease::Taken) => link.lose_lease(&**s),
            Ok(Lease::Absent) => match self.store.load(agent).await {
                Ok(None) => self.restore(host, s, link).await,
                Ok(rec) => {
                    link.apply(&**s, rec);
                }
                Err(e) => tracing::debug!(agent, error = %e, "lease not reclaimed this round"),
            },
            Err(e) => tracing::debug!(agent, error = %e, "lease not reclaimed this round"),
        }
    }

    /// Takes over polling an agent whose owner stopped refreshing its index entry, unless this
    /// replica is full (`sessions.max_agents`): a replica with room takes it instead.
    async fn take_over<H: Host>(&self, host: &H, agent: &str) {
        if self.handing_over.load(Ordering::Acquire) {
            return;
        }
        let current = host.current(agent);
        if current.as_ref().and_then(|s| s.sharing().link()).is_some_and(|l| l.owns()) {
            // Its own entry, stale because a refresh failed: this round's check decided.
            self.store.index_agent(agent).await;
            return;
        }
        let has_copy = current.is_some_and(|s| s.ended().is_none());
        if !has_copy && host.at_capacity() {
            return;
        }
        match self.store.take_stale(agent).await {
            Ok(Lease::Held(epoch)) => {
                let adopted = match self.store.load(agent).await {
                    Ok(Some(r)) => match self.adopt(host, agent, r, epoch).await {
                        Ok(s) => Some(s).filter(|s| s.ended().is_none()),
                        Err(e) => {
                            tracing::warn!(agent, error = %e, "takeover: the record could not be made a local copy");
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(agent, error = %e, "takeover: the record cannot be read");
                        None
                    }
                };
                match adopted {
                    Some(s) => {
                        tracing::info!(agent, epoch, "took over polling an agent whose replica stopped");
                        host.count_takeover();
                        self.store.index_agent(agent).await;
                        host.start_poller(&s);
                    }
                    None => self.release(agent, epoch).await,
                }
            }
            // No active session: nothing to poll; drop it from the index.
            Ok(Lease::Absent) => self.store.unindex_agent(agent).await,
            Ok(Lease::Taken) => {}
            Err(e) => tracing::debug!(agent, error = %e, "takeover not attempted this round"),
        }
    }

    async fn release(&self, agent: &str, epoch: u64) {
        if let Err(e) = self.store.release(agent, epoch).await {
            // It expires by itself within a lease.
            tracing::debug!(agent, error = %e, "lease not released");
        }
    }

    /// Shutdown: hands the leases over (another replica takes each agent at its next round)
    /// and says whether this replica was the last one alive. It leaves the replica set before
    /// it releases, so its agents fall to the replicas that stay.
    pub(crate) async fn hand_over<H: Host>(&self, host: &H) -> bool {
        self.stop_rounds().await;
        let mut held = Vec::new();
        for agent in host.local_agents() {
            let Some(s) = host.current(&agent) else { continue };
            let Some(link) = s.sharing().link() else { continue };
            s.stop_poller();
            link.flush(&*s).await;
            if let Some(epoch) = link.epoch() {
                held.push((agent, epoch));
            }
        }
        let last = self.leave().await.is_ok_and(|others| others == 0);
        for (agent, epoch) in held {
            self.release(&agent, epoch).await;
        }
        last
    }

    /// Shutdown: no maintenance round checks, reclaims or takes a lease from now on, and the
    /// one in flight has finished (its takeovers stop at the next one).
    pub(crate) async fn stop_rounds(&self) {
        self.handing_over.store(true, Ordering::Release);
        drop(self.round.lock().await);
    }

    /// Agents the cluster knows that are not in `known` (this replica's copies): each with
    /// its record and the replica polling it. `one`: that agent only. At most `max`.
    pub(crate) async fn remote_agents(
        &self,
        one: Option<&str>,
        known: &[String],
        max: usize,
    ) -> Result<Vec<Remote>, StoreError> {
        let agents = match one {
            Some(a) => vec![a.to_owned()],
            None => self.store.indexed_agents(max).await?,
        };
        let mut out = Vec::new();
        for agent in agents.into_iter().filter(|a| !known.contains(a)) {
            // A record that fails validation (counted by the store) hides that agent only;
            // only a store that cannot be read makes the view partial.
            let record = match self.store.load(&agent).await {
                Ok(Some(record)) => record,
                Ok(None) | Err(StoreError::Malformed(_)) => continue,
                Err(e) => return Err(e),
            };
            let polled_by = self.store.lease_holder(&agent).await.ok().flatten();
            let state = match record.state {
                RecordState::Active => "active".to_owned(),
                RecordState::Lost(reason) => format!("lost:{}", reason.as_str()),
                RecordState::Out => "signed_out".to_owned(),
            };
            let conf = serde_json::from_str(&record.conf).unwrap_or(ConfState::Unknown);
            out.push(Remote { agent, state, signed_in_at_ms: record.since, conf, polled_by });
        }
        Ok(out)
    }

    /// Who polls an agent this replica holds a copy of, and whether it is this replica.
    pub(crate) async fn poller_of(&self, agent: &str, link: &Link) -> (Option<String>, bool) {
        if link.owns() {
            return (Some(self.store.replica().to_owned()), true);
        }
        (self.store.lease_holder(agent).await.ok().flatten(), false)
    }

    /// Leaves the replica set: how many others are alive. The store away: nobody can take
    /// over and nobody can tell whether others live, so the agents stay signed in (a replica
    /// that comes back takes them over).
    pub(crate) async fn leave(&self) -> Result<usize, SessionError> {
        self.store.leave().await.map_err(|e| {
            tracing::warn!(error = %e, "shared store away at shutdown; agents stay signed in for the other replicas");
            SessionError::from(e)
        })
    }
}

/// Whether `agent`'s orphaned session falls to replica `me` among the `live` ones: the one
/// with the highest FNV-1a hash of (replica, agent), so that every replica, reading the same
/// set, agrees without talking, and a replica joining or leaving moves only its own share.
/// Alone, or not in the set yet (a first heartbeat not seen), it is everyone's.
fn falls_to(agent: &str, live: &[String], me: &str) -> bool {
    fn score(replica: &str, agent: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in replica.bytes().chain([0]).chain(agent.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // MurmurHash3's finalizer: FNV leaves the last bytes' differences in the low bits.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    if !live.iter().any(|r| r == me) {
        return true;
    }
    live.iter().max_by_key(|r| (score(r, agent), r.as_str())).is_some_and(|r| r == me)
}

#[cfg(test)]
mod tests {
    use super::falls_to;

    /// Every orphan falls to exactly one live replica, the shares are even, and a replica
    /// leaving moves only its own share.
    #[test]
    fn orphans_are_shared_out_evenly_and_each_to_one_replica() {
        let live: Vec<String> = (0..3).map(|i| format!("{i:032x}")).collect();
        let agents: Vec<String> = (10_000..13_000).map(|a| a.to_string()).collect();
        let owner = |live: &[String], a: &str| -> Vec<usize> {
            (0..live.len()).filter(|&i| falls_to(a, live, &live[i])).collect()
        };
        let mut shares = [0usize; 3];
        for a in &agents {
            let o = owner(&live, a);
            assert_eq!(o.len(), 1, "agent {a}: {o:?}");
            shares[o[0]] += 1;
        }
        assert!(shares.iter().all(|&n| (850..=1150).contains(&n)), "{shares:?}");
        let two = &live[..2];
        for a in &agents {
            let before = owner(&live, a)[0];
            if before < 2 {
                assert_eq!(owner(two, a), [before], "agent {a} moved though its replica stayed");
            }
        }
        assert!(falls_to("153", &live, "not-in-the-set"), "a replica not seen yet takes any");
        assert!(falls_to("153", &[], "alone"));
    }
}
