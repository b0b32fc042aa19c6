//! The problems each REST API route answers with, driven with real requests (the proxy and the
//! simulator on real sockets, real TLS, real tokens): every problem met must be one the
//! route's list (`edge::problems::problem_types`, which api/openapi.yaml lists per operation,
//! tests/it/openapi.rs) names, with the status ccgate's table gives it. Every gateway refusal
//! a route lists by retcode is forced at the simulator, one retcode at a time.
//!
//! Not driven here (each has its own test where its condition is set up): `no-gateway`
//! (gateways.rs), `keys-unavailable` (oidc.rs), `store-unavailable` (redis_outage.rs),
//! `request-timeout` and `file-limit` (connections.rs), `gateway-timeout` (upstream.rs);
//! `sign-in-busy` and `internal` (no request reaches them on demand; unit tests), and the
//! gateway's `AgentConf_RequestFailed`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ccgate::config::{LimitConfig, Scope};
use ccgate::edge::problems::{problem_types, retcodes};
use ccgate::edge::render::spec;
use ccgate::edge::route::Route;
use ccgate::gateway::GatewayRefusal;
use ccgate::ops::Failure;
use ccgate::session::ConfState;
use ccgate::sim::Faults;
use http::{Method, StatusCode};

use crate::common::{self, problem, Harness, Options, Reply};

/// What the requests met, route by route.
#[derive(Default)]
struct Seen(BTreeMap<String, BTreeSet<String>>);

impl Seen {
    /// `r` is the problem `slug`, which `route` lists, with the status ccgate's table gives it.
    fn expect(&mut self, route: Route, slug: &str, r: &Reply) {
        let p = problem(r);
        assert_eq!(p["type"], format!("urn:ccgate:problem:{slug}"), "{route:?}: {}", r.text);
        assert!(problem_types(route).contains(slug), "{route:?} answered {slug}, which its list lacks");
        let row = ccgate::edge::problems::samples().into_iter().find(|f| spec(f).slug == slug).map(|f| spec(&f).status);
        assert_eq!(Some(r.status), row, "{route:?} {slug}");
        self.0.entry(format!("{route:?}")).or_default().insert(slug.to_owned());
    }
}

fn body_of(route: Route) -> &'static str {
    match route {
        Route::CreateConference => r#"{"memberNum":3}"#,
        _ => "",
    }
}

async fn call(h: &Harness, route: Route, agent: Option<&str>) -> Reply {
    h.call(route.http_method(), route.path(), agent, body_of(route)).await
}

/// The problem ccgate makes of the gateway's `code`.
fn slug_of(code: &str) -> &'static str {
    let r = GatewayRefusal { retcode: code.into(), message: String::new(), error_reason: None, body: Bytes::new() };
    spec(&Failure::refused(r)).slug
}

/// The gateway method a route calls: the one the simulator's faults are aimed at.
fn method_of(route: Route) -> &'static str {
    match route {
        Route::SignIn => "login",
        Route::SignOut => "logout",
        Route::CreateConference => "requestAgentConf",
        Route::StopAnnouncement => "stopVoiceToConf",
        Route::GetSession | Route::Events => unreachable!("no gateway call"),
    }
}

fn fault(route: Route, f: Faults) -> Faults {
    Faults { methods: vec![method_of(route).into()], ..f }
}

/// Makes agent 153 ready for `route`'s gateway call: signed in, and chair for the stop.
async fn ready(h: &Harness, route: Route) {
    if route == Route::SignIn {
        return;
    }
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert!(r.status == StatusCode::OK || r.status == StatusCode::CREATED, "{}", r.text);
    if route == Route::StopAnnouncement && r.json()["chairperson"] != true {
        let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
}

/// A request with a token for another audience, for agent `n`: one not seen before (a token
/// seen is refused from memory, for what it is), from a client behind a trusted proxy.
async fn bad_token(h: &Harness, route: Route, n: u32) -> Reply {
    let token = h.es.token(common::ISSUER, "another-audience", &n.to_string(), 600).unwrap();
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("x-forwarded-for", "203.0.113.7")];
    h.send(route.http_method(), &format!("{}{}", h.base, route.path()), &headers, body_of(route)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_the_problems_it_lists() {
    let mut seen = Seen::default();
    let h = Harness::with(Options {
        config: Box::new(|c| {
            c.rate_limits.limit.clear();
            c.server.max_body_bytes = 4096;
            c.sessions.max_streams_per_agent = 1;
        }),
        ..Options::default()
    })
    .await;
    let big = "x".repeat(5000);
    for route in Route::ALL {
        seen.expect(route, "invalid-token", &call(&h, route, None).await);
        let r = h.call(route.http_method(), route.path(), Some("154"), &big).await;
        seen.expect(route, "payload-too-large", &r);
        if route != Route::SignIn {
            seen.expect(route, "no-session", &call(&h, route, Some("154")).await);
        }
    }
    seen.expect(Route::SignIn, "bad-request", &h.call(Method::POST, "/v1/session", Some("153"), "[1]").await);
    seen.expect(
        Route::CreateConference,
        "bad-request",
        &h.call(Method::POST, "/v1/conference", Some("153"), "{}").await,
    );
    seen.expect(Route::SignIn, "no-credentials", &call(&h, Route::SignIn, Some("999")).await);

    // Every refusal each gateway-calling route lists by retcode, forced at the simulator.
    for route in [Route::SignIn, Route::SignOut, Route::CreateConference, Route::StopAnnouncement] {
        for code in retcodes(route) {
            ready(&h, route).await;
            h.sim.set_faults(fault(route, Faults { retcode: Some(code.into()), ..Faults::default() }));
            let r = call(&h, route, Some("153")).await;
            h.sim.set_faults(Faults::default());
            seen.expect(route, slug_of(code), &r);
            if slug_of(code) == "session-lost" {
                // ccgate let the session go; so does the simulator, for the next sign-in.
                h.sim.kick("153");
            }
        }
        ready(&h, route).await;
        h.sim.set_faults(fault(route, Faults { http_status: Some(500), ..Faults::default() }));
        let r = call(&h, route, Some("153")).await;
        h.sim.set_faults(Faults::default());
        seen.expect(route, "bad-gateway", &r);
    }

    // The stream's own: a bad `Last-Event-ID`, and one stream more than the agent may have.
    ready(&h, Route::GetSession).await;
    let auth = format!("Bearer {}", h.token("153"));
    let url = format!("{}/v1/events", h.base);
    let r = h.send(Method::GET, &url, &[("authorization", &auth), ("last-event-id", "abc")], "").await;
    seen.expect(Route::Events, "bad-request", &r);
    let open = h.events("153", None).await;
    assert_eq!(open.status, StatusCode::OK);
    seen.expect(Route::Events, "too-many-streams", &call(&h, Route::Events, Some("153")).await);
    drop(open);

    // The chair check: no conference, then another agent's.
    let r = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    h.sign_in("153").await;
    seen.expect(Route::StopAnnouncement, "no-conference", &call(&h, Route::StopAnnouncement, Some("153")).await);
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    h.sign_in("154").await;
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    seen.expect(Route::StopAnnouncement, "not-chairperson", &call(&h, Route::StopAnnouncement, Some("153")).await);

    // The gateway ends 153's session: every route that needs one says so.
    h.sim.push_event("153", "AgentOther_ShutdownService", serde_json::json!({"loginTime": 1}));
    common::eventually("the session is lost", || async {
        call(&h, Route::GetSession, Some("153")).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    for route in [Route::GetSession, Route::Events, Route::CreateConference, Route::StopAnnouncement] {
        seen.expect(route, "session-lost", &call(&h, route, Some("153")).await);
    }
    h.stop().await;

    // Limits: one request per route and agent, so each route's second is refused.
    let h = Harness::with(Options {
        config: Box::new(|c| {
            let limit =
                |m: &str| LimitConfig { method: m.into(), scope: Scope::Agent, rate: 0.001, burst: 1, shadow: false };
            c.rate_limits.limit =
                ["login", "getSession", "requestAgentConf", "stopVoiceToConf", "events", "logout"].map(limit).to_vec();
            c.sessions.max_agents = 1;
        }),
        ..Options::default()
    })
    .await;
    for route in [Route::SignIn, Route::GetSession, Route::CreateConference, Route::StopAnnouncement] {
        let first = call(&h, route, Some("155")).await;
        assert!(first.status.is_success(), "{route:?}: {}", first.text);
        seen.expect(route, "rate-limited", &call(&h, route, Some("155")).await);
    }
    let open = h.events("155", None).await;
    assert_eq!(open.status, StatusCode::OK);
    seen.expect(Route::Events, "rate-limited", &call(&h, Route::Events, Some("155")).await);
    drop(open);
    assert_eq!(call(&h, Route::SignOut, Some("155")).await.status, StatusCode::NO_CONTENT);
    seen.expect(Route::SignOut, "rate-limited", &call(&h, Route::SignOut, Some("155")).await);
    // 155 is signed out, but one agent is all this replica takes, and 153 is another.
    h.sign_in("154").await;
    seen.expect(Route::SignIn, "too-many-agents", &call(&h, Route::SignIn, Some("153")).await);
    h.stop().await;

    // No gateway at all; and a client (behind a trusted proxy) that sends bad tokens.
    let port = common::closed_port().await;
    let h = Harness::with(Options {
        gateway_url: Some(format!("https://127.0.0.1:{port}")),
        config: Box::new(|c| {
            c.auth.per_client_refusal_budget = true;
            c.auth.trusted_proxies = vec!["127.0.0.1/32".into()];
        }),
        ..Options::default()
    })
    .await;
    seen.expect(Route::SignIn, "gateway-unavailable", &call(&h, Route::SignIn, Some("153")).await);
    for n in 200.. {
        let r = bad_token(&h, Route::GetSession, n).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert!(n < 300, "the address's budget of refused tokens never ran out");
    }
    for (n, route) in (300..).zip(Route::ALL) {
        seen.expect(route, "too-many-bad-tokens", &bad_token(&h, route, n).await);
    }
    h.stop().await;

    for (route, slugs) in &seen.0 {
        eprintln!("{route}: {} problems met: {slugs:?}", slugs.len());
    }
    assert_eq!(seen.0.len(), Route::ALL.len(), "every route met some problems");
}
