//! The connection to Redis, and following its primary through a failover (issue 35).
//!
//! Three ways to find the primary ([`StoreMode`]): the URL's host (one server, or a managed
//! endpoint whose name follows the primary), Sentinel (ask the sentinels, follow
//! `+switch-master`), or Redis Cluster (redis-rs's cluster client keeps the slot map; ccgate
//! resends once what the cluster refused without running, see [`Failure::Again`]). Outside a
//! cluster, an answer that says "this node no longer takes our writes" (`READONLY`,
//! `LOADING`, `MASTERDOWN`, a `NOSCRIPT` that loading the script did not cure), a lost
//! connection or repeated timeouts make ccgate drop the connection and connect afresh
//! (resolving the name or asking the sentinels again) at once, then every 50 ms doubling to
//! 1 s until it succeeds; a cluster client is rebuilt after failures in a row. A node is
//! taken only if it says it is a primary (or cannot say) and answers `PING` (not `LOADING`). Commands meanwhile fail at once as `Unavailable`, so the
//! outage behaviour of docs/redis.md applies (copies serve, the owner keeps the newest Guid).
//! Each drop is logged once at warn and counted (`ccgate_store_reconnects_total{reason}`);
//! the change channel resubscribes on the new connection (a `Resync` for every copy).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

use super::StoreError;
use crate::config::{masked_store_url, parse_host_port, StoreConfig, StoreMode};
use crate::labels::StoreReconnect as Reconnect;
use crate::metrics::Metrics;

/// How long a command a cluster refused (`MOVED`, `TRYAGAIN`...) waits before its one more
/// try: the slot map's rebuild, which the refusal started, takes a round trip or two.
pub(super) const CLUSTER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Timeouts in a row (no success between) that mean the node is gone rather than slow.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// In cluster mode the cluster client reconnects single nodes itself; ccgate rebuilds it only
/// after this many failures in a row (a whole cluster moved, or every seed changed address).
const CLUSTER_FAILURES_BEFORE_RECONNECT: u32 = 5;
/// The first retry after a failed connect: soon, since a managed failover's new primary is
/// usually there already; then doubling up to the cap, so a long outage costs little.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// One connection to the current primary, or to the cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(p, offset, count),
            Self::Cluster(c) => c.req_packed_commands(p, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The reconnect a server error calls for, if it is one that means "connect elsewhere".
fn reconnect_for(code: &str) -> Option<Reconnect> {
    Some(match code {
        "READONLY" => Reconnect::ReadOnly,
        "LOADING" => Reconnect::Loading,
        "MASTERDOWN" => Reconnect::MasterDown,
        "NOSCRIPT" => Reconnect::NoScript,
        "CLUSTERDOWN" | "TRYAGAIN" => Reconnect::ClusterDown,
        _ => return None,
    })
}

/// What operators see of the store (`/readyz`, the status page, `ccgate agents`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStatus {
    /// `memory`, `standalone`, `sentinel` or `cluster`.
    pub mode: &'static str,
    /// The node ccgate writes to (`host:port`); the seed nodes for a cluster. `None` while
    /// not connected.
    pub primary: Option<String>,
    pub connected: bool,
    /// Connections dropped and made afresh since start.
    pub reconnects: u64,
    pub last_failover: Option<Failover>,
    /// What the node ccgate writes to said it is when connected: `primary`, or `unknown` (a
    /// proxy that cannot say); `replica` once it answered `READONLY` (demoted under us).
    /// `None` for a cluster (its client writes to each shard's primary) and before the first
    /// connect.
    pub role: Option<&'static str>,
    /// The readiness probe's last round trip (a script that writes), in microseconds: read
    /// off the probe that runs anyway, so it costs requests nothing.
    pub latency_us: Option<u64>,
}

/// The last time ccgate dropped its connection and connected afresh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failover {
    /// Unix ms, this replica's clock (for people, compared with nothing).
    pub at_ms: u64,
    pub reason: &'static str,
    pub from: Option<String>,
    /// The node connected to afterwards; `None` until connected.
    pub to: Option<String>,
    /// From the drop until connected again.
    pub took_ms: Option<u64>,
}

/// How to reach the primary: built once from the config, asked at every (re)connect.
struct Topology {
    mode: StoreMode,
    /// The store URL (standalone), or a template with `HOST:PORT` to fill in per node.
    url: String,
    /// The sentinels or the seed nodes.
    nodes: Vec<(String, u16)>,
    master: String,
    /// How to reach the sentinels (scheme and credentials), a template as `url`.
    sentinel_url: String,
    root_cert: Option<Vec<u8>>,
    connect_timeout: Duration,
    timeout: Duration,
}

/// Placeholder filled with a node's address in the URL templates.
const HOST_SLOT: &str = "\u{1}HOST\u{1}";

/// `url` with its host part replaced by [`HOST_SLOT`]: `rediss://u:p@/0` → `rediss://u:p@␁HOST␁/0`.
fn template(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, _)) => format!("{scheme}://{user}@{HOST_SLOT}{path}"),
        None => format!("{scheme}://{HOST_SLOT}{path}"),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Topology {
    fn new(cfg: &StoreConfig) -> Result<Self, String> {
        let url = cfg.url.as_ref().ok_or("store.url is required with backend = \"redis\"")?.expose().to_owned();
        let root_cert = match &cfg.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("store.ca_file {}: {e}", p.display()))?),
            None => None,
        };
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| parse_host_port(n).ok_or_else(|| format!("store.nodes: {n:?} is not host:port")))
            .collect::<Result<Vec<_>, _>>()?;
        let scheme = if url.starts_with("rediss://") { "rediss" } else { "redis" };
        let sentinel_url = match &cfg.sentinel_url {
            Some(s) => template(s.expose()),
            None => format!("{scheme}://{HOST_SLOT}"),
        };
        let t = Self {
            mode: cfg.mode,
            url: if cfg.mode == StoreMode::Standalone { url } else { template(&url) },
            nodes,
            master: cfg.sentinel_master.clone().unwrap_or_default(),
            sentinel_url,
            root_cert,
            connect_timeout: crate::config::ms(cfg.connect_timeout_ms),
            timeout: crate::config::ms(cfg.command_timeout_ms),
        };
        // Every URL ccgate will build must parse: a typo fails at start, not at a failover.
        t.client(&t.url, "127.0.0.1:1")?;
        if t.mode == StoreMode::Sentinel {
            t.client(&t.sentinel_url, "127.0.0.1:1").map_err(|e| e.replace("store.url", "store.sentinel_url"))?;
        }
        Ok(t)
    }

    /// A client for `template` at `addr` (or the URL itself when it has no slot).
    fn client(&self, template: &str, addr: &str) -> Result<Client, String> {
        let url = template.replace(HOST_SLOT, addr);
        let info =
            url.as_str().into_connection_info().map_err(|e| format!("store.url {}: {e}", masked_store_url(&url)))?;
        let made = if url.starts_with("rediss://") {
            // redis-rs builds its rustls config from the process-wide provider.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: self.root_cert.clone() })
        } else {
            Client::open(info)
        };
        made.map_err(|e| format!("store.url {}: {e}", masked_store_url(&url)))
    }

    fn node_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
    }

    async fn node(&self, template: &str, addr: &str) -> Result<MultiplexedConnection, String> {
        let client = self.client(template, addr)?;
        client
            .get_multiplexed_async_connection_with_config(&self.node_config())
            .await
            .map_err(|e| format!("{addr}: {e}"))
    }

    /// The standalone URL's `host:port`, for people.
    fn standalone_addr(&self) -> String {
        let (host, _) = crate::config::store_url_host_db(&self.url);
        host.to_owned()
    }

    fn seeds(&self) -> String {
        self.nodes.iter().map(|(h, p)| host_port(h, *p)).collect::<Vec<_>>().join(",")
    }

    /// Connects to the primary (or the cluster), within the connect timeout per step.
    /// `start` rotates which sentinel is asked first, so one that is down costs one attempt.
    async fn open(&self, start: usize) -> Result<(Conn, String, Option<Role>), String> {
        match self.mode {
            StoreMode::Standalone => {
                let mut c = self.node(&self.url, "").await?;
                let addr = self.standalone_addr();
                // A name that still leads to the demoted node (a DNS cache, a URL naming a
                // replica) is a failed attempt, retried with backoff, not a connection that
                // answers READONLY to the next write. A proxy that has no ROLE is taken as is.
                let role = self.role(&mut c, &addr).await?;
                if role == Role::Replica {
                    return Err(format!("{addr} is a replica, not the primary (yet)"));
                }
                Ok((Conn::Node(c), addr, Some(role)))
            }
            StoreMode::Sentinel => {
                let mut last = String::from("no sentinel answered");
                for i in 0..self.nodes.len() {
                    let (host, port) = &self.nodes[(start + i) % self.nodes.len()];
                    match self.via_sentinel(&host_port(host, *port)).await {
                        Ok(found) => return Ok(found),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            StoreMode::Cluster => {
                let urls: Vec<String> =
                    self.nodes.iter().map(|(h, p)| self.url.replace(HOST_SLOT, &host_port(h, *p))).collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.timeout)
                    // No retries of its own: redis-rs retries a command whose connection
                    // failed after it was sent, which could run a script twice (a cursor
                    // moved twice, a lock found taken by itself). It still rebuilds its slot
                    // map on MOVED; ccgate runs a command the cluster refused without running
                    // it once more itself (`Failure::Again`).
                    .retries(0);
                if let Some(root_cert) = &self.root_cert {
                    b = b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert.clone()) });
                }
                let client = b.build().map_err(|e| format!("store.nodes: {e}"))?;
                let c = client.get_async_connection().await.map_err(|e| format!("cluster {}: {e}", self.seeds()))?;
                Ok((Conn::Cluster(c), self.seeds(), None))
            }
        }
    }

    /// Asks one sentinel for the primary, connects to it, and checks that it is one (a
    /// sentinel that has not yet seen a failover names the demoted node).
    async fn via_sentinel(&self, sentinel: &str) -> Result<(Conn, String, Option<Role>), String> {
        let mut s = self.node(&self.sentinel_url, sentinel).await.map_err(|e| format!("sentinel {e}"))?;
        let addr: Option<(String, String)> = tokio::time::timeout(
            self.timeout,
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&self.master).query_async(&mut s),
        )
        .await
        .map_err(|_| format!("sentinel {sentinel}: timed out"))?
        .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
        let (host, port) = addr.ok_or_else(|| format!("sentinel {sentinel} knows no master {:?}", self.master))?;
        let port: u16 = port.parse().map_err(|_| format!("sentinel {sentinel} answered a bad port"))?;
        let primary = host_port(&host, port);
        if parse_host_port(&primary).is_none() {
            return Err(format!("sentinel {sentinel} answered a bad address"));
        }
        let mut c = self.node(&self.url, &primary).await?;
        match self.role(&mut c, &primary).await? {
            Role::Replica => Err(format!("{primary}, named by sentinel {sentinel}, is not a primary (yet)")),
            // A primary, or a node that cannot say (its first write tells, READONLY).
            role => Ok((Conn::Node(c), primary, Some(role))),
        }
    }

    /// What the node says it is, then that it serves: `HELLO` (no arguments: the connection's
    /// context, `role` among it; `@connection`, allowed to the ACL docs/redis.md gives ccgate),
    /// else `ROLE` (`@dangerous`); a node that answers neither (a proxy) is `Unknown`. Then a
    /// `PING`: a node still loading its data answers `LOADING`, and is not taken yet.
    async fn role(&self, c: &mut MultiplexedConnection, addr: &str) -> Result<Role, String> {
        let ask = async |c: &mut MultiplexedConnection, cmd: &str| -> Result<Result<Value, RedisError>, String> {
            tokio::time::timeout(self.timeout, redis::cmd(cmd).query_async(c))
                .await
                .map_err(|_| format!("{addr}: {cmd} timed out"))
        };
        let named = |v: &[u8]| match v {
            b"master" => Role::Primary,
            b"slave" | b"replica" => Role::Replica,
            _ => Role::Unknown,
        };
        let role = match ask(c, "HELLO").await? {
            // `[k, v, k, v, ...]` (RESP2) or a map (RESP3).
            Ok(Value::Array(kv)) => kv.chunks(2).find_map(|p| match p {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"role" => Some(named(v)),
                _ => None,
            }),
            Ok(Value::Map(kv)) => kv.iter().find_map(|(k, v)| match (k, v) {
                (Value::BulkString(k), Value::BulkString(v)) if k == b"role" => Some(named(v)),
                _ => None,
            }),
            Ok(_) => None,
            Err(e) if e.code().is_some() => None,
            Err(e) => return Err(format!("{addr}: {e}")),
        };
        let role = match role {
            Some(r) => r,
            None => match ask(c, "ROLE").await? {
                Ok(Value::Array(r)) => match r.first() {
                    Some(Value::BulkString(v)) => named(v),
                    _ => Role::Unknown,
                },
                Ok(_) => Role::Unknown,
                Err(e) if e.code().is_some() => Role::Unknown,
                Err(e) => return Err(format!("{addr}: {e}")),
            },
        };
        match ask(c, "PING").await? {
            Ok(_) => Ok(role),
            Err(e) => Err(format!("{addr}: {}", e.code().unwrap_or("PING failed"))),
        }
    }

    /// A subscriber for the change channel: on the primary (standalone, sentinel), or on a
    /// seed of a cluster (classic pub/sub reaches every node of a cluster).
    async fn pubsub(&self, primary: Option<&str>, start: usize) -> Result<redis::aio::PubSub, String> {
        let subscribe = async |template: &str, addr: &str| -> Result<redis::aio::PubSub, String> {
            self.client(template, addr)?.get_async_pubsub().await.map_err(|e| format!("{addr}: {e}"))
        };
        match (self.mode, primary) {
            (StoreMode::Standalone, _) => subscribe(&self.url, "").await,
            (StoreMode::Sentinel, Some(p)) => subscribe(&self.url, p).await,
            (StoreMode::Sentinel, None) => Err("no primary yet".into()),
            // One seed per try (the caller moves `start` on after a failure), so a seed that
            // swallows packets costs one try, not every one.
            (StoreMode::Cluster, _) => {
                let (h, p) = &self.nodes[start % self.nodes.len().max(1)];
                subscribe(&self.url, &host_port(h, *p)).await
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
    Unknown,
}

impl Role {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Unknown => "unknown",
        }
    }
}

struct Held {
    conn: Conn,
    generation: u64,
}

/// The connection ccgate holds to Redis, shared by every gateway's store; it reconnects as
/// the module's summary says.
pub(super) struct Connection {
    topology: Topology,
    current: ArcSwapOption<Held>,
    /// Connects running (the probe's, the reconnect loop): a count, so one that ends cannot
    /// clear the mark of one that began meanwhile.
    connecting: Arc<AtomicU32>,
    /// Which seed the change channel subscribes on next (cluster).
    pubsub_start: AtomicU32,
    /// Failures (timeouts; on a cluster, any unavailability) since the last success.
    failures: AtomicU32,
    generation: AtomicU64,
    /// Bumped at every new connection: the change channel resubscribes.
    changed: tokio::sync::watch::Sender<u64>,
    status: Mutex<StoreStatus>,
    /// Which sentinel or seed to ask first.
    start: AtomicU32,
    /// Cuts the reconnect loop's wait short (a sentinel announced the new primary).
    wake: tokio::sync::Notify,
    metrics: Metrics,
}

/// Marks a connect as running for as long as it lives (dropped at the end, or if the task is
/// cancelled or panics: the mark is never left behind).
struct Connecting(Arc<AtomicU32>);

impl Connecting {
    fn start(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }

    /// Only if none runs: the probe's connect never runs beside the reconnect loop.
    fn try_start(count: &Arc<AtomicU32>) -> Option<Self> {
        count.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Self(count.clone()))
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A failed command, as the store files it.
pub(super) enum Failure {
    /// The node refused it without running it (`READONLY`, `LOADING`, `MASTERDOWN`,
    /// `NOSCRIPT`) and the connection is being made afresh: worth one more try on the new one.
    Moved(String),
    /// A cluster refused it without running it (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `READONLY` from a demoted node): worth one more try once its slot map is rebuilt.
    Again(String),
    /// Redis cannot serve us now: the outage behaviour applies.
    Unavailable(String),
    /// Redis answered, but not what ccgate can use.
    Malformed(String),
}

impl Failure {
    /// As the store reports it.
    pub fn into_error(self) -> StoreError {
        match self {
            Self::Moved(why) | Self::Again(why) | Self::Unavailable(why) => StoreError::Unavailable(why),
            Self::Malformed(why) => StoreError::Malformed(why),
        }
    }
}

impl Connection {
    pub fn new(cfg: &StoreConfig, metrics: Metrics) -> Result<Arc<Self>, String> {
        let topology = Topology::new(cfg)?;
        let status = StoreStatus { mode: topology.mode.as_str(), ..StoreStatus::default() };
        Ok(Arc::new(Self {
            topology,
            current: ArcSwapOption::empty(),
            connecting: Arc::new(AtomicU32::new(0)),
            pubsub_start: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            changed: tokio::sync::watch::channel(0).0,
            status: Mutex::new(status),
            start: AtomicU32::new(0),
            wake: tokio::sync::Notify::new(),
            metrics,
        }))
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, StoreStatus> {
        crate::sync::lock(&self.status)
    }

    pub fn status(&self) -> StoreStatus {
        self.status_mut().clone()
    }

    /// The connection and its generation, or `Unavailable` at once while there is none.
    pub fn get(&self) -> Result<(Conn, u64), String> {
        match self.current.load_full() {
            Some(h) => Ok((h.conn.clone(), h.generation)),
            None if self.connecting.load(Ordering::Acquire) > 0 => Err("reconnecting".into()),
            None => Err("not connected yet".into()),
        }
    }

    /// Connects if not connected and no connect is running (start-up, the readiness probe).
    pub async fn connect(self: &Arc<Self>) -> Result<(), String> {
        if self.current.load().is_some() {
            return Ok(());
        }
        let Some(_running) = Connecting::try_start(&self.connecting) else {
            return Err("connecting".into());
        };
        if self.current.load().is_some() {
            return Ok(()); // Connected meanwhile.
        }
        self.attempt().await
    }

    /// One connect, within twice the connect timeout (a sentinel, then the primary).
    async fn attempt(&self) -> Result<(), String> {
        let start = self.start.load(Ordering::Relaxed) as usize;
        let limit = self.topology.connect_timeout * 2;
        let opened = match tokio::time::timeout(limit, self.topology.open(start)).await {
            Ok(r) => r,
            Err(_) => Err("connect timed out".into()),
        };
        match opened {
            Ok((conn, primary, role)) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                self.failures.store(0, Ordering::Relaxed);
                // Status first: a drop right after the connection is published then finds
                // (and leaves) a status that says so.
                {
                    let mut s = self.status_mut();
                    s.connected = true;
                    if let Some(f) = s.last_failover.as_mut().filter(|f| f.to.is_none()) {
                        f.to = Some(primary.clone());
                        f.took_ms = Some(crate::clock::unix_ms().saturating_sub(f.at_ms));
                    }
                    s.primary = Some(primary.clone());
                    s.role = role.map(Role::as_str);
                }
                self.metrics.set_store_up(true);
                self.current.store(Some(Arc::new(Held { conn, generation })));
                let _ = self.changed.send(generation);
                tracing::info!(mode = self.topology.mode.as_str(), primary = %primary, "shared store connected");
                Ok(())
            }
            Err(e) => {
                self.start.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The readiness probe's round trip, for operators ([`StoreStatus::latency_us`]); `None`
    /// when it failed.
    pub fn record_probe(&self, took: Option<Duration>) {
        self.status_mut().latency_us = took.map(|t| t.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// A command on generation `generation` succeeded.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A command on `generation` timed out: after a few in a row, connect afresh.
    pub fn timed_out(self: &Arc<Self>, generation: u64) {
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= TIMEOUTS_BEFORE_RECONNECT {
            self.reconnect(generation, Reconnect::Timeouts);
        }
    }

    /// Files a failed command, and connects afresh when the error says the node is no
    /// longer the one to write to.
    pub fn failed(self: &Arc<Self>, generation: u64, e: &RedisError) -> Failure {
        let cluster = self.topology.mode == StoreMode::Cluster;
        let refused = matches!(
            e.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "LOADING" | "MASTERDOWN")
        );
        if cluster && refused {
            let why = format!("{} from the cluster", e.code().unwrap_or("refused"));
            // The cluster client follows a shard's failover itself (its slot map); rebuild it
            // only when such answers go on (ASK, a resharding, is no reason), and then wait
            // for the new client rather than resend into the gap.
            if e.code() != Some("ASK") && self.many_failures() {
                self.reconnect(generation, Reconnect::ClusterDown);
                return Failure::Moved(why);
            }
            return Failure::Again(why);
        }
        if cluster && e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
            if self.many_failures() {
                self.reconnect(generation, Reconnect::ConnectionLost);
            }
            return Failure::Unavailable(e.to_string());
        }
        if let Some(reason) = e.code().and_then(reconnect_for) {
            let why = format!("{} from the store", reason.as_str().to_uppercase());
            self.reconnect(generation, reason);
            // None of these ran the command (NOSCRIPT: the script did not run).
            return Failure::Moved(why);
        }
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            // The cluster client reconnects single nodes itself.
            if !cluster || self.many_failures() {
                self.reconnect(generation, Reconnect::ConnectionLost);
            }
            return Failure::Unavailable(e.to_string());
        }
        Failure::Malformed(e.to_string())
    }

    fn many_failures(&self) -> bool {
        self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= CLUSTER_FAILURES_BEFORE_RECONNECT
    }

    /// Drops generation `generation` (if it is still the current one) and connects afresh in
    /// the background until it succeeds. Logged once per drop.
    pub fn reconnect(self: &Arc<Self>, generation: u64, reason: Reconnect) {
        // Marked as connecting before the connection goes, so no one sees neither.
        let running = Connecting::start(&self.connecting);
        let dropped = self.current.rcu(|cur| match cur {
            Some(h) if h.generation == generation => None,
            other => other.clone(),
        });
        if dropped.as_ref().is_none_or(|h| h.generation != generation) {
            return; // Already dropped (or already replaced) by another caller.
        }
        let from = {
            let mut s = self.status_mut();
            s.connected = false;
            s.reconnects += 1;
            let from = s.primary.take();
            // What was seen of the node that is gone says nothing of the next, except why it
            // went: a READONLY answer means it had become a replica.
            s.latency_us = None;
            s.role = (reason == Reconnect::ReadOnly).then_some(Role::Replica.as_str());
            s.last_failover = Some(Failover {
                at_ms: crate::clock::unix_ms(),
                reason: reason.as_str(),
                from: from.clone(),
                to: None,
                took_ms: None,
            });
            from
        };
        self.metrics.count_store_reconnect(reason);
        self.metrics.set_store_up(false);
        tracing::warn!(
            reason = reason.as_str(),
            node = from.as_deref().unwrap_or("-"),
            "shared store: dropping the connection and connecting afresh"
        );
        let this = self.clone();
        tokio::spawn(async move {
            let _running = running;
            let mut delay = RECONNECT_FIRST_DELAY;
            loop {
                match this.attempt().await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(error = %e, "shared store: reconnect failed; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = this.wake.notified() => {}
                }
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
        });
    }

    /// Waits until a connection newer than `generation` is there, at most `within`.
    pub async fn replaced(&self, generation: u64, within: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(within, rx.wait_for(|g| *g > generation)).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits for the next new connection (the change channel resubscribes on it).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A subscriber on the current primary (or any cluster node).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let primary = self.status_mut().primary.clone();
        let start = self.pubsub_start.load(Ordering::Relaxed) as usize;
        let made = tokio::time::timeout(self.topology.connect_timeout, self.topology.pubsub(primary.as_deref(), start))
            .await
            .unwrap_or_else(|_| Err("subscribe timed out".into()));
        if made.is_err() {
            self.pubsub_start.fetch_add(1, Ordering::Relaxed);
        }
        made
    }

    /// In sentinel mode, follows the sentinels' `+switch-master` announcements for as long as
    /// the process runs: a new primary of our master drops the connection at once, before any
    /// command fails. The errors of [`Connection::failed`] catch what a missed announcement
    /// would.
    pub async fn follow_sentinels(self: Arc<Self>) {
        if self.topology.mode != StoreMode::Sentinel || self.topology.nodes.is_empty() {
            return;
        }
        let mut i = 0usize;
        loop {
            let (host, port) = &self.topology.nodes[i % self.topology.nodes.len()];
            let sentinel = host_port(host, *port);
            i += 1;
            let subscribed = async {
                let mut ps = self
                    .topology
                    .client(&self.topology.sentinel_url, &sentinel)?
                    .get_async_pubsub()
                    .await
                    .map_err(|e| e.to_string())?;
                ps.subscribe("+switch-master").await.map_err(|e| e.to_string())?;
                Ok::<_, String>(ps)
            };
            match tokio::time::timeout(self.topology.connect_timeout, subscribed).await {
                Ok(Ok(ps)) => {
                    let mut messages = ps.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(text) = msg.get_payload::<String>() else { continue };
                        // `<master name> <old ip> <old port> <new ip> <new port>`
                        let mut parts = text.split(' ');
                        if parts.next() != Some(self.topology.master.as_str()) {
                            continue;
                        }
                        let new =
                            parts.nth(2).zip(parts.next().and_then(|p| p.parse().ok())).map(|(h, p)| host_port(h, p));
                        match self.current.load_full() {
                            Some(h) if self.status().primary != new => {
                                self.reconnect(h.generation, Reconnect::SwitchMaster)
                            }
                            Some(_) => {}
                            // Reconnecting already (the old primary died): ask again now.
                            None => self.wake.notify_one(),
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!(sentinel = %sentinel, error = %e, "cannot follow a sentinel"),
                Err(_) => tracing::debug!(sentinel = %sentinel, "following a sentinel timed out"),
            }
            tokio::time::sleep(RECONNECT_MAX_DELAY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_keep_scheme_credentials_and_database() {
        assert_eq!(template("rediss://u:p@/0"), format!("rediss://u:p@{HOST_SLOT}/0"));
        assert_eq!(template("redis:///3"), format!("redis://{HOST_SLOT}/3"));
        assert_eq!(template("redis://"), format!("redis://{HOST_SLOT}"));
        assert_eq!(template("redis://:pw@h:1/2").replace(HOST_SLOT, "n:2"), "redis://:pw@n:2/2");
    }

    #[test]
    fn failover_answers_name_their_reason() {
        for (code, reason) in [
            ("READONLY", Reconnect::ReadOnly),
            ("LOADING", Reconnect::Loading),
            ("MASTERDOWN", Reconnect::MasterDown),
            ("NOSCRIPT", Reconnect::NoScript),
            ("TRYAGAIN", Reconnect::ClusterDown),
        ] {
            assert_eq!(reconnect_for(code), Some(reason));
        }
        assert_eq!(reconnect_for("WRONGTYPE"), None, "a planted value is garbage, not a failover");
        assert_eq!(reconnect_for("ERR"), None);
    }
}
