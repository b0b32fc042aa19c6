//! What the admin listener shows of each agent (`GET /agents`, `GET /agents/{id}`,
//! `ccgate agents`): gateway and work number, state, when it signed in, its conference, who
//! polls it, its last event and last error (which call, and why); with `/agents/{id}`, its
//! last requests, events and endings. An agent whose session ended (signed out, lost, a
//! failed sign-in) is shown from its history (`history.rs`). Never a Guid, cookie or
//! password: the view is built from named fields, not from the session's debug output.

use serde::Serialize;

use super::agent::Session;
use super::conference::ConfState;
use super::error::Ended;
use super::history::{Ending, ErrorEntry, RequestEntry};

#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// The gateway's name (`name` of its `[[gateways]]` entry, `default` for `[gateway]`).
    pub gateway: String,
    pub agent: String,
    /// `active`, `lost:REASON`, `signed_out` or `signin_failed`.
    pub state: String,
    /// When the session ended (or the sign-in failed), from the agent's history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Why: who signed it out (`app`, `idle`, `shutdown`), the loss reason, or why the sign-in
    /// failed (`no_credentials`, a retcode, a transport failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_in_at: Option<String>,
    /// The same in Unix ms (0: unknown), to tell an ending of this session from one before.
    #[serde(skip)]
    signed_in_ms: u64,
    pub conference: ConfState,
    /// `true` chair, `false` not, `null` unknown (missed events).
    pub chairperson: Option<bool>,
    /// The replica that polls the gateway for the agent (its name), if any does.
    pub polled_by: Option<String>,
    /// Whether that is this replica.
    pub polled_here: bool,
    /// The polling replica's host and admin listener, as it registered them in the shared
    /// store (this replica's own when it polls); absent when unknown. Filled in by the admin
    /// listener (`admin::Replicas::name_pollers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polled_by_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polled_by_admin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// The tightest rate limit at the agent's last limited request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitView>,
    /// With `GET /agents/{id}`: the newest events, by type and time (no payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_events: Option<Vec<EventView>>,
    /// With `GET /agents/{id}`: the agent's last requests to this replica, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_requests: Option<Vec<RequestView>>,
    /// With `GET /agents/{id}`: how its earlier sessions ended, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endings: Option<Vec<EndingView>>,
}

/// One of the agent's requests.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub method: String,
    pub status: u16,
    pub outcome: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conference: Option<u64>,
    pub at: String,
}

impl RequestView {
    fn of(r: &RequestEntry) -> Self {
        Self {
            method: r.method.clone(),
            status: r.status,
            outcome: r.outcome.clone(),
            request_id: r.request_id.clone(),
            conference: r.conference,
            at: rfc3339(r.at_ms),
        }
    }
}

/// One ending of the agent's history.
#[derive(Debug, Clone, Serialize)]
pub struct EndingView {
    pub state: String,
    pub reason: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_in_at: Option<String>,
    /// The replica that saw it (its name in the shared store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Failed sign-ins it stands for (an agent's retries update one entry).
    pub attempts: u32,
}

impl EndingView {
    pub(super) fn of(e: &Ending) -> Self {
        Self {
            state: e.state.clone(),
            reason: e.reason.clone(),
            at: rfc3339(e.at_ms),
            signed_in_at: known_time(e.signed_in_at_ms),
            replica: e.replica.clone(),
            attempts: e.attempts,
        }
    }
}

/// The tightest limit at the last limited request: `remaining` of `quota` per `window_secs`,
/// and whether it refused that request.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    pub limit: String,
    pub quota: u32,
    pub window_secs: u64,
    pub remaining: u32,
    pub refused: bool,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// The call that failed: a gateway method's log name (`stopVoiceToConf`, or the
    /// poller's `getEvents`/`updateGuid`) or the app API's (`signIn`).
    pub method: String,
    /// Why: a retcode (`100-007`), a transport failure (`timeout`, `unavailable`, ...) or
    /// ccgate's own refusal (`not_chairperson`, `rate_limited`, ...).
    pub what: String,
    pub at: String,
}

impl LastError {
    fn of(e: &ErrorEntry) -> Self {
        Self { method: e.method.clone(), what: e.cause.clone(), at: rfc3339(e.at_ms) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
}

/// Events a detail view lists.
pub const RECENT_EVENTS: usize = 20;

fn chair(conf: ConfState) -> Option<bool> {
    match conf {
        ConfState::Chair { .. } => Some(true),
        ConfState::Unknown => None,
        _ => Some(false),
    }
}

fn known_time(ms: u64) -> Option<String> {
    (ms > 0).then(|| rfc3339(ms))
}

impl AgentView {
    /// A session this replica holds; `polled_by`: who polls it.
    pub(super) fn of_session(
        gateway: &str,
        s: &Session,
        polled_by: Option<String>,
        polled_here: bool,
        detail: bool,
    ) -> Self {
        let conf = s.conf();
        let (requests, last_error) = s.activity(|a| (detail.then(|| a.requests()), a.last_error()));
        Self {
            gateway: gateway.to_owned(),
            agent: s.agent_id.clone(),
            state: match s.ended() {
                None => "active".into(),
                Some(Ended::Lost(reason)) => format!("lost:{}", reason.as_str()),
                Some(Ended::SignedOut) => "signed_out".into(),
            },
            ended_at: None,
            reason: None,
            signed_in_at: known_time(s.signed_in_at_ms),
            signed_in_ms: s.signed_in_at_ms,
            conference: conf,
            chairperson: chair(conf),
            polled_by,
            polled_here,
            polled_by_host: None,
            polled_by_admin: None,
            last_event_at: s.events.last_at_ms().map(rfc3339),
            last_error: last_error.as_ref().map(LastError::of),
            limit: s.last_limit().map(|l| LimitView {
                limit: l.limit.to_string(),
                quota: l.quota,
                window_secs: l.window_secs,
                remaining: l.remaining,
                refused: l.refused,
                at: rfc3339(l.at_ms),
            }),
            recent_events: detail.then(|| {
                s.events
                    .recent(RECENT_EVENTS)
                    .into_iter()
                    .map(|(id, kind, at)| EventView { id, kind: kind.to_string(), at: rfc3339(at) })
                    .collect()
            }),
            recent_requests: requests.map(|r| r.iter().rev().map(RequestView::of).collect()),
            endings: None,
        }
    }

    /// An agent no replica holds a session of, from its newest ending.
    pub(super) fn of_ending(gateway: &str, e: &Ending, detail: bool) -> Self {
        Self {
            gateway: gateway.to_owned(),
            agent: e.agent.clone(),
            state: e.state.clone(),
            ended_at: Some(rfc3339(e.at_ms)),
            reason: Some(e.reason.clone()),
            signed_in_at: known_time(e.signed_in_at_ms),
            signed_in_ms: e.signed_in_at_ms,
            conference: ConfState::None,
            chairperson: Some(false),
            polled_by: None,
            polled_by_host: None,
            polled_by_admin: None,
            polled_here: false,
            last_event_at: None,
            last_error: e.last_error.as_ref().map(LastError::of),
            limit: None,
            recent_events: None,
            recent_requests: detail.then(|| e.requests.iter().rev().map(RequestView::of).collect()),
            endings: None,
        }
    }

    /// An agent another replica holds, as the replication side read it from the shared store.
    pub(super) fn of_remote(gateway: &str, r: Remote) -> Self {
        Self {
            gateway: gateway.to_owned(),
            agent: r.agent,
            state: r.state,
            ended_at: None,
            reason: None,
            signed_in_at: known_time(r.signed_in_at_ms),
            signed_in_ms: r.signed_in_at_ms,
            conference: r.conf,
            chairperson: chair(r.conf),
            polled_by: r.polled_by,
            polled_here: false,
            polled_by_host: None,
            polled_by_admin: None,
            last_event_at: None,
            last_error: None,
            limit: None,
            recent_events: None,
            recent_requests: None,
            endings: None,
        }
    }
}

/// The agents a view asks for, and whether the list is this replica's alone (the shared
/// store could not be read).
#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub agents: Vec<AgentView>,
    pub partial: bool,
}

impl AgentView {
    /// When it signed in, Unix ms (0: unknown), for comparing with its endings.
    pub(super) fn signed_in_at_ms(&self) -> u64 {
        self.signed_in_ms
    }

    /// An agent shown without a live session (lost, or signed out on another replica): when
    /// and why it ended, from its history; its last requests and error if it has none.
    pub(super) fn take_ending(&mut self, e: &Ending, detail: bool) {
        self.ended_at = Some(rfc3339(e.at_ms));
        self.reason = Some(e.reason.clone());
        if self.last_error.is_none() {
            self.last_error = e.last_error.as_ref().map(LastError::of);
        }
        if detail && self.recent_requests.as_ref().is_none_or(Vec::is_empty) {
            self.recent_requests = Some(e.requests.iter().rev().map(RequestView::of).collect());
        }
    }
}

/// An agent held by another replica, as the replication side translated its record in the
/// shared store: this file renders it and knows nothing of the record.
pub(crate) struct Remote {
    pub agent: String,
    /// `active`, `lost:REASON` or `signed_out`, as for a local copy.
    pub state: String,
    /// Unix ms; 0 when unknown.
    pub signed_in_at_ms: u64,
    pub conf: ConfState,
    /// The replica holding its lease.
    pub polled_by: Option<String>,
}

/// The columns a table of agents shows (`ccgate agents`, the status page), in order.
pub const COLUMNS: [&str; 10] =
    ["agent", "gateway", "state", "signed in", "conference", "chair", "polled by", "last event", "last error", "limit"];

/// `s` with every control character (C0, DEL, C1: escape sequences, newlines, carriage
/// returns), every bidirectional control and every invisible or line-breaking character
/// replaced by `?`: what a gateway, a record in Redis or a token supplied (event types, error
/// texts, a token's subject) reaches an operator's terminal, page and log as text, never as a
/// command to the terminal or a line of its own.
pub fn printable(s: &str) -> String {
    // Controls; bidirectional overrides, isolates and marks; zero-width characters; the line
    // and paragraph separators (a line break to some viewers).
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{061C}'
                    | '\u{FEFF}'
            )
    };
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    s.chars().map(|c| if unsafe_char(c) { '?' } else { c }).collect()
}

/// One agent of the `/agents` JSON as the cells of a table row, in [`COLUMNS`] order, as
/// plain text (`-` for what is absent): the one reading of a view that the CLI and the status
/// page share.
pub fn row(a: &serde_json::Value) -> [String; COLUMNS.len()] {
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => printable(s),
        other => printable(&other.to_string()),
    };
    let conference = match a["conference"]["confId"].as_u64() {
        Some(id) => format!("{} {id}", text(&a["conference"]["state"])),
        None => text(&a["conference"]["state"]),
    };
    let polled = match (a["polled_here"] == true, a["polled_by_host"].as_str()) {
        (true, _) => "here".to_owned(),
        (false, Some(host)) => format!("{} ({})", printable(host), text(&a["polled_by_admin"])),
        (false, None) => text(&a["polled_by"]),
    };
    let e = &a["last_error"];
    let error = match e.is_object() {
        true => format!("{} {} at {}", text(&e["method"]), text(&e["what"]), text(&e["at"])),
        false => "-".into(),
    };
    let l = &a["limit"];
    let limit = match l.is_object() {
        true => format!(
            "{} {}/{} per {} s{}",
            text(&l["limit"]),
            text(&l["remaining"]),
            text(&l["quota"]),
            text(&l["window_secs"]),
            if l["refused"] == true { " refused" } else { "" }
        ),
        false => "-".into(),
    };
    // An ended agent's state says why, unless it already does (`lost:REASON`).
    let state = match a["reason"].as_str() {
        Some(_) if !text(&a["state"]).contains(':') => format!("{} ({})", text(&a["state"]), text(&a["reason"])),
        _ => text(&a["state"]),
    };
    [
        text(&a["agent"]),
        text(&a["gateway"]),
        state,
        text(&a["signed_in_at"]),
        conference,
        text(&a["chairperson"]),
        polled,
        text(&a["last_event_at"]),
        error,
        limit,
    ]
}

/// Unix ms as RFC 3339 in UTC, to the second (`2026-12-06T03:15:02Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_526_487_600), "2026-12-06T03:08:07Z");
        assert_eq!(super::rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn printable_keeps_text_and_replaces_what_would_act_or_hide() {
        assert_eq!(super::printable("agent-153 Zoë 社"), "agent-153 Zoë 社");
        // An escape sequence loses its escape, so it is text; the rest is replaced whole.
        assert_eq!(super::printable("a\u{1b}[2Jb"), "a?[2Jb");
        for bad in ['\n', '\r', '\u{202E}', '\u{2066}', '\u{200B}', '\u{200F}', '\u{2028}', '\u{FEFF}'] {
            assert_eq!(super::printable(&format!("a{bad}b")), "a?b", "{bad:?}");
        }
    }
}
