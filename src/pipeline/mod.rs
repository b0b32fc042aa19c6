//! The request pipeline (DESIGN section 2), one named phase per module:
//!
//! `route` → `auth` (JWT → Principal) → `policy` (chairperson) → session/forward/translate
//! (`facade`) → record (metrics and access log, here).
//!
//! A request that fails a phase becomes one [`ProxyError`]; [`Proxy::handle`] alone turns it
//! into the response, the metric outcome and the log line.

pub mod auth;
pub mod events;
pub mod facade;
pub mod face;
pub mod policy;
pub mod ratelimit;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::config::UnknownChair;
use crate::error::ProxyError;
use crate::gateway::GatewayClient;
use crate::metrics::{MethodLabel, Metrics, Outcome};
use crate::server::body::Body;
use crate::server::Handler;
use crate::session::SessionStore;
use auth::{Authenticator, Principal};
use route::Route;

pub struct Proxy {
    pub auth: Authenticator,
    pub sessions: Arc<SessionStore>,
    pub client: GatewayClient,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub on_unknown_chair: UnknownChair,
    /// `sessions.resume`: sign in again once when the gateway ends a session.
    pub resume: bool,
    /// Ends event streams when the process shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub limits: Arc<ratelimit::Limits>,
}

/// Request ids accepted from clients: what common tracers emit (UUIDs, W3C trace ids), and
/// nothing that could smuggle structure into a log line.
const MAX_REQUEST_ID_LEN: usize = 128;
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_REQUEST_ID_LEN
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        })
        .cloned()
        .unwrap_or_else(|| {
            let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
            let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
            http::HeaderValue::from_str(id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
        })
}

/// What the access log says about a request beyond its response.
struct Served {
    label: MethodLabel,
    /// The matched route's path template ("-" when none matched): never the raw path.
    route: &'static str,
    agent: Option<String>,
    /// The response and its outcome (a gateway refusal passed through on the reverse-proxy
    /// face is a successful response with a non-`ok` outcome).
    result: Result<(Response<Body>, Outcome), ProxyError>,
}

/// What a request is for, once routed.
enum Target {
    /// The app-facing façade (`/v1/...`).
    Facade(Route),
    /// The reverse-proxy face: a gateway method for an agent.
    Face(crate::gateway::GatewayMethod, String),
}

impl Target {
    fn resolve(method: &http::Method, path: &str) -> Result<Self, ProxyError> {
        if path.starts_with(crate::gateway::BASE_PATH) {
            face::match_path(method, path).map(|(m, agent)| Target::Face(m, agent.to_owned()))
        } else {
            route::match_route(method, path).map(Target::Facade)
        }
    }

    fn label(&self) -> MethodLabel {
        match self {
            Target::Facade(r) => r.label(),
            Target::Face(m, _) => MethodLabel::Gateway(*m),
        }
    }

    fn route(&self) -> &'static str {
        match self {
            Target::Facade(r) => r.path(),
            Target::Face(m, _) => m.route(),
        }
    }
}

impl Handler for Proxy {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let http_method = req.method().clone();
        let rid = request_id(req.headers());
        // Each face answers errors in its own language: problem+json, or the gateway envelope.
        let gateway_face = req.uri().path().starts_with(crate::gateway::BASE_PATH);
        let upstream = std::cell::Cell::new(std::time::Duration::ZERO);
        let (served, upstream) = crate::gateway::client::UPSTREAM_TIME
            .scope(upstream, async {
                let served = match Target::resolve(req.method(), req.uri().path()) {
                    Err(e) => Served { label: MethodLabel::Unmatched, route: "-", agent: None, result: Err(e) },
                    Ok(target) => self.run(target, req).await,
                };
                (served, crate::gateway::client::UPSTREAM_TIME.with(|t| t.get()))
            })
            .await;
        let Served { label, route, agent, result } = served;
        let (mut resp, outcome) = match result {
            Ok(r) => r,
            Err(e) => {
                if let ProxyError::Upstream(u) = &e {
                    tracing::warn!(request_id = ?rid, method = label.as_str(), error = %u, "gateway call failed");
                }
                if let ProxyError::Internal(why) = &e {
                    tracing::error!(request_id = ?rid, method = label.as_str(), error = %why, "internal error");
                }
                let resp = if gateway_face { e.to_envelope() } else { e.to_problem() };
                (resp, e.outcome())
            }
        };
        let elapsed = started.elapsed();
        self.metrics.record_request(label, outcome, elapsed);
        tracing::info!(
            target: "ccgate::access",
            request_id = rid.to_str().unwrap_or("-"),
            http_method = %http_method,
            method = label.as_str(),
            route,
            agent = agent.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            outcome = outcome.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = upstream.as_secs_f64() * 1000.0,
            "request"
        );
        resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
        resp
    }
}

impl Proxy {
    /// Phases after routing: authenticate, rate limit, then the target's own phases.
    async fn run(self: &Arc<Self>, target: Target, req: Request<Incoming>) -> Served {
        let (label, path) = (target.label(), target.route());
        let who = match self.authenticate(req.headers()) {
            Ok(p) => p,
            Err(e) => return Served { label, route: path, agent: None, result: Err(e) },
        };
        let limits = match self.limits.check(label, &who) {
            Ok(h) => h,
            Err(refusal) => {
                let result = Err(ProxyError::RateLimited(Box::new(refusal)));
                return Served { label, route: path, agent: Some(who.agent_id), result };
            }
        };
        let mut result = match target {
            Target::Facade(route) => self.dispatch(route, &who, req).await.map(|r| (r, Outcome::Ok)),
            Target::Face(m, agent) => match self.read_body(req).await {
                Ok(body) => face::handle(self, &who, m, &agent, body).await,
                Err(e) => Err(e),
            },
        };
        if let (Ok((resp, _)), Some(h)) = (&mut result, &limits) {
            h.apply(resp.headers_mut());
        }
        Served { label, route: path, agent: Some(who.agent_id), result }
    }

    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, ProxyError> {
        self.auth.authenticate(headers).map_err(|reason| {
            self.metrics.count_auth_failure(reason);
            ProxyError::Unauthenticated(reason)
        })
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: Route,
        who: &Principal,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        match route {
            Route::SignIn => facade::sign_in(self, who, self.read_body(req).await?).await,
            Route::GetSession => facade::get_session(self, who).await,
            Route::SignOut => facade::sign_out(self, who).await,
            Route::CreateConference => facade::create_conference(self, who, self.read_body(req).await?).await,
            Route::StopAnnouncement => facade::stop_announcement(self, who).await,
            Route::Events => facade::events(self, who, req.headers()).await,
        }
    }

    /// Reads the body up to `max_body_bytes`. Checked after authentication so an anonymous
    /// client cannot make ccgate buffer anything.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, ProxyError> {
        let limited = http_body_util::Limited::new(req.into_body(), self.max_body_bytes);
        match limited.collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::PayloadTooLarge),
            Err(e) => Err(ProxyError::BadRequest(format!("could not read body: {e}"))),
        }
    }
}
