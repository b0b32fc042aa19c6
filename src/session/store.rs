//! The session store: sign-in (single-flight per agent), sign-out, idle sign-out and sign-out
//! at shutdown. Sign-in and sign-out of one agent never overlap: the gateway refuses that
//! (`100-021`, `000-007`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::agent::Session;
use super::cluster::{Adopted, Claim, Host};
use super::conference::ConfState;
use super::credentials::CredentialStore;
use super::error::{Ended, SessionError};
use super::events::EventBuffer;
use super::history::{Activity, EndKind, History};
use super::pacing::{Pacer, SignInGate};
use super::poller::{self, Poller};
use super::replication::Replication;
use super::sharing::Sharing;
use crate::clock::unix_ms;
use crate::config::{ms, SessionsConfig, ShutdownMode};
use crate::gateway::wire::session_auth;
use crate::gateway::{
    timing, Envelope, Gateway, GatewayMethod, GatewayRefusal, GatewayReply, GatewayRequest, Retcode, UpstreamError,
};
use crate::labels::{SessionState, SigninResult, SignoutTrigger};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::shared::SharedStore;
use crate::sync::lock;

/// Agents one view lists at most: every agent of a full replica (`sessions.max_agents`'s
/// default), and a bound on what one admin request costs.
pub const MAX_AGENTS_LISTED: usize = 10_000;

/// The outcome of one sign-in, shared by everyone who waited for it.
type Flight = watch::Receiver<Option<Result<(Arc<Session>, bool), SessionError>>>;

/// Per-agent slot. `op` makes sign-in and sign-out mutually exclusive; `flight` lets
/// concurrent callers join the sign-in in progress instead of starting their own.
#[derive(Default)]
pub(super) struct Slot {
    op: tokio::sync::Mutex<()>,
    pub(super) session: ArcSwapOption<Session>,
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
    /// The tenant the signing-in token named (`auth.tenant_claim`): the session keeps it, for
    /// the webhooks' `tenants` scope. Set by the core from the principal.
    pub tenant: Option<Arc<str>>,
}

impl std::fmt::Debug for SignInOptions {
    /// Without the body: it holds the agent's CTI password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInOptions")
            .field("force", &self.force)
            .field("phonenum", &self.phonenum)
            .field("status", &self.status)
            .field("tenant", &self.tenant)
            .field("body", &self.body.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Which gateway a store's agents belong to.
#[derive(Debug, Clone)]
pub struct GatewayIdentity {
    /// Its name (`gateway` in logs, metrics and views).
    pub name: Arc<str>,
    /// Its own bound on agents (`max_agents` of its `[[gateways]]` entry; 0: only
    /// `sessions.max_agents`, which bounds every gateway's together).
    pub max_agents: usize,
    /// Agents the process's open-file limit leaves room for, every gateway's together, when
    /// fewer than `sessions.max_agents` (`descriptors.rs`); `None`: the limit holds them all.
    pub max_agents_by_files: Option<usize>,
}

impl Default for GatewayIdentity {
    fn default() -> Self {
        Self { name: crate::config::DEFAULT_GATEWAY_NAME.into(), max_agents: 0, max_agents_by_files: None }
    }
}

/// The agents of one gateway (contact centre): one store per configured gateway, each with
/// its own client, credentials and (with Redis) key namespace, so agent 1001 of two gateways
/// are two agents that share nothing.
pub struct SessionStore {
    /// Which gateway.
    pub identity: GatewayIdentity,
    /// Every task of this store's sessions runs in it, so their log lines name the gateway.
    span: tracing::Span,
    pub(super) slots: Mutex<HashMap<String, Arc<Slot>>>,
    gateway: Arc<dyn Gateway>,
    /// Swapped whole by a reload; sign-ins in flight keep the file they started with.
    creds: ArcSwap<CredentialStore>,
    cfg: SessionsConfig,
    metrics: Metrics,
    event_ids: Arc<AtomicU64>,
    me: Weak<SessionStore>,
    /// In process, or shared with other replicas (`store.backend`); chosen once, here.
    pub(super) replication: Replication,
    /// `sessions.signin_concurrency` / `signin_queue`.
    signin_gate: SignInGate,
    /// `sessions.repoll_rate`: every poller's retry after a failure waits its turn here.
    repoll: Pacer,
    /// The budget of the pollers' failure lines.
    poll_warnings: LogBudget,
    /// How this gateway's agents' sessions ended (`history.rs`).
    pub(super) history: Arc<History>,
    /// Where its agents' events go besides their buffers (the webhooks).
    pub(super) outlet: Arc<super::Outlet>,
}

impl SessionStore {
    /// Uses these credentials for sign-ins from now on (a reload). Sessions already signed in
    /// are not touched: the gateway knows them by Guid, not by password.
    pub fn replace_credentials(&self, creds: CredentialStore) {
        self.creds.store(Arc::new(creds));
    }

    /// The session store of one gateway: `metrics` and `shared` are that gateway's
    /// (`Metrics::gateway`, `Backend::for_gateway`). With `shared`, sessions are shared with
    /// other replicas: call [`SessionStore::start_replication`] once a runtime is up; without,
    /// they live in this process only.
    pub fn new(
        identity: GatewayIdentity,
        gateway: Arc<dyn Gateway>,
        creds: CredentialStore,
        cfg: SessionsConfig,
        metrics: Metrics,
        shared: Option<Arc<dyn SharedStore>>,
        on_shutdown: ShutdownMode,
    ) -> Arc<Self> {
        // Sign-in and sign-out wait this long for another replica's, and the cluster-wide
        // lock lives as long: beyond a poll's timeout, so beyond the gateway's.
        let op_wait = ms(cfg.poll_timeout_ms) + Duration::from_secs(1);
        let span = tracing::info_span!("gateway", gateway = &*identity.name);
        Arc::new_cyclic(|me| Self {
            identity,
            span,
            slots: Mutex::new(HashMap::new()),
            gateway,
            creds: ArcSwap::from_pointee(creds),
            metrics: metrics.clone(),
            event_ids: Arc::new(AtomicU64::new(0)),
            me: me.clone(),
            replication: Replication::new(shared, op_wait, on_shutdown),
            signin_gate: SignInGate::new(cfg.signin_concurrency, cfg.signin_queue),
            repoll: Pacer::new(cfg.repoll_rate),
            poll_warnings: LogBudget::default(),
            history: History::new(metrics.clone()),
            outlet: Arc::default(),
            cfg,
        })
    }

    /// Hands this gateway's events to `sink` as well (the webhooks); once, at start.
    pub fn connect_outlet(&self, sink: Arc<dyn super::EventSink>) {
        self.outlet.connect(sink);
    }

    /// Follows the other replicas (with the shared store), for the process's life.
    pub fn start_replication(self: &Arc<Self>) {
        let _in = self.span.enter();
        if let Some(store) = self.replication.shared_store() {
            self.history.journal_to(store);
        }
        self.replication.start(Arc::downgrade(self));
    }

    /// The agent's live session from any replica: the local copy, else (with the shared
    /// store) the record another replica made, adopted as a local copy.
    pub async fn lookup(&self, agent: &str) -> Result<Arc<Session>, SessionError> {
        self.replication.lookup(self, agent).await
    }

    fn slot(&self, agent: &str) -> Arc<Slot> {
        lock(&self.slots).entry(agent.to_owned()).or_default().clone()
    }

    pub(super) fn existing_slot(&self, agent: &str) -> Option<Arc<Slot>> {
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
        if removed {
            self.forget_lost_gauge(session);
        }
        removed
    }

    fn forget_lost_gauge(&self, session: &Session) {
        if session.is_lost() {
            self.metrics.sessions_gauge(SessionState::Lost).dec();
        }
    }

    /// [`Self::may_sign_in`] from what this replica holds alone: a body, credentials, or a
    /// live session here.
    pub fn may_sign_in_here(&self, agent: &str, opts: &SignInOptions) -> bool {
        opts.body.is_some() || self.creds.load().get(agent).is_some() || self.active(agent).is_ok()
    }

    /// `sessions.max_streams_per_agent`.
    pub fn max_streams_per_agent(&self) -> usize {
        self.cfg.max_streams_per_agent
    }

    /// Whether a sign-in of `agent` with `opts` can be attempted at all: the caller sent the
    /// body, the credentials file knows the agent, or it has a live session (here or, with
    /// the shared store, on another replica). The core asks before spending shared rate-limit
    /// buckets; `sign_in` itself refuses the same way.
    pub async fn may_sign_in(&self, agent: &str, opts: &SignInOptions) -> Result<(), SessionError> {
        if self.may_sign_in_here(agent, opts) || self.lookup(agent).await.is_ok() {
            return Ok(());
        }
        self.metrics.count_signin(SigninResult::NoCredentials);
        self.record_failed_sign_in(agent, &SessionError::NoCredentials);
        Err(SessionError::NoCredentials)
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
                    let span = self.span.clone();
                    tokio::spawn(
                        async move {
                            let result = store.lead_sign_in(&agent, &slot, opts).await;
                            *lock(&slot.flight) = None;
                            tx.send_replace(Some(result));
                        }
                        .instrument(span),
                    );
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
        let lock = match self.replication.claim(self, agent, opts.force).await? {
            Claim::Adopted(s) => return Ok((s, false)),
            Claim::Granted(lock) => lock,
        };
        let result = async {
            let tenant = opts.tenant.clone();
            let (reply, conf, resumable) = self.sign_in_at_gateway(agent, slot, opts).await?;
            let since = unix_ms();
            let recorded = self.replication.record_sign_in(agent, &reply, conf, resumable, since, tenant.as_deref());
            let sharing = match recorded.await {
                Ok(r) => r,
                Err(e) => {
                    // Signed in at the gateway but nobody else could find the session: sign
                    // it out again rather than leave an agent nobody polls.
                    self.abandon(agent, &reply).await;
                    return Err(e);
                }
            };
            self.finish_sign_in(agent, slot, &reply, conf, resumable, (since, tenant), sharing).map(|s| (s, true))
        }
        .await;
        self.replication.unlock(agent, lock).await;
        if let Err(e) = &result {
            self.record_failed_sign_in(agent, e);
        }
        result
    }

    /// The gateway part of a sign-in: the body (from the credentials file unless the caller
    /// sent one), `login` or `forcelogin`, and the ghost check. Returns the successful answer,
    /// the conference state the session starts with, and whether ccgate can sign it in again
    /// by itself.
    async fn sign_in_at_gateway(
        &self,
        agent: &str,
        slot: &Slot,
        opts: SignInOptions,
    ) -> Result<(GatewayReply, ConfState, bool), SessionError> {
        let resumable = opts.body.is_none();
        let body = match opts.body.clone() {
            Some(b) => b,
            None => {
                let all = self.creds.load();
                let Some(creds) = all.get(agent) else {
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
        let live_here = slot.session.load().as_ref().is_some_and(|s| s.ended().is_none());
        if !live_here && self.at_capacity() {
            return Err(if self.at_file_limit() {
                self.metrics.count_signin(SigninResult::FileLimit);
                SessionError::FileLimit
            } else {
                self.metrics.count_signin(SigninResult::AtCapacity);
                SessionError::AtCapacity
            });
        }
        // A turn at the gateway: bounded sign-ins in flight, the rest queued.
        let (_turn, waited) = self.signin_gate.enter().await.map_err(|_| {
            self.metrics.count_signin(SigninResult::QueueFull);
            SessionError::SignInQueueFull
        })?;
        self.metrics.observe_signin_wait(waited);
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
        if reply.set_guid.as_deref().and_then(|g| session_auth(g, &reply.cookies)).is_none() {
            self.metrics.count_signin(SigninResult::UpstreamError);
            return Err(UpstreamError::Malformed("sign-in succeeded without a usable Set-GUID".into()).into());
        }
        tracing::info!(agent, force, "agent signed in");
        // A fresh sign-in starts with no conference; a takeover may inherit one whose events
        // ccgate never saw.
        let conf = if force { ConfState::Unknown } else { ConfState::None };
        Ok((reply, conf, resumable))
    }

    /// Makes the local session of a successful sign-in and starts its poller.
    #[allow(clippy::too_many_arguments)]
    fn finish_sign_in(
        &self,
        agent: &str,
        slot: &Slot,
        reply: &GatewayReply,
        conf: ConfState,
        resumable: bool,
        origin: (u64, Option<Arc<str>>),
        sharing: Sharing,
    ) -> Result<Arc<Session>, SessionError> {
        let guid = reply.set_guid.as_deref().unwrap_or_default();
        let session = self
            .build_session(agent, guid, &reply.cookies, reply.body.clone(), conf, resumable, origin, sharing)
            .ok_or_else(|| SessionError::from(UpstreamError::Malformed("unusable Set-GUID".into())))?;
        self.start_poller(&session);
        if let Some(old) = slot.session.swap(Some(session.clone())) {
            old.end(Ended::SignedOut);
            self.forget_lost_gauge(&old);
        }
        self.metrics.count_signin(SigninResult::Ok);
        self.metrics.sessions_gauge(SessionState::Active).inc();
        Ok(session)
    }

    /// Signs out a session the gateway just gave us but ccgate could not record (best effort).
    async fn abandon(&self, agent: &str, reply: &GatewayReply) {
        let Some(auth) = reply.set_guid.as_deref().and_then(|g| session_auth(g, &reply.cookies)) else { return };
        let request = GatewayRequest {
            method: GatewayMethod::Logout,
            agent,
            auth: Some(&auth),
            body: None,
            timeout: None,
            conn: None,
        };
        if let Err(e) = self.gateway.call(request).await {
            tracing::warn!(agent, error = %e, "could not sign out a session the shared store could not record");
        }
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
        let request = GatewayRequest { method, agent, auth: None, body: Some(body), timeout: None, conn: None };
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
        let host: Weak<dyn Poller> = self.me.clone();
        let handle =
            tokio::spawn(poller::run(session.clone(), host, self.poller_settings()).instrument(self.span.clone()));
        if let Some(old) = lock(&session.poller).replace(handle) {
            old.abort();
        }
    }

    /// This replica holds `sessions.max_agents` live sessions (every gateway's together), or
    /// this gateway's own `max_agents`: no new one, by sign-in or takeover.
    fn at_capacity(&self) -> bool {
        let bound = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let here = self.identity.max_agents;
        (here > 0 && self.metrics.sessions_gauge(SessionState::Active).get() >= bound(here))
            || self.metrics.active_sessions_all() >= bound(self.cfg.max_agents)
            || self.at_file_limit()
    }

    /// How many more live sessions this replica may take (by takeover): what
    /// [`Self::at_capacity`] counts, as a number.
    fn room(&self) -> usize {
        if self.at_file_limit() {
            return 0;
        }
        let count = |g: i64| usize::try_from(g).unwrap_or(0);
        let mut room = self.cfg.max_agents.saturating_sub(count(self.metrics.active_sessions_all()));
        let here = self.identity.max_agents;
        if here > 0 {
            room = room.min(here.saturating_sub(count(self.metrics.sessions_gauge(SessionState::Active).get())));
        }
        room
    }

    /// The open-file limit leaves room for no more agents (every gateway's together).
    fn at_file_limit(&self) -> bool {
        self.identity
            .max_agents_by_files
            .is_some_and(|cap| self.metrics.active_sessions_all() >= i64::try_from(cap).unwrap_or(i64::MAX))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_session(
        &self,
        agent: &str,
        guid: &str,
        cookies: &[String],
        login_answer: Bytes,
        conf: ConfState,
        resumable: bool,
        (signed_in_at_ms, tenant): (u64, Option<Arc<str>>),
        sharing: Sharing,
    ) -> Option<Arc<Session>> {
        // The sign-in answer's cookies go into the jar under the same bounds as later ones.
        let (cookies, dropped) = crate::gateway::wire::merge_cookies(&[], cookies);
        if dropped > 0 {
            self.metrics.count_discarded(crate::labels::Discarded::GatewayCookie, dropped as u64);
        }
        let auth = session_auth(guid, &cookies)?;
        Some(Arc::new(Session {
            agent_id: agent.to_owned(),
            auth: ArcSwap::from_pointee(auth),
            raw: Mutex::new((guid.to_owned(), cookies)),
            conf: watch::channel(conf).0,
            ended: watch::channel(None).0,
            events: EventBuffer::new(self.event_ids.clone(), self.cfg.event_buffer),
            gateway: self.gateway.clone(),
            gateway_name: self.identity.name.clone(),
            login_answer,
            resumable,
            last_activity: AtomicU64::new(0),
            listeners: AtomicU32::new(0),
            idle_signout: AtomicBool::new(false),
            born: Instant::now(),
            poller: Mutex::new(None),
            metrics: self.metrics.clone(),
            signed_in_at_ms,
            tenant,
            activity: Mutex::new(Activity::default()),
            history: self.history.clone(),
            outlet: self.outlet.clone(),
            last_limit: Mutex::new(None),
            sharing,
        }))
    }

    /// Signs out with `logout` or `forcelogout`; returns the gateway's answer. When the
    /// gateway cannot be told, the session stays as it was (still polled, still usable) and
    /// the error is returned, so the app can retry: an agent is never left signed in at the
    /// gateway with nobody holding its Guid.
    pub async fn sign_out(&self, agent: &str, method: GatewayMethod) -> Result<Bytes, SessionError> {
        let lock = self.replication.lock_for_sign_out(self, agent).await?;
        let result = self.sign_out_here(agent, method).await;
        self.replication.unlock(agent, lock).await;
        result
    }

    async fn sign_out_here(&self, agent: &str, method: GatewayMethod) -> Result<Bytes, SessionError> {
        let slot = self.existing_slot(agent).ok_or(SessionError::NoSession)?;
        let _op = slot.op.lock().await;
        let session = slot.session.load_full().ok_or(SessionError::NoSession)?;
        let result = self.sign_out_locked(&slot, &session, method, SignoutTrigger::App).await;
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
        trigger: SignoutTrigger,
    ) -> Result<Bytes, SessionError> {
        if session.ended().is_some() {
            // Lost already: nothing left to tell the gateway; answer as it answers a sign-out.
            self.forget(slot, session);
            self.record_sign_out(session).await;
            return Ok(Envelope::ok("success", json!({})).to_bytes());
        }
        session.stop_poller();
        // Not `call`: a "not signed in" answer here means the goal is reached, not a loss.
        let (reply, _) = session.exchange(method, None, None, None, false).await?;
        let code = reply.envelope.code();
        if !(reply.envelope.is_success() || code.session_gone() || code == Retcode::AlreadySignedOut) {
            return Err(SessionError::Refused(GatewayRefusal::from(&reply)));
        }
        tracing::info!(agent = %session.agent_id, "agent signed out");
        // A session lost while the logout was in flight leaves the `lost` gauge in `forget`.
        self.forget(slot, session);
        if session.end(Ended::SignedOut) {
            session.record_ending(EndKind::SignedOut, trigger.as_str());
        }
        self.record_sign_out(session).await;
        Ok(reply.body)
    }

    /// The sign-out ends the session on every replica.
    async fn record_sign_out(&self, session: &Session) {
        session.signed_out().await;
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
    async fn sign_out_idle(&self, session: Arc<Session>, idle: Duration) {
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
                match self.sign_out_locked(&slot, &session, GatewayMethod::Logout, SignoutTrigger::Idle).await {
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
    /// retrying with back-off until `deadline`. Returns how many agents it should have
    /// signed out but could not (each logged): they stay signed in at the gateway.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        // With the shared store, only the agents this replica polled are its to sign out.
        let polled: Vec<bool> =
            slots.iter().map(|s| s.session.load().as_ref().is_some_and(|s| s.polls_here())).collect();
        for slot in &slots {
            if let Some(s) = slot.session.load_full() {
                s.stop_poller();
            }
        }
        let plan = self.replication.shutdown_plan(self, self.cfg.sign_out_on_shutdown).await;
        if !plan.sign_out {
            return 0;
        }
        let slots: Vec<Arc<Slot>> =
            slots.into_iter().zip(polled).filter(|(_, polled)| !plan.only_polled || *polled).map(|(s, _)| s).collect();
        let settings = self.poller_settings();
        let mut tasks = Vec::new();
        for slot in slots {
            let Some(me) = self.me.upgrade() else { return 0 };
            // Each task says whether its agent is left signed in at the gateway.
            tasks.push(tokio::spawn(
                async move {
                    let _op = slot.op.lock().await;
                    let Some(s) = slot.session.load_full() else { return false };
                    let mut backoff = settings.backoff;
                    loop {
                        let signed_out = me.sign_out_locked(&slot, &s, GatewayMethod::Logout, SignoutTrigger::Shutdown);
                        let Err(e) = signed_out.await else { return false };
                        me.metrics.count_signout_failure(SignoutTrigger::Shutdown);
                        if Instant::now() + backoff >= deadline {
                            tracing::warn!(agent = %s.agent_id, error = %e, "sign-out at shutdown failed; out of time");
                            return true;
                        }
                        tracing::warn!(agent = %s.agent_id, error = %e, "sign-out at shutdown failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(settings.backoff_max);
                    }
                }
                .instrument(self.span.clone()),
            ));
        }
        let mut left = 0;
        for t in tasks {
            // A task that panicked left its agent signed in as far as anyone knows.
            left += usize::from(t.await.unwrap_or(true));
        }
        left
    }

    /// Agents with a live session here.
    pub fn live_agents(&self) -> usize {
        lock(&self.slots).values().filter(|s| s.session.load().as_ref().is_some_and(|s| s.ended().is_none())).count()
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

/// What the poller needs of the store: idle sign-outs and the re-poll pacer.
impl Poller for SessionStore {
    fn sign_out_idle(&self, session: Arc<Session>, idle: Duration) {
        // Signing out stops the poller that asks, so it runs in its own task.
        if let Some(me) = self.me.upgrade() {
            let span = me.span.clone();
            tokio::spawn(async move { me.sign_out_idle(session, idle).await }.instrument(span));
        }
    }

    fn repoll(&self) -> &Pacer {
        &self.repoll
    }

    fn warnings(&self) -> &LogBudget {
        &self.poll_warnings
    }
}

/// What replication needs of the store: the local copies.
impl Host for SessionStore {
    type Session = Session;

    fn current(&self, agent: &str) -> Option<Arc<Session>> {
        SessionStore::current(self, agent)
    }

    fn active(&self, agent: &str) -> Result<Arc<Session>, SessionError> {
        SessionStore::active(self, agent)
    }

    fn local_agents(&self) -> Vec<String> {
        lock(&self.slots).iter().filter(|(_, s)| s.session.load().is_some()).map(|(a, _)| a.clone()).collect()
    }

    fn start_poller(&self, s: &Arc<Session>) {
        SessionStore::start_poller(self, s);
    }

    fn at_capacity(&self) -> bool {
        SessionStore::at_capacity(self)
    }

    fn room(&self) -> usize {
        SessionStore::room(self)
    }

    fn install(
        &self,
        agent: &str,
        expected: Option<Arc<Session>>,
        adopted: Adopted,
    ) -> Result<Arc<Session>, SessionError> {
        let Adopted { guid, cookies, answer, conf, resumable, since, tenant, lost, sharing, events } = adopted;
        let session = self
            .build_session(agent, &guid, &cookies, answer, conf, resumable, (since, tenant), sharing)
            .ok_or(SessionError::Internal("stored Guid is not a valid header value"))?;
        // `events` holds one more than the buffer when some are missing before the newest.
        let cap = session.events.capacity();
        let skip = events.len().saturating_sub(cap);
        if let Some((id, _, _)) = events.first().filter(|_| skip > 0) {
            session.events.missing_up_to(*id);
        }
        for (id, kind, data) in events.into_iter().skip(skip) {
            session.events.insert(id, &kind, data);
        }
        self.metrics.sessions_gauge(SessionState::Active).inc();
        if let Some(reason) = lost {
            session.end(Ended::Lost(reason));
        }
        // Two requests adopting at once: the first one's copy wins.
        let slot = self.slot(agent);
        let prev = slot.session.compare_and_swap(&expected, Some(session.clone()));
        let stored = match (&*prev, &expected) {
            (Some(p), Some(e)) => Arc::ptr_eq(p, e),
            (None, None) => true,
            _ => false,
        };
        if !stored {
            session.end(Ended::SignedOut);
            return slot.session.load_full().ok_or(SessionError::NoSession);
        }
        if let Some(old) = expected {
            old.end(Ended::SignedOut);
            self.forget_lost_gauge(&old);
        }
        Ok(session)
    }

    fn count_takeover(&self) {
        self.metrics.count_lease_takeover();
    }

    fn event_capacity(&self) -> usize {
        // As the buffer itself rounds it.
        self.cfg.event_buffer.max(1)
    }
}

/// Hooks for the in-process replication tests, which drive rounds and follow changes
/// themselves instead of on the timer.
#[cfg(test)]
impl SessionStore {
    /// One maintenance round, now.
    pub(crate) async fn maintenance_round(&self) {
        if let Some(cluster) = self.replication.cluster() {
            cluster.maintain(self).await;
        }
    }

    /// Follows the other replicas' changes (no maintenance timer).
    pub(crate) fn follow_changes(self: &Arc<Self>) {
        if let Some(cluster) = self.replication.cluster() {
            cluster.follow(Arc::downgrade(self));
        }
    }

    /// The process dies: every poller stops and nobody is told anything.
    pub(crate) fn halt(&self) {
        for slot in lock(&self.slots).values() {
            if let Some(s) = slot.session.load_full() {
                s.stop_poller();
            }
        }
    }
}
