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
pub mod policy;
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
}

impl Handler for Proxy {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let (label, agent, result) = match route::match_route(req.method(), req.uri().path()) {
            Err(e) => (MethodLabel::Unmatched, None, Err(e)),
            Ok(route) => {
                let (agent, result) = self.run(route, req).await;
                (route.label(), agent, result)
            }
        };
        let (resp, outcome) = match result {
            Ok(r) => (r, Outcome::Ok),
            Err(e) => {
                if let ProxyError::Upstream(u) = &e {
                    tracing::warn!(method = label.as_str(), error = %u, "gateway call failed");
                }
                if let ProxyError::Internal(why) = &e {
                    tracing::error!(method = label.as_str(), error = %why, "internal error");
                }
                (e.to_problem(), e.outcome())
            }
        };
        let elapsed = started.elapsed();
        self.metrics.record_request(label, outcome, elapsed);
        tracing::info!(
            target: "ccgate::access",
            http_method = %method,
            method = label.as_str(),
            agent = agent.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            outcome = outcome.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        resp
    }
}

impl Proxy {
    /// Phases after routing. Returns the agent (once authenticated) for the access log.
    async fn run(
        self: &Arc<Self>,
        route: Route,
        req: Request<Incoming>,
    ) -> (Option<String>, Result<Response<Body>, ProxyError>) {
        let who = match self.authenticate(req.headers()) {
            Ok(p) => p,
            Err(e) => return (None, Err(e)),
        };
        let result = self.dispatch(route, &who, req).await;
        (Some(who.agent_id), result)
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
