//! Agent gateway sessions: the store, sign-in/sign-out (one at a time per agent), the Guid and
//! cookies, the conference state, the event buffer, and the poller that keeps it all current.

pub mod conference;
pub mod credentials;
pub mod events;
mod poller;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ms, SessionsConfig};
use crate::error::ProxyError;
use crate::gateway::client::{merge_cookies, session_auth};
use crate::gateway::{retcode, GatewayClient, GatewayMethod, GatewayReply, GatewayRequest, SessionAuth, UpstreamError};
use crate::metrics::{LossReason, Metrics, SessionState, SigninResult};
pub use conference::ConfState;
pub use credentials::{AgentCredentials, CredentialStore};
use events::EventBuffer;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The gateway refused its Guid or sent `AgentOther_ShutdownService`.
    Lost(LossReason),
    /// Signed out: by the app, for idleness, or at shutdown.
    SignedOut,
}

/// One agent's gateway session.
pub struct Session {
    pub agent_id: String,
    /// Guid and cookies; swapped whole on rotation so readers never lock.
    auth: ArcSwap<SessionAuth>,
    /// Guid and raw cookie pairs, to detect changes and merge new `Set-Cookie`s by name.
    /// A plain mutex, never held across an await.
    raw: Mutex<(String, Vec<String>)>,
    conf: watch::Sender<ConfState>,
    ended: watch::Sender<Option<Ended>>,
    pub events: EventBuffer,
    /// The gateway's sign-in answer (its body carries no secret), for the reverse-proxy face.
    pub signin_reply: Bytes,
    /// The reverse-proxy face's `agentevent` position: the gateway has one queue per agent,
    /// and integrators polling through ccgate drain ccgate's copy of it the same way.
    pub face_cursor: AtomicU64,
    /// Milliseconds since `born` of the app's last request.
    last_activity: AtomicU64,
    born: Instant,
    poller: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few assignments that cannot leave data half-written,
    // so a poisoned lock (a panic elsewhere while holding it) is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// The credentials to present on the next gateway call.
    pub fn auth(&self) -> Arc<SessionAuth> {
        self.auth.load_full()
    }

    pub fn conf(&self) -> ConfState {
        *self.conf.borrow()
    }

    pub fn set_conf(&self, s: ConfState) {
        self.conf.send_replace(s);
    }

    pub fn watch_conf(&self) -> watch::Receiver<ConfState> {
        self.conf.subscribe()
    }

    pub fn is_lost(&self) -> bool {
        matches!(*self.ended.borrow(), Some(Ended::Lost(_)))
    }

    pub fn ended(&self) -> Option<Ended> {
        *self.ended.borrow()
    }

    /// Resolves when the session ends, with why.
    pub async fn wait_ended(&self) -> Ended {
        let mut rx = self.ended.subscribe();
        let ended = match rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        ended.unwrap_or(Ended::SignedOut)
    }

    /// Records app activity (idle sign-out counts from the last one).
    pub fn touch(&self) {
        let since = Instant::now().saturating_duration_since(self.born).as_millis() as u64;
        self.last_activity.fetch_max(since, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.born + Duration::from_millis(self.last_activity.load(Ordering::Relaxed))
    }

    /// Takes a new Guid and cookies from any gateway answer. Every `Set-GUID` counts, in static
    /// and dynamic mode alike, so no setting is needed.
    pub fn absorb(&self, reply: &GatewayReply) {
        if reply.set_guid.is_none() && reply.cookies.is_empty() {
            return;
        }
        let mut raw = lock(&self.raw);
        let (guid, cookies) = &mut *raw;
        let mut changed = false;
        if let Some(new) = &reply.set_guid {
            if new != guid {
                *guid = new.clone();
                changed = true;
                self.metrics.count_guid_rotation();
            }
        }
        if !reply.cookies.is_empty() {
            let merged = merge_cookies(cookies, &reply.cookies);
            if merged != *cookies {
                *cookies = merged;
                changed = true;
            }
        }
        if changed {
            match session_auth(guid, cookies) {
                Some(a) => self.auth.store(Arc::new(a)),
                None => {
                    tracing::warn!(agent = %self.agent_id, "gateway sent a Guid or cookie that is not a valid header value; kept the old one")
                }
            }
        }
    }

    /// Calls the gateway as this session: its agent, its current Guid and cookies.
    pub async fn call(
        &self,
        client: &GatewayClient,
        method: GatewayMethod,
        body: Option<Bytes>,
    ) -> Result<GatewayReply, UpstreamError> {
        let auth = self.auth();
        client.call(GatewayRequest { method, agent: &self.agent_id, auth: Some(&auth), body, timeout: None }).await
    }

    /// Takes a Guid the gateway returned in a body (`updateGuid`).
    pub fn set_guid(&self, guid: &str) {
        let cookies = lock(&self.raw).1.clone();
        self.absorb(&GatewayReply {
            envelope: crate::gateway::Envelope {
                message: String::new(),
                retcode: "0".into(),
                result: None,
                event: None,
            },
            set_guid: Some(guid.to_owned()),
            cookies,
            body: Bytes::new(),
        });
    }

    /// Ends the session once; later calls change nothing. Returns whether this call did it.
    /// The one place the `sessions` gauge leaves `active` (and enters `lost`).
    fn end(&self, why: Ended) -> bool {
        let mut first = false;
        self.ended.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                first = true;
            }
            first
        });
        if first {
            self.stop_poller();
            self.metrics.sessions_gauge(SessionState::Active).dec();
            if matches!(why, Ended::Lost(_)) {
                self.metrics.sessions_gauge(SessionState::Lost).inc();
            }
        }
        first
    }

    /// Marks the session lost (the gateway refused its Guid or ended it) and stops polling.
    pub fn mark_lost(&self, reason: LossReason) -> bool {
        if !self.end(Ended::Lost(reason)) {
            return false;
        }
        tracing::warn!(agent = %self.agent_id, reason = reason.as_str(), "gateway session lost");
        self.metrics.count_session_loss(reason);
        true
    }

    fn stop_poller(&self) {
        if let Some(h) = lock(&self.poller).take() {
            h.abort();
        }
    }

    /// Checks a gateway answer: absorbs Guid/cookies, marks the session lost on a refused
    /// Guid, and turns a refusal into the fitting error. A refused Guid is never retried.
    pub fn check(&self, reply: &GatewayReply) -> Result<(), ProxyError> {
        self.absorb(reply);
        let env = &reply.envelope;
        if env.is_success() {
            return Ok(());
        }
        if retcode::session_gone(&env.retcode) {
            self.mark_lost(LossReason::GuidRefused);
            return Err(ProxyError::SessionLost);
        }
        Err(ProxyError::from_gateway(env))
    }

    /// The state shown to the app.
    pub fn view(&self) -> Value {
        let conf = self.conf();
        json!({
            "agentId": self.agent_id,
            "signedIn": self.ended().is_none(),
            "conference": conf,
            "confId": conf.conf_id(),
            "chairperson": match conf {
                ConfState::Chair { .. } => json!(true),
                ConfState::Unknown => Value::Null,
                _ => json!(false),
            },
        })
    }
}

/// What a sign-out answers when the session had already ended (nothing left to tell the
/// gateway): the gateway's own success envelope.
const SIGNED_OUT_ALREADY: &[u8] = br#"{"message":"success","retcode":"0","result":{}}"#;

/// The outcome of one sign-in, shared by everyone who waited for it.
type Flight = watch::Receiver<Option<Result<(Arc<Session>, bool), ProxyError>>>;

/// Per-agent slot. `op` makes sign-in and sign-out mutually exclusive; `flight` lets
/// concurrent callers join the sign-in in progress instead of starting their own.
#[derive(Default)]
struct Slot {
    op: tokio::sync::Mutex<()>,
    session: ArcSwapOption<Session>,
    flight: Mutex<Option<Flight>>,
}

#[derive(Debug, Default, Clone)]
pub struct SignInOptions {
    /// Use forcelogin: take the session over from wherever the agent is signed in.
    pub force: bool,
    /// Override the softphone number from the credentials store.
    pub phonenum: Option<String>,
    /// Initial agent state: 3 busy, 4 idle, 5 wrap-up.
    pub status: Option<u8>,
    /// The complete sign-in body from the caller (the reverse-proxy face, where integrators
    /// send password and phonenum as they would to the gateway). When set, the credentials
    /// store is not consulted. Never logged.
    pub body: Option<Bytes>,
}

pub struct SessionStore {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    client: GatewayClient,
    creds: CredentialStore,
    cfg: SessionsConfig,
    metrics: Metrics,
    event_ids: Arc<AtomicU64>,
    me: Weak<SessionStore>,
}

impl SessionStore {
    pub fn new(client: GatewayClient, creds: CredentialStore, cfg: SessionsConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            slots: Mutex::new(HashMap::new()),
            client,
            creds,
            cfg,
            metrics,
            event_ids: Arc::new(AtomicU64::new(0)),
            me: me.clone(),
        })
    }

    fn slot(&self, agent: &str) -> Arc<Slot> {
        lock(&self.slots).entry(agent.to_owned()).or_default().clone()
    }

    fn existing_slot(&self, agent: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(agent).cloned()
    }

    /// The agent's live session, or why there is none. A lost session keeps answering
    /// `SessionLost` ("sign in again") until the app signs in again or signs out.
    pub fn active(&self, agent: &str) -> Result<Arc<Session>, ProxyError> {
        let slot = self.existing_slot(agent).ok_or(ProxyError::NoSession)?;
        let session = slot.session.load_full().ok_or(ProxyError::NoSession)?;
        match session.ended() {
            None => Ok(session),
            Some(Ended::Lost(_)) => Err(ProxyError::SessionLost),
            Some(Ended::SignedOut) => Err(ProxyError::NoSession),
        }
    }

    /// Removes `session` from `slot` if it is still there. Returns whether it was. The one
    /// place a lost session leaves the `lost` gauge: whoever removes it.
    fn forget(&self, slot: &Slot, session: &Arc<Session>) -> bool {
        let prev = slot.session.compare_and_swap(&Some(session.clone()), None::<Arc<Session>>);
        let removed = prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, session));
        if removed && session.is_lost() {
            self.metrics.sessions_gauge(SessionState::Lost).dec();
        }
        removed
    }

    /// Signs the agent in, or returns its live session. Returns `(session, created)`.
    /// Concurrent callers for one agent share one sign-in and its result, success or failure.
    /// The sign-in runs in its own task, so a caller that gives up does not abandon it.
    pub async fn sign_in(&self, agent: &str, opts: SignInOptions) -> Result<(Arc<Session>, bool), ProxyError> {
        let slot = self.slot(agent);
        if let Some(s) = slot.session.load_full() {
            if s.ended().is_none() {
                return Ok((s, false));
            }
        }
        let (mut rx, led) = {
            let mut flight = lock(&slot.flight);
            match &*flight {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *flight = Some(rx.clone());
                    let store =
                        self.me.upgrade().ok_or_else(|| ProxyError::Internal("session store dropped".into()))?;
                    let (agent, slot) = (agent.to_owned(), slot.clone());
                    tokio::spawn(async move {
                        let result = store.lead_sign_in(&agent, &slot, opts).await;
                        *lock(&slot.flight) = None;
                        tx.send_replace(Some(result));
                    });
                    (rx, true)
                }
            }
        };
        let waited = Instant::now();
        let shared = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ProxyError::Internal("sign-in task ended without a result".into()))?
            .clone();
        // The sign-in ran in its own task; the time this request waited on it is gateway time.
        let _ = crate::gateway::client::UPSTREAM_TIME.try_with(|t| t.set(t.get() + waited.elapsed()));
        match shared {
            Some(Ok((s, created))) => Ok((s, created && led)),
            Some(Err(e)) => Err(e),
            None => Err(ProxyError::Internal("sign-in result missing".into())),
        }
    }

    async fn lead_sign_in(
        &self,
        agent: &str,
        slot: &Slot,
        opts: SignInOptions,
    ) -> Result<(Arc<Session>, bool), ProxyError> {
        let _op = slot.op.lock().await;
        if let Some(s) = slot.session.load_full() {
            match s.ended() {
                None => return Ok((s, false)),
                Some(_) => {
                    self.forget(slot, &s);
                }
            }
        }
        let body = match opts.body.clone() {
            Some(b) => b,
            None => {
                let Some(creds) = self.creds.get(agent) else {
                    self.metrics.count_signin(SigninResult::NoCredentials);
                    return Err(ProxyError::NoCredentials);
                };
                let mut body = json!({
                    "password": creds.password.expose(),
                    "phonenum": opts.phonenum.as_deref().unwrap_or(&creds.phonenum),
                });
                if let Some(status) = opts.status {
                    body["status"] = json!(status);
                }
                Bytes::from(body.to_string())
            }
        };
        let method = if opts.force { GatewayMethod::ForceLogin } else { GatewayMethod::Login };
        let request = GatewayRequest { method, agent, auth: None, body: Some(body), timeout: None };
        let reply = match self.client.call(request).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count_signin(SigninResult::UpstreamError);
                return Err(e.into());
            }
        };
        let env = &reply.envelope;
        if !env.is_success() {
            let already = env.retcode == retcode::ALREADY_SIGNED_IN;
            self.metrics.count_signin(if already { SigninResult::AlreadySignedIn } else { SigninResult::Rejected });
            return Err(if already { ProxyError::AlreadySignedIn } else { ProxyError::from_gateway(env) });
        }
        // A fresh sign-in starts with no conference; a takeover may inherit one whose events
        // ccgate never saw.
        let conf = if opts.force { ConfState::Unknown } else { ConfState::None };
        let session = reply
            .set_guid
            .as_deref()
            .and_then(|guid| self.new_session(agent, guid, reply.cookies.clone(), conf, reply.body.clone()))
            .ok_or_else(|| {
                self.metrics.count_signin(SigninResult::UpstreamError);
                ProxyError::Upstream(UpstreamError::Malformed("sign-in succeeded without a usable Set-GUID".into()))
            })?;
        let handle =
            tokio::spawn(poller::run(session.clone(), self.me.clone(), self.client.clone(), self.poller_settings()));
        *lock(&session.poller) = Some(handle);
        slot.session.store(Some(session.clone()));
        self.metrics.count_signin(SigninResult::Ok);
        self.metrics.sessions_gauge(SessionState::Active).inc();
        tracing::info!(agent, force = opts.force, "agent signed in");
        Ok((session, true))
    }

    fn new_session(
        &self,
        agent: &str,
        guid: &str,
        cookies: Vec<String>,
        conf: ConfState,
        signin_reply: Bytes,
    ) -> Option<Arc<Session>> {
        let auth = session_auth(guid, &cookies)?;
        let events = EventBuffer::new(self.event_ids.clone(), self.cfg.event_buffer);
        let face_cursor = AtomicU64::new(events.latest());
        Some(Arc::new(Session {
            signin_reply,
            face_cursor,
            agent_id: agent.to_owned(),
            auth: ArcSwap::from_pointee(auth),
            raw: Mutex::new((guid.to_owned(), cookies)),
            conf: watch::channel(conf).0,
            ended: watch::channel(None).0,
            events,
            last_activity: AtomicU64::new(0),
            born: Instant::now(),
            poller: Mutex::new(None),
            metrics: self.metrics.clone(),
        }))
    }

    /// Signs the agent out at the gateway and forgets the session. The local session ends
    /// even when the gateway cannot be told (it signs a silent agent out after MAXTIME); the
    /// error is still returned so the app knows.
    pub async fn sign_out(&self, agent: &str) -> Result<Bytes, ProxyError> {
        self.sign_out_with(agent, GatewayMethod::Logout).await
    }

    /// Signs out with `logout` or `forcelogout`; returns the gateway's answer.
    pub async fn sign_out_with(&self, agent: &str, method: GatewayMethod) -> Result<Bytes, ProxyError> {
        let slot = self.existing_slot(agent).ok_or(ProxyError::NoSession)?;
        let _op = slot.op.lock().await;
        let session = slot.session.load_full().ok_or(ProxyError::NoSession)?;
        self.sign_out_locked(&slot, &session, method).await
    }

    /// With the slot's op lock held: ends `session` at the gateway and locally. New requests
    /// see no session at once; the poller stops before the logout so no poll races it; the
    /// session counts as ended (`wait_ended`) only once the gateway was told.
    async fn sign_out_locked(
        &self,
        slot: &Slot,
        session: &Arc<Session>,
        method: GatewayMethod,
    ) -> Result<Bytes, ProxyError> {
        // Take it out of the slot first; a lost one leaves the `lost` gauge here.
        self.forget(slot, session);
        session.stop_poller();
        if session.ended().is_some() {
            return Ok(Bytes::from_static(SIGNED_OUT_ALREADY));
        }
        let auth = session.auth();
        let agent = session.agent_id.as_str();
        let request = GatewayRequest { method, agent, auth: Some(&auth), body: None, timeout: None };
        let result = match self.client.call(request).await {
            Err(e) => Err(e.into()),
            Ok(reply) => {
                let code = reply.envelope.retcode.as_str();
                // Already gone at the gateway: the goal is reached.
                if reply.envelope.is_success() || retcode::session_gone(code) || code == "100-008" {
                    tracing::info!(agent, "agent signed out");
                    Ok(reply.body)
                } else {
                    Err(ProxyError::from_gateway(&reply.envelope))
                }
            }
        };
        if !session.end(Ended::SignedOut) && session.is_lost() {
            // Lost while the logout was in flight, after it had left the slot.
            self.metrics.sessions_gauge(SessionState::Lost).dec();
        }
        result
    }

    /// Idle sign-out, started by the session's poller: only if `session` is still the
    /// agent's current one.
    async fn sign_out_idle(&self, session: Arc<Session>) {
        let Some(slot) = self.existing_slot(&session.agent_id) else { return };
        let _op = slot.op.lock().await;
        let current = slot.session.load_full();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &session)) {
            return;
        }
        tracing::info!(agent = %session.agent_id, "signing out an agent whose app has been idle");
        self.metrics.count_idle_signout();
        if let Err(e) = self.sign_out_locked(&slot, &session, GatewayMethod::Logout).await {
            tracing::warn!(agent = %session.agent_id, error = %e, "idle sign-out: the gateway was not told");
        }
    }

    /// Stops every poller and, if configured, signs every agent out (process shutdown).
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in &slots {
            if let Some(s) = slot.session.load_full() {
                s.stop_poller();
            }
        }
        if !self.cfg.sign_out_on_shutdown {
            return;
        }
        let mut tasks = Vec::new();
        for slot in slots {
            let Some(me) = self.me.upgrade() else { return };
            tasks.push(tokio::spawn(async move {
                let _op = slot.op.lock().await;
                if let Some(s) = slot.session.load_full() {
                    if let Err(e) = me.sign_out_locked(&slot, &s, GatewayMethod::Logout).await {
                        tracing::warn!(agent = %s.agent_id, error = %e, "sign-out at shutdown failed");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    pub fn settings(&self) -> &SessionsConfig {
        &self.cfg
    }

    fn poller_settings(&self) -> poller::Settings {
        poller::Settings {
            timeout: ms(self.cfg.poll_timeout_ms),
            pause: ms(self.cfg.poll_pause_ms),
            backoff: ms(self.cfg.poll_backoff_ms),
            backoff_max: ms(self.cfg.poll_backoff_max_ms).max(Duration::from_millis(1)),
            idle: (self.cfg.idle_timeout_ms > 0).then(|| ms(self.cfg.idle_timeout_ms)),
        }
    }
}
