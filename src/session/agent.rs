//! One agent's gateway session ([`Session`]): Guid, cookies, conference state, event buffer
//! and poller. A session owns its gateway calls: every call goes out with its current Guid and
//! cookies, and [`Session::call`] is the one place an answer's `Set-GUID`, `Set-Cookie` and
//! session loss are taken in. What it shares with other replicas goes through its
//! [`Sharing`], chosen when it was made.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conference::ConfState;
use super::copy::LocalCopy;
use super::error::{Ended, GuidVerdict, SessionError};
use super::events::SESSION_ENDED;
use super::events::{BufferedEvent, EventBuffer};
use super::history::{Activity, EndKind, Ending, ErrorNote, History, RequestNote};
use super::limit_snapshot::LimitSnapshot;
use super::sharing::{SharedCopy, Sharing};
use crate::gateway::wire::{merge_cookies, session_auth};
use crate::gateway::{
    Gateway, GatewayMethod, GatewayReply, GatewayRequest, PollConnection, SessionAuth, UpstreamError,
};
use crate::labels::{Discarded, LossReason, SessionState};
use crate::metrics::Metrics;
use crate::sync::lock;

/// One agent's gateway session.
pub struct Session {
    pub agent_id: String,
    /// Guid and cookies; swapped whole on rotation so readers never lock.
    pub(super) auth: ArcSwap<SessionAuth>,
    /// Guid and raw cookie pairs, to detect changes and merge new `Set-Cookie`s by name.
    /// A plain mutex, never held across an await.
    pub(super) raw: Mutex<(String, Vec<String>)>,
    pub(super) conf: watch::Sender<ConfState>,
    pub(super) ended: watch::Sender<Option<Ended>>,
    pub events: EventBuffer,
    /// The gateway this session talks to.
    pub(super) gateway: Arc<dyn Gateway>,
    /// Its name (the audit line's `gateway`).
    pub(super) gateway_name: Arc<str>,
    /// The gateway's answer to the sign-in that made this session (work number, login time,
    /// media type...; no secret). A client that signs in to a session ccgate already holds
    /// gets the same answer the gateway gave.
    pub login_answer: Bytes,
    /// Signed in with the credentials file, so ccgate can sign in again by itself
    /// (`sessions.resume`); a session signed in with a password the client sent cannot be.
    pub resumable: bool,
    /// Milliseconds since `born` of the app's last request.
    pub(super) last_activity: AtomicU64,
    /// Event streams open on this session: while any is, the agent is active.
    pub(super) listeners: AtomicU32,
    /// An idle sign-out is under way (retrying); the poller does not start another.
    pub(super) idle_signout: AtomicBool,
    pub(super) born: Instant,
    pub(super) poller: Mutex<Option<JoinHandle<()>>>,
    pub(super) metrics: Metrics,
    /// When the agent was signed in (Unix ms; 0 when unknown: a record of an older ccgate).
    pub signed_in_at_ms: u64,
    /// The tenant the signing-in token named, if any (the webhooks' `tenants` scope).
    pub tenant: Option<Arc<str>>,
    /// The agent's last requests and its last error (which call, and why), for the admin's
    /// agent view and, when the session ends, its history.
    pub(super) activity: Mutex<Activity>,
    /// The gateway's history of endings, which this session joins when it is lost.
    pub(super) history: Arc<History>,
    /// Where its events go besides its buffer (the webhooks).
    pub(super) outlet: Arc<super::Outlet>,
    /// The tightest rate limit at the agent's last limited request (the agent view's).
    pub(super) last_limit: Mutex<Option<LimitSnapshot>>,
    /// What the session shares with other replicas, and how.
    pub(super) sharing: Sharing,
}

impl std::fmt::Debug for Session {
    /// Who and in what state; never the Guid or cookies.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("agent_id", &self.agent_id)
            .field("conf", &self.conf())
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn conf(&self) -> ConfState {
        *self.conf.borrow()
    }

    /// Changes the conference state by `f` and returns the new state. With the shared store
    /// the change is made on the record (compare-and-set on its version, so a change another
    /// replica made first is never overwritten) and every replica sees it.
    pub async fn update_conf(&self, f: impl Fn(ConfState) -> ConfState + Sync) -> ConfState {
        // The change as made (to the record's state, with the shared store): one line per
        // change, whichever replica makes it.
        let (before, after) = self.sharing.update_conf(self, &f).await;
        audit_chair_change(&self.gateway_name, &self.agent_id, before, after);
        after
    }

    /// The conference state for the chair check. With the shared store, a copy that says
    /// "not chair" is checked against Redis first (a conference created through another
    /// replica a moment ago may not have reached this copy yet); a copy that says chair is
    /// trusted without a round trip, since the gateway itself refuses a stale chair
    /// (`101-002`). The local copy when Redis cannot be reached.
    pub async fn current_conf(&self) -> ConfState {
        self.sharing.refresh_conf(self).await;
        self.conf()
    }

    /// What a face may show of it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            agent_id: self.agent_id.clone(),
            signed_in: self.ended().is_none(),
            conf: self.conf(),
            login_answer: self.login_answer.clone(),
        }
    }

    pub fn watch_conf(&self) -> watch::Receiver<ConfState> {
        self.conf.subscribe()
    }

    /// The session's id in the shared store (the same on every replica); `None` with the
    /// memory store.
    pub fn shared_id(&self) -> Option<&str> {
        self.sharing.shared_id()
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
        self.sharing.touched();
    }

    /// Event streams open on this session.
    pub fn streams(&self) -> usize {
        self.listeners.load(Ordering::Acquire) as usize
    }

    /// An app listens to this session's events until the guard is dropped: meanwhile the
    /// agent is active whatever `sessions.idle_timeout_ms` is, and its idle time counts from
    /// the moment the last stream closes. `None` when `max` are open already (the newest is
    /// refused: the oldest may be an app's only working stream, and a dead one ends within its
    /// keep-alive write plus the listener's TCP user timeout, or HTTP/2's PING).
    pub fn listening(self: &Arc<Self>, max: usize) -> Option<Listening> {
        self.listeners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (u64::from(n) < max as u64).then_some(n + 1))
            .ok()?;
        self.touch();
        Some(Listening(self.clone()))
    }

    /// Takes in activity seen on other replicas (the shared store's idle time) before the
    /// poller or an idle sign-out judges this session idle.
    pub(super) async fn refresh_activity(&self) {
        if let Some(idle) = self.sharing.idle_for(self).await {
            let at = Instant::now().checked_sub(idle).unwrap_or(self.born);
            let since = at.saturating_duration_since(self.born).as_millis() as u64;
            self.last_activity.fetch_max(since, Ordering::Relaxed);
        }
    }

    /// Whether this replica polls the gateway for this session (always, with the memory
    /// store; the lease holder, with the shared store).
    pub(super) fn polls_here(&self) -> bool {
        self.sharing.polls_here()
    }

    /// Records a gateway event for the apps: in the buffer, and with the shared store in the
    /// agent's stream first. Returns whether an old event was dropped to make room.
    pub(super) async fn record_event(&self, kind: &str, data: Bytes) -> bool {
        self.sharing.record_event(self, kind, data).await
    }

    /// The gateway ended the session by other means (the poller saw
    /// `AgentOther_ShutdownService`): ends it here and, when shared, everywhere.
    pub(super) async fn lost(&self, reason: LossReason) {
        self.sharing.lost(self, reason).await;
    }

    /// Tells the other replicas, if any, that the app signed the agent out.
    pub(super) async fn signed_out(&self) {
        self.sharing.signed_out(self).await;
    }

    /// The next event of the agent's queue (the pass-through face's `agentevent`), shared by
    /// every replica with the shared store.
    pub async fn take_next_event(&self) -> Option<BufferedEvent> {
        self.sharing.take_next(self).await
    }

    /// The app's last sign of life: now, while an event stream is open.
    pub(super) fn last_activity(&self) -> Instant {
        if self.has_listeners() {
            return Instant::now();
        }
        self.born + Duration::from_millis(self.last_activity.load(Ordering::Relaxed))
    }

    /// Calls the gateway as this session and takes in what the answer says about it: a new
    /// Guid (`Set-GUID`, or `updateGuid`'s body), new cookies, and loss. The answer is
    /// returned whatever its retcode, so the pass-through face can relay it; a Guid the gateway
    /// refused is never presented again.
    ///
    /// A refused Guid ends the session only when this replica may say so (see
    /// [`GuidVerdict`]): with the shared store, a replica that does not poll the agent takes a
    /// newer Guid from the record and sends the call once more, or, when it cannot tell,
    /// answers [`SessionError::Unconfirmed`] and keeps its copy.
    pub async fn call(&self, method: GatewayMethod, body: Option<Bytes>) -> Result<GatewayReply, SessionError> {
        let (reply, refusal) = self.exchange(method, body.clone(), None, None, true).await?;
        match refusal {
            GuidVerdict::None | GuidVerdict::Ended => Ok(reply),
            GuidVerdict::Unconfirmed => Err(SessionError::Unconfirmed),
            // Boxed: rare, and inline it would enlarge every call's future.
            GuidVerdict::Retry => Box::pin(self.call_again(method, body)).await,
        }
    }

    /// The one retry of a call whose Guid had been replaced meanwhile.
    async fn call_again(&self, method: GatewayMethod, body: Option<Bytes>) -> Result<GatewayReply, SessionError> {
        match self.exchange(method, body, None, None, true).await? {
            (reply, GuidVerdict::None | GuidVerdict::Ended) => Ok(reply),
            (_, GuidVerdict::Retry | GuidVerdict::Unconfirmed) => Err(SessionError::Unconfirmed),
        }
    }

    pub(super) async fn exchange(
        &self,
        method: GatewayMethod,
        body: Option<Bytes>,
        timeout: Option<Duration>,
        conn: Option<&mut PollConnection>,
        loss_ends_session: bool,
    ) -> Result<(GatewayReply, GuidVerdict), UpstreamError> {
        let auth = self.auth.load_full();
        let req = GatewayRequest { method, agent: &self.agent_id, auth: Some(&auth), body, timeout, conn };
        let reply = match self.gateway.call(req).await {
            Ok(reply) => reply,
            Err(e) => {
                self.note_error(method, crate::labels::UpstreamErrorKind::from(&e).as_str());
                return Err(e);
            }
        };
        if !reply.envelope.is_success() {
            self.note_error(method, reply.envelope.code().as_str());
        }
        let mut replaced = self.take_credentials(reply.set_guid.as_deref(), &reply.cookies);
        let env = &reply.envelope;
        if method == GatewayMethod::UpdateGuid && env.is_success() {
            if let Some(g) = env.result.as_ref().and_then(|r| r.get("guid")).and_then(Value::as_str) {
                replaced = replaced.or(self.take_credentials(Some(g), &[]));
            }
        }
        // The shared store's round trips are boxed: they happen on a rotation or a loss, not
        // on every poll, and inline their state would be copied with every poll's future.
        if let Some(old) = replaced {
            Box::pin(self.sharing.publish_auth(self, &old)).await;
        }
        let mut refusal = GuidVerdict::None;
        if loss_ends_session && env.code().session_gone() {
            let refused = auth.guid.to_str().unwrap_or_default();
            refusal = Box::pin(self.sharing.refused(self, LossReason::GuidRefused, refused)).await;
        }
        Ok((reply, refusal))
    }

    /// A gateway call of this session failed: `cause` is its retcode or failure kind.
    fn note_error(&self, method: GatewayMethod, cause: &'static str) {
        let e = ErrorNote { method: method.log_name(), cause, at_ms: crate::clock::unix_ms() };
        lock(&self.activity).note_error(e);
    }

    /// A request the edge answered for this agent; `error`, when it went wrong here (the
    /// gateway's own refusals are noted by the call itself, with the gateway's retcode).
    pub fn note_request(&self, r: RequestNote, error: Option<ErrorNote>) {
        let mut a = lock(&self.activity);
        a.note_request(r);
        if let Some(e) = error {
            a.note_error(e);
        }
    }

    /// The agent's activity as its history keeps it: the last requests and error.
    pub fn activity<T>(&self, f: impl FnOnce(&Activity) -> T) -> T {
        f(&lock(&self.activity))
    }

    /// Records how the session ended in the gateway's history, with its activity.
    pub(super) fn record_ending(&self, kind: EndKind, reason: &str) {
        let mut e = Ending::new(&self.agent_id, kind, reason, crate::clock::unix_ms());
        audit_chair_ended(&self.gateway_name, &self.agent_id, self.conf(), &e.state);
        e.signed_in_at_ms = self.signed_in_at_ms;
        let e = self.activity(|a| e.with_activity(a));
        self.history.record(e);
        // As the event stream's last event says it (`edge/sse.rs`); a sign-out also says by whom.
        let data = match kind {
            EndKind::SignedOut => serde_json::json!({ "reason": "signed_out", "by": reason }),
            _ => serde_json::json!({ "reason": reason }),
        };
        let data = bytes::Bytes::from(data.to_string());
        self.outlet.offer(&self.agent_id, self.tenant.as_deref(), SESSION_ENDED, &data);
    }

    /// Records the tightest rate limit's state at this request (for the agent view).
    pub fn note_limit(&self, snapshot: LimitSnapshot) {
        *lock(&self.last_limit) = Some(snapshot);
    }

    /// The tightest rate limit's state at the last limited request.
    pub fn last_limit(&self) -> Option<LimitSnapshot> {
        lock(&self.last_limit).clone()
    }

    /// Takes a new Guid and cookies. Every new Guid counts, in static and dynamic mode alike,
    /// so no setting is needed. Returns the Guid the session had before, when anything changed.
    pub(super) fn take_credentials(&self, new_guid: Option<&str>, new_cookies: &[String]) -> Option<String> {
        if new_guid.is_none() && new_cookies.is_empty() {
            return None;
        }
        let mut raw = lock(&self.raw);
        let (guid, cookies) = &mut *raw;
        let mut changed = false;
        let mut before = None;
        if let Some(new) = new_guid {
            if new != guid {
                before = Some(std::mem::replace(guid, new.to_owned()));
                changed = true;
                self.metrics.count_guid_rotation();
            }
        }
        if !new_cookies.is_empty() {
            let (merged, dropped) = merge_cookies(cookies, new_cookies);
            if dropped > 0 {
                self.metrics.count_discarded(Discarded::GatewayCookie, dropped as u64);
            }
            if merged != *cookies {
                *cookies = merged;
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        match session_auth(guid, cookies) {
            Some(a) => self.auth.store(Arc::new(a)),
            None => {
                tracing::warn!(agent = %self.agent_id, "gateway sent a Guid or cookie that is not a valid header value; kept the old one")
            }
        }
        Some(before.unwrap_or_else(|| guid.clone()))
    }

    /// Ends the session once; later calls change nothing. Returns whether this call did it.
    /// The one place the `sessions` gauge leaves `active` (and enters `lost`).
    pub(super) fn end(&self, why: Ended) -> bool {
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
    pub(super) fn mark_lost(&self, reason: LossReason) -> bool {
        if !self.end(Ended::Lost(reason)) {
            return false;
        }
        tracing::warn!(agent = %self.agent_id, reason = reason.as_str(), "gateway session lost");
        self.metrics.count_session_loss(reason);
        self.record_ending(EndKind::Lost, reason.as_str());
        true
    }

    pub(super) fn stop_poller(&self) {
        if let Some(h) = lock(&self.poller).take() {
            h.abort();
        }
    }
}

/// An open event stream on a session (see [`Session::listening`]): what the stream face
/// reads, and nothing it could call the gateway with.
pub struct Listening(Arc<Session>);

impl Listening {
    pub fn events(&self) -> &EventBuffer {
        &self.0.events
    }

    /// Resolves when the session ends, with why.
    pub async fn wait_ended(&self) -> Ended {
        self.0.wait_ended().await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Listening").field(&self.0.agent_id).finish()
    }
}

/// What a face may show of a session: its state, never its Guid or cookies, and nothing to
/// call the gateway with (so no face can skip the chair check).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub agent_id: String,
    pub signed_in: bool,
    pub conf: ConfState,
    /// The gateway's answer to the sign-in (the pass-through face relays it).
    pub login_answer: Bytes,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Touched first: the idle time counts from the close.
        self.0.touch();
        self.0.listeners.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The audit line of a change of chairperson (target `ccgate::audit`, README "Audit log"):
/// the agent became chair of a conference, or stopped being chair, as this replica changed
/// its state (an event its poller read, or a call's success). Other replicas adopt the change
/// without a line of their own, so there is one per change.
fn audit_chair_change(gateway: &str, agent: &str, before: ConfState, after: ConfState) {
    let chair = |c: ConfState| match c {
        ConfState::Chair { conf_id } => Some(conf_id),
        _ => None,
    };
    // A conference request is no change of chair until its verdict (a chair asking for
    // another conference is refused by the gateway, and goes back).
    if chair(before) == chair(after) || after == ConfState::Requested {
        return;
    }
    let conference = after.conf_id().or(before.conf_id());
    tracing::info!(
        target: "ccgate::audit",
        gateway,
        agent,
        conference = conference.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        change = match after {
            ConfState::Chair { .. } => "became_chair",
            // Events were missed (a takeover): the gateway may still call it chair.
            ConfState::Unknown => "chair_unknown",
            _ => "no_longer_chair",
        },
        state = after.label(),
        "chairperson changed"
    );
}

/// A chairperson's session ended: it is chair of nothing any more (one line, from the replica
/// that saw the end; the state says how it ended).
fn audit_chair_ended(gateway: &str, agent: &str, conf: ConfState, ended: &str) {
    let ConfState::Chair { conf_id } = conf else { return };
    tracing::info!(
        target: "ccgate::audit",
        gateway,
        agent,
        conference = conf_id.to_string(),
        change = "no_longer_chair",
        state = format_args!("ended:{ended}"),
        "chairperson changed"
    );
}

impl SharedCopy for Session {
    fn sharing(&self) -> &Sharing {
        &self.sharing
    }
}

impl LocalCopy for Session {
    fn agent_id(&self) -> &str {
        &self.agent_id
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn events(&self) -> &EventBuffer {
        &self.events
    }

    fn conf(&self) -> ConfState {
        Session::conf(self)
    }

    fn set_conf(&self, conf: ConfState) {
        self.conf.send_replace(conf);
    }

    fn modify_conf(&self, f: &(dyn Fn(ConfState) -> ConfState + Sync)) -> (ConfState, ConfState) {
        let mut change = (ConfState::Unknown, ConfState::Unknown);
        self.conf.send_modify(|c| {
            change = (*c, f(*c));
            *c = change.1;
        });
        change
    }

    fn with_raw_auth<R>(&self, f: impl FnOnce(&str, &[String]) -> R) -> R {
        let raw = lock(&self.raw);
        f(&raw.0, &raw.1)
    }

    fn adopt_auth(&self, guid: &str, cookies: &[String]) {
        let mut raw = lock(&self.raw);
        if raw.0 == guid && raw.1 == cookies {
            return;
        }
        if let Some(a) = session_auth(guid, cookies) {
            *raw = (guid.to_owned(), cookies.to_vec());
            self.auth.store(Arc::new(a));
        }
    }

    fn ended(&self) -> Option<Ended> {
        Session::ended(self)
    }

    fn end(&self, why: Ended) -> bool {
        Session::end(self, why)
    }

    fn mark_lost(&self, reason: LossReason) -> bool {
        Session::mark_lost(self, reason)
    }

    fn stop_poller(&self) {
        Session::stop_poller(self)
    }

    fn has_listeners(&self) -> bool {
        self.listeners.load(Ordering::Acquire) > 0
    }

    fn login(&self) -> (&[u8], bool) {
        (&self.login_answer, self.resumable)
    }

    fn signed_in_at_ms(&self) -> u64 {
        self.signed_in_at_ms
    }

    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}
