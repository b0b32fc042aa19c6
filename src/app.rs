//! Building and running the proxy from a [`Config`]: the one code path used by `serve`,
//! `demo` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use arc_swap::ArcSwap;

use crate::admin::{Admin, GatewayState, Readiness};
use crate::config::{ms, Config, StoreBackend};
use crate::edge::auth::Authenticator;
use crate::edge::Proxy;
use crate::gateway::client::ProbeFailure;
use crate::gateway::GatewayClient;
use crate::metrics::{Metered, Metrics};
use crate::ops::limits::{Limits, EVICTION_INTERVAL};
use crate::ops::Core;
use crate::reload::{ConfigSource, Live, Parts, Reloader};
use crate::server::listener::{triggered, ConnectionMetrics};
use crate::server::{self, ServeOptions, Shutdown};
use crate::session::{GatewayIdentity, Gateways, SessionStore};
use crate::shared::redis::RedisStore;
use crate::shared::{Backend, SharedStore};
use crate::tls;

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
        if left > 0 {
            tracing::warn!(agents = left, "shutdown complete; agents left signed in at the gateway");
        } else {
            tracing::info!("shutdown complete");
        }
        left
    }
}

/// Loads keys and credentials, binds both listeners, starts serving. Every error names what
/// to fix. A config built in memory (tests, the demo) cannot be reloaded from a file.
pub async fn start(config: &Config) -> Result<Running, String> {
    start_from(config, None).await
}

/// [`start`], remembering where the config came from so a reload can read it again.
pub async fn start_from(config: &Config, source: Option<ConfigSource>) -> Result<Running, String> {
    let gateways = config.gateway_list();
    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    let metrics = Metrics::new(&names);
    let readiness = Arc::new(Readiness::default());
    readiness.set_gateway_names(&names);
    readiness.require_gateway(config.admin.ready_requires_gateway);
    readiness.require_store(config.admin.ready_requires_store);
    let clients = gateways
        .iter()
        .map(|g| match config.gateways.is_empty() {
            true => GatewayClient::new(g),
            false => GatewayClient::new(g).map_err(|e| format!("gateway {}: {e}", g.name)),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let shutdown = Shutdown::new();
    let shared = match config.store.backend {
        StoreBackend::Memory => None,
        StoreBackend::Redis => {
            let shared: Arc<dyn SharedStore> = RedisStore::new(&config.store, metrics.clone())?;
            // Not fatal: a replica that starts while Redis is away serves once it is back
            // (and says so on /readyz meanwhile).
            if let Err(e) = shared.connect().await {
                tracing::warn!(error = %e, "shared store not reachable yet; retrying in the background");
            }
            let status = shared.clone();
            readiness.watch_store(Box::new(move || status.status()));
            Some(shared)
        }
    };
    let on_keys: crate::jwks::remote::OnChange = {
        let readiness = Arc::downgrade(&readiness);
        Arc::new(move || {
            if let Some(r) = readiness.upgrade() {
                r.notify();
            }
        })
    };
    let live = Live::build(config, &names, &metrics, shared.as_ref(), None, Some(on_keys.clone()))?;
    let missing = live.auth.wait_for_keys(ms(config.auth.jwks_startup_wait_ms)).await;
    if !missing.is_empty() {
        tracing::warn!(issuers = ?missing, "serving without these providers' keys yet (not ready); their tokens get 503 until the keys are fetched");
    }
    let auth = Arc::new(ArcSwap::from_pointee(live.auth));
    {
        let auth = Arc::downgrade(&auth);
        readiness.watch_keys(Box::new(move || auth.upgrade().is_none_or(|a| a.load().keys_loaded())));
    }
    let cert = live.cert.map(tls::CertResolver::new);
    if let Some(c) = &cert {
        metrics.watch_certificate(c);
    }
    let server_tls = match &cert {
        Some(resolver) => Some(tls::server_config_with_resolver(resolver.clone())?),
        None => None,
    };
    // File descriptors: the soft limit raised to the hard one, and fewer agents taken when
    // even that cannot hold what the configuration can need (`descriptors.rs`).
    let max_agents_by_files = match crate::descriptors::Budget::at_start(config) {
        Some((budget, limit)) => {
            if let Some(from) = limit.raised_from {
                tracing::info!(from, to = limit.soft, hard = limit.hard, "raised the soft open-file limit");
            }
            if let Some(why) = budget.shortfall("the open-file limit") {
                tracing::warn!("{why}");
            }
            budget.agents
        }
        None => None,
    };
    // One session store per gateway: its own client, credentials, metric labels and (with
    // Redis) key namespace.
    let mut stores = Vec::with_capacity(gateways.len());
    for (i, ((g, client), creds)) in gateways.iter().zip(&clients).zip(live.creds).enumerate() {
        let m = metrics.gateway(i);
        stores.push(SessionStore::new(
            GatewayIdentity { name: g.name.as_str().into(), max_agents: g.max_agents, max_agents_by_files },
            Arc::new(Metered::new(client.clone(), m.clone())),
            creds.ok_or_else(|| format!("gateway {}: no credentials", g.name))?,
            config.sessions.clone(),
            m,
            shared.clone().map(|s| s.for_gateway(g.namespace())),
            config.store.on_shutdown,
        ));
    }
    let all = Gateways::new(stores);
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
    // The admin listener serves a scraper and a few probes.
    let admin_opts = ServeOptions {
        max_connections: ADMIN_MAX_CONNECTIONS,
        max_streams: ADMIN_MAX_STREAMS,
        metrics: None,
        header_read_timeout: ADMIN_HEADER_READ_TIMEOUT.min(opts.header_read_timeout),
        idle_timeout: ADMIN_IDLE_TIMEOUT.min(opts.idle_timeout),
        shed_when_full: true,
        ..opts.clone()
    };
    let proxy_listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| format!("admin.listen {}: {e}", config.admin.listen))?;
    let served = server::spawn(proxy_listener, server_tls, proxy, opts.clone(), shutdown.subscribe())
        .map_err(|e| format!("server.listen: {e}"))?;
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        issuers: {
            let auth = Arc::downgrade(&auth);
            Some(Box::new(move || auth.upgrade().map(|a| a.load().remote_issuers()).unwrap_or_default()))
        },
        reload: {
            let reloader = Arc::downgrade(&reloader);
            Some(Arc::new(move || {
                let reloader = reloader.clone();
                Box::pin(async move {
                    let r = reloader.upgrade().ok_or("shutting down")?;
                    let report = r.reload().await?;
                    serde_json::to_value(report).map_err(|e| e.to_string())
                })
            }))
        },
        agents: {
            let all = Arc::downgrade(&all);
            Some(Arc::new(move |gateway: Option<String>, agent: Option<String>| {
                let all = all.clone();
                Box::pin(async move {
                    match all.upgrade() {
                        Some(s) => {
                            let q = crate::session::AgentQuery { gateway, agent };
                            serde_json::to_value(s.agents(&q).await).unwrap_or_default()
                        }
                        None => serde_json::Value::Array(Vec::new()),
                    }
                })
            }))
        },
        agents_from: config.admin.agents_from,
        hosts: config.admin.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        rates: Default::default(),
    });
    let admin_served = server::spawn(admin_listener, None, admin, admin_opts, shutdown.subscribe())
        .map_err(|e| format!("admin.listen: {e}"))?;
    let mut tasks = vec![served.task, admin_served.task];
    for (i, (client, g)) in clients.into_iter().zip(&gateways).enumerate() {
        let probe = Probe { index: i, name: g.name.clone(), client, metrics: metrics.gateway(i) };
        tasks.push(tokio::spawn(probe_gateway(probe, readiness.clone(), shutdown.clone())));
    }
    let evictor = tokio::spawn(evict_idle_keys(limits.clone(), auth.clone(), shutdown.clone()));
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
        shutdown,
        tasks: {
            tasks.push(evictor);
            tasks
        },
        limits,
        reloader,
        drain_delay,
        grace,
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
        let state = match &result {
            Ok(()) => GatewayState::Up,
            Err(ProbeFailure::Connect(_)) => GatewayState::ConnectFailed,
            Err(ProbeFailure::Timeout) => GatewayState::Timeout,
            Err(ProbeFailure::Tls(_)) => GatewayState::TlsFailed,
        };
        if readiness.set_gateway(index, state) {
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
