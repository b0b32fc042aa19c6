//! The session store: sign-in (single-flight per agent), sign-out, idle sign-out and sign-out
//! at shutdown. Sign-in and sign-out of one agent never overlap: the gateway refuses that
//! (`100-021`, `000-007`).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::EventBuffer;
use super::{lock, poller, ConfState, CredentialStore, Ended, Session, SessionError};
use crate::config::{ms, SessionsConfig};
use crate::gateway::client::session_auth;
use crate::gateway::{
    timing, Envelope, Gateway, GatewayMethod, GatewayRefusal, GatewayReply, GatewayRequest, Retcode, UpstreamError,
};
use crate::metrics::{Metrics, SessionState, SigninResult};

/// The outcome of one sign-in, shared by everyone who waited for it.
type Flight = watch::Receiver<Option<Result<(Arc<Session>, bool), SessionError>>>;

/// Per-agent slot. `op` makes sign-in and sign-out mutually exclusive; `flight` lets
/// concurrent callers join the sign-in in progress instead of starting their own.
#[derive(Default)]
struct Slot {
    op: tokio::sync::Mutex<()>,
    session: ArcSwapOption<Session>,
    flight: Mutex<Option<Flight>>,
}

#[derive(Default, Clone)]
pub struct SignInOptions {
    /// Use forcelogin: take the session over from wherever the agent is signed in.
    pub force: bool,
    /// Override the softphone number from the credentials store.
    pub phonenum: Option<String>,
    /// Initial agent state: 3 busy, 4 idle, 5 wrap-up.
    pub status: Option<u8>,
    /// The complete sign-in body from the caller (the pass-through face, where integrators
    /// send password and phonenum as they would to the gateway). When set, the credentials
    /// store is not consulted. Never logged.
    pub body: Option<Bytes>,
}

impl std::fmt::Debug for SignInOptions {
    /// Without the body: it holds the agent's CTI password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInOptions")
            .field("force", &self.force)
            .field("phonenum", &self.phonenum)
            .field("status", &self.status)
            .field("body", &self.body.as_ref().map(|_| "***"))
            .finish()
    }
}

pub struct SessionStore {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    gateway: Arc<dyn Gateway>,
    creds: CredentialStore,
    cfg: SessionsConfig,
    metrics: Metrics,
    event_ids: Arc<AtomicU64>,
    me: Weak<SessionStore>,
}

impl SessionStore {
    pub fn new(gateway: Arc<dyn Gateway>, creds: CredentialStore, cfg: SessionsConfig, metrics: Metrics) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            slots: Mutex::new(HashMap::new()),
            gateway,
            creds,
            cfg,
            metrics,
            event_ids: Arc::new(AtomicU64::new(0)),
            me: me.clone(),
        })
    }

    pub fn settings(&self) -> &SessionsConfig {
        &self.cfg
    }

    fn slot(&self, agent: &str) -> Arc<Slot> {
        lock(&self.slots).entry(agent.to_owned()).or_default().clone()
    }

    fn existing_slot(&self, agent: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(agent).cloned()
    }

    /// The agent's live session, or why there is none. A lost session keeps answering
    /// `Lost` ("sign in again") until the app signs in again or signs out.
    pub fn active(&self, agent: &str) -> Result<Arc<Session>, SessionError> {
        let session = self.current(agent).ok_or(SessionError::NoSession)?;
        match session.ended() {
            None => Ok(session),
            Some(Ended::Lost(_)) => Err(SessionError::Lost),
            Some(Ended::SignedOut) => Err(SessionError::NoSession),
        }
    }

    /// The agent's session as the store holds it, live or lost.
    pub fn current(&self, agent: &str) -> Option<Arc<Session>> {
        self.existing_slot(agent)?.session.load_full()
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
    pub async fn sign_in(&self, agent: &str, opts: SignInOptions) -> Result<(Arc<Session>, bool), SessionError> {
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
                    let store = self.me.upgrade().ok_or(SessionError::Internal("session store dropped"))?;
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
            .map_err(|_| SessionError::Internal("sign-in task ended without a result"))?
            .clone();
        // The sign-in ran in its own task; the time this request waited on it is gateway time.
        timing::add(waited.elapsed());
        match shared {
            Some(Ok((s, created))) => Ok((s, created && led)),
            Some(Err(e)) => Err(e),
            None => Err(SessionError::Internal("sign-in result missing")),
        }
    }

    async fn lead_sign_in(
        &self,
        agent: &str,
        slot: &Slot,
        opts: SignInOptions,
    ) -> Result<(Arc<Session>, bool), SessionError> {
        let _op = slot.op.lock().await;
        if let Some(s) = slot.session.load_full() {
            match s.ended() {
                None => return Ok((s, false)),
                Some(_) => {
                    self.forget(slot, &s);
                }
            }
        }
        let resumable = opts.body.is_none();
        let body = match opts.body.clone() {
            Some(b) => b,
            None => {
                let Some(creds) = self.creds.get(agent) else {
                    self.metrics.count_signin(SigninResult::NoCredentials);
                    return Err(SessionError::NoCredentials);
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
        let reply = match self.gateway.call(request).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count_signin(SigninResult::UpstreamError);
                return Err(e.into());
            }
        };
        if !reply.envelope.is_success() {
            let already = reply.envelope.code() == Retcode::AlreadySignedIn;
            self.metrics.count_signin(if already { SigninResult::AlreadySignedIn } else { SigninResult::Rejected });
            let refusal = GatewayRefusal::from(&reply);
            return Err(if already {
                SessionError::AlreadySignedIn(Some(refusal))
            } else {
                SessionError::Refused(refusal)
            });
        }
        // A fresh sign-in starts with no conference; a takeover may inherit one whose events
        // ccgate never saw.
        let conf = if opts.force { ConfState::Unknown } else { ConfState::None };
        let Some(session) = self.new_session(agent, &reply, conf, resumable) else {
            self.metrics.count_signin(SigninResult::UpstreamError);
            return Err(UpstreamError::Malformed("sign-in succeeded without a usable Set-GUID".into()).into());
        };
        let handle = tokio::spawn(poller::run(session.clone(), self.me.clone(), self.poller_settings()));
        *lock(&session.poller) = Some(handle);
        slot.session.store(Some(session.clone()));
        self.metrics.count_signin(SigninResult::Ok);
        self.metrics.sessions_gauge(SessionState::Active).inc();
        tracing::info!(agent, force = opts.force, "agent signed in");
        Ok((session, true))
    }

    fn new_session(&self, agent: &str, reply: &GatewayReply, conf: ConfState, resumable: bool) -> Option<Arc<Session>> {
        let guid = reply.set_guid.as_deref()?;
        let auth = session_auth(guid, &reply.cookies)?;
        Some(Arc::new(Session {
            agent_id: agent.to_owned(),
            auth: ArcSwap::from_pointee(auth),
            raw: Mutex::new((guid.to_owned(), reply.cookies.clone())),
            conf: watch::channel(conf).0,
            ended: watch::channel(None).0,
            events: EventBuffer::new(self.event_ids.clone(), self.cfg.event_buffer),
            gateway: self.gateway.clone(),
            login_answer: reply.body.clone(),
            resumable,
            last_activity: AtomicU64::new(0),
            born: Instant::now(),
            poller: Mutex::new(None),
            metrics: self.metrics.clone(),
        }))
    }

    /// Signs out with `logout` or `forcelogout`; returns the gateway's answer. The local
    /// session ends even when the gateway cannot be told (it signs a silent agent out after
    /// MAXTIME); the error is still returned so the app knows.
    pub async fn sign_out(&self, agent: &str, method: GatewayMethod) -> Result<Bytes, SessionError> {
        let slot = self.existing_slot(agent).ok_or(SessionError::NoSession)?;
        let _op = slot.op.lock().await;
        let session = slot.session.load_full().ok_or(SessionError::NoSession)?;
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
    ) -> Result<Bytes, SessionError> {
        // Take it out of the slot first; a lost one leaves the `lost` gauge here.
        self.forget(slot, session);
        session.stop_poller();
        if session.ended().is_some() {
            // Nothing left to tell the gateway: answer as it answers a sign-out.
            return Ok(Envelope::ok("success", json!({})).to_bytes());
        }
        // Not `call`: a "not signed in" answer here means the goal is reached, not a loss.
        let result = match session.exchange(method, None, None, false).await {
            Err(e) => Err(e.into()),
            Ok(reply) => {
                let code = reply.envelope.code();
                if reply.envelope.is_success() || code.session_gone() || code == Retcode::AlreadySignedOut {
                    tracing::info!(agent = %session.agent_id, "agent signed out");
                    Ok(reply.body)
                } else {
                    Err(SessionError::Refused(GatewayRefusal::from(&reply)))
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
    pub(super) async fn sign_out_idle(&self, session: Arc<Session>) {
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
