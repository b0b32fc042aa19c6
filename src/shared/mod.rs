//! The shared store: what replicas of ccgate share through Redis so that any replica can serve
//! any agent. This module only speaks Redis (keys, scripts, records, the change channel); what
//! the records mean for a session is `session::replicas`, and the limits' use is `ops::limits`.
//!
//! One agent's keys share a Redis Cluster hash tag (`{a:153}`), and every script touches one
//! agent's keys only, so a cluster works as one node does. docs/redis.md lists every key.

pub mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};

use crate::config::{masked_store_url, ms, StoreConfig};
use crate::gateway::client::{valid_cookie_jar, valid_guid, MAX_UPSTREAM_BODY};
use crate::gateway::parse_agent_id;
use crate::metrics::{Discarded, LossReason, Metrics, StoreOp};

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

/// The keys of one agent.
pub struct AgentKeys {
    pub session: String,
    pub lease: String,
    pub events: String,
    pub op: String,
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
    pub fn as_field(self) -> String {
        match self {
            Self::Active => "active".into(),
            Self::Out => "out".into(),
            Self::Lost(r) => format!("lost:{}", r.as_str()),
        }
    }

    fn parse(field: &str) -> Option<Self> {
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

fn valid_sid(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= MAX_SID_LEN && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_event_kind(kind: &str) -> bool {
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
}

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
#[derive(Debug)]
pub enum ConfWrite {
    Written(u64),
    Conflict { version: u64, conf: String },
    Gone,
}

/// An event read from a stream: its packed id, type and JSON.
pub type StreamEvent = (u64, String, Bytes);

/// How long a signed-out session's record stays as a tombstone: longer than any replica can
/// go without hearing of the sign-out, short enough to cost nothing.
const TOMBSTONE: Duration = Duration::from_secs(600);

/// Stream ids (`ms-seq`) packed into the u64 event ids apps see: ms in the high bits, the
/// sequence in the low 20. Ids stay increasing, fit `Last-Event-ID`, and mean the same on
/// every replica.
const SEQ_BITS: u32 = 20;

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
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    (now_ms << SEQ_BITS).max(last + 1)
}

struct Scripts {
    create: Script,
    acquire: Script,
    renew: Script,
    release: Script,
    write_auth: Script,
    write_conf: Script,
    append: Script,
    take_next: Script,
    end: Script,
    touch: Script,
    idle: Script,
    gcra: Script,
}

pub struct Shared {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    prefix: String,
    channel: String,
    /// This replica's name in leases: unique per process start.
    pub replica: Arc<str>,
    pub lease_ttl: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    scripts: Scripts,
    metrics: Metrics,
    connecting: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("replica", &self.replica).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Shared {
    /// Builds the client from config. Fails only on what a restart would not fix (the URL,
    /// the CA file); an unreachable Redis is retried in the background.
    pub fn new(cfg: &StoreConfig, metrics: Metrics) -> Result<Arc<Self>, String> {
        let url = cfg.url.as_ref().ok_or("store.url is required with backend = \"redis\"")?.expose();
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("store.url {}: {e}", masked_store_url(url)))?;
        let client = if url.starts_with("rediss://") {
            // redis-rs builds its rustls config from the process-wide provider.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let root_cert = match &cfg.ca_file {
                Some(p) => Some(std::fs::read(p).map_err(|e| format!("store.ca_file {}: {e}", p.display()))?),
                None => None,
            };
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert })
        } else {
            redis::Client::open(info)
        }
        .map_err(|e| format!("store.url {}: {e}", masked_store_url(url)))?;
        let prefix = cfg.key_prefix.clone();
        Ok(Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            channel: format!("{prefix}changes"),
            prefix,
            replica: uuid::Uuid::new_v4().simple().to_string().into(),
            lease_ttl: ms(cfg.lease_ttl_ms),
            timeout: ms(cfg.command_timeout_ms),
            connect_timeout: ms(cfg.connect_timeout_ms),
            scripts: Scripts {
                create: Script::new(scripts::CREATE),
                acquire: Script::new(scripts::ACQUIRE),
                renew: Script::new(scripts::RENEW),
                release: Script::new(scripts::RELEASE),
                write_auth: Script::new(scripts::WRITE_AUTH),
                write_conf: Script::new(scripts::WRITE_CONF),
                append: Script::new(scripts::APPEND),
                take_next: Script::new(scripts::TAKE_NEXT),
                end: Script::new(scripts::END),
                touch: Script::new(scripts::TOUCH),
                idle: Script::new(scripts::IDLE),
                gcra: Script::new(scripts::GCRA),
            },
            metrics,
            connecting: AtomicBool::new(false),
        }))
    }

    /// Connects once, within the connect timeout. Afterwards redis-rs's connection manager
    /// reconnects by itself; until the first success, the readiness probe calls this again.
    pub async fn connect(&self) -> Result<(), StoreError> {
        if self.conn.load().is_some() {
            return Ok(());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Unavailable("connecting".into()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = tokio::time::timeout(
            self.connect_timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        self.connecting.store(false, Ordering::Release);
        match made {
            Ok(Ok(c)) => {
                self.conn.store(Some(Arc::new(c)));
                self.metrics.set_store_up(true);
                Ok(())
            }
            Ok(Err(e)) => Err(self.failed(StoreOp::Connect, unavailable(e))),
            Err(_) => Err(self.failed(StoreOp::Connect, StoreError::Unavailable("connect timed out".into()))),
        }
    }

    fn failed(&self, op: StoreOp, e: StoreError) -> StoreError {
        self.metrics.count_store_error(op);
        if matches!(e, StoreError::Unavailable(_)) {
            self.metrics.set_store_up(false);
        }
        e
    }

    /// The connection. Until the first connect succeeds (the readiness probe retries it every
    /// second), commands fail at once rather than each waiting out a connect timeout.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        match self.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => Err(StoreError::Unavailable("not connected yet".into())),
        }
    }

    /// Runs one command or script invocation with the command timeout.
    async fn run<T: FromRedisValue>(
        &self,
        op: StoreOp,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut c = match self.conn().await {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        match tokio::time::timeout(self.timeout, f(&mut c)).await {
            Ok(Ok(v)) => {
                self.metrics.set_store_up(true);
                Ok(v)
            }
            Ok(Err(e))
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                Err(self.failed(op, unavailable(e)))
            }
            Ok(Err(e)) => Err(self.failed(op, StoreError::Malformed(e.to_string()))),
            Err(_) => Err(self.failed(op, StoreError::Unavailable("command timed out".into()))),
        }
    }

    async fn script<T: FromRedisValue>(&self, op: StoreOp, inv: ScriptInvocation<'_>) -> Result<T, StoreError> {
        self.run(op, async |c| inv.invoke_async(c).await).await
    }

    // --- keys ---------------------------------------------------------------------------------

    pub fn agent_keys(&self, agent: &str) -> AgentKeys {
        let p = &self.prefix;
        AgentKeys {
            session: format!("{p}{{a:{agent}}}:session"),
            lease: format!("{p}{{a:{agent}}}:lease"),
            events: format!("{p}{{a:{agent}}}:events"),
            op: format!("{p}{{a:{agent}}}:op"),
        }
    }

    /// The key of one rate limit's bucket. Agent buckets share the agent's hash tag; tenant
    /// and global buckets have their own.
    pub fn limit_key(&self, limit: &str, scope: &str, key: &str) -> String {
        let p = &self.prefix;
        match scope {
            "agent" => format!("{p}{{a:{key}}}:limit:{limit}"),
            "tenant" => format!("{p}{{t:{key}}}:limit:{limit}"),
            _ => format!("{p}{{g}}:limit:{limit}"),
        }
    }

    fn agents_key(&self) -> String {
        format!("{}agents", self.prefix)
    }

    fn replicas_key(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    fn message(kind: char, agent: &str) -> String {
        format!("{kind} {agent}")
    }

    // --- session records ----------------------------------------------------------------------

    pub async fn load(&self, agent: &str) -> Result<Option<Record>, StoreError> {
        let key = self.agent_keys(agent).session;
        let h: HashMap<String, Vec<u8>> =
            self.run(StoreOp::Read, async |c| redis::cmd("HGETALL").arg(&key).query_async(c).await).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let record = parse_record(h);
        if record.is_none() {
            tracing::warn!(agent, "shared store: session record fails validation; ignored");
            self.metrics.count_discarded(Discarded::StoreRecord, 1);
        }
        record.map(Some).ok_or_else(|| StoreError::Malformed("session record fails validation".into()))
    }

    /// Stores a new session (a sign-in) with this replica holding its lease; returns the epoch.
    /// With `restore`, only puts back a session Redis lost (0 when one is there).
    pub async fn create(&self, agent: &str, r: &NewRecord<'_>, restore: bool) -> Result<u64, StoreError> {
        let k = self.agent_keys(agent);
        let cookies = serde_json::to_string(r.cookies).unwrap_or_else(|_| "[]".into());
        let mut inv = self.scripts.create.prepare_invoke();
        inv.key(&k.session).key(&k.lease).key(&k.events);
        inv.arg(&*self.replica).arg(self.lease_ttl.as_millis() as u64).arg(r.sid).arg(r.guid).arg(cookies);
        inv.arg(r.answer).arg(if r.resumable { "1" } else { "0" }).arg(r.conf);
        inv.arg(if restore { "restore" } else { "create" });
        let epoch: u64 = self.script(StoreOp::Write, inv).await?;
        if epoch > 0 {
            self.index_agent(agent).await;
            self.publish_session(agent).await;
        }
        Ok(epoch)
    }

    async fn publish_session(&self, agent: &str) {
        let msg = Self::message('s', agent);
        let ch = self.channel.clone();
        let _ = self
            .run::<i64>(StoreOp::Write, async |c| redis::cmd("PUBLISH").arg(&ch).arg(&msg).query_async(c).await)
            .await;
    }

    /// Remembers that `agent` has a poller lease, for replicas looking for orphans.
    pub async fn index_agent(&self, agent: &str) {
        let key = self.agents_key();
        let now = now_ms();
        let _ = self
            .run::<i64>(StoreOp::Lease, async |c| redis::cmd("ZADD").arg(&key).arg(now).arg(agent).query_async(c).await)
            .await;
    }

    pub async fn unindex_agent(&self, agent: &str) {
        let key = self.agents_key();
        let _ = self
            .run::<i64>(StoreOp::Lease, async |c| redis::cmd("ZREM").arg(&key).arg(agent).query_async(c).await)
            .await;
    }

    /// Agents whose lease index entry has not been refreshed for a lease's lifetime: their
    /// owner may be gone. The lease key decides; this only says where to look. An entry that
    /// is not a work number is dropped from the index, never polled.
    pub async fn stale_agents(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let key = self.agents_key();
        let before = now_ms().saturating_sub(self.lease_ttl.as_millis() as u64);
        let raw: Vec<Vec<u8>> = self
            .run(StoreOp::Lease, async |c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(before)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max)
                    .query_async(c)
                    .await
            })
            .await?;
        let mut agents = Vec::with_capacity(raw.len());
        for entry in raw {
            match std::str::from_utf8(&entry).ok().filter(|a| parse_agent_id(a).is_some()) {
                Some(agent) => agents.push(agent.to_owned()),
                None => {
                    tracing::warn!(
                        entry = %String::from_utf8_lossy(&entry).escape_debug(),
                        "shared store: the agents index holds an entry that is not a work number; removed"
                    );
                    self.metrics.count_discarded(Discarded::StoreAgentId, 1);
                    let _ = self
                        .run::<i64>(StoreOp::Lease, async |c| {
                            redis::cmd("ZREM").arg(&key).arg(&entry).query_async(c).await
                        })
                        .await;
                }
            }
        }
        Ok(agents)
    }

    // --- leases -------------------------------------------------------------------------------

    pub async fn acquire(&self, agent: &str) -> Result<Lease, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.key(&k.session).key(&k.lease).arg(&*self.replica).arg(self.lease_ttl.as_millis() as u64);
        let (code, value): (i64, String) = self.script(StoreOp::Lease, inv).await?;
        Ok(match code {
            1 => Lease::Held(value.parse().map_err(|_| StoreError::Malformed("lease epoch".into()))?),
            -1 => Lease::Taken,
            _ => Lease::Absent,
        })
    }

    fn token(&self, epoch: u64) -> String {
        format!("{} {epoch}", self.replica)
    }

    pub async fn renew(&self, agent: &str, epoch: u64) -> Result<Lease, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(&k.lease).arg(self.token(epoch)).arg(self.lease_ttl.as_millis() as u64);
        let code: i64 = self.script(StoreOp::Lease, inv).await?;
        Ok(match code {
            1 => Lease::Held(epoch),
            -1 => Lease::Taken,
            _ => Lease::Absent,
        })
    }

    pub async fn release(&self, agent: &str, epoch: u64) -> Result<(), StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&k.lease).arg(self.token(epoch));
        let _: i64 = self.script(StoreOp::Lease, inv).await?;
        // Mark the agent as needing a poller now rather than after a lease's lifetime.
        let key = self.agents_key();
        let _ = self
            .run::<i64>(StoreOp::Lease, async |c| redis::cmd("ZADD").arg(&key).arg(0).arg(agent).query_async(c).await)
            .await;
        Ok(())
    }

    /// The cluster-wide sign-in/sign-out lock of one agent: `Some(token)` when taken.
    pub async fn lock_op(&self, agent: &str, ttl: Duration) -> Result<Option<String>, StoreError> {
        let key = self.agent_keys(agent).op;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let set: Option<String> = self
            .run(StoreOp::Lease, async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(set.map(|_| token))
    }

    pub async fn unlock_op(&self, agent: &str, token: &str) {
        let key = self.agent_keys(agent).op;
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&key).arg(token);
        // A lock we cannot release expires by itself.
        let _ = self.script::<i64>(StoreOp::Lease, inv).await;
    }

    // --- replicas -----------------------------------------------------------------------------

    /// Says this replica is alive (every maintenance round).
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let key = self.replicas_key();
        let now = now_ms();
        let me = self.replica.clone();
        self.run::<i64>(StoreOp::Lease, async |c| redis::cmd("ZADD").arg(&key).arg(now).arg(&*me).query_async(c).await)
            .await?;
        Ok(())
    }

    /// Leaves the replica set (shutdown). Returns how many other replicas are alive.
    pub async fn leave(&self) -> Result<usize, StoreError> {
        let key = self.replicas_key();
        let me = self.replica.clone();
        let alive_since = now_ms().saturating_sub(3 * self.lease_ttl.as_millis() as u64);
        let _: i64 =
            self.run(StoreOp::Lease, async |c| redis::cmd("ZREM").arg(&key).arg(&*me).query_async(c).await).await?;
        let _: i64 = self
            .run(StoreOp::Lease, async |c| {
                redis::cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(alive_since).query_async(c).await
            })
            .await?;
        self.run(StoreOp::Lease, async |c| redis::cmd("ZCARD").arg(&key).query_async(c).await).await
    }

    // --- writes -------------------------------------------------------------------------------

    /// A new Guid/cookies: `Ok(true)` written, `Ok(false)` stale or gone. `poller`: the
    /// lease epoch and this write's number when the lease holder writes (see the script).
    pub async fn write_auth(
        &self,
        agent: &str,
        sid: &str,
        old_guid: &str,
        guid: &str,
        cookies: &[String],
        poller: Option<(u64, u64)>,
    ) -> Result<bool, StoreError> {
        let k = self.agent_keys(agent);
        let cookies = serde_json::to_string(cookies).unwrap_or_else(|_| "[]".into());
        let mut inv = self.scripts.write_auth.prepare_invoke();
        inv.key(&k.session).arg(sid).arg(old_guid).arg(guid).arg(cookies);
        let (epoch, seq) = poller.map_or((String::new(), 0), |(e, n)| (e.to_string(), n));
        inv.arg(epoch).arg(seq).arg(&self.channel).arg(Self::message('s', agent));
        let code: i64 = self.script(StoreOp::Write, inv).await?;
        Ok(code == 1)
    }

    pub async fn write_conf(&self, agent: &str, sid: &str, version: u64, conf: &str) -> Result<ConfWrite, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.write_conf.prepare_invoke();
        inv.key(&k.session).arg(sid).arg(version).arg(conf).arg(&self.channel).arg(Self::message('s', agent));
        let v: Vec<String> = self.script(StoreOp::Write, inv).await?;
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok());
        Ok(match v.first().map(String::as_str) {
            Some("1") => ConfWrite::Written(num(1).unwrap_or(0)),
            Some("-1") => {
                ConfWrite::Conflict { version: num(1).unwrap_or(0), conf: v.get(2).cloned().unwrap_or_default() }
            }
            _ => ConfWrite::Gone,
        })
    }

    /// Appends an event under the id this replica gave it (see `provisional_id`); its packed
    /// id in the stream, or `None` when the session is gone. Sending it again is harmless.
    pub async fn append(
        &self,
        agent: &str,
        sid: &str,
        cap: usize,
        id: u64,
        kind: &str,
        data: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.append.prepare_invoke();
        inv.key(&k.session).key(&k.events).arg(sid).arg(cap).arg(unpack_id(id));
        inv.arg(kind).arg(data).arg(&self.channel).arg(Self::message('e', agent));
        let id: Option<String> = self.script(StoreOp::Events, inv).await?;
        Ok(id.as_deref().and_then(pack_id))
    }

    /// The events after `after` (packed id; 0: from the start), at most `count`.
    pub async fn events_after(&self, agent: &str, after: u64, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
        let key = self.agent_keys(agent).events;
        let start = format!("({}", unpack_id(after));
        let raw: redis::Value = self
            .run(StoreOp::Events, async |c| {
                redis::cmd("XRANGE").arg(&key).arg(&start).arg("+").arg("COUNT").arg(count).query_async(c).await
            })
            .await?;
        Ok(parse_entries(raw, &self.metrics))
    }

    /// The newest `count` events, oldest first.
    pub async fn latest_events(&self, agent: &str, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
        let key = self.agent_keys(agent).events;
        let raw: redis::Value = self
            .run(StoreOp::Events, async |c| {
                redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(count).query_async(c).await
            })
            .await?;
        let mut v = parse_entries(raw, &self.metrics);
        v.reverse();
        Ok(v)
    }

    /// The pass-through queue's next event, taken off the shared cursor.
    pub async fn take_next(&self, agent: &str, sid: &str) -> Result<Option<StreamEvent>, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.take_next.prepare_invoke();
        inv.key(&k.session).key(&k.events).arg(sid);
        let raw: redis::Value = self.script(StoreOp::Events, inv).await?;
        Ok(match raw {
            redis::Value::Nil => None,
            other => parse_entries(redis::Value::Array(vec![other]), &self.metrics).pop(),
        })
    }

    /// Ends a session: `lost` keeps the record (every replica answers "sign in again"),
    /// otherwise it is deleted. `refused_guid`: only if the record still has that Guid.
    /// `Ok(false)` when the record had moved on.
    pub async fn end(
        &self,
        agent: &str,
        sid: &str,
        lost: Option<LossReason>,
        refused_guid: Option<&str>,
    ) -> Result<bool, StoreError> {
        let k = self.agent_keys(agent);
        let state = lost.map_or(RecordState::Out, RecordState::Lost).as_field();
        let mut inv = self.scripts.end.prepare_invoke();
        inv.key(&k.session).key(&k.lease).key(&k.events).arg(sid).arg(state).arg(refused_guid.unwrap_or(""));
        inv.arg(&self.channel).arg(Self::message('s', agent)).arg(TOMBSTONE.as_millis() as u64);
        let code: i64 = self.script(StoreOp::Write, inv).await?;
        tracing::debug!(agent, lost = ?lost, conditional = refused_guid.is_some(), ended = code == 1, "session end written");
        if code == 1 {
            self.unindex_agent(agent).await;
        }
        Ok(code == 1)
    }

    pub async fn touch(&self, agent: &str, sid: &str) -> Result<(), StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.touch.prepare_invoke();
        inv.key(&k.session).arg(sid);
        let _: i64 = self.script(StoreOp::Write, inv).await?;
        Ok(())
    }

    /// How long the agent's apps have been silent on every replica; `None` if the session is gone.
    pub async fn idle_for(&self, agent: &str, sid: &str) -> Result<Option<Duration>, StoreError> {
        let k = self.agent_keys(agent);
        let mut inv = self.scripts.idle.prepare_invoke();
        inv.key(&k.session).arg(sid);
        let ms: i64 = self.script(StoreOp::Read, inv).await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    // --- limits -------------------------------------------------------------------------------

    /// One GCRA check: `Ok(remaining)` or `Err(wait)`.
    pub async fn gcra(&self, key: &str, interval: Duration, burst: u32) -> Result<Result<u32, Duration>, StoreError> {
        let mut inv = self.scripts.gcra.prepare_invoke();
        inv.key(key).arg(interval.as_micros().max(1) as u64).arg(burst);
        let (allowed, n): (i64, i64) = self.script(StoreOp::Limit, inv).await?;
        Ok(if allowed == 1 { Ok(n.max(0) as u32) } else { Err(Duration::from_micros(n.max(0) as u64)) })
    }

    // --- the change channel -------------------------------------------------------------------

    /// Follows the change channel for as long as the process runs, reconnecting after
    /// failures; `Change::Resync` after every (re)subscription.
    pub async fn follow(self: Arc<Self>, mut on: impl FnMut(Change)) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(self.connect_timeout, subscribed).await {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    on(Change::Resync);
                    let mut messages = ps.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(text) = msg.get_payload::<String>() else { continue };
                        match text.split_once(' ') {
                            Some((kind, agent)) if parse_agent_id(agent).is_some() => on(if kind == "e" {
                                Change::Events(agent.into())
                            } else {
                                Change::Session(agent.into())
                            }),
                            _ => self.metrics.count_discarded(Discarded::StoreAgentId, 1),
                        }
                    }
                    tracing::warn!("shared store: change channel closed; resubscribing");
                    self.metrics.count_store_error(StoreOp::Subscribe);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "shared store: cannot subscribe to the change channel");
                    self.failed(StoreOp::Subscribe, unavailable(e));
                }
                Err(_) => {
                    self.failed(StoreOp::Subscribe, StoreError::Unavailable("subscribe timed out".into()));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Answers PING (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.run(StoreOp::Read, async |c| redis::cmd("PING").query_async(c).await).await?;
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A session record's fields, validated as input from the network: `None` if any is missing
/// or not what ccgate writes.
fn parse_record(mut h: HashMap<String, Vec<u8>>) -> Option<Record> {
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
    let answer = h.remove("answer").unwrap_or_default();
    if answer.len() > MAX_UPSTREAM_BODY {
        return None;
    }
    Some(Record { sid, epoch, guid, cookies, answer: Bytes::from(answer), resumable, conf, confv, state })
}

/// XRANGE entries (`[[id, [field, value, ...]], ...]`) as events. Entries that are not ours,
/// or fail validation, are skipped and counted.
fn parse_entries(raw: redis::Value, metrics: &Metrics) -> Vec<StreamEvent> {
    let redis::Value::Array(entries) = raw else { return Vec::new() };
    let total = entries.len();
    let events: Vec<StreamEvent> = entries
        .into_iter()
        .filter_map(|e| {
            let redis::Value::Array(mut parts) = e else { return None };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = String::from_redis_value(parts.pop()?).ok()?;
            let id = pack_id(&id)?;
            let redis::Value::Array(fields) = fields else { return None };
            let mut kind = None;
            let mut data = None;
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                match String::from_redis_value(name.clone()).ok()?.as_str() {
                    "k" => kind = String::from_redis_value(value.clone()).ok(),
                    "d" => data = Vec::<u8>::from_redis_value(value.clone()).ok().map(Bytes::from),
                    _ => {}
                }
            }
            let (kind, data) = (kind.filter(|k| valid_event_kind(k))?, data.filter(|d| d.len() <= MAX_UPSTREAM_BODY)?);
            Some((id, kind, data))
        })
        .collect();
    if events.len() < total {
        metrics.count_discarded(Discarded::StoreEvent, (total - events.len()) as u64);
    }
    events
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
}
