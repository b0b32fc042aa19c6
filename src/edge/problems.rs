//! Which problems each REST API route can answer with: the lists `api/openapi.yaml` gives per
//! operation (its `application/problem+json` examples, one per problem type), which
//! tests/it/openapi.rs holds equal to [`problem_types`] and drives with real requests.
//!
//! Two sources, because ccgate decides some failures and relays others:
//! - its own, phase by phase ([`answers`]): an exhaustive `match` on [`Failure`], so a new
//!   kind does not compile until someone decides which routes can answer with it;
//! - the gateway's refusals, which `Failure::refused` classifies by retcode whatever the
//!   method: those come from the retcodes the gateway documents for the calls a route makes
//!   ([`retcodes`], API-NOTES sections 2 to 6), put through that same classification.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::render::spec;
use super::route::Route;
use crate::gateway::{GatewayRefusal, UpstreamError};
use crate::labels::AuthFailureReason;
use crate::ops::failure::Overload;
use crate::ops::limits::{LimitState, Refusal};
use crate::ops::Failure;

/// The problem types (slugs, as in `urn:ccgate:problem:{slug}`) `route` can answer with.
pub fn problem_types(route: Route) -> BTreeSet<&'static str> {
    let own = samples().into_iter().filter(|f| answers(route, f)).map(|f| spec(&f).slug);
    let relayed = retcodes(route).into_iter().map(|code| spec(&Failure::refused(refusal(code))).slug);
    own.chain(relayed).collect()
}

/// The problem types no operation answers with, for requests that match none: a path the
/// REST API does not have (`not-found`) or a method its path does not take
/// (`method-not-allowed`).
pub fn unrouted_problem_types() -> BTreeSet<&'static str> {
    [Failure::NotFound, Failure::MethodNotAllowed("GET")].iter().map(|f| spec(f).slug).collect()
}

/// Whether `route` can fail with `f` by ccgate's own decision (the gateway's refusals are
/// [`retcodes`]'s).
pub fn answers(route: Route, f: &Failure) -> bool {
    use Route::*;
    // The routes whose operation signs in: `POST /v1/session`, and the two that call the
    // gateway with the session when `sessions.resume` signs a lost one in again.
    let signs_in = matches!(route, SignIn | CreateConference | StopAnnouncement);
    let calls_gateway = matches!(route, SignIn | SignOut | CreateConference | StopAnnouncement);
    match f {
        // Phase `authenticate`: every route.
        Failure::Unauthenticated(_) | Failure::NoGateway(_) | Failure::Throttled(_) | Failure::KeysUnavailable => true,
        // Phase `read body`: every route reads one, whatever its method (413, 408, and 400
        // for a body that cannot be read); 400 besides for a bad JSON body (sign-in,
        // conference) or `Last-Event-ID` (events).
        Failure::PayloadTooLarge | Failure::BodyTimeout | Failure::BadRequest(_) => true,
        // A limit may name any route's method (`rate_limits.limit.method`, or `*`).
        Failure::RateLimited(_) => true,
        // With `store.backend = "redis"`: session lookups, sign-in claims, and shared limits
        // with `fallback = "closed"`.
        Failure::StoreUnavailable => true,
        // Phase `route`: a request no operation takes.
        Failure::NotFound | Failure::MethodNotAllowed(_) => false,
        // The pass-through face's `{agentid}` check, and its second plain sign-in.
        Failure::Forbidden(_) | Failure::AlreadySignedIn(None) => false,
        // A sign-in needs no session; every other operation does.
        Failure::NoSession => route != SignIn,
        // A sign-out of a lost session is a sign-out; a sign-in replaces it.
        Failure::SessionLost(None) => !matches!(route, SignIn | SignOut),
        // The chairperson check, made for chair-only methods.
        Failure::NotChairperson(None) | Failure::NoConference(None) => route == StopAnnouncement,
        Failure::NoCredentials | Failure::Overloaded(Overload::Agents | Overload::SignInQueue | Overload::Files) => {
            signs_in
        }
        // The only impossible states the core reports are a sign-in's.
        Failure::Internal(_) => signs_in,
        Failure::Overloaded(Overload::Streams) => route == Events,
        Failure::Upstream(_) => calls_gateway,
        // `AgentConf_RequestFailed` after the gateway accepted the request.
        Failure::Refused(_) => route == CreateConference,
        // The gateway's words: [`retcodes`].
        Failure::NotChairperson(Some(_))
        | Failure::NoConference(Some(_))
        | Failure::SessionLost(Some(_))
        | Failure::AlreadySignedIn(Some(_))
        | Failure::Conflict(_)
        | Failure::InvalidParameters(_) => false,
    }
}

/// Every call that carries a Guid: bad parameters, an expired Guid, a disaster-recovery
/// switch, a repeated call, not signed in, an internal exception, the disaster-recovery
/// sign-in-again cases.
const GUID_CALL: &[&str] =
    &["000-002", "000-003", "000-004", "000-007", "100-006", "100-007", "105-005", "105-006", "105-007"];
/// `login` / `forceLogin`: no Guid yet, so none of the session-gone codes.
const SIGN_IN: &[&str] =
    &["000-002", "000-004", "000-007", "100-001", "100-002", "100-003", "100-004", "100-007", "100-020", "100-021"];
/// `logout`. `100-006`, `000-003` (the Guid is gone) and `100-008` (already signed out) leave
/// the agent signed out, which is what was asked: ccgate answers 204 (`session/store.rs`).
const SIGN_OUT: &[&str] = &["000-002", "000-004", "000-007", "100-005", "100-007"];
/// `requestAgentConf`, besides [`GUID_CALL`]: already in a conference.
const CONFERENCE: &[&str] = &["101-003"];
/// `stopVoiceToConf`, besides [`GUID_CALL`]: no conference, not the chairperson.
const CHAIR: &[&str] = &["101-001", "101-002"];

/// The retcodes the gateway documents for the calls `route` makes, refusals only.
pub fn retcodes(route: Route) -> Vec<&'static str> {
    // With `sessions.resume` a lost session is signed in again first.
    let parts: &[&[&str]] = match route {
        Route::SignIn => &[SIGN_IN],
        Route::SignOut => &[SIGN_OUT],
        Route::CreateConference => &[GUID_CALL, CONFERENCE, SIGN_IN],
        Route::StopAnnouncement => &[GUID_CALL, CHAIR, SIGN_IN],
        Route::GetSession | Route::Events => &[],
    };
    let mut all: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn refusal(code: &str) -> GatewayRefusal {
    GatewayRefusal { retcode: code.into(), message: String::new(), error_reason: None, body: Bytes::new() }
}

/// One failure of every kind, and of every row of `render::spec`'s table. The match below
/// makes a new kind a compile error here until it is added.
pub fn samples() -> Vec<Failure> {
    fn _exhaustive(f: &Failure) {
        match f {
            Failure::Unauthenticated(_)
            | Failure::Forbidden(_)
            | Failure::NoGateway(_)
            | Failure::NotChairperson(_)
            | Failure::NoConference(_)
            | Failure::NoSession
            | Failure::SessionLost(_)
            | Failure::AlreadySignedIn(_)
            | Failure::NoCredentials
            | Failure::Conflict(_)
            | Failure::InvalidParameters(_)
            | Failure::Refused(_)
            | Failure::BadRequest(_)
            | Failure::Throttled(_)
            | Failure::RateLimited(_)
            | Failure::PayloadTooLarge
            | Failure::BodyTimeout
            | Failure::StoreUnavailable
            | Failure::KeysUnavailable
            | Failure::Overloaded(_)
            | Failure::NotFound
            | Failure::MethodNotAllowed(_)
            | Failure::Upstream(_)
            | Failure::Internal(_) => {}
        }
    }
    let limit = Refusal {
        scope: crate::config::Scope::Agent,
        retry_after_secs: 1,
        state: LimitState { name: "l".into(), quota: 1, window_secs: 1, remaining: 0, reset_secs: 1 },
    };
    let gateway = |code: &str| GatewayRefusal { error_reason: Some(7), ..refusal(code) };
    vec![
        Failure::Unauthenticated(AuthFailureReason::Expired),
        Failure::Forbidden("x"),
        Failure::NoGateway(None),
        Failure::NoGateway(Some("tenant".into())),
        Failure::NotChairperson(None),
        Failure::NotChairperson(Some(gateway("101-002"))),
        Failure::NoConference(None),
        Failure::NoConference(Some(gateway("101-001"))),
        Failure::NoSession,
        Failure::SessionLost(None),
        Failure::SessionLost(Some(gateway("100-006"))),
        Failure::AlreadySignedIn(None),
        Failure::AlreadySignedIn(Some(gateway("100-002"))),
        Failure::NoCredentials,
        Failure::refused(gateway("101-003")),
        Failure::refused(gateway("000-002")),
        Failure::Refused(gateway("100-007")),
        Failure::BadRequest("x".into()),
        Failure::Throttled(3),
        Failure::RateLimited(Box::new(limit)),
        Failure::PayloadTooLarge,
        Failure::BodyTimeout,
        Failure::StoreUnavailable,
        Failure::KeysUnavailable,
        Failure::Overloaded(Overload::Agents),
        Failure::Overloaded(Overload::SignInQueue),
        Failure::Overloaded(Overload::Streams),
        Failure::Overloaded(Overload::Files),
        Failure::NotFound,
        Failure::MethodNotAllowed("GET"),
        Failure::Upstream(UpstreamError::Unavailable("x".into())),
        Failure::Upstream(UpstreamError::Timeout),
        Failure::Upstream(UpstreamError::BadStatus(http::StatusCode::INTERNAL_SERVER_ERROR)),
        Failure::Upstream(UpstreamError::Malformed("x".into())),
        Failure::Internal("x"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an integrator most needs to know is pinned here in words as well as by the spec:
    /// only the stop is refused for the chair, only the stream counts streams.
    #[test]
    fn the_chair_and_stream_problems_belong_to_their_routes() {
        for r in Route::ALL {
            let types = problem_types(r);
            assert_eq!(types.contains("no-conference"), r == Route::StopAnnouncement, "{r:?}");
            assert_eq!(types.contains("not-chairperson"), r == Route::StopAnnouncement, "{r:?}");
            assert_eq!(types.contains("too-many-streams"), r == Route::Events, "{r:?}");
            assert!(types.contains("invalid-token"), "{r:?}");
            assert!(!types.contains("not-found") && !types.contains("forbidden"), "{r:?}");
        }
        assert!(!problem_types(Route::SignIn).contains("no-session"));
        assert!(!problem_types(Route::GetSession).contains("gateway-unavailable"), "no gateway call");
    }

    /// The sign-out's list leaves out the codes that mean "signed out already": the store
    /// answers them as success.
    #[test]
    fn a_sign_out_does_not_list_the_codes_that_mean_signed_out() {
        let codes = retcodes(Route::SignOut);
        for done in ["100-006", "000-003", "100-008"] {
            assert!(!codes.contains(&done), "{done}");
        }
        assert!(!problem_types(Route::SignOut).contains("session-lost"));
    }
}
