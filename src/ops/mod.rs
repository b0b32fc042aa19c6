//! The operations core: every operation either face offers is one [`Operation`] value, and
//! [`Core::run`] is the one function that runs it: rate limits, session lookup and activity,
//! the chairperson check, conference bookkeeping and resume. Nothing here speaks HTTP: the
//! faces in `edge/` parse requests into operations and render [`Done`] or [`Failure`].
//! docs/architecture.md walks a request through it.

pub mod audit;
pub mod failure;
mod limit_state;
mod limit_view;
pub mod limits;
pub mod policy;
pub mod principal;
pub mod slices;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::config::{ms, UnknownChair};
use crate::gateway::{GatewayMethod, GatewayRefusal, GatewayReply};
use crate::labels::MethodLabel;
use crate::session::conference::apply_success;
use crate::session::events::BufferedEvent;
use crate::session::history::{ErrorNote, RequestNote};
use crate::session::{ConfState, Gateways, Listening, Session, SessionError, SessionStore, SignInOptions, Snapshot};
pub use failure::{Failure, Overload};
pub use limit_view::{BucketView, LimitView, FULLEST_BUCKETS};
use limits::{LimitState, Limits, Tier};
use policy::check_chair;
pub use principal::Principal;

/// What an app asks ccgate to do for its agent.
#[derive(Debug)]
pub enum Operation {
    /// Sign in (or join the sign-in in progress, or get the live session).
    SignIn {
        opts: SignInOptions,
        /// Refuse with `100-002` when ccgate already holds a session, as the gateway does for
        /// a second plain sign-in (the pass-through face); otherwise answer that session.
        refuse_if_signed_in: bool,
    },
    /// The session's state, from ccgate alone.
    GetSession,
    /// `logout` or `forcelogout`.
    SignOut(GatewayMethod),
    /// Any gateway method of the registry, as the session.
    Call { method: GatewayMethod, body: Option<Bytes> },
    /// `requestagentconf`, then wait for the gateway's verdict event so the app learns the
    /// conference id (and that it is chair) in one call.
    CreateConference { body: Bytes },
    /// The next event of the agent's queue, with the gateway's long-poll wait.
    NextEvent,
    /// Follow the agent's events as a stream.
    Subscribe,
}

/// What a successful operation produced; the faces render it.
#[derive(Debug)]
pub enum Done {
    SignedIn {
        session: Snapshot,
        created: bool,
    },
    Session(Snapshot),
    /// The gateway's answer to the sign-out.
    SignedOut(Bytes),
    /// The gateway's answer (retcode "0") to a call.
    Replied {
        method: GatewayMethod,
        reply: GatewayReply,
    },
    /// The conference request settled: chair (or whatever the events said).
    Conference(ConfState),
    /// The conference request was accepted but its verdict has not arrived yet.
    ConferencePending,
    /// `None`: no event within the wait.
    Event(Option<BufferedEvent>),
    /// An event stream, open: the agent counts as active until it is dropped.
    Subscribed(Listening),
}

/// An operation's result, with the state of the tightest rate limit that admitted it.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Done, Failure>,
    pub limit: Option<LimitState>,
}

/// What the core needs beyond the session store and the limits; parsed once from config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreSettings {
    pub on_unknown_chair: UnknownChair,
    /// `sessions.resume`: sign in again once (and retry once) when the gateway ends a session
    /// that ccgate signed in with the credentials file.
    pub resume: bool,
    /// How long `CreateConference` waits for the verdict event.
    pub conference_wait: Duration,
    /// How long `NextEvent` waits for an event (the gateway's own long-poll wait).
    pub event_wait: Duration,
}

impl CoreSettings {
    /// The config keys these settings are made of: what a reload applies to them (the reload's
    /// list of live keys includes these; a test holds the two to `from_config`).
    pub const KEYS: &'static [&'static str] =
        &["policy.on_unknown_chair", "sessions.resume", "sessions.conference_wait_ms", "sessions.face_event_wait_ms"];

    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            on_unknown_chair: c.policy.on_unknown_chair,
            resume: c.sessions.resume,
            conference_wait: ms(c.sessions.conference_wait_ms),
            event_wait: ms(c.sessions.face_event_wait_ms),
        }
    }
}

pub struct Core {
    /// Every gateway's agents; the principal's gateway picks the store.
    pub gateways: Arc<Gateways>,
    /// Both swapped whole by a reload: a request keeps the limits it started with; settings
    /// are read where used.
    pub limits: Arc<ArcSwap<Limits>>,
    pub settings: Arc<ArcSwap<CoreSettings>>,
}

impl Core {
    pub fn new(gateways: Arc<Gateways>, limits: Arc<Limits>, settings: CoreSettings) -> Self {
        Self { gateways, limits: Arc::new(ArcSwap::new(limits)), settings: Arc::new(ArcSwap::from_pointee(settings)) }
    }

    /// A request the edge answered for an agent of gateway `i`, for the agent's history.
    pub fn note_request(&self, i: usize, agent: &str, r: RequestNote, error: Option<ErrorNote>) {
        self.gateways.get(i).note_request(agent, r, error);
    }

    /// Gateway `i`'s name (logs).
    pub fn gateway_name(&self, i: usize) -> &str {
        self.gateways.name(i)
    }

    /// The first gateway's store (the only one in most deployments; tests).
    pub fn sessions(&self) -> &Arc<SessionStore> {
        self.gateways.first()
    }

    fn settings(&self) -> CoreSettings {
        **self.settings.load()
    }

    /// Runs `op` for `who`. `label` is the operation's metrics name (the route's, so a forced
    /// sign-in through `/v1/session` stays `login`), which the limits are keyed by. Shared
    /// buckets (tenant, gateway, global) are spent only by requests that can be served, so one
    /// customer's flood of hopeless requests costs the others nothing:
    /// - when this replica's own copy shows the request servable (the agent's live session
    ///   here, and for a chair-only method the chair), the limits are checked and the
    ///   operation runs: the usual case (with buckets in Redis, the agent's own and then the
    ///   shared ones, two round trips);
    /// - otherwise in three phases: the caller's own agent buckets; admission (a session, the
    ///   chair for a chair-only method, credentials for a sign-in, found with the store's
    ///   help), where what cannot be served is refused; then the shared buckets.
    pub async fn run(&self, who: &Principal, label: MethodLabel, mut op: Operation) -> Answer {
        // A sign-in's session remembers whose token it was for (the webhooks' `tenants`); a
        // claim value a record could not hold is not kept.
        if let Operation::SignIn { opts, .. } = &mut op {
            opts.tenant = who.tenant.as_deref().filter(|t| crate::shared::valid_tenant(t)).map(Arc::from);
        }
        let limits = self.limits.load_full();
        let sessions = self.gateways.get(who.gateway);
        if let Some(found) = self.admit_here(sessions, &who.agent_id, &op) {
            let checked = if limits.is_shared() && limits.applies(label, Tier::Own) {
                // In Redis, own before shared (see `Limits::is_shared`): an agent over its own
                // limit must not spend the buckets other customers share.
                match limits.check(label, Tier::Own, who).await {
                    Ok(own) => limits.check(label, Tier::Shared, who).await.map(|shared| tightest(own, shared)),
                    Err(failure) => Err(failure),
                }
            } else {
                // In memory the check stops at the first refusal, most specific first.
                limits.check(label, Tier::All, who).await
            };
            let limit = match checked {
                Ok(state) => state,
                Err(failure) => return refused(sessions, who, failure),
            };
            return Answer { result: self.execute(sessions, &who.agent_id, op, found, limit.as_ref()).await, limit };
        }
        let own = match limits.check(label, Tier::Own, who).await {
            Ok(state) => state,
            Err(failure) => return refused(sessions, who, failure),
        };
        let found = match self.admit(sessions, &who.agent_id, &op).await {
            Ok(found) => found,
            Err(failure) => return Answer { result: Err(failure), limit: own },
        };
        let shared = if limits.applies(label, Tier::Shared) {
            match limits.check(label, Tier::Shared, who).await {
                Ok(state) => state,
                Err(failure) => return refused(sessions, who, failure),
            }
        } else {
            None
        };
        let limit = tightest(own, shared);
        Answer { result: self.execute(sessions, &who.agent_id, op, found, limit.as_ref()).await, limit }
    }

    /// Admission from this replica's own copy alone, with no I/O: `Some` (with the live session
    /// it found, for operations that need one) when the operation can be served; `None` when
    /// only [`Self::admit`] can tell.
    fn admit_here(&self, sessions: &SessionStore, agent: &str, op: &Operation) -> Option<Option<Arc<Session>>> {
        match op {
            Operation::SignIn { opts, .. } => sessions.may_sign_in_here(agent, opts).then_some(None),
            Operation::SignOut(_) => sessions.current(agent).map(|_| None),
            _ => {
                let s = sessions.active(agent).ok()?;
                let ready = match op {
                    Operation::Call { method, .. } if method.chair_only() => {
                        matches!(s.conf(), ConfState::Chair { .. })
                    }
                    Operation::Subscribe => s.streams() < sessions.max_streams_per_agent(),
                    _ => true,
                };
                ready.then_some(Some(s))
            }
        }
    }

    /// Phase 2: refuses what cannot be served, and hands on the session it looked up (`None`:
    /// the operation needs none, or needs a sign-in first, which `execute` does).
    async fn admit(
        &self,
        sessions: &SessionStore,
        agent: &str,
        op: &Operation,
    ) -> Result<Option<Arc<Session>>, Failure> {
        let found = match op {
            Operation::SignIn { opts, .. } => {
                sessions.may_sign_in(agent, opts).await?;
                return Ok(None);
            }
            Operation::SignOut(_) => {
                // A lost session is still signed out (it is forgotten); none at all is refused.
                return match sessions.lookup(agent).await {
                    Err(SessionError::NoSession) => Err(SessionError::NoSession.into()),
                    _ => Ok(None),
                };
            }
            _ => match sessions.lookup(agent).await {
                Ok(s) => s,
                Err(SessionError::Lost) if self.may_resume(sessions, agent) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        match op {
            Operation::Call { method, .. } if method.chair_only() => {
                check_chair(found.current_conf().await, self.settings().on_unknown_chair)?;
            }
            Operation::Subscribe if found.streams() >= sessions.max_streams_per_agent() => {
                return Err(Failure::Overloaded(Overload::Streams));
            }
            _ => {}
        }
        Ok(Some(found))
    }

    async fn execute(
        &self,
        sessions: &SessionStore,
        agent: &str,
        op: Operation,
        found: Option<Arc<Session>>,
        limit: Option<&LimitState>,
    ) -> Result<Done, Failure> {
        match op {
            Operation::SignIn { opts, refuse_if_signed_in } => {
                if refuse_if_signed_in && sessions.lookup(agent).await.is_ok() {
                    return Err(Failure::AlreadySignedIn(None));
                }
                let (session, created) = sessions.sign_in(agent, opts).await?;
                session.touch();
                Ok(Done::SignedIn { session: session.snapshot(), created })
            }
            Operation::GetSession => Ok(Done::Session(session(sessions, agent, found, limit).await?.snapshot())),
            Operation::SignOut(method) => Ok(Done::SignedOut(sessions.sign_out(agent, method).await?)),
            Operation::Call { method, body } => {
                self.with_session(sessions, agent, found, limit, |s| {
                    let body = body.clone();
                    async move {
                        let reply = self.call(&s, method, body).await?;
                        Ok(Done::Replied { method, reply })
                    }
                })
                .await
            }
            Operation::CreateConference { body } => {
                self.with_session(sessions, agent, found, limit, |s| self.create_conference(s, body.clone())).await
            }
            Operation::NextEvent => {
                let session = session(sessions, agent, found, limit).await?;
                Ok(Done::Event(self.next_event(&session).await))
            }
            Operation::Subscribe => {
                let session = session(sessions, agent, found, limit).await?;
                let max = sessions.max_streams_per_agent();
                Ok(Done::Subscribed(session.listening(max).ok_or(Failure::Overloaded(Overload::Streams))?))
            }
        }
    }

    /// Runs `op` with the agent's session, counting it as activity. With `sessions.resume`,
    /// a session the gateway ended is replaced by one fresh sign-in and `op` is retried once
    /// with the new Guid: never a loop, and a Guid the gateway refused is never presented
    /// again. Only sessions signed in with the credentials file are resumed; ccgate does not
    /// keep a password a client sent.
    async fn with_session<F, Fut>(
        &self,
        sessions: &SessionStore,
        agent: &str,
        found: Option<Arc<Session>>,
        limit: Option<&LimitState>,
        mut op: F,
    ) -> Result<Done, Failure>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<Done, Failure>>,
    {
        let mut resumed = false;
        let looked_up = match found {
            Some(s) => Ok(s),
            None => sessions.lookup(agent).await,
        };
        let session = match looked_up {
            Err(SessionError::Lost) if self.may_resume(sessions, agent) => {
                resumed = true;
                resume(sessions, agent).await?
            }
            other => other?,
        };
        touch(&session, limit);
        let resumable = session.resumable;
        match op(session).await {
            Err(Failure::SessionLost(_)) if self.settings().resume && resumable && !resumed => {
                let session = resume(sessions, agent).await?;
                session.touch();
                op(session).await
            }
            other => other,
        }
    }

    fn may_resume(&self, sessions: &SessionStore, agent: &str) -> bool {
        self.settings().resume && sessions.current(agent).is_some_and(|s| s.resumable)
    }

    /// One gateway call as the session: the chair check first for chair-only methods, then
    /// the conference bookkeeping a successful (or failed) answer implies.
    async fn call(&self, s: &Session, method: GatewayMethod, body: Option<Bytes>) -> Result<GatewayReply, Failure> {
        if method.chair_only() {
            check_chair(s.current_conf().await, self.settings().on_unknown_chair)?;
        }
        let before = s.conf();
        let requesting = method == GatewayMethod::RequestAgentConf;
        if requesting {
            // Until the verdict event, the agent is not chair: chair calls are refused locally.
            s.update_conf(|_| ConfState::Requested).await;
        }
        if method.chair_only() {
            audit::forwarding();
        }
        let result = judge(s.call(method, body).await);
        match &result {
            Ok(_) if apply_success(s.conf(), method) != s.conf() => {
                s.update_conf(|c| apply_success(c, method)).await;
            }
            Ok(_) => {}
            // The request did not happen; unless an event moved the state meanwhile, go back.
            Err(_) if requesting => {
                s.update_conf(|c| if c == ConfState::Requested { before } else { c }).await;
            }
            Err(_) => {}
        }
        result
    }

    async fn create_conference(&self, s: Arc<Session>, body: Bytes) -> Result<Done, Failure> {
        let mut changes = s.watch_conf();
        self.call(&s, GatewayMethod::RequestAgentConf, Some(body)).await?;
        let settled =
            tokio::time::timeout(self.settings().conference_wait, changes.wait_for(|c| *c != ConfState::Requested))
                .await;
        match settled.ok().and_then(Result::ok).map(|c| *c) {
            Some(ConfState::RequestFailed { cause }) => Err(Failure::Refused(GatewayRefusal {
                retcode: "0".into(),
                message: "conference request failed (AgentConf_RequestFailed)".into(),
                error_reason: cause,
                body: Bytes::new(),
            })),
            Some(state) => Ok(Done::Conference(state)),
            None => Ok(Done::ConferencePending),
        }
    }

    /// The gateway's long poll, replayed from the session's buffer: the next queued event,
    /// or `None` after the wait (or when the session ends).
    async fn next_event(&self, session: &Session) -> Option<BufferedEvent> {
        let deadline = tokio::time::Instant::now() + self.settings().event_wait;
        // Subscribed before looking, so an event pushed in between still wakes us.
        let mut latest = session.events.subscribe();
        loop {
            if let Some(e) = session.take_next_event().await {
                return Some(e);
            }
            let woke = tokio::select! {
                r = tokio::time::timeout_at(deadline, latest.changed()) => matches!(r, Ok(Ok(()))),
                _ = session.wait_ended() => false,
            };
            if !woke {
                return None;
            }
        }
    }
}

/// The agent's live session (the one admission found, or looked up now), counting the
/// request as activity (and its limit state).
async fn session(
    sessions: &SessionStore,
    agent: &str,
    found: Option<Arc<Session>>,
    limit: Option<&LimitState>,
) -> Result<Arc<Session>, Failure> {
    let session = match found {
        Some(s) => s,
        None => sessions.lookup(agent).await?,
    };
    touch(&session, limit);
    Ok(session)
}

/// A rate-limit refusal (or the store's, with `fallback = "closed"`); the agent's view says so.
fn refused(sessions: &SessionStore, who: &Principal, failure: Failure) -> Answer {
    if let (Failure::RateLimited(r), Some(s)) = (&failure, sessions.current(&who.agent_id)) {
        s.note_limit(snapshot(&r.state, true));
    }
    Answer { result: Err(failure), limit: None }
}

/// The tighter of two phases' limit states: fewer requests remaining.
fn tightest(a: Option<LimitState>, b: Option<LimitState>) -> Option<LimitState> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
        (a, b) => a.or(b),
    }
}

async fn resume(sessions: &SessionStore, agent: &str) -> Result<Arc<Session>, Failure> {
    tracing::info!(
        agent,
        gateway = &*sessions.identity.name,
        "gateway session lost; signing in again (sessions.resume)"
    );
    // The new session is for the tenant the lost one was.
    let tenant = sessions.current(agent).and_then(|s| s.tenant.clone());
    Ok(sessions.sign_in(agent, SignInOptions { tenant, ..SignInOptions::default() }).await?.0)
}

/// A request's activity on `session`, with the tightest limit's state when a limit applied.
fn touch(session: &Session, limit: Option<&LimitState>) {
    session.touch();
    if let Some(l) = limit {
        session.note_limit(snapshot(l, false));
    }
}

fn snapshot(l: &LimitState, refused: bool) -> crate::session::LimitSnapshot {
    crate::session::LimitSnapshot {
        limit: l.name.clone(),
        quota: l.quota,
        window_secs: l.window_secs,
        remaining: l.remaining,
        refused,
        at_ms: crate::clock::unix_ms(),
    }
}

/// A gateway answer as an operation's result: retcode "0" is success; anything else is the
/// gateway's refusal, classified.
fn judge(sent: Result<GatewayReply, SessionError>) -> Result<GatewayReply, Failure> {
    let reply = sent?;
    if reply.envelope.is_success() {
        Ok(reply)
    } else {
        Err(Failure::refused(GatewayRefusal::from(&reply)))
    }
}

#[cfg(test)]
mod tests;
