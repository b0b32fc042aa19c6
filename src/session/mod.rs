//! Agent gateway sessions: the store, sign-in/sign-out (one at a time per agent), the Guid and
//! cookies, the conference state, and the poller that keeps it all current.

pub mod conference;
pub mod credentials;
mod poller;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ms, SessionsConfig};
use crate::error::ProxyError;
use crate::gateway::client::{merge_cookies, session_auth};
use crate::gateway::{retcode, Envelope, GatewayClient, GatewayMethod, GatewayReply, GatewayRequest, SessionAuth};
use crate::metrics::{LossReason, Metrics, SessionState, SigninResult};
pub use conference::ConfState;
pub use credentials::{AgentCredentials, CredentialStore};

/// One agent's gateway session.
pub struct Session {
    pub agent_id: String,
    /// Guid and cookies; swapped whole on rotation so readers never lock.
    auth: ArcSwap<SessionAuth>,
    /// Raw cookie pairs, to merge new `Set-Cookie`s by name (rare; guarded by a plain mutex
    /// never held across an await).
    cookies: Mutex<Vec<String>>,
    guid: Mutex<String>,
    conf: watch::Sender<ConfState>,
    lost: AtomicBool,
    poller: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
}

impl Session {
    fn new(agent_id: String, guid: String, cookies: Vec<String>, conf: ConfState, metrics: Metrics) -> Option<Self> {
        let auth = session_auth(&guid, &cookies)?;
        Some(Self {
            agent_id,
            auth: ArcSwap::from_pointee(auth),
            cookies: Mutex::new(cookies),
            guid: Mutex::new(guid),
            conf: watch::channel(conf).0,
            lost: AtomicBool::new(false),
            poller: Mutex::new(None),
            metrics,
        })
    }

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
        self.lost.load(Ordering::Acquire)
    }

    /// Takes a new Guid and cookies from any gateway answer. Every `Set-GUID` counts, in static
    /// and dynamic mode alike, so no setting is needed.
    pub fn absorb(&self, reply: &GatewayReply) {
        if reply.set_guid.is_none() && reply.cookies.is_empty() {
            return;
        }
        let mut guid = lock(&self.guid);
        let mut cookies = lock(&self.cookies);
        let mut changed = false;
        if let Some(new) = &reply.set_guid {
            if *new != *guid {
                *guid = new.clone();
                changed = true;
                self.metrics.count_guid_rotation();
            }
        }
        if !reply.cookies.is_empty() {
            let merged = merge_cookies(&cookies, &reply.cookies);
            if merged != *cookies {
                *cookies = merged;
                changed = true;
            }
        }
        if changed {
            match session_auth(&guid, &cookies) {
                Some(a) => self.auth.store(Arc::new(a)),
                None => {
                    tracing::warn!(agent = %self.agent_id, "gateway sent a Guid or cookie that is not a valid header value; kept the old one")
                }
            }
        }
    }

    /// Marks the session lost (the gateway refused its Guid or ended it) and stops polling.
    /// Returns whether this call did it (only the first one counts).
    pub fn mark_lost(&self, reason: LossReason) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::warn!(agent = %self.agent_id, reason = reason.as_str(), "gateway session lost");
        self.metrics.count_session_loss(reason);
        self.metrics.sessions_gauge(SessionState::Active).dec();
        self.metrics.sessions_gauge(SessionState::Lost).inc();
        self.stop_poller();
        true
    }

    fn stop_poller(&self) {
        if let Some(h) = lock(&self.poller).take() {
            h.abort();
        }
    }

    /// Checks a gateway answer: absorbs Guid/cookies, marks the session lost on a refused
    /// Guid, and turns a refusal into the fitting error.
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
            "signedIn": !self.is_lost(),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections cannot leave the data
    // half-written (each is a single assignment), so poisoning is safe to ignore.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-agent slot: the operation lock makes sign-in and sign-out single-flight.
#[derive(Default)]
struct Slot {
    op: tokio::sync::Mutex<()>,
    session: ArcSwapOption<Session>,
}

#[derive(Debug, Default, Clone)]
pub struct SignInOptions {
    /// Use forcelogin: take the session over from wherever the agent is signed in.
    pub force: bool,
    /// Override the softphone number from the credentials store.
    pub phonenum: Option<String>,
    /// Initial agent state: 3 busy, 4 idle, 5 wrap-up.
    pub status: Option<u8>,
}

pub struct SessionStore {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    client: GatewayClient,
    creds: CredentialStore,
    cfg: SessionsConfig,
    metrics: Metrics,
}

impl SessionStore {
    pub fn new(client: GatewayClient, creds: CredentialStore, cfg: SessionsConfig, metrics: Metrics) -> Self {
        Self { slots: Mutex::new(HashMap::new()), client, creds, cfg, metrics }
    }

    fn slot(&self, agent: &str) -> Arc<Slot> {
        lock(&self.slots).entry(agent.to_owned()).or_default().clone()
    }

    fn existing_slot(&self, agent: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(agent).cloned()
    }

    /// The agent's live session, or why there is none. A lost session is reported once as
    /// `SessionLost` and then forgotten, so the next sign-in starts clean.
    pub fn active(&self, agent: &str) -> Result<Arc<Session>, ProxyError> {
        let slot = self.existing_slot(agent).ok_or(ProxyError::NoSession)?;
        let session = slot.session.load_full().ok_or(ProxyError::NoSession)?;
        if session.is_lost() {
            if slot.session.compare_and_swap(&Some(session.clone()), None).is_some() {
                self.metrics.sessions_gauge(SessionState::Lost).dec();
            }
            return Err(ProxyError::SessionLost);
        }
        Ok(session)
    }

    /// Signs the agent in, or returns its existing session. Returns `(session, created)`.
    /// Concurrent callers for one agent wait for the one sign-in in flight and share it.
    pub async fn sign_in(
        self: &Arc<Self>,
        agent: &str,
        opts: SignInOptions,
    ) -> Result<(Arc<Session>, bool), ProxyError> {
        let slot = self.slot(agent);
        let _op = slot.op.lock().await;
        if let Some(s) = slot.session.load_full() {
            if !s.is_lost() {
                return Ok((s, false));
            }
            slot.session.store(None);
            self.metrics.sessions_gauge(SessionState::Lost).dec();
        }
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
        let method = if opts.force { GatewayMethod::ForceLogin } else { GatewayMethod::Login };
        let reply = match self
            .client
            .call(GatewayRequest {
                method,
                agent,
                auth: None,
                body: Some(Bytes::from(body.to_string())),
                timeout: None,
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count_signin(SigninResult::UpstreamError);
                return Err(e.into());
            }
        };
        let env: &Envelope = &reply.envelope;
        if !env.is_success() {
            self.metrics.count_signin(match env.retcode.as_str() {
                retcode::ALREADY_SIGNED_IN => SigninResult::AlreadySignedIn,
                _ => SigninResult::Rejected,
            });
            return Err(match env.retcode.as_str() {
                retcode::ALREADY_SIGNED_IN => ProxyError::AlreadySignedIn,
                _ => ProxyError::from_gateway(env),
            });
        }
        let Some(guid) = reply.set_guid.clone() else {
            self.metrics.count_signin(SigninResult::UpstreamError);
            return Err(ProxyError::Upstream(crate::gateway::UpstreamError::Malformed(
                "sign-in succeeded without a Set-GUID header".into(),
            )));
        };
        // A fresh sign-in starts with no conference; a takeover may have inherited one whose
        // events ccgate never saw.
        let conf = if opts.force { ConfState::Unknown } else { ConfState::None };
        let session = Session::new(agent.to_owned(), guid, reply.cookies.clone(), conf, self.metrics.clone())
            .map(Arc::new)
            .ok_or_else(|| {
                ProxyError::Upstream(crate::gateway::UpstreamError::Malformed(
                    "Guid is not a valid header value".into(),
                ))
            })?;
        let handle = tokio::spawn(poller::run(session.clone(), self.client.clone(), self.poller_settings()));
        *lock(&session.poller) = Some(handle);
        slot.session.store(Some(session.clone()));
        self.metrics.count_signin(SigninResult::Ok);
        self.metrics.sessions_gauge(SessionState::Active).inc();
        tracing::info!(agent, force = opts.force, "agent signed in");
        Ok((session, true))
    }

    /// Signs the agent out at the gateway and forgets the session. The local session ends
    /// even when the gateway cannot be told (it signs the silent agent out after MAXTIME);
    /// the error is still returned so the app knows.
    pub async fn sign_out(&self, agent: &str) -> Result<(), ProxyError> {
        let slot = self.existing_slot(agent).ok_or(ProxyError::NoSession)?;
        let _op = slot.op.lock().await;
        let session = slot.session.swap(None).ok_or(ProxyError::NoSession)?;
        session.stop_poller();
        if session.is_lost() {
            self.metrics.sessions_gauge(SessionState::Lost).dec();
            return Ok(());
        }
        self.metrics.sessions_gauge(SessionState::Active).dec();
        let auth = session.auth();
        let reply = self
            .client
            .call(GatewayRequest { method: GatewayMethod::Logout, agent, auth: Some(&auth), body: None, timeout: None })
            .await?;
        let code = reply.envelope.retcode.as_str();
        // Already gone at the gateway: the goal is reached.
        if reply.envelope.is_success() || retcode::session_gone(code) || code == "100-008" {
            tracing::info!(agent, "agent signed out");
            Ok(())
        } else {
            Err(ProxyError::from_gateway(&reply.envelope))
        }
    }

    /// Stops every poller (process shutdown).
    pub fn stop_all(&self) {
        for slot in lock(&self.slots).values() {
            if let Some(s) = slot.session.load_full() {
                s.stop_poller();
            }
        }
    }

    pub fn client(&self) -> &GatewayClient {
        &self.client
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
        }
    }
}
