//! The shared store: what replicas of ccgate share so that any replica can serve any agent
//! (session records, poller leases, event streams, sign-in locks, rate-limit buckets, the
//! change channel). [`SharedStore`] is the seam: [`redis::RedisStore`] is the one production
//! runs, [`memory::MemoryHub`] the in-process one the session layer's unit tests run under
//! tokio's paused clock; one contract suite (`tests/it/store_contract.rs`) runs the same cases
//! against both, so the in-memory store cannot drift from the Lua scripts. What the records
//! mean for a session is `session::link` and `session::cluster`; the limits' use is
//! `ops::limits`. docs/redis.md lists every key.

mod connection;
pub mod deliveries;
pub mod memory;
pub mod redis;
mod scripts;

pub use connection::{Failover, StoreStatus};
pub use deliveries::Deliveries;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Scope;
use crate::gateway::wire::{valid_cookie_jar, valid_guid, MAX_UPSTREAM_BODY};
use crate::labels::LossReason;

/// Why a store operation failed. Never carries a key's value (Guids live there).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or did not answer in time.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something ccgate cannot use (a record written by another version?).
    #[error("shared store answered garbage: {0}")]
    Malformed(String),
}

/// A change another replica made, as announced on the change channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The subscription was (re)established: anything may have changed meanwhile.
    Resync,
    /// `agent`'s session record changed (sign-in, Guid, conference, owner, end).
    Session(String),
    /// `agent` has new events.
    Events(String),
}

/// One agent's session as Redis holds it. Secret fields stay inside this process.
pub struct Record {
    pub sid: String,
    pub epoch: u64,
    pub guid: String,
    pub cookies: Vec<String>,
    pub answer: Bytes,
    pub resumable: bool,
    /// The conference state as JSON (parsed by the session layer).
    pub conf: String,
    pub confv: u64,
    pub state: RecordState,
    /// When the agent was signed in (Unix ms, the signing replica's clock); 0 when unknown
    /// (a record written by an older ccgate).
    pub since: u64,
    /// The tenant the signing-in token named; `None` also in records of older ccgate.
    pub tenant: Option<String>,
}

/// Where a session record stands, as the `state` field spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// `active`: signed in and polled.
    Active,
    /// `out`: signed out (a tombstone).
    Out,
    /// `lost:REASON`: the gateway ended it.
    Lost(LossReason),
}

impl RecordState {
    /// The field's text: what the Lua scripts compare against.
    pub(crate) fn as_field(self) -> String {
        match self {
            Self::Active => "active".into(),
            Self::Out => "out".into(),
            Self::Lost(r) => format!("lost:{}", r.as_str()),
        }
    }

    pub(crate) fn parse(field: &str) -> Option<Self> {
        match field {
            "active" => Some(Self::Active),
            "out" => Some(Self::Out),
            _ => field.strip_prefix("lost:").and_then(LossReason::from_label).map(Self::Lost),
        }
    }
}

/// Bounds on what a session record may hold, checked whenever one is read: a record is input
/// from the network like any other (another version of ccgate, an operator, or anyone who
/// can write to Redis may have put it there).
/// Session ids are the simple form of a UUID (32 hex digits); a little room for other forms.
const MAX_SID_LEN: usize = 64;
/// The conference state's JSON is a few dozen bytes.
const MAX_CONF_LEN: usize = 1024;
/// An event's type: a gateway event name (`AgentConf_RequestSuccess`) or ccgate's own.
const MAX_EVENT_KIND_LEN: usize = 128;

pub(crate) fn valid_sid(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= MAX_SID_LEN && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A tenant as a record may hold it: what a token's claim held, bounded, printable, no space.
pub(crate) fn valid_tenant(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TENANT_LEN && t.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

/// A tenant claim's value is a short name (`acme`, a UUID).
const MAX_TENANT_LEN: usize = 128;

pub(crate) fn valid_event_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_EVENT_KIND_LEN
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("sid", &self.sid)
            .field("epoch", &self.epoch)
            .field("state", &self.state)
            .finish()
    }
}

/// What a new session record starts with.
pub struct NewRecord<'a> {
    pub sid: &'a str,
    pub guid: &'a str,
    pub cookies: &'a [String],
    pub answer: &'a [u8],
    pub resumable: bool,
    pub conf: &'a str,
    /// When the agent was signed in (Unix ms).
    pub since: u64,
    pub tenant: Option<&'a str>,
}

/// Whether [`SharedStore::create`] records a new sign-in or puts back a session the store lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// A new sign-in: replaces whatever was there (and its events).
    SignIn,
    /// Puts back a live session the store lost, only if no record is there (a restarted,
    /// empty Redis); keeps any events.
    Restore,
}

/// A new Guid and cookies for [`SharedStore::write_auth`].
pub struct AuthWrite<'a> {
    pub sid: &'a str,
    /// The Guid the gateway's answer replied to.
    pub replied_to: &'a str,
    pub guid: &'a str,
    pub cookies: &'a [String],
    /// Written by the lease holder: its epoch and this write's number (see `WRITE_AUTH`);
    /// `None` from any other replica.
    pub poller: Option<(u64, u64)>,
}

/// What [`SharedStore::write_auth`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthWritten {
    Written,
    /// Another replica's newer Guid is there, or the writer no longer holds the lease.
    Stale,
    /// No active record of that session.
    Gone,
}

/// How a session ends in the store ([`SharedStore::end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndAs<'a> {
    /// Signed out: the record becomes a tombstone for a while, the lease and events go.
    SignedOut,
    /// The gateway ended it: the record stays (every replica answers "sign in again").
    /// `refused`: only if the record still holds that Guid.
    Lost { reason: LossReason, refused: Option<&'a str> },
}

/// What [`Records::end`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    Ended,
    /// No such session, or it had ended already.
    Gone,
    /// The refused Guid had been replaced meanwhile: the refusal said nothing about the
    /// session's current one.
    GuidReplaced,
}

/// A new event for [`SharedStore::append`].
pub struct NewEvent<'a> {
    pub sid: &'a str,
    /// The stream's length bound (the event buffer's capacity).
    pub cap: usize,
    /// The id this replica gave it (see [`provisional_id`]): kept if above the stream's
    /// newest, and what makes the append idempotent.
    pub id: u64,
    pub kind: &'a str,
    pub data: &'a [u8],
}

/// A cluster-wide sign-in/sign-out lock on one agent, held until released or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLock(pub(crate) String);

/// A rate limit's bucket: which limit, its scope, and the key within the scope (the agent,
/// the tenant or the gateway's name; empty for `global`).
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    pub limit: &'a str,
    pub scope: Scope,
    pub key: &'a str,
    /// The agent's gateway's namespace (see `GatewayConfig::namespace`): agent and tenant
    /// buckets of two gateways are two buckets.
    pub namespace: &'a str,
}

/// Tokens a GCRA take granted: how many of those asked for (at least one), and how many the
/// bucket holds after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub taken: u32,
    pub remaining: u32,
}

/// One GCRA decision: `Ok(grant)` or, when not even one token is there, `Err(wait)`.
pub type Gcra = Result<Grant, Duration>;

/// The result of a lease operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Ours, with this epoch.
    Held(u64),
    /// Another replica's.
    Taken,
    /// Nobody's; for `acquire`, also: no active session to poll.
    Absent,
}

/// A conference-state write: done (new version), or someone else's write came first.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfWrite {
    Written(u64),
    Conflict { version: u64, conf: String },
    Gone,
}

/// An event read from a stream: its packed id, type and JSON.
pub type StreamEvent = (u64, String, Bytes);

/// How long a signed-out session's record stays as a tombstone: longer than any replica can
/// go without hearing of the sign-out, short enough to cost nothing.
pub const TOMBSTONE: Duration = Duration::from_secs(600);

/// Stream ids (`ms-seq`) packed into the u64 event ids apps see: ms in the high bits, the
/// sequence in the low 20. Ids stay increasing, fit `Last-Event-ID`, and mean the same on
/// every replica.
pub(crate) const SEQ_BITS: u32 = 20;

pub fn pack_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq < 1 << SEQ_BITS && ms < 1 << (64 - SEQ_BITS)).then_some(ms << SEQ_BITS | seq)
}

pub fn unpack_id(id: u64) -> String {
    format!("{}-{}", id >> SEQ_BITS, id & ((1 << SEQ_BITS) - 1))
}

/// An id for a new event, after `last`, from this clock: Redis takes it as the event's id if
/// it is still above the stream's newest, and it makes an append idempotent.
pub fn provisional_id(last: u64) -> u64 {
    let now_ms = crate::clock::unix_ms();
    (now_ms << SEQ_BITS).max(last + 1)
}

/// The operations replicas share, each atomic on one agent's data (a Lua script on Redis, one
/// critical section in memory), as the roles below; a consumer asks for the role it uses
/// (`ops::limits` only for [`Buckets`]), the replication side for the whole store.
/// Implementations validate what they read like network input.
pub trait SharedStore:
    Backend + Records + Events + Leases + Membership + Buckets + ChangeFeed + Journal + Deliveries
{
}

impl<T: Backend + Records + Events + Leases + Membership + Buckets + ChangeFeed + Journal + Deliveries + ?Sized>
    SharedStore for T
{
}

/// The store itself: this replica's name in it, the gateway namespaces, the connection and its health.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// This replica's name in leases: unique per process start.
    fn replica(&self) -> &str;
    /// The same store for the agents of another gateway: the same connection, replica name
    /// and replica set, the gateway's own agents (keys, index, change channel). `namespace`:
    /// `GatewayConfig::namespace` (empty: this store's own, the default gateway's).
    fn for_gateway(self: Arc<Self>, namespace: &str) -> Arc<dyn SharedStore>;
    /// How long a poller lease lives without renewal.
    fn lease_ttl(&self) -> Duration;
    /// Connects once (the readiness probe retries until it succeeds).
    async fn connect(&self) -> Result<(), StoreError>;
    /// Answers when the store takes writes (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// The store's mode, current primary and last failover, for operators.
    fn status(&self) -> StoreStatus;
}

/// Session records: the one copy of each agent's session that every replica reads.
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    async fn load(&self, agent: &str) -> Result<Option<Record>, StoreError>;
    /// Stores a session with this replica holding its lease; returns the epoch, or 0 when
    /// `Restore` found a record there.
    async fn create(&self, agent: &str, r: &NewRecord<'_>, mode: CreateMode) -> Result<u64, StoreError>;
    async fn write_auth(&self, agent: &str, w: &AuthWrite<'_>) -> Result<AuthWritten, StoreError>;
    /// Compare-and-set of the conference state on its version.
    async fn write_conf(&self, agent: &str, sid: &str, version: u64, conf: &str) -> Result<ConfWrite, StoreError>;
    async fn end(&self, agent: &str, sid: &str, how: EndAs<'_>) -> Result<EndOutcome, StoreError>;
    /// Records app activity now (the store's clock).
    async fn touch(&self, agent: &str, sid: &str) -> Result<(), StoreError>;
    /// How long the agent's apps have been silent on every replica; `None` if the session is gone.
    async fn idle_for(&self, agent: &str, sid: &str) -> Result<Option<Duration>, StoreError>;
}

/// Each agent's event stream: appended by the poller, read by every replica's apps.
#[async_trait::async_trait]
pub trait Events: Send + Sync {
    /// Appends an event (idempotent on its id); its id in the stream, or `None` when the
    /// session is gone.
    async fn append(&self, agent: &str, e: &NewEvent<'_>) -> Result<Option<u64>, StoreError>;
    /// The events after `after` (0: from the start), at most `count`, oldest first.
    async fn events_after(&self, agent: &str, after: u64, count: usize) -> Result<Vec<StreamEvent>, StoreError>;
    /// The newest `count` events, oldest first.
    async fn latest_events(&self, agent: &str, count: usize) -> Result<Vec<StreamEvent>, StoreError>;
    /// The pass-through queue's next event, taken off the shared cursor.
    async fn take_next(&self, agent: &str, sid: &str) -> Result<Option<StreamEvent>, StoreError>;
}

/// Who polls an agent (the lease, fenced by its epoch) and who signs it in or out (the operation lock).
///
/// A lease does not expire by itself (issue 39): renewing one key per agent every third of a
/// lease made the idle fleet's Redis load 18 commands per agent per lease. A holder shows it
/// is alive by refreshing its agents' entries in the index, all of them in one command per
/// round ([`Membership::index_agents`]); an agent whose entry has not been refreshed for a
/// lease is stale ([`Membership::stale_agents`]) and another replica takes its lease from the
/// holder it names ([`Leases::take_stale`]). The holder reads all its leases back in one
/// command per round ([`Leases::check`]) and stops polling those it no longer holds.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Takes the lease of an active session nobody holds (or this replica holds under another
    /// epoch: a write the store lost), raising the epoch.
    async fn acquire(&self, agent: &str) -> Result<Lease, StoreError>;
    /// Takes the lease of an agent whose index entry went stale, from whoever holds it now
    /// (or nobody), raising the epoch; `Taken` if it changed hands meanwhile or was taken
    /// within the last lease (its new holder is alive, whatever an older read of the index
    /// said). A lease left by a session that is no longer active is removed (`Absent`).
    async fn take_stale(&self, agent: &str) -> Result<Lease, StoreError>;
    /// Whether each `(agent, epoch)` lease is still this replica's: `Held`, `Taken` (another
    /// replica's) or `Absent` (the store lost it, or the session ended). One answer each, in
    /// order.
    async fn check(&self, held: &[(&str, u64)]) -> Result<Vec<Lease>, StoreError>;
    /// [`Leases::check`] for one lease.
    async fn check_lease(&self, agent: &str, epoch: u64) -> Result<Lease, StoreError> {
        let mut v = self.check(&[(agent, epoch)]).await?;
        v.pop().ok_or_else(|| StoreError::Malformed("no answer for the lease".into()))
    }
    /// Gives the lease up and marks the agent as needing a poller now.
    async fn release(&self, agent: &str, epoch: u64) -> Result<(), StoreError>;
    /// The cluster-wide sign-in/sign-out lock of one agent: `Some` when taken.
    async fn lock_op(&self, agent: &str, ttl: Duration) -> Result<Option<OpLock>, StoreError>;
    /// Releases the lock if still held (one that cannot be released expires by itself).
    async fn unlock_op(&self, agent: &str, lock: &OpLock);
    /// The replica holding the agent's lease, if any.
    async fn lease_holder(&self, agent: &str) -> Result<Option<String>, StoreError>;
}

/// What a lease's value read back says to the replica `me` that holds it under `epoch`:
/// `Absent` also when it names `me` under another epoch (a failover lost this replica's last
/// lease write; it takes the lease again at once rather than standing down).
/// A value that is not `REPLICA EPOCH` (planted) is nobody's own: `Taken`, as the `ACQUIRE`
/// script sees it; the agent goes stale and is taken over.
pub(super) fn lease_verdict(value: Option<&[u8]>, me: &str, epoch: u64) -> Lease {
    let Some(v) = value else { return Lease::Absent };
    match parse_lease(v) {
        Some((holder, held)) if holder == me.as_bytes() => {
            if held == epoch.to_string().as_bytes() {
                Lease::Held(epoch)
            } else {
                Lease::Absent
            }
        }
        _ => Lease::Taken,
    }
}

/// A lease's value as the `ACQUIRE` script reads it (`^(%S+) (%d+)$`): the holder and the
/// epoch's digits; `None` for anything else.
pub(super) fn parse_lease(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = v.iter().position(|b| *b == b' ')?;
    let (holder, held) = (&v[..at], &v[at + 1..]);
    let ok = !holder.is_empty()
        && !holder.iter().any(u8::is_ascii_whitespace)
        && !held.is_empty()
        && held.iter().all(u8::is_ascii_digit);
    ok.then_some((holder, held))
}

/// How many lease lifetimes a replica may go without a heartbeat before the others count it
/// gone: a maintenance round runs every third of a lease, so this is nine missed rounds, well
/// past a GC pause or a slow Redis, yet short enough that a killed replica's name does not
/// linger on the operators' pages.
pub const REPLICA_SILENT_LEASES: u32 = 3;

/// A replica's name as ccgate makes them (the simple form of a UUID; a little room).
pub(crate) fn valid_replica(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A host name: DNS's limit on a name.
const MAX_HOST_LEN: usize = 253;
/// An identity as the shared store holds it (`{"host":…,"admin":…}`): the longest host name
/// and an IPv6 address with its port fit well within.
pub(super) const MAX_STORED_IDENTITY_LEN: usize = 512;

/// Who a replica is, for people: its name in leases (`id`), the host it runs on and its admin
/// listener. Each replica registers its own with its heartbeat ([`Membership::register`]) for
/// as long as the replica set counts it alive, so "polled by <id>" on any replica's views
/// names a host an operator can go to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaIdentity {
    pub id: String,
    /// The host's name as the kernel gives it (a pod's name in Kubernetes).
    pub host: String,
    /// The admin listener's address as bound (`0.0.0.0:9464` when it listens on every
    /// address: the host name then says where).
    pub admin: String,
}

/// What the shared store holds of an identity (the id is in the key).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIdentity<'a> {
    host: std::borrow::Cow<'a, str>,
    admin: std::borrow::Cow<'a, str>,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOST_LEN
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl ReplicaIdentity {
    /// This process: replica `id` on this host, its admin listener at `admin`.
    pub fn of_this_process(id: &str, admin: std::net::SocketAddr) -> Self {
        Self { id: id.to_owned(), host: host_name(), admin: admin.to_string() }
    }

    pub(crate) fn to_stored(&self) -> String {
        let s = StoredIdentity { host: self.host.as_str().into(), admin: self.admin.as_str().into() };
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// Replica `id`'s identity as read from the shared store, validated like network input
    /// (anyone who can write to Redis may have put it there): bounded, a host name of the
    /// characters host names have, an address that parses. `None` otherwise.
    pub(crate) fn from_stored(id: &str, raw: &[u8]) -> Option<Self> {
        if raw.len() > MAX_STORED_IDENTITY_LEN || !valid_replica(id) {
            return None;
        }
        let s: StoredIdentity<'_> = serde_json::from_slice(raw).ok()?;
        (valid_host(&s.host) && s.admin.parse::<std::net::SocketAddr>().is_ok()).then(|| Self {
            id: id.to_owned(),
            host: s.host.into_owned(),
            admin: s.admin.into_owned(),
        })
    }
}

/// The host's name (`gethostname`), made fit for a metric label and a page: characters host
/// names do not have become `-`, at most [`MAX_HOST_LEN`]; `unknown` if there is none.
fn host_name() -> String {
    let mut buf = [0u8; MAX_HOST_LEN + 3];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; gethostname
    // writes at most that many bytes (truncating a longer name, NUL or not).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 { &buf[..buf.iter().position(|b| *b == 0).unwrap_or(buf.len())] } else { &[][..] };
    let name: String = raw
        .iter()
        .take(MAX_HOST_LEN)
        .map(|&b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') { b as char } else { '-' })
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// The replica set and the index of agents with a poller, for finding orphans; who each
/// replica is, for people.
#[async_trait::async_trait]
pub trait Membership: Send + Sync {
    /// Marks each agent's index entry as refreshed now (the store's clock): their holder is
    /// alive. A failure is logged; the next round refreshes them again.
    async fn index_agents(&self, agents: &[&str]);
    /// Remembers that `agent` has a poller lease, for replicas looking for orphans.
    async fn index_agent(&self, agent: &str) {
        self.index_agents(&[agent]).await;
    }
    async fn unindex_agent(&self, agent: &str);
    /// Agents whose index entry has not been refreshed for a lease: their owner may be gone.
    async fn stale_agents(&self, max: usize) -> Result<Vec<String>, StoreError>;
    /// Agents whose index entry has not been refreshed for a lease and `more`: stale for
    /// longer than the replica they fall to would have needed to take them.
    async fn stale_for_longer(&self, more: Duration, max: usize) -> Result<Vec<String>, StoreError>;
    /// Replicas that sent a heartbeat within the last two rounds (two thirds of a lease, the
    /// store's clock), at most `max`: the ones that share out a stopped replica's agents. A
    /// dead replica leaves this set a round before its agents' entries go stale, so none of
    /// them falls to it; one that missed two rounds only takes no orphans for a while.
    async fn live_replicas(&self, max: usize) -> Result<Vec<String>, StoreError>;
    /// Every indexed agent (those with a poller lease, or waiting for one), at most `max`.
    async fn indexed_agents(&self, max: usize) -> Result<Vec<String>, StoreError>;
    /// Says this replica is alive (every maintenance round).
    async fn heartbeat(&self) -> Result<(), StoreError>;
    /// Leaves the replica set (shutdown); how many other replicas are alive.
    async fn leave(&self) -> Result<usize, StoreError>;
    /// This replica's identity, registered with every heartbeat from now on, to expire
    /// [`REPLICA_SILENT_LEASES`] lease lifetimes after the last. Set once (the admin
    /// listener's address is known only once it is bound); shared by every gateway's store.
    fn register(&self, me: ReplicaIdentity);
    /// Replica `replica`'s identity as it registered it; `None` if it never did or has
    /// been silent too long.
    async fn replica_identity(&self, replica: &str) -> Result<Option<ReplicaIdentity>, StoreError>;
}

/// Rate-limit buckets on the store's clock, shared by every replica.
#[async_trait::async_trait]
pub trait Buckets: Send + Sync {
    /// Takes up to `want` (≥ 1) tokens from `bucket` at once, on the store's clock: as many
    /// as it holds, if it holds one. A replica takes more than one to spend them locally
    /// (`ops::limits`, token slices).
    async fn gcra(&self, bucket: Bucket<'_>, interval: Duration, burst: u32, want: u32) -> Result<Gcra, StoreError>;
}

/// The change channel: what other replicas changed, as it happens.
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Follows the change channel for as long as the process runs, calling `on` for each
    /// change, and `Change::Resync` after every (re)subscription.
    async fn follow(self: Arc<Self>, on: Box<dyn FnMut(Change) + Send>);
}

/// Endings the journal keeps per gateway: the newest this many. An operator asks "what
/// happened to 153" about today's shift; a contact centre's agents sign in and out a few
/// times a day, so 1,000 covers a shift of a large centre without making a view slow.
pub const JOURNAL_MAX: usize = 1000;
/// How long an ending stays in the journal: a day, the longest an operator looks back
/// before the logs are the better source. The Redis list expires this long after its last
/// entry; readers drop older entries.
pub const JOURNAL_AGE: Duration = Duration::from_secs(24 * 3600);
/// The bound on one entry's bytes (what the writer sends and the reader accepts): a few
/// fields and the agent's last requests (`session::history`) fit in a quarter of it.
pub const JOURNAL_ENTRY_MAX_BYTES: usize = 4096;

/// The agents' journal: how each agent's sessions ended (signed out, lost) and which sign-ins
/// failed, newest first, shared by the replicas so any of them can show an agent that no
/// replica holds any more. Entries are opaque bytes here; `session::history` writes them and
/// validates them when it reads them back.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Adds an entry to `list` (at most [`JOURNAL_ENTRY_MAX_BYTES`]; a longer one is
    /// refused) in place of `replaces` (an entry this replica wrote before, removed in the
    /// same transaction, so an agent's failed sign-in stays one entry), keeps the list's
    /// newest [`JOURNAL_MAX`], and lets it expire [`JOURNAL_AGE`] after its last entry.
    async fn journal(&self, list: JournalList, entry: &[u8], replaces: Option<&[u8]>) -> Result<(), StoreError>;
    /// The newest `max` entries of `list` (at most [`JOURNAL_MAX`]), newest first.
    async fn journal_entries(&self, list: JournalList, max: usize) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// The journal's two lists, each with its own bound, so failed sign-ins (which any holder of
/// a token can cause, for any work number its identity provider signs) never push the
/// sessions that really ended out of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalList {
    /// Sessions that ended: signed out, lost.
    Ended,
    /// Sign-ins that failed.
    FailedSignIns,
}

impl JournalList {
    /// The list's key after the gateway's prefix.
    pub const fn key(self) -> &'static str {
        match self {
            Self::Ended => "journal",
            Self::FailedSignIns => "journal:signin",
        }
    }
}

/// A session record's fields, validated as input from the network: `None` if any is missing
/// or not what ccgate writes.
pub(crate) fn parse_record(mut h: std::collections::HashMap<String, Vec<u8>>) -> Option<Record> {
    let mut text = |k: &str| String::from_utf8(h.remove(k).unwrap_or_default()).ok();
    let sid = text("sid").filter(|s| valid_sid(s))?;
    let guid = text("guid").filter(|g| valid_guid(g))?;
    let cookies: Vec<String> = match text("cookies")?.as_str() {
        "" => Vec::new(),
        json => serde_json::from_str(json).ok().filter(|c: &Vec<String>| valid_cookie_jar(c))?,
    };
    let conf = text("conf").filter(|c| c.len() <= MAX_CONF_LEN)?;
    let state = RecordState::parse(&text("state")?)?;
    let epoch = text("epoch")?.parse().ok()?;
    let confv = match text("confv")?.as_str() {
        "" => 0,
        v => v.parse().ok()?,
    };
    let resumable = text("resumable")? == "1";
    // Absent in records of ccgate before 0.2.0.
    let since = text("since").and_then(|v| v.parse().ok()).unwrap_or(0);
    // Absent (or empty) in records of ccgate before webhooks; else what a token's claim held.
    let tenant = match text("tenant") {
        None => None,
        Some(t) if t.is_empty() => None,
        Some(t) => Some(t).filter(|t| valid_tenant(t))?.into(),
    };
    let answer = h.remove("answer").unwrap_or_default();
    if answer.len() > MAX_UPSTREAM_BODY {
        return None;
    }
    Some(Record {
        sid,
        epoch,
        guid,
        cookies,
        answer: Bytes::from(answer),
        resumable,
        conf,
        confv,
        state,
        since,
        tenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_pack_in_order_and_back() {
        let a = pack_id("1732400000000-0").unwrap();
        let b = pack_id("1732400000000-1").unwrap();
        let c = pack_id("1732400000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(unpack_id(b), "1732400000000-1");
        assert_eq!(pack_id("0-0"), Some(0));
        for bad in ["", "1", "x-1", "1-x", "1-1048576", "-1-0"] {
            assert_eq!(pack_id(bad), None, "{bad}");
        }
        assert!(provisional_id(c) > c);
    }

    #[test]
    fn identities_read_back_and_refuse_what_ccgate_does_not_write() {
        let me =
            ReplicaIdentity { id: "782d6587".into(), host: "ccgate-7f9c-x2".into(), admin: "10.0.0.7:9464".into() };
        assert_eq!(ReplicaIdentity::from_stored("782d6587", me.to_stored().as_bytes()), Some(me.clone()));
        let v6 = ReplicaIdentity { admin: "[::1]:9464".into(), ..me.clone() };
        assert_eq!(ReplicaIdentity::from_stored("782d6587", v6.to_stored().as_bytes()), Some(v6));
        let long_host = format!(r#"{{"host":"{}","admin":"10.0.0.7:9464"}}"#, "h".repeat(MAX_HOST_LEN + 1));
        for bad in [
            r#"{"host":"a[2Jb","admin":"10.0.0.7:9464"}"#,
            r#"{"host":"a b","admin":"10.0.0.7:9464"}"#,
            r#"{"host":"","admin":"10.0.0.7:9464"}"#,
            r#"{"host":"h","admin":"not an address"}"#,
            r#"{"host":"h"}"#,
            "garbage",
            long_host.as_str(),
        ] {
            assert_eq!(ReplicaIdentity::from_stored("782d6587", bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(ReplicaIdentity::from_stored("bad id", me.to_stored().as_bytes()), None);
        let padded = format!("{}{}", me.to_stored(), " ".repeat(MAX_STORED_IDENTITY_LEN));
        assert_eq!(ReplicaIdentity::from_stored("782d6587", padded.as_bytes()), None, "bounded before parsing");
        // This host's own name passes the same check.
        let here = ReplicaIdentity::of_this_process("782d6587", "127.0.0.1:9464".parse().unwrap());
        assert!(valid_host(&here.host), "{here:?}");
    }
}
