//! A scripted stand-in for the gateway, for in-process unit tests of the session and
//! operations layers: no sockets, no TLS, and it runs under tokio's paused clock. It answers
//! like the gateway by default (sign-in hands out a Guid and a cookie, polls wait for queued
//! events, everything else succeeds), records what it was sent, and takes scripted answers
//! per method. The real-socket tests against the simulator live in `tests/`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{Secret, SessionsConfig};
use crate::gateway::{CallFuture, Envelope, Gateway, GatewayMethod, GatewayReply, GatewayRequest, UpstreamError};
use crate::metrics::Metrics;
use crate::session::{AgentCredentials, CredentialStore, SessionStore};

/// The gateway's long-poll wait when no event is queued.
pub const POLL_WAIT: Duration = Duration::from_secs(10);

/// One call as the gateway saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: GatewayMethod,
    pub agent: String,
    /// When the call arrived (tokio's clock, so paused-clock tests can bucket calls).
    pub at: tokio::time::Instant,
    /// The `Guid` presented, if any.
    pub guid: Option<String>,
}

#[derive(Default)]
pub struct FakeGateway {
    seen: Mutex<Vec<Seen>>,
    /// Answers to give, in order, per method; the default answer when none is left.
    script: Mutex<HashMap<GatewayMethod, VecDeque<Result<Envelope, UpstreamError>>>>,
    /// Events the gateway queues after a successful call of the method (e.g. the conference
    /// events after `requestagentconf`).
    then_events: Mutex<HashMap<GatewayMethod, Vec<Value>>>,
    /// The agent's event queue.
    events: Mutex<VecDeque<Value>>,
    queued: tokio::sync::Notify,
    /// Time every call but the poll takes.
    latency: Mutex<Duration>,
    guids: AtomicU64,
    /// Every call fails at once as if the gateway were unreachable.
    down: std::sync::atomic::AtomicBool,
}

impl FakeGateway {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The gateway goes away (every call: connection refused) or comes back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().unwrap() = d;
    }

    /// The next call of `method` gets `answer`.
    pub fn script(&self, method: GatewayMethod, answer: Result<Envelope, UpstreamError>) {
        self.script.lock().unwrap().entry(method).or_default().push_back(answer);
    }

    /// The next call of `method` is refused with `code`.
    pub fn refuse(&self, method: GatewayMethod, code: &str) {
        self.script(method, Ok(Envelope::error(code, "refused", None)));
    }

    pub fn then_events(&self, method: GatewayMethod, events: Vec<Value>) {
        self.then_events.lock().unwrap().insert(method, events);
    }

    pub fn push_event(&self, event: Value) {
        self.events.lock().unwrap().push_back(event);
        self.queued.notify_waiters();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self, method: GatewayMethod) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.method == method).count()
    }

    /// The Guid each call of `method` presented.
    pub fn guids(&self, method: GatewayMethod) -> Vec<Option<String>> {
        self.seen.lock().unwrap().iter().filter(|s| s.method == method).map(|s| s.guid.clone()).collect()
    }

    async fn answer(&self, method: GatewayMethod) -> Result<GatewayReply, UpstreamError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(UpstreamError::Unavailable("connection refused".into()));
        }
        let scripted = self.script.lock().unwrap().get_mut(&method).and_then(VecDeque::pop_front);
        if method == GatewayMethod::GetAgentEvent && scripted.is_none() {
            return Ok(GatewayReply::from_envelope(Envelope::event(self.next_event().await)));
        }
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let envelope = match scripted {
            Some(answer) => answer?,
            None => Envelope::ok("success", json!({})),
        };
        let mut reply = GatewayReply::from_envelope(envelope);
        if !reply.envelope.is_success() {
            return Ok(reply);
        }
        if matches!(method, GatewayMethod::Login | GatewayMethod::ForceLogin) {
            let n = self.guids.fetch_add(1, Ordering::Relaxed) + 1;
            reply.set_guid = Some(format!("guid-{n}.AgentGateway0"));
            reply.cookies = vec!["lb=node0".into()];
        }
        if let Some(events) = self.then_events.lock().unwrap().get(&method) {
            let mut q = self.events.lock().unwrap();
            q.extend(events.iter().cloned());
            self.queued.notify_waiters();
        }
        Ok(reply)
    }

    /// The long poll: the next queued event at once, else `None` after the wait.
    async fn next_event(&self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let notified = self.queued.notified();
            if let Some(e) = self.events.lock().unwrap().pop_front() {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

impl Gateway for FakeGateway {
    fn call<'a>(&'a self, req: GatewayRequest<'a>) -> CallFuture<'a> {
        self.seen.lock().unwrap().push(Seen {
            method: req.method,
            agent: req.agent.to_owned(),
            at: tokio::time::Instant::now(),
            guid: req.auth.and_then(|a| a.guid.to_str().ok()).map(str::to_owned),
        });
        Box::pin(self.answer(req.method))
    }
}

/// A gateway event as the poll delivers it.
pub fn event(agent: &str, kind: &str, content: Value) -> Value {
    json!({"eventType": kind, "workNo": agent, "content": content})
}

/// Credentials for agents 153 and 154.
pub fn credentials() -> CredentialStore {
    let entry = |n: &str| AgentCredentials { password: Secret::new("pw"), phonenum: format!("8888{n}") };
    CredentialStore::new(HashMap::from([("153".into(), entry("153")), ("154".into(), entry("154"))]))
}

/// Credentials for agents 1000.. (`n` of them).
pub fn many_credentials(n: usize) -> CredentialStore {
    let entry = |n: &str| AgentCredentials { password: Secret::new("pw"), phonenum: format!("8888{n}") };
    CredentialStore::new((1000..1000 + n).map(|a| (a.to_string(), entry(&a.to_string()))).collect())
}

/// A store over `gateway` with the default session settings changed by `tune`.
pub fn store(gateway: &Arc<FakeGateway>, tune: impl FnOnce(&mut SessionsConfig)) -> Arc<SessionStore> {
    let mut cfg = SessionsConfig::default();
    tune(&mut cfg);
    SessionStore::new(
        Default::default(),
        gateway.clone(),
        credentials(),
        cfg,
        Metrics::default(),
        None,
        Default::default(),
    )
}
