//! The shared store in process: the same operations as the Redis scripts, with the same
//! semantics (compare-and-set on sid, Guid, epoch, write number and conference version; lease
//! and lock expiry; tombstones; idempotent appends; GCRA), on tokio's clock, so replication
//! is unit-tested under a paused clock with several replicas in one process. A [`MemoryHub`]
//! is one "Redis"; each [`MemoryHub::join`] is one replica's connection to it. The hub can
//! be taken down and brought back (every operation fails meanwhile, as with Redis away) and
//! flushed (Redis restarted empty). `tests/it/store_contract.rs` runs the same cases against
//! this store and a real redis-server, so the two cannot drift apart.
//!
//! Bounds: one entry per agent that has a record (the sessions' own bound), each stream at
//! its `cap`, the change channel at [`CHANGES`] (a replica that falls behind resyncs, as one
//! whose Redis subscription dropped does).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::deliveries::{Claimed, Deliveries, Settled, Settlement, Summary};
use super::{
    AuthWrite, AuthWritten, Backend, Bucket, Buckets, Change, ChangeFeed, ConfWrite, CreateMode, EndAs, EndOutcome,
    Events, Gcra, Grant, Journal, JournalList, Lease, Leases, Membership, NewEvent, NewRecord, OpLock, Record,
    RecordState, Records, ReplicaIdentity, SharedStore, StoreError, StreamEvent, JOURNAL_AGE, JOURNAL_ENTRY_MAX_BYTES,
    JOURNAL_MAX, REPLICA_SILENT_LEASES, SEQ_BITS,
};
use crate::config::Scope;

/// Changes buffered per follower before it must resync.
const CHANGES: usize = 1024;

/// One agent's session hash, as the scripts keep it.
#[derive(Clone)]
struct Hash {
    sid: String,
    epoch: u64,
    guid: String,
    cookies: Vec<String>,
    answer: Bytes,
    resumable: bool,
    conf: String,
    confv: u64,
    activity_ms: u64,
    qcursor: u64,
    state: RecordState,
    /// The lease holder's last Guid write: its epoch and number.
    auth: Option<(u64, u64)>,
    /// The last append's given id and the id it became.
    last_append: Option<(u64, u64)>,
    /// A tombstone's expiry.
    expires: Option<Instant>,
    since: u64,
    tenant: Option<String>,
}

#[derive(Default)]
struct Agent {
    session: Option<Hash>,
    /// `replica epoch`: no expiry (its holder refreshes the index instead; `shared::Leases`).
    lease: Option<String>,
    events: VecDeque<StreamEvent>,
    /// The stream's last id, kept when entries are trimmed (as Redis does), reset with the stream.
    last_id: u64,
    op: Option<(String, Instant)>,
}

impl Agent {
    /// Drops what has expired by `now`, as Redis does on access.
    fn expire(&mut self, now: Instant) {
        if self.op.as_ref().is_some_and(|(_, at)| *at <= now) {
            self.op = None;
        }
        if self.session.as_ref().and_then(|h| h.expires).is_some_and(|at| at <= now) {
            self.session = None;
        }
    }

    fn live_hash(&mut self, sid: &str) -> Option<&mut Hash> {
        self.session.as_mut().filter(|h| h.sid == sid)
    }

    fn clear_events(&mut self) {
        self.events.clear();
        self.last_id = 0;
    }
}

#[derive(Default)]
struct State {
    agents: HashMap<String, Agent>,
    /// The agents index: agent → ms score.
    index: HashMap<String, u64>,
    /// Live replicas: name → ms of the last heartbeat.
    replicas: HashMap<String, u64>,
    /// Registered identities, as Redis holds them: name → (the stored text, expiry in ms).
    identities: HashMap<String, (String, u64)>,
    /// GCRA buckets: key → (theoretical arrival time µs, expiry).
    limits: HashMap<String, (u64, Instant)>,
    /// Each namespace's journal, newest first, and when it expires.
    journals: HashMap<String, (VecDeque<Vec<u8>>, Instant)>,
    /// Each webhook endpoint's deliveries, as its keys hold them.
    webhooks: HashMap<String, Wh>,
    /// Agents' webhook sequence numbers: lane → (last, expiry in ms).
    wh_seqs: HashMap<String, (u64, u64)>,
}

/// One endpoint's deliveries (`scripts::EndpointKeys`).
#[derive(Default)]
struct Wh {
    lanes: HashMap<String, VecDeque<Vec<u8>>>,
    due: HashMap<String, u64>,
    claim: HashMap<String, String>,
    tries: HashMap<String, u32>,
    heads: HashMap<String, u64>,
    pending: u64,
    bytes: u64,
    failed: VecDeque<Vec<u8>>,
    disabled: Option<Vec<u8>>,
}

impl Wh {
    /// `next_head` of `WH_SETTLE`: the lane's new head is due now, or the lane is gone.
    fn next_head(&mut self, lane: &str, now: u64) {
        match self.lanes.get(lane).and_then(|l| l.front()) {
            Some(head) => {
                let at = super::deliveries::message_head(head).map_or(now, |(_, at)| at);
                self.due.insert(lane.to_owned(), now);
                self.heads.insert(lane.to_owned(), at);
            }
            None => {
                self.lanes.remove(lane);
                self.due.remove(lane);
                self.heads.remove(lane);
            }
        }
    }

    /// Appends to a lane; a lane that was empty is due now (unless it has a due time).
    fn append(&mut self, lane: &str, at_ms: u64, message: Vec<u8>, now: u64) {
        let list = self.lanes.entry(lane.to_owned()).or_default();
        self.bytes += message.len() as u64;
        list.push_back(message);
        self.pending += 1;
        if list.len() == 1 {
            self.due.entry(lane.to_owned()).or_insert(now);
            self.heads.insert(lane.to_owned(), at_ms);
        }
    }
}

struct Inner {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    lease_ttl: Duration,
    /// How long a signed-out session's tombstone stays.
    tombstone: Duration,
    /// The hub's clock: wall-clock ms at creation plus tokio's time since (paused-clock aware).
    born: Instant,
    born_ms: u64,
    down: AtomicBool,
    replicas: AtomicU64,
}

/// One in-process "Redis", shared by the replicas made from it.
#[derive(Clone)]
pub struct MemoryHub(Arc<Inner>);

impl std::fmt::Debug for MemoryHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHub").finish_non_exhaustive()
    }
}

impl MemoryHub {
    /// A hub whose leases live `lease_ttl` and whose sign-outs' tombstones `tombstone`
    /// ([`super::TOMBSTONE`]; tests that let it expire pass less).
    pub fn new(lease_ttl: Duration, tombstone: Duration) -> Self {
        Self(Arc::new(Inner {
            state: Mutex::new(State::default()),
            changes: broadcast::channel(CHANGES).0,
            lease_ttl,
            tombstone,
            born: Instant::now(),
            born_ms: crate::clock::unix_ms(),
            down: AtomicBool::new(false),
            replicas: AtomicU64::new(0),
        }))
    }

    /// A new replica's connection to this hub.
    pub fn join(&self) -> Arc<MemoryStore> {
        let n = self.0.replicas.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::new(MemoryStore {
            hub: self.0.clone(),
            replica: format!("replica-{n}").into(),
            namespace: "".into(),
            identity: Arc::default(),
        })
    }

    /// The store goes away (every operation fails as unreachable) or comes back (every
    /// follower resyncs, as after Redis's subscription came back).
    pub fn set_down(&self, down: bool) {
        let was = self.0.down.swap(down, Ordering::SeqCst);
        if was && !down {
            let _ = self.0.changes.send(Change::Resync);
        }
    }

    /// Everything is lost (Redis restarted empty).
    pub fn flush_all(&self) {
        *crate::sync::lock(&self.0.state) = State::default();
    }

    /// The agent's session record is lost, its lease and events kept (a Redis that lost
    /// that one key).
    pub fn lose_record(&self, agent: &str) {
        if let Some(a) = crate::sync::lock(&self.0.state).agents.get_mut(agent) {
            a.session = None;
        }
    }

    /// Puts `value` in the agent's lease, as a store that lost a write or a planted value does.
    pub fn set_lease(&self, agent: &str, value: &str) {
        crate::sync::lock(&self.0.state).agents.entry(agent.to_owned()).or_default().lease = Some(value.to_owned());
    }

    /// The lease's holder (`replica epoch`), if any.
    pub fn lease_holder(&self, agent: &str) -> Option<String> {
        let now = Instant::now();
        let mut st = crate::sync::lock(&self.0.state);
        let a = st.agents.get_mut(agent)?;
        a.expire(now);
        a.lease.clone()
    }
}

/// The next fencing token, as the Redis scripts draw it (`scripts::Create`): one above the
/// last, or the store's clock in ms if that is higher.
fn next_epoch(last: u64, hub: &Inner) -> u64 {
    (last + 1).max(hub.now_ms())
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.born_ms + Instant::now().saturating_duration_since(self.born).as_millis() as u64
    }

    fn now_us(&self) -> u64 {
        self.born_ms * 1000 + Instant::now().saturating_duration_since(self.born).as_micros() as u64
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("in-memory store is down".into()));
        }
        Ok(())
    }

    /// Runs `f` on the state with every expiry applied, when the store is up.
    fn with<T>(&self, agent: &str, f: impl FnOnce(&mut Agent, &Self) -> T) -> Result<T, StoreError> {
        self.up()?;
        let now = Instant::now();
        let mut st = crate::sync::lock(&self.state);
        let a = st.agents.entry(agent.to_owned()).or_default();
        a.expire(now);
        let out = f(a, self);
        if a.session.is_none() && a.lease.is_none() && a.op.is_none() && a.events.is_empty() {
            st.agents.remove(agent);
        }
        Ok(out)
    }

    fn announce(&self, change: Change) {
        // No follower is not an error, as with PUBLISH to a channel nobody follows.
        let _ = self.changes.send(change);
    }
}

/// One replica's connection to a [`MemoryHub`].
pub struct MemoryStore {
    hub: Arc<Inner>,
    replica: Arc<str>,
    /// The gateway's namespace with a `:` after it, or nothing (as Redis's keys).
    namespace: Arc<str>,
    /// This replica's identity once registered, shared by every gateway's store.
    identity: Arc<std::sync::OnceLock<ReplicaIdentity>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// The agent's entry in the hub: its gateway's namespace and work number.
    fn key(&self, agent: &str) -> String {
        format!("{}{agent}", self.namespace)
    }

    /// One of this gateway's agents, from a hub entry (`None`: another gateway's).
    fn own<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&*self.namespace).filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
    }

    fn token(&self, epoch: u64) -> String {
        format!("{} {epoch}", self.replica)
    }

    /// [`SharedStore::index_agent`] of an agent already named by its key.
    fn index_key(&self, key: &str) {
        if self.hub.up().is_ok() {
            let now = self.hub.now_ms();
            crate::sync::lock(&self.hub.state).index.insert(key.to_owned(), now);
        }
    }

    /// `ACQUIRE`: the lease if free or this replica's, or still `expected`'s and not taken
    /// within the last lease (`scripts::Acquire`).
    fn acquire_from(&self, agent: &str, expected: Option<&str>) -> Result<Lease, StoreError> {
        let agent = &self.key(agent);
        let lease_ms = self.hub.lease_ttl.as_millis() as u64;
        self.hub.with(agent, |a, hub| {
            if let Some(cur) = &a.lease {
                let parsed = super::parse_lease(cur.as_bytes());
                if parsed.map(|(h, _)| h) != Some(self.replica.as_bytes()) {
                    if Some(cur.as_str()) != expected {
                        return Lease::Taken;
                    }
                    // Lua's numbers are doubles: an epoch past u64 is a large number too.
                    let at = parsed.and_then(|(_, e)| std::str::from_utf8(e).ok()?.parse::<f64>().ok());
                    let now = hub.now_ms() as f64;
                    if at.is_some_and(|at| at > now - lease_ms as f64 && at <= now) {
                        return Lease::Taken;
                    }
                }
            }
            let Some(h) = a.session.as_mut().filter(|h| h.state == RecordState::Active) else {
                a.lease = None;
                return Lease::Absent;
            };
            h.epoch = next_epoch(h.epoch, hub);
            let epoch = h.epoch;
            a.lease = Some(self.token(epoch));
            Lease::Held(epoch)
        })
    }
}

fn record(h: &Hash) -> Record {
    Record {
        sid: h.sid.clone(),
        epoch: h.epoch,
        guid: h.guid.clone(),
        cookies: h.cookies.clone(),
        answer: h.answer.clone(),
        resumable: h.resumable,
        conf: h.conf.clone(),
        confv: h.confv,
        state: h.state,
        since: h.since,
        tenant: h.tenant.clone(),
    }
}

#[async_trait::async_trait]
impl Backend for MemoryStore {
    fn replica(&self) -> &str {
        &self.replica
    }
    fn for_gateway(self: Arc<Self>, namespace: &str) -> Arc<dyn SharedStore> {
        if namespace.is_empty() {
            return self;
        }
        Arc::new(Self {
            hub: self.hub.clone(),
            replica: self.replica.clone(),
            namespace: format!("{namespace}:").into(),
            identity: self.identity.clone(),
        })
    }
    fn lease_ttl(&self) -> Duration {
        self.hub.lease_ttl
    }
    async fn connect(&self) -> Result<(), StoreError> {
        self.hub.up()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.hub.up()
    }
    fn status(&self) -> super::StoreStatus {
        super::StoreStatus { mode: "memory", connected: self.hub.up().is_ok(), ..Default::default() }
    }
}

#[async_trait::async_trait]
impl Records for MemoryStore {
    async fn load(&self, agent: &str) -> Result<Option<Record>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, _| a.session.as_ref().map(record))
    }
    async fn create(&self, agent: &str, r: &NewRecord<'_>, mode: CreateMode) -> Result<u64, StoreError> {
        let agent = &self.key(agent);
        let epoch = self.hub.with(agent, |a, hub| {
            if mode == CreateMode::Restore && a.session.is_some() {
                return 0;
            }
            let epoch = next_epoch(a.session.as_ref().map_or(0, |h| h.epoch), hub);
            if mode == CreateMode::SignIn {
                a.clear_events();
            }
            a.session = Some(Hash {
                sid: r.sid.to_owned(),
                epoch,
                guid: r.guid.to_owned(),
                cookies: r.cookies.to_vec(),
                answer: Bytes::copy_from_slice(r.answer),
                resumable: r.resumable,
                conf: r.conf.to_owned(),
                confv: 1,
                activity_ms: hub.now_ms(),
                qcursor: 0,
                state: RecordState::Active,
                auth: None,
                last_append: None,
                expires: None,
                since: r.since,
                tenant: r.tenant.filter(|t| super::valid_tenant(t)).map(str::to_owned),
            });
            a.lease = Some(self.token(epoch));
            epoch
        })?;
        if epoch > 0 {
            self.index_key(agent);
            self.hub.announce(Change::Session(agent.into()));
        }
        Ok(epoch)
    }
    async fn write_auth(&self, agent: &str, w: &AuthWrite<'_>) -> Result<AuthWritten, StoreError> {
        let agent = &self.key(agent);
        let written = self.hub.with(agent, |a, _| {
            let Some(h) = a.live_hash(w.sid).filter(|h| h.state == RecordState::Active) else {
                return AuthWritten::Gone;
            };
            match w.poller {
                Some((epoch, seq)) => {
                    if h.epoch != epoch || h.auth.is_some_and(|(e, n)| e == epoch && seq <= n) {
                        return AuthWritten::Stale;
                    }
                    h.auth = Some((epoch, seq));
                }
                None if h.guid != w.replied_to => return AuthWritten::Stale,
                None => {}
            }
            h.guid = w.guid.to_owned();
            h.cookies = w.cookies.to_vec();
            AuthWritten::Written
        })?;
        if written == AuthWritten::Written {
            self.hub.announce(Change::Session(agent.into()));
        }
        Ok(written)
    }
    async fn write_conf(&self, agent: &str, sid: &str, version: u64, conf: &str) -> Result<ConfWrite, StoreError> {
        let agent = &self.key(agent);
        let written = self.hub.with(agent, |a, _| {
            let Some(h) = a.live_hash(sid) else { return ConfWrite::Gone };
            if h.confv != version {
                return ConfWrite::Conflict { version: h.confv, conf: h.conf.clone() };
            }
            h.confv += 1;
            h.conf = conf.to_owned();
            ConfWrite::Written(h.confv)
        })?;
        if matches!(written, ConfWrite::Written(_)) {
            self.hub.announce(Change::Session(agent.into()));
        }
        Ok(written)
    }
    async fn end(&self, agent: &str, sid: &str, how: EndAs<'_>) -> Result<EndOutcome, StoreError> {
        let agent = &self.key(agent);
        let ended = self.hub.with(agent, |a, hub| {
            let Some(h) = a.session.as_mut().filter(|h| h.sid == sid) else { return EndOutcome::Gone };
            match how {
                EndAs::SignedOut => {
                    h.state = RecordState::Out;
                    h.guid = "-".into();
                    h.cookies.clear();
                    h.expires = Some(Instant::now() + hub.tombstone);
                    a.lease = None;
                    a.clear_events();
                }
                EndAs::Lost { reason, refused } => {
                    if h.state != RecordState::Active {
                        return EndOutcome::Gone;
                    }
                    if refused.is_some_and(|g| g != h.guid) {
                        return EndOutcome::GuidReplaced;
                    }
                    h.state = RecordState::Lost(reason);
                    a.lease = None;
                }
            }
            EndOutcome::Ended
        })?;
        if ended == EndOutcome::Ended {
            self.hub.announce(Change::Session(agent.into()));
            if self.hub.up().is_ok() {
                crate::sync::lock(&self.hub.state).index.remove(agent);
            }
        }
        Ok(ended)
    }
    async fn touch(&self, agent: &str, sid: &str) -> Result<(), StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, hub| {
            if let Some(h) = a.live_hash(sid) {
                h.activity_ms = hub.now_ms();
            }
        })
    }
    async fn idle_for(&self, agent: &str, sid: &str) -> Result<Option<Duration>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, hub| {
            a.live_hash(sid).map(|h| Duration::from_millis(hub.now_ms().saturating_sub(h.activity_ms)))
        })
    }
}

#[async_trait::async_trait]
impl Events for MemoryStore {
    async fn append(&self, agent: &str, e: &NewEvent<'_>) -> Result<Option<u64>, StoreError> {
        let agent = &self.key(agent);
        // The id, and whether it was written now (an append sent again is not announced again).
        let id = self.hub.with(agent, |a, hub| {
            let h = a.live_hash(e.sid).filter(|h| h.state != RecordState::Out)?;
            if let Some((_, became)) = h.last_append.filter(|(given, _)| *given == e.id) {
                return Some((became, false));
            }
            // XADD with the given id if above the stream's last, else Redis's own (`*`).
            let id = if e.id > a.last_id { e.id } else { (hub.now_ms() << SEQ_BITS).max(a.last_id + 1) };
            if let Some(h) = a.session.as_mut() {
                h.last_append = Some((e.id, id));
            }
            a.last_id = id;
            a.events.push_back((id, e.kind.to_owned(), Bytes::copy_from_slice(e.data)));
            let excess = a.events.len().saturating_sub(e.cap);
            a.events.drain(..excess);
            Some((id, true))
        })?;
        if id.is_some_and(|(_, written)| written) {
            self.hub.announce(Change::Events(agent.into()));
        }
        Ok(id.map(|(id, _)| id))
    }
    async fn events_after(&self, agent: &str, after: u64, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, _| a.events.iter().filter(|(id, _, _)| *id > after).take(count).cloned().collect())
    }
    async fn latest_events(&self, agent: &str, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, _| {
            let skip = a.events.len().saturating_sub(count);
            a.events.iter().skip(skip).cloned().collect()
        })
    }
    async fn take_next(&self, agent: &str, sid: &str) -> Result<Option<StreamEvent>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, _| {
            let cursor = a.live_hash(sid)?.qcursor;
            let next = a.events.iter().find(|(id, _, _)| *id > cursor).cloned()?;
            if let Some(h) = a.session.as_mut() {
                h.qcursor = next.0;
            }
            Some(next)
        })
    }
}

#[async_trait::async_trait]
impl Leases for MemoryStore {
    async fn acquire(&self, agent: &str) -> Result<Lease, StoreError> {
        self.acquire_from(agent, None)
    }
    async fn take_stale(&self, agent: &str) -> Result<Lease, StoreError> {
        let key = self.key(agent);
        let holder = self.hub.with(&key, |a, _| a.lease.clone())?;
        self.acquire_from(agent, holder.as_deref())
    }
    async fn check(&self, held: &[(&str, u64)]) -> Result<Vec<Lease>, StoreError> {
        held.iter()
            .map(|(agent, epoch)| {
                self.hub.with(&self.key(agent), |a, _| {
                    super::lease_verdict(a.lease.as_deref().map(str::as_bytes), &self.replica, *epoch)
                })
            })
            .collect()
    }
    async fn release(&self, agent: &str, epoch: u64) -> Result<(), StoreError> {
        let agent = &self.key(agent);
        let token = self.token(epoch);
        self.hub.with(agent, |a, _| {
            if a.lease.as_ref().is_some_and(|t| *t == token) {
                a.lease = None;
            }
        })?;
        // Mark the agent as needing a poller now rather than after a lease's lifetime (and as
        // stale for no longer than that: the replica it falls to takes it first).
        let score = self.hub.now_ms().saturating_sub(self.hub.lease_ttl.as_millis() as u64);
        crate::sync::lock(&self.hub.state).index.insert(agent.to_owned(), score);
        Ok(())
    }
    async fn lock_op(&self, agent: &str, ttl: Duration) -> Result<Option<OpLock>, StoreError> {
        let agent = &self.key(agent);
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.hub.with(agent, |a, _| {
            if a.op.is_some() {
                return None;
            }
            a.op = Some((token.clone(), Instant::now() + ttl));
            Some(OpLock(token))
        })
    }
    async fn unlock_op(&self, agent: &str, lock: &OpLock) {
        let agent = &self.key(agent);
        // Fails only while the store is down; the lock then expires by itself.
        let _ = self.hub.with(agent, |a, _| {
            if a.op.as_ref().is_some_and(|(t, _)| *t == lock.0) {
                a.op = None;
            }
        });
    }
    async fn lease_holder(&self, agent: &str) -> Result<Option<String>, StoreError> {
        let agent = &self.key(agent);
        self.hub.with(agent, |a, _| a.lease.as_ref().and_then(|t| t.split_once(' ')).map(|(r, _)| r.to_owned()))
    }
}

#[async_trait::async_trait]
impl Journal for MemoryStore {
    async fn journal(&self, list: JournalList, entry: &[u8], replaces: Option<&[u8]>) -> Result<(), StoreError> {
        self.hub.up()?;
        if entry.len() > JOURNAL_ENTRY_MAX_BYTES {
            return Err(StoreError::Malformed(format!("journal entry of {} bytes", entry.len())));
        }
        let now = Instant::now();
        let mut st = crate::sync::lock(&self.hub.state);
        let (entries, expires) = st.journals.entry(self.key(list.key())).or_insert_with(|| (VecDeque::new(), now));
        if *expires <= now {
            entries.clear();
        }
        if let Some(i) = replaces.and_then(|old| entries.iter().position(|e| e == old)) {
            entries.remove(i);
        }
        entries.push_front(entry.to_vec());
        entries.truncate(JOURNAL_MAX);
        *expires = now + JOURNAL_AGE;
        Ok(())
    }

    async fn journal_entries(&self, list: JournalList, max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.hub.up()?;
        let now = Instant::now();
        let st = crate::sync::lock(&self.hub.state);
        Ok(match st.journals.get(&self.key(list.key())) {
            Some((list, expires)) if *expires > now => list.iter().take(max.min(JOURNAL_MAX)).cloned().collect(),
            _ => Vec::new(),
        })
    }
}

#[async_trait::async_trait]
impl Membership for MemoryStore {
    async fn index_agents(&self, agents: &[&str]) {
        if self.hub.up().is_ok() {
            let now = self.hub.now_ms();
            let mut st = crate::sync::lock(&self.hub.state);
            for agent in agents {
                st.index.insert(self.key(agent), now);
            }
        }
    }
    async fn unindex_agent(&self, agent: &str) {
        let agent = &self.key(agent);
        if self.hub.up().is_ok() {
            crate::sync::lock(&self.hub.state).index.remove(agent);
        }
    }
    async fn stale_agents(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.stale_for_longer(Duration::ZERO, max).await
    }
    async fn live_replicas(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.hub.up()?;
        let since = self.hub.now_ms().saturating_sub(self.hub.lease_ttl.as_millis() as u64 * 2 / 3);
        let st = crate::sync::lock(&self.hub.state);
        let mut live: Vec<(u64, &String)> =
            st.replicas.iter().filter(|(_, at)| **at >= since).map(|(r, at)| (*at, r)).collect();
        live.sort();
        Ok(live.into_iter().take(max).map(|(_, r)| r.clone()).collect())
    }
    async fn stale_for_longer(&self, more: Duration, max: usize) -> Result<Vec<String>, StoreError> {
        self.hub.up()?;
        let age = (self.hub.lease_ttl + more).as_millis() as u64;
        let before = self.hub.now_ms().saturating_sub(age);
        let st = crate::sync::lock(&self.hub.state);
        let mut stale: Vec<(u64, &str)> =
            st.index.iter().filter(|(_, s)| **s <= before).filter_map(|(a, s)| Some((*s, self.own(a)?))).collect();
        stale.sort();
        Ok(stale.into_iter().take(max).map(|(_, a)| a.to_owned()).collect())
    }
    async fn indexed_agents(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.hub.up()?;
        let st = crate::sync::lock(&self.hub.state);
        let mut all: Vec<(u64, &str)> = st.index.iter().filter_map(|(a, s)| Some((*s, self.own(a)?))).collect();
        all.sort();
        Ok(all.into_iter().take(max).map(|(_, a)| a.to_owned()).collect())
    }
    async fn heartbeat(&self) -> Result<(), StoreError> {
        self.hub.up()?;
        let now = self.hub.now_ms();
        let mut st = crate::sync::lock(&self.hub.state);
        st.replicas.insert(self.replica.to_string(), now);
        if let Some(me) = self.identity.get() {
            let expires = now + u64::from(REPLICA_SILENT_LEASES) * self.hub.lease_ttl.as_millis() as u64;
            st.identities.insert(self.replica.to_string(), (me.to_stored(), expires));
        }
        Ok(())
    }
    async fn leave(&self) -> Result<usize, StoreError> {
        self.hub.up()?;
        let silent_ms = u64::from(REPLICA_SILENT_LEASES) * self.hub.lease_ttl.as_millis() as u64;
        let alive_since = self.hub.now_ms().saturating_sub(silent_ms);
        let mut st = crate::sync::lock(&self.hub.state);
        st.replicas.remove(&*self.replica);
        st.replicas.retain(|_, at| *at > alive_since);
        Ok(st.replicas.len())
    }
    fn register(&self, me: ReplicaIdentity) {
        let _ = self.identity.set(me);
    }
    async fn replica_identity(&self, replica: &str) -> Result<Option<ReplicaIdentity>, StoreError> {
        self.hub.up()?;
        let now = self.hub.now_ms();
        let mut st = crate::sync::lock(&self.hub.state);
        // Expired entries go on access, as Redis's do.
        st.identities.retain(|_, (_, expires)| *expires > now);
        match st.identities.get(replica) {
            None => Ok(None),
            Some((stored, _)) => ReplicaIdentity::from_stored(replica, stored.as_bytes())
                .map(Some)
                .ok_or_else(|| StoreError::Malformed("replica identity fails validation".into())),
        }
    }
}

#[async_trait::async_trait]
impl Buckets for MemoryStore {
    async fn gcra(&self, bucket: Bucket<'_>, interval: Duration, burst: u32, want: u32) -> Result<Gcra, StoreError> {
        self.hub.up()?;
        let key = match bucket.scope {
            Scope::Agent => format!("a:{}/{}:{}", bucket.namespace, bucket.key, bucket.limit),
            Scope::Tenant => format!("t:{}/{}:{}", bucket.namespace, bucket.key, bucket.limit),
            Scope::Gateway => format!("gw:{}:{}", bucket.key, bucket.limit),
            Scope::Global => format!("g:{}", bucket.limit),
        };
        let (now, instant) = (self.hub.now_us(), Instant::now());
        let interval = interval.as_micros().max(1) as u64;
        let tolerance = interval * u64::from(burst);
        let mut st = crate::sync::lock(&self.hub.state);
        st.limits.retain(|_, (_, expires)| *expires > instant);
        let tat = st.limits.get(&key).map_or(now, |(t, _)| *t).max(now);
        // As the Redis script: as many of `want` as the bucket holds, if it holds one.
        let available = (now + tolerance).saturating_sub(tat) / interval;
        if available < 1 {
            return Ok(Err(Duration::from_micros((tat + interval).saturating_sub(tolerance).saturating_sub(now))));
        }
        let taken = u64::from(want.max(1)).min(available);
        let ttl = Duration::from_millis(tolerance.div_ceil(1000) + 1000);
        st.limits.insert(key, (tat + taken * interval, instant + ttl));
        Ok(Ok(Grant { taken: taken as u32, remaining: (available - taken) as u32 }))
    }
}

#[async_trait::async_trait]
impl ChangeFeed for MemoryStore {
    async fn follow(self: Arc<Self>, mut on: Box<dyn FnMut(Change) + Send>) {
        let mut rx = self.hub.changes.subscribe();
        on(Change::Resync);
        loop {
            match rx.recv().await {
                // Another gateway's agents are on another channel.
                Ok(Change::Session(key)) => {
                    if let Some(agent) = self.own(&key) {
                        on(Change::Session(agent.to_owned()));
                    }
                }
                Ok(Change::Events(key)) => {
                    if let Some(agent) = self.own(&key) {
                        on(Change::Events(agent.to_owned()));
                    }
                }
                Ok(change) => on(change),
                Err(broadcast::error::RecvError::Lagged(_)) => on(Change::Resync),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

impl MemoryStore {
    /// Runs `f` on endpoint `endpoint`'s deliveries at the store's `now` (ms), when the store is up.
    fn with_wh<T>(&self, endpoint: &str, f: impl FnOnce(&mut Wh, u64) -> T) -> Result<T, StoreError> {
        self.hub.up()?;
        let now = self.hub.now_ms();
        let mut st = crate::sync::lock(&self.hub.state);
        Ok(f(st.webhooks.entry(endpoint.to_owned()).or_default(), now))
    }
}

/// The same operations as the `WH_*` scripts (`scripts.rs`), step by step.
#[async_trait::async_trait]
impl Deliveries for MemoryStore {
    async fn next_seq(&self, lane: &str) -> Result<u64, StoreError> {
        self.hub.up()?;
        let now = self.hub.now_ms();
        let ttl = super::deliveries::SEQ_AGE.as_millis() as u64;
        let mut st = crate::sync::lock(&self.hub.state);
        let e = st.wh_seqs.entry(lane.to_owned()).or_insert((0, 0));
        if e.1 <= now {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = now + ttl;
        Ok(e.0)
    }

    async fn push(
        &self,
        endpoint: &str,
        lane: &str,
        at_ms: u64,
        message: &[u8],
        bound: super::deliveries::Bound,
    ) -> Result<bool, StoreError> {
        self.with_wh(endpoint, |w, now| {
            let id = message.iter().position(|b| *b == b' ').map(|i| &message[..=i]);
            let last = w.lanes.get(lane).and_then(|l| l.back());
            if id.zip(last).is_some_and(|(id, last)| last.starts_with(id)) {
                return true;
            }
            if w.pending >= bound.events as u64 || w.bytes + message.len() as u64 > bound.bytes as u64 {
                return false;
            }
            w.append(lane, at_ms, message.to_vec(), now);
            true
        })
    }

    async fn claim(&self, endpoint: &str, max: usize, hold: Duration) -> Result<Vec<Claimed>, StoreError> {
        let replica = self.replica.to_string();
        self.with_wh(endpoint, |w, now| {
            let mut due: Vec<(u64, String)> =
                w.due.iter().filter(|(_, at)| **at <= now).map(|(l, at)| (*at, l.clone())).collect();
            // Redis's zset order: by score, then by member.
            due.sort();
            let mut out = Vec::new();
            for (_, lane) in due.into_iter().take(max) {
                match w.lanes.get(&lane).and_then(|l| l.front()).cloned() {
                    Some(head) => {
                        w.due.insert(lane.clone(), now + hold.as_millis() as u64);
                        w.claim.insert(lane.clone(), replica.clone());
                        let attempts = w.tries.get(&lane).copied().unwrap_or(0);
                        out.push(Claimed { lane, message: head, attempts });
                    }
                    None => {
                        w.due.remove(&lane);
                        w.heads.remove(&lane);
                        w.claim.remove(&lane);
                        w.tries.remove(&lane);
                    }
                }
            }
            out
        })
    }

    async fn hold(&self, endpoint: &str, lanes: &[&str], hold: Duration) -> Result<(), StoreError> {
        self.with_wh(endpoint, |w, now| {
            for lane in lanes {
                if w.claim.get(*lane).map(String::as_str) == Some(&*self.replica) && w.due.contains_key(*lane) {
                    w.due.insert((*lane).to_owned(), now + hold.as_millis() as u64);
                }
            }
        })
    }

    async fn settle(&self, endpoint: &str, lane: &str, id: &str, how: Settlement<'_>) -> Result<Settled, StoreError> {
        self.with_wh(endpoint, |w, now| {
            let mine = w.claim.get(lane).map(String::as_str) == Some(&*self.replica);
            let is_head = w.lanes.get(lane).and_then(|l| l.front()).is_some_and(|h| {
                h == id.as_bytes() || (h.starts_with(id.as_bytes()) && h.get(id.len()) == Some(&b' '))
            });
            if !is_head {
                if mine {
                    w.claim.remove(lane);
                    w.next_head(lane, now);
                }
                return Settled::NotHead;
            }
            match how {
                Settlement::Retry { after, counted } => {
                    if !mine {
                        return Settled::NotHead;
                    }
                    if counted {
                        *w.tries.entry(lane.to_owned()).or_insert(0) += 1;
                    }
                    w.claim.remove(lane);
                    w.due.insert(lane.to_owned(), now + after.as_millis() as u64);
                    return Settled::Done;
                }
                Settlement::GiveUp { .. } if !mine => return Settled::NotHead,
                _ => {}
            }
            if let Some(popped) = w.lanes.get_mut(lane).and_then(VecDeque::pop_front) {
                w.bytes = w.bytes.saturating_sub(popped.len() as u64);
            }
            w.pending = w.pending.saturating_sub(1);
            w.tries.remove(lane);
            let mut evicted = false;
            if let Settlement::GiveUp { entry, max_failed } = how {
                if max_failed > 0 {
                    evicted = w.failed.len() >= max_failed;
                    w.failed.push_back(entry.to_vec());
                    while w.failed.len() > max_failed {
                        w.failed.pop_front();
                    }
                }
            }
            if mine {
                w.claim.remove(lane);
                w.next_head(lane, now);
            } else if w.lanes.get(lane).is_none_or(VecDeque::is_empty) {
                w.lanes.remove(lane);
                w.heads.remove(lane);
            }
            if evicted {
                Settled::Evicted
            } else {
                Settled::Done
            }
        })
    }

    async fn replay(&self, endpoint: &str, since_ms: u64) -> Result<usize, StoreError> {
        self.with_wh(endpoint, |w, now| {
            let all: Vec<Vec<u8>> = w.failed.drain(..).collect();
            let mut n = 0;
            for e in all {
                // As the script's pattern: `AT LANE ...\n MESSAGE`.
                let parsed = e.iter().position(|b| *b == b'\n').and_then(|nl| {
                    let head = std::str::from_utf8(&e[..nl]).ok()?;
                    let mut parts = head.splitn(3, ' ');
                    let at: u64 = parts.next().filter(|a| a.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()?;
                    let lane = parts.next().filter(|l| !l.is_empty())?.to_owned();
                    parts.next()?;
                    Some((at, lane, e[nl + 1..].to_vec()))
                });
                match parsed {
                    Some((at, lane, message)) if at >= since_ms => {
                        w.append(&lane, at, message, now);
                        n += 1;
                    }
                    Some(_) => w.failed.push_back(e),
                    None => {}
                }
            }
            n
        })
    }

    async fn summary(&self, endpoint: &str, recent: usize) -> Result<Summary, StoreError> {
        self.with_wh(endpoint, |w, _| Summary {
            pending: w.pending,
            oldest_ms: w.heads.values().min().copied(),
            next_due_ms: w.due.values().min().copied(),
            failed: w.failed.len() as u64,
            recent_failed: w.failed.iter().rev().take(recent.clamp(1, 100)).cloned().collect(),
            disabled: w.disabled.clone(),
        })
    }

    async fn set_disabled(&self, endpoint: &str, why: Option<&[u8]>) -> Result<(), StoreError> {
        self.with_wh(endpoint, |w, _| w.disabled = why.map(<[u8]>::to_vec))
    }
}
