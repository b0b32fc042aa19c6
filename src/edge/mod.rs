//! The edge: what turns an HTTP request into an operation and its result into a response.
//! One pipeline of named phases (docs/architecture.md):
//!
//! `route` (which face, which operation; the metrics label) → `authenticate` (JWT →
//! [`Principal`]) → `read body` → `parse` (the face: request → [`Operation`]) → `run` (the
//! operations core) → `render` (the face: [`Done`] → response; a [`Failure`] → response from
//! the table in `render.rs`) → `record` (metrics and the access log, here only).
//!
//! The two faces: [`api`] (`/v1/...`, JSON and problem+json) and [`passthrough`]
//! (`/agentgateway/resource/...`, the gateway's own envelope).

pub mod api;
pub mod auth;
pub mod passthrough;
pub mod problems;
pub mod refusal_log;
pub mod render;
pub mod route;
pub mod sse;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use tracing::Instrument;

use crate::gateway::trace::TraceContext;
use crate::gateway::{timing, GatewayMethod, BASE_PATH};
use crate::labels::{AuthFailureReason, ChairVerdict, MethodLabel, Outcome};
use crate::metrics::{GaugeGuard, Metrics};
use crate::ops::audit;
use crate::ops::limits::LimitState;
use crate::ops::{Core, Failure, Principal};
use crate::server::body::Body;
use crate::server::Handler;
use crate::session::history::{ErrorNote, RequestNote};
use auth::Authenticator;
use route::Route;

pub struct Proxy {
    /// Swapped whole by a reload.
    pub auth: Arc<arc_swap::ArcSwap<Authenticator>>,
    pub core: Core,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    /// A body must arrive whole within this (`server.body_read_timeout_ms`).
    pub body_read_timeout: std::time::Duration,
    /// Ends event streams when the process shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// One line per refused token, within a budget.
    pub refusals: refusal_log::RefusalLog,
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
        .unwrap_or_else(new_request_id)
}

/// 128 bits as 32 lowercase hex digits, the shape of a simple UUID, made without a system
/// call: a `uuid` v4 reads the OS's randomness for every request (a `getrandom` per request
/// was the one system call ccgate made beyond its four reads and writes). The ids only need
/// to be unique and unpredictable enough not to collide across replicas, which the keyed hash
/// of `trace::random_u64` gives.
fn new_request_id() -> http::HeaderValue {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&crate::gateway::trace::random_u64().to_be_bytes());
    id[8..].copy_from_slice(&crate::gateway::trace::random_u64().to_be_bytes());
    let mut hex = [0u8; 32];
    crate::gateway::trace::hex_into(&id, &mut hex);
    http::HeaderValue::from_bytes(&hex).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

/// What a request is for, once routed.
enum Target {
    /// The REST API (`/v1/...`).
    Api(Route),
    /// The pass-through face: a gateway method for an agent.
    Passthrough(GatewayMethod, String),
}

impl Target {
    fn resolve(method: &http::Method, path: &str) -> Result<Self, Failure> {
        if path.starts_with(BASE_PATH) {
            passthrough::match_path(method, path).map(|(m, agent)| Target::Passthrough(m, agent.to_owned()))
        } else {
            route::match_route(method, path).map(Target::Api)
        }
    }

    fn label(&self) -> MethodLabel {
        match self {
            Target::Api(r) => r.label(),
            Target::Passthrough(m, _) => MethodLabel::Gateway(*m),
        }
    }

    fn route(&self) -> &'static str {
        match self {
            Target::Api(r) => r.path(),
            Target::Passthrough(m, _) => m.route(),
        }
    }
}

/// A request as the access log and the metrics see it once it is answered.
struct Handled {
    label: MethodLabel,
    /// The gateway the token named (index), once authenticated.
    gateway: Option<usize>,
    /// The matched route's path template ("-" when none matched): never the raw path.
    route: &'static str,
    agent: Option<String>,
    /// The client address: the peer, or the client a trusted proxy names.
    client: Option<std::net::IpAddr>,
    response: Response<Body>,
    outcome: Outcome,
    /// A chair-only call's audit line, written after the access line.
    audit: Option<AuditLine>,
}

impl Handler for Proxy {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
        conn: crate::server::listener::Conn,
    ) -> Response<Body> {
        let started = Instant::now();
        let _in_flight = GaugeGuard::new(self.metrics.in_flight());
        let http_method = req.method().clone();
        let rid = request_id(req.headers());
        let mut trace = TraceContext::from_headers(req.headers());
        // Every log line written while serving the request carries its span's fields; with
        // OTLP export on, the span is exported and the trace context names it.
        let span =
            tracing::info_span!("request", trace_id = tracing::field::Empty, request_id = rid.to_str().unwrap_or("-"));
        crate::otel::link(&span, &mut trace);
        span.record("trace_id", tracing::field::display(trace.trace_id()));
        let trace_id = trace.trace_id;
        let (handled, upstream) = timing::measure(trace, || self.serve(req, peer.ip(), &rid).instrument(span)).await;
        let Handled { label, gateway, route, agent, client, mut response, outcome, audit } = handled;
        if agent.is_some() {
            // Authenticated: at the cap, this connection is among the last closed.
            conn.trust();
        }
        let elapsed = started.elapsed();
        self.metrics.record_request(gateway, label, outcome, elapsed);
        tracing::info!(
            target: "ccgate::access",
            request_id = rid.to_str().unwrap_or("-"),
            trace_id = %crate::gateway::trace::TraceId::new(&trace_id),
            http_method = %http_method,
            method = label.as_str(),
            route,
            gateway = gateway.map_or("-", |g| self.core.gateway_name(g)),
            agent = agent.as_deref().unwrap_or("-"),
            client = %ClientField(client),
            status = response.status().as_u16(),
            outcome = outcome.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = upstream.as_secs_f64() * 1000.0,
            "request"
        );
        if let Some(line) = audit {
            line.write(response.status().as_u16(), outcome.as_str());
        }
        if let (Some(g), Some(agent)) = (gateway, agent.as_deref()) {
            self.note_request(g, agent, label, &rid, response.status().as_u16(), outcome);
        }
        response.headers_mut().insert(X_REQUEST_ID.clone(), rid);
        response
    }
}

impl Proxy {
    /// The agent's history keeps the request (`ccgate agents ID`), and, when ccgate refused
    /// it or it failed here, notes it as the agent's last error. A refusal or failure the
    /// gateway answered (`rejected`, `gateway_error`) is noted by the call itself, with the
    /// gateway's retcode, which says more.
    fn note_request(
        &self,
        g: usize,
        agent: &str,
        label: MethodLabel,
        rid: &http::HeaderValue,
        status: u16,
        outcome: Outcome,
    ) {
        let at_ms = crate::clock::unix_ms();
        let note = RequestNote {
            method: label.as_str(),
            status,
            outcome: outcome.as_str(),
            request_id: rid.clone(),
            conference: None,
            at_ms,
        };
        let error = (!matches!(outcome, Outcome::Ok | Outcome::Rejected | Outcome::GatewayError)).then(|| ErrorNote {
            method: label.as_str(),
            cause: outcome.as_str(),
            at_ms,
        });
        self.core.note_request(g, agent, note, error);
    }

    /// The phases from routing to rendering. Each face answers in its own language,
    /// decided by the path before anything else can fail.
    async fn serve(&self, req: Request<Incoming>, peer: std::net::IpAddr, rid: &http::HeaderValue) -> Handled {
        let passthrough_face = req.uri().path().starts_with(BASE_PATH);
        let peer = Some(peer);
        // Resolved only when the access line is written (its `client`): not per request else.
        let client = tracing::enabled!(target: "ccgate::access", tracing::Level::INFO)
            .then(|| peer.map(|p| self.auth.load().client_address(p, req.headers())))
            .flatten();
        let (label, route, who, result, limit) = match Target::resolve(req.method(), req.uri().path()) {
            Err(f) => (MethodLabel::Unmatched, "-", None, Err(f), None),
            Ok(target) => {
                let (label, route) = (target.label(), target.route());
                match self.authenticate(req.headers(), peer).await {
                    Err(f) => (label, route, None, Err(f), None),
                    // Only when the line is written: no scope and no copies per request else.
                    Ok(who)
                        if label.chair_only() && tracing::enabled!(target: "ccgate::audit", tracing::Level::INFO) =>
                    {
                        let line = AuditLine::new(rid, self.core.gateway_name(who.gateway), &who, label);
                        let (result, limit) = line.trail.follow(self.operate(target, &who, label, req)).await;
                        (label, route, Some((who, Some(line))), result, limit)
                    }
                    Ok(who) => {
                        let (result, limit) = self.operate(target, &who, label, req).await;
                        (label, route, Some((who, None)), result, limit)
                    }
                }
            }
        };
        let gateway = who.as_ref().map(|(w, _)| w.gateway);
        let (agent, audit) = match who {
            Some((w, audit)) => (Some(w.agent_id), audit),
            None => (None, None),
        };
        let (mut response, outcome) = match result {
            Ok(r) => r,
            Err(f) => {
                log_failure(&f, label, rid);
                let response = if passthrough_face {
                    render::envelope(&f)
                } else {
                    render::problem(&f, rid, gateway.map(|g| self.core.gateway_name(g)))
                };
                (response, render::spec(&f).outcome)
            }
        };
        if let Some(state) = &limit {
            render::limit_headers(state, response.headers_mut());
        }
        Handled { label, gateway, route, agent, client, response, outcome, audit }
    }

    /// Body, parse, run, render: the phases after authentication.
    async fn operate(
        &self,
        target: Target,
        who: &Principal,
        label: MethodLabel,
        req: Request<Incoming>,
    ) -> (Result<(Response<Body>, Outcome), Failure>, Option<LimitState>) {
        let after = match target {
            Target::Api(Route::Events) => match api::last_event_id(req.headers()) {
                Ok(after) => after,
                Err(f) => return (Err(f), None),
            },
            _ => None,
        };
        let stream = api::StreamContext { after, shutdown: &self.shutdown };
        let body = match self.read_body(req).await {
            Ok(b) => b,
            Err(f) => return (Err(f), None),
        };
        let op = match &target {
            Target::Api(route) => api::parse(*route, body),
            Target::Passthrough(m, agent) => passthrough::parse(who, *m, agent, body),
        };
        let op = match op {
            Ok(op) => op,
            Err(f) => return (Err(f), None),
        };
        let answer = self.core.run(who, label, op).await;
        let rendered = answer.result.map(|done| match target {
            Target::Api(_) => api::render(done, stream),
            Target::Passthrough(..) => passthrough::render(done),
        });
        (rendered, answer.limit)
    }

    /// `peer`: the connection's address (the budget and the refusal log resolve proxies).
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Principal, Failure> {
        // Known tokens (and free verification slots) need no await; a token waiting for a
        // slot or a key fetch holds the authenticator itself, not the swap's guard.
        let now = self.auth.load().authenticate_now(headers, peer);
        let result = match now {
            Some(r) => r,
            None => self.auth.load_full().authenticate(headers, peer).await,
        };
        result.map_err(|refused| match refused {
            auth::Refused::Token(reason) => {
                self.metrics.count_auth_failure(reason);
                let auth = self.auth.load();
                let client = peer.map(|p| auth.client_address(p, headers));
                self.refusals.refused(reason, auth.known_issuer(headers), client);
                match reason {
                    // A valid token, for no gateway here: 403, not "get a new token".
                    AuthFailureReason::NoGateway => Failure::NoGateway(auth.gateway_claim()),
                    _ => Failure::Unauthenticated(reason),
                }
            }
            // Whole seconds, rounded up, at least 1 (as Retry-After wants).
            auth::Refused::Throttled(wait) => Failure::Throttled(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            auth::Refused::KeysUnavailable => Failure::KeysUnavailable,
        })
    }

    /// Reads the body up to `max_body_bytes`, within `body_read_timeout` however it
    /// trickles. Called after authentication so an anonymous client cannot make ccgate buffer
    /// or wait for anything. A body refused for its size or its slowness is drained in the
    /// background ([`linger`]) while the refusal is answered, so the client reads the 413 or
    /// 408 rather than a reset.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Failure> {
        if hyper::body::Body::is_end_stream(req.body()) {
            // No body (most requests): no timer, no buffer.
            return Ok(Bytes::new());
        }
        let max = self.max_body_bytes;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let expects_continue =
            req.headers().get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut body = req.into_body();
        if declared.is_some_and(|n| n > max as u64) {
            // Refused before a byte is read: 413 before 400, whatever the body holds. A client
            // waiting for `100 Continue` has sent nothing and is not asked for it.
            if !expects_continue {
                tokio::spawn(linger(body));
            }
            return Err(Failure::PayloadTooLarge);
        }
        let mut buf = bytes::BytesMut::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::BadRequest(format!("could not read body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(Failure::PayloadTooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(self.body_read_timeout, read).await {
            Err(_) => Err(Failure::BodyTimeout),
            Ok(r) => r,
        };
        match result {
            Ok(()) => Ok(buf.freeze()),
            Err(f @ (Failure::PayloadTooLarge | Failure::BodyTimeout)) => {
                tokio::spawn(linger(body));
                Err(f)
            }
            Err(f) => Err(f),
        }
    }
}

/// A refused body is read and thrown away for at most this long and this many bytes after the
/// refusal (a lingering close, as nginx's `lingering_time`): enough for a client that sends its
/// whole body before reading the answer to finish and then read it. Past either bound the
/// body is dropped (HTTP/1: the connection closes; HTTP/2: the stream is reset).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Drains what is left of a refused body, within [`LINGER_TIME`] and [`LINGER_MAX_BYTES`].
async fn linger(mut body: Incoming) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > LINGER_MAX_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The access line's `client`: the address, or `-` when the connection had none.
struct ClientField(Option<std::net::IpAddr>);

impl std::fmt::Display for ClientField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The audit line of a chair-only call (target `ccgate::audit`, README "Audit log": a stable
/// format), armed once the token is verified. Written after the access line with the
/// answer's status and outcome, or, when the request is dropped first (the client hung up,
/// the connection's deadline passed, shutdown), by `Drop` with status 499 and outcome
/// `cancelled`: a call sent to the gateway always leaves its line. Owns what it says, so it
/// can say it from `Drop`. No Guid, token or password: the subject is the token's `sub`.
struct AuditLine {
    request_id: http::HeaderValue,
    gateway: String,
    agent: String,
    subject: Option<Arc<str>>,
    tenant: Option<String>,
    method: MethodLabel,
    trail: Arc<audit::Trail>,
    written: bool,
}

impl AuditLine {
    fn new(request_id: &http::HeaderValue, gateway: &str, who: &Principal, method: MethodLabel) -> Self {
        Self {
            request_id: request_id.clone(),
            gateway: gateway.to_owned(),
            agent: who.agent_id.clone(),
            subject: who.subject.clone(),
            tenant: who.tenant.as_deref().map(crate::session::view::printable),
            method,
            trail: Arc::default(),
            written: false,
        }
    }

    fn write(mut self, status: u16, outcome: &str) {
        self.emit(status, outcome);
        self.written = true;
    }

    /// `decision` is `allowed` when the call went to the gateway (whose answer is in
    /// `status` and `outcome`), `refused` otherwise; `reason` is the check's verdict, or,
    /// when the check let the call through but something else stopped it (a rate limit,
    /// no session), that outcome.
    fn emit(&self, status: u16, outcome: &str) {
        let check = self.trail.check();
        let forwarded = self.trail.forwarded();
        let reason = match check {
            Some(c) if forwarded || !matches!(c.verdict, ChairVerdict::Chair | ChairVerdict::UnknownForwarded) => {
                c.verdict.as_str()
            }
            _ => outcome,
        };
        tracing::info!(
            target: "ccgate::audit",
            request_id = self.request_id.to_str().unwrap_or("-"),
            gateway = %self.gateway,
            agent = %self.agent,
            subject = self.subject.as_deref().unwrap_or("-"),
            tenant = self.tenant.as_deref().unwrap_or("-"),
            method = self.method.as_str(),
            conference = %ConferenceField(check.and_then(|c| c.conference)),
            decision = if forwarded { "allowed" } else { "refused" },
            reason,
            status,
            outcome,
            "chairperson check"
        );
    }
}

impl Drop for AuditLine {
    fn drop(&mut self) {
        if !self.written {
            self.emit(CLIENT_CLOSED, "cancelled");
        }
    }
}

/// The status an audit line records for a request dropped before it was answered (nginx's
/// "client closed request").
const CLIENT_CLOSED: u16 = 499;

/// A conference id, or `-`.
struct ConferenceField(Option<u64>);

impl std::fmt::Display for ConferenceField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

/// The log line for a failure worth an operator's attention; the access line covers the rest.
fn log_failure(f: &Failure, label: MethodLabel, rid: &http::HeaderValue) {
    match f {
        Failure::Upstream(u) => {
            tracing::warn!(request_id = ?rid, method = label.as_str(), error = %u, "gateway call failed")
        }
        Failure::Internal(why) => {
            tracing::error!(request_id = ?rid, method = label.as_str(), error = %why, "internal error")
        }
        _ => {}
    }
}
