//! The shared store on Redis: the keys, the scripts (`scripts.rs`) and the change channel.
//! One agent's keys share a Redis Cluster hash tag (`{a:153}`), and every script touches one
//! agent's keys only, so a cluster works as one node does. Whatever Redis answers is
//! validated like network input (`parse_record`, `parse_entries`, agent ids).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::{FromRedisValue, ScriptInvocation};

use super::connection::{Conn, Connection, Failure, StoreStatus, CLUSTER_RETRY_PAUSE};
use super::deliveries::{self, Claimed, Deliveries, Settled, Settlement, Summary};
use super::scripts::{self, AgentKeys, Announce, EndpointKeys, Scripts};
use super::valid_replica;
use super::{
    pack_id, parse_record, unpack_id, valid_event_kind, AuthWrite, AuthWritten, Backend, Bucket, Buckets, Change,
    ChangeFeed, ConfWrite, CreateMode, EndAs, EndOutcome, Events, Gcra, Grant, Journal, JournalList, Lease, Leases,
    Membership, NewEvent, NewRecord, OpLock, Record, RecordState, Records, ReplicaIdentity, SharedStore, StoreError,
    StreamEvent, JOURNAL_AGE, JOURNAL_ENTRY_MAX_BYTES, JOURNAL_MAX, REPLICA_SILENT_LEASES,
};
use crate::config::{ms, Scope, StoreConfig};
use crate::gateway::parse_agent_id;
use crate::gateway::wire::MAX_UPSTREAM_BODY;
use crate::labels::{Discarded, StoreOp};
use crate::metrics::Metrics;

pub struct RedisStore {
    /// Shared by the stores of every gateway ([`SharedStore::for_gateway`]): one connection,
    /// which follows the primary through failovers (`connection.rs`).
    conn: Arc<Connection>,
    prefix: String,
    /// The gateway's namespace with a `:` after it, or nothing (see `GatewayConfig::namespace`).
    namespace: String,
    channel: String,
    /// This replica's name in leases: unique per process start.
    replica: Arc<str>,
    lease_ttl: Duration,
    /// How long a signed-out session's tombstone stays.
    tombstone: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    scripts: Arc<Scripts>,
    metrics: Metrics,
    /// Whether the sentinel follower runs (started once, at the first connect).
    following_sentinels: Arc<AtomicBool>,
    /// This replica's identity, once registered ([`Membership::register`]); shared by every
    /// gateway's store.
    identity: Arc<std::sync::OnceLock<ReplicaIdentity>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("replica", &self.replica).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A change-channel message: `s AGENT` (session record) or `e AGENT` (events).
fn message(kind: char, agent: &str) -> String {
    format!("{kind} {agent}")
}

impl RedisStore {
    /// Builds the client from config. Fails only on what a restart would not fix (the URL,
    /// the CA file); an unreachable Redis is retried in the background. `tombstone`: how long
    /// a signed-out session's record stays ([`super::TOMBSTONE`]; tests that let it expire pass less).
    pub fn new(cfg: &StoreConfig, metrics: Metrics, tombstone: Duration) -> Result<Arc<Self>, String> {
        let conn = Connection::new(cfg, metrics.clone())?;
        let prefix = cfg.key_prefix.clone();
        Ok(Arc::new(Self {
            conn,
            channel: format!("{prefix}changes"),
            prefix,
            namespace: String::new(),
            replica: uuid::Uuid::new_v4().simple().to_string().into(),
            lease_ttl: ms(cfg.lease_ttl_ms),
            tombstone,
            timeout: ms(cfg.command_timeout_ms),
            connect_timeout: ms(cfg.connect_timeout_ms),
            scripts: Arc::new(Scripts::new()),
            metrics,
            following_sentinels: Arc::new(AtomicBool::new(false)),
            identity: Arc::default(),
        }))
    }

    fn failed(&self, op: StoreOp, e: StoreError) -> StoreError {
        self.metrics.count_store_error(op);
        if matches!(e, StoreError::Unavailable(_)) {
            self.metrics.set_store_up(false);
        }
        e
    }

    /// Runs one command or script invocation with the command timeout. Until the first
    /// connect succeeds (the readiness probe retries it every second), and while a reconnect
    /// runs, commands fail at once rather than each waiting out a connect timeout. A command
    /// that a node refused without running it because it is no longer the primary
    /// (`READONLY`...) runs once more on the new connection if that comes within the command
    /// timeout: the request that meets a failover need not fail.
    async fn run<T: FromRedisValue>(
        &self,
        op: StoreOp,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T> + Clone,
    ) -> Result<T, StoreError> {
        let started = tokio::time::Instant::now();
        let again = match self.run_once(f.clone()).await {
            Ok(v) => return Ok(v),
            Err((Failure::Moved(why), generation)) => {
                let left = self.timeout.saturating_sub(started.elapsed());
                match self.conn.replaced(generation, left).await {
                    true => Ok(()),
                    false => Err(StoreError::Unavailable(why)),
                }
            }
            Err((Failure::Again(_), _)) => {
                let pause = CLUSTER_RETRY_PAUSE.min(self.timeout.saturating_sub(started.elapsed()));
                tokio::time::sleep(pause).await;
                Ok(())
            }
            Err((failure, _)) => Err(failure.into_error()),
        };
        let e = match again {
            // Refused without running: once more, on the new connection or slot map.
            Ok(()) => match self.run_once(f).await {
                Ok(v) => return Ok(v),
                Err((failure, _)) => failure.into_error(),
            },
            Err(e) => e,
        };
        Err(self.failed(op, e))
    }

    /// One try of [`RedisStore::run`]: the value, or how it failed on which connection.
    async fn run_once<T: FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, (Failure, u64)> {
        let (mut c, generation) = self.conn.get().map_err(|e| (Failure::Unavailable(e), 0))?;
        match tokio::time::timeout(self.timeout, f(&mut c)).await {
            Ok(Ok(v)) => {
                self.conn.succeeded();
                self.metrics.set_store_up(true);
                Ok(v)
            }
            Ok(Err(e)) => Err((self.conn.failed(generation, &e), generation)),
            Err(_) => {
                self.conn.timed_out(generation);
                Err((Failure::Unavailable("command timed out".into()), generation))
            }
        }
    }

    async fn script<T: FromRedisValue>(&self, op: StoreOp, inv: ScriptInvocation<'_>) -> Result<T, StoreError> {
        self.run(op, async |c| inv.invoke_async(c).await).await
    }

    // --- keys ---------------------------------------------------------------------------------

    /// An agent's keys, under one hash tag: `{a:153}` for the default gateway, `{a:acme:153}`
    /// for gateway `acme`.
    fn agent_keys(&self, agent: &str) -> AgentKeys {
        let (p, ns) = (&self.prefix, &self.namespace);
        AgentKeys {
            session: format!("{p}{{a:{ns}{agent}}}:session"),
            lease: format!("{p}{{a:{ns}{agent}}}:lease"),
            events: format!("{p}{{a:{ns}{agent}}}:events"),
            op: format!("{p}{{a:{ns}{agent}}}:op"),
        }
    }

    /// One webhook endpoint's keys, under its own hash tag (endpoints are the config's, every
    /// gateway's agents together).
    fn endpoint_keys(&self, endpoint: &str) -> EndpointKeys {
        let p = format!("{}{{wh:{endpoint}}}:", self.prefix);
        EndpointKeys {
            due: format!("{p}due"),
            claim: format!("{p}claim"),
            tries: format!("{p}tries"),
            heads: format!("{p}heads"),
            pending: format!("{p}pending"),
            bytes: format!("{p}bytes"),
            failed: format!("{p}failed"),
            disabled: format!("{p}disabled"),
            lane_prefix: format!("{p}lane:"),
        }
    }

    /// The key of one rate limit's bucket. Agent buckets share the agent's hash tag; tenant,
    /// gateway and global buckets have their own. Agent and tenant buckets are per gateway.
    fn limit_key(&self, b: Bucket<'_>) -> String {
        let (p, limit, key) = (&self.prefix, b.limit, b.key);
        match b.scope {
            Scope::Agent if b.namespace.is_empty() => format!("{p}{{a:{key}}}:limit:{limit}"),
            Scope::Agent => format!("{p}{{a:{}:{key}}}:limit:{limit}", b.namespace),
            // The default gateway's keep their names from before tenants were per gateway;
            // another's start `{t@` (a tenant is any string, a namespace has no ':').
            Scope::Tenant if b.namespace.is_empty() => format!("{p}{{t:{key}}}:limit:{limit}"),
            Scope::Tenant => format!("{p}{{t@{}:{key}}}:limit:{limit}", b.namespace),
            Scope::Gateway => format!("{p}{{gw:{key}}}:limit:{limit}"),
            Scope::Global => format!("{p}{{g}}:limit:{limit}"),
        }
    }

    fn agents_key(&self) -> String {
        format!("{}{}agents", self.prefix, self.namespace)
    }

    /// One of the gateway's journal lists (`Journal`): one key each, so one hash slot.
    fn journal_key(&self, list: JournalList) -> String {
        format!("{}{}{}", self.prefix, self.namespace, list.key())
    }

    fn replicas_key(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    /// A replica's identity (host, admin address), beside the replica set, with its own TTL.
    fn identity_key(&self, replica: &str) -> String {
        format!("{}replica:{replica}", self.prefix)
    }

    fn announce<'a>(&'a self, message: &'a str) -> Announce<'a> {
        Announce { channel: &self.channel, message }
    }

    fn token(&self, epoch: u64) -> String {
        format!("{} {epoch}", self.replica)
    }

    /// The `ACQUIRE` script: the lease if free or this replica's, or still `expected`'s and
    /// not taken within the last lease.
    async fn acquire_from(&self, agent: &str, expected: &str) -> Result<Lease, StoreError> {
        let args = scripts::Acquire { replica: &self.replica, expected, lease_ms: self.lease_ms() };
        let (code, value): (i64, String) =
            self.script(StoreOp::Lease, args.prepare(&self.scripts.acquire, &self.agent_keys(agent))).await?;
        Ok(match code {
            1 => Lease::Held(value.parse().map_err(|_| StoreError::Malformed("lease epoch".into()))?),
            -1 => Lease::Taken,
            _ => Lease::Absent,
        })
    }

    fn lease_ms(&self) -> u64 {
        self.lease_ttl.as_millis() as u64
    }

    async fn publish_session(&self, agent: &str) {
        let msg = message('s', agent);
        let ch = self.channel.clone();
        if let Err(e) = self
            .run::<i64>(StoreOp::Write, async |c| redis::cmd("PUBLISH").arg(&ch).arg(&msg).query_async(c).await)
            .await
        {
            // The next maintenance round's resync catches the other replicas up.
            tracing::debug!(agent, error = %e, "shared store: could not announce a new session");
        }
    }
}

#[async_trait::async_trait]
impl Backend for RedisStore {
    fn replica(&self) -> &str {
        &self.replica
    }
    /// The same connection and replica name; the gateway's own agent keys, index and change
    /// channel (`ccgate:{a:acme:153}:session`, `ccgate:acme:agents`, `ccgate:acme:changes`).
    fn for_gateway(self: Arc<Self>, namespace: &str) -> Arc<dyn SharedStore> {
        if namespace.is_empty() {
            return self;
        }
        let namespace = format!("{namespace}:");
        Arc::new(Self {
            conn: self.conn.clone(),
            channel: format!("{}{namespace}changes", self.prefix),
            prefix: self.prefix.clone(),
            namespace,
            replica: self.replica.clone(),
            lease_ttl: self.lease_ttl,
            tombstone: self.tombstone,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            scripts: self.scripts.clone(),
            metrics: self.metrics.clone(),
            following_sentinels: self.following_sentinels.clone(),
            identity: self.identity.clone(),
        })
    }
    fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
    /// Connects unless connected or reconnecting; afterwards the connection follows the
    /// primary by itself (`connection.rs`). Until the first success the readiness probe
    /// calls this again.
    async fn connect(&self) -> Result<(), StoreError> {
        if !self.following_sentinels.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.conn.clone().follow_sentinels());
        }
        self.conn.connect().await.map_err(|e| self.failed(StoreOp::Connect, StoreError::Unavailable(e)))
    }
    /// A script that writes, not only `PING`: a demoted primary answers `READONLY` here, and
    /// the connection moves on within the probe's second.
    async fn ping(&self) -> Result<(), StoreError> {
        let key = format!("{}health:{}", self.prefix, self.replica);
        let inv = scripts::Health { replica: &self.replica }.prepare(&self.scripts.health, &key);
        let started = tokio::time::Instant::now();
        let answered = self.script::<i64>(StoreOp::Write, inv).await;
        // A failed probe has no round trip to show: none rather than the last good one's.
        self.conn.record_probe(answered.as_ref().ok().map(|_| started.elapsed()));
        answered.map(|_| ())
    }
    fn status(&self) -> StoreStatus {
        self.conn.status()
    }
}

#[async_trait::async_trait]
impl Records for RedisStore {
    async fn load(&self, agent: &str) -> Result<Option<Record>, StoreError> {
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
    async fn create(&self, agent: &str, r: &NewRecord<'_>, mode: CreateMode) -> Result<u64, StoreError> {
        let cookies = serde_json::to_string(r.cookies).unwrap_or_else(|_| "[]".into());
        let args = scripts::Create {
            replica: &self.replica,
            sid: r.sid,
            guid: r.guid,
            cookies: &cookies,
            answer: r.answer,
            resumable: r.resumable,
            conf: r.conf,
            since: r.since,
            restore: mode == CreateMode::Restore,
            tenant: r.tenant.filter(|t| super::valid_tenant(t)).unwrap_or(""),
        };
        let epoch: u64 =
            self.script(StoreOp::Write, args.prepare(&self.scripts.create, &self.agent_keys(agent))).await?;
        if epoch > 0 {
            self.index_agent(agent).await;
            self.publish_session(agent).await;
        }
        Ok(epoch)
    }
    async fn write_auth(&self, agent: &str, w: &AuthWrite<'_>) -> Result<AuthWritten, StoreError> {
        let cookies = serde_json::to_string(w.cookies).unwrap_or_else(|_| "[]".into());
        let msg = message('s', agent);
        let args = scripts::WriteAuth {
            sid: w.sid,
            replied_to: w.replied_to,
            guid: w.guid,
            cookies: &cookies,
            poller: w.poller,
            announce: self.announce(&msg),
        };
        let code: i64 =
            self.script(StoreOp::Write, args.prepare(&self.scripts.write_auth, &self.agent_keys(agent))).await?;
        Ok(match code {
            1 => AuthWritten::Written,
            -1 => AuthWritten::Stale,
            _ => AuthWritten::Gone,
        })
    }
    async fn write_conf(&self, agent: &str, sid: &str, version: u64, conf: &str) -> Result<ConfWrite, StoreError> {
        let msg = message('s', agent);
        let args = scripts::WriteConf { sid, version, conf, announce: self.announce(&msg) };
        let v: Vec<String> =
            self.script(StoreOp::Write, args.prepare(&self.scripts.write_conf, &self.agent_keys(agent))).await?;
        let num = |i: usize| v.get(i).and_then(|s| s.parse::<u64>().ok());
        Ok(match v.first().map(String::as_str) {
            Some("1") => ConfWrite::Written(num(1).unwrap_or(0)),
            Some("-1") => {
                ConfWrite::Conflict { version: num(1).unwrap_or(0), conf: v.get(2).cloned().unwrap_or_default() }
            }
            _ => ConfWrite::Gone,
        })
    }
    async fn end(&self, agent: &str, sid: &str, how: EndAs<'_>) -> Result<EndOutcome, StoreError> {
        let (state, refused) = match how {
            EndAs::SignedOut => (RecordState::Out, None),
            EndAs::Lost { reason, refused } => (RecordState::Lost(reason), refused),
        };
        let msg = message('s', agent);
        let args = scripts::End {
            sid,
            state,
            refused: refused.unwrap_or(""),
            tombstone_ms: self.tombstone.as_millis() as u64,
            announce: self.announce(&msg),
        };
        let code: i64 = self.script(StoreOp::Write, args.prepare(&self.scripts.end, &self.agent_keys(agent))).await?;
        tracing::debug!(agent, state = ?state, conditional = refused.is_some(), code, "session end written");
        Ok(match code {
            1 => {
                self.unindex_agent(agent).await;
                EndOutcome::Ended
            }
            -1 => EndOutcome::GuidReplaced,
            _ => EndOutcome::Gone,
        })
    }
    async fn touch(&self, agent: &str, sid: &str) -> Result<(), StoreError> {
        let inv = scripts::Touch { sid }.prepare(&self.scripts.touch, &self.agent_keys(agent));
        let _: i64 = self.script(StoreOp::Write, inv).await?;
        Ok(())
    }
    async fn idle_for(&self, agent: &str, sid: &str) -> Result<Option<Duration>, StoreError> {
        let inv = scripts::Idle { sid }.prepare(&self.scripts.idle, &self.agent_keys(agent));
        let ms: i64 = self.script(StoreOp::Read, inv).await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }
}

#[async_trait::async_trait]
impl Events for RedisStore {
    async fn append(&self, agent: &str, e: &NewEvent<'_>) -> Result<Option<u64>, StoreError> {
        let (msg, id) = (message('e', agent), unpack_id(e.id));
        let args = scripts::Append {
            sid: e.sid,
            cap: e.cap,
            id: &id,
            kind: e.kind,
            data: e.data,
            announce: self.announce(&msg),
        };
        let id: Option<String> =
            self.script(StoreOp::Events, args.prepare(&self.scripts.append, &self.agent_keys(agent))).await?;
        Ok(id.as_deref().and_then(pack_id))
    }
    async fn events_after(&self, agent: &str, after: u64, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
        let key = self.agent_keys(agent).events;
        let start = format!("({}", unpack_id(after));
        let raw: redis::Value = self
            .run(StoreOp::Events, async |c| {
                redis::cmd("XRANGE").arg(&key).arg(&start).arg("+").arg("COUNT").arg(count).query_async(c).await
            })
            .await?;
        Ok(parse_entries(raw, &self.metrics))
    }
    async fn latest_events(&self, agent: &str, count: usize) -> Result<Vec<StreamEvent>, StoreError> {
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
    async fn take_next(&self, agent: &str, sid: &str) -> Result<Option<StreamEvent>, StoreError> {
        let inv = scripts::TakeNext { sid }.prepare(&self.scripts.take_next, &self.agent_keys(agent));
        let raw: redis::Value = self.script(StoreOp::Events, inv).await?;
        Ok(match raw {
            redis::Value::Nil => None,
            other => parse_entries(redis::Value::Array(vec![other]), &self.metrics).pop(),
        })
    }
}

#[async_trait::async_trait]
impl Leases for RedisStore {
    async fn acquire(&self, agent: &str) -> Result<Lease, StoreError> {
        self.acquire_from(agent, "").await
    }
    async fn take_stale(&self, agent: &str) -> Result<Lease, StoreError> {
        // Read, then compare-and-set in the script: the lease's key and the index are in
        // different slots of a cluster, so no one script can look at both.
        let key = self.agent_keys(agent).lease;
        let holder: Option<String> =
            self.run(StoreOp::Lease, async |c| redis::cmd("GET").arg(&key).query_async(c).await).await?;
        self.acquire_from(agent, holder.as_deref().unwrap_or("")).await
    }
    async fn check(&self, held: &[(&str, u64)]) -> Result<Vec<Lease>, StoreError> {
        let mut out = Vec::with_capacity(held.len());
        // One `MGET` per batch (a cluster client splits it by slot itself).
        for batch in held.chunks(scripts::SEEN_BATCH) {
            let keys: Vec<String> = batch.iter().map(|(agent, _)| self.agent_keys(agent).lease).collect();
            let values: Vec<Option<Vec<u8>>> =
                self.run(StoreOp::Lease, async |c| redis::cmd("MGET").arg(&keys).query_async(c).await).await?;
            if values.len() != batch.len() {
                return Err(StoreError::Malformed(format!("{} leases read for {}", values.len(), batch.len())));
            }
            for ((_, epoch), value) in batch.iter().zip(values) {
                out.push(super::lease_verdict(value.as_deref(), &self.replica, *epoch));
            }
        }
        Ok(out)
    }
    async fn release(&self, agent: &str, epoch: u64) -> Result<(), StoreError> {
        let token = self.token(epoch);
        let inv = scripts::Release { token: &token }.prepare(&self.scripts.release, &self.agent_keys(agent).lease);
        let _: i64 = self.script(StoreOp::Lease, inv).await?;
        // Mark the agent as needing a poller now rather than after a lease's lifetime (and as
        // stale for no longer than that: the replica it falls to takes it first).
        let key = self.agents_key();
        let inv = scripts::Seen { members: &[agent], back_ms: self.lease_ms() }.prepare(&self.scripts.seen, &key);
        let _: i64 = self.script(StoreOp::Lease, inv).await?;
        Ok(())
    }
    async fn lock_op(&self, agent: &str, ttl: Duration) -> Result<Option<OpLock>, StoreError> {
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
        Ok(set.map(|_| OpLock(token)))
    }
    async fn unlock_op(&self, agent: &str, lock: &OpLock) {
        let key = self.agent_keys(agent).op;
        let inv = scripts::Release { token: &lock.0 }.prepare(&self.scripts.release, &key);
        if let Err(e) = self.script::<i64>(StoreOp::Lease, inv).await {
            // It expires by itself.
            tracing::debug!(agent, error = %e, "shared store: could not release a sign-in lock");
        }
    }
    async fn lease_holder(&self, agent: &str) -> Result<Option<String>, StoreError> {
        let key = self.agent_keys(agent).lease;
        let v: Option<String> =
            self.run(StoreOp::Read, async |c| redis::cmd("GET").arg(&key).query_async(c).await).await?;
        // `replica epoch`: the replica's name is the part before the space.
        Ok(v.and_then(|v| v.split_once(' ').map(|(r, _)| r.to_owned())).filter(|r| valid_replica(r)))
    }
}

#[async_trait::async_trait]
impl Membership for RedisStore {
    async fn index_agents(&self, agents: &[&str]) {
        let key = self.agents_key();
        for members in agents.chunks(scripts::SEEN_BATCH) {
            let inv = scripts::Seen { members, back_ms: 0 }.prepare(&self.scripts.seen, &key);
            if let Err(e) = self.script::<i64>(StoreOp::Lease, inv).await {
                // The next round refreshes them again; a lease's worth of failures makes them
                // stale, as a holder that stopped.
                tracing::debug!(agents = members.len(), error = %e, "shared store: could not refresh the agents index");
            }
        }
    }
    async fn unindex_agent(&self, agent: &str) {
        let key = self.agents_key();
        if let Err(e) = self
            .run::<i64>(StoreOp::Lease, async |c| redis::cmd("ZREM").arg(&key).arg(agent).query_async(c).await)
            .await
        {
            // A stale entry only makes a replica look at the lease, which says "no session".
            tracing::debug!(agent, error = %e, "shared store: could not unindex an agent");
        }
    }
    /// Agents whose lease index entry has not been refreshed for a lease's lifetime: their
    /// owner may be gone. The lease key decides; this only says where to look. An entry that
    /// is not a work number is dropped from the index, never polled.
    async fn stale_agents(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.stale_for_longer(Duration::ZERO, max).await
    }
    async fn live_replicas(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let key = self.replicas_key();
        let age_ms = self.lease_ms() * 2 / 3;
        let inv = scripts::Aged { age_ms, max, stale: false }.prepare(&self.scripts.aged, &key);
        let raw: Vec<Vec<u8>> = self.script(StoreOp::Lease, inv).await?;
        let total = raw.len();
        let live: Vec<String> =
            raw.into_iter().filter_map(|r| String::from_utf8(r).ok()).filter(|r| valid_replica(r)).collect();
        if live.len() < total {
            // Planted: ccgate's names are UUIDs. Counted, and left out of the sharing.
            self.metrics.count_discarded(Discarded::StoreRecord, (total - live.len()) as u64);
        }
        Ok(live)
    }
    async fn stale_for_longer(&self, more: Duration, max: usize) -> Result<Vec<String>, StoreError> {
        let key = self.agents_key();
        let age_ms = self.lease_ms() + more.as_millis() as u64;
        let inv = scripts::Aged { age_ms, max, stale: true }.prepare(&self.scripts.aged, &key);
        let raw: Vec<Vec<u8>> = self.script(StoreOp::Lease, inv).await?;
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
    async fn indexed_agents(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let key = self.agents_key();
        let stop = max.saturating_sub(1) as i64;
        let raw: Vec<String> = self
            .run(StoreOp::Read, async |c| redis::cmd("ZRANGE").arg(&key).arg(0).arg(stop).query_async(c).await)
            .await?;
        let total = raw.len();
        let agents: Vec<String> = raw.into_iter().filter(|a| parse_agent_id(a).is_some()).collect();
        if agents.len() < total {
            self.metrics.count_discarded(Discarded::StoreAgentId, (total - agents.len()) as u64);
        }
        Ok(agents)
    }
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let key = self.replicas_key();
        let inv = scripts::Seen { members: &[&*self.replica], back_ms: 0 }.prepare(&self.scripts.seen, &key);
        let _: i64 = self.script(StoreOp::Lease, inv).await?;
        if let Some(me) = self.identity.get() {
            // Its own key (a cluster may put it on another node than the set): one SET with
            // its expiry, so an identity never outlives the replica by more than that.
            let (key, value) = (self.identity_key(&self.replica), me.to_stored());
            let ttl = u64::from(REPLICA_SILENT_LEASES) * self.lease_ms();
            let written: Result<(), _> = self
                .run(StoreOp::Lease, async |c| {
                    redis::cmd("SET").arg(&key).arg(&value).arg("PX").arg(ttl).query_async(c).await
                })
                .await;
            // For people only: a failed write must not cost the round its lease renewals (in a
            // cluster the key may live on a shard that is down while the set's is not).
            if let Err(e) = written {
                tracing::debug!(error = %e, "shared store: could not register this replica's identity");
            }
        }
        Ok(())
    }
    /// One script on Redis's clock: a replica whose own clock runs ahead cannot mistake the
    /// others for silent (issue 35).
    async fn leave(&self) -> Result<usize, StoreError> {
        let key = self.replicas_key();
        let silent_ms = u64::from(REPLICA_SILENT_LEASES) * self.lease_ms();
        let inv = scripts::Leave { replica: &self.replica, silent_ms }.prepare(&self.scripts.leave, &key);
        self.script(StoreOp::Lease, inv).await
    }
    fn register(&self, me: ReplicaIdentity) {
        let _ = self.identity.set(me);
    }
    async fn replica_identity(&self, replica: &str) -> Result<Option<ReplicaIdentity>, StoreError> {
        if !valid_replica(replica) {
            return Ok(None);
        }
        let key = self.identity_key(replica);
        // At most one byte past the bound: a planted huge value is never read whole.
        let last = super::MAX_STORED_IDENTITY_LEN as i64;
        let raw: Vec<u8> = self
            .run(StoreOp::Read, async |c| redis::cmd("GETRANGE").arg(&key).arg(0).arg(last).query_async(c).await)
            .await?;
        if raw.is_empty() {
            return Ok(None);
        }
        match ReplicaIdentity::from_stored(replica, &raw) {
            Some(who) => Ok(Some(who)),
            None => {
                tracing::warn!(replica, "shared store: a replica's identity fails validation; ignored");
                self.metrics.count_discarded(Discarded::StoreRecord, 1);
                Err(StoreError::Malformed("replica identity fails validation".into()))
            }
        }
    }
}

#[async_trait::async_trait]
impl Journal for RedisStore {
    async fn journal(&self, list: JournalList, entry: &[u8], replaces: Option<&[u8]>) -> Result<(), StoreError> {
        if entry.len() > JOURNAL_ENTRY_MAX_BYTES {
            return Err(StoreError::Malformed(format!("journal entry of {} bytes", entry.len())));
        }
        let key = self.journal_key(list);
        let ttl = JOURNAL_AGE.as_millis() as u64;
        // One transaction: the list never holds more than its bound, and never outlives a day
        // without an entry.
        self.run::<()>(StoreOp::Write, async |c| {
            let mut p = redis::pipe();
            p.atomic();
            if let Some(old) = replaces {
                p.lrem(&key, 1, old).ignore();
            }
            p.lpush(&key, entry)
                .ignore()
                .ltrim(&key, 0, JOURNAL_MAX as isize - 1)
                .ignore()
                .pexpire(&key, ttl as i64)
                .ignore()
                .query_async(c)
                .await
        })
        .await
    }

    async fn journal_entries(&self, list: JournalList, max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = self.journal_key(list);
        let last = max.min(JOURNAL_MAX) as isize - 1;
        if last < 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<Vec<u8>> = self
            .run(StoreOp::Read, async |c| redis::cmd("LRANGE").arg(&key).arg(0).arg(last).query_async(c).await)
            .await?;
        // Whatever else shares the key is dropped here; the parser validates the rest.
        Ok(raw.into_iter().filter(|e| e.len() <= JOURNAL_ENTRY_MAX_BYTES).collect())
    }
}

/// Given-up entries one replay script goes through: a few MB at most, so no one call holds
/// Redis for long.
const REPLAY_BATCH: usize = 200;

#[async_trait::async_trait]
impl Deliveries for RedisStore {
    async fn next_seq(&self, lane: &str) -> Result<u64, StoreError> {
        let key = format!("{}{{wh-seq:{lane}}}", self.prefix);
        let args = scripts::WhSeq { ttl_ms: deliveries::SEQ_AGE.as_millis() as u64 };
        let n: i64 = self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_seq, &key)).await?;
        u64::try_from(n).map_err(|_| StoreError::Malformed("a negative sequence number".into()))
    }

    async fn push(
        &self,
        endpoint: &str,
        lane: &str,
        at_ms: u64,
        message: &[u8],
        bound: deliveries::Bound,
    ) -> Result<bool, StoreError> {
        let k = self.endpoint_keys(endpoint);
        let args = scripts::WhPush { lane, at_ms, message, max: bound.events, max_bytes: bound.bytes };
        let queued: i64 = self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_push, &k)).await?;
        Ok(queued == 1)
    }

    async fn claim(&self, endpoint: &str, max: usize, hold: Duration) -> Result<Vec<Claimed>, StoreError> {
        let k = self.endpoint_keys(endpoint);
        let args = scripts::WhClaim { replica: &self.replica, hold_ms: hold.as_millis() as u64, max };
        let flat: Vec<Vec<u8>> = self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_claim, &k)).await?;
        // Each head goes back to the caller, which validates it like network input and drops
        // what ccgate did not write (a lane left with it would be stuck behind it); an attempt
        // count that is not one reads as none. Only a lane that is not text cannot be named
        // back to the store: it is left to its claim's end, and counted.
        let mut out = Vec::with_capacity(flat.len() / 3);
        for c in flat.chunks_exact(3) {
            let Ok(lane) = String::from_utf8(c[0].clone()) else {
                self.metrics.count_discarded(Discarded::StoreEvent, 1);
                continue;
            };
            let attempts = std::str::from_utf8(&c[2]).ok().and_then(|a| a.parse::<u32>().ok()).unwrap_or(0);
            out.push(Claimed { lane, message: c[1].clone(), attempts });
        }
        Ok(out)
    }

    async fn hold(&self, endpoint: &str, lanes: &[&str], hold: Duration) -> Result<(), StoreError> {
        if lanes.is_empty() {
            return Ok(());
        }
        let k = self.endpoint_keys(endpoint);
        let args = scripts::WhHold { replica: &self.replica, hold_ms: hold.as_millis() as u64, lanes };
        let _: i64 = self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_hold, &k)).await?;
        Ok(())
    }

    async fn settle(&self, endpoint: &str, lane: &str, id: &str, how: Settlement<'_>) -> Result<Settled, StoreError> {
        let k = self.endpoint_keys(endpoint);
        let (how, after_ms, entry, max_failed) = match how {
            Settlement::Delivered => ("done", 0, &[][..], 0),
            Settlement::Retry { after, counted } => {
                (if counted { "retry" } else { "hold" }, after.as_millis() as u64, &[][..], 0)
            }
            Settlement::GiveUp { entry, max_failed } => ("fail", 0, entry, max_failed),
        };
        let args = scripts::WhSettle { replica: &self.replica, lane, id, how, after_ms, entry, max_failed };
        let r: i64 = self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_settle, &k)).await?;
        Ok(match r {
            0 => Settled::Done,
            1 => Settled::Evicted,
            _ => Settled::NotHead,
        })
    }

    async fn replay(&self, endpoint: &str, since_ms: u64) -> Result<usize, StoreError> {
        let k = self.endpoint_keys(endpoint);
        let (mut replayed, mut seen, mut total) = (0usize, 0usize, None);
        loop {
            // Exactly the list's length before the replay (the first call's), over all calls:
            // the kept entries then come round to their order (entries given up meanwhile,
            // after them, wait for the next replay).
            let count = total.map_or(REPLAY_BATCH, |t: usize| (t - seen).min(REPLAY_BATCH));
            let args = scripts::WhReplay { since_ms, count };
            let (n, batch, len): (i64, i64, i64) =
                self.script(StoreOp::Webhooks, args.prepare(&self.scripts.wh_replay, &k)).await?;
            replayed += n.max(0) as usize;
            seen += batch.max(0) as usize;
            let total = *total.get_or_insert(len.max(0) as usize);
            if batch <= 0 || seen >= total {
                return Ok(replayed);
            }
        }
    }

    async fn summary(&self, endpoint: &str, recent: usize) -> Result<Summary, StoreError> {
        let k = self.endpoint_keys(endpoint);
        let recent = recent.clamp(1, 100) as isize;
        type Raw = (Option<i64>, Vec<(Vec<u8>, f64)>, Vec<(Vec<u8>, f64)>, i64, Vec<Vec<u8>>, Option<Vec<u8>>);
        let (pending, heads, due, failed, mut recent_failed, disabled): Raw = self
            .run(StoreOp::Webhooks, async |c| {
                redis::pipe()
                    .get(&k.pending)
                    .cmd("ZRANGE")
                    .arg(&k.heads)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .cmd("ZRANGE")
                    .arg(&k.due)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .llen(&k.failed)
                    .lrange(&k.failed, -recent, -1)
                    .get(&k.disabled)
                    .query_async(c)
                    .await
            })
            .await?;
        recent_failed.reverse();
        let ms =
            |v: &[(Vec<u8>, f64)]| v.first().map(|(_, s)| *s).filter(|s| s.is_finite() && *s >= 0.0).map(|s| s as u64);
        Ok(Summary {
            pending: pending.unwrap_or(0).max(0) as u64,
            oldest_ms: ms(&heads),
            next_due_ms: ms(&due),
            failed: failed.max(0) as u64,
            recent_failed: recent_failed
                .into_iter()
                .filter(|e| e.len() <= deliveries::MAX_STORED_MESSAGE + 512)
                .collect(),
            disabled: disabled.filter(|d| d.len() <= 1024),
        })
    }

    async fn set_disabled(&self, endpoint: &str, why: Option<&[u8]>) -> Result<(), StoreError> {
        let key = self.endpoint_keys(endpoint).disabled;
        self.run(StoreOp::Webhooks, async |c| match why {
            Some(w) => redis::cmd("SET").arg(&key).arg(w).query_async::<()>(c).await,
            None => redis::cmd("DEL").arg(&key).query_async::<()>(c).await,
        })
        .await
    }
}

#[async_trait::async_trait]
impl Buckets for RedisStore {
    async fn gcra(&self, bucket: Bucket<'_>, interval: Duration, burst: u32, want: u32) -> Result<Gcra, StoreError> {
        let key = self.limit_key(bucket);
        let args = scripts::GcraCheck { interval_us: interval.as_micros().max(1) as u64, burst, want };
        let (taken, n): (i64, i64) = self.script(StoreOp::Limit, args.prepare(&self.scripts.gcra, &key)).await?;
        // Validated like any answer from the network: never more than asked for, a remainder
        // within the burst, a wait within one burst's refill.
        let clamp = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
        Ok(if taken >= 1 {
            Ok(Grant { taken: clamp(taken, want.max(1)), remaining: clamp(n, burst) })
        } else {
            let longest = interval.saturating_mul(burst.max(1)).as_micros().min(u128::from(u64::MAX)) as u64;
            Err(Duration::from_micros((n.max(0) as u64).min(longest)))
        })
    }
}

#[async_trait::async_trait]
impl ChangeFeed for RedisStore {
    /// Follows the change channel for as long as the process runs: on the primary (any node
    /// of a cluster), subscribing again after a failure and whenever the connection moved to
    /// a new primary; `Change::Resync` after every (re)subscription.
    async fn follow(self: Arc<Self>, mut on: Box<dyn FnMut(Change) + Send>) {
        let mut backoff = Duration::from_millis(100);
        let mut moved = self.conn.changes();
        // Warn once per streak of failures: a failover's seconds are one line, not dozens.
        let mut failing = false;
        loop {
            moved.mark_unchanged();
            let subscribed = async {
                let mut ps = self.conn.pubsub().await?;
                ps.subscribe(&self.channel).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(ps)
            };
            match tokio::time::timeout(self.connect_timeout * 2, subscribed).await {
                Ok(Ok(ps)) => {
                    let since = tokio::time::Instant::now();
                    failing = false;
                    on(Change::Resync);
                    let mut messages = ps.into_on_message();
                    let mut primary_moved = false;
                    loop {
                        let msg = tokio::select! {
                            m = messages.next() => m,
                            _ = moved.changed() => {
                                primary_moved = true;
                                break;
                            }
                        };
                        let Some(msg) = msg else {
                            tracing::warn!("shared store: change channel closed; resubscribing");
                            self.metrics.count_store_error(StoreOp::Subscribe);
                            break;
                        };
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
                    // A new primary: subscribe there at once.
                    if primary_moved {
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                    // A subscription that lived a while was no failure; one closed at once
                    // (a proxy that drops subscribers) backs off like one.
                    if since.elapsed() >= Duration::from_secs(1) {
                        backoff = Duration::from_millis(100);
                    }
                }
                Ok(Err(e)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "shared store: cannot subscribe to the change channel; retrying");
                    }
                    self.failed(StoreOp::Subscribe, unavailable(e));
                }
                Err(_) => {
                    self.failed(StoreOp::Subscribe, StoreError::Unavailable("subscribe timed out".into()));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = moved.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
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
