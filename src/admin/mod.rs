//! Admin listener: `/metrics` (Prometheus text), `/livez` (the process serves; `/healthz` is
//! the old name), `/readyz` (ccgate can serve: keys loaded, not shutting down; the gateway
//! only with `admin.ready_requires_gateway`, the shared store only with
//! `admin.ready_requires_store`), `/gatewayz` (the CC-Gateway's state
//! on its own), `POST /-/reload` from loopback (what SIGHUP does), and for operators `/agents`,
//! `/agents/{id}`, `/config` (the effective config, secrets masked, and the last reload),
//! `/limits` (the rate limits and their buckets) and the status page at `/` (loopback unless
//! `admin.agents_from`).

mod config_view;
mod gateway_health;
mod html;
mod replicas;
mod status_page;

pub use gateway_health::{GatewayHealth, GatewayState};
pub use replicas::Replicas;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use crate::metrics::Metrics;
use crate::server::body::{self, Body};
use crate::server::Handler;

/// Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether every identity provider has keys; set once the authenticator exists, read per probe.
pub type KeysLoaded = Box<dyn Fn() -> bool + Send + Sync>;

/// Readiness facts, set by whoever knows them.
/// The store's status as one line for people: the status page and `ccgate agents` print it.
fn store_summary(s: &crate::shared::StoreStatus) -> String {
    let mut out = match (&s.primary, s.connected) {
        (Some(p), true) if s.mode == "cluster" => format!("{}, seeds {p}", s.mode),
        (Some(p), true) => format!("{}, primary {p}", s.mode),
        _ => format!("{}, not connected", s.mode),
    };
    if let Some(role) = s.role {
        out.push_str(&format!(", role {role}"));
    }
    if let Some(us) = s.latency_us {
        out.push_str(&format!(", ping {:.1} ms", us as f64 / 1000.0));
    }
    if let Some(f) = &s.last_failover {
        let when = crate::session::view::rfc3339(f.at_ms);
        let from = f.from.as_deref().unwrap_or("-");
        let to = f.to.as_deref().unwrap_or("(connecting)");
        let took = f.took_ms.map(|t| format!(" in {t} ms")).unwrap_or_default();
        out.push_str(&format!("; last failover {when} ({}): {from} -> {to}{took}", f.reason));
    }
    out
}

/// Reads the shared store's status ([`crate::shared::SharedStore::status`]).
pub type StoreStatusFn = Box<dyn Fn() -> crate::shared::StoreStatus + Send + Sync>;

pub struct Readiness {
    /// Each gateway's last probe verdict, in config order.
    gateways: Mutex<Vec<GatewayHealth>>,
    /// `admin.ready_requires_gateway`.
    requires_gateway: AtomicBool,
    /// `admin.ready_requires_store`.
    requires_store: AtomicBool,
    keys: std::sync::OnceLock<KeysLoaded>,
    /// The shared store: `None` with the memory store, else whether Redis answered last.
    store: Mutex<Option<bool>>,
    /// The shared store's mode, primary and last failover (Redis only).
    store_status: std::sync::OnceLock<StoreStatusFn>,
    shutting_down: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            gateways: Mutex::new(vec![GatewayHealth::new(
                crate::config::DEFAULT_GATEWAY_NAME,
                crate::config::DEFAULT_GATEWAY_URL,
            )]),
            requires_gateway: AtomicBool::new(false),
            requires_store: AtomicBool::new(false),
            keys: std::sync::OnceLock::new(),
            store: Mutex::new(None),
            store_status: std::sync::OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            changed: Default::default(),
        }
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("gateway", &self.gateway())
            .field("store", &self.store())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Ready to serve: keys loaded and not shutting down; the gateway reachable and the store
    /// answering only when configured to require them. A replica serves its agents from its
    /// own copies while Redis is away, so by default a Redis outage does not take every pod
    /// out of its Service.
    pub fn is_ready(&self) -> bool {
        (self.gateway_reachable() || !self.requires_gateway.load(Ordering::Acquire))
            && (self.store() != Some(false) || !self.requires_store.load(Ordering::Acquire))
            && self.keys_loaded()
            && !self.shutting_down.load(Ordering::Acquire)
    }

    /// `admin.ready_requires_store`.
    pub fn require_store(&self, on: bool) {
        self.requires_store.store(on, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// `admin.ready_requires_gateway`.
    pub fn require_gateway(&self, on: bool) {
        self.requires_gateway.store(on, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Where `keys_loaded` asks (once, at start).
    pub fn watch_keys(&self, loaded: KeysLoaded) {
        let _ = self.keys.set(loaded);
        self.changed.notify_waiters();
    }

    pub fn keys_loaded(&self) -> bool {
        self.keys.get().is_none_or(|f| f())
    }

    /// Something readiness depends on changed (a key set arrived): wake the waiters.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// `None` with the memory store; else whether the shared store answered last, and is
    /// still connected (a dropped connection is down at once, not at the next probe).
    pub fn store(&self) -> Option<bool> {
        let answered = (*crate::sync::lock(&self.store))?;
        Some(answered && self.store_status.get().is_none_or(|f| f().connected))
    }

    /// Where the store's status comes from (set once, with Redis).
    pub fn watch_store(&self, f: StoreStatusFn) {
        let _ = self.store_status.set(f);
    }

    /// The store's mode, primary and last failover, with a line for people; `None` with the
    /// memory store.
    pub fn store_status(&self) -> Option<serde_json::Value> {
        let s = (self.store_status.get()?)();
        let mut v = serde_json::to_value(&s).ok()?;
        v["summary"] = store_summary(&s).into();
        Some(v)
    }

    /// Records whether the shared store answers; returns whether that changed.
    pub fn set_store(&self, up: bool) -> bool {
        let previous = crate::sync::lock(&self.store).replace(up);
        let changed = previous != Some(up);
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// The gateways probed (in config order: name and URL), each unchecked until its first
    /// probe.
    pub fn set_gateways(&self, gateways: &[crate::config::GatewayConfig]) {
        *crate::sync::lock(&self.gateways) = gateways.iter().map(|g| GatewayHealth::new(&g.name, &g.url)).collect();
    }

    /// Each gateway's name and last verdict.
    pub fn gateways(&self) -> Vec<(String, GatewayState)> {
        crate::sync::lock(&self.gateways).iter().map(|g| (g.name.clone(), g.state)).collect()
    }

    /// Each gateway's URL, verdict, since when and why.
    pub fn gateway_health(&self) -> Vec<GatewayHealth> {
        crate::sync::lock(&self.gateways).clone()
    }

    /// All gateways in one word: `up` when every one is, else the first one's that is not.
    pub fn gateway(&self) -> GatewayState {
        let all = crate::sync::lock(&self.gateways);
        all.iter().map(|g| g.state).find(|s| *s != GatewayState::Up).unwrap_or(GatewayState::Up)
    }

    /// At least one gateway is reachable: what `admin.ready_requires_gateway` requires. One
    /// contact centre's gateway down must not take the replica (and every other contact
    /// centre's agents) out of its Service.
    pub fn gateway_reachable(&self) -> bool {
        crate::sync::lock(&self.gateways).iter().any(|g| g.state == GatewayState::Up)
    }

    /// Records gateway `i`'s probe verdict and, when it failed, why; returns whether the
    /// verdict changed (then "since" moves; a new error text alone does not move it).
    pub fn set_gateway(&self, i: usize, state: GatewayState, error: Option<&str>) -> bool {
        let mut all = crate::sync::lock(&self.gateways);
        let Some(slot) = all.get_mut(i) else { return false };
        let changed = slot.record(state, error);
        drop(all);
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Resolves once every gateway's probe has given a verdict.
    pub async fn wait_gateway_checked(&self) {
        self.wait_for(|r| r.gateways().iter().all(|(_, s)| *s != GatewayState::Unchecked)).await
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutting_down(&self) {
        self.wait_for(|r| r.shutting_down.load(Ordering::Acquire)).await
    }

    /// Resolves once `is_ready()` holds.
    pub async fn wait_ready(&self) {
        self.wait_for(Self::is_ready).await
    }

    async fn wait_for(&self, done: impl Fn(&Self) -> bool) {
        loop {
            // Registered before the check, so a change between check and await is not lost.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }
}

/// What `POST /-/reload` runs: the reload SIGHUP runs, answered as JSON.
pub type ReloadFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send>>
        + Send
        + Sync,
>;

/// Issuers with fetched keys, and whether each has them.
pub type IssuersFn = Box<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

/// The agents view as JSON (an array of agent objects): every agent, or those of one gateway
/// (by name) and one work number (with its recent events).
pub type AgentsFn = Arc<
    dyn Fn(
            Option<String>,
            Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>
        + Send
        + Sync,
>;

/// A JSON document made on request: `GET /config` (the reloader's document) and `GET
/// /limits` (the limits in force, with their buckets).
pub type DocumentFn = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct Admin {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    /// Issuers with fetched keys and whether each has them, for `/readyz`.
    pub issuers: Option<IssuersFn>,
    pub reload: Option<ReloadFn>,
    /// `GET /agents`, `GET /agents/{id}`.
    pub agents: Option<AgentsFn>,
    /// `GET /config`: the effective config (masked), its hashes and the last reload.
    pub config: Option<DocumentFn>,
    /// `GET /limits`: each rate limit in force and its fullest buckets.
    pub limits: Option<DocumentFn>,
    /// `admin.agents_from`.
    pub agents_from: crate::config::AgentsAccess,
    /// `admin.hosts`, lowercase: the names the operator's views and reload answer to.
    pub hosts: Vec<String>,
    /// The status page's previous counts, for its request rates.
    pub rates: status_page::Rates,
    /// This replica's identity, and the others' through the shared store.
    pub replicas: Arc<Replicas>,
    /// `GET /webhooks`, `POST /webhooks/{name}/replay`: the endpoints and their deliveries.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

/// The REST API's OpenAPI 3.1 description (`api/openapi.yaml`), compiled in so the binary
/// serves the description of exactly the API it implements.
pub const OPENAPI: &str = include_str!("../../api/openapi.yaml");

impl Handler for Admin {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
        conn: crate::server::listener::Conn,
    ) -> Response<Body> {
        let resp = self.answer(req, peer).await;
        // A scraper's or probe's connection: kept over sockets that only got errors.
        if resp.status().is_success() {
            conn.trust();
        }
        resp
    }
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
        let local = is_local(peer.ip());
        let path = req.uri().path();
        // `/config` and `/limits` show no secret but what this instance runs and who is
        // near a limit: the agents' audience.
        let operators = path == "/-/reload"
            || path == "/agents"
            || path.starts_with("/agents/")
            || path == "/"
            || path == "/config"
            || path == "/limits"
            || path == "/webhooks"
            || path.starts_with("/webhooks/");
        // The operator's views and reload answer only their own names, and reload only a POST
        // no browser sent for another site: a web page cannot read them by DNS rebinding or
        // run a reload with a cross-site form. Probes and scrapes answer any Host.
        if operators {
            if let Some(refused) = self.refuse_foreign(&req) {
                return refused;
            }
        }
        // Probes answer anyone, but the detail behind their verdict (internal URLs, the
        // probe's error, the store's address, this replica's host and admin address) only the
        // operators' audience, under the agents' rule: Kubernetes' /readyz withholds reasons
        // the same way, and a web page must not read the layout by DNS rebinding.
        let detail = self.refuse_foreign(&req).is_none() && self.refuse_agents_view(local).is_none();
        if path == "/-/reload" {
            if req.method() != Method::POST {
                let mut r = body::json(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "reload is a POST"}));
                r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            return self.reload(local).await;
        }
        if let Some(rest) = path.strip_prefix("/webhooks/") {
            if let Some(refused) = self.refuse_agents_view(local) {
                return refused;
            }
            return self.replay(rest, req.method(), req.uri().query()).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return body::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "GET only (POST for /-/reload and /webhooks/{name}/replay)"}),
            );
        }
        if operators {
            if let Some(refused) = self.refuse_agents_view(local) {
                return refused;
            }
            return match path {
                "/" => self.status_page().await,
                "/config" => document(&self.config, "this instance shows no config"),
                "/limits" => document(&self.limits, "this instance shows no limits"),
                "/webhooks" => self.webhooks_view().await,
                _ => self.agents(&req).await,
            };
        }
        match path {
            "/metrics" => {
                let mut r = Response::new(body::full(self.metrics.render()));
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                r
            }
            "/livez" | "/healthz" => body::json(StatusCode::OK, &json!({"status": "ok"})),
            "/openapi.yaml" => {
                let mut r = Response::new(body::full(OPENAPI));
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
                r
            }
            "/readyz" => {
                let r = &self.readiness;
                let ready = r.is_ready();
                let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                let issuers: serde_json::Map<String, serde_json::Value> = self
                    .issuers
                    .as_ref()
                    .map(|f| f())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(issuer, loaded)| (issuer, json!(if loaded { "loaded" } else { "missing" })))
                    .collect();
                body::json(
                    status,
                    &json!({
                        "ready": ready,
                        "config_loaded": true,
                        "keys_loaded": r.keys_loaded(),
                        "remote_keys": issuers,
                        "store": match r.store() { None => "memory", Some(true) => "up", Some(false) => "down" },
                        // Mode, primary and last failover (issue 35); null with the memory store
                        // (and for a peer outside the operators' audience).
                        "store_detail": r.store_status().filter(|_| detail),
                        "shutting_down": r.shutting_down.load(Ordering::Acquire),
                        // Reported, and part of the verdict only with admin.ready_requires_gateway
                        // (then at least one gateway must be reachable).
                        "gateway": r.gateway().as_str(),
                        "gateways": gateway_states(r),
                        // Each gateway's URL, state, since when and last error, and who this
                        // replica is (issue 40): for the operators' audience only.
                        "gateway_detail": detail.then(|| gateway_detail(r)),
                        "replica": detail.then_some(&self.replicas.me),
                        "gateway_reachable": r.gateway_reachable(),
                        "gateway_required": r.requires_gateway.load(Ordering::Acquire),
                        "store_required": r.requires_store.load(Ordering::Acquire),
                    }),
                )
            }
            "/gatewayz" => {
                // 200 when every gateway is up; each one's state either way.
                let r = &self.readiness;
                let all_up = r.gateway() == GatewayState::Up;
                let status = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                body::json(
                    status,
                    &json!({
                        "gateway": r.gateway().as_str(),
                        "reachable": all_up,
                        "gateways": gateway_states(r),
                        "gateway_detail": detail.then(|| gateway_detail(r)),
                    }),
                )
            }
            _ => body::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }
}

impl Admin {
    /// A request for the operator's views or reload that a browser made for another site:
    /// a `Host` that is neither an address, `localhost` nor one of `admin.hosts`; or a POST
    /// whose `Sec-Fetch-Site` says cross-site or same-site, or whose `Origin` names another
    /// host. Tools (curl, `ccgate reload`, Prometheus) send neither header.
    fn refuse_foreign(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        let forbidden = |why: &str| Some(body::json(StatusCode::FORBIDDEN, &json!({"error": why})));
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
        if let Some(host) = host {
            if !host_allowed(host, &self.hosts) {
                return forbidden("this admin listener does not answer to that Host name: add it to admin.hosts");
            }
        }
        if req.method() == Method::POST {
            let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
            if site.is_some_and(|s| s != "same-origin" && s != "none") {
                return forbidden("a cross-site request cannot change this instance");
            }
            // A browser's Origin must name the very host:port the request went to (a page on
            // another address, even an allowed one, is another site).
            if let Some(origin) = req.headers().get(http::header::ORIGIN) {
                let from = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h);
                let same = match (from, host) {
                    (Some(from), Some(host)) => from.eq_ignore_ascii_case(host),
                    (Some(from), None) => host_allowed(from, &self.hosts),
                    (None, _) => false,
                };
                if !same {
                    return forbidden("a cross-site request cannot change this instance");
                }
            }
        }
        None
    }

    /// The agents' views (and the status page, which shows them) are served to loopback
    /// peers unless `admin.agents_from = "anywhere"`: the refusal otherwise.
    fn refuse_agents_view(&self, local: bool) -> Option<Response<Body>> {
        (!local && self.agents_from == crate::config::AgentsAccess::Loopback).then(|| {
            body::json(
                StatusCode::FORBIDDEN,
                &json!({"error": "the agents, the config, the limits, the webhooks and the status page are served to loopback only (admin.agents_from)"}),
            )
        })
    }

    /// `GET /webhooks`: every endpoint's state, queue and recent failures.
    async fn webhooks_view(&self) -> Response<Body> {
        let list = match &self.webhooks {
            Some(w) => w.status().await,
            None => Vec::new(),
        };
        body::json(StatusCode::OK, &json!({ "webhooks": list }))
    }

    /// `POST /webhooks/{name}/replay?since=RFC3339`: sends the endpoint's given-up events
    /// taken since then again, and enables it if a 410 disabled it.
    async fn replay(&self, rest: &str, method: &Method, query: Option<&str>) -> Response<Body> {
        let Some(name) = rest.strip_suffix("/replay").filter(|n| !n.is_empty() && !n.contains('/')) else {
            return body::json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not found: POST /webhooks/{name}/replay?since=RFC3339"}),
            );
        };
        if method != Method::POST {
            let mut r = body::json(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "replay is a POST"}));
            r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let since = query.unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("since="));
        let since = since.map(|v| v.replace("%3A", ":").replace("%3a", ":").replace("%2B", "+").replace("%2b", "+"));
        let Some(since_ms) = since.as_deref().and_then(crate::webhooks::parse_rfc3339) else {
            return body::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "since is required: an RFC 3339 date-time, e.g. ?since=2026-12-07T08:00:00Z"}),
            );
        };
        let Some(hooks) = &self.webhooks else {
            return body::json(StatusCode::NOT_FOUND, &json!({"error": "no webhook endpoint is configured"}));
        };
        match hooks.replay(name, since_ms).await {
            Ok(n) => {
                tracing::info!(endpoint = name, replayed = n, "webhook replay");
                body::json(StatusCode::OK, &json!({ "endpoint": name, "replayed": n }))
            }
            Err(crate::webhooks::ReplayError::UnknownEndpoint) => {
                body::json(StatusCode::NOT_FOUND, &json!({"error": "no webhook endpoint of that name"}))
            }
            Err(crate::webhooks::ReplayError::Store(e)) => body::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("the shared store did not answer ({e}); try again")}),
            ),
        }
    }

    /// `GET /`: the status page.
    async fn status_page(&self) -> Response<Body> {
        let r = &self.readiness;
        let (agents, agents_partial) = match &self.agents {
            Some(f) => {
                let list = f(None, None).await;
                (list["agents"].as_array().cloned().unwrap_or_default(), list["partial"] == true)
            }
            None => (Vec::new(), false),
        };
        let facts = status_page::Facts {
            ready: r.is_ready(),
            keys_loaded: r.keys_loaded(),
            gateways: r.gateway_health(),
            store: match r.store() {
                None => "memory",
                Some(true) => "up",
                Some(false) => "down",
            },
            store_status: r.store_status.get().map(|f| f()),
            replica: self.replicas.me.clone(),
            certificate_expiry: self.metrics.certificate_expiry(),
            version: env!("CARGO_PKG_VERSION"),
            agents,
            agents_partial,
            requests: self.metrics.request_totals(),
            refusals: self.metrics.auth_failure_totals(),
            config: self.config.as_ref().map(|f| f()),
            webhooks: match &self.webhooks {
                Some(w) => w.status().await,
                None => Vec::new(),
            },
        };
        let mut resp = Response::new(body::full(status_page::render(&facts, &self.rates)));
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        resp
    }

    /// `GET /agents` (every agent), `GET /agents/{id}` (the agent of that work number, with
    /// its recent events; 409 when several gateways have one) and `GET /agents/{gateway}/{id}`.
    async fn agents(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(agents) = &self.agents else {
            return body::json(StatusCode::NOT_FOUND, &json!({"error": "no agents here"}));
        };
        let (gateway, one) = match req.uri().path().strip_prefix("/agents/") {
            None => (None, None),
            Some(rest) => {
                let (gateway, id) = match rest.split_once('/') {
                    Some((g, id)) => (Some(g.to_owned()), id),
                    None => (None, rest),
                };
                // The canonical work number: an operator's `0153` is agent 153, on both forms
                // of the path (the API itself refuses leading zeros).
                let digits = id.trim_start_matches('0');
                let id = if digits.len() < id.len() && id.len() <= 16 { digits } else { id };
                match crate::gateway::parse_agent_id(id) {
                    Some(n) => (gateway, Some(n.to_string())),
                    None => {
                        return body::json(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": "an agent is its work number (101..999999), after its gateway's name if given"}),
                        )
                    }
                }
            }
        };
        let list = agents(gateway, one.clone()).await;
        let partial = list["partial"] == true;
        let view = &list["agents"];
        let Some(id) = one else {
            return body::json(
                StatusCode::OK,
                &json!({"agents": view, "partial": partial, "store": self.readiness.store_status()}),
            );
        };
        match view.as_array().map(Vec::as_slice).unwrap_or_default() {
            [] if partial => body::json(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("agent {id} is not known to this replica, and the shared store could not be read (a partial view)"), "partial": true}),
            ),
            [] => body::json(StatusCode::NOT_FOUND, &json!({"error": format!("agent {id} is not known here")})),
            [agent] => body::json(StatusCode::OK, agent),
            several => {
                let names: Vec<&str> = several.iter().filter_map(|a| a["gateway"].as_str()).collect();
                body::json(
                    StatusCode::CONFLICT,
                    &json!({
                        "error": format!("agent {id} is known on gateways {}: ask for /agents/{{gateway}}/{id}", names.join(", ")),
                        "gateways": names,
                    }),
                )
            }
        }
    }

    /// Reload on request, from loopback only: the admin listener may listen on the pod's
    /// address for probes and scrapes, but changing what ccgate runs stays a local act (as
    /// SIGHUP is).
    async fn reload(&self, local: bool) -> Response<Body> {
        if !local {
            return body::json(StatusCode::FORBIDDEN, &json!({"error": "reload is accepted from loopback only"}));
        }
        let Some(reload) = &self.reload else {
            return body::json(StatusCode::NOT_FOUND, &json!({"error": "this instance cannot reload"}));
        };
        match reload().await {
            Ok(report) => body::json(StatusCode::OK, &report),
            Err(e) => body::json(StatusCode::UNPROCESSABLE_ENTITY, &json!({"reloaded": false, "error": e})),
        }
    }
}

/// `GET /config` or `GET /limits`: the document, or 404 where this instance has none.
fn document(f: &Option<DocumentFn>, none: &str) -> Response<Body> {
    match f {
        Some(f) => body::json(StatusCode::OK, &f()),
        None => body::json(StatusCode::NOT_FOUND, &json!({"error": none})),
    }
}

/// Each gateway's state by name, for `/readyz` and `/gatewayz`.
fn gateway_states(r: &Readiness) -> serde_json::Map<String, serde_json::Value> {
    r.gateways().into_iter().map(|(name, state)| (name, json!(state.as_str()))).collect()
}

/// Each gateway's row, in config order, for `/readyz` and `/gatewayz`.
fn gateway_detail(r: &Readiness) -> Vec<serde_json::Value> {
    r.gateway_health().iter().map(GatewayHealth::to_json).collect()
}

/// Whether `host` (a `Host` header or an authority: name or address, optional port) names
/// this listener: any IP address, `localhost`, or one of `names` (lowercase).
fn host_allowed(host: &str, names: &[String]) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => return rest.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.strip_suffix('.').unwrap_or(name),
            _ => host,
        },
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A loopback peer, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, what an IPv4
/// client looks like on a `[::]` listener).
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_are_addresses_localhost_or_configured_names() {
        let names = vec!["ccgate-admin.internal".to_string()];
        for ok in [
            "127.0.0.1:9464",
            "10.1.2.3",
            "[::1]:9464",
            "[2001:db8::1]",
            "localhost:9464",
            "LOCALHOST",
            "ccgate-admin.internal:9464",
            "CCGATE-ADMIN.internal",
            "localhost.",
            "localhost.:9464",
            "127.0.0.1.",
        ] {
            assert!(super::host_allowed(ok, &names), "{ok}");
        }
        for bad in ["attacker.example:9464", "attacker.example", "127.0.0.1.nip.io", "[::1", "localhost.evil", ""] {
            assert!(!super::host_allowed(bad, &names), "{bad}");
        }
    }

    #[test]
    fn a_gateway_url_shows_no_credentials_and_a_probe_error_is_printable_and_bounded() {
        assert_eq!(
            super::gateway_health::url_for_people("https://cti:s3cret@gw.example:8043/?key=k"),
            "https://gw.example:8043"
        );
        assert_eq!(super::gateway_health::url_for_people("https://gw.example"), "https://gw.example");
        assert_eq!(super::gateway_health::url_for_people("https://[::1]:8043"), "https://[::1]:8043");
        let e = super::gateway_health::error_for_people(&format!("bad\u{1b}[2J\n{}", "é".repeat(500)));
        assert!(e.starts_with("bad?[2J?é"), "{e}");
        assert_eq!(e.chars().count(), super::gateway_health::MAX_PROBE_ERROR_CHARS + 1, "cut, and marked: {e}");
        assert!(e.ends_with('…'));
    }

    #[test]
    fn since_moves_when_the_verdict_changes_and_the_error_follows_each_probe() {
        use super::{GatewayState, Readiness};
        let r = Readiness::default();
        let at_start = r.gateway_health()[0].since_ms;
        assert!(r.set_gateway(0, GatewayState::ConnectFailed, Some("Connection refused (os error 111)")));
        let down = r.gateway_health()[0].clone();
        assert!(down.since_ms >= at_start);
        assert_eq!(down.error.as_deref(), Some("Connection refused (os error 111)"));
        assert!(!r.set_gateway(0, GatewayState::ConnectFailed, Some("No route to host (os error 113)")));
        let again = r.gateway_health()[0].clone();
        assert_eq!((again.since_ms, again.error.as_deref()), (down.since_ms, Some("No route to host (os error 113)")));
        // Another failure kind is a new verdict, but it has been down since the first.
        assert!(r.set_gateway(0, GatewayState::Timeout, Some("timed out")));
        assert_eq!(r.gateway_health()[0].since_ms, down.since_ms, "down since it went down");
        assert!(r.set_gateway(0, GatewayState::Up, None));
        assert_eq!(r.gateway_health()[0].error, None, "an error is why it is not up");
        assert!(!r.set_gateway(7, GatewayState::Up, None), "no such gateway");
    }

    #[test]
    fn loopback_in_every_spelling_is_local() {
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(super::is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(!super::is_local(ip.parse().unwrap()), "{ip}");
        }
    }
}
