//! Building and running the proxy from a [`Config`]: the one code path used by `serve`,
//! `demo` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use arc_swap::ArcSwap;

use crate::admin::{Admin, GatewayState, Readiness, Replicas};
use crate::config::{ms, Config, StoreBackend};
use crate::edge::auth::Authenticator;
use crate::edge::Proxy;
use crate::gateway::client::ProbeFailure;
use crate::gateway::GatewayClient;
use crate::metrics::{Metered, Metrics};
use crate::ops::limits::{Limits, EVICTION_INTERVAL};
use crate::ops::Core;
use crate::reload::{ConfigSource, Live, Parts, ReloadTrigger, Reloader};
use crate::server::listener::{triggered, ConnectionMetrics};
use crate::server::{self, ServeOptions, Shutdown};
use crate::session::{GatewayIdentity, Gateways, SessionStore};
use crate::shared::redis::RedisStore;
use crate::shared::{Backend, Membership, ReplicaIdentity, SharedStore};
use crate::tls;
use crate::webhooks::Webhooks;

/// How often `/readyz` re-checks that the gateway accepts TCP connections.
const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How often `/readyz` re-checks that the shared store answers: Redis is on the path of new
/// sign-ins, so its loss should show quickly.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Connections the admin listener accepts: Prometheus, the kubelet's probes and an operator.
/// At the cap a silent or the longest-idle one is closed for a new one, so probes always get in.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// HTTP/2 streams per admin connection: a scraper and a browser tab need a few.
const ADMIN_MAX_STREAMS: u32 = 16;
/// A probe or scrape sends its request at once; a connection that has not within this is
/// someone else's and gives its slot back. Also HTTP/1's keep-alive idle limit there
/// (Prometheus reconnects per scrape at worst).
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// An admin connection with no request in flight is closed after this long (HTTP/2).
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Part of the shutdown grace kept for signing agents out after connections drained: one
/// logout round trip per agent, all in parallel, takes well under this on a LAN.
const SIGN_OUT_RESERVE: Duration = Duration::from_secs(2);

/// A running proxy.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    /// The first gateway's agents (the only gateway's, in most deployments).
    pub sessions: Arc<SessionStore>,
    /// Every gateway's agents, in config order.
    pub gateways: Arc<Gateways>,
    /// The rate limits in force (a reload may replace them).
    pub limits: Arc<ArcSwap<Limits>>,
    /// SIGHUP, `ccgate reload` and `POST /-/reload` run this.
    pub reloader: Arc<Reloader>,
    /// The webhook endpoints and their deliveries.
    pub webhooks: Arc<Webhooks>,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_delay: Duration,
    grace: Duration,
}

impl Running {
    /// Graceful shutdown, all within `server.shutdown_grace_ms`:
    /// 1. `/readyz` turns 503 at once, but requests are still served for the drain delay, so
    ///    load balancers stop routing here before connections are refused;
    /// 2. listeners stop accepting, event streams end, in-flight requests finish;
    /// 3. pollers stop and (if configured) every agent is signed out at the gateway.
    ///
    /// Returns how many agents it should have signed out but could not (they stay signed in
    /// at the gateway; each is logged).
    pub async fn stop(self) -> usize {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.readiness.set_shutting_down();
        tracing::info!(drain_ms = self.drain_delay.as_millis() as u64, "shutting down: not ready; draining");
        tokio::time::sleep(self.drain_delay).await;
        self.shutdown.trigger();
        let listeners = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout_at(deadline, listeners).await.is_err() {
            tracing::warn!("listeners did not close within the grace period");
        }
        let left = match tokio::time::timeout_at(deadline, self.gateways.shutdown(deadline)).await {
            Ok(left) => left,
            Err(_) => {
                tracing::warn!("not every agent could be signed out within the grace period");
                self.gateways.live_agents()
            }
        };
        // With Redis, the events handed over (the sign-outs' `ccgate.session_ended` among them)
        // reach the shared backlogs for the other replicas to send, and the attempts running
        // here end first (one cut off would be sent again once its claim ran out). With the
        // memory store what is queued goes with the process (README, "Webhooks").
        self.webhooks.finish(deadline).await;
        if left > 0 {
            tracing::warn!(agents = left, "shutdown complete; agents left signed in at the gateway");
        } else {
            tracing::info!("shutdown complete");
        }
        left
    }
}

/// Why ccgate could not start: the step that failed and what to fix. `ccgate serve` prints
/// it as one line (`Display`), naming the config key where there is one.
#[derive(Debug)]
pub enum StartError {
    /// A gateway's client could not be built (its URL, CA file or client certificate);
    /// `gateway` is named when several are configured.
    Gateway { gateway: Option<String>, reason: String },
    /// The shared store's configuration (`store.*`).
    Store(String),
    /// The live parts: key sets, credentials, the certificate, rate limits.
    Parts(String),
    /// The server TLS configuration from the certificate.
    Tls(String),
    /// A listener could not be bound (`key` is `server.listen` or `admin.listen`).
    Listen { key: &'static str, addr: SocketAddr, error: std::io::Error },
    /// A bound listener could not be served.
    Serve { key: &'static str, reason: String },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway { gateway: Some(g), reason } => write!(f, "gateway {g}: {reason}"),
            Self::Gateway { gateway: None, reason } => f.write_str(reason),
            Self::Store(e) | Self::Parts(e) | Self::Tls(e) => f.write_str(e),
            Self::Listen { key, addr, error } => write!(f, "{key} {addr}: {error}"),
            Self::Serve { key, reason } => write!(f, "{key}: {reason}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Loads keys and credentials, binds both listeners, starts serving. Every error names what
/// to fix. A config built in memory (tests, the demo) cannot be reloaded from a file.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_from(config, None).await
}

/// [`start`], remembering where the config came from so a reload can read it again. The
/// steps, in order: what everything reports to (metrics, readiness); the gateways' clients;
/// the shared store; the live parts a reload swaps (keys, credentials, certificate, limits);
/// the file-descriptor budget; one session store per gateway; the core and the reloader;
/// both listeners; the background tasks.
pub async fn start_from(config: &Config, source: Option<ConfigSource>) -> Result<Running, StartError> {
    let gateways = config.gateway_list();
    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    let (metrics, readiness) = observability(config, &gateways);
    let clients = gateway_clients(config, &gateways)?;
    let shutdown = Shutdown::new();
    let shared = shared_store(config, &metrics, &readiness).await?;
    let on_keys = notify_on_keys(&readiness);
    let live = Live::build(config, &names, &metrics, shared.as_ref(), None, Some(on_keys.clone()))
        .map_err(StartError::Parts)?;
    let auth = authenticator(config, live.auth, &readiness).await;
    let cert = live.cert.map(tls::CertResolver::new);
    if let Some(c) = &cert {
        metrics.watch_certificate(c);
    }
    let server_tls = match &cert {
        Some(resolver) => Some(tls::server_config_with_resolver(resolver.clone()).map_err(StartError::Tls)?),
        None => None,
    };
    let max_agents_by_files = descriptor_budget(config);
    let stores = gateways
        .iter()
        .zip(&clients)
        .zip(live.creds)
        .enumerate()
        .map(|(i, ((g, client), creds))| {
            let m = metrics.gateway(i);
            let creds = creds.ok_or_else(|| StartError::Parts(format!("gateway {}: no credentials", g.name)))?;
            Ok(SessionStore::new(
                GatewayIdentity { name: g.name.as_str().into(), max_agents: g.max_agents, max_agents_by_files },
                Arc::new(Metered::new(client.clone(), m.clone())),
                creds,
                config.sessions.clone(),
                m,
                shared.clone().map(|s| s.for_gateway(g.namespace())),
                config.store.on_shutdown,
            ))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    let all = Gateways::new(stores);
    let webhooks = webhooks(&all, live.webhooks, &metrics, shared.clone());
    all.start_replication();
    let sessions = all.first().clone();
    let core = Core::new(all.clone(), Arc::new(live.limits), live.settings);
    let limits = core.limits.clone();
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        source,
        Parts {
            auth: auth.clone(),
            gateways: all.clone(),
            limits: core.limits.clone(),
            settings: core.settings.clone(),
            cert: cert.clone(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            on_keys: Some(on_keys),
            webhooks: webhooks.clone(),
        },
    ));
    let proxy = Arc::new(Proxy {
        auth: auth.clone(),
        core,
        metrics: metrics.clone(),
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: ms(config.server.body_read_timeout_ms),
        shutdown: shutdown.subscribe(),
        refusals: Default::default(),
    });
    let (opts, admin_opts) = serve_options(config, &metrics);
    let proxy_listener = bind("server.listen", config.server.listen).await?;
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let served = server::spawn(proxy_listener, server_tls, proxy, opts, shutdown.subscribe())
        .map_err(|e| StartError::Serve { key: "server.listen", reason: e.to_string() })?;
    let replicas = replicas(&admin_listener, shared.as_ref(), &metrics)?;
    let admin = admin(config, &metrics, &readiness, &auth, &reloader, &all, &limits, replicas, &webhooks);
    let admin_served = server::spawn(admin_listener, None, admin, admin_opts, shutdown.subscribe())
        .map_err(|e| StartError::Serve { key: "admin.listen", reason: e.to_string() })?;
    // Background tasks: gateway and store probes, key eviction, certificate watching.
    let mut tasks = vec![served.task, admin_served.task];
    for (i, (client, g)) in clients.into_iter().zip(&gateways).enumerate() {
        let probe = Probe { index: i, name: g.name.clone(), client, metrics: metrics.gateway(i) };
        tasks.push(tokio::spawn(probe_gateway(probe, readiness.clone(), shutdown.clone())));
    }
    tasks.push(tokio::spawn(evict_idle_keys(limits.clone(), auth.clone(), shutdown.clone())));
    if let Some(shared) = shared {
        tokio::spawn(probe_store(shared, readiness.clone(), shutdown.clone()));
    }
    tokio::spawn(watch_certificate(Arc::downgrade(&reloader), shutdown.clone()));
    Ok(Running {
        proxy_addr: served.addr,
        admin_addr: admin_served.addr,
        metrics,
        readiness,
        sessions,
        gateways: all,
        webhooks,
        shutdown,
        tasks,
        limits,
        reloader,
        drain_delay: ms(config.server.drain_delay_ms),
        grace: ms(config.server.shutdown_grace_ms),
    })
}

/// Step 6b: the webhook endpoints, fed by every gateway's sessions, their backlogs in the
/// shared store when there is one; their delivery tasks run from here on.
fn webhooks(
    all: &Gateways,
    parts: Vec<crate::webhooks::Parts>,
    metrics: &Metrics,
    shared: Option<Arc<dyn SharedStore>>,
) -> Arc<Webhooks> {
    let webhooks = Webhooks::new(parts, metrics, shared);
    for store in all.iter() {
        store.connect_outlet(webhooks.sink(&store.identity.name));
    }
    webhooks.start();
    webhooks
}

/// Step 1: what everything reports to, the metrics (one label per gateway) and readiness.
fn observability(config: &Config, gateways: &[crate::config::GatewayConfig]) -> (Metrics, Arc<Readiness>) {
    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    let metrics = Metrics::new(&names);
    let readiness = Arc::new(Readiness::default());
    readiness.set_gateways(gateways);
    readiness.require_gateway(config.admin.ready_requires_gateway);
    readiness.require_store(config.admin.ready_requires_store);
    (metrics, readiness)
}

/// Step 2: one client per gateway (connection pool, TLS to the gateway, the probe).
fn gateway_clients(
    config: &Config,
    gateways: &[crate::config::GatewayConfig],
) -> Result<Vec<GatewayClient>, StartError> {
    let several = !config.gateways.is_empty();
    gateways
        .iter()
        .map(|g| {
            GatewayClient::new(g)
                .map_err(|reason| StartError::Gateway { gateway: several.then(|| g.name.clone()), reason })
        })
        .collect()
}

/// Step 3: the shared store, with `store.backend = "redis"`. Not reachable is not fatal: a
/// replica that starts while Redis is away serves once it is back (and says so on /readyz
/// meanwhile).
async fn shared_store(
    config: &Config,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Result<Option<Arc<dyn SharedStore>>, StartError> {
    match config.store.backend {
        StoreBackend::Memory => Ok(None),
        StoreBackend::Redis => {
            let shared: Arc<dyn SharedStore> =
                RedisStore::new(&config.store, metrics.clone(), crate::shared::TOMBSTONE).map_err(StartError::Store)?;
            if let Err(e) = shared.connect().await {
                tracing::warn!(error = %e, "shared store not reachable yet; retrying in the background");
            }
            let status = shared.clone();
            readiness.watch_store(Box::new(move || status.status()));
            Ok(Some(shared))
        }
    }
}

/// Readiness looks again whenever a provider's keys change.
fn notify_on_keys(readiness: &Arc<Readiness>) -> crate::jwks::remote::OnChange {
    let readiness = Arc::downgrade(readiness);
    Arc::new(move || {
        if let Some(r) = readiness.upgrade() {
            r.notify();
        }
    })
}

/// Step 4: the authenticator, once the providers' keys are in (or the start-up wait is over:
/// then it serves, not ready, and their tokens get 503 until the keys arrive).
async fn authenticator(config: &Config, auth: Authenticator, readiness: &Readiness) -> Arc<ArcSwap<Authenticator>> {
    let missing = auth.wait_for_keys(ms(config.auth.jwks_startup_wait_ms)).await;
    if !missing.is_empty() {
        tracing::warn!(issuers = ?missing, "serving without these providers' keys yet (not ready); their tokens get 503 until the keys are fetched");
    }
    let auth = Arc::new(ArcSwap::from_pointee(auth));
    let weak = Arc::downgrade(&auth);
    readiness.watch_keys(Box::new(move || weak.upgrade().is_none_or(|a| a.load().keys_loaded())));
    auth
}

/// Step 5: file descriptors. The soft limit raised to the hard one, and fewer agents taken
/// when even that cannot hold what the configuration can need (`descriptors.rs`).
fn descriptor_budget(config: &Config) -> Option<usize> {
    let (budget, limit) = crate::descriptors::Budget::at_start(config)?;
    if let Some(from) = limit.raised_from {
        tracing::info!(from, to = limit.soft, hard = limit.hard, "raised the soft open-file limit");
    }
    if let Some(why) = budget.shortfall("the open-file limit") {
        tracing::warn!("{why}");
    }
    budget.agents
}

/// How each listener serves: the app listener as configured, the admin listener tighter (it
/// serves a scraper and a few probes).
fn serve_options(config: &Config, metrics: &Metrics) -> (ServeOptions, ServeOptions) {
    let grace = ms(config.server.shutdown_grace_ms);
    let drain_delay = ms(config.server.drain_delay_ms);
    let opts = ServeOptions {
        tls_handshake_timeout: ms(config.server.tls_handshake_timeout_ms),
        header_read_timeout: ms(config.server.header_read_timeout_ms),
        idle_timeout: ms(config.server.idle_timeout_ms),
        max_connections: config.server.max_connections,
        max_streams: config.server.max_streams_per_connection,
        metrics: Some(ConnectionMetrics {
            open: metrics.connections_gauge(),
            refused: metrics.connections_refused(),
            shed: metrics.connections_shed(),
        }),
        // What is left of the grace after the drain delay, less the sign-out reserve.
        grace: grace.saturating_sub(drain_delay).saturating_sub(SIGN_OUT_RESERVE),
        shed_when_full: true,
    };
    let admin = ServeOptions {
        max_connections: ADMIN_MAX_CONNECTIONS,
        max_streams: ADMIN_MAX_STREAMS,
        metrics: None,
        header_read_timeout: ADMIN_HEADER_READ_TIMEOUT.min(opts.header_read_timeout),
        idle_timeout: ADMIN_IDLE_TIMEOUT.min(opts.idle_timeout),
        shed_when_full: true,
        ..opts.clone()
    };
    (opts, admin)
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|error| StartError::Listen { key, addr, error })
}

/// Who this replica is (its name in leases, the host, the admin listener as bound), shown on
/// `/readyz`, the status page and `ccgate_replica_info`, and registered in the shared store
/// so other replicas' views can say where an agent's poller runs. With the memory store
/// the name is made here, in the form Redis's replicas have.
fn replicas(
    admin_listener: &TcpListener,
    shared: Option<&Arc<dyn SharedStore>>,
    metrics: &Metrics,
) -> Result<Arc<Replicas>, StartError> {
    let addr = admin_listener
        .local_addr()
        .map_err(|error| StartError::Serve { key: "admin.listen", reason: format!("no local address: {error}") })?;
    let id = shared.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), |s| s.replica().to_owned());
    let me = ReplicaIdentity::of_this_process(&id, addr);
    metrics.set_replica(&me.id, &me.host, &me.admin);
    Ok(Arc::new(Replicas::new(me, shared.map(|s| s.clone() as Arc<dyn Membership>))))
}

/// The admin listener's handler. It holds the parts it reports on weakly: a running admin
/// must not keep a stopped proxy's sessions alive. (One argument per part it reports on.)
#[allow(clippy::too_many_arguments)]
fn admin(
    config: &Config,
    metrics: &Metrics,
    readiness: &Arc<Readiness>,
    auth: &Arc<ArcSwap<Authenticator>>,
    reloader: &Arc<Reloader>,
    all: &Arc<Gateways>,
    limits: &Arc<ArcSwap<Limits>>,
    replicas: Arc<Replicas>,
    webhooks: &Arc<Webhooks>,
) -> Arc<Admin> {
    let auth = Arc::downgrade(auth);
    let shown = Arc::downgrade(reloader);
    let reloader = Arc::downgrade(reloader);
    let all = Arc::downgrade(all);
    let limits = Arc::downgrade(limits);
    Arc::new(Admin {
        webhooks: Some(webhooks.clone()),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        issuers: Some(Box::new(move || auth.upgrade().map(|a| a.load().remote_issuers()).unwrap_or_default())),
        reload: Some(Arc::new(move || {
            let reloader = reloader.clone();
            Box::pin(async move {
                let r = reloader.upgrade().ok_or("shutting down")?;
                let report = r.reload(ReloadTrigger::Admin).await?;
                serde_json::to_value(report).map_err(|e| e.to_string())
            })
        })),
        agents: Some(Arc::new({
            let replicas = replicas.clone();
            move |gateway: Option<String>, agent: Option<String>| {
                let (all, replicas) = (all.clone(), replicas.clone());
                Box::pin(async move {
                    match all.upgrade() {
                        Some(s) => {
                            let q = crate::session::AgentQuery { gateway, agent };
                            let mut list = s.agents(&q).await;
                            let look_up = !list.partial;
                            replicas.name_pollers(&mut list.agents, look_up).await;
                            serde_json::to_value(list).unwrap_or_default()
                        }
                        None => serde_json::json!({"agents": [], "partial": false}),
                    }
                })
            }
        })),
        config: Some(Box::new(move || shown.upgrade().map_or(serde_json::Value::Null, |r| r.config_document()))),
        limits: Some(Box::new(move || {
            let view = limits.upgrade().map(|l| l.load().view()).unwrap_or_default();
            serde_json::json!({"limits": view, "fullest_shown": crate::ops::FULLEST_BUCKETS})
        })),
        agents_from: config.admin.agents_from,
        hosts: config.admin.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        rates: Default::default(),
        replicas,
    })
}

/// Loads a renewed server certificate when its files change (`server.tls_watch_interval_ms`).
/// While watching is off (0, or plain HTTP) it looks again at this pace, so a reload that
/// turns it on takes effect.
async fn watch_certificate(reloader: std::sync::Weak<Reloader>, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    loop {
        let interval = match reloader.upgrade() {
            Some(r) => r.watch_interval().await,
            None => return,
        };
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(interval.unwrap_or(ms(crate::config::DEFAULT_TLS_WATCH_INTERVAL_MS))) => {}
        }
        match reloader.upgrade() {
            Some(r) if interval.is_some() => {
                r.check_certificate().await;
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// Evicts idle rate-limit keys (and client addresses whose refused-token budget refilled) and
/// refreshes the key gauges, so memory follows live traffic.
async fn evict_idle_keys(limits: Arc<ArcSwap<Limits>>, auth: Arc<ArcSwap<Authenticator>>, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    loop {
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(EVICTION_INTERVAL) => {
                limits.load().evict();
                auth.load().evict();
            }
        }
    }
}

/// Readiness of the shared store: Redis runs a script that writes (a demoted primary fails
/// it, and the connection moves on). Between probes, every failed command
/// also turns `ccgate_store_up` to 0.
async fn probe_store(shared: Arc<dyn Backend>, readiness: Arc<Readiness>, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    loop {
        let result = match shared.connect().await {
            Ok(()) => shared.ping().await,
            Err(e) => Err(e),
        };
        if readiness.set_store(result.is_ok()) {
            match &result {
                Ok(()) => tracing::info!("shared store reachable"),
                Err(e) => tracing::warn!(error = %e, "shared store not reachable"),
            }
        }
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(STORE_PROBE_INTERVAL) => {}
        }
    }
}

/// One gateway's readiness probe.
struct Probe {
    index: usize,
    name: String,
    client: GatewayClient,
    /// That gateway's (`ccgate_gateway_up{gateway}`).
    metrics: Metrics,
}

/// Readiness: the gateway completes a TLS handshake with the configured CA and server name
/// (see [`GatewayClient::probe`]). The verdict also drives `ccgate_gateway_up{gateway}`.
async fn probe_gateway(p: Probe, readiness: Arc<Readiness>, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    let Probe { index, name, client, metrics } = p;
    loop {
        let result = client.probe().await;
        metrics.set_gateway_up(result.is_ok());
        // The error as the operating system or rustls said it (`Connection refused (os
        // error 111)`), for the status page's row; the timeout in words.
        let (state, error) = match &result {
            Ok(()) => (GatewayState::Up, None),
            Err(ProbeFailure::Connect(e)) => (GatewayState::ConnectFailed, Some(e.clone())),
            Err(e @ ProbeFailure::Timeout) => (GatewayState::Timeout, Some(e.to_string())),
            Err(ProbeFailure::Tls(e)) => (GatewayState::TlsFailed, Some(e.clone())),
        };
        if readiness.set_gateway(index, state, error.as_deref()) {
            match &result {
                Ok(()) => tracing::info!(gateway = %name, state = state.as_str(), "gateway reachable"),
                Err(e) => tracing::warn!(gateway = %name, state = state.as_str(), error = %e, "gateway not reachable"),
            }
        }
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(READINESS_PROBE_INTERVAL) => {}
        }
    }
}
