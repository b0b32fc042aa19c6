//! An agent's history, for the operator's views (`/agents`, `ccgate agents`, the status
//! page): while it is signed in, its last requests and its last error (which call, and why);
//! after, how its session ended (signed out and by whom, lost and why, or a sign-in that
//! failed and why) with the requests it made last. Endings stay for [`JOURNAL_AGE`] or the
//! newest [`JOURNAL_MAX`], whichever is fewer; with the shared store they go to its journal,
//! so every replica shows an agent that another replica signed out.
//!
//! Nothing here is a secret: methods, statuses, outcomes, retcodes, request ids (which the
//! edge accepts only as short tokens of `[A-Za-z0-9._:-]`) and conference ids.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::labels::Discarded;
use crate::metrics::Metrics;
use crate::shared::{JournalList, SharedStore, JOURNAL_AGE, JOURNAL_ENTRY_MAX_BYTES, JOURNAL_MAX};
use crate::sync::lock;

/// Requests an agent's view lists: enough to see the calls around a failure (a sign-in, a
/// conference, the stop that was refused), few enough that 10,000 agents cost a few MB.
pub const RECENT_REQUESTS: usize = 10;

/// Endings waiting for the shared store's journal. Losses come in bursts (a gateway restart
/// ends every session at once); beyond this many waiting, an ending is kept here only and
/// counted (`ccgate_input_discarded_total{what="journal_entry"}`).
const OUTBOX: usize = 1024;

/// The longest text field an entry read back from the store may have (a method, an outcome,
/// a retcode, a reason): longer is not something ccgate wrote.
const MAX_FIELD: usize = 64;
/// A request id's bound, as the edge accepts them.
const MAX_REQUEST_ID: usize = 128;

/// One request of the agent, as the edge answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// The method's log name (`stopVoiceToConf`).
    pub method: String,
    pub status: u16,
    pub outcome: String,
    pub request_id: String,
    /// The conference the agent's state named when the request was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conference: Option<u64>,
    pub at_ms: u64,
}

/// The last thing that went wrong for the agent: which call, and the cause (a retcode such as
/// `100-007`, a transport failure such as `unavailable`, or ccgate's own refusal such as
/// `not_chairperson`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub method: String,
    pub cause: String,
    pub at_ms: u64,
}

/// One request as a live session keeps it: labels and the id the edge already holds, so
/// noting a request copies no text.
#[derive(Debug, Clone)]
pub struct RequestNote {
    pub method: &'static str,
    pub status: u16,
    pub outcome: &'static str,
    pub request_id: http::HeaderValue,
    pub conference: Option<u64>,
    pub at_ms: u64,
}

impl RequestNote {
    pub fn entry(&self) -> RequestEntry {
        RequestEntry {
            method: self.method.to_owned(),
            status: self.status,
            outcome: self.outcome.to_owned(),
            request_id: self.request_id.to_str().unwrap_or("-").to_owned(),
            conference: self.conference,
            at_ms: self.at_ms,
        }
    }
}

/// The last error as a live session keeps it (see [`ErrorEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorNote {
    pub method: &'static str,
    pub cause: &'static str,
    pub at_ms: u64,
}

impl ErrorNote {
    pub fn entry(&self) -> ErrorEntry {
        ErrorEntry { method: self.method.to_owned(), cause: self.cause.to_owned(), at_ms: self.at_ms }
    }
}

/// What a live session keeps of its agent's activity (bounded: [`RECENT_REQUESTS`]).
#[derive(Debug, Default)]
pub struct Activity {
    requests: VecDeque<RequestNote>,
    last_error: Option<ErrorNote>,
}

impl Activity {
    pub fn note_request(&mut self, r: RequestNote) {
        if self.requests.len() == RECENT_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }

    pub fn note_error(&mut self, e: ErrorNote) {
        self.last_error = Some(e);
    }

    /// The requests, oldest first.
    pub fn requests(&self) -> Vec<RequestEntry> {
        self.requests.iter().map(RequestNote::entry).collect()
    }

    pub fn last_error(&self) -> Option<ErrorEntry> {
        self.last_error.as_ref().map(ErrorNote::entry)
    }
}

/// How an agent's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// Signed out: `reason` says by whom (`app`, `idle`, `shutdown`).
    SignedOut,
    /// The gateway ended it: `reason` is the loss reason.
    Lost,
    /// A sign-in that failed: `reason` is why (`no_credentials`, a retcode, `unavailable`...).
    SignInFailed,
}

/// One ending, as kept here and journaled in the shared store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub agent: String,
    /// `signed_out`, `lost:REASON` (as a live view says) or `signin_failed`.
    pub state: String,
    pub reason: String,
    pub at_ms: u64,
    /// When the session began (Unix ms; 0: none began, or unknown).
    #[serde(default)]
    pub signed_in_at_ms: u64,
    /// The replica that saw it end (its name in the store), when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The agent's last requests, oldest first.
    #[serde(default)]
    pub requests: Vec<RequestEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorEntry>,
    /// Failed sign-ins this entry stands for (the agent's retries update one entry).
    #[serde(default = "one")]
    pub attempts: u32,
    /// When this replica last journaled it (failed sign-ins are journaled again at most once
    /// a minute), and what it wrote, which the next write replaces; not part of the entry.
    #[serde(skip)]
    journaled_at_ms: u64,
    #[serde(skip)]
    journaled: Option<Arc<[u8]>>,
}

fn one() -> u32 {
    1
}

impl Ending {
    pub fn new(agent: &str, kind: EndKind, reason: &str, at_ms: u64) -> Self {
        let state = match kind {
            EndKind::SignedOut => "signed_out".to_owned(),
            EndKind::Lost => format!("lost:{reason}"),
            EndKind::SignInFailed => "signin_failed".to_owned(),
        };
        Self {
            agent: agent.to_owned(),
            state,
            reason: reason.to_owned(),
            at_ms,
            signed_in_at_ms: 0,
            replica: None,
            requests: Vec::new(),
            last_error: None,
            attempts: 1,
            journaled_at_ms: 0,
            journaled: None,
        }
    }

    /// Takes in the activity the agent's session had.
    pub fn with_activity(mut self, a: &Activity) -> Self {
        self.requests = a.requests();
        self.last_error = a.last_error();
        self
    }

    /// An entry read back from the store, validated as network input: `None` unless it is
    /// what ccgate writes (a work number, known states, bounded fields, a time not after
    /// `now_ms` by more than clocks disagree).
    pub fn parse(raw: &[u8], now_ms: u64) -> Option<Self> {
        if raw.len() > JOURNAL_ENTRY_MAX_BYTES {
            return None;
        }
        let e: Self = serde_json::from_slice(raw).ok()?;
        let short = |s: &str| s.len() <= MAX_FIELD;
        let state_ok = e.state == "signed_out" || e.state == "signin_failed" || e.state.starts_with("lost:");
        let requests_ok = e.requests.len() <= RECENT_REQUESTS
            && e.requests.iter().all(|r| {
                short(&r.method)
                    && short(&r.outcome)
                    && r.request_id.len() <= MAX_REQUEST_ID
                    && (100..=599).contains(&r.status)
            });
        let error_ok = e.last_error.as_ref().is_none_or(|x| short(&x.method) && short(&x.cause));
        let ok = crate::gateway::parse_agent_id(&e.agent).is_some_and(|n| n.to_string() == e.agent)
            && state_ok
            && short(&e.state)
            && short(&e.reason)
            && e.replica.as_deref().is_none_or(short)
            && requests_ok
            && error_ok
            && e.attempts >= 1
            && e.at_ms <= now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
        ok.then_some(e)
    }

    fn fresh(&self, now_ms: u64) -> bool {
        self.at_ms.saturating_add(JOURNAL_AGE.as_millis() as u64) > now_ms
    }
}

/// A failed sign-in of an agent that already has one kept is counted on that entry
/// (`attempts`) and journaled again at most this often: an app retrying a sign-in in a loop
/// costs one Redis write a minute, not one per attempt.
const FAILED_REJOURNAL_MS: u64 = 60_000;

/// How far in the future an entry read back from the store may be dated: the replicas'
/// clocks disagree by seconds, not by this; one dated later would stay "fresh" for ever.
const MAX_CLOCK_SKEW_MS: u64 = 3_600_000;

/// One write for the journal writer: the list, the entry, and the entry it replaces.
type Write = (JournalList, Arc<[u8]>, Option<Arc<[u8]>>);

/// What one gateway keeps, newest first in each list, every list at most [`JOURNAL_MAX`].
#[derive(Default)]
struct Kept {
    /// Sessions that ended (signed out, lost).
    ended: VecDeque<Arc<Ending>>,
    /// Failed sign-ins, one per agent (a later failure updates it).
    failed: VecDeque<Arc<Ending>>,
    /// Entries per agent in both lists: a request for an agent with none (nearly every
    /// request, once sessions are live) costs one lookup, not a scan.
    per_agent: HashMap<String, u32>,
}

impl Kept {
    fn list(&mut self, list: JournalList) -> &mut VecDeque<Arc<Ending>> {
        match list {
            JournalList::Ended => &mut self.ended,
            JournalList::FailedSignIns => &mut self.failed,
        }
    }

    fn push(&mut self, list: JournalList, e: Arc<Ending>, now: u64) {
        *self.per_agent.entry(e.agent.clone()).or_default() += 1;
        self.list(list).push_front(e);
        loop {
            let l = self.list(list);
            let drop = l.len() > JOURNAL_MAX || l.back().is_some_and(|old| !old.fresh(now));
            let Some(old) = drop.then(|| l.pop_back()).flatten() else { break };
            self.forget_one(&old.agent);
        }
    }

    fn forget_one(&mut self, agent: &str) {
        if let Some(n) = self.per_agent.get_mut(agent) {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(agent);
            }
        }
    }

    /// The agent's newest entry, in either list.
    fn newest_mut(&mut self, agent: &str) -> Option<&mut Arc<Ending>> {
        if !self.per_agent.contains_key(agent) {
            return None;
        }
        let ended = self.ended.iter().position(|e| e.agent == agent);
        let failed = self.failed.iter().position(|e| e.agent == agent);
        match (ended, failed) {
            (Some(i), Some(j)) if self.failed[j].at_ms > self.ended[i].at_ms => self.failed.get_mut(j),
            (Some(i), _) => self.ended.get_mut(i),
            (None, Some(j)) => self.failed.get_mut(j),
            (None, None) => None,
        }
    }
}

/// One gateway's history: kept here (the whole of it in process; with the shared store, what
/// this replica shows while Redis is away) and, with the shared store, journaled there.
pub struct History {
    kept: Mutex<Kept>,
    /// To the journal writer, once replication has started with a shared store.
    outbox: OnceLock<mpsc::Sender<Write>>,
    /// This replica's name in the store, for its entries.
    replica: OnceLock<String>,
    /// The journal as last read, and when: views within [`JOURNAL_READ_EVERY`] share it.
    read: Mutex<Option<(tokio::time::Instant, Endings)>>,
    metrics: Metrics,
}

/// Entries shared by the views that read them, newest first.
type Endings = Arc<Vec<Arc<Ending>>>;

/// How long one read of the journal serves the views: the status page reloads every 5 s in
/// every tab open on it, and each read is two `LRANGE`s of up to 1,000 entries.
const JOURNAL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl History {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            kept: Mutex::new(Kept::default()),
            outbox: OnceLock::new(),
            replica: OnceLock::new(),
            read: Mutex::new(None),
            metrics,
        })
    }

    /// Journals entries in `store` from now on (one writer task, [`OUTBOX`] entries waiting
    /// at most). Call once, in a runtime.
    pub fn journal_to(&self, store: Arc<dyn SharedStore>) {
        let (tx, mut rx) = mpsc::channel::<Write>(OUTBOX);
        if self.outbox.set(tx).is_err() {
            return;
        }
        let _ = self.replica.set(store.replica().to_owned());
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some((list, entry, replaces)) = rx.recv().await {
                if let Err(e) = store.journal(list, &entry, replaces.as_deref()).await {
                    // Kept here still; only the other replicas will not see it.
                    tracing::debug!(error = %e, "shared store: could not journal an agent's ending");
                    metrics.count_discarded(Discarded::JournalEntry, 1);
                }
            }
        });
    }

    /// Sends `e` to the journal writer (in place of `replaces`); what was sent, if it was.
    fn send(&self, list: JournalList, e: &Ending, replaces: Option<Arc<[u8]>>) -> Option<Arc<[u8]>> {
        let tx = self.outbox.get()?;
        let bytes: Option<Arc<[u8]>> =
            serde_json::to_vec(e).ok().filter(|b| b.len() <= JOURNAL_ENTRY_MAX_BYTES).map(Arc::from);
        let sent = bytes.filter(|b| tx.try_send((list, b.clone(), replaces)).is_ok());
        if sent.is_none() {
            self.metrics.count_discarded(Discarded::JournalEntry, 1);
        }
        sent
    }

    /// Records how a session ended: kept here and, with the shared store, journaled there.
    pub fn record(&self, mut e: Ending) {
        e.replica = self.replica.get().cloned();
        self.send(JournalList::Ended, &e, None);
        lock(&self.kept).push(JournalList::Ended, Arc::new(e), crate::clock::unix_ms());
    }

    /// Records a failed sign-in. An agent keeps one such entry: a later failure updates it
    /// (its time, reason and error, `attempts` + 1) and is journaled at most once per
    /// [`FAILED_REJOURNAL_MS`], so retries in a loop cost neither memory nor Redis writes.
    pub fn record_failed(&self, mut e: Ending) {
        e.replica = self.replica.get().cloned();
        let now = e.at_ms;
        let mut kept = lock(&self.kept);
        let found = match kept.per_agent.contains_key(&e.agent) {
            true => kept.failed.iter().position(|x| x.agent == e.agent),
            false => None,
        };
        let previous = found.and_then(|i| kept.failed.remove(i));
        // A failure of more than a day ago is forgotten, not continued.
        let previous = match previous {
            Some(old) if old.fresh(now) => Some(old),
            Some(old) => {
                kept.forget_one(&old.agent);
                None
            }
            None => None,
        };
        if let Some(mut entry) = previous {
            // The agent's one entry, updated and moved to the front (the newest).
            let old = Arc::make_mut(&mut entry);
            let journal = now.saturating_sub(old.journaled_at_ms) >= FAILED_REJOURNAL_MS;
            e.attempts = old.attempts.saturating_add(1);
            e.journaled_at_ms = if journal { now } else { old.journaled_at_ms };
            e.journaled = old.journaled.take();
            if e.requests.is_empty() {
                e.requests = std::mem::take(&mut old.requests);
            }
            *old = e;
            let copy = journal.then(|| old.clone());
            kept.failed.push_front(entry);
            drop(kept);
            if let Some(copy) = copy {
                // In place of what this replica journaled before: one entry per agent there too.
                let sent = self.send(JournalList::FailedSignIns, &copy, copy.journaled.clone());
                if let Some(sent) = sent {
                    self.remember_journaled(&copy.agent, sent);
                }
            }
            return;
        }
        e.journaled_at_ms = now;
        e.journaled = self.send(JournalList::FailedSignIns, &e, None);
        kept.push(JournalList::FailedSignIns, Arc::new(e), crate::clock::unix_ms());
    }

    /// What was just journaled for `agent`'s failed sign-in, for the next write to replace.
    fn remember_journaled(&self, agent: &str, sent: Arc<[u8]>) {
        let mut kept = lock(&self.kept);
        if let Some(e) = kept.failed.iter_mut().find(|x| x.agent == agent) {
            Arc::make_mut(e).journaled = Some(sent);
        }
    }

    /// A request for an agent with no session here: it joins the agent's newest entry, if
    /// one is kept (a request after a sign-out, or the retry of a failed sign-in); nothing is
    /// made for an agent without one.
    pub fn note_request(&self, agent: &str, r: &RequestNote, error: Option<ErrorNote>) {
        let mut kept = lock(&self.kept);
        let Some(e) = kept.newest_mut(agent) else { return };
        let e = Arc::make_mut(e);
        if e.requests.len() == RECENT_REQUESTS {
            e.requests.remove(0);
        }
        e.requests.push(r.entry());
        // A failed sign-in's own error (its retcode) says more than the outcome of the
        // request that carried it; any other is replaced by the newest.
        let own = e.state == "signin_failed" && e.last_error.as_ref().is_some_and(|x| x.at_ms == e.at_ms);
        if let Some(error) = error.filter(|_| !own) {
            e.last_error = Some(error.entry());
        }
    }

    /// The entries kept here, newest first (of `one` only, if given), at most `max`. Cheap
    /// under the lock: the entries are shared, not copied.
    pub fn kept(&self, one: Option<&str>, max: usize) -> Vec<Arc<Ending>> {
        let now = crate::clock::unix_ms();
        let mut out: Vec<Arc<Ending>> = {
            let kept = lock(&self.kept);
            let mine = |e: &&Arc<Ending>| e.fresh(now) && one.is_none_or(|a| e.agent == a);
            kept.ended.iter().filter(mine).chain(kept.failed.iter().filter(mine)).cloned().collect()
        };
        out.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        out.truncate(max);
        out
    }

    /// The entries in the store's journal, newest first (of `one` only, if given), at most
    /// `max`; entries that are not what ccgate writes are dropped and counted. One read
    /// serves for [`JOURNAL_READ_EVERY`].
    pub async fn journaled(
        &self,
        store: &dyn SharedStore,
        one: Option<&str>,
        max: usize,
    ) -> Result<Vec<Arc<Ending>>, crate::shared::StoreError> {
        let now = crate::clock::unix_ms();
        let cached =
            lock(&self.read).as_ref().filter(|(at, _)| at.elapsed() < JOURNAL_READ_EVERY).map(|(_, all)| all.clone());
        let all = match cached {
            Some(all) => all,
            None => {
                let mut all = Vec::new();
                for list in [JournalList::Ended, JournalList::FailedSignIns] {
                    for entry in store.journal_entries(list, JOURNAL_MAX).await? {
                        match Ending::parse(&entry, now) {
                            Some(e) => all.push(Arc::new(e)),
                            None => self.metrics.count_discarded(Discarded::JournalEntry, 1),
                        }
                    }
                }
                all.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
                let all = Arc::new(all);
                *lock(&self.read) = Some((tokio::time::Instant::now(), all.clone()));
                all
            }
        };
        Ok(all.iter().filter(|e| e.fresh(now) && one.is_none_or(|a| e.agent == a)).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn note(i: u64) -> RequestNote {
        RequestNote {
            method: "stopVoiceToConf",
            status: 409,
            outcome: "not_chairperson",
            request_id: http::HeaderValue::from_static("rid-1"),
            conference: Some(7),
            at_ms: i,
        }
    }

    fn ending(agent: &str, at_ms: u64) -> Ending {
        Ending::new(agent, EndKind::SignedOut, "app", at_ms)
    }

    #[test]
    fn activity_keeps_the_last_requests_and_the_last_error() {
        let mut a = Activity::default();
        for i in 0..RECENT_REQUESTS as u64 + 3 {
            a.note_request(note(i));
        }
        let r = a.requests();
        assert_eq!(r.len(), RECENT_REQUESTS);
        assert_eq!((r[0].at_ms, r[RECENT_REQUESTS - 1].at_ms), (3, RECENT_REQUESTS as u64 + 2), "oldest first");
        a.note_error(ErrorNote { method: "getEvents", cause: "unavailable", at_ms: 1 });
        a.note_error(ErrorNote { method: "stopVoiceToConf", cause: "not_chairperson", at_ms: 2 });
        let e = a.last_error().unwrap();
        assert_eq!((e.method.as_str(), e.cause.as_str()), ("stopVoiceToConf", "not_chairperson"));
    }

    #[test]
    fn an_entry_ccgate_wrote_reads_back_and_anything_else_does_not() {
        let now = crate::clock::unix_ms();
        let mut a = Activity::default();
        a.note_request(note(now));
        let good = Ending::new("153", EndKind::Lost, "guid_refused", now).with_activity(&a);
        assert_eq!(good.state, "lost:guid_refused");
        let raw = serde_json::to_vec(&good).unwrap();
        assert_eq!(Ending::parse(&raw, now), Some(good.clone()));
        let bad = |f: &dyn Fn(&mut Ending)| {
            let mut e = good.clone();
            f(&mut e);
            Ending::parse(&serde_json::to_vec(&e).unwrap(), now)
        };
        assert!(bad(&|e| e.agent = "0153".into()).is_none(), "not a canonical work number");
        assert!(bad(&|e| e.agent = "abc".into()).is_none());
        assert!(bad(&|e| e.state = "owned".into()).is_none(), "a state ccgate does not write");
        assert!(bad(&|e| e.reason = "x".repeat(MAX_FIELD + 1)).is_none());
        assert!(bad(&|e| e.requests = vec![e.requests[0].clone(); RECENT_REQUESTS + 1]).is_none());
        assert!(bad(&|e| e.requests[0].status = 42).is_none());
        assert!(bad(&|e| e.requests[0].request_id = "r".repeat(MAX_REQUEST_ID + 1)).is_none());
        assert!(bad(&|e| e.at_ms = now + 2 * MAX_CLOCK_SKEW_MS).is_none(), "dated in the future: fresh for ever");
        assert!(bad(&|e| e.attempts = 0).is_none());
        assert!(Ending::parse(b"not json", now).is_none());
        assert!(Ending::parse(&vec![b' '; JOURNAL_ENTRY_MAX_BYTES + 1], now).is_none());
    }

    #[test]
    fn the_history_is_bounded_by_count_and_age_newest_first() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        let day = JOURNAL_AGE.as_millis() as u64;
        h.record(ending("101", now - day - 1));
        assert!(h.kept(None, 10).is_empty(), "older than a day is gone");
        for i in 0..JOURNAL_MAX as u64 + 2 {
            h.record(ending(&(200 + i).to_string(), now));
        }
        let kept = h.kept(None, usize::MAX);
        assert_eq!(kept.len(), JOURNAL_MAX);
        assert_eq!(kept[0].agent, (200 + JOURNAL_MAX as u64 + 1).to_string(), "newest first");
        assert_eq!(h.kept(Some("202"), 10).len(), 1);
        assert!(h.kept(Some("200"), 10).is_empty(), "the oldest made room");
    }

    #[test]
    fn a_request_joins_the_agents_newest_ending_and_makes_none() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        h.note_request("153", &note(now), None);
        assert!(h.kept(None, 10).is_empty(), "no ending for an agent that never had one");
        h.record(ending("153", now - 2));
        h.record(ending("153", now - 1));
        for i in 0..RECENT_REQUESTS as u64 + 1 {
            h.note_request(
                "153",
                &note(now + i),
                Some(ErrorNote { method: "signIn", cause: "no_session", at_ms: now }),
            );
        }
        let kept = h.kept(Some("153"), 10);
        assert_eq!(kept[0].requests.len(), RECENT_REQUESTS, "bounded");
        assert_eq!(kept[0].last_error.as_ref().map(|e| e.cause.as_str()), Some("no_session"));
        assert!(kept[1].requests.is_empty(), "the older ending is left as it was");
        // The last error is the newest one, not the first after the ending.
        h.note_request(
            "153",
            &note(now + 50),
            Some(ErrorNote { method: "login", cause: "forbidden", at_ms: now + 50 }),
        );
        assert_eq!(h.kept(Some("153"), 1)[0].last_error.as_ref().map(|e| e.cause.as_str()), Some("forbidden"));
        // A failed sign-in's own error (its retcode) is not replaced by the request's outcome.
        let mut failed = Ending::new("154", EndKind::SignInFailed, "100-006", now);
        failed.last_error = Some(ErrorEntry { method: "login".into(), cause: "100-006".into(), at_ms: now });
        h.record_failed(failed);
        h.note_request("154", &note(now), Some(ErrorNote { method: "login", cause: "rejected", at_ms: now }));
        assert_eq!(h.kept(Some("154"), 1)[0].last_error.as_ref().map(|e| e.cause.as_str()), Some("100-006"));
    }

    /// Review of issue 40: one agent's failed sign-ins in a loop took every other agent's
    /// history with them. Now an agent has one failed entry, and failures have their own
    /// bound, apart from the sessions that ended.
    #[test]
    fn failed_sign_ins_in_a_loop_keep_one_entry_and_never_push_out_endings() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        h.record(ending("153", now));
        for i in 0..2 * JOURNAL_MAX as u64 {
            h.record_failed(Ending::new("160", EndKind::SignInFailed, "no_credentials", now + i));
        }
        let kept = h.kept(None, usize::MAX);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!((kept[0].agent.as_str(), kept[0].attempts), ("160", 2 * JOURNAL_MAX as u32));
        assert_eq!(kept[1].agent, "153", "the ending is still there");
        // Many agents' failures fill their own list only.
        for i in 0..JOURNAL_MAX as u64 + 1 {
            h.record_failed(Ending::new(&(200 + i).to_string(), EndKind::SignInFailed, "no_credentials", now));
        }
        assert_eq!(h.kept(Some("153"), 1).len(), 1, "endings are bounded apart from failures");
        assert!(h.kept(Some("160"), 1).is_empty(), "the oldest failure made room");
        assert_eq!(lock(&h.kept).per_agent.len(), JOURNAL_MAX + 1, "the index follows what is kept");
    }

    /// Review of issue 40: a looping agent was journaled as a new entry every minute, so a
    /// few looping agents filled the cluster's list. Each write now replaces the last.
    #[tokio::test]
    async fn a_looping_agent_stays_one_entry_in_the_journal() {
        let hub = crate::shared::memory::MemoryHub::new(Duration::from_secs(30), Duration::from_secs(60));
        let store: Arc<dyn SharedStore> = hub.join();
        let h = History::new(Metrics::default());
        // The writer's queue, drained here rather than by its task: every write it would make.
        let (tx, mut rx) = mpsc::channel::<Write>(OUTBOX);
        assert!(h.outbox.set(tx).is_ok());
        let now = crate::clock::unix_ms();
        let start = now - 10 * 60_000;
        let mut writes = 0;
        for i in 0..60u64 {
            h.record_failed(Ending::new("160", EndKind::SignInFailed, "no_credentials", start + i * 10_000));
            while let Ok((list, entry, replaces)) = rx.try_recv() {
                store.journal(list, &entry, replaces.as_deref()).await.unwrap();
                writes += 1;
            }
        }
        assert!((10..=11).contains(&writes), "once a minute: {writes}");
        let raw = store.journal_entries(JournalList::FailedSignIns, JOURNAL_MAX).await.unwrap();
        assert_eq!(raw.len(), 1, "one entry per agent in the journal too");
        let e = Ending::parse(&raw[0], now).unwrap();
        assert!(e.attempts >= 55, "the entry journaled last counts the retries: {}", e.attempts);
    }

    #[test]
    fn a_repeated_failure_is_the_newest_and_the_last_evicted() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        h.record_failed(Ending::new("100", EndKind::SignInFailed, "no_credentials", now - 1000));
        for i in 0..JOURNAL_MAX as u64 - 1 {
            h.record_failed(Ending::new(&(200 + i).to_string(), EndKind::SignInFailed, "no_credentials", now - 900));
        }
        h.record_failed(Ending::new("100", EndKind::SignInFailed, "no_credentials", now));
        h.record_failed(Ending::new("5000", EndKind::SignInFailed, "no_credentials", now));
        assert_eq!(h.kept(Some("100"), 1).len(), 1, "100 failed last: it stays");
    }

    #[test]
    fn a_failure_older_than_a_day_is_not_continued() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        let day = JOURNAL_AGE.as_millis() as u64;
        h.record_failed(Ending::new("101", EndKind::SignInFailed, "no_credentials", now));
        h.record_failed(Ending::new("100", EndKind::SignInFailed, "no_credentials", now - 2 * day));
        h.record_failed(Ending::new("100", EndKind::SignInFailed, "100-006", now));
        assert_eq!(h.kept(Some("100"), 1)[0].attempts, 1);
    }

    /// The per-agent index against the lists after a random mix of endings and failures,
    /// some stale, past both bounds.
    #[test]
    fn the_index_matches_the_lists() {
        let h = History::new(Metrics::default());
        let now = crate::clock::unix_ms();
        let day = JOURNAL_AGE.as_millis() as u64;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let agent = (x % 1500).to_string();
            let at = if x.is_multiple_of(7) { now - day - 1 } else { now - (x % 1000) };
            if x.is_multiple_of(3) {
                h.record(Ending::new(&agent, EndKind::Lost, "x", at));
            } else {
                h.record_failed(Ending::new(&agent, EndKind::SignInFailed, "y", at));
            }
        }
        let k = lock(&h.kept);
        let mut want: HashMap<String, u32> = HashMap::new();
        for e in k.ended.iter().chain(k.failed.iter()) {
            *want.entry(e.agent.clone()).or_default() += 1;
        }
        assert!(k.ended.len() <= JOURNAL_MAX && k.failed.len() <= JOURNAL_MAX);
        assert_eq!(k.per_agent, want);
    }
}
