//! A faithful CC-Gateway simulator (docs/gateway.md says what it imitates), used by the demo, the tests and the
//! benchmarks. HTTPS, `Set-GUID: JSESSIONID=<uuid>.AgentGateway<n>`, a sticky cookie, static
//! or rotating Guids with an overlap, long-poll events one per response, forced sign-out after
//! silence, conferences with chair semantics, every documented retcode with HTTP 200, and
//! fault injection. It counts what it receives per method so tests can prove that a request
//! refused by ccgate never reached it.

mod config;
mod state;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::Request;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::gateway::wire::{GUID_HEADER, JSON_UTF8, SET_GUID_HEADER};
use crate::gateway::{parse_agent_id, Envelope, GatewayMethod, Retcode, BASE_PATH};
use crate::server::body::{self, Body, BoxError};
use crate::server::{Handler, ServeOptions, Served};
use crate::sync::lock;
pub use config::{
    AuthMode, Faults, SimConfig, DEFAULT_EVENT_WAIT_MS, DEFAULT_GUID_INTERVAL_MS, DEFAULT_GUID_OVERLAP_MS,
    DEFAULT_MAX_IDLE_MS, DEFAULT_SIM_LISTEN, EVENT_QUEUE_CAP,
};
use config::{RECEIVED_LOG_CAP, SIM_MAX_BODY, SIM_MAX_CONNECTIONS};
use state::{event, new_guid, Agent, Answer, GuidCheck, State};

/// The simulator's own view (`bench/fleet.py`): `GET` it on the simulator's port.
pub const VIEW_PATH: &str = "/ccgate-sim/agents";
/// `POST` a JSON array of `{"agent", "type", "content"}` here to queue those events, as the
/// gateway's own operations would (benchmarks, and tools outside the process). Not a gateway
/// path: the real gateway has no such thing.
pub const EVENTS_PATH: &str = "/ccgate-sim/events";

/// What one request asks, after transport-level faults were applied.
struct Call<'a> {
    method: GatewayMethod,
    agent: &'a str,
    guid: Option<&'a str>,
    cookie: Option<&'a str>,
    body: &'a Bytes,
    error_reason: Option<i64>,
    forced_retcode: Option<String>,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: &'static str,
    pub agent: String,
    pub guid: Option<String>,
    pub cookie: Option<String>,
    /// W3C `traceparent`, as a caller propagating a trace sent it.
    pub traceparent: Option<String>,
}

struct Shared {
    cfg: SimConfig,
    faults: ArcSwap<Faults>,
    state: Mutex<State>,
    counts: Vec<AtomicU64>,
    unknown: AtomicU64,
    received: Mutex<Vec<Received>>,
    /// Connections open at the simulator, for tests of how clients hold theirs.
    connections: prometheus::IntGauge,
}

/// The simulator's request handler, and (cloned) the test-facing handle to its state.
#[derive(Clone)]
pub struct Sim(Arc<Shared>);

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let faults = ArcSwap::from_pointee(cfg.faults.clone());
        Self(Arc::new(Shared {
            cfg,
            faults,
            state: Mutex::new(State::default()),
            counts: (0..GatewayMethod::COUNT).map(|_| AtomicU64::new(0)).collect(),
            unknown: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            connections: prometheus::IntGauge::new("sim_connections", "open connections")
                .expect("static metric definition"),
        }))
    }

    /// Starts serving HTTPS on `listener`.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Served> {
        // The simulator stands in for a gateway that many agents' pollers and the benchmark's
        // load generator reach at once.
        let metrics = crate::server::ConnectionMetrics {
            open: self.0.connections.clone(),
            refused: prometheus::IntCounter::new("sim_refused", "refused connections")
                .expect("static metric definition"),
            shed: prometheus::IntCounter::new("sim_shed", "shed connections").expect("static metric definition"),
        };
        let opts =
            ServeOptions { max_connections: SIM_MAX_CONNECTIONS, metrics: Some(metrics), ..ServeOptions::default() };
        crate::server::spawn(listener, Some(tls), Arc::new(self.clone()), opts, shutdown)
    }

    /// How many requests for `m` arrived (whatever their outcome).
    pub fn count(&self, m: GatewayMethod) -> u64 {
        self.0.counts[m.index()].load(Ordering::Relaxed)
    }

    /// Connections open now (TLS handshake done or under way).
    pub fn open_connections(&self) -> i64 {
        self.0.connections.get()
    }

    /// Requests for paths that are no gateway method.
    pub fn unknown_count(&self) -> u64 {
        self.0.unknown.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>() + self.unknown_count()
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.0.received).clone()
    }

    pub fn set_faults(&self, f: Faults) {
        self.0.faults.store(Arc::new(f));
    }

    pub fn current_guid(&self, agent: &str) -> Option<String> {
        lock(&self.0.state).agents.get(agent).map(|a| a.guid.clone())
    }

    pub fn is_signed_in(&self, agent: &str) -> bool {
        lock(&self.0.state).agents.contains_key(agent)
    }

    pub fn rotations(&self) -> u64 {
        lock(&self.0.state).rotations
    }

    /// Hands the chair of `from`'s conference to `to` (signed in), as `applytoshiftpresident`
    /// would, with the same events. Returns the gateway's retcode.
    pub fn transfer_chair(&self, from: &str, to: &str) -> String {
        let mut st = lock(&self.0.state);
        let answer = match st.chair_conf(from) {
            Ok(conf_id) => st.shift_president(from, conf_id, to),
            Err(a) => a,
        };
        answer.envelope.retcode.clone()
    }

    /// Ends `agent`'s conference as `releaseagentconf` would (chair only). Returns the retcode.
    pub fn release_conference(&self, agent: &str) -> String {
        let mut st = lock(&self.0.state);
        let a = match st.chair_conf(agent) {
            Ok(id) => st.release_conf(id),
            Err(a) => a,
        };
        a.envelope.retcode.clone()
    }

    /// `agent` leaves its conference as `requestleaveagentconf` would. Returns the retcode.
    pub fn leave_conference(&self, agent: &str) -> String {
        let a = lock(&self.0.state).leave(agent);
        a.envelope.retcode.clone()
    }

    /// Queues an event for `agent` (e.g. to fill an app's buffer).
    pub fn push_event(&self, agent: &str, kind: &str, content: Value) {
        let mut st = lock(&self.0.state);
        st.push_event(agent, event(agent, kind, content));
    }

    /// Signs an agent out as an administrator would (forced, no event).
    pub fn kick(&self, agent: &str) {
        lock(&self.0.state).remove_agent(agent);
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == VIEW_PATH {
            return self.view();
        }
        if path == EVENTS_PATH && req.method() == http::Method::POST {
            return self.inject(req).await;
        }
        let Some((method, agent)) = resolve(&path) else {
            self.0.unknown.fetch_add(1, Ordering::Relaxed);
            return servlet_error(StatusCode::NOT_FOUND);
        };
        self.0.counts[method.index()].fetch_add(1, Ordering::Relaxed);
        let guid = req.headers().get(GUID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cookie = req.headers().get(COOKIE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if self.0.cfg.record_requests {
            let mut log = lock(&self.0.received);
            if log.len() < RECEIVED_LOG_CAP {
                let (method, agent, guid, cookie) = (method.log_name(), agent.clone(), guid.clone(), cookie.clone());
                let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
                log.push(Received { method, agent, guid, cookie, traceparent });
            }
        }
        if req.method() != method.http_method() {
            return servlet_error(StatusCode::METHOD_NOT_ALLOWED);
        }
        let faults = self.0.faults.load_full();
        let faulty = faults.applies(method);
        if faulty && faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faulty && faults.reset {
            let mut r = Response::new(Body::new(FailingBody));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
            return r;
        }
        if faulty {
            if let Some(s) = faults.http_status.and_then(|s| StatusCode::from_u16(s).ok()) {
                return servlet_error(s);
            }
        }
        if faulty && faults.malformed {
            let mut r = Response::new(body::full("<html>{\"retcode\": \"0\", oops"));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
            return r;
        }
        let body = match http_body_util::Limited::new(req.into_body(), SIM_MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return envelope(Answer::err(Retcode::BadParameter.as_str(), "bad body")),
        };
        if parse_agent_id(&agent).is_none() {
            return envelope(Answer::err(Retcode::BadParameter.as_str(), "invalid agentid"));
        }
        let call = Call {
            method,
            agent: &agent,
            guid: guid.as_deref(),
            cookie: cookie.as_deref(),
            body: &body,
            error_reason: faults.error_reason.filter(|_| faulty),
            forced_retcode: faults.retcode.clone().filter(|_| faulty),
        };
        envelope(self.operate(call).await)
    }

    async fn operate(&self, call: Call<'_>) -> Answer {
        let Call { method, agent, guid, cookie, body, error_reason, forced_retcode } = call;
        let cfg = &self.0.cfg;
        match method {
            GatewayMethod::Login | GatewayMethod::ForceLogin => {
                return match forced_retcode {
                    Some(code) => Answer::err(&code, "injected failure"),
                    None => self.sign_in(method, agent, body),
                }
            }
            GatewayMethod::GetAgentEvent if forced_retcode.is_none() => return self.poll(agent, guid, cookie).await,
            _ => {}
        }
        let now = Instant::now();
        let mut st = lock(&self.0.state);
        if let GuidCheck::Refused(a) = st.check_guid(cfg, agent, guid, cookie, now) {
            return a;
        }
        if let Some(code) = forced_retcode {
            return Answer::err(&code, "injected failure");
        }
        if let Some(n) = error_reason {
            return Answer {
                envelope: Envelope::error(
                    Retcode::Internal.as_str(),
                    format!("Unknown ERROR._{n}"),
                    Some(json!({"errorReason": n})),
                ),
                set_guid: None,
                set_cookie: None,
            };
        }
        let json_body: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return Answer::err(Retcode::BadParameter.as_str(), "the body is not valid JSON"),
            }
        };
        match method {
            GatewayMethod::Logout | GatewayMethod::ForceLogout => {
                st.remove_agent(agent);
                Answer::ok(json!({}))
            }
            GatewayMethod::UpdateGuid => match st.rotate(cfg, agent, now) {
                Some(g) => Answer::ok(json!({"guid": g})),
                None => Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"),
            },
            GatewayMethod::HandShake | GatewayMethod::AnswerAgentConf | GatewayMethod::RejectAgentConf => {
                Answer::ok(json!({}))
            }
            GatewayMethod::RequestAgentConf => match json_body.get("memberNum").and_then(Value::as_u64) {
                Some(1..=120) => st.request_conf(agent),
                _ => Answer::err(Retcode::BadParameter.as_str(), "memberNum must be 1..120"),
            },
            GatewayMethod::RequestLeaveAgentConf => st.leave(agent),
            GatewayMethod::QueryConfInfos => match json_body.get("confIds").and_then(Value::as_array) {
                Some(ids) if ids.len() <= 20 => {
                    let ids: Vec<u64> =
                        ids.iter().filter_map(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())).collect();
                    st.query_confs(&ids)
                }
                _ => Answer::err(Retcode::BadParameter.as_str(), "confIds must be an array of at most 20"),
            },
            chair_op => {
                let conf_id = match st.chair_conf(agent) {
                    Ok(id) => id,
                    Err(a) => return a,
                };
                match chair_op {
                    GatewayMethod::StopVoiceToConf => {
                        if cfg.operation_events {
                            st.push_event(agent, event(agent, "AgentConf_StopVoice", json!({"result": 0})));
                        }
                        Answer::ok(json!({}))
                    }
                    GatewayMethod::PlayVoiceToConf if json_body.get("voicePath").and_then(Value::as_str).is_none() => {
                        Answer::err(Retcode::BadParameter.as_str(), "voicePath is required")
                    }
                    GatewayMethod::ReleaseAgentConf => st.release_conf(conf_id),
                    GatewayMethod::ApplyToShiftPresident => {
                        let dest = match json_body.get("destAgentNo") {
                            Some(Value::Number(n)) => n.to_string(),
                            Some(Value::String(s)) => s.clone(),
                            _ => return Answer::err(Retcode::BadParameter.as_str(), "destAgentNo is required"),
                        };
                        st.shift_president(agent, conf_id, &dest)
                    }
                    _ => Answer::ok(json!({})),
                }
            }
        }
    }

    fn sign_in(&self, method: GatewayMethod, agent: &str, body: &Bytes) -> Answer {
        let cfg = &self.0.cfg;
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let password = v.get("password").and_then(Value::as_str).unwrap_or_default();
        let phonenum = v.get("phonenum").and_then(Value::as_str).unwrap_or_default();
        if password.is_empty() || password.len() > 32 || phonenum.is_empty() || phonenum.len() > 24 {
            return Answer::err("100-001", "sign-in parameter empty or invalid");
        }
        let expected = cfg.agents.get(agent).or(cfg.default_password.as_ref());
        if expected.map(String::as_str) != Some(password) {
            return Answer::err(Retcode::WrongPassword.as_str(), "wrong user name or password");
        }
        let now = Instant::now();
        let mut st = lock(&self.0.state);
        if st.agents.contains_key(agent) {
            if method == GatewayMethod::Login {
                return Answer::err(Retcode::AlreadySignedIn.as_str(), "the agent has signed in");
            }
            // forcelogin: the previous holder's Guids stop working; its next poll learns why.
            if let Some(old) = st.remove_agent(agent) {
                st.ghosts.insert(old.guid, old.login_time);
                for (g, _) in old.old_guids {
                    st.ghosts.insert(g, old.login_time);
                }
            }
        }
        let guid = new_guid(cfg.node);
        let cookie = format!("huaweielbsession={}", uuid::Uuid::new_v4().simple());
        let login_time = crate::clock::unix_ms();
        st.guids.insert(guid.clone(), agent.to_owned());
        st.agents.insert(
            agent.to_owned(),
            Agent {
                guid: guid.clone(),
                old_guids: Vec::new(),
                guid_issued: now,
                cookie: cookie.clone(),
                events: Default::default(),
                notify: Default::default(),
                last_seen: now,
                last_poll_ms: 0,
                conf: None,
                login_time,
            },
        );
        Answer {
            envelope: Envelope::ok(
                "",
                json!({
                    "vdnid": 1, "workno": agent, "mediatype": "TTF", "loginTime": login_time.to_string(),
                    "isForceChange": "false", "serverName": "AgentGateway", "timeRemaining": "9",
                }),
            ),
            set_guid: Some(guid),
            set_cookie: Some(format!("{cookie}; Path=/; Secure; HttpOnly")),
        }
    }

    /// The simulator's own view, for benchmarks that check what the gateway saw rather than
    /// what ccgate says: requests per method since start, and per signed-in agent when its
    /// latest poll arrived. Not a gateway path: a real gateway answers it 404.
    /// `POST /ccgate-sim/events`: queues each event of the array; answers how many.
    async fn inject(&self, req: Request<Incoming>) -> Response<Body> {
        let Ok(body) = http_body_util::Limited::new(req.into_body(), SIM_MAX_BODY).collect().await else {
            return servlet_error(StatusCode::PAYLOAD_TOO_LARGE);
        };
        let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return servlet_error(StatusCode::BAD_REQUEST);
        };
        let mut pushed = 0;
        for e in &list {
            if let (Some(agent), Some(kind)) = (e["agent"].as_str(), e["type"].as_str()) {
                self.push_event(agent, kind, e["content"].clone());
                pushed += 1;
            }
        }
        let mut r = Response::new(body::full(json!({ "pushed": pushed }).to_string()));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        r
    }

    fn view(&self) -> Response<Body> {
        let counts: serde_json::Map<String, Value> =
            GatewayMethod::ALL.iter().map(|m| (m.log_name().to_owned(), json!(self.count(*m)))).collect();
        let polls: serde_json::Map<String, Value> =
            lock(&self.0.state).agents.iter().map(|(id, a)| (id.clone(), json!(a.last_poll_ms))).collect();
        let body = json!({"counts": counts, "last_poll_ms": polls, "connections": self.open_connections()});
        let mut r = Response::new(body::full(body.to_string()));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        r
    }

    /// Long poll: one event per answer, or an empty answer after `event_wait_ms`. Rotates the
    /// Guid (dynamic mode) when the interval has passed.
    async fn poll(&self, agent: &str, guid: Option<&str>, cookie: Option<&str>) -> Answer {
        let cfg = &self.0.cfg;
        let deadline = Instant::now() + Duration::from_millis(cfg.event_wait_ms);
        let notify = {
            let mut st = lock(&self.0.state);
            if let Some(g) = guid {
                if let Some(login_time) = st.ghosts.remove(g) {
                    return shutdown_event(agent, login_time);
                }
            }
            if let GuidCheck::Refused(a) = st.check_guid(cfg, agent, guid, cookie, Instant::now()) {
                return a;
            }
            match st.agents.get_mut(agent) {
                Some(a) => {
                    a.last_poll_ms = crate::clock::unix_ms();
                    a.notify.clone()
                }
                None => return Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"),
            }
        };
        loop {
            {
                let mut st = lock(&self.0.state);
                let now = Instant::now();
                // Taken over while this poll waited: the holder learns it from this poll.
                if let Some(login_time) = guid.and_then(|g| st.ghosts.remove(g)) {
                    return shutdown_event(agent, login_time);
                }
                let Some(a) = st.agents.get_mut(agent) else {
                    return Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in");
                };
                a.last_seen = now;
                let ev = a.events.pop_front();
                let due = cfg.auth_mode == AuthMode::Dynamic
                    && now.saturating_duration_since(a.guid_issued) >= Duration::from_millis(cfg.guid_interval_ms);
                if ev.is_some() || now >= deadline {
                    if let Some(e) = &ev {
                        st.delivered(e);
                    }
                    let set_guid = if due { st.rotate(cfg, agent, now) } else { None };
                    return Answer { envelope: Envelope::event(ev), set_guid, set_cookie: None };
                }
            }
            let _ = tokio::time::timeout_at(deadline, notify.notified()).await;
        }
    }
}

fn shutdown_event(agent: &str, login_time: u64) -> Answer {
    Answer {
        envelope: Envelope::event(Some(event(agent, "AgentOther_ShutdownService", json!({"loginTime": login_time})))),
        set_guid: None,
        set_cookie: None,
    }
}

impl Handler for Sim {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: std::net::SocketAddr,
        conn: crate::server::listener::Conn,
    ) -> Response<Body> {
        conn.trust();
        // How the answer travels, whatever it says; the path is resolved a second time only
        // when such a fault is set.
        let faults = self.0.faults.load_full();
        if !faults.chunked && !faults.close {
            return self.answer(req).await;
        }
        let method = resolve(req.uri().path()).map(|(m, _)| m);
        let mut r = self.answer(req).await;
        if method.is_some_and(|m| faults.applies(m)) {
            if faults.chunked {
                let inner = std::mem::replace(r.body_mut(), body::empty());
                *r.body_mut() = Body::new(UnknownLength(inner));
            }
            if faults.close {
                r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        r
    }
}

/// A body that does not tell its length: hyper sends it chunked.
struct UnknownLength(Body);

impl hyper::body::Body for UnknownLength {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
}

/// `/agentgateway/resource/{tree}/{agentid}[/{action}]` → method and agent. Exact segments:
/// anything else is a servlet 404.
fn resolve(path: &str) -> Option<(GatewayMethod, String)> {
    let rest = path.strip_prefix(BASE_PATH)?;
    let mut parts = rest.split('/');
    let tree = parts.next()?;
    let agent = parts.next()?;
    let action = parts.next();
    if parts.next().is_some() || agent.is_empty() {
        return None;
    }
    GatewayMethod::lookup(tree, action).map(|m| (m, agent.to_owned()))
}

fn envelope(a: Answer) -> Response<Body> {
    let mut r = Response::new(body::full(a.envelope.to_bytes()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    if let Some(g) = a.set_guid {
        if let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={g}")) {
            h.insert(SET_GUID_HEADER, v);
        }
    }
    if let Some(c) = a.set_cookie {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.insert(SET_COOKIE, v);
        }
    }
    r
}

fn servlet_error(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(body::full(format!(
        "<html><body><h1>HTTP Status {} - {}</h1></body></html>",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html;charset=utf-8"));
    r
}

/// A body that fails at once: hyper aborts the connection after the head, which the client
/// sees as a connection reset mid-answer.
struct FailingBody;

impl hyper::body::Body for FailingBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err("simulated connection reset".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_exact_paths() {
        assert_eq!(
            resolve("/agentgateway/resource/agentconf/153/stopvoicetoconf").map(|x| x.0),
            Some(GatewayMethod::StopVoiceToConf)
        );
        assert_eq!(resolve("/agentgateway/resource/onlineagent/153").map(|x| x.0), Some(GatewayMethod::Login));
        assert!(resolve("/agentgateway/resource/agentconf/153/stopvoicetoconf/x").is_none());
        assert!(resolve("/agentgateway/resource/agentconf//stopvoicetoconf").is_none());
        assert!(resolve("/agentgateway/resource/agentconf/153/nope").is_none());
    }
}
