//! The session store: sign-in (single-flight per agent), sign-out, idle sign-out and sign-out
//! at shutdown. Sign-in and sign-out of one agent never overlap: the gateway refuses that
//! (`100-021`, `000-007`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::metrics::{Metrics, SessionState, SigninResult, SignoutTrigger};

/// The outcome of one sign-in, shared by everyone who waited for it.
type Flight = watch::Receiver<Option<Result<(Arc<Session>, bool), SessionError>>>;

/// Per-agent slot. `op` makes sign-in and sign-out mutually exclusive; `flight` lets
/// concurrent callers join the sign-in in progress instead of starting their own.
#[derive(Default)]
struct Slot {
    op: tokio::sync::Mutex<()>,
    session: ArcSwapOption<Session>,
    flight: Mutex<Option<Flight>>,
    /// The last sign-in went out but its answer never came back (timeout, broken
    /// connection): the gateway may hold a session for the agent that ccgate never saw.
    uncertain: AtomicBool,
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
        let mut force = opts.force;
        let ghost_possible = slot.uncertain.load(Ordering::Acquire);
        let mut reply = self.send_sign_in(agent, slot, force, body.clone()).await?;
        if !force && ghost_possible && reply.envelope.code() == Retcode::AlreadySignedIn {
            // Most likely the session our own unanswered sign-in created: take it over
            // rather than leave it signed in at the gateway with nobody holding its Guid.
            tracing::info!(agent, "taking over the session an unanswered sign-in left at the gateway");
            force = true;
            reply = self.send_sign_in(agent, slot, force, body).await?;
        }
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
        let conf = if force { ConfState::Unknown } else { ConfState::None };
        let Some(session) = self.new_session(agent, &reply, conf, resumable) else {
            self.metrics.count_signin(SigninResult::UpstreamError);
            return Err(UpstreamError::Malformed("sign-in succeeded without a usable Set-GUID".into()).into());
        };
        self.start_poller(&session);
        slot.session.store(Some(session.clone()));
        self.metrics.count_signin(SigninResult::Ok);
        self.metrics.sessions_gauge(SessionState::Active).inc();
        tracing::info!(agent, force, "agent signed in");
        Ok((session, true))
    }

    /// One sign-in request. Remembers whether its outcome is unknown: the request left but
    /// no answer came back, so the gateway may have signed the agent in.
    async fn send_sign_in(
        &self,
        agent: &str,
        slot: &Slot,
        force: bool,
        body: Bytes,
    ) -> Result<GatewayReply, SessionError> {
        let method = if force { GatewayMethod::ForceLogin } else { GatewayMethod::Login };
        let request = GatewayRequest { method, agent, auth: None, body: Some(body), timeout: None };
        match self.gateway.call(request).await {
            Ok(reply) => {
                slot.uncertain.store(false, Ordering::Release);
                Ok(reply)
            }
            Err(e) => {
                // A connection that was never made carried no request; anything later might
                // have reached the gateway.
                let unanswered = !matches!(e, UpstreamError::Unavailable(_));
                slot.uncertain.store(unanswered, Ordering::Release);
                self.metrics.count_signin(SigninResult::UpstreamError);
                Err(e.into())
            }
        }
    }

    fn start_poller(&self, session: &Arc<Session>) {
        let handle = tokio::spawn(poller::run(session.clone(), self.me.clone(), self.poller_settings()));
        if let Some(old) = lock(&session.poller).replace(handle) {
            old.abort();
        }
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
            idle_signout: AtomicBool::new(false),
            born: Instant::now(),
            poller: Mutex::new(None),
            metrics: self.metrics.clone(),
        }))
    }

    /// Signs out with `logout` or `forcelogout`; returns the gateway's answer. When the
    /// gateway cannot be told, the session stays as it was (still polled, still usable) and
    /// the error is returned, so the app can retry: an agent is never left signed in at the
    /// gateway with nobody holding its Guid.
    pub async fn sign_out(&self, agent: &str, method: GatewayMethod) -> Result<Bytes, SessionError> {
        let slot = self.existing_slot(agent).ok_or(SessionError::NoSession)?;
        let _op = slot.op.lock().await;
        let session = slot.session.load_full().ok_or(SessionError::NoSession)?;
        let result = self.sign_out_locked(&slot, &session, method).await;
        if let Err(e) = &result {
            tracing::warn!(agent, error = %e, "sign-out failed; the session stays");
            self.metrics.count_signout_failure(SignoutTrigger::App);
            self.resume_polling(&session);
        }
        result
    }

    /// With the slot's op lock held: tells the gateway, then ends `session` locally. The
    /// poller pauses for the logout so no poll races it; on failure nothing else changed and
    /// the caller decides whether polling resumes.
    async fn sign_out_locked(
        &self,
        slot: &Slot,
        session: &Arc<Session>,
        method: GatewayMethod,
    ) -> Result<Bytes, SessionError> {
        if session.ended().is_some() {
            // Lost already: nothing left to tell the gateway; answer as it answers a sign-out.
            self.forget(slot, session);
            return Ok(Envelope::ok("success", json!({})).to_bytes());
        }
        session.stop_poller();
        // Not `call`: a "not signed in" answer here means the goal is reached, not a loss.
        let reply = session.exchange(method, None, None, false).await?;
        let code = reply.envelope.code();
        if !(reply.envelope.is_success() || code.session_gone() || code == Retcode::AlreadySignedOut) {
            return Err(SessionError::Refused(GatewayRefusal::from(&reply)));
        }
        tracing::info!(agent = %session.agent_id, "agent signed out");
        // A session lost while the logout was in flight leaves the `lost` gauge in `forget`.
        self.forget(slot, session);
        session.end(Ended::SignedOut);
        Ok(reply.body)
    }

    /// After a failed sign-out: the session carries on as before, unless it ended meanwhile.
    fn resume_polling(&self, session: &Arc<Session>) {
        if session.ended().is_none() {
            self.start_poller(session);
        }
    }

    /// Idle sign-out, started by the session's poller (which keeps polling meanwhile). Retries
    /// with back-off until the gateway is told, the app comes back, or the session ends or is
    /// replaced: a silent app must not leave its agent taking calls.
    pub(super) async fn sign_out_idle(&self, session: Arc<Session>, idle: Duration) {
        let settings = self.poller_settings();
        let mut backoff = settings.backoff;
        let mut counted = false;
        loop {
            let Some(slot) = self.existing_slot(&session.agent_id) else { return };
            {
                let _op = slot.op.lock().await;
                let current = slot.session.load_full();
                if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &session)) || session.ended().is_some() {
                    return;
                }
                if Instant::now() < session.last_activity() + idle {
                    // The app came back while we retried.
                    session.idle_signout.store(false, Ordering::Release);
                    return;
                }
                if !counted {
                    tracing::info!(agent = %session.agent_id, "signing out an agent whose app has been idle");
                    self.metrics.count_idle_signout();
                    counted = true;
                }
                match self.sign_out_locked(&slot, &session, GatewayMethod::Logout).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(agent = %session.agent_id, error = %e, retry_ms = backoff.as_millis() as u64, "idle sign-out failed; retrying");
                        self.metrics.count_signout_failure(SignoutTrigger::Idle);
                        self.resume_polling(&session);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(settings.backoff_max);
        }
    }

    /// Stops every poller and, if configured, signs every agent out (process shutdown),
    /// retrying with back-off until `deadline`.
    pub async fn shutdown(&self, deadline: Instant) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in &slots {
            if let Some(s) = slot.session.load_full() {
                s.stop_poller();
            }
        }
        if !self.cfg.sign_out_on_shutdown {
            return;
        }
        let settings = self.poller_settings();
        let mut tasks = Vec::new();
        for slot in slots {
            let Some(me) = self.me.upgrade() else { return };
            tasks.push(tokio::spawn(async move {
                let _op = slot.op.lock().await;
                let Some(s) = slot.session.load_full() else { return };
                let mut backoff = settings.backoff;
                loop {
                    let Err(e) = me.sign_out_locked(&slot, &s, GatewayMethod::Logout).await else { return };
                    me.metrics.count_signout_failure(SignoutTrigger::Shutdown);
                    if Instant::now() + backoff >= deadline {
                        tracing::warn!(agent = %s.agent_id, error = %e, "sign-out at shutdown failed; out of time");
                        return;
                    }
                    tracing::warn!(agent = %s.agent_id, error = %e, "sign-out at shutdown failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(settings.backoff_max);
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
