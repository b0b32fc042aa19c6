//! The agents' history on a gateway's store (`history.rs` keeps it): what a failed sign-in
//! leaves, what the edge notes of each request, and the admin's view that puts the live
//! sessions, the other replicas' agents and the endings together.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::agent::Session;
use super::error::SessionError;
use super::history::{EndKind, Ending, ErrorEntry, ErrorNote, RequestNote};
use super::store::{SessionStore, MAX_AGENTS_LISTED};
use super::view::{AgentView, EndingView, Listing};
use crate::clock::unix_ms;
use crate::gateway::{GatewayMethod, Retcode};
use crate::shared::JOURNAL_MAX;
use crate::sync::lock;

/// Endings one agent's view lists: a shift's worth of sign-ins and losses.
const RECENT_ENDINGS: usize = 10;

impl SessionStore {
    /// A sign-in that failed joins the history, so an operator sees it and why.
    pub(super) fn record_failed_sign_in(&self, agent: &str, e: &SessionError) {
        let reason = match e {
            SessionError::NoSession | SessionError::Lost => return,
            SessionError::AlreadySignedIn(_) => "already_signed_in",
            SessionError::NoCredentials => "no_credentials",
            SessionError::Refused(r) => Retcode::parse(&r.retcode).as_str(),
            SessionError::Upstream(u) => crate::labels::UpstreamErrorKind::from(u).as_str(),
            SessionError::AtCapacity => "at_capacity",
            SessionError::FileLimit => "file_limit",
            SessionError::SignInQueueFull => "queue_full",
            SessionError::Store(_) => "store_unavailable",
            SessionError::Unconfirmed => "unconfirmed",
            SessionError::Internal(_) => "internal",
        };
        let mut ending = Ending::new(agent, EndKind::SignInFailed, reason, unix_ms());
        // Whatever the agent asked of this replica before, with the error of the sign-in
        // itself (the gateway's retcode when it answered).
        if let Some(s) = self.current(agent) {
            ending = s.activity(|a| ending.with_activity(a));
        }
        ending.last_error = Some(ErrorEntry {
            method: GatewayMethod::Login.log_name().into(),
            cause: reason.into(),
            at_ms: ending.at_ms,
        });
        self.history.record_failed(ending);
    }

    /// What the admin shows of the agents: every agent this replica holds, with the shared
    /// store every other agent the cluster knows, and every agent whose session ended within
    /// the history's bounds (at most [`MAX_AGENTS_LISTED`] in all); with `one`, that agent
    /// only, with its recent events, requests and endings. Sorted by work number. `partial`
    /// when the shared store could not be read: the list is then this replica's alone.
    pub async fn agents(&self, one: Option<&str>) -> Listing {
        let local: Vec<Arc<Session>> = match one {
            Some(agent) => self.current(agent).into_iter().collect(),
            None => lock(&self.slots).values().filter_map(|s| s.session.load_full()).take(MAX_AGENTS_LISTED).collect(),
        };
        let mut views = Vec::with_capacity(local.len());
        for s in &local {
            let (polled_by, here) = self.replication.poller_of(&s.agent_id, &s.sharing).await;
            views.push(AgentView::of_session(&self.identity.name, s, polled_by, here, one.is_some()));
        }
        // A copy that ended here says nothing of the agent now: another replica may have
        // signed it in again since (this one adopts the new session only when asked to serve
        // it). The record decides for those.
        let known: Vec<String> = local.iter().filter(|s| s.ended().is_none()).map(|s| s.agent_id.clone()).collect();
        let room = MAX_AGENTS_LISTED.saturating_sub(views.len()) + local.len();
        let mut partial = false;
        match self.replication.remote_agents(one, &known, room).await {
            Ok(remote) => {
                let ended: HashMap<String, usize> = views
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.state != "active")
                    .map(|(i, v)| (v.agent.clone(), i))
                    .collect();
                for r in remote {
                    match ended.get(&r.agent).copied() {
                        // Signed in again elsewhere: the record's view replaces the ended copy's.
                        Some(i) if r.state == "active" => views[i] = AgentView::of_remote(&self.identity.name, r),
                        Some(_) => {}
                        None if views.len() < MAX_AGENTS_LISTED => {
                            views.push(AgentView::of_remote(&self.identity.name, r))
                        }
                        None => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "shared store away; the agents view shows this replica's only");
                partial = true;
            }
        }
        // With the store away, the journal is not read either (not even a recent copy): a
        // partial view is this replica's alone, all of it.
        let (endings, complete) = self.endings(one, !partial).await;
        partial |= !complete;
        self.add_history(&mut views, &endings, one.is_some());
        views.sort_by_key(|v| v.agent.parse::<u32>().unwrap_or(u32::MAX));
        Listing { agents: views, partial }
    }

    /// The endings of this gateway's agents (of `one` only, if given), newest first: from
    /// the shared store's journal with this replica's own that it lacks (one the writer
    /// could not send yet), or this replica's alone, and `false`, when the store is away (or
    /// `store_answers` says it just was).
    async fn endings(&self, one: Option<&str>, store_answers: bool) -> (Vec<Arc<Ending>>, bool) {
        let kept = self.history.kept(one, 2 * JOURNAL_MAX);
        let Some(store) = self.replication.shared_store() else { return (kept, true) };
        if !store_answers {
            return (kept, false);
        }
        match self.history.journaled(&*store, one, 2 * JOURNAL_MAX).await {
            Ok(journaled) => {
                // This replica's own copy of an entry wins: it has the requests and errors
                // that came after it was journaled.
                let key = |e: &Ending| (e.agent.clone(), e.at_ms, e.state.clone());
                let own: HashSet<_> = kept.iter().map(|e| key(e)).collect();
                let mut all = kept;
                all.extend(journaled.into_iter().filter(|e| !own.contains(&key(e))));
                all.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
                // A failed sign-in is one entry per agent and replica: its newest state (this
                // replica's copy moves on between two writes to the journal).
                let mut failed = HashSet::new();
                all.retain(|e| e.state != "signin_failed" || failed.insert((e.agent.clone(), e.replica.clone())));
                all.truncate(2 * JOURNAL_MAX);
                (all, true)
            }
            Err(e) => {
                tracing::debug!(error = %e, "shared store away; the agents' history is this replica's only");
                (kept, false)
            }
        }
    }

    /// Completes `views` from the agents' endings (newest first): an agent shown without a
    /// live session gets when and why it ended; an agent not shown at all (no replica holds
    /// it any more) is shown from its newest ending. With `detail`, every ending is listed.
    fn add_history(&self, views: &mut Vec<AgentView>, endings: &[Arc<Ending>], detail: bool) {
        // Each agent's endings, newest first (`endings` is).
        let mut by_agent: HashMap<&str, Vec<&Ending>> = HashMap::new();
        for e in endings {
            by_agent.entry(e.agent.as_str()).or_default().push(e);
        }
        let listed = |mine: &[&Ending]| mine.iter().take(RECENT_ENDINGS).map(|e| EndingView::of(e)).collect();
        for v in views.iter_mut() {
            let Some(mine) = by_agent.get(v.agent.as_str()) else { continue };
            if detail {
                v.endings = Some(listed(mine));
            }
            // When and why this session ended: the newest ending of its kind since it began
            // (not a later failed sign-in, not an earlier session's).
            let this = mine.iter().find(|e| e.state == v.state && e.at_ms >= v.signed_in_at_ms());
            if let Some(e) = this.filter(|_| v.state != "active") {
                v.take_ending(e, detail);
            }
        }
        let shown: HashSet<String> = views.iter().map(|v| v.agent.clone()).collect();
        for e in endings {
            if views.len() >= MAX_AGENTS_LISTED {
                break;
            }
            let Some(mine) = by_agent.remove(e.agent.as_str()).filter(|_| !shown.contains(&e.agent)) else { continue };
            let mut v = AgentView::of_ending(&self.identity.name, e, detail);
            if detail {
                v.endings = Some(listed(&mine));
            }
            views.push(v);
        }
    }

    /// A request the edge answered for `agent`: it joins the agent's activity (its session
    /// here, or its newest ending when it has none). `error`: what went wrong here, if
    /// anything did (see [`Session::note_request`]).
    pub fn note_request(&self, agent: &str, mut r: RequestNote, error: Option<ErrorNote>) {
        match self.current(agent) {
            Some(s) => {
                r.conference = r.conference.or_else(|| s.conf().conf_id());
                s.note_request(r, error);
            }
            None => self.history.note_request(agent, &r, error),
        }
    }
}
