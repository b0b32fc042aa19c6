//! Building and running the proxy from a [`Config`]: the one code path used by `serve`,
//! `demo` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ms, Config, StoreBackend};
use crate::edge::auth::Authenticator;
use crate::edge::Proxy;
use crate::gateway::client::ProbeFailure;
use crate::gateway::GatewayClient;
use crate::metrics::{Metered, Metrics};
use crate::ops::limits::{Limits, EVICTION_INTERVAL};
use crate::ops::{Core, CoreSettings};
use crate::server::admin::{Admin, GatewayState, Readiness};
use crate::server::listener::{triggered, ConnectionMetrics};
use crate::server::{self, ServeOptions, Shutdown};
use crate::session::{CredentialStore, SessionStore};
use crate::shared::Shared;
use crate::tls;

/// How often `/readyz` re-checks that the gateway accepts TCP connections.
const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How often `/readyz` re-checks that the shared store answers: Redis is on the path of new
/// sign-ins, so its loss should show quickly.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Connections the admin listener accepts: Prometheus, the kubelet's probes and an operator.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Part of the shutdown grace kept for signing agents out after connections drained: one
/// logout round trip per agent, all in parallel, takes well under this on a LAN.
const SIGN_OUT_RESERVE: Duration = Duration::from_secs(2);

/// A running proxy.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub sessions: Arc<SessionStore>,
    pub limits: Arc<Limits>,
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
    pub async fn stop(self) {
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
        if tokio::time::timeout_at(deadline, self.sessions.shutdown(deadline)).await.is_err() {
            tracing::warn!("not every agent could be signed out within the grace period");
        }
        tracing::info!("shutdown complete");
    }
}

/// Loads keys and credentials, binds both listeners, starts serving. Every error names what
/// to fix.
pub async fn start(config: &Config) -> Result<Running, String> {
    let metrics = Metrics::new();
    let auth = Arc::new(Authenticator::from_config(&config.auth)?.with_metrics(&metrics));
    let creds = match &config.credentials.file {
        Some(p) => CredentialStore::load(p)?,
        None => return Err("credentials.file is required".into()),
    };
    let client = GatewayClient::new(&config.gateway)?;
    let shutdown = Shutdown::new();
    let server_tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config_from_files(c, k)?),
        _ => None,
    };
    let shared = match config.store.backend {
        StoreBackend::Memory => None,
        StoreBackend::Redis => {
            let shared = Shared::new(&config.store, metrics.clone())?;
            // Not fatal: a replica that starts while Redis is away serves once it is back
            // (and says so on /readyz meanwhile).
            if let Err(e) = shared.connect().await {
                tracing::warn!(error = %e, "shared store not reachable yet; retrying in the background");
            }
            Some(shared)
        }
    };
    let mut limits = Limits::new(&config.rate_limits, metrics.clone())?;
    if let Some(shared) = &shared {
        limits = limits.shared(shared.clone(), config.store.limits_fallback);
    }
    let limits = Arc::new(limits);
    let gateway = Arc::new(Metered::new(client.clone(), metrics.clone()));
    let sessions = SessionStore::with_shared(
        gateway,
        creds,
        config.sessions.clone(),
        metrics.clone(),
        shared.clone(),
        config.store.on_shutdown,
    );
    sessions.start_replication();
    let core = Core::new(sessions.clone(), limits.clone(), CoreSettings::from_config(config));
    let proxy = Arc::new(Proxy {
        auth: auth.clone(),
        core,
        metrics: metrics.clone(),
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: ms(config.server.body_read_timeout_ms),
        shutdown: shutdown.subscribe(),
    });
    let readiness = Arc::new(Readiness::default());
    let grace = ms(config.server.shutdown_grace_ms);
    let drain_delay = ms(config.server.drain_delay_ms);
    let opts = ServeOptions {
        tls_handshake_timeout: ms(config.server.tls_handshake_timeout_ms),
        header_read_timeout: ms(config.server.header_read_timeout_ms),
        idle_timeout: ms(config.server.idle_timeout_ms),
        max_connections: config.server.max_connections,
        metrics: Some(ConnectionMetrics { open: metrics.connections_gauge(), refused: metrics.connections_refused() }),
        // What is left of the grace after the drain delay, less the sign-out reserve.
        grace: grace.saturating_sub(drain_delay).saturating_sub(SIGN_OUT_RESERVE),
    };
    // The admin listener serves a scraper and a few probes.
    let admin_opts = ServeOptions { max_connections: ADMIN_MAX_CONNECTIONS, metrics: None, ..opts.clone() };
    let proxy_listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| format!("admin.listen {}: {e}", config.admin.listen))?;
    let served = server::spawn(proxy_listener, server_tls, proxy, opts.clone(), shutdown.subscribe())
        .map_err(|e| format!("server.listen: {e}"))?;
    let admin = Arc::new(Admin { metrics: metrics.clone(), readiness: readiness.clone() });
    let admin_served = server::spawn(admin_listener, None, admin, admin_opts, shutdown.subscribe())
        .map_err(|e| format!("admin.listen: {e}"))?;
    let probe = tokio::spawn(probe_gateway(client.clone(), readiness.clone(), metrics.clone(), shutdown.clone()));
    let evictor = tokio::spawn(evict_idle_keys(limits.clone(), auth, shutdown.clone()));
    if let Some(shared) = shared {
        tokio::spawn(probe_store(shared, readiness.clone(), shutdown.clone()));
    }
    Ok(Running {
        proxy_addr: served.addr,
        admin_addr: admin_served.addr,
        metrics,
        readiness,
        sessions,
        shutdown,
        tasks: vec![served.task, admin_served.task, probe, evictor],
        limits,
        drain_delay,
        grace,
    })
}

/// Evicts idle rate-limit keys (and client addresses whose refused-token budget refilled) and
/// refreshes the key gauges, so memory follows live traffic.
async fn evict_idle_keys(limits: Arc<Limits>, auth: Arc<Authenticator>, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    loop {
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(EVICTION_INTERVAL) => {
                limits.evict();
                auth.evict();
            }
        }
    }
}

/// Readiness of the shared store: Redis answers PING. Between probes, every failed command
/// also turns `ccgate_store_up` to 0.
async fn probe_store(shared: Arc<Shared>, readiness: Arc<Readiness>, shutdown: Shutdown) {
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

/// Readiness: the gateway completes a TLS handshake with the configured CA and server name
/// (see [`GatewayClient::probe`]). The verdict also drives `ccgate_gateway_up`.
async fn probe_gateway(client: GatewayClient, readiness: Arc<Readiness>, metrics: Metrics, shutdown: Shutdown) {
    let mut stop = shutdown.subscribe();
    loop {
        let result = client.probe().await;
        metrics.set_gateway_up(result.is_ok());
        let state = match &result {
            Ok(()) => GatewayState::Up,
            Err(ProbeFailure::Connect(_)) => GatewayState::ConnectFailed,
            Err(ProbeFailure::Timeout) => GatewayState::Timeout,
            Err(ProbeFailure::Tls(_)) => GatewayState::TlsFailed,
        };
        if readiness.set_gateway(state) {
            match &result {
                Ok(()) => tracing::info!(gateway = state.as_str(), "gateway reachable"),
                Err(e) => tracing::warn!(gateway = state.as_str(), error = %e, "gateway not reachable"),
            }
        }
        tokio::select! {
            _ = triggered(&mut stop) => return,
            _ = tokio::time::sleep(READINESS_PROBE_INTERVAL) => {}
        }
    }
}
